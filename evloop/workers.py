"""Several processes: N single-threaded loops sharing one port.

The successor of socketserver's ``ForkingMixIn``: instead of a process per
client, a fixed number of worker processes, each an ordinary evloop server
(one thread, one loop, any number of clients).

Theory of operation. The parent, the supervisor, never serves a client. It
binds the address once with ``SO_REUSEPORT`` and never listens on it: that
turns port 0 into a real port and keeps the port held while workers come and
go. Then it forks the workers. Each makes its own listening socket on the
same address, also with ``SO_REUSEPORT``, and runs its own
:class:`~evloop.EventLoop`; the kernel spreads new connections across the
listening sockets (Linux hashes each connection's addresses, so every worker
gets a share and no accept() is contended). A worker tells the parent it is
listening by writing one byte on a pipe.

The parent sleeps in ``recv()`` on a socketpair that ``signal.set_wakeup_fd``
writes to, so SIGCHLD, SIGTERM and SIGINT wake it at once and nothing polls.
A worker that dies is reaped, logged with its exit status and replaced; one
that dies within a second of starting is replaced after a delay that doubles
up to ten seconds, so a worker that cannot start does not spin the machine.
On SIGTERM or SIGINT (or :meth:`WorkerProcesses.stop`) the parent sends
SIGTERM to every worker; a worker then stops gracefully
(``EventLoop.stop(graceful=True)``: it closes its listener, lets the
requests in flight finish for up to ``shutdown_timeout`` seconds) and exits.
A worker still there a second after that is killed. A worker whose parent
is gone, even killed outright, stops the same way: it watches a pipe only
the parent can hold open. Then the parent lets go
of the port and :meth:`WorkerProcesses.run` returns.

Connections still in a dying worker's accept queue are reset by its kernel
(a property of ``SO_REUSEPORT``); connections it had accepted end with it.

POSIX only (``fork``); the load spreading needs Linux 3.9 or later (other
systems accept ``SO_REUSEPORT`` but may give every connection to one worker).
``run()`` must be called from the main thread, which owns signal handling.
"""

import logging
import os
import selectors
import signal
import socket
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Type

from .eventloop import EVENT_READ, EventLoop
from .handler import ClientHandler
from .proxy_protocol import ProxyProtocol
from .server import Server, bind_inet

__all__ = ["WorkerProcesses", "serve_workers"]

logger = logging.getLogger("evloop")

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# A worker that lived less than this is restarted after a growing delay.
_QUICK_DEATH = 1.0
_FIRST_DELAY = 0.1
_MAX_DELAY = 10.0


