"""Host a WSGI application (PEP 3333) on the loop, WebSocket beside it.

Theory of operation. One :class:`WSGIHandler` serves one connection. The
request parser the HTTP handler uses (:mod:`~.http_parser`: httptools
when installed, else h11, or as ``http_parser`` or ``EVLOOP_HTTP_PARSER``
say; the same smuggling and limit rules either way) reads what the loop
reads; each request head starts one call of
:func:`~.wsgi_app.run_application` in the loop's offload pool (``threads``
sets its size; a :class:`~.wsgi_io.TaskDispatcher` feeds it), which calls
the application, iterates its result and closes it, all in that worker
thread: the loop never waits for application code. The body streams to the application through
``wsgi.input`` (:class:`~.wsgi_io.InputStream`) while the application
already runs; when the application falls behind, reading the socket
pauses. The response comes back through a bounded
:class:`~.wsgi_io.ResponseChannel`: a generator in the engine's output
queue takes what the worker produced, frames it and yields it,
and waits (on a Future the worker completes) when there is nothing yet.
The engine pulls that generator only when the socket has taken what came
before, so the client's pace bounds the memory a response uses. A worker
that fills the channel (``output_buffer_size``) while iterating the
result parks the rest of the iteration and returns its thread to the
pool; taking from the channel resumes it in a worker thread. A client
that reads slowly, or not at all, holds no thread.

Framing (:mod:`~.wsgi_framing`, by hand: cheaper than h11's serialiser).
A response whose whole body is ready when its head is framed gets a
Content-Length; otherwise HTTP/1.1 gets chunked encoding and HTTP/1.0 a
close-delimited body. HEAD, 1xx, 204 and 304 send no body (RFC 9110
sections 9.3.2, 6.4.1). A ``wsgi.file_wrapper`` around a regular file
goes out with ``os.sendfile``.

Order. One request is served at a time per connection: the requests
pipelined behind it wait unparsed in the parser's buffer, and past
``max_pipelined`` bytes in the socket (reading pauses), so they are
answered in order (RFC 9112 section 9.3.2).

WebSocket. Paths in ``websocket`` (path to a
:class:`~evloop.protocols.websocket.WebSocketHandler` subclass) are
answered on the loop: the handshake is checked and, after the 101, the
connection belongs to an instance of that class (ws4py's
``WebSocketWSGIApplication`` role); every other path goes to the
application.

Errors. A malformed request gets the parser's status (400; 431 for a
head over ``max_head_size``; 501, 505; 413 for a body over
``max_body_size``) and that
connection closes, with a warning naming the peer. An exception from the
application becomes a 500 with the traceback logged, or, once its head is
out, a closed connection.

Access log. Each response's head, as it is framed, writes one line through
``access_log`` (:class:`~.http_access.AccessLog`, the Common Log Format
to the ``evloop.access`` logger, as for the HTTP handler); a refusal
writes one too.
"""

import logging
import weakref
from functools import partial
from typing import Any, Dict, List, Optional

from evloop import ClientHandler, RemoteProtocolError
from evloop.offload import DEFAULT_MAX_WORKERS, offload_executor, set_offload_executor

from .http_access import AccessLog
from .http_cycle import closing_error_reply, run_guarded
from .http_message import HTTPError, Request, SwitchProtocols, error_response, reason_phrase
from .http_parser import CLOSED, NEED_DATA, ParseError, RequestHead, parser_class
from .http_parser import END as REQUEST_END
from .wsgi_app import FAILED, Exchange, Head, SendFile, fixed_environ, run_application
from .wsgi_framing import FramingError, ResponseFramer
from .wsgi_io import (
    EMPTY_INPUT,
    END,
    ErrorStream,
    FileWrapper,
    InputStream,
    ResponseChannel,
    TaskDispatcher,
    run_continuation,
)

__all__ = ["FileWrapper", "WSGIHandler", "serve_wsgi", "wsgi_handler"]

