"""One connection's life, owned by the engine: socket, receive path, output, close.

Theory of operation. Every stream connection, accepted or made by
:func:`evloop.open_connection`, plain or TLS, is one :class:`Connection` in
one of the states below, and every change of state goes through
:meth:`Connection._move`, which refuses a transition the table does not
list (h11's ``_state.py`` does the same for HTTP):

============  ===========================================================
state         meaning
============  ===========================================================
NEW           made, not yet served
CONNECTING    an outgoing ``connect()`` is under way (watched for writing)
PROXY_HEADER  a PROXY protocol header is being read (:mod:`evloop.proxy_reception`)
HANDSHAKING   a TLS handshake is under way (watched for what OpenSSL wants)
OPEN          serving: reading requests, sending replies
CLOSING       no more requests; close once the queued output is sent
LINGERING     refused: our side is shut, the peer's bytes are read and
              dropped for a bounded time so it can read our last reply
              (RFC 9112 section 9.6)
CLOSED        the socket is closed; nothing more happens
============  ===========================================================

The legal transitions are :data:`evloop.states.TRANSITIONS`; how a
connection ends (the one close path, the lingering close) is its base class
in :mod:`evloop.closing`. The :class:`ClientHandler` is the user's side
(the recipe's hooks, ``send``, ``close``): the connection calls its hooks
(``setup``, ``data_received``, ``pending_input``, ``eof_received``,
``resume_writing``, ``handle_error``, ``finish``; ``handle_timeout`` comes
from :mod:`evloop.timeouts`) and reads its settings (``recv_size``,
``blocksize``, the output marks, ``backlog_stops_reading``), nothing else.

Output. ``ClientHandler.send`` appends bytes to :attr:`Connection.batch`
and counts them in :attr:`Connection.queued`; at the end of the loop pass
the loop calls :meth:`flush` once for every connection that queued
something, so the replies to one read leave in one ``send`` (Redis's
``handleClientsWithPendingWrites``). What the socket does not take waits
in an :class:`~evloop.output.OutputQueue`, and only then is the socket
watched for writability.

Back-pressure works per request: ``send`` reports when the queued output
has passed the high-water mark, the handler's request loop stops there
(the rest stays in its input buffer) and the connection stops reading.
When the output is down to the low-water mark, reading resumes and the
handler's :meth:`~evloop.ClientHandler.resume_writing` answers the
requests it held back. So a client that never reads costs at most the
high-water mark plus one reply plus its unread input, however many
requests one read brought.

The state and the connection's flags share one int (:attr:`flags`): the
state in the low three bits, then the flags, then the selector events.
An idle connection is a few slots, not a dict.
"""

import logging
import socket
from typing import Any, List, Optional

from .addresses import format_address, is_disconnect
from .closing import ConnectionClosing
from .logs import loop_warnings
from .output import EMPTY, WANT_WRITE, OutputQueue
from .states import (
    BACKLOGGED,
    CLOSED,
    CLOSING,
    CONNECTING,
    DIRTY,
    DRAINING,
    EOF_HELD,
    EVENT_READ,
    EVENT_WRITE,
    EVENTS_MASK,
    EVENTS_SHIFT,
    HANDSHAKING,
    LINGERING,
    NEW,
    OPEN,
    PROXY_HEADER,
    READ_PAUSED,
    READING,
    STATE_MASK,
    STATE_NAMES,
    TIMED,
    TRANSITIONS,
)
from .timeouts import arm_timeouts
from .tls import WOULD_BLOCK, handshake_step, is_tls, read_pending

__all__ = ["Connection", "format_address", "is_disconnect"]

# An OPEN connection watched for reading only, with nothing paused or held:
# once its output is all sent, what it is watched for stays as it is.
_STEADY_MASK = STATE_MASK | READING | READ_PAUSED | BACKLOGGED | (EVENTS_MASK << EVENTS_SHIFT)
_STEADY = OPEN | READING | (EVENT_READ << EVENTS_SHIFT)

logger = logging.getLogger("evloop")