class WorkerProcesses:
    """``workers`` processes serving ``handler_class`` on one address.

    ``host``, ``port``, ``family`` and ``backlog`` are as for
    :class:`~evloop.Server` (port 0 picks a free port, the same for every
    worker; :attr:`port` tells which as soon as this object exists).
    ``selector`` picks each worker's multiplexer. ``worker_setup(loop,
    index)``, if given, runs in each worker before it serves, e.g. to open
    the worker's own database connection. ``shutdown_timeout`` is how long a
    stopping worker lets open connections finish. ``limits`` (an
    :class:`~evloop.limits.Limits`) bounds each worker's clients;
    ``proxy_protocol`` (a :class:`~evloop.proxy_protocol.ProxyProtocol`)
    makes each worker's server read a PROXY protocol header first.
    """

    def __init__(
        self,
        handler_class: Type[ClientHandler],
        host: str = "localhost",
        port: int = 0,
        *,
        workers: int = 2,
        family: int = 0,
        backlog: int = 1024,
        selector: Any = None,
        worker_setup: Optional[Callable[[EventLoop, int], None]] = None,
        shutdown_timeout: float = 5.0,
        max_wait: Optional[float] = None,
        limits: Any = None,
        proxy_protocol: Optional[ProxyProtocol] = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers!r}")
        if not hasattr(os, "fork") or not hasattr(socket, "SO_REUSEPORT"):
            raise OSError("worker processes need fork() and SO_REUSEPORT (POSIX)")
        self.handler_class = handler_class
        self.workers = workers
        self.backlog = backlog
        self.selector = selector
        self.worker_setup = worker_setup
        self.shutdown_timeout = shutdown_timeout
        self.max_wait = max_wait
        self.limits = limits
        self.proxy_protocol = proxy_protocol
        # Bound with SO_REUSEPORT and never listening: it fixes the port and
        # holds it, and the kernel sends it no connection.
        self._reserved = bind_inet(host, port, family=family, reuse_port=True)
        self.address = self._reserved.getsockname()
        self.family = self._reserved.family
        #: Worker index -> pid of the process now serving in that place.
        self.pids: Dict[int, int] = {}
        self._started: Dict[int, float] = {}
        self._restart_at: Dict[int, float] = {}
        self._delay: Dict[int, float] = {}
        self._stopping = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        # Workers watch the read end; only the parent holds the write end, so
        # they see end of file when it is gone, even killed with SIGKILL.
        self._lifeline_r, self._lifeline_w = os.pipe()
        self._parent = os.getpid()

    @property
    def host(self) -> str:
        return str(self.address[0])

    @property
    def port(self) -> int:
        return int(self.address[1])

    # -- the parent ---------------------------------------------------------

    def run(self, ready: Optional[Callable[["WorkerProcesses"], None]] = None) -> None:
        """Start the workers and keep them running until SIGTERM, SIGINT or
        :meth:`stop`; then stop them all, free the port and return.
        ``ready(self)`` is called once every worker is listening. Call from
        the main thread; the signal handlers it installs are restored."""
        if os.getpid() != self._parent:
            raise RuntimeError("run() belongs to the process that made this object")
        previous = {signum: signal.getsignal(signum) for signum in (*_STOP_SIGNALS, signal.SIGCHLD)}
        old_wakeup = signal.set_wakeup_fd(self._wake_w.fileno())
        try:
            for signum in _STOP_SIGNALS:
                signal.signal(signum, self._stop_signal)
            # A Python-level handler, so SIGCHLD writes to the wakeup fd.
            signal.signal(signal.SIGCHLD, _ignore_signal)
            for index in range(self.workers):
                if not self._stopping:
                    self._spawn(index)
            if ready is not None and not self._stopping:
                ready(self)
            while not self._stopping:
                self._reap()
                self._restart_due()
                self._sleep(self._next_restart_in())
        finally:
            try:
                self._stop_workers()
            finally:
                signal.set_wakeup_fd(old_wakeup)
                for signum, handler in previous.items():
                    signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
                self.close()

    def stop(self) -> None:
        """Make :meth:`run` stop the workers and return. Safe from any thread
        and from a signal handler."""
        self._stopping = True
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    def close(self) -> None:
        """Let go of the port (``run()`` does this when it returns)."""
        self._reserved.close()
        self._wake_r.close()
        self._wake_w.close()
        for fd in (self._lifeline_r, self._lifeline_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._lifeline_r = self._lifeline_w = -1

    def _stop_signal(self, signum: int, frame: Any) -> None:
        logger.info("supervisor got %s; stopping %d workers", signal.Signals(signum).name, len(self.pids))
        self._stopping = True

    def _spawn(self, index: int) -> None:
        ready_r, ready_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        # Signals wait until the worker has its own handlers: one arriving
        # in between would run the parent's handler in the worker and be lost.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, (*_STOP_SIGNALS, signal.SIGCHLD))
        pid = os.fork()
        if pid == 0:  # the worker
            os.close(ready_r)
            self._worker_main(index, ready_w, mask)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(ready_w)
        self.pids[index] = pid
        self._started[index] = time.monotonic()
        try:
            listening = self._wait_until_listening(ready_r)
        finally:
            os.close(ready_r)
        if listening:
            logger.info("worker %d (pid %d) listening on %s:%d", index, pid, self.host, self.port)
        elif not self._stopping:
            logger.error("worker %d (pid %d) failed to start", index, pid)

    def _wait_until_listening(self, ready_r: int) -> bool:
        """True once the worker writes its byte; False if it died first
        (end of file) or a stop was asked for meanwhile."""
        with selectors.DefaultSelector() as selector:
            selector.register(ready_r, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping:
                for key, _ in selector.select():
                    if key.fileobj == ready_r:
                        return bool(os.read(ready_r, 1))
                    # A signal: SIGCHLD means this worker may have died,
                    # which the pipe's end of file says; a stop ends the wait.
                    self._drain_wakeups()
        return False

    def _drain_wakeups(self) -> None:
        self._wake_r.setblocking(False)
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _reap(self) -> None:
        """Collect the workers that ended and plan their replacement."""
        now = time.monotonic()
        for index, pid in list(self.pids.items()):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if not done:
                continue
            del self.pids[index]
            if self._stopping:
                continue
            lived = now - self._started.pop(index, now)
            if lived < _QUICK_DEATH:
                delay = min(self._delay.get(index, _FIRST_DELAY / 2) * 2, _MAX_DELAY)
            else:
                delay = 0.0
            self._delay[index] = delay
            self._restart_at[index] = now + delay
            logger.warning(
                "worker %d (pid %d) %s after %.1fs; restarting it%s",
                index,
                pid,
                _describe_status(status),
                lived,
                f" in {delay:.1f}s" if delay else "",
            )

    def _restart_due(self) -> None:
        now = time.monotonic()
        for index, when in sorted(self._restart_at.items()):
            if when <= now and not self._stopping:
                del self._restart_at[index]
                self._spawn(index)

    def _next_restart_in(self) -> Optional[float]:
        if not self._restart_at:
            return None
        return max(0.0, min(self._restart_at.values()) - time.monotonic())

    def _sleep(self, timeout: Optional[float]) -> None:
        """Wait for a signal, a stop() or ``timeout`` seconds."""
        if timeout == 0:
            return
        self._wake_r.settimeout(timeout)
        try:
            self._wake_r.recv(4096)
        except (TimeoutError, BlockingIOError, InterruptedError):
            pass
        self._drain_wakeups()

    def _stop_workers(self) -> None:
        self._stopping = True
        self._restart_at.clear()
        for pid in self.pids.values():
            _kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.shutdown_timeout + 1.0
        while self.pids:
            self._reap()
            left = deadline - time.monotonic()
            if not self.pids or left <= 0:
                break
            self._sleep(left)
        for index, pid in list(self.pids.items()):
            logger.error("worker %d (pid %d) did not stop in time; killing it", index, pid)
            _kill(pid, signal.SIGKILL)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self.pids.clear()

    # -- a worker -------------------------------------------------------------

    def _worker_main(self, index: int, ready_w: int, mask: Any) -> None:
        """The body of a forked worker; never returns."""
        code = 1
        loop: Optional[EventLoop] = None
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            self._reserved.close()
            self._wake_r.close()
            self._wake_w.close()
            os.close(self._lifeline_w)
            loop = EventLoop(self.selector)
            event_loop = loop
            draining: List[int] = []

            def on_stop_signal(signum: int, frame: Any) -> None:
                # The loop's graceful stop is safe from a signal handler. Only
                # the first signal counts: Ctrl-C reaches the worker and then
                # the parent's SIGTERM follows, and neither may cut it short
                # (the parent kills a worker that overstays).
                if not draining:
                    draining.append(signum)
                    event_loop.stop(graceful=True, timeout=self.shutdown_timeout)

            for signum in _STOP_SIGNALS:
                signal.signal(signum, on_stop_signal)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            _Lifeline(loop, self._lifeline_r, lambda: on_stop_signal(0, None))
            server = Server(
                self.host,
                self.port,
                family=self.family,
                backlog=self.backlog,
                reuse_port=True,
                limits=self.limits,
                proxy_protocol=self.proxy_protocol,
            )
            loop.add_server(server, self.handler_class)
            if self.worker_setup is not None:
                self.worker_setup(loop, index)
            os.write(ready_w, b"1")
            os.close(ready_w)
            loop.run(self.max_wait)
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


def serve_workers(
    handler_class: Type[ClientHandler],
    host: str = "localhost",
    port: int = 8000,
    *,
    workers: int = 2,
    ready: Optional[Callable[[WorkerProcesses], None]] = None,
    **options: Any,
) -> None:
    """Serve ``handler_class`` on ``host:port`` from ``workers`` processes
    until SIGTERM or Ctrl-C (see :class:`WorkerProcesses` for ``options``)."""
    WorkerProcesses(handler_class, host, port, workers=workers, **options).run(ready)


class _Lifeline:
    """In a worker: the read end of a pipe only the parent can write to.
    It never carries data; end of file means the parent is gone, and the
    worker stops as if told to (an orphan would serve on unsupervised)."""

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


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with code {os.WEXITSTATUS(status)}"


def _ignore_signal(signum: int, frame: Any) -> None:
    pass
