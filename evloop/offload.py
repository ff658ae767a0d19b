"""Blocking work off the loop: a worker pool per loop, replies in request order.

Theory of operation. A handler that must call something slow (a database, a
disk, a CPU-bound function) calls ``self.offload(func, *args)`` and returns
the ``concurrent.futures.Future`` it gets from ``make_response()``. The call
runs in the loop's executor, a ``ThreadPoolExecutor`` made on first use
(``DEFAULT_MAX_WORKERS`` threads, the standard library's own default), while
the loop goes on serving every other client. The output queue holds the
future in its place among the connection's replies: replies to later
requests wait behind it, so each connection gets its answers in request
order however the calls finish. When the future finishes, its done-callback
(in the worker thread) wakes the loop with ``call_soon_threadsafe``, and the
result is sent from the loop thread like any other reply. Nothing polls.

If the call raised, the exception comes out of the output queue in that same
place, on the loop thread, and goes to the handler's ``handle_error()``: the
replies before it have been delivered, the ones after it are dropped (sent,
they would be taken as the failed request's answer). The default
``handle_error()`` logs the traceback with the peer's address and closes
that connection; a ``RemoteProtocolError`` raised by the call gets its error
reply, as if it had been raised on the loop.

Fairness: the pool hands the executor no more calls than it has workers
(``concurrency``), so calls never queue inside it, where they would be first
come, first served. Calls past that wait in their connection's own queue,
and connections take turns: each time a worker is free, the next connection
in the round starts one call and goes to the end of the round. A connection
with a backlog of slow calls therefore delays another connection's first
call by at most one call per connection waiting, not by its whole backlog.
At most ``max_offloaded`` calls of one connection (a class attribute of the
handler, 16 by default) run at once; past that many running or waiting,
reading from it pauses until they drain, so a client pipelining thousands of
slow requests cannot make the server buffer without bound. (A datagram
handler's ``offload`` and the resolver of :mod:`evloop.connect` use the
executor directly, outside the round.)

Lifetime: ``loop.close()`` shuts the pool down without waiting: calls not yet
started are cancelled, calls running finish in their threads and their
results are dropped (their connections are closed). Calls waiting for a
connection that has closed are never started.
"""

import collections
import functools
import os
from concurrent.futures import CancelledError, Executor, Future, ThreadPoolExecutor
from typing import Any, Callable, Deque, Dict, Optional, Set, Tuple, TypeVar

__all__ = ["DEFAULT_MAX_WORKERS", "offload_call", "offload_executor", "set_offload_executor"]

T = TypeVar("T")

#: Threads in a loop's default pool: ``ThreadPoolExecutor``'s own default,
#: enough to overlap I/O-bound calls without one thread per client.
DEFAULT_MAX_WORKERS = min(32, (os.cpu_count() or 1) + 4)

_Call = Tuple[Future[Any], Callable[..., Any], Tuple[Any, ...], Dict[str, Any]]


class _ConnectionCalls:
    """One connection's offloaded calls: those in the executor, and those
    waiting for a turn (with the future already handed out)."""

    __slots__ = ("handler", "running", "waiting", "paused_reading", "in_turn")

    def __init__(self, handler: Any) -> None:
        self.handler = handler
        self.running: Set[Future[Any]] = set()
        self.waiting: Deque[_Call] = collections.deque()
        self.paused_reading = False
        self.in_turn = False  # in the pool's round of connections waiting to start a call


