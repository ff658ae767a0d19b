"""One ``ClientHandler`` per connected client: buffer input, find requests,
queue responses.

Theory of operation. The loop calls :meth:`ClientHandler.handle_read` when the
socket is readable. The bytes go to :meth:`data_received`, whose default is
the classic recipe: append to ``self.incoming``, ask :meth:`request_complete`
whether a request is there, call :meth:`make_response`, consume the request's
bytes and go round again, so pipelined requests are all answered, in order.
``request_complete()`` returns a false value (not yet), True (the whole of
``incoming`` is the request, the recipe's rule) or the number of bytes the
request used (the rest stays in ``incoming`` for the next request).

Output never goes to the socket from inside a handler. :meth:`send` queues a
response and marks the handler dirty; at the end of each loop pass the loop
flushes every dirty handler once (Redis's ``handleClientsWithPendingWrites``),
so all the replies produced from one read leave in one ``send`` call. What the
socket does not take waits in an :class:`~evloop.output.OutputQueue`, and only
then is the socket watched for writability.

End of stream: when the peer shuts down its write side, :meth:`eof_received`
runs, reading stops, the replies still pending are delivered, then the
connection closes. ``close_when_done`` (default True, as in the recipe)
closes the connection once the first response has been sent.
"""

import errno
import logging
import socket
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable, List, Optional, TypeVar, Union

from .errors import LocalProtocolError, RemoteProtocolError
from .eventloop import EVENT_READ, EVENT_WRITE, RECV_BUFFER_SIZE
from .limits import DEFAULT_MAX_REQUEST_SIZE, arm_timeouts, limits_of, note_read, note_write_stall
from .output import EMPTY, WANT_WRITE, OutputQueue
from .tls import WOULD_BLOCK, is_tls, read_pending, send_close_notify

if TYPE_CHECKING:
    from .limits import Limits

T = TypeVar("T")

__all__ = ["ClientHandler", "format_address"]

logger = logging.getLogger("evloop")

# Bytes left unread in the kernel when a socket closes turn its FIN into a
# RST, which can make the peer discard our last reply; this much is drained.
_LINGER_DRAIN = 256 * 1024

# The bits of ClientHandler._state.
_READING = 1  # the peer has not ended its stream
_CLOSING = 2  # close once the queued output is sent; take no more requests
_DIRTY = 4  # in the loop's list of handlers to flush at the end of the pass
_READ_PAUSED = 8  # pause_reading() is in force
# Bits 4 and 5 hold the selector events the socket is registered for.
_EVENTS_SHIFT = 4
_EVENTS_MASK = EVENT_READ | EVENT_WRITE


class _Flag:
    """One bit of ``ClientHandler._state``, read and set like a bool
    attribute, for the code outside the hot paths (which test the bits)."""

    __slots__ = ("bit",)

    def __init__(self, bit: int) -> None:
        self.bit = bit

    def __get__(self, handler: Any, owner: Any = None) -> Any:
        return self if handler is None else bool(handler._state & self.bit)

    def __set__(self, handler: Any, on: bool) -> None:
        handler._state = handler._state | self.bit if on else handler._state & ~self.bit


