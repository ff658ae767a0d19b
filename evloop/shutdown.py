"""Graceful shutdown: stop accepting, let in-flight responses finish, then stop.

Theory of operation. ``EventLoop.stop(graceful=True)`` (safe from any thread
or a signal handler) schedules :meth:`GracefulShutdown.begin` on the loop's
own thread. It

1. closes every server's listener, so nothing new is accepted (and another
   process may bind the port at once);
2. asks each open connection to finish (``ClientHandler.shutdown_gracefully``):
   one in the middle of receiving a request is served that request, then
   closes; a reply queued or being produced goes out; and for
   :data:`IDLE_GRACE` each may deliver one more request already on its way
   (a client that just connected, a keep-alive client's next one), which
   is served, and then it closes (HTTP says ``Connection: close`` on that
   response). At the grace's end the others close once their replies are
   out. Every close sends our FIN first and reads until the peer's (a
   lingering close), so that a request sent meanwhile meets no reset;
3. waits until every connection has closed, or until the deadline
   (``timeout``, else the largest ``Limits.shutdown_timeout`` of the loop's
   servers), when it cuts the connections still open;
4. logs how many connections were idle, how many finished and how many
   were cut, keeps those figures in ``loop.last_shutdown``, and stops the
   loop, so ``run()`` returns.

Nothing polls: a connection that closes tells the shutdown (through the
loop's ``close_listeners``), which keeps the set of those it waits for; one
timer holds the deadline. The loop core knows no shutdown policy: this
module plugs :func:`begin_graceful_shutdown` into
``EventLoop.graceful_shutdown_starter`` when it is imported.

:func:`handle_signals` makes SIGINT and SIGTERM start a graceful shutdown
(a second signal stops at once); ``loop()`` and ``serve_forever()`` use it.
"""

import contextlib
import logging
import signal
import threading
from typing import Any, Dict, Iterator, Optional, Set

from .eventloop import EventLoop
from .limits import DEFAULT_LIMITS, limits_of
from .states import LINGERING

__all__ = ["IDLE_GRACE", "GracefulShutdown", "begin_graceful_shutdown", "handle_signals"]

logger = logging.getLogger("evloop")

#: Seconds a connection is given, once a graceful shutdown begins, to
#: deliver a request already on its way (a client that has just connected,
#: a keep-alive client's next request): it is served, then the connection
#: closes. Capped at half the shutdown's timeout.
IDLE_GRACE = 0.5


