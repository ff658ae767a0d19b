"""The values HTTP code passes around: requests, responses, errors.

No parsing happens here (:mod:`evloop.protocols.http_parser` does that): these are
plain objects an application builds and reads, so routes, static files and
WebSocket handshakes share them without depending on the connection code.
"""

import email.utils
import time
from http import HTTPStatus
from typing import Any, Callable, List, Optional, Tuple
from urllib.parse import unquote

__all__ = [
    "HTTPError",
    "Headers",
    "Request",
    "Response",
    "SwitchProtocols",
    "error_response",
    "http_date",
    "reason_phrase",
]

Headers = List[Tuple[str, str]]


class HTTPError(Exception):
    """Raise from application code to answer with ``status``; the connection
    stays open for the next request."""

    def __init__(self, status: int, message: str = "", headers: Optional[Headers] = None) -> None:
        super().__init__(message or reason_phrase(status))
        self.status = status
        self.message = message
        self.headers = list(headers or ())


class Request:
    """One HTTP request, as the request parser read it.

    - ``method``: ``"GET"``...; ``target``: the request-target as sent;
    - ``path``: the target's path, *not* percent-decoded (routes match the
      bytes as sent, so an encoded slash can never change which route
      answers); ``unquoted_path`` decodes it; ``query``: after ``?``;
    - ``headers``: ``[(name, value)]`` with lower-case names, in order;
    - ``body``: bytes; ``http_version``: ``"1.1"`` or ``"1.0"``;
    - ``connection``: the :class:`HTTPHandler` serving it (``.peer``,
      ``.loop``); ``route`` and ``subpath``: the route pattern that matched
      and the part of ``path`` after a prefix route.
    """

    __slots__ = (
        "body",
        "connection",
        "headers",
        "http_version",
        "method",
        "path",
        "query",
        "route",
        "subpath",
        "target",
    )

    def __init__(
        self,
        method: str,
        target: str,
        headers: Headers,
        http_version: str = "1.1",
        body: bytes = b"",
        connection: Any = None,
    ) -> None:
        self.method = method
        self.target = target
        path, _, query = target.partition("?")
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.http_version = http_version
        self.connection = connection
        self.route: Optional[str] = None
        self.subpath = path

    def header(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """The value of header ``name`` (any case); repeated headers are
        joined with ``", "`` (RFC 9110 section 5.3). ``default`` if absent."""
        name = name.lower()
        values = [value for key, value in self.headers if key == name]
        if not values:
            return default
        return ", ".join(values)

    def header_tokens(self, name: str) -> List[str]:
        """The comma-separated tokens of header ``name``, lower-cased."""
        value = self.header(name, "")
        assert value is not None
        return [token.strip().lower() for token in value.split(",") if token.strip()]

    @property
    def unquoted_path(self) -> str:
        """The path, percent-decoded as UTF-8."""
        return unquote(self.path, errors="surrogateescape")

    @property
    def peer(self) -> str:
        return self.connection.peer if self.connection is not None else "<no connection>"

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target!r}>"


class Response:
    """An answer: ``body`` is bytes, str (sent as UTF-8), a binary file
    object, an iterable or generator of bytes/str, or None.

    ``length`` declares the size of an iterable body (Content-Length instead
    of chunked); a file's length is found with ``fstat``. ``content_type``
    defaults to ``text/plain; charset=utf-8`` for str and
    ``application/octet-stream`` otherwise. ``headers`` are extra headers.
    """

    __slots__ = ("body", "content_type", "headers", "length", "reason", "status")

    def __init__(
        self,
        body: Any = b"",
        status: int = 200,
        headers: Optional[Headers] = None,
        *,
        content_type: Optional[str] = None,
        length: Optional[int] = None,
        reason: Optional[str] = None,
    ) -> None:
        self.status = status
        self.body = body
        self.headers = list(headers or ())
        self.content_type = content_type
        self.length = length
        self.reason = reason

    @classmethod
    def redirect(cls, location: str, status: int = 302) -> "Response":
        return cls("", status, [("Location", location)])

    def __repr__(self) -> str:
        return f"<Response {self.status}>"


class SwitchProtocols:
    """What a handler returns to take the connection over (``101 Switching
    Protocols``, RFC 9110 section 15.2.2): after the 101 with ``headers`` is
    queued, ``make_protocol(connection)`` makes the object that owns the
    connection from then on, as ``connection.upgraded``; its
    ``switched(trailing_bytes)`` runs at once (with any bytes that followed
    the request), then it receives ``data_received(data)``,
    ``eof_received()``, ``connection_lost()``, ``idle_timed_out(seconds)``
    and ``going_away(reason)`` (the server is shutting down gracefully)."""

    __slots__ = ("headers", "make_protocol")

    def __init__(self, headers: Headers, make_protocol: Callable[[Any], Any]) -> None:
        self.headers = headers
        self.make_protocol = make_protocol


def reason_phrase(status: int) -> str:
    """The standard reason phrase for ``status``; empty if unknown."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


_date_cache: List[Any] = [0, ""]


def http_date(when: Optional[float] = None) -> str:
    """An IMF-fixdate (RFC 9110 section 5.6.7); the current time is cached
    per second, since every response carries it."""
    if when is not None:
        return email.utils.formatdate(when, usegmt=True)
    now = int(time.time())
    if now != _date_cache[0]:
        _date_cache[0] = now
        _date_cache[1] = email.utils.formatdate(now, usegmt=True)
    return str(_date_cache[1])


def error_response(status: int, detail: str = "", headers: Optional[Headers] = None) -> Response:
    """A small text/plain error page: ``"404 Not Found"`` and the detail."""
    text = f"{status} {reason_phrase(status)}"
    if detail:
        text += f": {detail}"
    return Response(text + "\n", status, headers)
