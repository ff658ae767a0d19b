"""32-bit length prefixes: a big-endian unsigned length, then that many bytes.

Theory of operation. Each message is ``struct.pack("!I", len(payload))``
followed by the payload, as Twisted's ``Int32StringReceiver`` frames it. The
framer reads the four-byte prefix, checks the length against ``max_size``
before it buffers a single payload byte (Twisted's ``_checkStringSize``), and
then waits, without looking at the bytes, until the whole payload is there:
O(1) work per read, O(bytes) in all. The default limit is Twisted's
``IntNStringReceiver.MAX_LENGTH``, 99,999 bytes.

The format has no error reply: a peer that announces an oversize message or
ends the stream inside one is logged with its address and closed.

- :class:`Int32Framer`: the sans-I/O framer; requests are payloads (bytes).
- :class:`Int32Handler`: :meth:`~Int32Handler.string_received` (a return
  value that is not None is sent back as one message) and
  :meth:`~Int32Handler.send_string`, Twisted's ``stringReceived`` and
  ``sendString``.
- :class:`Int32Echo`: sends every message back.
"""

import struct
from typing import Any, Optional

from evloop import LocalProtocolError

from .framing import NEED_DATA, Framer, StringReceiverHandler

__all__ = ["Int32Echo", "Int32Framer", "Int32Handler"]

_PREFIX = struct.Struct("!I")
_PREFIX_SIZE = _PREFIX.size


class Int32Framer(Framer):
    """Sans-I/O framer for 32-bit big-endian length-prefixed messages."""

    default_max_size = 99999

    __slots__ = ("_payload_length",)

    def __init__(self, max_size: Optional[int] = None) -> None:
        super().__init__(max_size)
        self._payload_length = -1

    def next_request(self) -> Any:
        """The next payload (bytes), or NEED_DATA. Raises RemoteProtocolError
        for a length over ``max_size`` or an end of stream inside a message,
        and keeps raising it."""
        if self._error is not None:
            raise self._error
        buf = self._buffer
        length = self._payload_length
        if length < 0:
            if len(buf) < _PREFIX_SIZE:
                if self._eof and buf:
                    raise self._truncated()
                return NEED_DATA
            (length,) = _PREFIX.unpack_from(buf)
            if length > self.max_size:
                raise self._fail(
                    f"message length {length} (prefix {bytes(buf[:_PREFIX_SIZE])!r}) "
                    f"is over the limit of {self.max_size} bytes",
                    too_large=True,
                )
            del buf[:_PREFIX_SIZE]
            self._payload_length = length
        if len(buf) < length:
            if self._eof:
                raise self._truncated()
            return NEED_DATA
        payload = bytes(buf[:length])
        del buf[:length]
        self._payload_length = -1
        return payload

    def encode(self, message: bytes) -> bytes:
        """``message`` with its prefix. Raises LocalProtocolError if it is over
        ``max_size``: the peer, holding the same limit, would refuse it."""
        if len(message) > self.max_size or len(message) > 0xFFFFFFFF:
            raise LocalProtocolError(
                f"a message of {len(message)} bytes is over the limit of {self.max_size} bytes"
            )
        return _PREFIX.pack(len(message)) + message


class Int32Handler(StringReceiverHandler):
    """Persistent connection of length-prefixed messages (Twisted's
    ``Int32StringReceiver``). Override :meth:`string_received`."""

    framer_class = Int32Framer

    __slots__ = ()


class Int32Echo(Int32Handler):
    """Sends every message back."""

    __slots__ = ()

    def string_received(self, string: bytes) -> bytes:
        return string
