"""One ``ClientHandler`` per client: the user's side of a connection.

Theory of operation. The engine owns the connection (:mod:`evloop.connection`:
the socket, the receive path, the output, the states from accept to close);
the handler is what a protocol writes. The connection hands it the bytes
that arrive (:meth:`ClientHandler.data_received`) and the events of its
life (``setup``, ``eof_received``, ``handle_error``, ``handle_timeout``,
``resume_writing``, ``finish``); the handler answers with :meth:`send`,
:meth:`close_when_sent` and :meth:`close`.

The default :meth:`data_received` is the classic recipe: append to
``self.incoming``, ask :meth:`request_complete` whether a request is there,
call :meth:`make_response`, consume the request's bytes and go round again,
so pipelined requests are all answered, in order. ``request_complete()``
returns a false value (not yet), True (the whole of ``incoming`` is the
request) or the number of bytes the request used. :meth:`find` searches
``incoming`` for a terminator and resumes where its last unsuccessful
search stopped, so a slow peer's partial request is never rescanned.

Output never goes to the socket from inside a handler: :meth:`send` queues
a response, and the connection sends everything queued in one pass at the
pass's end. ``send`` returns False once the queued output has passed the
high-water mark: a request loop stops there, leaving the rest of its input
buffered, and :meth:`resume_writing` runs when the output is down to the
low-water mark (per-request back-pressure; see :mod:`evloop.connection`).

End of stream: when the peer shuts down its write side,
:meth:`eof_received` runs, the replies still pending are delivered, then
the connection closes. ``close_when_done`` (default True, as in the recipe)
closes the connection once the first response has been sent.
"""

import logging
import socket
from concurrent.futures import Future
from typing import Any, Callable, Optional, TypeVar, Union

from .addresses import format_address, is_disconnect
from .connection import Connection
from .errors import LocalProtocolError, RemoteProtocolError, RequestTooLargeError
from .limits import DEFAULT_MAX_REQUEST_SIZE, Limits, limits_of
from .logs import loop_warnings
from .proxy_header import ProxyHeader
from .states import (
    BACKLOGGED,
    CLOSED,
    CLOSING,
    DIRTY,
    DRAINING,
    OPEN,
    PROXY_HEADER,
    READ_PAUSED,
    READING,
    STATE_MASK,
)

__all__ = ["ClientHandler", "format_address"]

T = TypeVar("T")

logger = logging.getLogger("evloop")