logger = logging.getLogger("evloop.wsgi")

# Loops whose offload pool a WSGIHandler class has sized already, and the
# dispatcher that feeds each loop's pool.
_sized_pools: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()
_dispatchers: "weakref.WeakKeyDictionary[Any, TaskDispatcher]" = weakref.WeakKeyDictionary()


class _ResponseFailedError(Exception):
    """The application failed after its head was sent (already logged)."""


class WSGIHandler(ClientHandler):
    """Serves a WSGI application on one connection. Make a subclass with
    :func:`wsgi_handler` or set the class attributes:

    - ``application``: the WSGI callable;
    - ``websocket``: ``{path: WebSocketHandler subclass}`` answered before
      the application (exact paths, the query string ignored);
    - ``threads``: size of the loop's offload pool the application runs in
      (None: leave the pool as it is, by default ``min(32, cpus + 4)``);
    - ``max_head_size`` (16 KiB, 431 beyond) and ``max_body_size``
      (1 GiB, 413 beyond): bytes of a request's head and body;
    - ``http_parser``: ``"httptools"``, ``"h11"`` or None (the
      ``EVLOOP_HTTP_PARSER`` environment variable, else httptools when it
      is installed, else h11), as for :class:`~evloop.protocols.http.HTTPHandler`;
    - ``input_buffer_size``: body bytes held for an application that has not
      read them yet (reading the socket pauses beyond it);
    - ``output_buffer_size``: response bytes the application may run ahead
      of the client (beyond it the iteration of its result is parked and
      resumed when the client has taken them; ``write()`` waits);
    - ``script_name``: the mount point, SCRIPT_NAME; ``multiprocess``:
      ``wsgi.multiprocess``;
    - ``access_log``: an :class:`~evloop.protocols.http_access.AccessLog`
      (a line per request to ``evloop.access`` at INFO), or None for none.
    """

    close_when_done = False
    application: Any = None
    websocket: Dict[str, Any] = {}
    threads: Optional[int] = None
    max_head_size = 16 * 1024
    max_body_size = 1024 * 1024 * 1024
    input_buffer_size = 256 * 1024
    max_pipelined = 64 * 1024
    output_buffer_size = 256 * 1024
    script_name = ""
    multiprocess = False
    server_name = "evloop"
    http_parser: Optional[str] = None
    access_log: Optional[AccessLog] = AccessLog()

    __slots__ = (
        "_body_size",
        "_exchange",
        "_executor",
        "_fixed",
        "_input_full",
        "_paused",
        "_request_done",
        "_response_done",
        "_upgrade_head",
        "_upgrade_to",
        "_framer",
        "_going_away",
        "_server_name",
        "parser",
        "upgraded",
    )

    def __init__(self, server: Any, client_socket: Any, client_address: Any) -> None:
        super().__init__(server, client_socket, client_address)
        self.parser = parser_class(self.http_parser)(self.max_head_size)
        self.upgraded: Any = None
        self._exchange: Optional[Exchange] = None
        self._executor: Any = None
        self._fixed: Optional[Dict[str, Any]] = None
        self._body_size = 0
        self._request_done = True
        self._response_done = True
        self._input_full = False
        self._paused = False
        # A graceful shutdown: the next response says Connection: close.
        self._going_away = False
        self._framer = ResponseFramer(True, False, True, b"")
        self._server_name = self.server_name.encode("ascii")
        self._upgrade_to: Any = None
        self._upgrade_head: Optional[RequestHead] = None

    # -- what the engine calls ----------------------------------------------

    def setup(self) -> None:
        loop = self.loop
        threads = self.threads
        if threads and _sized_pools.get(loop) != threads:
            _sized_pools[loop] = threads
            try:
                set_offload_executor(loop, max_workers=threads)
            except RuntimeError as exc:
                logger.warning("cannot size the offload pool to %d threads: %s", threads, exc)
        executor = offload_executor(loop)
        dispatcher = _dispatchers.get(loop)
        if dispatcher is None or dispatcher.executor is not executor:  # new, or the pool was replaced
            limit = threads or DEFAULT_MAX_WORKERS
            dispatcher = _dispatchers[loop] = TaskDispatcher(executor, limit, loop.call_later)
        self._executor = dispatcher

    def finish(self) -> None:
        exchange = self._exchange
        if exchange is not None:
            exchange.input.fail(ConnectionResetError("the client closed the connection"))
            for item in exchange.channel.close():
                if type(item) is SendFile:
                    item.file.close()
        if self.upgraded is not None:
            self.upgraded.connection_lost()

    def discard_input(self) -> None:
        """The connection closed: the parser's buffer goes now."""
        super().discard_input()
        self.parser.take_buffered()

    def data_received(self, data: bytes) -> None:
        if self.upgraded is not None:
            self.upgraded.data_received(data)
            return
        self.parser.feed(data)
        if self._request_done and not self._response_done:
            # Pipelined requests wait in the parser's buffer, unparsed, up to a bound.
            self._update_reading()
            return
        self._process()

    def eof_received(self) -> Optional[bool]:
        if self.upgraded is not None:
            self.upgraded.eof_received()
            return None
        # The parser refuses a request this cuts short.
        self.parser.feed_eof()
        if self._request_done and not self._response_done:
            # Stay open for the answer and for requests pipelined before the
            # end: the parser reports the end (and we close) once they are served.
            return True
        self._process()
        return None

    def pending_input(self) -> int:
        """Bytes of an incomplete request (the engine's request timeout runs
        while this is not 0); 0 while the application answers a whole one."""
        if self.upgraded is not None:
            return 0
        if not self._request_done:
            return 1 + self._body_size
        if not self._response_done:
            return 0
        return self.parser.buffered

    def held_memory(self) -> int:
        """Bytes held for the server's client memory budget: input not yet
        parsed and the request body waiting for the application; once
        upgraded, what the WebSocket holds."""
        if self.upgraded is not None:
            return int(self.upgraded.held_memory())
        exchange = self._exchange
        return self.parser.buffered + (exchange.input.buffered if exchange is not None else 0)

    def handle_timeout(self, kind: str, seconds: float) -> None:
        if self.upgraded is not None and kind == "idle":
            self.upgraded.idle_timed_out(seconds)
            return
        if kind == "request" and self._response_done and self._exchange is None:
            # RFC 9110 section 15.5.9: say why before closing.
            logger.warning("%s: request not complete within %gs; 408", self.peer, seconds)
            reply = closing_error_reply(408, self.server_name)
            self._log_access(None, 408, _body_size(reply))
            self.send(reply)
            self.parser.stop()
            self.close_when_sent()
            return
        super().handle_timeout(kind, seconds)

    def shutdown_gracefully(self) -> bool:
        if self.upgraded is not None and not self.closed:
            self.upgraded.going_away("server shutting down")
            return False
        # As protocols.http: a response started from now on is the last and
        # says so (Connection: close), so a keep-alive client hears of the
        # close with its answer.
        self._going_away = True
        return super().shutdown_gracefully()

    def handle_error(self, exc: BaseException) -> None:
        if isinstance(exc, _ResponseFailedError):
            self.close()  # the worker logged the traceback
            return
        super().handle_error(exc)

    # -- the request cycle ----------------------------------------------------

    def _process(self) -> None:
        """Turn the parser's events into calls of the application until it
        needs more bytes, the application must catch up, or a response is
        due (the requests pipelined behind one wait, unparsed)."""
        parser = self.parser
        while self.upgraded is None and not self.closed and not self._input_full:
            if self._request_done and not self._response_done:
                return
            try:
                event = parser.next_event()
            except ParseError as exc:
                self._refuse(exc.status, exc.detail)
                return
            if event.__class__ is bytes:
                self._body_received(event)
            elif event is NEED_DATA:
                return
            elif event is REQUEST_END:
                self._request_complete()
            elif event is CLOSED:
                self.close_when_sent()
                return
            else:
                head: RequestHead = event  # type: ignore[assignment]
                self._begin(head)
                if not head.body_length and not self.closed:
                    self._request_complete()  # whole with its head (a GET)

    def _begin(self, head: RequestHead) -> None:
        self._body_size = 0
        self._request_done = self._response_done = False
        path = head.target.partition("?")[0]
        if self.websocket and path in self.websocket:
            self._upgrade_to, self._upgrade_head = self.websocket[path], head
            return
        if head.body_length > self.max_body_size:
            # RFC 9110 section 15.5.14: refuse before reading any of it.
            self._refuse(413, f"Content-Length {head.body_length} over {self.max_body_size} bytes")
        if head.expects_continue and head.body_length:
            # RFC 9110 section 10.1.1: the client waits for this to send the body.
            self.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = EMPTY_INPUT
        if head.body_length:
            body = InputStream(self.input_buffer_size, self._input_drained_soon)
        exchange = self._exchange = Exchange(
            type(self).application,  # from the class: a plain function stays unbound
            self._fixed or self._make_fixed(),
            self.script_name,
            self.peer,
            head,
            body,
            ResponseChannel(self.output_buffer_size, partial(self._executor.submit, run_continuation)),
        )
        self._framer = ResponseFramer(
            head.http_version == "1.1",
            head.method == "HEAD",
            head.keep_alive and not self._going_away,
            self._server_name,
        )
        # The loop's offload pool, through a dispatcher rather than
        # offload(): a connection has one call at a time here, offload()'s
        # done-callback would wake the loop once more per request, and the
        # dispatcher spares most of the thread wake-ups (see TaskDispatcher).
        self._executor.submit(run_application, exchange)
        self.send(self._response_stream(exchange))

    def _body_received(self, data: bytes) -> None:
        self._body_size += len(data)
        if self._body_size > self.max_body_size:
            self._refuse(413, f"request body over {self.max_body_size} bytes")
        exchange = self._exchange
        if exchange is None or self._response_done:
            return  # a body nobody reads any more: skipped on the way to the next request
        if exchange.input.feed(data):
            self._input_full = True
            self._update_reading()

    def _request_complete(self) -> None:
        self._request_done = True
        self.loop.requests += 1
        if self._upgrade_to is not None:
            self._upgrade()
            return
        exchange = self._exchange
        if exchange is not None:
            exchange.input.finish()
        if self._response_done:
            self._next_cycle()

    def _input_drained_soon(self) -> None:
        # In the application's thread: hop back onto the loop.
        self.loop.call_soon_threadsafe(self._input_drained)

    def _input_drained(self) -> None:
        self._input_full = False
        self._update_reading()
        run_guarded(self, self._process)

    def _update_reading(self) -> None:
        """Read while a request is coming in and its reader keeps up; pause
        while the application is behind, or while more than
        ``max_pipelined`` bytes of the next requests wait for a response in
        flight (the rest stay in the socket, and TCP pushes back). Not
        pausing for a few pipelined bytes saves two system calls a request."""
        pause = self._input_full or (
            self._request_done and not self._response_done and self.parser.buffered > self.max_pipelined
        )
        if pause != self._paused:
            self._paused = pause
            if pause:
                self.pause_reading()
            else:
                self.resume_reading()

    def _response_finished(self) -> None:
        if self.closed:
            return
        self._response_done = True
        exchange = self._exchange
        if exchange is not None and not self._request_done:
            # Answered before the body was read: the rest is read and
            # dropped (bounded by max_body_size), so the connection goes on.
            exchange.input.fail(OSError("the response was sent before the body was read"))
            self._input_full = False
        if not self._framer.keep_alive:
            self.close_when_sent()
        elif self._request_done:
            self._next_cycle()
        else:
            self._update_reading()
            run_guarded(self, self._process)

    def _next_cycle(self) -> None:
        """Request and response are both done: on to the next request, or
        close."""
        if not self._framer.keep_alive:
            self.parser.stop()
            self.close_when_sent()
            return
        self._exchange = None
        self._update_reading()
        run_guarded(self, self._process)

    def _make_fixed(self) -> Dict[str, Any]:
        server = self.server
        scheme = "https" if getattr(server, "ssl_context", None) is not None else "http"
        try:
            name, port = str(server.host), str(server.port)
        except (AttributeError, OSError):
            name, port = "localhost", ""
        errors = ErrorStream(logging.getLogger("evloop.wsgi.errors"), self.peer + ": ")
        self._fixed = fixed_environ(name, port, self.client_address, scheme, self.multiprocess, errors)
        return self._fixed

    # -- the response -----------------------------------------------------------

    def _response_stream(self, exchange: Exchange) -> Any:
        """What the engine sends for ``exchange``: the application's output
        framed as it comes, a Future to wait on while there is none."""
        channel = exchange.channel
        while True:
            taken = channel.take()
            if type(taken) is not list:
                yield taken  # a Future: the engine waits for the worker
                continue
            framed, state = self._frame(taken)
            yield framed
            if state is END:
                break
            if state is FAILED:
                # What came before the failure is out; the response cannot end well.
                raise _ResponseFailedError()
        # Pulled again only once all of it was sent: the next request may go.
        self.loop.call_soon(self._response_finished)

    def _frame(self, items: List[Any], request: Any = None) -> Any:
        """The wire bytes (and files) for channel items, and END or FAILED
        if the response ended (None if more is to come). ``request`` (the
        current exchange by default) is what the access log names."""
        framer = self._framer
        out: List[Any] = []
        try:
            for item in items:
                kind = type(item)
                if kind is bytes:
                    out.append(framer.data(item))
                elif kind is Head:
                    whole = None
                    if items[-1] is END:  # the whole body is here: say its length
                        whole = sum(len(piece) for piece in items if type(piece) is bytes)
                    out.append(framer.head(item.status, item.reason, item.headers, whole))
                    self._log_access(request or self._exchange, item.status, framer.announced_length())
                elif item is END:
                    out.append(framer.end())
                    return out, END
                elif kind is SendFile:
                    framer.file_length(item.length)
                    out.append(item.file)
                elif item is FAILED:
                    return out, FAILED
        except FramingError as exc:
            logger.error("%s: %s; closing the connection", self.peer, exc)
            return out, FAILED
        return out, None

    # -- WebSocket routes -------------------------------------------------------

    def _upgrade(self) -> None:
        handler_class, head = self._upgrade_to, self._upgrade_head
        self._upgrade_to = self._upgrade_head = None
        assert head is not None
        request = Request(head.method, head.target, head.headers, head.http_version, b"", self)
        try:
            answer = handler_class.accept_upgrade(request)
        except HTTPError as exc:
            answer = error_response(exc.status, exc.message, exc.headers)
        if not isinstance(answer, SwitchProtocols):
            body = str(answer.body).encode("utf-8")
            headers = [("Content-Type", "text/plain; charset=utf-8"), *answer.headers]
            status = Head(answer.status, reason_phrase(answer.status).encode(), _encode(headers))
            version_11 = head.http_version == "1.1"
            self._framer = ResponseFramer(version_11, False, head.keep_alive, self._server_name)
            framed, _ = self._frame([status, body, END], request)
            self.send(framed)
            self._response_done = True
            self._next_cycle()
            return
        lines = "".join(f"{name}: {value}\r\n" for name, value in answer.headers)
        self._log_access(request, 101, None)
        self.send(_encode_head(f"HTTP/1.1 101 Switching Protocols\r\n{lines}\r\n"))
        trailing = self.parser.take_buffered()
        self._response_done = True
        self._update_reading()
        upgraded = self.upgraded = answer.make_protocol(self)
        upgraded.switched(trailing)

    # -- errors -------------------------------------------------------------------

    def _log_access(self, request: Any, status: int, size: Optional[int]) -> None:
        """The access log's line for ``request`` (None: its head was not
        read), answered ``status`` with a body of ``size`` bytes."""
        access = self.access_log
        if access is not None and access.enabled():
            access.log(self, request, status, size)

    def _refuse(self, status: int, detail: str) -> None:
        """The peer broke HTTP: answer ``status`` if no response is under way,
        and let the engine log, send it and close."""
        self.parser.stop()
        exchange = self._exchange
        if exchange is not None:
            exchange.input.fail(OSError(f"bad request body: {detail}"))
        # A response of this cycle is out or on its way: no second one.
        reply = None if exchange is not None else closing_error_reply(status, self.server_name)
        if reply is not None:
            self._log_access(None, status, _body_size(reply))
        raise RemoteProtocolError(f"HTTP {status}: {detail}", reply=reply)


