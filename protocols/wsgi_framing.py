"""HTTP/1.1 response framing for the WSGI server, written by hand.

Why not h11 here: h11 parses the requests (its strictness is what keeps
request smuggling out), but serialising a response through its state
machine cost more loop time than the rest of a hello-world request. The
rules it applied are few and are applied here instead, one response at a
time (RFC 9112 section 6, RFC 9110 section 6.4.1):

- no body after HEAD, 1xx, 204 or 304 (the head is sent as it is);
- a Content-Length the application declares is obeyed: more bytes than it
  says, or fewer by the end, is an error (:class:`FramingError`) and the
  connection closes, since the client would misread what follows;
- without one, a body that is whole when the head goes out gets a
  Content-Length; otherwise HTTP/1.1 gets chunked transfer coding
  (section 7.1) and HTTP/1.0 a body delimited by closing the connection;
- ``Connection: close`` from either side, or an HTTP/1.0 request (which
  does not keep the connection alive unless asked, and we do not offer),
  closes after the response (section 9.6).

Header names and values were checked when the application called
``start_response`` (:func:`~.wsgi_app.check_header`), in its thread.
"""

from typing import List, Optional, Tuple

from .http_message import http_date

__all__ = ["FramingError", "ResponseFramer"]

_NO_BODY_STATUS = frozenset((204, 304))
# Hop-by-hop framing is the server's to decide (PEP 3333: applications must
# not send hop-by-hop headers); a Transfer-Encoding from the application is dropped.
_DROPPED = frozenset((b"transfer-encoding",))

_LENGTH, _CHUNKED, _UNTIL_CLOSE, _NONE = range(4)


class FramingError(Exception):
    """The application's body does not match its declared Content-Length."""


class ResponseFramer:
    """Frames one response: :meth:`head`, then :meth:`data` per piece, then
    :meth:`end`. ``keep_alive`` says, once the head is framed, whether the
    connection may carry another request after this response."""

    __slots__ = ("_mode", "_remaining", "head_request", "keep_alive", "server_name", "version_11")

    def __init__(
        self, version_11: bool, head_request: bool, client_keep_alive: bool, server_name: bytes
    ) -> None:
        self.version_11 = version_11
        self.head_request = head_request
        self.keep_alive = client_keep_alive and version_11
        self.server_name = server_name
        self._mode = _NONE
        self._remaining = 0

    def head(
        self, status: int, reason: bytes, headers: List[Tuple[bytes, bytes]], whole: Optional[int]
    ) -> bytes:
        """The status line and headers. ``whole`` is the body's size when
        all of it is already known (None while more may come)."""
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        length = None
        has_date = has_server = False
        for name, value in headers:
            lower = name.lower()
            if lower in _DROPPED:
                continue
            if lower == b"content-length":
                length = int(value)
            elif lower == b"connection":
                if b"close" in value.lower():
                    self.keep_alive = False
            elif lower == b"date":
                has_date = True
            elif lower == b"server":
                has_server = True
            lines.append(b"%s: %s\r\n" % (name, value))
        if not has_date:
            lines.append(b"Date: %s\r\n" % http_date().encode("ascii"))
        if not has_server:
            lines.append(b"Server: %s\r\n" % self.server_name)
        if self.head_request or status < 200 or status in _NO_BODY_STATUS:
            self._mode = _NONE
        elif length is not None:
            self._mode, self._remaining = _LENGTH, length
        elif whole is not None:
            self._mode, self._remaining = _LENGTH, whole
            lines.append(b"Content-Length: %d\r\n" % whole)
        elif self.version_11:
            self._mode = _CHUNKED
            lines.append(b"Transfer-Encoding: chunked\r\n")
        else:
            self._mode = _UNTIL_CLOSE
            self.keep_alive = False
        if not self.keep_alive:
            lines.append(b"Connection: close\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    def announced_length(self) -> Optional[int]:
        """Once the head is framed: the body's size as the head tells it (0
        for none), None when it is chunked or runs until the close."""
        mode = self._mode
        if mode == _NONE:
            return 0
        return self._remaining if mode == _LENGTH else None

    def data(self, piece: bytes) -> bytes:
        """``piece`` framed for the wire (empty after HEAD and the like).
        Raises FramingError past the declared Content-Length."""
        mode = self._mode
        if mode == _LENGTH:
            self._remaining -= len(piece)
            if self._remaining < 0:
                raise FramingError(
                    f"the application sent {-self._remaining} bytes more than its Content-Length"
                )
            return piece
        if mode == _CHUNKED:
            return b"%x\r\n%s\r\n" % (len(piece), piece) if piece else b""
        if mode == _UNTIL_CLOSE:
            return piece
        return b""

    def file_length(self, length: int) -> None:
        """A file of ``length`` bytes goes out as the body, sent by the engine."""
        if self._mode == _LENGTH:
            self._remaining -= length

    def end(self) -> bytes:
        """The end of the body. Raises FramingError if it is short of the
        declared Content-Length."""
        if self._mode == _CHUNKED:
            return b"0\r\n\r\n"
        if self._mode == _LENGTH and self._remaining:
            raise FramingError(
                f"the application's body ended {self._remaining} bytes short of its Content-Length"
            )
        return b""
