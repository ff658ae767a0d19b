"""Lines: requests ended by a terminator, the telnet-like case.

Theory of operation. :class:`LineFramer` keeps the peer's bytes in one
``bytearray`` and hands out each line without its terminator (``b"\\r\\n"``
by default; ``b"\\n"`` for tools like ``nc``). It remembers how far its search
for the terminator got, so a slow peer's partial line is scanned once in
all, not once per read (h11's ``_receivebuffer.py``): total work is
O(bytes received) whatever the chunking.

A line may be at most ``max_size`` bytes, terminator not counted. The search
never looks past ``max_size + len(terminator)`` bytes, and as soon as the
buffer proves the terminator cannot come in time the framer raises
:class:`~evloop.RemoteProtocolError`, carrying ``too_long_reply`` (if any)
as the error reply. The default limit, 64 KiB, is Redis's limit on an inline
command (``PROTO_INLINE_MAX_SIZE``); Twisted's ``LineReceiver`` uses 16 KiB.

End of stream: with ``eof_ends_line`` (the default) bytes left without a
terminator when the peer shuts down its write side are the last line, as
the yoton request/reply wire wants ("the reader stops at the first CRLF or
at end of stream"); without it they are a truncated request and an error.

:class:`LineHandler` answers each line with :meth:`LineHandler.handle_line`
and keeps the connection, so pipelined lines are answered in order.
:class:`LineEcho` sends every line back.
"""

from typing import Any, Optional

from evloop import LocalProtocolError

from .framing import NEED_DATA, FramedHandler, Framer

__all__ = ["LineEcho", "LineFramer", "LineHandler"]

# How much of an overlong line an error message shows.
_SHOWN = 40


class LineFramer(Framer):
    """Sans-I/O framer for terminated lines; requests are the lines (bytes,
    terminator removed).

    ``terminator`` is any non-empty byte string. ``too_long_reply`` is the
    bytes sent to a peer whose line is over ``max_size`` (None: no reply).
    """

    default_max_size = 64 * 1024

    __slots__ = ("_scanned", "eof_ends_line", "terminator", "too_long_reply")

    def __init__(
        self,
        max_size: Optional[int] = None,
        terminator: bytes = b"\r\n",
        *,
        too_long_reply: Optional[bytes] = None,
        eof_ends_line: bool = True,
    ) -> None:
        super().__init__(max_size)
        if not terminator:
            raise ValueError("the line terminator must not be empty")
        self.terminator = bytes(terminator)
        self.too_long_reply = too_long_reply
        self.eof_ends_line = eof_ends_line
        # Where the next search for the terminator starts: everything before
        # it is known not to begin a terminator.
        self._scanned = 0

    def next_request(self) -> Any:
        """The next line (bytes, no terminator), or NEED_DATA. At end of
        stream, unterminated bytes are the last line (``eof_ends_line``) or
        a truncated request. Raises RemoteProtocolError for a line over
        ``max_size``, and keeps raising it."""
        if self._error is not None:
            raise self._error
        buf = self._buffer
        terminator = self.terminator
        width = len(terminator)
        # A terminator that starts past max_size ends an overlong line, so
        # the search stops there: a flood without terminators costs nothing
        # beyond the limit.
        limit = self.max_size + width
        end = buf.find(terminator, self._scanned, limit)
        if end < 0:
            # Only the last width - 1 bytes can begin a terminator still on
            # its way, and only where they are a prefix of it: the next
            # search starts at the first such place (at most width - 1 short
            # comparisons), or at the end.
            size = len(buf)
            start = max(self._scanned, size - width + 1)
            while start < size and not terminator.startswith(buf[start:]):
                start += 1
            self._scanned = start
            # At end of stream the last line is all that is left, a half
            # terminator included, and must fit the limit too.
            if start > self.max_size or (self._eof and self.eof_ends_line and size > self.max_size):
                raise self._fail(
                    f"line longer than {self.max_size} bytes without a terminator "
                    f"{terminator!r}: {bytes(buf[:_SHOWN])!r}...",
                    self.too_long_reply,
                    too_large=True,
                )
            if self._eof and buf:
                if not self.eof_ends_line:
                    raise self._truncated()
                line = bytes(buf)
                buf.clear()
                self._scanned = 0
                return line
            return NEED_DATA
        line = bytes(buf[:end])
        del buf[: end + width]
        self._scanned = 0
        return line

    def encode(self, message: Any) -> bytes:
        """``message`` (bytes, or str sent as UTF-8) with the terminator
        appended unless it already ends with it. Raises LocalProtocolError
        if the terminator also occurs earlier, inside it or straddling its
        end (b"x\\r\\n" before b"\\r\\n\\r\\n"): that would be two lines."""
        if isinstance(message, str):
            data = message.encode("utf-8")
        elif isinstance(message, (bytes, bytearray, memoryview)):
            data = bytes(message)
        else:  # bytes(5) would send five NUL bytes
            raise LocalProtocolError(f"a reply line must be bytes or str, not {type(message).__name__}")
        terminator = self.terminator
        if data.endswith(terminator):
            body = data[: -len(terminator)]
        else:
            body, data = data, data + terminator
        if data.find(terminator) < len(body):
            raise LocalProtocolError(
                f"a reply line contains the terminator {terminator!r}: {body[:_SHOWN]!r}"
            )
        return data


class LineHandler(FramedHandler):
    """Persistent line protocol: each line is answered by :meth:`handle_line`.

    Class attributes: ``terminator`` (default ``b"\\r\\n"``), ``max_size`` (the
    longest line, default 64 KiB), ``too_long_reply`` (the error line sent
    before closing on an overlong line; None sends nothing) and
    ``eof_ends_line``.
    """

    framer_class = LineFramer
    terminator = b"\r\n"
    too_long_reply: Optional[bytes] = b"ERROR line too long"
    eof_ends_line = True
    framer: LineFramer

    __slots__ = ()

    def make_framer(self) -> LineFramer:
        reply = self.too_long_reply
        if reply is not None and not reply.endswith(self.terminator):
            reply += self.terminator
        return LineFramer(
            self.request_size_limit(), self.terminator, too_long_reply=reply, eof_ends_line=self.eof_ends_line
        )

    def handle_line(self, line: bytes) -> Any:
        """Return the reply to ``line`` (bytes without the terminator): bytes
        or str, sent with the terminator appended, or None for no reply."""
        raise NotImplementedError(f"{type(self).__name__} must override handle_line()")

    def send_line(self, line: Any) -> None:
        """Send one line (bytes or str) unasked, e.g. a greeting from
        ``setup()``, after anything already queued."""
        self.send(self.framer.encode(line))

    def make_response(self) -> Any:
        reply = self.handle_line(self.request)
        if reply is None:
            return None
        return self.framer.encode(reply)


class LineEcho(LineHandler):
    """Sends every line back, terminated: the smallest line server."""

    __slots__ = ()

    def handle_line(self, line: bytes) -> bytes:
        return line
