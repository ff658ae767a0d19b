"""One worker process of :mod:`evloop.workers`: what runs after fork.

Theory of operation. A worker is an ordinary single-threaded evloop server
on the listening socket it inherited from the supervisor. It drops the
supervisor's signal handling (SIGTERM and SIGINT stop it gracefully, once;
SIGHUP is ignored: reloads are the supervisor's business), imports the
handler if it was given by name (so a new generation runs the code on disk
now), serves, and tells the supervisor on a pipe: ``1`` once it listens, or
``!`` and the reason when it cannot start. It watches a second pipe, the
lifeline, whose write end only the supervisor holds: end of file there
means the supervisor is gone, and the worker stops as if told to.

The supervisor's side of the ready pipe, :func:`await_start_reports`, is
here too, so the start protocol is in one module. With a metrics endpoint,
the worker publishes its counters into the board slot (``place``) the
supervisor gave it (:mod:`evloop.metrics_board`).

It never returns: it leaves with ``os._exit`` (0 after a clean stop).
"""

import logging
import os
import selectors
import signal
import socket
import sys
import time
from typing import Any, Callable, Dict, List, Optional

from .eventloop import EVENT_READ, EventLoop
from .handler import format_address
from .server import Server

__all__ = ["await_start_reports", "import_handler", "run_worker"]

logger = logging.getLogger("evloop")

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def run_worker(supervisor: Any, index: int, ready_w: int, mask: Any, place: Optional[int] = None) -> None:
    """The body of a forked worker of ``supervisor`` (a
    :class:`~evloop.workers.WorkerProcesses`); never returns. ``mask`` is
    the signal mask to restore once the worker's own handlers are set;
    ``place`` its slot on the supervisor's metrics board, if it has one."""
    code = 1
    loop: Optional[EventLoop] = None
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        loop = EventLoop(supervisor.selector)
        if supervisor.metrics is not None:
            supervisor.metrics.worker_started(loop, place)
        stop = _stop_once(loop, supervisor.shutdown_timeout)
        for signum in _STOP_SIGNALS:
            signal.signal(signum, stop)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        _Lifeline(loop, supervisor._lifeline_r, lambda: stop(0, None))
        try:
            handler_class = _load(supervisor)
            server = _server_on(supervisor._sock, supervisor.limits, supervisor.proxy_protocol)
        except BaseException as exc:
            os.write(ready_w, b"!" + _reason(exc).encode()[:1000])
            if type(exc).__name__ == "CommandError":
                return  # one line says it all: the supervisor logs it
            raise
        loop.add_server(server, handler_class)
        if supervisor.worker_setup is not None:
            supervisor.worker_setup(loop, index)
        os.write(ready_w, b"1")
        os.close(ready_w)
        loop.run(supervisor.max_wait)
        code = 0
    except KeyboardInterrupt:
        code = 0
    except BaseException:
        logger.exception("worker %d (pid %d) failed", index, os.getpid())
    finally:
        try:
            if loop is not None:
                loop.close()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)


def await_start_reports(
    pipes: Dict[int, Any],
    wake: socket.socket,
    drain_wake: Callable[[], None],
    stopping: Callable[[], bool],
    timeout: float,
    address: Any,
) -> Optional[str]:
    """In the supervisor: read each new worker's ready pipe (``pipes``: read
    end -> its record) to its end: ``1`` means listening, ``!reason`` or
    nothing (it died) a failure. ``wake`` is the supervisor's signal wakeup
    socket (a SIGCHLD there is drained with ``drain_wake``: the pipe's end
    of file says who died). Gives up after ``timeout`` seconds, or once
    ``stopping()``. Returns None, or the first failure."""
    error: Optional[str] = None
    got = {fd: b"" for fd in pipes}
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        for fd in pipes:
            selector.register(fd, selectors.EVENT_READ)
        selector.register(wake, selectors.EVENT_READ)
        while got and not stopping():
            left = deadline - time.monotonic()
            if left <= 0:
                late = ", ".join(sorted(str(pipes[fd].pid) for fd in got))
                return error or f"pids {late} did not listen within {timeout:g}s"
            for key, _ in selector.select(left):
                if key.fileobj is wake:
                    drain_wake()
                    continue
                fd = int(key.fd)
                chunk = os.read(fd, 4096)
                got[fd] += chunk
                if chunk:
                    continue
                selector.unregister(fd)
                worker, said = pipes[fd], got.pop(fd)
                if said == b"1":
                    logger.info(
                        "worker %d (pid %d, generation %d) listening on %s",
                        worker.index,
                        worker.pid,
                        worker.generation,
                        format_address(address),
                    )
                elif error is None:
                    reason = said[1:].decode(errors="replace").strip() or "it exited at start"
                    error = f"worker {worker.index} (pid {worker.pid}): {reason}"
    return error


