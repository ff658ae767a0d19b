"""HTTP/1.1 on the loop: a request parser reads, this module answers.

Theory of operation. One :class:`HTTPHandler` serves one connection. What
the loop reads goes to a request parser (:mod:`evloop.protocols.http_parser`:
httptools when it is installed, else h11, or as ``http_parser`` or the
``EVLOOP_HTTP_PARSER`` environment variable say); its events build a
:class:`Request` (head, then the body up to ``max_body_size``). When the
request is whole, :meth:`HTTPHandler.handle_request` answers it (by default
through ``routes``, see :mod:`evloop.protocols.routing`) with a :class:`Response`,
bytes or str. The answer is framed here (the same bytes whichever parser
read the request) and queued with the engine's ``send()``:

- bytes and str go out at once; pipelined requests that arrived in one read
  are all answered before the loop's next flush, so they leave in one send;
- a file goes to the engine as the file object, so ``os.sendfile`` moves
  it; its length comes from ``fstat``;
- an iterable or generator is pulled lazily by the engine while the socket
  takes it: chunked when the length is unknown (HTTP/1.1), close-delimited
  for an HTTP/1.0 client.

Responses leave in request order (RFC 9112 section 9.3.2): while a streamed
body or a future is in flight, the requests after it wait unread, and
reading from the client pauses, so they cannot pile up. A connection stays
open after a response unless the request or the response said
``Connection: close`` or the client speaks HTTP/1.0.

Errors. A request the parser refuses gets its status (400; 431 for a head
over ``max_head_size``; 501 for an unknown transfer coding or method; 505
for another HTTP version; see the smuggling rules in the parser); a
declared or streamed body over ``max_body_size`` gets 413. These are the
peer's fault: they become :class:`~evloop.RemoteProtocolError`, so the
engine logs a warning with the peer's address, sends the error reply and
closes that one connection. An exception from application code gets 500
and a logged traceback, and the connection stays usable.
:class:`HTTPError` raised by application code is answered with its status.

Timeouts are the engine's (:mod:`evloop.limits`): a request that is not
whole ``request_timeout`` seconds after its first byte gets 408 (RFC 9110
section 15.5.9), an idle keep-alive connection is closed quietly.
"""

import logging
import os
import stat
from concurrent.futures import Future
from typing import Any, Iterable, List, Optional, cast

from evloop import ClientHandler, LocalProtocolError, RemoteProtocolError
from evloop.logs import loop_warnings

from .http_access import AccessLog
from .http_cycle import run_guarded
from .http_message import (
    HTTPError,
    Request,
    Response,
    SwitchProtocols,
    error_response,
    http_date,
    reason_phrase,
)
from .http_parser import CLOSED, END, NEED_DATA, ParseError, RequestHead, parser_class

__all__ = [
    "HTTPError",
    "HTTPHandler",
    "Request",
    "Response",
    "SwitchProtocols",
    "error_response",
    "http_date",
]

logger = logging.getLogger("evloop.http")

_BYTES_TYPES = (bytes, bytearray, memoryview)
_status_lines: "dict[int, str]" = {}
# [date, server name, the two header lines]: rebuilt once a second.
_fixed_headers: List[str] = ["", "", ""]


def _status_line(status: int, reason: Optional[str]) -> str:
    if reason is not None:
        return f"HTTP/1.1 {status} {reason}\r\n"
    line = _status_lines.get(status)
    if line is None:
        line = _status_lines[status] = f"HTTP/1.1 {status} {reason_phrase(status)}\r\n"
    return line


def _date_and_server(server_name: str) -> str:
    date = http_date()
    if date is not _fixed_headers[0] or server_name is not _fixed_headers[1]:
        _fixed_headers[:] = [date, server_name, f"Date: {date}\r\nServer: {server_name}\r\n"]
    return _fixed_headers[2]


def _encode_head(text: str) -> bytes:
    """The head's bytes; a CR or LF inside a header would split the
    response (RFC 9112 section 2.2), so it is our bug, refused here."""
    if text.count("\r") != text.count("\n"):
        raise LocalProtocolError(f"CR or LF inside a response header: {text!r}")
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        raise LocalProtocolError(f"response header not latin-1: {text!r}") from None