class GracefulShutdown:
    """One graceful shutdown of ``loop``; see the module's description."""

    def __init__(self, loop: Any, timeout: Optional[float] = None) -> None:
        if timeout is None:
            servers = loop.servers
            timeout = max(
                (limits_of(s).shutdown_timeout for s in servers), default=DEFAULT_LIMITS.shutdown_timeout
            )
        self.loop = loop
        self.timeout = float(timeout)
        self.started = 0.0
        self.idle = 0
        self.in_flight = 0
        self.cut = 0
        self.done = False
        self._deadline: Any = None
        self._waiting: Set[Any] = set()  # connections not closed yet
        self._idle: Set[Any] = set()  # of those, the ones idle when it began
        self._counting = False  # begin() is still going through the connections

    @property
    def finished(self) -> int:
        """Connections that were in flight and closed on their own in time."""
        return self.in_flight - self.cut

    def begin(self) -> None:
        """Stop accepting and ask every connection to finish (on the loop's thread)."""
        loop = self.loop
        self.started = loop.time()
        for server in loop.servers:
            loop.remove_server(server)
        connections = list(loop.handlers)  # closing one changes the loop's set
        logger.info(
            "graceful shutdown: no longer accepting; %d connections open, "
            "waiting up to %gs for them to finish",
            len(connections),
            self.timeout,
        )
        self._counting = True
        waiting = self._waiting
        idle_ones = self._idle
        for connection in connections:
            finish = getattr(connection, "shutdown_gracefully", None)
            if finish is None:
                connection.close()  # a kind of connection that cannot finish by itself
                self.idle += 1
                continue
            idle = finish()
            self.idle += idle
            if not connection.closed:
                waiting.add(connection)  # idle ones too: given the grace, then closed
                if idle:
                    idle_ones.add(connection)
        self.in_flight = len(waiting) - len(idle_ones)
        self._counting = False
        if self.timeout > 0:
            self._deadline = loop.call_later(self.timeout, self._cut)
            if waiting:
                loop.call_later(min(IDLE_GRACE, self.timeout / 2), self._end_grace)
        else:
            self._cut()
        if not waiting:
            self._end()

    def connection_closed(self, connection: Any) -> None:
        """``connection`` closed: end the shutdown if it was the last one
        waited for. O(1), so N connections finishing cost O(N)."""
        waiting = self._waiting
        waiting.discard(connection)
        if not waiting and not self.done and not self._counting:
            self._end()

    def _end_grace(self) -> None:
        """The grace is over: every connection closes once its queued
        replies are sent, unless a request is still arriving."""
        if self.done:
            return
        for connection in list(self._waiting):
            close = getattr(connection, "close_between_requests", None)
            if not connection.closed and close is not None:
                close()

    def _cut(self) -> None:
        self._deadline = None
        if self.done:
            return
        # Idle connections and those whose last reply is out (lingering
        # until the peer's FIN) lost nothing: they are not counted as cut.
        idle_ones = self._idle
        self.cut = sum(1 for c in self._waiting if not (c.closed or c in idle_ones or _state(c) == LINGERING))
        self._waiting.clear()
        # Whatever else is still open (a connection made during the
        # shutdown) goes too.
        self._counting = True
        for connection in list(self.loop.handlers):
            connection.close()
        self._counting = False
        self._end()

    def _end(self) -> None:
        if self.done:
            return
        self.done = True
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        loop = self.loop
        elapsed = loop.time() - self.started
        level = logging.WARNING if self.cut else logging.INFO
        logger.log(
            level,
            "graceful shutdown done in %.2fs: %d idle connections closed, "
            "%d finished, %d cut at the %gs deadline",
            elapsed,
            self.idle,
            self.finished,
            self.cut,
            self.timeout,
        )
        loop.last_shutdown = self.summary(elapsed)
        loop.graceful_shutdown = None
        if self.connection_closed in loop.close_listeners:
            loop.close_listeners.remove(self.connection_closed)
        loop.stop()

    def summary(self, elapsed: float) -> Dict[str, Any]:
        return {
            "idle": self.idle,
            "finished": self.finished,
            "cut": self.cut,
            "seconds": elapsed,
            "timeout": self.timeout,
        }


def _state(handler: Any) -> Any:
    connection = getattr(handler, "connection", None)
    return getattr(connection, "state", None)


def begin_graceful_shutdown(loop: Any, timeout: Optional[float] = None) -> None:
    """On the loop's thread: start a graceful shutdown unless one is on."""
    if loop.graceful_shutdown is not None or loop.is_closed():
        return
    shutdown = loop.graceful_shutdown = GracefulShutdown(loop, timeout)
    loop.close_listeners.append(shutdown.connection_closed)
    shutdown.begin()


EventLoop.graceful_shutdown_starter = begin_graceful_shutdown


@contextlib.contextmanager
def handle_signals(loop: Any, signals: Any = None) -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM (or ``signals``) start a
    graceful shutdown of ``loop``; a second one stops it at once. A signal
    the program already handles itself keeps its handler; outside the main
    thread signals cannot be caught, and this does nothing. The previous
    handlers are put back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if signals is None:
        signals = [signal.SIGINT] + ([signal.SIGTERM] if hasattr(signal, "SIGTERM") else [])
    received = []

    def on_signal(signum: int, frame: Any) -> None:
        received.append(signum)
        if len(received) == 1:
            loop.stop(graceful=True)
        else:
            loop.stop()

    previous = {}
    try:
        for signum in signals:
            # A handler the program installed itself is left alone.
            if signal.getsignal(signum) in (signal.SIG_DFL, signal.default_int_handler):
                previous[signum] = signal.signal(signum, on_signal)
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received:
            name = signal.Signals(received[0]).name
            logger.info(
                "%s received; %s",
                name,
                "stopped at once on the second signal" if len(received) > 1 else "shut down gracefully",
            )
