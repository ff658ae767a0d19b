"""The event loop: one thread, one selector, timers and callbacks.

Theory of operation. Every registered file object carries, in
``SelectorKey.data``, the object whose ``handle_read()`` / ``handle_write()``
the loop calls when it is ready (a listener, a client handler, the waker).
One pass of the loop has a fixed order of phases (CPython's
``base_events._run_once``, Redis's ``aeProcessEvents``):

1. compute the timeout: 0 if callbacks or output are ready (or a stop is
   pending), else until the next timer;
2. select, then note the time once as ``pass_time``: the activity clock
   every handler touched in this pass shares (see :mod:`evloop.limits`);
3. dispatch I/O, re-checking that an object is still open before firing its
   second callback in the same pass (a read may have closed it, as in ae.c);
4. move due timers to the ready queue;
5. run only the callbacks that were ready when this phase began, so a
   callback that schedules another cannot starve I/O;
6. flush the output that handlers queued during the pass: one ``send`` per
   handler, however many replies it produced (Redis's
   ``handleClientsWithPendingWrites``).

Every I/O callback's exceptions are sorted in one place: ``KeyboardInterrupt``
and ``SystemExit`` propagate, anything else goes to that object's
``handle_error()`` (which logs with the peer's address and closes that one
connection), and the loop goes on serving everyone else.

``stop()`` and ``call_soon_threadsafe()`` may be called from any thread or a
signal handler: they append to a deque and write one byte to a socketpair the
selector watches, so a sleeping loop wakes at once; nothing polls.
"""

import collections
import logging
import selectors
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, List, Optional, Protocol, Set, TypeVar, Union

from .multiplexer import make_selector
from .timers import Handle, TimerHandle, TimerQueue

if TYPE_CHECKING:
    from .stats import LoopStats

__all__ = ["EVENT_READ", "EVENT_WRITE", "EventLoop"]


class _Servable(Protocol):
    """What add_server needs of a server (Server, UnixServer, DatagramServer)."""

    def _start_serving(self, loop: Any, handler_class: Any) -> None: ...


S = TypeVar("S", bound=_Servable)  # add_server gives back the server it was given

logger = logging.getLogger("evloop")

EVENT_READ = selectors.EVENT_READ
EVENT_WRITE = selectors.EVENT_WRITE
# The loop's one receive buffer: handlers recv_into() it and copy out what came.
RECV_BUFFER_SIZE = 256 * 1024


class _Waker:
    """The read end of a socketpair in the selector; a byte on it wakes the
    loop. One byte at a time: while one is pending (the loop has not read it
    yet), more wake-ups would add nothing, and each costs a system call in
    the waking thread (an offloaded call's Future completing, say)."""

    closed = False

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._pending = False

    def wake(self) -> None:
        if self._pending:
            return
        self._pending = True
        try:
            self._writer.send(b"\0")
        except OSError:
            # Full (a wake-up is already pending) or closed (loop closed): either
            # way there is nothing more to do.
            pass

    def handle_read(self) -> None:
        try:
            while self._reader.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        # Cleared once drained: a wake() skipped until now scheduled its
        # callback before this, so this pass runs it; a later one sends a byte.
        self._pending = False

    def handle_write(self) -> None:  # never registered for writing
        pass

    def handle_error(self, exc: BaseException) -> None:
        logger.error("evloop waker failed", exc_info=exc)

    def close(self) -> None:
        self.closed = True
        self._reader.close()
        self._writer.close()


