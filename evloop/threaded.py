"""Background-thread mode: an event loop running in a thread of its own.

Theory of operation. A :class:`LoopThread` owns one :class:`EventLoop` and
one thread that runs it. This is jsocket's ``ThreadedServer`` and yoton's
``start()``: the calling thread (usually the main one) keeps going while
the loop serves; several LoopThreads in one process are several independent
loops, each single-threaded as ever.

The loop's objects belong to the loop's thread. So everything a LoopThread
offers the outside is built on the two things that are safe from any
thread, :meth:`EventLoop.call_soon_threadsafe` and :meth:`EventLoop.stop`
(a deque append and a byte on the wake-up socketpair):

- :meth:`~LoopThread.start` returns only once the loop is running, so a
  ``stop()`` right after it is never lost and servers added after it are
  being served;
- :meth:`~LoopThread.submit` / :meth:`~LoopThread.call` run a function on
  the loop's thread and hand back its result (a Future, or the value);
- :meth:`~LoopThread.stop` asks the loop to end its current pass and return;
  it wakes a sleeping loop at once, so stopping takes one pass, not a poll
  interval, and it is safe from any thread and from a signal handler;
- when the loop returns, the thread closes it (every server, every
  connection, Unix socket files) before it ends, so :meth:`~LoopThread.join`
  returning means everything is released.

An exception that escapes the loop (only ``KeyboardInterrupt``/``SystemExit``
raised by a handler, or a bug in evloop itself) is logged, kept in
:attr:`~LoopThread.exception` and re-raised by ``join()``.
"""

import concurrent.futures
import logging
import threading
from typing import Any, Callable, Optional, TypeVar

from .eventloop import EventLoop

T = TypeVar("T")
S = TypeVar("S")

__all__ = ["LoopThread"]

logger = logging.getLogger("evloop")


class LoopThread:
    """Run an :class:`EventLoop` in a background thread.

    ``loop`` is the loop to run (default: a new one with ``selector``).
    ``max_wait`` bounds one select's sleep, as in :meth:`EventLoop.run`.
    ``daemon`` is the thread's flag: False (default) keeps the process alive
    while the loop serves, like any other server thread. Use as a context
    manager to start on entry and stop and join on exit::

        with LoopThread() as background:
            background.add_server(Server("localhost", 8000), LengthSepEcho)
            ...                         # the main thread does other work
    """

    def __init__(
        self,
        loop: Optional[EventLoop] = None,
        *,
        selector: Any = None,
        name: Optional[str] = None,
        daemon: bool = False,
        max_wait: Optional[float] = None,
    ) -> None:
        self.loop = loop if loop is not None else EventLoop(selector)
        self.max_wait = max_wait
        self.exception: Optional[BaseException] = None
        self._running = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name or "evloop", daemon=daemon)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    @property
    def name(self) -> str:
        return self._thread.name

    def is_alive(self) -> bool:
        """True from :meth:`start` until the loop has returned and closed."""
        return self._thread.is_alive()

    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    # -- life -------------------------------------------------------------

    def start(self, timeout: Optional[float] = 10.0) -> "LoopThread":
        """Start the thread and return once its loop is running (or has
        already ended). Raises RuntimeError if it does not start within
        ``timeout`` seconds, or if started twice."""
        if self._thread.ident is not None:
            raise RuntimeError(f"{self!r} was started already")
        # Queued before the thread exists, so it is the loop's first callback.
        self.loop.call_soon(self._running.set)
        self._thread.start()
        if not self._running.wait(timeout):
            raise RuntimeError(f"{self!r} did not start within {timeout} seconds")
        return self

    def _run(self) -> None:
        try:
            self.loop.run(max_wait=self.max_wait)
        except BaseException as exc:
            self.exception = exc
            logger.error("%s: the loop ended with an exception", self.name, exc_info=exc)
        finally:
            # Only a loop this thread ran is this thread's to close: run()
            # refusing at once (a loop already running elsewhere, or closed)
            # never ran the first callback, which sets _running.
            ran = self._running.is_set()
            self._running.set()  # a start() still waiting must not wait for ever
            if ran:
                try:
                    self.loop.close()
                except Exception:
                    logger.exception("%s: closing the loop failed", self.name)

    def stop(self) -> None:
        """Ask the loop to return after its current pass. Safe from any
        thread and from a signal handler; returns at once (see :meth:`join`).
        Idempotent; does nothing once the loop is closed."""
        if not self.loop.is_closed():
            self.loop.stop()

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait until the thread has ended (its loop returned and closed).
        Returns False if ``timeout`` ran out first. Re-raises an exception
        that ended the loop. Not from the loop's own thread."""
        if self.in_loop_thread():
            raise RuntimeError("join() from the loop's own thread would wait for ever")
        if self._thread.ident is not None:
            self._thread.join(timeout)
        if self._thread.is_alive():
            return False
        if self.exception is not None:
            exc, self.exception = self.exception, None
            raise exc
        return True

    # -- talking to the loop from other threads ---------------------------

    def submit(self, function: Callable[..., T], *args: Any) -> "concurrent.futures.Future[T]":
        """Run ``function(*args)`` on the loop's thread; return a Future of
        its result. Safe from any thread. Before :meth:`start` the call is
        queued and runs once the loop does."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                result = function(*args)
            except BaseException as exc:  # handed to whoever waits on the Future
                future.set_exception(exc)
            else:
                future.set_result(result)

        self.loop.call_soon_threadsafe(run)
        return future

    def call(self, function: Callable[..., T], *args: Any, timeout: Optional[float] = 10.0) -> T:
        """Run ``function(*args)`` on the loop's thread and return its result
        (or raise its exception). Called on the loop's thread, or before the
        loop has started, it runs at once."""
        if self.in_loop_thread() or not self._thread.is_alive():
            # No other thread is touching the loop: call it directly.
            return function(*args)
        return self.submit(function, *args).result(timeout)

    def add_server(self, server: S, handler_class: type) -> S:
        """Serve ``server`` on this loop with ``handler_class``; safe from
        any thread. Returns the server."""
        self.call(self.loop.add_server, server, handler_class)
        return server

    # -- context manager ----------------------------------------------------

    def __enter__(self) -> "LoopThread":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()
        self.join()

    def __repr__(self) -> str:
        state = (
            "running"
            if self._thread.is_alive()
            else ("stopped" if self._thread.ident is not None else "not started")
        )
        return f"<{type(self).__name__} {self.name} {state}>"
