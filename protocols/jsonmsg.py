"""JSON messages, wire-compatible with jsocket 2.x.

Theory of operation. Each message is a 12-byte header, packed as
network-order ``4s I I``: the magic ``b"JSN1"``, the payload length and the
CRC-32 (``zlib.crc32``) of the payload; then the payload, one UTF-8 JSON
value. :class:`JsonFramer` parses that sans-I/O, checking in the order
jsocket does: magic, then the length against ``max_size`` (10 MiB by
default, jsocket's ``DEFAULT_MAX_MESSAGE_SIZE``) *before* any payload byte
is waited for, then, once the payload is whole, the checksum, strict UTF-8
and JSON. Any failure is a :class:`~evloop.RemoteProtocolError`; the format
has no error reply, so the connection just closes (jsocket does the same,
but logs it at debug level only; the handler logs a warning naming the peer).

The receive buffer holds at most ``12 + max_size`` bytes. Each message is
consumed by deleting its prefix of the buffer, which CPython does in O(1)
for a bytearray, so the work is O(bytes received) however the input is
chunked, and a header that arrives a byte at a time is never rescanned.

- :class:`JsonHandler`: implement ``handle_message(obj)``; a return value
  that is not None goes back as one message (jsocket's
  ``_process_message``). Persistent; pipelined messages are answered in
  order, and all the replies to one read leave in one ``send``.
- :class:`JsonEcho`: replies with the object it got.
- :func:`get_client_stats`: jsocket's per-client statistics for a loop.
"""

import json
import logging
import socket
import struct
import zlib
from concurrent.futures import Future
from typing import Any, Dict, Optional

from evloop import LocalProtocolError

from .framing import NEED_DATA, FramedHandler, Framer

__all__ = [
    "DEFAULT_MAX_SIZE",
    "HEADER_SIZE",
    "MAGIC",
    "JsonEcho",
    "JsonFramer",
    "JsonHandler",
    "get_client_stats",
]

logger = logging.getLogger("evloop")

MAGIC = b"JSN1"
_HEADER = struct.Struct("!4sII")
HEADER_SIZE = _HEADER.size  # 12
#: jsocket 2.x's DEFAULT_MAX_MESSAGE_SIZE.
DEFAULT_MAX_SIZE = 10 * 1024 * 1024

# Built once: json.dumps/json.loads build or look these up on every call.
# Compact separators; non-ASCII text goes out as UTF-8, as jsocket sends it.
_encode_text = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
# A str holding a lone surrogate cannot be UTF-8; \u-escaping it is still JSON.
_encode_ascii = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode
_decode_text = json.JSONDecoder().decode
_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


class JsonFramer(Framer):
    """Sans-I/O framer for jsocket's ``JSN1`` messages; requests are the
    decoded JSON values. ``max_size`` bounds one payload, in bytes."""

    default_max_size = DEFAULT_MAX_SIZE

    __slots__ = ("_checksum", "_end")

    def __init__(self, max_size: Optional[int] = None) -> None:
        super().__init__(max_size)
        # Once a header is accepted: where its payload ends in the buffer.
        self._end = 0
        self._checksum = 0

    def next_request(self) -> Any:
        """The next decoded message, or NEED_DATA. Raises
        RemoteProtocolError for a broken rule, and at end of stream inside a
        message; a clean end of stream between messages is just NEED_DATA."""
        if self._error is not None:
            raise self._error
        buf = self._buffer
        end = self._end
        if not end:
            if len(buf) < HEADER_SIZE:
                # Refuse a wrong magic as soon as it shows, so a peer talking
                # another protocol (an HTTP request, say) is not left waiting.
                if buf and not MAGIC.startswith(bytes(buf[:4])):
                    raise self._fail(f"bad magic {bytes(buf[:4])!r}, expected {MAGIC!r}")
                if self._eof and buf:
                    raise self._truncated()
                return NEED_DATA
            magic, length, checksum = _HEADER.unpack_from(buf)
            if magic != MAGIC:
                raise self._fail(f"bad magic {magic!r}, expected {MAGIC!r}")
            # The length is checked before it is trusted: nothing of an
            # oversize payload is ever buffered or waited for.
            if length > self.max_size:
                raise self._fail(
                    f"payload length {length} is over the limit of {self.max_size} bytes", too_large=True
                )
            end = self._end = HEADER_SIZE + length
            self._checksum = checksum
        if len(buf) < end:
            if self._eof:
                raise self._truncated()
            return NEED_DATA
        payload = buf[HEADER_SIZE:end]
        del buf[:end]
        self._end = 0
        checksum = zlib.crc32(payload)
        if checksum != self._checksum:
            raise self._fail(
                f"checksum mismatch: header says {self._checksum:#010x}, payload "
                f"has {checksum:#010x} (payload starts {bytes(payload[:32])!r})"
            )
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self._fail(
                f"payload is not UTF-8: {exc.reason} at byte {exc.start} "
                f"({bytes(payload[exc.start : exc.start + 8])!r})"
            ) from None
        try:
            return _decode_text(text)
        except (ValueError, RecursionError) as exc:
            # ValueError: JSONDecodeError, or an integer past Python's digit
            # limit; RecursionError: nesting deeper than the decoder goes.
            raise self._fail(f"payload is not JSON: {exc} (payload starts {bytes(payload[:32])!r})") from None

    def encode(self, message: Any) -> bytes:
        """Header and payload for ``message``. Raises LocalProtocolError if
        it is not JSON-serialisable or its payload is over ``max_size``."""
        try:
            text = _encode_text(message)
        except (TypeError, ValueError, RecursionError) as exc:
            raise LocalProtocolError(f"cannot encode {type(message).__name__} as JSON: {exc}") from exc
        try:
            payload = text.encode("utf-8")
        except UnicodeEncodeError:
            payload = _encode_ascii(message).encode("ascii")
        if len(payload) > self.max_size:
            raise LocalProtocolError(
                f"message of {len(payload)} bytes is over the limit of {self.max_size} bytes"
            )
        return _HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


