"""socketserver's lifecycle on any evloop server: ``serve_forever()``,
``shutdown()``, ``server_close()`` and the context manager.

Theory of operation. An evloop server does not own a loop; a loop serves
it. :meth:`ServerLifecycle.serve_forever` therefore runs the server's loop,
making one (and adding the server to it) the first time if the server is
not on a loop yet. Every server on that loop is served meanwhile.

:meth:`~ServerLifecycle.shutdown` keeps socketserver's contract: called
from another thread it stops the loop and waits until ``serve_forever()``
has returned. Unlike socketserver it cannot deadlock: called on the
serving thread itself (from a handler, or a signal handler) it only asks the
loop to stop. A shutdown that
comes before ``serve_forever()`` got going is remembered, so the common
``Thread(target=server.serve_forever).start(); server.shutdown()`` cannot
leave a thread serving for ever.

:meth:`~ServerLifecycle.server_close` closes the listener (safe from any
thread: it hops onto the loop's thread while the loop runs) and, if
``serve_forever()`` made the loop, closes that loop and its connections too
once it is no longer running. ``with server:`` calls it on the way out.

Which loops are inside a ``serve_forever()`` is kept in one table under one
module lock, and the mixin's per-instance state is two class-level defaults,
so ``Server`` and the datagram servers need no cooperative ``__init__``.
What it needs of the class it is mixed into:
``loop``, ``handler_class``, ``closed``, ``close()``, ``socket``,
``address`` and the loop's ``add_server()`` protocol.
"""

import threading
from typing import Any, Dict, Optional, Tuple, cast

from .eventloop import EventLoop
from .shutdown import handle_signals

__all__ = ["ServerLifecycle"]

# Guards the serve/shutdown handshake of every server; it is held only for a
# few attribute reads and writes, so one lock for all servers costs nothing.
# Re-entrant because shutdown() may run in a signal handler that interrupted
# serve_forever() on the same thread while it held the lock.
_LOCK = threading.RLock()

# Loops inside a serve_forever() now: loop -> (serving thread, event set when
# it returns). Kept by loop, not by server, so shutdown() of any server on a
# loop stops the serve_forever() running it, whichever server it was called on.
_SERVING: Dict[Any, Tuple[int, threading.Event]] = {}


class ServerLifecycle:
    """socketserver's ``serve_forever`` / ``shutdown`` / ``server_close`` /
    context manager, for ``Server``, ``UnixServer`` and the datagram servers."""

    _owned_loop: Any = None  # the loop serve_forever() made, if any
    _shutdown_request = False  # shutdown() came before serve_forever()

    # -- socketserver's names --------------------------------------------

    @property
    def server_address(self) -> Any:
        """socketserver's name for :attr:`address`."""
        return self.address  # type: ignore[attr-defined]

    @property
    def RequestHandlerClass(self) -> Any:  # noqa: N802 (socketserver's spelling)
        """socketserver's name for the handler class this server serves with."""
        return self.handler_class  # type: ignore[attr-defined]

    def fileno(self) -> int:
        """The listening socket's descriptor, as socketserver offers it."""
        return int(self.socket.fileno())  # type: ignore[attr-defined]

    # -- serving ------------------------------------------------------------

    def serve_forever(
        self, handler_class: Any = None, poll_interval: Optional[float] = 0.5, *, selector: Any = None
    ) -> None:
        """Serve until :meth:`shutdown` (from another thread or a handler) or
        ``KeyboardInterrupt`` raised by a handler, which propagates as in
        socketserver. In the main thread SIGINT (Ctrl-C) and SIGTERM shut
        down gracefully instead (unless the program handles them itself):
        no new clients, responses in flight finish, then it returns (see
        :mod:`evloop.shutdown`).

        ``handler_class`` is needed only the first time, when the server is
        not on a loop yet: a loop is made (``selector`` picks its
        multiplexer) and serves this server with it. A server already on a
        loop runs that loop, serving every server on it. ``poll_interval``
        bounds one select's sleep; evloop wakes for ``shutdown()`` at once,
        so it only matters to code that watches the loop from outside.
        Raises RuntimeError if the loop is already running elsewhere.
        """
        loop = self.loop  # type: ignore[attr-defined]
        if loop is None:
            if handler_class is None:
                raise TypeError(
                    f"{self!r} is not served by a loop yet; pass serve_forever() its handler class"
                )
            loop = EventLoop(selector)
            try:
                loop.add_server(cast(Any, self), handler_class)  # a mixin: the class it is in serves
            except BaseException:
                loop.close()
                raise
            self._owned_loop = loop
        elif handler_class is not None and handler_class is not self.handler_class:  # type: ignore[attr-defined]
            raise RuntimeError(f"{self!r} is already served with {self.handler_class!r}")  # type: ignore[attr-defined]
        done = threading.Event()
        with _LOCK:
            if loop in _SERVING:
                raise RuntimeError(f"{self!r}: its loop is in serve_forever() already")
            # Publish first, check second: a shutdown() that interrupts this
            # (a signal handler) then either sees us serving and stops the
            # loop, or leaves the request that the check below finds.
            _SERVING[loop] = (threading.get_ident(), done)
            if self._shutdown_request:
                # shutdown() came first (a thread that had not started yet):
                # honour it, as socketserver does.
                self._shutdown_request = False
                del _SERVING[loop]
                done.set()
                return
        try:
            with handle_signals(loop):
                loop.run(max_wait=poll_interval)
        finally:
            with _LOCK:
                self._shutdown_request = False
                _SERVING.pop(loop, None)
            done.set()

    def shutdown(self) -> None:
        """Make :meth:`serve_forever` return. From another thread, wait
        until it has; from the serving thread itself (a handler, a signal
        handler), only ask, since waiting there would wait for ever.
        Any server on the loop may be asked: the loop stops. Idempotent."""
        loop = self.loop  # type: ignore[attr-defined]
        with _LOCK:
            serving = _SERVING.get(loop) if loop is not None else None
            if serving is None:
                self._shutdown_request = True
                return
        thread, done = serving
        loop.stop()
        if thread != threading.get_ident():
            done.wait()

    def server_close(self) -> None:
        """Close the listener (socketserver's ``server_close``). Safe from
        any thread. If :meth:`serve_forever` made this server's loop, that
        loop and its open connections are closed too, unless it is still
        running (then ``shutdown()`` first)."""
        loop = self.loop  # type: ignore[attr-defined]
        running = loop.thread_id if loop is not None else None
        if running is not None and running != threading.get_ident():
            # The selector belongs to the loop's thread: close from there.
            closed = threading.Event()

            def close_on_loop() -> None:
                try:
                    self.close()  # type: ignore[attr-defined]
                finally:
                    closed.set()

            loop.call_soon_threadsafe(close_on_loop)
            # If the loop stops before running it, close here instead.
            while not closed.wait(0.05):
                if loop.thread_id is None:
                    self.close()  # type: ignore[attr-defined]
                    break
        else:
            self.close()  # type: ignore[attr-defined]
        owned = self._owned_loop
        if owned is not None and not owned.is_running():
            self._owned_loop = None
            owned.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.server_close()