def format_address(address: Any) -> str:
    """A peer address for a log line: ``host:port``, ``[v6]:port`` or a path."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    if isinstance(address, bytes):
        address = address.decode("utf-8", "replace")
    return str(address) if address else "<unnamed>"


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
    - ``write_high_water`` / ``write_low_water``: stop reading from this
      client while more than ``write_high_water`` bytes of its replies wait
      unsent (they pile up when a client sends requests and never reads);
      read again once no more than ``write_low_water`` wait. None (the
      default): the server's :class:`~evloop.limits.Limits`.
    - ``busy_reply``: bytes sent to a client refused because the server is
      at ``Limits.max_connections`` (None: it is just closed).
    - ``max_offloaded``: most :meth:`offload` calls of this client in the
      worker pool at once; more wait their turn and reading pauses, so one
      client cannot fill the pool that every client shares.

    ``self.limits`` is the server's :class:`~evloop.limits.Limits`: request
    size, output marks and timeouts are read from it.
    """

    close_when_done = True
    is_client_handler = True  # how the loop tells connections from listeners
    blocksize = 64 * 1024
    recv_size = 256 * 1024
    write_high_water: Optional[int] = None
    write_low_water: Optional[int] = None
    busy_reply: Optional[bytes] = None
    max_offloaded = 16

    # Slots keep an idle connection small (a subclass without __slots__ still
    # gets a __dict__ for its own attributes).
    __slots__ = (
        "server",
        "loop",
        "client_socket",
        "client_address",
        "incoming",
        "closed",
        "_state",  # the _READING, _CLOSING, _DIRTY, _READ_PAUSED bits and the selector events
        "_batch",
        "_output",
        # The timeout clocks (evloop.limits).
        "_active",
        "_request_since",
    )

    # The connection's flags live in one int (``_state``): four bool slots
    # would cost an idle connection 24 bytes more.
    _state: int

    @property
    def limits(self) -> "Limits":
        """The server's :class:`~evloop.limits.Limits` (a property, not a
        slot: an idle connection is 16 bytes smaller for it)."""
        return limits_of(self.server)

    @property
    def _events(self) -> int:
        """What the selector watches the socket for (EVENT_READ/EVENT_WRITE)."""
        return (self._state >> _EVENTS_SHIFT) & _EVENTS_MASK

    @_events.setter
    def _events(self, events: int) -> None:
        self._state = (self._state & ~(_EVENTS_MASK << _EVENTS_SHIFT)) | (events << _EVENTS_SHIFT)

    _reading = _Flag(_READING)
    _closing = _Flag(_CLOSING)
    _dirty = _Flag(_DIRTY)
    _read_paused = _Flag(_READ_PAUSED)

    def __init__(self, server: Any, client_socket: socket.socket, client_address: Any) -> None:
        self.server = server
        self.loop = server.loop
        self.client_socket = client_socket
        self.client_address = client_address
        # The shared empty bytes until data arrives: an idle client costs nothing here.
        self.incoming: Any = b""
        self.closed = False
        self._state = _READING
        self._batch: Optional[List[bytes]] = None
        self._output: Optional[OutputQueue] = None
        # Loop times (floats the loop shares between connections; the
        # write clock lives in the OutputQueue, which exists while one runs).
        self._active = 0.0
        self._request_since: Optional[float] = None

    # -- hooks for subclasses -----------------------------------------------

    def setup(self) -> None:
        """Called once the connection is being served (socketserver's ``setup``)."""

    def finish(self) -> None:
        """Called once when the connection has closed, for whatever reason
        (socketserver's ``finish``)."""

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
        while not self._state & _CLOSING:
            used = self.request_complete()
            if not used:
                limit = self.limits.max_request_size or DEFAULT_MAX_REQUEST_SIZE
                if len(self.incoming) > limit:
                    raise RemoteProtocolError(f"request over the limit of {limit} bytes and not complete")
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
            self.send(response)
            if self.close_when_done:
                self.close_when_sent()
                return
            if not incoming:
                return

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

    def handle_error(self, exc: BaseException) -> None:
        """Something went wrong while serving this client. The default: a
        peer that broke the protocol gets a warning line, its error reply if
        the protocol has one and a close once pending replies are out; a
        vanished peer, a debug line and a close; anything else, the
        traceback with the peer's address, and a close."""
        if isinstance(exc, RemoteProtocolError):
            logger.warning("%s: %s; closing the connection", self.peer, exc.message)
            if exc.reply:
                self.send(exc.reply)
            self.close_when_sent()
        elif isinstance(exc, OSError) and _is_disconnect(exc):
            logger.debug("%s: connection lost: %s", self.peer, exc)
            self.close()
        else:
            logger.error(
                "%s: error in %s; closing the connection", self.peer, type(self).__name__, exc_info=exc
            )
            self.close()

    # -- what a handler calls -----------------------------------------------

    @property
    def peer(self) -> str:
        """The client's address, formatted for a log line."""
        return format_address(self.client_address)

    def send(self, response: Any) -> None:
        """Queue ``response`` (bytes, str, a file, an iterable of those, a
        Future or None) after everything already queued. It goes out when the
        current loop pass ends. Ignored once the connection is closed."""
        if self.closed or response is None:
            return
        kind = type(response)
        if kind is not bytes:
            if kind is str:
                response = response.encode("utf-8")
            elif kind is list and all(type(piece) is bytes for piece in response):
                if not response:
                    return
                response = b"".join(response) if len(response) > 1 else response[0]
            else:
                self._queue_stream(response)
                return
        batch = self._batch
        if batch is None:
            self._batch = [response]
        else:
            batch.append(response)
        state = self._state
        if not state & _DIRTY:
            self._state = state | _DIRTY
            self.loop._dirty.append(self)

    def close_when_sent(self) -> None:
        """Stop taking requests and close once every queued response is out."""
        if self.closed:
            return
        state = self._state | _CLOSING
        self._state = state
        if not state & _DIRTY:
            self._state = state | _DIRTY
            self.loop._dirty.append(self)

    def pause_reading(self) -> None:
        """Stop reading from this client until :meth:`resume_reading`, e.g.
        while another connection it feeds cannot keep up (a proxy)."""
        self._read_paused = True
        self._schedule_flush()

    def resume_reading(self) -> None:
        """Read from this client again after :meth:`pause_reading`."""
        self._read_paused = False
        self._schedule_flush()

    @property
    def buffered_output(self) -> int:
        """Bytes of replies queued for this client and not yet sent (files
        and generators not yet read are not counted)."""
        queued = self._output.buffered if self._output is not None else 0
        if self._batch is not None:
            queued += sum(len(piece) for piece in self._batch)
        return queued

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

    def handle_timeout(self, kind: str, seconds: float) -> None:
        """A timeout fired: ``kind`` is ``"idle"``, ``"request"`` or
        ``"write"`` (see :mod:`evloop.limits`). The default logs which (a
        warning; idle is only info) and closes the connection; a protocol
        with a reply for it (HTTP's 408) may send that and call
        :meth:`close_when_sent` instead."""
        level = logging.INFO if kind == "idle" else logging.WARNING
        logger.log(level, "%s: %s timeout (%gs) fired; closing the connection", self.peer, kind, seconds)
        self.close()

    def shutdown_gracefully(self) -> bool:
        """The loop is shutting down gracefully: finish what is in flight,
        then close. A connection with nothing in flight closes now (returns
        True); one in the middle of a request is served that request; a
        reply already queued goes out first. Returns False while something
        is still in flight."""
        if self.closed:
            return True
        idle = not self.pending_input() and self._output is None and self._batch is None and not self._dirty
        if idle:
            self.close()
            return True
        if not self.pending_input():
            self.close_when_sent()
        # Otherwise handle_read() closes it once the request is whole.
        return False

    def close(self) -> None:
        """Close the connection now, dropping unsent output. Idempotent."""
        if self.closed:
            return
        self.closed = True
        sock = self.client_socket
        if self._events:
            try:
                self.loop.set_events(sock, self._events, 0, self)
            except (KeyError, ValueError, OSError):
                pass
            self._events = 0
        if self._output is not None:
            self._output.close()
            self._output = None
        self._batch = None
        try:
            sock.close()
        except OSError:
            pass
        gone = getattr(self.server, "_client_gone", None)
        if gone is not None:
            gone()
        self.loop._connection_closed(self)
        shutdown = self.loop._shutdown
        if shutdown is not None:
            shutdown.connection_closed(self)
        try:
            self.finish()
        except Exception:
            logger.exception("%s: error in finish()", self.peer)

    # -- what the loop calls ------------------------------------------------

    def start(self) -> None:
        """Begin serving: register for reading and run :meth:`setup`."""
        self.loop._connection_opened(self)
        self._events = EVENT_READ
        self.loop.set_events(self.client_socket, 0, EVENT_READ, self)
        arm_timeouts(self)
        self.setup()

    def handle_read(self) -> None:
        sock = self.client_socket
        try:
            if type(sock) is socket.socket and self.recv_size <= RECV_BUFFER_SIZE:
                # Into the loop's buffer, then copy out only what came: far
                # cheaper than recv() allocating recv_size bytes every call.
                buffer = self.loop._recv_buffer
                data = bytes(buffer[: sock.recv_into(buffer, self.recv_size)])
            else:
                data = sock.recv(self.recv_size)
        except WOULD_BLOCK:  # TLS: SSLWantRead/WriteError mean "not now" too
            return
        if data:
            if type(sock) is not socket.socket and is_tls(sock):
                data = read_pending(sock, data, self.recv_size)
            self.loop.bytes_received += len(data)
            if limits_of(self.server)._shortest is None:  # no timeouts: no clocks to keep
                self.data_received(data)
            else:
                before = self.pending_input()
                self.data_received(data)
                note_read(self, before, len(data))
            if self.loop._shutdown is not None and not self.closed and not self.pending_input():
                self.close_when_sent()  # a graceful shutdown waited for this request
        else:
            self._reading = False
            if not self.eof_received():
                self.close_when_sent()

    def handle_write(self) -> None:
        # Writable again: the client is taking its output.
        self._active = now = self.loop.pass_time
        if self._output is not None:
            self._output.write_since = now
        self.flush()

    def flush(self) -> None:
        """Send what is queued, as far as the socket takes it, and watch the
        socket for what it needs next. The loop calls this once a pass for a
        handler that has queued output."""
        self._state &= ~_DIRTY
        if self.closed:
            return
        sock = self.client_socket
        output = self._output
        batch = self._batch
        if batch is not None:
            self._batch = None
            data = batch[0] if len(batch) == 1 else b"".join(batch)
            if output is None:
                try:
                    sent = sock.send(data)
                except WOULD_BLOCK:
                    sent = 0
                self.loop.bytes_sent += sent
                if sent == len(data):
                    state = EMPTY
                else:
                    output = self._output = OutputQueue(self.blocksize, self._future_done)
                    output.add(memoryview(data)[sent:])
            else:
                output.add(data)
        if output is not None:
            try:
                state = output.send_to(sock)
            except Exception:
                # A future or generator failed to produce its reply. What is
                # still queued answers later requests: sent now, it would be
                # taken as the failed request's reply, so it is dropped and
                # handle_error() decides what the peer gets instead.
                output.close()
                self._output = None
                self._batch = None
                raise
            finally:
                self.loop.bytes_sent += output.take_sent_count()
            if state == EMPTY:
                self._output = output = None
        elif batch is None:
            state = EMPTY
        flags = self._state
        if flags & _CLOSING and state == EMPTY:
            self._close_gracefully()
            return
        old_events = (flags >> _EVENTS_SHIFT) & _EVENTS_MASK
        events = 0
        if flags & (_READING | _CLOSING | _READ_PAUSED) == _READING:
            if output is None:
                events = EVENT_READ
            else:
                # Hysteresis: reading stops above the high-water mark and
                # starts again only at the low one, so a client that never
                # reads is not read from a little at each send.
                if old_events & EVENT_READ:
                    mark = self.write_high_water
                    if mark is None:
                        mark = self.limits.write_high_water
                else:
                    mark = self.write_low_water
                    if mark is None:
                        # The server's low mark, unless the class set a high
                        # one below it.
                        high = self.write_high_water
                        mark = self.limits.write_low_water
                        if high is not None and high < mark:
                            mark = high
                if output.buffered <= mark:
                    events = EVENT_READ
        if state == WANT_WRITE:
            events |= EVENT_WRITE
            if not old_events & EVENT_WRITE:
                note_write_stall(self)
        if events != old_events:
            self.loop.set_events(sock, old_events, events, self)
            if not events:
                self.loop._parked.add(self)
            elif not old_events:
                self.loop._parked.discard(self)
            self._state = (self._state & ~(_EVENTS_MASK << _EVENTS_SHIFT)) | (events << _EVENTS_SHIFT)

    # -- internals ------------------------------------------------------------

    def _queue_stream(self, response: Any) -> None:
        """Queue a response that is not plain bytes, keeping the order."""
        output = self._output
        if output is None:
            output = self._output = OutputQueue(self.blocksize, self._future_done)
        batch = self._batch
        if batch is not None:
            self._batch = None
            output.add(batch)
        output.add(response)
        state = self._state
        if not state & _DIRTY:
            self._state = state | _DIRTY
            self.loop._dirty.append(self)

    def _future_done(self, future: Any) -> None:
        # May run in a worker thread: hop back onto the loop.
        self.loop.call_soon_threadsafe(self._resume_after_future)

    def _resume_after_future(self) -> None:
        state = self._state
        if not self.closed and not state & _DIRTY:
            self._state = state | _DIRTY
            self.loop._dirty.append(self)

    # Flushing recomputes what the socket is watched for.
    _schedule_flush = _resume_after_future

    def _close_gracefully(self) -> None:
        # A close with bytes unread in the kernel sends a RST, which can make
        # the peer drop our last reply; so read what is there first (unless
        # the peer has ended its stream: then nothing can be). With nothing
        # unread, close() alone sends the FIN: a shutdown(SHUT_WR) first
        # would be one more system call for the same segment (the socket is
        # never shared with another process).
        sock = self.client_socket
        try:
            if type(sock) is socket.socket:
                if self._reading:
                    buffer = self.loop._recv_buffer
                    drained = 0
                    while drained < _LINGER_DRAIN:
                        count = sock.recv_into(buffer)  # no allocation, unlike recv()
                        if not count:
                            break
                        drained += count
            else:
                send_close_notify(sock)  # TLS: the end of the stream, signed
                sock.shutdown(socket.SHUT_WR)
                if self._reading:
                    drained = 0
                    while drained < _LINGER_DRAIN:
                        chunk = sock.recv(65536)
                        if not chunk:
                            break
                        drained += len(chunk)
        except OSError:
            pass
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<{type(self).__name__} {self.peer} {state}>"


def _is_disconnect(exc: OSError) -> bool:
    return isinstance(exc, (ConnectionError, TimeoutError)) or exc.errno in (
        errno.EPIPE,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ENOTCONN,
        errno.ESHUTDOWN,
    )