def _body_size(reply: bytes) -> int:
    """The body bytes of a whole response."""
    return len(reply.partition(b"\r\n\r\n")[2])


def _encode_head(text: str) -> bytes:
    """A head the handler frames; a CR or LF inside a header would split it
    (RFC 9112 section 2.2)."""
    if text.count("\r") != text.count("\n"):
        raise ValueError(f"CR or LF inside a response header: {text!r}")
    return text.encode("latin-1")


def _encode(headers: Any) -> Any:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]


def wsgi_handler(application: Any, *, websocket: Optional[Dict[str, Any]] = None, **options: Any) -> Any:
    """A :class:`WSGIHandler` subclass serving ``application``, for
    ``loop()``, ``EventLoop.add_server()`` or ``WorkerProcesses``.
    ``websocket`` maps paths to WebSocketHandler subclasses; ``options``
    set the other class attributes (``threads=8``, ``max_body_size=...``).
    Raises TypeError for an option that is not one."""
    for name in options:
        if name.startswith("_") or not hasattr(WSGIHandler, name) or callable(getattr(WSGIHandler, name)):
            raise TypeError(f"wsgi_handler() got an unknown option {name!r}")
    attributes: Dict[str, Any] = {"application": staticmethod(application), "__slots__": ()}
    attributes["websocket"] = dict(websocket or {})
    attributes.update(options)
    name = getattr(application, "__name__", type(application).__name__)
    return type(f"WSGI_{name}", (WSGIHandler,), attributes)


