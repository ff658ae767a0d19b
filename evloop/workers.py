"""Several processes: N single-threaded loops sharing one listening socket.

The successor of socketserver's ``ForkingMixIn``: a fixed number of worker
processes, each an ordinary evloop server (one thread, one loop, any number
of clients; see :mod:`evloop.worker`).

Theory of operation. The parent, the supervisor, never serves a client. It
owns the ONE listening socket: bound when this object is made (port 0
becomes a real port at once), listening once :meth:`run` starts, closed
when it returns. Every worker inherits it across ``fork()`` and accepts
from it. A worker says on a pipe that it listens (or why it cannot).

Why one shared socket and not one ``SO_REUSEPORT`` socket per worker (the
design before reloads): closing a reuseport socket resets the connections
waiting in its own accept queue, so every worker that stops would lose
clients, unless the administrator sets ``net.ipv4.tcp_migrate_req=1``
(Linux 5.14, off by default). With one queue for all, a stopping worker
just stops calling accept(); the others take what waits and nothing is
reset. The price: each new connection wakes every idle worker and all but
one find nothing to accept (cheap for a few workers), and the spread is
not a hash: a busy worker is less often the one waiting, which balances.

Reload (SIGHUP, or :meth:`reload`): a new generation of workers starts on
the same socket; once every one of them listens, the old generation gets
SIGTERM and stops gracefully (``EventLoop.stop(graceful=True)``: no more
accepting, requests in flight finish within ``shutdown_timeout``, idle
connections close cleanly). Given the handler as a ``"module:attr"``
string (or a ``loader``), the supervisor never imports it: each worker
does, after fork, so a new generation runs the code now on disk. A
generation that cannot start (an import error, a worker dying at start) is
stopped and the old one keeps serving, with one error line. A SIGHUP that
comes during a reload is queued: one more reload follows.

The parent sleeps in ``recv()`` on a socketpair that ``signal.set_wakeup_fd``
writes to, so SIGCHLD, SIGHUP, SIGTERM and SIGINT wake it at once and
nothing polls. A worker that dies is reaped, logged and replaced; one that
dies within a second of starting, after a delay that doubles up to ten
seconds. On SIGTERM or SIGINT (or :meth:`stop`) every worker gets SIGTERM;
one still there a second after ``shutdown_timeout`` is killed. Then the
socket is closed and :meth:`run` returns.

POSIX only (``fork``); ``run()`` must be called from the main thread.
"""

import contextlib
import logging
import os
import signal
import socket
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple, Type, Union

from .eventloop import EventLoop
from .handler import ClientHandler
from .metrics_board import WorkerMetrics
from .server import bind_inet
from .worker import await_start_reports, run_worker

__all__ = ["WorkerProcesses", "WorkerStartError", "serve_workers"]

logger = logging.getLogger("evloop")

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_BLOCKED = (*_STOP_SIGNALS, signal.SIGCHLD, signal.SIGHUP)
# A worker that lived less than this is restarted after a growing delay.
_QUICK_DEATH = 1.0
_FIRST_DELAY = 0.1
_MAX_DELAY = 10.0

HandlerSpec = Union[Type[ClientHandler], str]


class WorkerStartError(RuntimeError):
    """The first generation of workers could not start; the message says why."""


class _Worker:
    """The supervisor's record of one worker process."""

    __slots__ = ("generation", "index", "pid", "place", "retire_by", "started")

    def __init__(self, pid: int, index: int, generation: int, place: Optional[int]) -> None:
        self.pid = pid
        self.index = index
        self.generation = generation
        self.place = place  # its slot on the metrics board, if any
        self.started = time.monotonic()
        self.retire_by: Optional[float] = None  # set when told to stop


