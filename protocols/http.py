"""HTTP/1.1 on the loop: h11 parses and serialises, this module is the glue.

Theory of operation. One :class:`HTTPHandler` serves one connection. What
the loop reads goes to an ``h11.Connection``; its events build a
:class:`Request` (head, then the body up to ``max_body_size``). When the
request is whole, :meth:`HTTPHandler.handle_request` answers it (by default
through ``routes``, see :mod:`evloop.protocols.routing`) with a :class:`Response`,
bytes or str, and the answer is framed by h11 and queued with the engine's
``send()``:

- bytes and str go out at once; pipelined requests that arrived in one read
  are all answered before the loop's next flush, so they leave in one send;
- a file goes to the engine as the file object (h11's data passthrough), so
  ``os.sendfile`` moves it; its length comes from ``fstat``;
- an iterable or generator is pulled lazily by the engine while the socket
  takes it, each piece framed by h11 as it comes: chunked when the length is
  unknown (HTTP/1.1), close-delimited for an HTTP/1.0 client.

Responses leave in request order (RFC 9112 section 9.3.2): while a streamed
body or a future is in flight, the requests after it wait in h11's buffer,
and reading from the client pauses, so they cannot pile up. Keep-alive and
``Connection: close`` follow h11.

Errors. A request h11 cannot parse gets 400 (431 when its head passes
``max_head_size``, 501 for an unknown transfer coding); a declared or
streamed body over ``max_body_size`` gets 413. These are the peer's fault:
they become :class:`~evloop.RemoteProtocolError`, so the engine logs a
warning with the peer's address, sends the error reply and closes that one
connection. An exception from application code gets 500 and a logged
traceback, and the connection stays usable. :class:`HTTPError` raised by
application code is answered with its status.

Timeouts are the engine's (:mod:`evloop.limits`): a request that is not
whole ``request_timeout`` seconds after its first byte gets 408 (RFC 9110
section 15.5.9), an idle keep-alive connection is closed quietly.
"""

import logging
import os
import stat
from concurrent.futures import Future
from typing import Any, Iterable, List, Optional, cast

try:
    import h11
except ModuleNotFoundError as exc:  # h11 is the http extra, not a core dependency
    raise ModuleNotFoundError(
        f"evloop.protocols.http needs {exc.name}: pip install 'evloop-server[http]'", name=exc.name
    ) from exc

from evloop import ClientHandler, LocalProtocolError, RemoteProtocolError

from .http_message import (
    HTTPError,
    Request,
    Response,
    SwitchProtocols,
    error_response,
    http_date,
    reason_phrase,
)

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

# h11 has it, but does not list it among its exports.
_MIGHT_SWITCH_PROTOCOL = h11.MIGHT_SWITCH_PROTOCOL  # type: ignore[attr-defined]


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


class _Passthrough:
    """Stands for a file's bytes in h11's passthrough; only its length counts."""

    __slots__ = ("length",)

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length