def serve_wsgi(
    application: Any,
    host: str = "localhost",
    port: int = 8000,
    *,
    threads: Optional[int] = 8,
    websocket: Optional[Dict[str, Any]] = None,
    workers: int = 1,
    ssl: Any = None,
    limits: Any = None,
    **options: Any,
) -> None:
    """Serve ``application`` on ``host``:``port`` until Ctrl-C or SIGTERM
    (a graceful stop), with ``threads`` worker threads per process and
    ``workers`` processes sharing the port (SO_REUSEPORT; not with TLS).
    ``websocket`` and ``options`` are :func:`wsgi_handler`'s. Logs
    ``listening on HOST:PORT`` once bound (port 0 picks a free one)."""
    handler_class = wsgi_handler(
        application, websocket=websocket, threads=threads, multiprocess=workers > 1, **options
    )
    if workers > 1:
        from evloop.workers import WorkerProcesses

        if ssl is not None:
            raise ValueError("workers > 1 serves plain TCP; it does not combine with TLS")
        processes = WorkerProcesses(handler_class, host, port, workers=workers, limits=limits)
        processes.run(lambda ready: logger.info("listening on %s:%d", ready.host, ready.port))
        return
    from evloop import Server
    from evloop.serve import loop

    server = Server(host, port, ssl=ssl, limits=limits)
    logger.info("listening on %s:%d", server.host, server.port)
    loop(server, handler_class)