class JsonHandler(FramedHandler):
    """Serves one client of the JSON message protocol.

    Implement :meth:`handle_message`. ``max_size`` (class attribute) bounds
    a payload either way; ``connected_at`` is the loop time the client came.
    A reply that cannot be encoded is logged as a warning with the peer's
    address and closes this connection once earlier replies are out.
    """

    framer_class = JsonFramer

    __slots__ = ("connected_at",)

    def __init__(self, server: Any, client_socket: Any, client_address: Any) -> None:
        super().__init__(server, client_socket, client_address)
        self.connected_at = self.loop.time()

    def handle_message(self, obj: Any) -> Any:
        """Called with each message the client sends, decoded. Return the
        reply (any JSON-serialisable value, or a ``concurrent.futures.Future``
        whose result is one), or None to send nothing."""
        raise NotImplementedError(f"{type(self).__name__} must override handle_message()")

    def data_received(self, data: bytes) -> None:
        framer = self.framer
        framer.feed(data)
        self.answer_requests()
        if _TCP_QUICKACK is not None and framer.buffered and not self.closing:
            # Part of a message is waiting for the rest. jsocket's client
            # sends a header and its payload in two send() calls, so with
            # Nagle on its side and delayed ACK on ours the payload waits
            # ~40 ms for our ACK of the header: acknowledge at once (Linux).
            try:
                self.client_socket.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
            except OSError:
                pass

    def make_response(self) -> Any:
        # FramedHandler's loop calls this once per message, with the message
        # in self.request; replies are only queued, and all those to one
        # read leave in one send at the end of the loop pass.
        reply = self.handle_message(self.request)
        if reply is None:
            return None
        if isinstance(reply, Future):
            return _encode_when_done(reply, self.framer.encode)
        return self.framer.encode(reply)

    def handle_error(self, exc: BaseException) -> None:
        if isinstance(exc, LocalProtocolError):
            logger.warning("%s: cannot send the reply: %s; closing the connection", self.peer, exc.message)
            self.close_when_sent()
        else:
            super().handle_error(exc)


class JsonEcho(JsonHandler):
    """Replies to every message with the same object."""

    __slots__ = ()

    def handle_message(self, obj: Any) -> Any:
        return obj


def _encode_when_done(future: "Future[Any]", encode: Any) -> "Future[Any]":
    """A future of the encoded reply, for a handler that answered with a future."""
    encoded: Future[Any] = Future()

    def done(source: "Future[Any]") -> None:
        try:
            reply = source.result()
            encoded.set_result(None if reply is None else encode(reply))
        except BaseException as exc:
            encoded.set_exception(exc)

    future.add_done_callback(done)
    return encoded


def get_client_stats(loop: Any) -> Dict[str, Any]:
    """jsocket's ``get_client_stats()`` for the JSON clients of ``loop``:
    ``{"connected_clients": n, "clients": {"host:port": seconds connected}}``.
    Call it on the loop's thread (from a handler, a timer or
    ``loop.call_soon_threadsafe``)."""
    now = loop.time()
    clients = {
        handler.peer: now - handler.connected_at
        for handler in list(loop.handlers)
        if isinstance(handler, JsonHandler)
    }
    return {"connected_clients": len(clients), "clients": clients}
