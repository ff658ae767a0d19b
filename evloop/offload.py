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

Fairness: at most ``max_offloaded`` calls of one connection (a class
attribute of the handler, 16 by default) are in the executor at once. More
wait in that connection's own queue, and reading from it pauses until they
drain, so a client pipelining thousands of slow requests can neither fill the
queue every client shares nor make the server buffer without bound.

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

    __slots__ = ("running", "waiting", "paused_reading")

    def __init__(self) -> None:
        self.running: Set[Future[Any]] = set()
        self.waiting: Deque[_Call] = collections.deque()
        self.paused_reading = False


class _LoopPool:
    """The executor of one loop, and the per-connection bookkeeping.

    Only the loop thread touches ``calls``; worker threads reach it through
    ``call_soon_threadsafe``. An entry lives while its connection has calls
    running or waiting, so nothing is kept for idle connections."""

    def __init__(self, loop: Any, executor: Executor, shutdown_with_loop: bool) -> None:
        self.loop = loop
        self.executor = executor
        self.shutdown_with_loop = shutdown_with_loop
        self.calls: Dict[Any, _ConnectionCalls] = {}

    def close(self) -> None:
        for state in self.calls.values():
            for future, _, _, _ in state.waiting:
                future.cancel()
        self.calls.clear()
        if self.shutdown_with_loop:
            # Not waiting: a call blocked for good must not hang close().
            self.executor.shutdown(wait=False, cancel_futures=True)

    def submit(
        self, handler: Any, func: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]
    ) -> Future[Any]:
        """Hand ``func`` to the executor or, past the connection's share,
        queue it; either way return the future of its result."""
        state = self.calls.get(handler)
        if state is None:
            state = self.calls[handler] = _ConnectionCalls()
        if len(state.running) < handler.max_offloaded and not state.waiting:
            try:
                return self._start(handler, state, func, args, kwargs)
            finally:
                if not state.running:  # the executor refused it
                    del self.calls[handler]
        future: Future[Any] = Future()
        state.waiting.append((future, func, args, kwargs))
        if not state.paused_reading:
            state.paused_reading = True
            handler.pause_reading()
        return future

    def _start(
        self,
        handler: Any,
        state: _ConnectionCalls,
        func: Callable[..., Any],
        args: Tuple[Any, ...],
        kwargs: Dict[str, Any],
    ) -> Future[Any]:
        future = self.executor.submit(func, *args, **kwargs)
        state.running.add(future)
        call_soon_threadsafe = self.loop.call_soon_threadsafe
        # Runs in the worker thread (or at once, if already done): hop back.
        future.add_done_callback(lambda done: call_soon_threadsafe(self._finished, handler, done))
        return future

    def _finished(self, handler: Any, done: Future[Any]) -> None:
        state = self.calls.get(handler)
        if state is None:  # the pool was closed meanwhile
            return
        state.running.discard(done)
        if handler.closed:
            # Nobody will read these results: do not start what has not started.
            for future, _, _, _ in state.waiting:
                future.cancel()
            state.waiting.clear()
            for future in state.running:
                future.cancel()
        while state.waiting and len(state.running) < handler.max_offloaded:
            future, func, args, kwargs = state.waiting.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                inner = self._start(handler, state, func, args, kwargs)
            except BaseException as exc:  # the executor was shut down
                future.set_exception(exc)
                continue
            inner.add_done_callback(functools.partial(_copy_outcome, outer=future))
        if not state.waiting and state.paused_reading:
            state.paused_reading = False
            if not handler.closed:
                handler.resume_reading()
        if not state.running and not state.waiting:
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
) -> Executor:
    """Choose the pool that ``offload()`` uses on ``loop``: ``executor``
    (any ``concurrent.futures.Executor``, e.g. a ``ProcessPoolExecutor`` for
    CPU-bound calls whose arguments pickle), or a new ``ThreadPoolExecutor``
    of ``max_workers`` threads. With ``shutdown_with_loop=False`` closing the
    loop leaves the executor running (one pool shared by several loops).
    Returns the executor. Call it before the first ``offload()``; the pool
    it replaces is closed, and it is an error while calls still run in it."""
    if executor is not None and max_workers is not None:
        raise TypeError("give an executor or max_workers, not both")
    if loop.is_closed():
        raise RuntimeError("this loop is closed")
    if executor is None:
        executor = ThreadPoolExecutor(max_workers or DEFAULT_MAX_WORKERS, thread_name_prefix="evloop-offload")
    old = _pool_of(loop)
    if old is not None:
        if old.calls:
            raise RuntimeError("offloaded calls are still running on this loop's pool")
        loop._close_callbacks.remove(old.close)
        old.close()
    pool = _LoopPool(loop, executor, shutdown_with_loop)
    loop._offload_pool = pool
    loop._close_callbacks.append(pool.close)
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
