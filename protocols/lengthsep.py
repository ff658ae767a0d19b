"""Length-separated bodies: the recipe's protocol.

On the wire a request is an ASCII decimal length, ``\\n``, then exactly that
many body bytes: ``b"5\\nhello"``. The length line must be digits only (no
sign, no spaces) and at most as many digits as ``max_size`` has; a length
over ``max_size`` is refused before any body byte is buffered.

- :class:`LengthSepBody` is the recipe's handler: it answers with the body
  and closes. Override ``make_response()`` and read ``self.msg_body``.
- :class:`LengthSepEcho` is the persistent form: it answers each request with
  the same framing and keeps the connection; pipelined requests are answered
  in order.
"""

from typing import Any, Optional

from .framing import NEED_DATA, FramedHandler, Framer

__all__ = ["LengthSepBody", "LengthSepEcho", "LengthSepFramer"]


class LengthSepFramer(Framer):
    """Sans-I/O framer for ``<digits>\\n<body>``; requests are the bodies (bytes)."""

    __slots__ = ("_body_length", "_max_digits")

    def __init__(self, max_size: Optional[int] = None) -> None:
        super().__init__(max_size)
        self._body_length = -1
        self._max_digits = len(str(self.max_size))

    def next_request(self) -> Any:
        if self._error is not None:
            raise self._error
        buf = self._buffer
        length = self._body_length
        if length < 0:
            # Only the first max_digits + 1 bytes can hold the newline, so a
            # slow peer's partial length line is never rescanned at length.
            newline = buf.find(b"\n", 0, self._max_digits + 1)
            if newline < 0:
                if len(buf) > self._max_digits:
                    raise self._fail(
                        f"length line longer than {self._max_digits} digits: "
                        f"{bytes(buf[: self._max_digits + 1])!r}",
                        too_large=True,
                    )
                if buf and not buf.isdigit():
                    raise self._fail(f"length line is not a decimal number: {bytes(buf)!r}")
                if self._eof and buf:
                    raise self._truncated()
                return NEED_DATA
            head = buf[:newline]
            if not head.isdigit():
                raise self._fail(f"length line is not a decimal number: {bytes(head)!r}")
            length = int(head)
            if length > self.max_size:
                raise self._fail(
                    f"length {length} is over the limit of {self.max_size} bytes", too_large=True
                )
            del buf[: newline + 1]
            self._body_length = length
        if len(buf) < length:
            if self._eof:
                raise self._truncated()
            return NEED_DATA
        body = bytes(buf[:length])
        del buf[:length]
        self._body_length = -1
        return body

    def encode(self, message: bytes) -> bytes:
        return b"%d\n" % len(message) + message


class LengthSepBody(FramedHandler):
    """The recipe's ``LengthSepBody``: answer with the body, then close.

    Subclasses override ``make_response()`` and find the body in
    ``self.msg_body``."""

    close_when_done = True
    framer_class = LengthSepFramer
    __slots__ = ()

    @property
    def msg_body(self) -> bytes:
        body: bytes = self.request
        return body

    def make_response(self) -> Any:
        return [self.msg_body]


class LengthSepEcho(FramedHandler):
    """Persistent echo in the same framing: ``b"5\\nhello"`` gets ``b"5\\nhello"``."""

    framer_class = LengthSepFramer
    __slots__ = ()

    def make_response(self) -> Any:
        body = self.request
        return b"%d\n" % len(body) + body