def _file_length(file: Any) -> Optional[int]:
    """Bytes left to send of a regular file, or None for anything else."""
    try:
        info = os.fstat(file.fileno())
    except (OSError, AttributeError, ValueError):
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    try:
        position = file.tell()
    except (OSError, AttributeError):
        position = 0
    return max(0, info.st_size - int(position))


class HTTPHandler(ClientHandler):
    """Serves HTTP/1.1 on one connection.

    Give it ``routes`` (a :class:`~evloop.protocols.routing.Router` or a dict of
    path to function, class or :class:`~evloop.protocols.static.StaticFiles`), or
    override :meth:`handle_request`. Settings, as class attributes:

    - ``max_head_size``: bytes of request line and headers (431 beyond);
      16 KiB, h11's default, between nginx's 8 KiB buffers and Apache's
      ~8 KiB per line times 100 lines;
    - ``max_body_size``: bytes of request body (413 beyond), 1 MiB;
    - ``http_parser``: ``"httptools"``, ``"h11"`` or None (the
      ``EVLOOP_HTTP_PARSER`` environment variable, else httptools when it
      is installed, else h11);
    - ``access_log``: an :class:`~evloop.protocols.http_access.AccessLog`
      (logger ``evloop.access``, Common Log Format), or None for none.

    Timeouts come from the server's :class:`~evloop.limits.Limits`.
    """

    close_when_done = False
    routes: Any = None
    max_head_size = 16 * 1024
    max_body_size = 1024 * 1024
    server_name = "evloop"
    http_parser: Optional[str] = None
    access_log: Optional[AccessLog] = AccessLog()

    __slots__ = (
        "_body",
        "_body_size",
        "_busy",
        "_ending",
        "_going_away",
        "_keep_alive",
        "_responding",
        "_router",
        "parser",
        "request",
        "upgraded",
    )

    def __init__(self, server: Any, client_socket: Any, client_address: Any) -> None:
        super().__init__(server, client_socket, client_address)
        self.parser = parser_class(self.http_parser)(self.max_head_size)
        self.request: Optional[Request] = None
        self.upgraded: Any = None
        self._body: List[bytes] = []
        self._body_size = 0
        # True while a response is in flight (a streamed body, a future):
        # the requests after it wait, so answers keep their order.
        self._busy = False
        # A response to the current request has begun (no error reply then).
        self._responding = False
        self._keep_alive = True
        # We asked the engine to close once the output is sent.
        self._ending = False
        # A graceful shutdown: the next response says Connection: close.
        self._going_away = False
        self._router: Any = None

    # -- hooks --------------------------------------------------------------

    def handle_request(self, request: Request) -> Any:
        """Answer ``request``: return a :class:`Response`, bytes, str, a
        :class:`SwitchProtocols`, or a ``concurrent.futures.Future`` whose
        result is one of those. Raise :class:`HTTPError` for an error status.
        The default dispatches through ``routes``."""
        router = self._router
        if router is None:
            from .routing import Router  # routing imports this module

            routes = self.routes
            router = self._router = routes if isinstance(routes, Router) else Router(routes or {})
        return router.dispatch(request)

    # -- what the engine calls ----------------------------------------------

    def finish(self) -> None:
        upgraded = self.upgraded
        if upgraded is not None:
            upgraded.connection_lost()

    def discard_input(self) -> None:
        """The connection closed: the parser's buffer goes now."""
        super().discard_input()
        self.parser.take_buffered()

    def data_received(self, data: bytes) -> None:
        if self.upgraded is not None:
            self.upgraded.data_received(data)
            return
        self.parser.feed(data)
        self._process()

    def pending_input(self) -> int:
        """Bytes of an incomplete request (the engine's request timeout runs
        while this is not 0): the body so far once a head has arrived, else
        the partial head. 0 while a reply is being produced, and on an
        upgraded connection (its own keepalive watches it)."""
        if self.upgraded is not None or self._busy:
            return 0
        if self.request is not None and not self._responding:
            return 1 + self._body_size
        return self.parser.buffered

    def held_memory(self) -> int:
        """Bytes held for the server's client memory budget: the parser's
        buffer, the body of the request in hand and, once upgraded, what
        the WebSocket holds."""
        if self.upgraded is not None:
            return int(self.upgraded.held_memory())
        return self.parser.buffered + (self._body_size if self.request is not None else 0)

    def handle_timeout(self, kind: str, seconds: float) -> None:
        if kind == "request" and self.upgraded is None and not self._responding:
            # RFC 9110 section 15.5.9: say why before closing.
            loop_warnings(self.loop).warn(
                "http-request-timeout",
                "%s: request not complete within %gs; 408",
                self.peer,
                seconds,
                log=logger,
            )
            self.send(self._error_reply(408))
            self._close_after_output()
            return
        if self.upgraded is not None and kind == "idle":
            self.upgraded.idle_timed_out(seconds)
            return
        super().handle_timeout(kind, seconds)

    def shutdown_gracefully(self) -> bool:
        """A graceful shutdown (:mod:`evloop.shutdown`): an upgraded
        connection is told goodbye by its protocol (a WebSocket gets Close
        1001) and closes once that is sent; HTTP goes the engine's way."""
        if self.upgraded is not None and not self.closed:
            self.upgraded.going_away("server shutting down")
            return False
        # RFC 9112 section 9.6: a request served from now on is the last,
        # and its response says so (Connection: close), so a keep-alive
        # client learns of the close with its answer, not from a FIN.
        self._going_away = True
        return super().shutdown_gracefully()

    def resume_writing(self) -> None:
        """Replies are down to the low-water mark: answer the requests held."""
        if self.upgraded is None:
            self._process()

    def eof_received(self) -> None:
        if self.upgraded is not None:
            self.upgraded.eof_received()
            return
        self.parser.feed_eof()
        self._process()

    # -- the request cycle ----------------------------------------------------

    def _process(self) -> None:
        """Turn the parser's events into requests and answer them, in order,
        until it needs more bytes, a response is in flight, or we close."""
        parser = self.parser
        while self.takes_requests and not self._busy and not self._ending and self.upgraded is None:
            try:
                event = parser.next_event()
            except ParseError as exc:
                self._refuse(exc.status, exc.detail)
                return
            if event.__class__ is bytes:
                self._body_size += len(event)
                if self._body_size > self.max_body_size:
                    self._refuse(413, f"request body over {self.max_body_size} bytes")
                    return
                self._body.append(event)
            elif event is END:
                request = self.request
                assert request is not None
                body = self._body
                if body:
                    request.body = body[0] if len(body) == 1 else b"".join(body)
                    self._body = []
                self.loop.requests += 1
                self._respond(request)
            elif event is NEED_DATA:
                return
            elif event is CLOSED:
                self._close_after_output()
                return
            else:
                head = cast(RequestHead, event)
                request = self._begin(head)
                if not head.body_length:
                    # Whole with its head (a GET): answered at once.
                    self.loop.requests += 1
                    self._respond(request)

    def _begin(self, head: RequestHead) -> Request:
        request = self.request = Request(head.method, head.target, head.headers, head.http_version, b"", self)
        self._keep_alive = head.keep_alive and not self._going_away
        self._responding = False
        self._body_size = 0
        # Refuse a declared oversize body before any of it is read (RFC 9110
        # section 15.5.14), and before telling a waiting client to send it.
        if head.body_length > self.max_body_size:
            self._refuse(413, f"Content-Length {head.body_length} over {self.max_body_size} bytes")
        if head.expects_continue and head.body_length:
            # RFC 9110 section 10.1.1: a client that sent Expect: 100-continue
            # waits for this before it sends the body.
            self.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        return request

    def _respond(self, request: Request) -> None:
        try:
            answer = self.handle_request(request)
        except HTTPError as exc:
            answer = error_response(exc.status, exc.message, exc.headers)
        except Exception:
            logger.exception("%s: error answering %s %r", self.peer, request.method, request.target)
            answer = error_response(500)
        if isinstance(answer, Future):
            # The engine holds its place in the output (so an end of stream
            # from the client still waits for it); its result is framed here,
            # on the loop's thread, when the application's future is done.
            self._set_busy()
            self._responding = True
            placeholder: Future[Any] = Future()
            self.send(placeholder)
            answer.add_done_callback(
                lambda future: self.loop.call_soon_threadsafe(
                    self._future_answered, request, future, placeholder
                )
            )
            return
        self.send(self._frame_answer(request, answer))

    def _future_answered(self, request: Request, future: "Future[Any]", placeholder: "Future[Any]") -> None:
        try:
            answer = future.result()
        except HTTPError as exc:
            answer = error_response(exc.status, exc.message, exc.headers)
        except Exception:
            logger.exception("%s: error answering %s %r", self.peer, request.method, request.target)
            answer = error_response(500)
        if self.closed:
            _close_body(getattr(answer, "body", None))
            return
        self._clear_busy()
        try:
            placeholder.set_result(self._frame_answer(request, answer))
        except Exception as exc:
            placeholder.set_exception(exc)
            return
        run_guarded(self, self._process)

    # -- sending --------------------------------------------------------------

    def _frame_answer(self, request: Request, answer: Any) -> Any:
        """The output that carries ``answer``, for the engine's ``send()``."""
        kind = answer.__class__
        if kind is str or kind is bytes:
            return self._frame_simple(request, answer)
        if kind is SwitchProtocols:
            return self._switch(request, answer)
        return self._frame_response(request, answer if kind is Response else Response(answer))

    def _frame_simple(self, request: Request, body: Any) -> bytes:
        """The common case, kept lean: a whole body, no extra headers."""
        if body.__class__ is str:
            body = body.encode("utf-8")
            content_type = "text/plain; charset=utf-8"
        else:
            content_type = "application/octet-stream"
        head = (
            "HTTP/1.1 200 OK\r\n"
            + _date_and_server(self.server_name)
            + f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        )
        if not self._keep_alive:
            head += "Connection: close\r\n"
        access = self.access_log
        if access is not None and access.enabled():
            access.log(self, request, 200, len(body))
        self._responding = True
        data = head.encode("latin-1") + b"\r\n"
        if request.method != "HEAD":
            data += body
        self._response_done()
        return data

    def _frame_response(self, request: Request, response: Response) -> Any:
        body = response.body
        if body is None:
            body = b""
        if isinstance(body, str):
            body = body.encode("utf-8")
            content_type = response.content_type or "text/plain; charset=utf-8"
        else:
            content_type = response.content_type or "application/octet-stream"
        status = response.status
        # RFC 9110 sections 6.4.1 and 8.6: 1xx, 204 and 304 have no body.
        bodiless = status < 200 or status in (204, 304)
        file_length = None
        if isinstance(body, _BYTES_TYPES):
            length: Optional[int] = len(body)
        elif hasattr(body, "read"):
            length = file_length = _file_length(body)
        else:
            length = response.length
        head, chunked = self._head_text(request, response, content_type, length, bodiless)
        framed_head = _encode_head(head)
        access = self.access_log
        if access is not None and access.enabled():
            access.log(self, request, status, 0 if bodiless else length)
        self._responding = True
        if bodiless or request.method == "HEAD":
            _close_body(body)
            self._response_done()
            return framed_head
        if isinstance(body, _BYTES_TYPES):
            self._response_done()
            if chunked:  # the application set Transfer-Encoding itself
                data = bytes(body)
                return framed_head + (b"%x\r\n%b\r\n0\r\n\r\n" % (len(data), data) if data else b"0\r\n\r\n")
            return framed_head + bytes(body)
        self._set_busy()
        if file_length is not None:
            # The engine streams the file itself, with os.sendfile.
            return [framed_head, body, self._stream_end()]
        if hasattr(body, "read"):
            body = _read_blocks(body, self.blocksize)
        return [framed_head, self._stream_body(body, chunked)]

    def _head_text(
        self, request: Request, response: Response, content_type: str, length: Optional[int], bodiless: bool
    ) -> "tuple[str, bool]":
        """The response head, and whether the body goes chunked; decides
        keep-alive for this exchange (RFC 9112 sections 6.3 and 9.3)."""
        lines = [_status_line(response.status, response.reason), _date_and_server(self.server_name)]
        names = {name.lower() for name, _ in response.headers} if response.headers else set()
        chunked = False
        if not bodiless:
            if "content-type" not in names:
                lines.append(f"Content-Type: {content_type}\r\n")
            if "content-length" in names or "transfer-encoding" in names:
                chunked = "transfer-encoding" in names
            elif length is not None:
                lines.append(f"Content-Length: {length}\r\n")
            elif request.http_version == "1.1":
                lines.append("Transfer-Encoding: chunked\r\n")
                chunked = True
            else:
                # An HTTP/1.0 client learns where the body ends from the close.
                self._keep_alive = False
        for name, value in response.headers:
            lines.append(f"{name}: {value}\r\n")
            if name.lower() == "connection" and "close" in value.lower():
                self._keep_alive = False
        if not self._keep_alive and "connection" not in names:
            lines.append("Connection: close\r\n")
        lines.append("\r\n")
        return "".join(lines), chunked

    def _stream_body(self, body: Iterable[Any], chunked: bool) -> Iterable[bytes]:
        """Frame the pieces of ``body`` as the engine pulls them."""
        try:
            for piece in body:
                if isinstance(piece, str):
                    piece = piece.encode("utf-8")
                if piece:
                    yield b"%x\r\n%b\r\n" % (len(piece), piece) if chunked else bytes(piece)
            if chunked:
                yield b"0\r\n\r\n"
        finally:
            _close_body(body)
        yield from self._stream_end()

    def _stream_end(self) -> Iterable[bytes]:
        """Runs when the engine has sent everything before it: the response
        is out, so the waiting requests may go on."""
        if not self.closed:
            self.loop.call_soon(self._resume)
        return
        yield b""  # a generator, pulled in turn with the output before it

    def _set_busy(self) -> None:
        # Until this reply is out, later requests wait unread in the socket
        # (TCP pushes back on the client), not in our memory.
        self._busy = True
        self.pause_reading()

    def _clear_busy(self) -> None:
        self._busy = False
        self.resume_reading()

    def _resume(self) -> None:
        self._clear_busy()
        self._response_done()
        run_guarded(self, self._process)

    def _response_done(self) -> None:
        if self._busy:
            return
        if not self._keep_alive:
            self._close_after_output()
        else:
            self.request = None
            self._responding = False

    def _close_after_output(self) -> None:
        self._ending = True
        self.parser.stop()
        self.close_when_sent()

    def _switch(self, request: Request, switch: SwitchProtocols) -> bytes:
        head = "HTTP/1.1 101 Switching Protocols\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in switch.headers
        )
        access = self.access_log
        if access is not None and access.enabled():
            access.log(self, request, 101, None)
        self._responding = True
        # Queue the 101 before the new protocol's first bytes.
        self.send(_encode_head(head + "\r\n"))
        trailing = self.parser.take_buffered()
        upgraded = self.upgraded = switch.make_protocol(self)
        upgraded.switched(trailing)
        return b""

    def _refuse(self, status: int, detail: str) -> None:
        """The peer broke HTTP: answer with ``status`` if a response can
        still start, and let the engine log, send it and close."""
        self._ending = True
        self.parser.stop()
        raise RemoteProtocolError(f"HTTP {status}: {detail}", reply=self._error_reply(status))

    def _error_reply(self, status: int) -> Optional[bytes]:
        """A closing error response, if one can still start; else None. The
        detail goes to the log, not to the peer: its own bytes are not
        echoed, and the reply is the same however the bytes were split."""
        if self._responding:
            return None
        self._responding = True
        text = f"{status} {reason_phrase(status)}\n"
        head = (
            _status_line(status, None)
            + _date_and_server(self.server_name)
            + "Content-Type: text/plain; charset=utf-8\r\n"
            + f"Content-Length: {len(text)}\r\nConnection: close\r\n\r\n"
        )
        access = self.access_log
        if access is not None and access.enabled():
            access.log(self, self.request, status, len(text))
        return (head + text).encode("latin-1")


def _close_body(body: Any) -> None:
    close = getattr(body, "close", None)
    if close is not None and not isinstance(body, (bytes, bytearray, memoryview, str)):
        try:
            close()
        except Exception:
            logger.exception("closing a response body failed")


def _read_blocks(file: Any, blocksize: int) -> Iterable[bytes]:
    """A file that is not a regular file (a pipe, BytesIO) read lazily."""
    while True:
        block = file.read(blocksize)
        if not block:
            return
        yield block