class Connection(ConnectionClosing):
    """One stream connection; the selector's target for its socket.

    Public attributes, for the handler and the engine: ``loop``, ``handler``,
    ``sock``; ``batch`` (bytes queued this pass) and ``queued`` (bytes
    queued and not yet sent, batch included); ``high_water`` (the mark
    ``send`` compares ``queued`` with); ``output`` (the
    :class:`~evloop.output.OutputQueue`, while one is needed); ``active``
    and ``request_since`` (loop times the timeout sweep reads, see
    :mod:`evloop.timeouts`).
    """

    is_connection = True  # how the loop tells connections from listeners

    __slots__ = ()  # the slots are ConnectionClosing's

    def __init__(self, loop: Any, handler: Any, sock: Any, high_water: int) -> None:
        self.loop = loop
        self.handler = handler
        self.sock = sock
        self.flags = NEW | READING
        self.batch: Optional[List[bytes]] = None
        self.output: Optional[OutputQueue] = None
        self.queued = 0
        self.high_water = high_water
        self.active = 0.0
        self.request_since: Optional[float] = None

    # -- the state machine --------------------------------------------------

    @property
    def state(self) -> int:
        """The current state (NEW, CONNECTING, ... CLOSED)."""
        return self.flags & STATE_MASK

    @property
    def state_name(self) -> str:
        return STATE_NAMES[self.flags & STATE_MASK]

    @property
    def closed(self) -> bool:
        return self.flags & STATE_MASK == CLOSED

    @property
    def events(self) -> int:
        """What the selector watches the socket for now."""
        return (self.flags >> EVENTS_SHIFT) & EVENTS_MASK

    def _move(self, new: int) -> None:
        old = self.flags & STATE_MASK
        if new not in TRANSITIONS[old]:
            raise RuntimeError(f"connection cannot go from {STATE_NAMES[old]} to {STATE_NAMES[new]}")
        self.flags = (self.flags & ~STATE_MASK) | new

    def _watch(self, events: int) -> None:
        """Have the selector watch the socket for ``events`` (0: nothing)."""
        flags = self.flags
        old = (flags >> EVENTS_SHIFT) & EVENTS_MASK
        if events == old:
            return
        loop = self.loop
        loop.set_events(self.sock, old, events, self)
        if not events:
            loop.park(self)
        elif not old:
            loop.unpark(self)
        self.flags = (flags & ~(EVENTS_MASK << EVENTS_SHIFT)) | (events << EVENTS_SHIFT)

    # -- starting -----------------------------------------------------------

    def start(self) -> None:
        """NEW -> OPEN: count the connection, watch it, run ``setup()``."""
        self._move(OPEN)
        self.loop.connection_opened(self)
        self._begin_serving()

    def _begin_serving(self) -> None:
        self._watch(EVENT_READ)
        if arm_timeouts(self):
            self.flags |= TIMED
        self.handler.setup()
        if self.batch is not None or self.output is not None:
            self.schedule_flush()  # what was queued before serving began

    def start_handshake(self, timeout: Optional[float]) -> None:
        """NEW -> HANDSHAKING: a TLS server's fresh client. ``setup()`` runs
        once the handshake is done; ``timeout`` seconds bound it."""
        self._move(HANDSHAKING)
        self.loop.connection_opened(self)
        self._time_handshake(timeout)

    def start_proxy_header(self) -> None:
        """NEW -> PROXY_HEADER: the header is read first (:mod:`evloop.proxy_reception`)."""
        self._move(PROXY_HEADER)
        self.loop.connection_opened(self)
        self._watch(EVENT_READ)

    def proxy_header_read(self, handshake_timeout: Optional[float]) -> None:
        """PROXY_HEADER -> HANDSHAKING on a TLS socket, else OPEN."""
        if is_tls(self.sock):
            self._move(HANDSHAKING)
            self._time_handshake(handshake_timeout)
        else:
            self._move(OPEN)
            self._begin_serving()

    def _time_handshake(self, timeout: Optional[float]) -> None:
        if timeout is not None:
            # No handle is kept: the callback finds the state moved on.
            self.loop.call_later(timeout, self._handshake_expired, timeout)
        self._step_handshake()

    def start_connecting(self) -> None:
        """NEW -> CONNECTING: an outgoing connection; counted as open, and
        ``send()`` only queues until :meth:`connected`."""
        self._move(CONNECTING)
        self.loop.connection_opened(self)
        self.loop.park(self)  # in no selector yet: loop.close() still finds it
        self.flags |= DIRTY  # output waits: no flush is scheduled while connecting

    def watch_connect(self) -> None:
        """A non-blocking ``connect()`` is under way on ``sock``."""
        self._watch(EVENT_WRITE)

    def unwatch(self) -> None:
        """Take the socket out of the selector (before it is replaced)."""
        self._watch(0)

    def connected(self) -> None:
        """CONNECTING -> OPEN: the connect succeeded; serve, and send what
        was queued meanwhile."""
        self._watch(0)
        self._move(OPEN)
        self.flags &= ~DIRTY
        self._begin_serving()
        self.schedule_flush()  # settle the events, even with nothing queued

    # -- what the loop calls ------------------------------------------------

    def handle_read(self) -> None:
        flags = self.flags
        if flags & STATE_MASK != OPEN and flags & STATE_MASK != CLOSING:
            self._read_in_other_state(flags & STATE_MASK)
            return
        sock = self.sock
        handler = self.handler
        try:
            if type(sock) is socket.socket:
                # Into the loop's buffer, then copy out only what came: far
                # cheaper than recv() allocating recv_size bytes every call.
                buffer = self.loop.recv_buffer
                data = bytes(buffer[: sock.recv_into(buffer, handler.recv_size)])
            else:
                data = sock.recv(handler.recv_size)
        except WOULD_BLOCK:  # TLS: SSLWantRead/WriteError mean "not now" too
            return
        if not data:
            self.flags &= ~READING
            self._watch(self.events & ~EVENT_READ)
            if self.flags & BACKLOGGED:
                self.flags |= EOF_HELD  # answer the held requests first
            else:
                self._end_of_stream()
            return
        if type(sock) is not socket.socket and is_tls(sock):
            data = read_pending(sock, data, handler.recv_size)
        loop = self.loop
        received = len(data)
        loop.bytes_received += received
        if not self.flags & TIMED:
            handler.data_received(data)  # no timeouts on: no clocks to keep
        else:
            # The request clock starts when a request begins: the buffer
            # was empty, or a request was consumed (inlined: once per read).
            before = handler.pending_input()
            handler.data_received(data)
            flags = self.flags
            if flags & STATE_MASK != CLOSED:
                self.active = now = loop.pass_time
                pending = handler.pending_input()
                if not pending:
                    self.request_since = None
                elif self.request_since is None or pending < before + received:
                    self.request_since = now
                if flags & DRAINING and not pending:
                    handler.close_when_sent()  # a graceful shutdown waited for this request
            return
        if self.flags & DRAINING and not handler.pending_input():
            handler.close_when_sent()

    def _end_of_stream(self) -> None:
        if not self.handler.eof_received() and self.flags & STATE_MASK == OPEN:
            self.handler.close_when_sent()

    def _read_in_other_state(self, state: int) -> None:
        if state == HANDSHAKING:
            self._step_handshake()
        elif state == LINGERING:
            self._discard_input()
        elif state == PROXY_HEADER:
            self.handler.server.proxy_reception.readable(self)

    def handle_write(self) -> None:
        state = self.flags & STATE_MASK
        if state == CONNECTING:
            self.handler.server.connect_ready(self)
        elif state == HANDSHAKING:
            self._step_handshake()
        else:
            # Writable again: the client is taking its output.
            self.active = now = self.loop.pass_time
            if self.output is not None:
                self.output.write_since = now
            self.flush()

    def handle_error(self, exc: BaseException) -> None:
        """The loop's sorting of an I/O callback's exception: to the handler
        once it is serving; while connecting, to the connector; during a
        handshake or a PROXY header, a log line and a close."""
        state = self.flags & STATE_MASK
        if state == CONNECTING:
            self.handler.server.handle_error(exc)
        elif state == HANDSHAKING or state == PROXY_HEADER:
            logger.error(
                "%s: error during the %s; closing the connection",
                self.handler.peer,
                "TLS handshake" if state == HANDSHAKING else "PROXY protocol header",
                exc_info=exc,
            )
            self.close()
        else:
            self.handler.handle_error(exc)

    # -- output ---------------------------------------------------------------

    def schedule_flush(self) -> None:
        """Flush at the end of this loop pass (once, however often asked)."""
        flags = self.flags
        if not flags & DIRTY and flags & STATE_MASK != CLOSED:
            self.flags = flags | DIRTY
            self.loop.to_flush.append(self)

    def new_output(self) -> OutputQueue:
        """The output queue, made when a reply first needs one."""
        output = self.output
        if output is None:
            output = self.output = OutputQueue(self.handler.blocksize, self._future_done)
        return output

    def flush(self) -> None:
        """Send what is queued, as far as the socket takes it, and watch the
        socket for what it needs next."""
        flags = self.flags = self.flags & ~DIRTY
        state = flags & STATE_MASK
        if state != OPEN and state != CLOSING:
            return
        status = self._send_queued()
        if status == EMPTY and flags & _STEADY_MASK == _STEADY:
            return  # the common case: all sent, reading as it should be
        if self.flags & STATE_MASK == CLOSING and status == EMPTY:
            self._finish_closing()
            return
        self._update_events(status)

    def _send_queued(self) -> int:
        sock = self.sock
        output = self.output
        batch = self.batch
        if batch is not None:
            self.batch = None
            data = batch[0] if len(batch) == 1 else b"".join(batch)
            if output is None:
                try:
                    sent = sock.send(data)
                except WOULD_BLOCK:
                    sent = 0
                self.loop.bytes_sent += sent
                self.queued -= sent
                if sent == len(data):
                    return EMPTY
                output = self.new_output()
                output.add(memoryview(data)[sent:])
            else:
                output.add(data)
        if output is None:
            return EMPTY
        try:
            status = output.send_to(sock)
        except Exception:
            # A future or generator failed to produce its reply. What is
            # still queued answers later requests: sent now, it would be
            # taken as the failed request's reply, so it is dropped and
            # handle_error() decides what the peer gets instead.
            output.close()
            self.output = None
            self.batch = None
            self.queued = 0
            raise
        finally:
            sent = output.take_sent_count()
            self.loop.bytes_sent += sent
        if status == EMPTY:
            self.output = None
            self.queued = 0
        else:
            self.queued = output.buffered
        return status

    def _update_events(self, status: int) -> None:
        flags = self.flags
        old = (flags >> EVENTS_SHIFT) & EVENTS_MASK
        events = EVENT_WRITE if status == WANT_WRITE else 0
        if status == WANT_WRITE and not old & EVENT_WRITE:
            self.output.write_since = self.loop.pass_time  # type: ignore[union-attr]
        resume = False
        if flags & STATE_MASK == OPEN:
            if flags & BACKLOGGED:
                resume = self.queued <= self.low_water()
            if flags & (READING | READ_PAUSED) == READING:
                if not self.handler.backlog_stops_reading:
                    events |= EVENT_READ  # a relay: its reads feed another connection
                elif not flags & BACKLOGGED:
                    # Hysteresis: reading stops above the high-water mark and
                    # starts again only at the low one, so a client that
                    # never reads is not read from a little at each send.
                    mark = self.high_water if old & EVENT_READ else self.low_water()
                    if self.queued <= mark:
                        events |= EVENT_READ
        if events != old:
            self._watch(events)
        if resume:
            self._resume_requests()

    def _resume_requests(self) -> None:
        """Output is down to the low-water mark: answer the requests held
        back, then read again (the flush this schedules decides)."""
        self.flags &= ~BACKLOGGED
        self.handler.resume_writing()
        flags = self.flags
        if flags & EOF_HELD and not flags & BACKLOGGED and flags & STATE_MASK == OPEN:
            self.flags = flags & ~EOF_HELD
            self._end_of_stream()
        self.schedule_flush()

    def low_water(self) -> int:
        """Bytes of queued output at which held requests are answered and
        reading resumes."""
        handler = self.handler
        low = handler.write_low_water
        if low is None:
            # The server's low mark, unless the class set a high one below it.
            low = handler.limits.write_low_water
            if low > self.high_water:
                low = self.high_water
        return int(low)

    def _future_done(self, future: Any) -> None:
        # May run in a worker thread: hop back onto the loop.
        self.loop.call_soon_threadsafe(self.schedule_flush)

    # -- reading control ----------------------------------------------------

    def set_read_paused(self, paused: bool) -> None:
        if paused:
            self.flags |= READ_PAUSED
        else:
            self.flags &= ~READ_PAUSED
        self.schedule_flush()  # flushing recomputes what the socket is watched for

    # -- TLS handshake ------------------------------------------------------

    def _step_handshake(self) -> None:
        peer = self.handler.peer
        wanted = handshake_step(self.sock, peer, loop_warnings(self.loop).warn)
        if wanted is None:  # failed; handshake_step said why
            self.close()
        elif wanted:
            self._watch(wanted)
        else:
            self._move(OPEN)
            self._begin_serving()

    def _handshake_expired(self, seconds: float) -> None:
        if self.flags & STATE_MASK == HANDSHAKING:
            loop_warnings(self.loop).warn(
                "tls-handshake-timeout",
                "%s: TLS handshake timeout (%gs) fired; closing the connection",
                self.handler.peer,
                seconds,
            )
            self.close()

    def __repr__(self) -> str:
        return f"<Connection {self.handler.peer} {self.state_name}>"
