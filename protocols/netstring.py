"""Netstrings: ``<length>:<payload>,`` (D. J. Bernstein's netstrings.txt).

Theory of operation. A netstring is the payload's length in ASCII decimal,
a colon, the payload, and a comma: ``b"5:hello,"``; ``b"0:,"`` is the empty
string. The length has no sign, no spaces and no leading zeros (``0`` alone
excepted), as the spec and Twisted's ``NetstringReceiver`` require, and at
most as many digits as ``max_size`` has; a length over ``max_size`` is
refused before a payload byte is buffered, so a peer cannot make us hold
more than the limit. The length prefix is at most a few bytes, so a slow
peer's partial prefix costs a bounded rescan; the payload is never scanned.

The default limit is Twisted's ``NetstringReceiver.MAX_LENGTH``, 99,999
bytes. Netstrings have no error reply: a peer that breaks the format is
logged with its address and its connection closed.

- :class:`NetstringFramer`: the sans-I/O framer; requests are payloads (bytes).
- :class:`NetstringHandler`: Twisted's ``stringReceived`` / ``sendString``
  as :meth:`~NetstringHandler.string_received` (its return value, if not
  None, is sent back as a netstring) and :meth:`~NetstringHandler.send_string`.
- :class:`NetstringEcho`: sends every string back.
"""

from typing import Any, Optional

from evloop import LocalProtocolError

from .framing import NEED_DATA, Framer, StringReceiverHandler

__all__ = ["NetstringEcho", "NetstringFramer", "NetstringHandler"]


class NetstringFramer(Framer):
    """Sans-I/O netstring framer; requests are the payloads (bytes)."""

    default_max_size = 99999

    __slots__ = ("_max_digits", "_payload_length")

    def __init__(self, max_size: Optional[int] = None) -> None:
        super().__init__(max_size)
        self._payload_length = -1
        self._max_digits = len(str(self.max_size))

    def next_request(self) -> Any:
        """The next payload (bytes), or NEED_DATA. Raises RemoteProtocolError
        for a bad or oversize length, a missing comma, or an end of stream
        inside a netstring, and keeps raising it."""
        if self._error is not None:
            raise self._error
        buf = self._buffer
        length = self._payload_length
        if length < 0:
            # The colon can only be among the first max_digits + 1 bytes.
            colon = buf.find(b":", 0, self._max_digits + 1)
            head = buf[: self._max_digits + 1] if colon < 0 else buf[:colon]
            if head and not head.isdigit():
                raise self._fail(f"netstring length is not a decimal number: {bytes(head[:20])!r}")
            if len(head) > 1 and head[0] == 0x30:
                raise self._fail(f"netstring length has a leading zero: {bytes(head)!r}")
            if colon < 0:
                if len(buf) > self._max_digits:
                    raise self._fail(
                        f"netstring length longer than {self._max_digits} digits: "
                        f"{bytes(buf[: self._max_digits + 1])!r}",
                        too_large=True,
                    )
                if head and int(head) > self.max_size:
                    # More digits can only make it larger: refuse now, as Twisted does.
                    raise self._fail(
                        f"netstring length {bytes(head)!r}... is over the limit of {self.max_size} bytes",
                        too_large=True,
                    )
                if self._eof and buf:
                    raise self._truncated()
                return NEED_DATA
            if not head:
                raise self._fail("netstring length is missing before ':'")
            length = int(head)
            if length > self.max_size:
                raise self._fail(
                    f"netstring length {length} is over the limit of {self.max_size} bytes", too_large=True
                )
            del buf[: colon + 1]
            self._payload_length = length
        if len(buf) <= length:  # the payload and its comma are not all here
            if self._eof:
                raise self._truncated()
            return NEED_DATA
        if buf[length] != 0x2C:
            raise self._fail(
                f"netstring of length {length} is not followed by ',': {bytes(buf[length : length + 1])!r}"
            )
        payload = bytes(buf[:length])
        del buf[: length + 1]
        self._payload_length = -1
        return payload

    def encode(self, message: bytes) -> bytes:
        """``message`` as a netstring. Raises LocalProtocolError if it is
        over ``max_size``: the peer, holding the same limit, would refuse it."""
        if len(message) > self.max_size:
            raise LocalProtocolError(
                f"a netstring of {len(message)} bytes is over the limit of {self.max_size} bytes"
            )
        return b"%d:%s," % (len(message), message)


class NetstringHandler(StringReceiverHandler):
    """Persistent netstring connection (Twisted's ``NetstringReceiver``).

    Override :meth:`string_received`; ``max_size`` bounds a payload both ways.
    """

    framer_class = NetstringFramer

    __slots__ = ()


class NetstringEcho(NetstringHandler):
    """Sends every netstring back."""

    __slots__ = ()

    def string_received(self, string: bytes) -> bytes:
        return string