class HTTPHandler(ClientHandler):
    """Serves HTTP/1.1 on one connection.

    Give it ``routes`` (a :class:`~evloop.protocols.routing.Router` or a dict of
    path to function, class or :class:`~evloop.protocols.static.StaticFiles`), or
    override :meth:`handle_request`. Limits, as class attributes:

    - ``max_head_size``: bytes of request line and headers (431 beyond);
      16 KiB, h11's default, between nginx's 8 KiB buffers and Apache's
      ~8 KiB per line times 100 lines;
    - ``max_body_size``: bytes of request body (413 beyond), 1 MiB.

    Timeouts come from the server's :class:`~evloop.limits.Limits`.
    """

    close_when_done = False
    routes: Any = None
    max_head_size = 16 * 1024
    max_body_size = 1024 * 1024
    server_name = "evloop"

    __slots__ = (
        "_body",
        "_body_size",
        "_busy",
        "_router",
        "_unparsed",
        "conn",
        "request",
        "upgraded",
    )

    def __init__(self, server: Any, client_socket: Any, client_address: Any) -> None:
        super().__init__(server, client_socket, client_address)
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_head_size)
        self.request: Optional[Request] = None
        self.upgraded: Any = None
        self._body: List[bytes] = []
        self._body_size = 0
        # True while a response is in flight (a streamed body, a future):
        # the requests after it wait, so answers keep their order.
        self._busy = False
        # Bytes received since the last request head: a partial head, for
        # the engine's request timeout (see pending_input()).
        self._unparsed = 0
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

    def data_received(self, data: bytes) -> None:
        if self.upgraded is not None:
            self.upgraded.data_received(data)
            return
        self._unparsed += len(data)
        self.conn.receive_data(data)
        self._process()

    def pending_input(self) -> int:
        """Bytes of an incomplete request (the engine's request timeout runs
        while this is not 0): the body so far once a head has arrived, else
        what came since the last head. 0 while a reply is being produced,
        and on an upgraded connection (its own keepalive watches it)."""
        if self.upgraded is not None or self._busy:
            return 0
        if self.request is not None:
            return 1 + self._body_size
        return self._unparsed

    def handle_timeout(self, kind: str, seconds: float) -> None:
        if (
            kind == "request"
            and self.upgraded is None
            and self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE)
        ):
            # RFC 9110 section 15.5.9: say why before closing.
            logger.warning("%s: request not complete within %gs; 408", self.peer, seconds)
            self.send(self._error_reply(408))
            self.close_when_sent()
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
        return super().shutdown_gracefully()

    def eof_received(self) -> None:
        if self.upgraded is not None:
            self.upgraded.eof_received()
            return
        # h11 raises "peer unexpectedly closed" if this cuts a request short.
        self.conn.receive_data(b"")
        self._process()

    # -- the request cycle ----------------------------------------------------

    def _process(self) -> None:
        """Turn h11's events into requests and answer them, in order, until
        h11 needs more bytes, a response is in flight, or we are closing."""
        conn = self.conn
        while not self._closing and not self._busy and self.upgraded is None and not self.closed:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._refuse(exc.error_status_hint, str(exc))
                return
            if isinstance(event, h11.Data):
                self._body_size += len(event.data)
                if self._body_size > self.max_body_size:
                    self._refuse(413, f"request body over {self.max_body_size} bytes")
                    return
                self._body.append(event.data)
            elif isinstance(event, h11.Request):
                self._unparsed = 0
                self._begin(event)
            elif isinstance(event, h11.EndOfMessage):
                request = self.request
                assert request is not None
                request.body = b"".join(self._body)
                self._body = []
                self._unparsed = 0
                self.loop.requests += 1
                self._respond(request)
            elif event is h11.NEED_DATA:
                return
            elif event is h11.PAUSED:
                # Their request is done and ours is answered: next cycle.
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                    self.request = None
                    continue
                return
            elif isinstance(event, h11.ConnectionClosed):
                self.close_when_sent()
                return

    def _begin(self, event: h11.Request) -> None:
        # h11 bounds a head that is still incomplete; one that arrived whole
        # in a single read is measured here, so the limit does not depend on
        # how the bytes were split.
        size = (
            len(event.method)
            + len(event.target)
            + 12
            + sum(len(name) + len(value) + 4 for name, value in event.headers)
        )
        if size > self.max_head_size:
            self._refuse(431, f"request head of about {size} bytes over {self.max_head_size}")
        request = self.request = Request.from_h11(event, self)
        self._body = []
        self._body_size = 0
        # Refuse a declared oversize body before any of it is read (RFC 9110
        # section 15.5.14), and before telling a waiting client to send it.
        length = request.header("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_size:
            self._refuse(413, f"Content-Length {length} over {self.max_body_size} bytes")
            return
        if self.conn.they_are_waiting_for_100_continue:
            # RFC 9110 section 10.1.1: a client that sent Expect: 100-continue
            # waits for this before it sends the body.
            self.send(self.conn.send(h11.InformationalResponse(status_code=100, headers=[])))

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
        self._process_guarded()

    # -- sending --------------------------------------------------------------

    def _frame_answer(self, request: Request, answer: Any) -> Any:
        """The output that carries ``answer``, for the engine's ``send()``."""
        if isinstance(answer, SwitchProtocols):
            return self._switch(answer)
        response = answer if isinstance(answer, Response) else Response(answer)
        try:
            return self._frame_response(request, response)
        except h11.LocalProtocolError as exc:
            raise LocalProtocolError(f"cannot send {response!r} for {request!r}: {exc}") from exc

    def _frame_response(self, request: Request, response: Response) -> Any:
        conn = self.conn
        body = response.body
        headers = [("Date", http_date()), ("Server", self.server_name)]
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
        head_only = bodiless or request.method == "HEAD"
        file_length = None
        if isinstance(body, (bytes, bytearray, memoryview)):
            length: Optional[int] = len(body)
        elif hasattr(body, "read"):
            length = file_length = _file_length(body)
        else:
            length = response.length
        names = {name.lower() for name, _ in response.headers}
        if not bodiless:
            if "content-type" not in names:
                headers.append(("Content-Type", content_type))
            if length is not None and "content-length" not in names:
                headers.append(("Content-Length", str(length)))
        headers.extend(response.headers)
        head = conn.send(
            h11.Response(status_code=status, headers=headers, reason=response.reason or reason_phrase(status))
        )
        if head_only:
            _close_body(body)
            head += conn.send(h11.EndOfMessage())
            self._response_done()
            return head
        if isinstance(body, (bytes, bytearray, memoryview)):
            data = conn.send(h11.Data(data=cast(bytes, body))) if body else b""
            head += data + conn.send(h11.EndOfMessage())
            self._response_done()
            return head
        self._set_busy()
        if file_length is not None:
            # h11 frames the placeholder (nothing to add for Content-Length)
            # and the engine streams the file itself, with os.sendfile.
            placeholder = cast(bytes, _Passthrough(file_length))
            pieces = conn.send_with_data_passthrough(h11.Data(data=placeholder))
            assert pieces is not None
            framed = [body if isinstance(piece, _Passthrough) else piece for piece in pieces]
            return [head, *framed, conn.send(h11.EndOfMessage()), self._stream_end()]
        if hasattr(body, "read"):
            body = _read_blocks(body, self.blocksize)
        return [head, self._stream_body(body)]

    def _stream_body(self, body: Iterable[Any]) -> Iterable[bytes]:
        """Frame the pieces of ``body`` with h11 as the engine pulls them."""
        conn = self.conn
        try:
            for piece in body:
                if isinstance(piece, str):
                    piece = piece.encode("utf-8")
                if piece:
                    yield conn.send(h11.Data(data=piece))
            yield conn.send(h11.EndOfMessage())
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
        self._process_guarded()

    def _process_guarded(self) -> None:
        # Outside an I/O callback the engine does not sort our exceptions:
        # do what it would, so a bad pipelined request still gets its 400.
        if self.closed:
            return
        try:
            self._process()
        except Exception as exc:
            self.handle_error(exc)

    def _response_done(self) -> None:
        conn = self.conn
        if conn.our_state is h11.MUST_CLOSE:
            self.close_when_sent()
        elif conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            self.request = None
        elif conn.our_state is h11.DONE and conn.their_state is not _MIGHT_SWITCH_PROTOCOL:
            # Answered before the request body was read: the connection
            # cannot be reused (h11 would refuse the next cycle).
            if conn.their_state is h11.SEND_BODY:
                self.close_when_sent()

    def _switch(self, switch: SwitchProtocols) -> bytes:
        conn = self.conn
        head = conn.send(
            h11.InformationalResponse(status_code=101, headers=switch.headers, reason=b"Switching Protocols")
        )
        trailing, _ = conn.trailing_data
        # Queue the 101 before the new protocol's first bytes.
        self.send(head)
        upgraded = self.upgraded = switch.make_protocol(self)
        upgraded.switched(bytes(trailing))
        return b""

    def _refuse(self, status: int, detail: str) -> None:
        """The peer broke HTTP: answer with ``status`` if a response can
        still start, and let the engine log, send it and close."""
        raise RemoteProtocolError(f"HTTP {status}: {detail}", reply=self._error_reply(status))

    def _error_reply(self, status: int) -> Optional[bytes]:
        """A closing error response, if one can still start; else None. The
        detail goes to the log, not to the peer: its own bytes are not
        echoed, and the reply is the same however the bytes were split."""
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return None
        text = f"{status} {reason_phrase(status)}\n".encode()
        try:
            reply = self.conn.send(
                h11.Response(
                    status_code=status,
                    reason=reason_phrase(status),
                    headers=[
                        ("Date", http_date()),
                        ("Server", self.server_name),
                        ("Content-Type", "text/plain; charset=utf-8"),
                        ("Content-Length", str(len(text))),
                        ("Connection", "close"),
                    ],
                )
            )
            return reply + self.conn.send(h11.Data(data=text)) + self.conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            return None


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