def import_handler(spec: str) -> Any:
    """Import ``"module:attr"`` (a dotted module or a ``.py`` file, as
    :func:`evloop.cli.load_handler`) and return a handler class: the
    attribute itself, or a WSGI handler serving it if it is a callable that
    is not a class. Raises what the import raises."""
    import importlib

    from .cli import load_handler

    importlib.invalidate_caches()  # a file written since the supervisor started
    target = load_handler(spec)
    if isinstance(target, type) or not callable(target):
        return target
    wsgi = importlib.import_module("evloop.protocols.wsgi")
    return wsgi.wsgi_handler(target, multiprocess=True)


def _load(supervisor: Any) -> Any:
    """The handler class, imported now if it was given by name."""
    if supervisor.loader is not None:
        return supervisor.loader()
    if isinstance(supervisor.handler_class, str):
        return import_handler(supervisor.handler_class)
    return supervisor.handler_class


def _server_on(sock: socket.socket, limits: Any, proxy_protocol: Any) -> Server:
    """A server on the inherited socket. Closing it closes this process's
    descriptor only; a Unix socket's file stays for the others."""
    if sock.family == socket.AF_UNIX:
        from .unix import UnixServer

        return UnixServer(sock=sock, limits=limits, remove_file=False, proxy_protocol=proxy_protocol)
    return Server(sock=sock, limits=limits, proxy_protocol=proxy_protocol)


def _stop_once(loop: EventLoop, timeout: float) -> Callable[[int, Any], None]:
    """The worker's SIGTERM/SIGINT handler: a graceful stop. Only the first
    signal counts: Ctrl-C reaches the worker and then the parent's SIGTERM
    follows, and neither may cut it short (the parent kills a worker that
    overstays)."""
    draining: List[int] = []

    def on_stop_signal(signum: int, frame: Any) -> None:
        if not draining:
            draining.append(signum)
            loop.stop(graceful=True, timeout=timeout)

    return on_stop_signal


class _Lifeline:
    """The read end of a pipe only the parent can write to. It never
    carries data; end of file means the parent is gone, and the worker
    stops as if told to (an orphan would serve on unsupervised)."""

    closed = False

    def __init__(self, loop: EventLoop, fd: int, on_parent_gone: Callable[[], None]) -> None:
        self.fd = fd
        self.loop = loop
        self.on_parent_gone = on_parent_gone
        loop.set_events(fd, 0, EVENT_READ, self)
        loop.add_close_callback(self.close)

    def handle_read(self) -> None:
        if not os.read(self.fd, 1):
            logger.warning("worker %d: the supervisor is gone; stopping", os.getpid())
            self.close()
            self.on_parent_gone()

    def handle_write(self) -> None:
        pass

    def handle_error(self, exc: BaseException) -> None:
        logger.error("worker %d: lifeline failed", os.getpid(), exc_info=exc)
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.set_events(self.fd, EVENT_READ, 0, self)
            os.close(self.fd)


def _reason(exc: BaseException) -> str:
    text = str(exc)
    if type(exc).__name__ == "CommandError":
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