class _LoopPool:
    """The executor of one loop, and the per-connection bookkeeping.

    Only the loop thread touches ``calls`` and ``turns``; worker threads
    reach them through ``call_soon_threadsafe``. An entry lives while its
    connection has calls running or waiting, so nothing is kept for idle
    connections. ``turns`` holds the connections that have a call waiting
    and room under their ``max_offloaded`` to start it, each once, in the
    order they will be served."""

    def __init__(self, loop: Any, executor: Executor, shutdown_with_loop: bool, concurrency: int) -> None:
        self.loop = loop
        self.executor = executor
        self.shutdown_with_loop = shutdown_with_loop
        self.concurrency = concurrency
        self.running = 0  # calls handed to the executor and not yet finished
        self.calls: Dict[Any, _ConnectionCalls] = {}
        self.turns: Deque[_ConnectionCalls] = collections.deque()

    def close(self) -> None:
        for state in self.calls.values():
            for future, _, _, _ in state.waiting:
                future.cancel()
        self.calls.clear()
        self.turns.clear()
        if self.shutdown_with_loop:
            # Not waiting: a call blocked for good must not hang close().
            self.executor.shutdown(wait=False, cancel_futures=True)

    def submit(
        self, handler: Any, func: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]
    ) -> Future[Any]:
        """Hand ``func`` to the executor if the pool has room and no other
        connection is waiting for it; otherwise queue it for this
        connection's turn. Either way return the future of its result."""
        state = self.calls.get(handler)
        if state is None:
            state = self.calls[handler] = _ConnectionCalls(handler)
        if (
            not state.waiting
            and len(state.running) < handler.max_offloaded
            and self.running < self.concurrency
            and not self.turns
        ):
            try:
                return self._start(state, func, args, kwargs)
            finally:
                if not state.running:  # the executor refused it
                    del self.calls[handler]
        future: Future[Any] = Future()
        state.waiting.append((future, func, args, kwargs))
        self._take_turn(state)
        if not state.paused_reading and len(state.running) + len(state.waiting) > handler.max_offloaded:
            state.paused_reading = True
            handler.pause_reading()
        return future

    def _take_turn(self, state: _ConnectionCalls) -> None:
        """Join the end of the round, if this connection may start a call."""
        if not state.in_turn and state.waiting and len(state.running) < state.handler.max_offloaded:
            state.in_turn = True
            self.turns.append(state)

    def _start(
        self,
        state: _ConnectionCalls,
        func: Callable[..., Any],
        args: Tuple[Any, ...],
        kwargs: Dict[str, Any],
    ) -> Future[Any]:
        future = self.executor.submit(func, *args, **kwargs)
        state.running.add(future)
        self.running += 1
        handler = state.handler
        call_soon_threadsafe = self.loop.call_soon_threadsafe
        # Runs in the worker thread (or at once, if already done): hop back.
        future.add_done_callback(lambda done: call_soon_threadsafe(self._finished, handler, done))
        return future

    def _finished(self, handler: Any, done: Future[Any]) -> None:
        state = self.calls.get(handler)
        if state is None:  # the pool was closed meanwhile
            return
        self.running -= 1
        state.running.discard(done)
        if handler.closed:
            # Nobody will read these results: do not start what has not started.
            for future, _, _, _ in state.waiting:
                future.cancel()
            state.waiting.clear()
            for future in state.running:
                future.cancel()
        self._take_turn(state)  # it may have been waiting at its max_offloaded
        self._start_next()
        self._settle(state)

    def _start_next(self) -> None:
        """Start waiting calls while the pool has room: one call from the
        connection whose turn it is, which then goes to the end of the round,
        so one connection's backlog cannot hold back another's first call."""
        while self.running < self.concurrency and self.turns:
            state = self.turns.popleft()
            state.in_turn = False
            if state.handler.closed or not state.waiting:
                self._settle(state)
                continue
            future, func, args, kwargs = state.waiting.popleft()
            if future.set_running_or_notify_cancel():
                try:
                    inner = self._start(state, func, args, kwargs)
                except BaseException as exc:  # the executor was shut down
                    future.set_exception(exc)
                else:
                    inner.add_done_callback(functools.partial(_copy_outcome, outer=future))
            self._take_turn(state)
            self._settle(state)

    def _settle(self, state: _ConnectionCalls) -> None:
        """Read again once the connection is within its share; forget it
        once it has nothing running or waiting."""
        handler = state.handler
        if handler.closed and state.waiting:
            for future, _, _, _ in state.waiting:
                future.cancel()
            state.waiting.clear()
        if state.paused_reading and len(state.running) + len(state.waiting) <= handler.max_offloaded:
            state.paused_reading = False
            if not handler.closed:
                handler.resume_reading()
        if not state.running and not state.waiting and self.calls.get(handler) is state:
            del self.calls[handler]


def _copy_outcome(done: Future[Any], outer: Future[Any]) -> None:
    """Give ``outer`` (handed out while the call waited) the call's outcome."""
    if done.cancelled():
        outer.set_exception(CancelledError())
        return
    exc = done.exception()
    if exc is not None:
        outer.set_exception(exc)
    else:
        outer.set_result(done.result())


def _pool_of(loop: Any) -> Optional[_LoopPool]:
    return getattr(loop, "_offload_pool", None)


def set_offload_executor(
    loop: Any,
    executor: Optional[Executor] = None,
    *,
    max_workers: Optional[int] = None,
    shutdown_with_loop: bool = True,
    concurrency: Optional[int] = None,
) -> Executor:
    """Choose the pool that ``offload()`` uses on ``loop``: ``executor``
    (any ``concurrent.futures.Executor``, e.g. a ``ProcessPoolExecutor`` for
    CPU-bound calls whose arguments pickle), or a new ``ThreadPoolExecutor``
    of ``max_workers`` threads. With ``shutdown_with_loop=False`` closing the
    loop leaves the executor running (one pool shared by several loops).
    ``concurrency`` is how many calls are handed to the executor at once,
    the rest waiting their connection's turn: by default the pool's
    ``max_workers`` (:data:`DEFAULT_MAX_WORKERS` for an ``executor`` given;
    say its size, or calls past it queue inside the executor, first come,
    first served). Returns the executor. Call it before the first ``offload()``; the pool
    it replaces is closed, and it is an error while calls still run in it."""
    if executor is not None and max_workers is not None:
        raise TypeError("give an executor or max_workers, not both")
    if loop.is_closed():
        raise RuntimeError("this loop is closed")
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, not {concurrency!r}")
    if executor is None:
        max_workers = max_workers or DEFAULT_MAX_WORKERS
        executor = ThreadPoolExecutor(max_workers, thread_name_prefix="evloop-offload")
    old = _pool_of(loop)
    if old is not None:
        if old.calls:
            raise RuntimeError("offloaded calls are still running on this loop's pool")
        loop.remove_close_callback(old.close)
        old.close()
    pool = _LoopPool(loop, executor, shutdown_with_loop, concurrency or max_workers or DEFAULT_MAX_WORKERS)
    loop._offload_pool = pool
    loop.add_close_callback(pool.close)
    return executor


def offload_executor(loop: Any) -> Executor:
    """The executor ``offload()`` uses on ``loop``, made on first use."""
    pool = _pool_of(loop)
    if pool is None:
        return set_offload_executor(loop)
    return pool.executor


def offload_call(
    handler: Any,
    func: Callable[..., T],
    args: Tuple[Any, ...] = (),
    kwargs: Optional[Dict[str, Any]] = None,
) -> Future[T]:
    """Run ``func(*args, **kwargs)`` for ``handler`` in its loop's pool and
    return a Future of the result (what ``ClientHandler.offload`` does).
    Call it on the loop thread. Raises RuntimeError once the loop is closed."""
    loop = handler.loop
    pool = _pool_of(loop)
    if pool is None:
        offload_executor(loop)
        pool = _pool_of(loop)
        assert pool is not None
    return pool.submit(handler, func, args, kwargs or {})