class ClientHandler:
    """Serves one client. Subclass it and override :meth:`request_complete`
    and :meth:`make_response` (the recipe's way), or :meth:`data_received`
    for full control of the bytes.

    Class attributes a subclass may change:

    - ``close_when_done``: close after the first response is sent (True) or
      keep the connection for the next request (False).
    - ``blocksize``: bytes read at a time from a file that cannot go out with
      ``os.sendfile``.
    - ``recv_size``: most bytes asked of one ``recv()``.
    - ``write_high_water`` / ``write_low_water``: stop taking requests and
      reading from this client while more than ``write_high_water`` bytes
      of its replies wait unsent (they pile up when a client sends requests
      and never reads); go on once no more than ``write_low_water`` wait.
      None (the default): the server's :class:`~evloop.limits.Limits`.
    - ``backlog_stops_reading``: True (the default) for a handler whose
      replies come from what it reads: reading stops while its output is
      over ``write_high_water``. A relay, whose reads feed another
      connection, sets it False and pauses the side that feeds it instead
      (``send`` returning False, then :meth:`resume_writing`).
    - ``busy_reply``: bytes sent to a client refused because the server is
      at ``Limits.max_connections`` (None: it is just closed).
    - ``max_offloaded``: most :meth:`offload` calls of this client in the
      worker pool at once; more wait their turn and reading pauses, so one
      client cannot fill the pool that every client shares.

    ``self.limits`` is the server's :class:`~evloop.limits.Limits`: request
    size, output marks and timeouts are read from it.
    """

    close_when_done = True
    blocksize = 64 * 1024
    recv_size = 256 * 1024
    write_high_water: Optional[int] = None
    write_low_water: Optional[int] = None
    backlog_stops_reading = True
    busy_reply: Optional[bytes] = None
    max_offloaded = 16

    # Slots keep an idle connection small (a subclass without them gets a __dict__).
    __slots__ = ("server", "client_address", "incoming", "connection", "_scanned", "proxy_header")

    def __init__(self, server: Any, client_socket: socket.socket, client_address: Any) -> None:
        self.server = server
        self.client_address = client_address
        # The shared empty bytes until data arrives: an idle client costs nothing here.
        self.incoming: Any = b""
        high = self.write_high_water
        if high is None:
            high = limits_of(server).write_high_water
        #: The engine's side of this connection (:class:`~evloop.connection.Connection`).
        self.connection = Connection(server.loop, self, client_socket, high)
        self._scanned = 0  # where find() resumes in incoming
        #: The :class:`~evloop.proxy_protocol.ProxyHeader` the load balancer sent
        #: (None without ``proxy_protocol``); ``client_address`` is the client it names.
        self.proxy_header: Optional[ProxyHeader] = None

    # -- the connection, as the handler sees it -------------------------------

    @property
    def loop(self) -> Any:
        """The :class:`~evloop.EventLoop` serving this client."""
        return self.connection.loop

    @property
    def client_socket(self) -> Any:
        """The client's socket (an ``ssl.SSLSocket`` on a TLS server)."""
        return self.connection.sock

    @property
    def closed(self) -> bool:
        """Whether the connection is closed."""
        return self.connection.flags & STATE_MASK == CLOSED

    @property
    def closing(self) -> bool:
        """Whether the connection takes no more requests (closing or closed)."""
        return self.connection.flags & STATE_MASK > OPEN

    @property
    def takes_requests(self) -> bool:
        """Whether a request loop should take the next request now: the
        connection is open, not closing, and its queued output is under the
        high-water mark (see :meth:`send`)."""
        return self.connection.flags & (STATE_MASK | BACKLOGGED) == OPEN

    @property
    def limits(self) -> Limits:
        """The server's :class:`~evloop.limits.Limits` (a property, not a
        slot: an idle connection is smaller for it)."""
        return limits_of(self.server)

    @property
    def peer(self) -> str:
        """The client's address, formatted for a log line."""
        return format_address(self.client_address)

    # -- hooks for subclasses -----------------------------------------------

    def setup(self) -> None:
        """Called once the connection is being served (socketserver's ``setup``)."""

    def finish(self) -> None:
        """Called once when the connection has closed, for whatever reason
        (socketserver's ``finish``)."""

    def discard_input(self) -> None:
        """The connection has closed (after :meth:`finish`): let go of the
        input buffered now, not when the garbage collector gets to the
        handler (it and its connection refer to each other). A handler
        that buffers input elsewhere than ``incoming`` drops that too."""
        self.incoming = bytearray()

    def request_complete(self) -> Union[bool, int]:
        """Say whether ``self.incoming`` holds a whole request: False (wait
        for more bytes), True (all of ``incoming`` is the request) or the
        number of bytes at the start of ``incoming`` that the request used."""
        return True

    def make_response(self) -> Any:
        """Return the response to the request just completed: bytes, str, a
        file object, an iterable of those, a Future or None."""
        raise NotImplementedError(f"{type(self).__name__} must override make_response()")

    def data_received(self, data: bytes) -> None:
        """Bytes arrived. The default buffers them in ``incoming`` and answers
        every complete request in it, in order."""
        incoming = self.incoming
        if type(incoming) is not bytearray:  # a recipe handler may assign b"" or ""
            if isinstance(incoming, str):
                incoming = incoming.encode("latin-1")
            incoming = self.incoming = bytearray(incoming)
        incoming += data
        self.answer_buffered_requests()

    def answer_buffered_requests(self) -> None:
        """The recipe's loop: answer every whole request in ``incoming``, in
        order, until it holds none, the connection closes, or the queued
        output passes the high-water mark (then the rest waits for
        :meth:`resume_writing`)."""
        connection = self.connection
        while connection.flags & (STATE_MASK | BACKLOGGED) == OPEN:
            used = self.request_complete()
            if not used:
                limit = self.limits.max_request_size or DEFAULT_MAX_REQUEST_SIZE
                if len(self.incoming) > limit:
                    raise RequestTooLargeError(f"request over the limit of {limit} bytes and not complete")
                return
            response = self.make_response()
            self.loop.requests += 1
            incoming = self.incoming
            if used is True:
                del incoming[:]
            else:
                if used > len(incoming):
                    raise LocalProtocolError(
                        f"request_complete() said {used!r} bytes were used, "
                        f"but only {len(incoming)} are buffered"
                    )
                del incoming[:used]
            self._scanned = 0
            self.send(response)
            if self.close_when_done:
                self.close_when_sent()
                return
            if not incoming:
                return

    def find(self, terminator: bytes) -> int:
        """Where ``terminator`` starts in ``self.incoming``, or -1. A search
        that fails remembers how far it looked, and the next one (for the
        same terminator, with ``incoming`` only grown since) starts there:
        a request that trickles in a byte at a time costs O(its length),
        not O(length squared). The recipe's loop resets it as it consumes
        a request; code that consumes ``incoming`` itself calls
        ``find`` only after resetting it with :meth:`forget_search`."""
        incoming = self.incoming
        start = self._scanned
        if start > len(incoming):
            start = 0
        found = incoming.find(terminator, start)
        if found < 0:
            self._scanned = max(0, len(incoming) - len(terminator) + 1)
        else:
            self._scanned = found  # asked again before consuming: found again at once
        return int(found)

    def forget_search(self) -> None:
        """Make the next :meth:`find` search ``incoming`` from its start."""
        self._scanned = 0

    def eof_received(self) -> Optional[bool]:
        """The peer shut down its write side; no more bytes will come.
        Pending replies are still delivered, then the connection closes;
        return True to keep it half-open instead (a proxy still has bytes
        to deliver) and close it yourself later."""
        if self.incoming:
            logger.debug(
                "%s: end of stream with %d bytes of an incomplete request", self.peer, len(self.incoming)
            )
        return None

    def resume_writing(self) -> None:
        """The output held back by the high-water mark is down to the low
        one: answer the requests left buffered meanwhile. The default runs
        the recipe's loop again; a handler with its own request loop
        overrides it to go on with that loop (asyncio's protocols have a
        hook of this name for the same moment)."""
        if self.incoming:
            self.answer_buffered_requests()

    def handle_error(self, exc: BaseException) -> None:
        """Something went wrong while serving this client. The default: a
        peer that broke the protocol gets a warning line, its error reply if
        the protocol has one, and a lingering close once pending replies are
        out; a vanished peer, a debug line and a close; anything else, the
        traceback with the peer's address, and a close."""
        if isinstance(exc, RemoteProtocolError):
            # Rate-limited: one line per 10 s, then how many were held back.
            loop_warnings(self.loop).warn(
                "protocol-error", "%s: %s; closing the connection", self.peer, exc.message
            )
            if exc.reply:
                self.send(exc.reply)
            self.close_when_sent(linger=True)
        elif isinstance(exc, OSError) and is_disconnect(exc):
            logger.debug("%s: connection lost: %s", self.peer, exc)
            self.close()
        else:
            logger.error(
                "%s: error in %s; closing the connection", self.peer, type(self).__name__, exc_info=exc
            )
            self.close()

    def handle_timeout(self, kind: str, seconds: float) -> None:
        """A timeout fired: ``kind`` is ``"idle"``, ``"request"`` or
        ``"write"`` (see :mod:`evloop.timeouts`). The default logs which (a
        warning; idle is only info) and closes the connection; a protocol
        with a reply for it (HTTP's 408) may send that and call
        :meth:`close_when_sent` instead."""
        level = logging.INFO if kind == "idle" else logging.WARNING
        logger.log(level, "%s: %s timeout (%gs) fired; closing the connection", self.peer, kind, seconds)
        self.close()

    # -- what a handler calls -----------------------------------------------

    def send(self, response: Any) -> bool:
        """Queue ``response`` (bytes, str, a file, an iterable of those, a
        Future or None) after everything already queued. It goes out when
        the current loop pass ends. Ignored once the connection is closed.

        Returns whether the connection takes more requests now: False once
        it is closing, or once the queued output has passed the high-water
        mark (also while it is still connecting: then the output waits); a
        request loop stops there, and :meth:`resume_writing` tells it when
        to go on."""
        connection = self.connection
        flags = connection.flags
        if flags & STATE_MASK > CLOSING:
            return False  # closed (or lingering): nothing more goes out
        kind = type(response)
        if kind is not bytes:
            if response is None:
                return self._takes_requests()
            if kind is str:
                response = response.encode("utf-8")
            elif kind is list and response and all(type(piece) is bytes for piece in response):
                response = b"".join(response) if len(response) > 1 else response[0]
            else:
                self._queue_stream(response)
                response = None
        if response is not None:  # bytes: onto this pass's batch
            batch = connection.batch
            if batch is None:
                connection.batch = [response]
            else:
                batch.append(response)
            connection.queued += len(response)
        if not flags & DIRTY:  # the first reply of this pass: flush at its end
            connection.flags = flags | DIRTY
            connection.loop.to_flush.append(connection)
        if flags & STATE_MASK <= OPEN and connection.queued <= connection.high_water:
            return True  # open, or still connecting or handshaking: queued for later
        return self._takes_requests()

    def _takes_requests(self) -> bool:
        connection = self.connection
        if connection.flags & STATE_MASK > OPEN:
            return False
        if connection.queued > connection.high_water:
            if not connection.flags & BACKLOGGED:
                connection.loop.limit_hit("output_backlog")
            connection.flags |= BACKLOGGED
            return False
        return True

    def close_when_sent(self, linger: bool = False) -> None:
        """Stop taking requests and close once every queued response is
        out. ``linger=True`` for a refused client: after the last reply our
        side is shut and the client's bytes are read and dropped for a
        while, so a client still sending sees the reply instead of a reset
        (RFC 9112 section 9.6)."""
        self.connection.close_when_sent(linger)

    def close(self) -> None:
        """Close the connection now, dropping unsent output. Idempotent."""
        self.connection.close()

    def pause_reading(self) -> None:
        """Stop reading from this client until :meth:`resume_reading`, e.g.
        while another connection it feeds cannot keep up (a proxy)."""
        self.connection.set_read_paused(True)

    def resume_reading(self) -> None:
        """Read from this client again after :meth:`pause_reading`."""
        self.connection.set_read_paused(False)

    @property
    def buffered_output(self) -> int:
        """Bytes of replies queued for this client and not yet sent (files
        and generators not yet read are not counted)."""
        return int(self.connection.queued)

    def offload(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> "Future[T]":
        """Run ``func(*args, **kwargs)`` in the loop's worker pool and return
        a ``concurrent.futures.Future`` for its result: return that from
        :meth:`make_response` (or :meth:`send` it) and the result goes out
        when it is ready, in request order. See :mod:`evloop.offload`."""
        from .offload import offload_call

        return offload_call(self, func, args, kwargs)

    def pending_input(self) -> int:
        """Bytes of an incomplete request buffered now (0: between
        requests). The request timeout runs while this is not 0; a handler
        that buffers input elsewhere than ``incoming`` says how much here."""
        return len(self.incoming)

    def held_memory(self) -> int:
        """Bytes of input held in memory now, for the client memory budget
        (``Limits.max_clients_memory``; the engine adds the queued output).
        By default :meth:`pending_input`; a handler that holds more (a
        message being assembled, a body waiting for an application) says
        how much here."""
        return self.pending_input()

    def shutdown_gracefully(self) -> bool:
        """The loop is shutting down gracefully: finish what is in flight,
        then close. A request that has arrived unread is read and served;
        one in the middle of arriving is served once complete; a reply
        already queued goes out. For the shutdown's short grace the
        connection stays open, so that a request already on its way (a
        client that just connected, a keep-alive client's next one) is
        served, not dropped, and closes after it; at the grace's end
        :meth:`close_between_requests`. Every close ends our side of the
        stream first and reads (and drops) until the peer ends its own, for
        at most LINGER_SECONDS, so nothing the peer sends meanwhile meets a
        reset (see :mod:`evloop.closing`). Returns True if nothing was in
        flight, False while something is."""
        connection = self.connection
        if connection.closed:
            return True
        state = connection.flags & STATE_MASK
        if state != OPEN and state != CLOSING and state != PROXY_HEADER:
            connection.close()  # still connecting or handshaking: nothing in flight
            return True
        connection.drain_on_shutdown()  # closed once the next request is answered
        if state == PROXY_HEADER:
            return False  # a request may follow its PROXY header: served, then closed
        if self.pending_input():
            return False
        if connection.output is not None or connection.batch is not None:
            return False
        # A request may have come since the loop last read: serve it now.
        if connection.flags & READING and not connection.flags & READ_PAUSED:
            try:
                connection.handle_read()
            except OSError:
                connection.close()
        if connection.closed:
            return True
        return (
            connection.flags & STATE_MASK == OPEN and not self.pending_input() and connection.output is None
        )

    def close_between_requests(self) -> None:
        """The graceful shutdown's grace is over: close once the replies
        queued are sent (with the lingering read); a request still arriving
        is served first, as :meth:`shutdown_gracefully` arranged."""
        if self.connection.flags & STATE_MASK == OPEN and not self.pending_input():
            self.close_when_sent()

    @property
    def shutting_down(self) -> bool:
        """Whether a graceful shutdown has asked this connection to finish:
        a protocol that can say so tells its peer this reply is the last
        (HTTP's ``Connection: close``)."""
        return bool(self.connection.flags & DRAINING)

    # -- starting (the server or the connector calls these) ------------------

    def start(self) -> None:
        """Begin serving: watch the socket for reading and run :meth:`setup`."""
        self.connection.start()

    def handle_read(self) -> None:
        """Read what the socket has and hand it on (the loop calls the
        connection's; this is for code that drives a handler by hand)."""
        self.connection.handle_read()

    def handle_write(self) -> None:
        """The socket is writable: send what is queued (see :meth:`handle_read`)."""
        self.connection.handle_write()

    def flush(self) -> None:
        """Send what is queued now (see :meth:`handle_read`)."""
        self.connection.flush()

    # -- internals ------------------------------------------------------------

    def _queue_stream(self, response: Any) -> None:
        """Queue a response that is not plain bytes, keeping the order."""
        connection = self.connection
        output = connection.new_output()
        batch = connection.batch
        if batch is not None:
            connection.batch = None
            output.add(batch)
        before = output.buffered
        output.add(response)
        connection.queued += output.buffered - before

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<{type(self).__name__} {self.peer} {state}>"