class EventLoop:
    """A single-threaded loop serving any number of servers.

    ``selector`` is a ``selectors`` selector, or its name (``"select"``,
    ``"poll"``, ``"epoll"``, ...), or None for the best this platform has.
    ``clock`` returns the loop's time in seconds (default ``time.monotonic``);
    tests pass :class:`evloop.testing.FakeClock` to drive timers by hand.
    """

    #: What ``stop(graceful=True)`` runs on the loop's thread, as
    #: ``starter(loop, timeout)``. The loop core holds no shutdown policy:
    #: :mod:`evloop.shutdown` plugs itself in here when imported (the
    #: package's ``__init__`` imports it).
    graceful_shutdown_starter: Optional[Callable[[Any, Optional[float]], Any]] = None

    def __init__(
        self,
        selector: Optional[Union[str, selectors.BaseSelector]] = None,
        *,
        clock: Optional[Callable[[], float]] = None,
    ) -> None:
        self._selector = make_selector(selector)
        self.time: Callable[[], float] = clock if clock is not None else time.monotonic
        self._ready: Deque[Handle] = collections.deque()
        self._timers = TimerQueue()
        #: The loop's time when this pass's select returned: handlers note
        #: their activity with it, so all those active in one pass share one
        #: float (no time() call and no new float per read).
        self.pass_time = self.time()
        #: Checks every connection's timeouts; made by the first connection
        #: that has any (evloop.timeouts.TimeoutSweep).
        self.timeout_sweep: Any = None
        self._stopping = False
        self._running_thread: Optional[int] = None
        self._closed = False
        self._servers: List[Any] = []
        #: Open connections are found through the selector's map, which
        #: holds them anyway; only those registered for nothing (waiting on
        #: a future, or paused) are kept here as well (park()/unpark()). A
        #: set of every connection would cost each idle one ~65 bytes more.
        self.parked: Set[Any] = set()
        #: Called with the handler of each connection that closes (a
        #: graceful shutdown counts them down this way).
        self.close_listeners: List[Callable[[Any], Any]] = []
        self.connection_count = 0
        # Running totals, for statistics (evloop.stats).
        self.requests = 0
        self.bytes_received = 0
        self.bytes_sent = 0
        self.connections_accepted = 0
        #: Limits and timeouts that fired, by kind (see limit_hit()).
        self.limit_hits: Dict[str, int] = {}
        #: Connections with output queued this pass; each appends itself
        #: once (Connection.schedule_flush) and is flushed at the pass's end.
        self.to_flush: List[Any] = []
        #: Shared by every connection (one thread reads at a time): recv(n)
        #: allocates n bytes a call, at 256 KiB an mmap/mremap/munmap trio
        #: that cost more than the rest of a small request.
        self.recv_buffer = memoryview(bytearray(RECV_BUFFER_SIZE))
        self._waker = _Waker()
        self._selector.register(self._waker._reader, EVENT_READ, self._waker)
        # Run by close() after the connections are closed: resources made
        # lazily for this loop, such as the offload worker pool.
        self._close_callbacks: List[Callable[[], Any]] = []
        #: The graceful shutdown in progress (evloop.shutdown), and the
        #: figures of the last one that ended.
        self.graceful_shutdown: Any = None
        self.last_shutdown: Optional[Dict[str, Any]] = None

    # -- what the loop is built on ------------------------------------------

    @property
    def selector(self) -> selectors.BaseSelector:
        return self._selector

    def stats(self) -> "LoopStats":
        """A snapshot of this loop's counters (:func:`evloop.stats.loop_stats`).
        Call it on the loop's thread. (The reporting module is loaded at the
        first call: the loop core imports nothing above it.)"""
        from .stats import loop_stats

        return loop_stats(self)

    @property
    def servers(self) -> List[Any]:
        """The servers this loop serves, in the order they were added."""
        return list(self._servers)

    @property
    def handlers(self) -> Set[Any]:
        """The handlers of the open connections on this loop (a new set;
        O(connections))."""
        found = {
            key.data.handler
            for key in self._selector.get_map().values()
            if getattr(key.data, "is_connection", False)
        }
        found.update(connection.handler for connection in self.parked)
        return found

    # -- what connections tell the loop -------------------------------------

    def limit_hit(self, kind: str) -> None:
        """Count one ``kind`` of limit or timeout firing (a refusal, a
        timeout, a peer that broke its protocol): the engine calls this
        where it decides, on those rare paths only (:mod:`evloop.metrics`
        reads the counts; :data:`evloop.stats.LIMIT_KINDS` lists the kinds)."""
        hits = self.limit_hits
        hits[kind] = hits.get(kind, 0) + 1

    def connection_opened(self, connection: Any) -> None:
        """A connection began (accepted, connecting or handshaking)."""
        self.connection_count += 1

    def connection_closed(self, connection: Any) -> None:
        """A connection that :meth:`connection_opened` counted closed."""
        self.connection_count -= 1
        self.parked.discard(connection)
        for listener in self.close_listeners:
            listener(connection.handler)

    def park(self, connection: Any) -> None:
        """``connection`` is registered for nothing now: keep it findable."""
        self.parked.add(connection)

    def unpark(self, connection: Any) -> None:
        """``connection`` is in the selector again."""
        self.parked.discard(connection)

    def add_close_callback(self, callback: Callable[[], Any]) -> None:
        """Run ``callback()`` when the loop closes, after its connections
        (for resources made lazily for this loop, such as a worker pool)."""
        self._close_callbacks.append(callback)

    def remove_close_callback(self, callback: Callable[[], Any]) -> None:
        """Undo :meth:`add_close_callback` (no error if it is not there)."""
        if callback in self._close_callbacks:
            self._close_callbacks.remove(callback)

    @property
    def thread_id(self) -> Optional[int]:
        """The ident of the thread running the loop now, or None."""
        return self._running_thread

    def is_running(self) -> bool:
        return self._running_thread is not None

    def is_closed(self) -> bool:
        return self._closed

    # -- servers ------------------------------------------------------------

    def add_server(self, server: S, handler_class: type) -> S:
        """Serve ``server`` on this loop, one ``handler_class`` per client.
        Returns ``server``."""
        self._check_open()
        server._start_serving(self, handler_class)
        self._servers.append(server)
        return server

    def remove_server(self, server: Any) -> None:
        """Stop accepting on ``server`` and close its listener; its open
        connections are left to finish."""
        if server in self._servers:
            self._servers.remove(server)
            server.close()

    # -- registration, for the I/O objects ----------------------------------

    def set_events(self, fileobj: Any, old: int, new: int, target: Any) -> None:
        """Change what the selector watches ``fileobj`` for, from ``old`` to
        ``new`` (0 = not registered); ``target`` gets the callbacks."""
        if old == new:
            return
        if not old:
            self._selector.register(fileobj, new, target)
        elif not new:
            self._selector.unregister(fileobj)
        else:
            self._selector.modify(fileobj, new, target)

    # -- callbacks and timers -----------------------------------------------

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> Handle:
        """Run ``callback(*args)`` on the next pass. Not thread-safe."""
        handle = Handle(callback, args)
        self._ready.append(handle)
        return handle

    def call_soon_threadsafe(self, callback: Callable[..., Any], *args: Any) -> Handle:
        """Like :meth:`call_soon`, from any thread; wakes the loop."""
        handle = Handle(callback, args)
        self._ready.append(handle)  # deque.append is atomic
        self._waker.wake()
        return handle

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run ``callback(*args)`` once the loop's time reaches ``when``.
        Returns a handle whose ``cancel()`` stops it. Not thread-safe."""
        return self._timers.push(when, callback, args)

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run ``callback(*args)`` after ``delay`` seconds of loop time."""
        return self._timers.push(self.time() + delay, callback, args)

    # -- running --------------------------------------------------------------

    def run(self, max_wait: Optional[float] = None) -> None:
        """Serve until :meth:`stop` is called. Exceptions from handlers never
        end it; ``KeyboardInterrupt`` and ``SystemExit`` do, and propagate.
        ``max_wait`` bounds how long one select may sleep (None: as long as
        nothing is due)."""
        self._check_open()
        if self._running_thread is not None:
            raise RuntimeError("this loop is already running")
        self._running_thread = threading.get_ident()
        try:
            while not self._stopping:
                self._run_pass(max_wait)
        finally:
            self._stopping = False
            self._running_thread = None

    def run_once(self, timeout: Optional[float] = 0.0) -> None:
        """Do one pass: wait at most ``timeout`` seconds for I/O (None: until
        something happens), handle what is ready, run due timers and ready
        callbacks. For a program that drives its own main loop."""
        self._check_open()
        if self._running_thread is not None:
            raise RuntimeError("this loop is already running")
        self._running_thread = threading.get_ident()
        try:
            self._run_pass(timeout)
        finally:
            self._stopping = False
            self._running_thread = None

    def next_wait(self) -> Optional[float]:
        """How long the next pass may wait for I/O: 0.0 if callbacks or
        output are ready, the seconds until the next timer, or None if
        nothing is due. For a program that drives the loop from its own
        (examples/asyncio_bridge.py)."""
        if self._ready or self.to_flush or self._stopping:
            return 0.0
        deadline = self._timers.next_deadline()
        return None if deadline is None else max(0.0, deadline - self.time())

    def stop(self, graceful: bool = False, timeout: Optional[float] = None) -> None:
        """Make :meth:`run` return after the current pass. Safe from any
        thread and from a signal handler; wakes a sleeping loop at once.

        ``graceful=True`` first stops accepting, lets the responses in
        flight finish for up to ``timeout`` seconds (default: the servers'
        ``Limits.shutdown_timeout``), cuts what is left, logs how many
        finished and how many were cut, and then stops (see
        :mod:`evloop.shutdown`)."""
        if graceful:
            starter = EventLoop.graceful_shutdown_starter
            if starter is None:
                raise RuntimeError("no graceful shutdown is plugged in (import evloop.shutdown)")
            self.call_soon_threadsafe(starter, self, timeout)
            return
        self._stopping = True
        self._waker.wake()

    def _run_pass(self, timeout: Optional[float]) -> None:
        ready = self._ready
        # Phase 1: how long select may sleep.
        if ready or self.to_flush or self._stopping:
            wait: Optional[float] = 0.0
        else:
            deadline = self._timers.next_deadline()
            if deadline is None:
                wait = timeout
            else:
                wait = max(0.0, deadline - self.time())
                if timeout is not None and timeout < wait:
                    wait = timeout
        # Phase 2: select.
        events = self._selector.select(wait)
        self.pass_time = self.time()
        # Phase 3: dispatch I/O.
        for key, mask in events:
            target = key.data
            try:
                if mask & EVENT_READ:
                    target.handle_read()
                if mask & EVENT_WRITE and not target.closed:
                    target.handle_write()
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:
                self.report_error(target, exc)
        # Phase 4: due timers become ready.
        if self._timers._heap:
            ready.extend(self._timers.pop_due(self.time() if events else self.pass_time))
        # Phase 5: run what was ready when this phase began.
        for _ in range(len(ready)):
            handle = ready.popleft()
            if handle.cancelled:
                continue
            try:
                handle.callback(*handle.args)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException:
                logger.exception("exception in callback %r", handle.callback)
        # Phase 6: send what connections queued during this pass, one send each.
        if self.to_flush:
            self._flush_queued_output()

    def _flush_queued_output(self) -> None:
        # An error reply queued by handle_error() during a flush, or the
        # replies to requests a flush let through again, go out in a
        # further round, in the same pass.
        for _ in range(3):
            connections = self.to_flush
            if not connections:
                return
            self.to_flush = []
            for connection in connections:
                try:
                    connection.flush()
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as exc:
                    self.report_error(connection, exc)

    def report_error(self, target: Any, exc: BaseException) -> None:
        """Give ``exc``, raised by an I/O callback of ``target``, to
        ``target.handle_error()``; if that fails too, log it and close
        ``target``. ``KeyboardInterrupt`` and ``SystemExit`` propagate."""
        try:
            target.handle_error(exc)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:
            logger.exception("handle_error of %r failed; closing it", target)
            try:
                target.close()
            except Exception:
                logger.exception("closing %r failed", target)

    # -- closing ------------------------------------------------------------

    def close(self) -> None:
        """Close every server and connection on this loop, then the loop.
        Queued callbacks and timers are dropped. Idempotent."""
        if self._closed:
            return
        if self._running_thread is not None:
            raise RuntimeError("cannot close a running loop; stop() it first")
        for server in self._servers:
            server.close()
        self._servers.clear()
        for handler in list(self.handlers):
            handler.close()
        for callback in self._close_callbacks:
            try:
                callback()
            except Exception:
                logger.exception("closing %r failed", callback)
        self._close_callbacks.clear()
        self._closed = True
        self._ready.clear()
        self._waker.close()
        self._selector.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this loop is closed")

    def __enter__(self) -> "EventLoop":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