class WorkerProcesses:
    """``workers`` processes serving ``handler_class`` on one address.

    ``handler_class`` is a :class:`~evloop.ClientHandler` subclass, or a
    ``"module:attr"`` string naming one (a dotted module or a ``.py`` file)
    or a WSGI application: a string is imported by each worker after fork,
    so a reload (SIGHUP) serves the code now on disk. ``loader``, if given,
    is called in each worker instead, to return the handler class (for
    what a string cannot say). ``host``, ``port``, ``family`` and ``backlog``
    are as for :class:`~evloop.Server` (port 0 picks a free port;
    :attr:`port` tells which as soon as this object exists); ``sock``
    serves an already bound stream socket instead (TCP or Unix, e.g. from
    systemd). ``selector`` picks each worker's multiplexer.
    ``worker_setup(loop, index)``, if given, runs in each worker before it
    serves. ``shutdown_timeout`` is how long a stopping worker lets open
    connections finish. ``limits`` (an :class:`~evloop.limits.Limits`)
    bounds each worker's clients; ``proxy_protocol`` (a ``ProxyProtocol``)
    its PROXY headers. ``start_timeout``: how long a worker may take to start.
    ``metrics=(host, port)`` serves every worker's counters at
    ``http://host:port/metrics`` (:mod:`evloop.metrics_board`; :attr:`metrics`
    ``.port`` tells which port).
    """

    def __init__(
        self,
        handler_class: HandlerSpec,
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
        proxy_protocol: Any = None,
        metrics: Optional[Tuple[str, int]] = None,
        sock: Optional[socket.socket] = None,
        loader: Optional[Callable[[], Any]] = None,
        start_timeout: float = 60.0,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers!r}")
        if not hasattr(os, "fork"):
            raise OSError("worker processes need fork() (POSIX)")
        self.handler_class = handler_class
        self.loader = loader
        self.workers = workers
        self.backlog = backlog
        self.selector = selector
        self.worker_setup = worker_setup
        self.shutdown_timeout = shutdown_timeout
        self.max_wait = max_wait
        self.limits = limits
        self.proxy_protocol = proxy_protocol
        self.start_timeout = start_timeout
        # Bound now, listening once run() starts: nobody connects before
        # there is a worker to answer.
        self._sock = sock if sock is not None else bind_inet(host, port, family=family)
        #: The metrics endpoint's exporter and board, if ``metrics`` was given.
        self.metrics = WorkerMetrics(workers, *metrics) if metrics is not None else None
        self.address = self._sock.getsockname()
        self.family = self._sock.family
        #: The generation now serving (1 at start, one more per reload).
        self.generation = 1
        #: The workers, current and stopping, by pid.
        self.processes: Dict[int, _Worker] = {}
        self._restart_at: Dict[int, float] = {}
        self._delay: Dict[int, float] = {}
        self._stopping = False
        self._reload_wanted = 0  # SIGHUPs not yet acted upon
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        # Workers watch the read end; only the parent holds the write end, so
        # they see end of file when it is gone, even killed with SIGKILL.
        self._lifeline_r, self._lifeline_w = os.pipe()
        self._parent = os.getpid()

    @property
    def host(self) -> str:
        return str(self.address[0]) if self.family != socket.AF_UNIX else ""

    @property
    def port(self) -> int:
        return int(self.address[1]) if self.family != socket.AF_UNIX else 0

    @property
    def pids(self) -> Dict[int, int]:
        """Worker index -> pid of the current generation's process there."""
        return {w.index: w.pid for w in self.processes.values() if w.retire_by is None}

    # -- the parent ---------------------------------------------------------

    def run(self, ready: Optional[Callable[["WorkerProcesses"], None]] = None) -> None:
        """Start the workers and keep them running until SIGTERM, SIGINT or
        :meth:`stop`, reloading them on SIGHUP; then stop them all, close the
        socket and return. ``ready(self)`` is called once every worker is
        listening. Raises :class:`WorkerStartError` if the first generation
        cannot start. Call from the main thread; the signal handlers it
        installs are restored."""
        if os.getpid() != self._parent:
            raise RuntimeError("run() belongs to the process that made this object")
        if self.metrics is not None:  # the exporter, forked before any worker
            inherited = (self._sock, self._wake_r, self._wake_w, self._lifeline_w)
            self.metrics.start(self._lifeline_r, inherited)
        previous = {signum: signal.getsignal(signum) for signum in _BLOCKED}
        old_wakeup = signal.set_wakeup_fd(self._wake_w.fileno())
        try:
            for signum in _STOP_SIGNALS:
                signal.signal(signum, self._stop_signal)
            signal.signal(signal.SIGHUP, self._reload_signal)
            # A Python-level handler, so SIGCHLD writes to the wakeup fd.
            signal.signal(signal.SIGCHLD, _ignore_signal)
            listening = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            if self._sock.type == socket.SOCK_STREAM and not listening:  # systemd's listens already
                self._sock.listen(self.backlog)
            error = self._start_generation(range(self.workers))
            if error is not None and not self._stopping:
                raise WorkerStartError(error)
            if ready is not None and not self._stopping:
                ready(self)
            self._supervise()
        finally:
            try:
                self._stop_workers()
            finally:
                signal.set_wakeup_fd(old_wakeup)
                for signum, handler in previous.items():
                    signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
                self.close()

    def _supervise(self) -> None:
        while not self._stopping:
            self._reap()
            self._restart_due()
            if self._reload_wanted and not self._stopping:
                self._reload()
            self._sleep(self._next_wake_in())

    def stop(self) -> None:
        """Make :meth:`run` stop the workers and return. Safe from any thread
        and from a signal handler."""
        self._stopping = True
        self._wake()

    def reload(self) -> None:
        """Start a new generation of workers and retire the old one, as
        SIGHUP does. Safe from any thread and from a signal handler."""
        self._reload_wanted += 1
        self._wake()

    def close(self) -> None:
        """Close the listening socket (``run()`` does this when it returns)."""
        self._sock.close()
        self._wake_r.close()
        self._wake_w.close()
        for fd in (self._lifeline_r, self._lifeline_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._lifeline_r = self._lifeline_w = -1
        if self.metrics is not None:  # the lifeline closed: the exporter stops; reap it
            self.metrics.close()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _stop_signal(self, signum: int, frame: Any) -> None:
        logger.info(
            "supervisor got %s; stopping %d workers", signal.Signals(signum).name, len(self.processes)
        )
        self._stopping = True

    def _reload_signal(self, signum: int, frame: Any) -> None:
        self._reload_wanted += 1

    def _reload(self) -> None:
        """A new generation on the same socket; the old one stops gracefully
        once the new one listens, or keeps serving if it cannot start."""
        wanted = self._reload_wanted
        old = [w for w in self.processes.values() if w.retire_by is None]
        self.generation += 1
        logger.info("reload: starting generation %d (%d workers)", self.generation, self.workers)
        error = self._start_generation(range(self.workers))
        if self._stopping:
            return
        new = sorted(w.pid for w in self.processes.values() if w.generation == self.generation)
        if error is not None:
            logger.error(
                "reload failed: generation %d did not start (%s); generation %d (pids %s) keeps serving",
                self.generation,
                error,
                self.generation - 1,
                _pid_list(old),
            )
            self._retire([w for w in self.processes.values() if w.generation == self.generation])
            self.generation -= 1
        else:
            self._retire(old)
            self._restart_at.clear()  # the new generation fills every place
            logger.info(
                "reload: generation %d (pids %s) serving; generation %d (pids %s) stopping gracefully",
                self.generation,
                ", ".join(map(str, new)),
                self.generation - 1,
                _pid_list(old),
            )
        self._reload_wanted -= wanted
        if self._reload_wanted:
            logger.info("reload: %d SIGHUP came during the reload; reloading once more", self._reload_wanted)
            self._reload_wanted = 1

    def _retire(self, workers: List[_Worker]) -> None:
        deadline = time.monotonic() + self.shutdown_timeout + 1.0
        for worker in workers:
            if worker.retire_by is None:
                worker.retire_by = deadline
                _kill(worker.pid, signal.SIGTERM)

    def _start_generation(self, indices: Any) -> Optional[str]:
        """Fork a worker for each of ``indices`` in the current generation
        and wait until all listen. Returns None, or why one did not start."""
        pipes: Dict[int, _Worker] = {}
        try:
            for index in indices:
                if not self._stopping:
                    worker, ready_r = self._fork(index, pipes)
                    pipes[ready_r] = worker
            return self._wait_until_listening(pipes)
        finally:
            for fd in pipes:
                os.close(fd)

    def _fork(self, index: int, pipes: Dict[int, _Worker]) -> Tuple[_Worker, int]:
        ready_r, ready_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        # Signals wait until the worker has its own handlers: one arriving
        # in between would run the parent's handler in the worker and be lost.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)
        place = self._free_place()
        pid = os.fork()
        if pid == 0:  # the worker
            for fd in (ready_r, *pipes, self._lifeline_w):
                os.close(fd)
            self._wake_r.close()
            self._wake_w.close()
            run_worker(self, index, ready_w, mask, place)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(ready_w)
        worker = self.processes[pid] = _Worker(pid, index, self.generation, place)
        return worker, ready_r

    def _free_place(self) -> Optional[int]:
        """A metrics board slot no living worker writes to (the board has
        two per worker: a reload's two generations overlap), or None."""
        if self.metrics is None:
            return None
        taken = {w.place for w in self.processes.values()}
        free = [place for place in range(self.metrics.board.slots) if place not in taken]
        if not free:
            logger.warning("metrics: every board slot is in use; the next worker will not publish")
        return free[0] if free else None

    def _wait_until_listening(self, pipes: Dict[int, _Worker]) -> Optional[str]:
        """Wait for each new worker to say it listens; None, or the first failure."""
        return await_start_reports(
            pipes, self._wake_r, self._drain_wakeups, lambda: self._stopping, self.start_timeout, self.address
        )

    def _drain_wakeups(self) -> None:
        self._wake_r.setblocking(False)
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _reap(self) -> None:
        """Collect the workers that ended: a retired one is done, a current
        one is replaced."""
        now = time.monotonic()
        for pid, worker in list(self.processes.items()):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if not done:
                if worker.retire_by is not None and now > worker.retire_by:
                    logger.error("worker pid %d did not stop in time; killing it", pid)
                    _kill(pid, signal.SIGKILL)
                continue
            del self.processes[pid]
            if worker.retire_by is not None or self._stopping:
                logger.info(
                    "worker %d (pid %d, generation %d) %s",
                    worker.index,
                    pid,
                    worker.generation,
                    _describe_status(status),
                )
                continue
            self._plan_restart(worker, status, now)

    def _plan_restart(self, worker: _Worker, status: int, now: float) -> None:
        index = worker.index
        lived = now - worker.started
        if lived < _QUICK_DEATH:
            delay = min(self._delay.get(index, _FIRST_DELAY / 2) * 2, _MAX_DELAY)
        else:
            delay = 0.0
        self._delay[index] = delay
        self._restart_at[index] = now + delay
        logger.warning(
            "worker %d (pid %d) %s after %.1fs; restarting it%s",
            index,
            worker.pid,
            _describe_status(status),
            lived,
            f" in {delay:.1f}s" if delay else "",
        )

    def _restart_due(self) -> None:
        now = time.monotonic()
        for index, when in sorted(self._restart_at.items()):
            if when <= now and not self._stopping:
                del self._restart_at[index]
                error = self._start_generation([index])
                if error is not None:
                    logger.error("worker %d failed to start: %s", index, error)

    def _next_wake_in(self) -> Optional[float]:
        times = [*self._restart_at.values()]
        times += [w.retire_by for w in self.processes.values() if w.retire_by is not None]
        if self._reload_wanted:
            return 0.0
        if not times:
            return None
        return max(0.0, min(times) - time.monotonic())

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
        self._retire(list(self.processes.values()))
        while self.processes:
            self._reap()
            left = self._next_wake_in()
            if not self.processes:
                break
            self._sleep(0.05 if left is None or left <= 0 else left)


def serve_workers(
    handler_class: HandlerSpec,
    host: str = "localhost",
    port: int = 8000,
    *,
    workers: int = 2,
    ready: Optional[Callable[[WorkerProcesses], None]] = None,
    **options: Any,
) -> None:
    """Serve ``handler_class`` (a class, or a ``"module:attr"`` string each
    worker imports, so that SIGHUP reloads fresh code) on ``host:port`` from
    ``workers`` processes until SIGTERM or Ctrl-C (see
    :class:`WorkerProcesses` for ``options``)."""
    WorkerProcesses(handler_class, host, port, workers=workers, **options).run(ready)


def _pid_list(workers: Any) -> str:
    return ", ".join(str(w.pid) for w in sorted(workers, key=lambda w: w.pid)) or "none"


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
