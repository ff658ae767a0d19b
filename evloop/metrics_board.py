"""Worker processes' counters on one shared page, served by one exporter.

Theory of operation. With worker processes (:mod:`evloop.workers`,
``--workers N``) every worker has its own loop and counters, and a scrape
must show them all. The supervisor makes a :class:`WorkerMetrics` before
it forks anything:

- a :class:`MetricsBoard`, an anonymous shared ``mmap``: two slots per
  worker (a reload's old and new generation overlap, and every living
  worker needs a slot of its own; the supervisor hands a free one to each
  worker it forks), each a fixed row of 64-bit fields (a cache line apart), so every
  process forked afterwards sees the same memory, with no file and no lock;
- the endpoint's listening socket, bound at once (port 0 becomes a real
  port, :attr:`WorkerMetrics.port`).

Each worker publishes its loop's :class:`~evloop.stats.LoopStats` into its
slot (its place on the board) when it starts, every ``interval`` seconds (a
:class:`~evloop.stats.StatsSampler`, whose timer also measures the lag),
and once more when its loop closes. A write is a seqlock: the slot's
sequence number goes odd, the fields are written, it goes even again; a
reader that sees it odd or changed reads again, so it never mixes two
writes. A worker killed mid-write leaves it odd: its replacement evens it
before it writes, and meanwhile readers skip that slot.

One exporter process, forked by the supervisor before the workers, serves
``GET /metrics`` (:func:`evloop.metrics.serve_metrics`, on its own loop)
and renders every published slot with a ``worker="i"`` label, ``i`` the
place (so a reload moves the workers to the other half of the places). So a scrape
is complete (it reads every slot), each worker's series are consistent
(one write each) and at most ``interval`` old, and the endpoint answers
while workers are busy, restarting or reloading. A worker keeps its last
publication on the board after it ends (its totals still count in a sum)
until a new worker takes the place and starts it from zero, a counter reset as Prometheus' ``rate()`` expects;
``evloop_worker_start_time_seconds`` marks it, and
``evloop_worker_publish_age_seconds`` grows for a worker that stopped
publishing (dead, or stuck in one long handler). The exporter stops on
SIGTERM, or when the supervisor's lifeline pipe closes (the supervisor
ended, even killed); Ctrl-C, which reaches the whole process group, is
left to the supervisor.

Why not the supervisor itself: it sleeps in ``recv()`` on its signal
wakeup socket, and serving HTTP there would put a selector, a listener and
untrusted clients into the one process that must not fail. Why not every
worker on ``SO_REUSEPORT``: a scrape would land on one worker, which
would have to be up and not busy to answer.

The fields are written and read with ``struct`` on the shared mapping;
the seqlock relies on stores becoming visible in program order, which
x86-64 gives; on weaker memory models a torn read is possible but would
show as one sample mixing two consecutive publishes of one worker.
"""

import logging
import mmap
import os
import signal
import socket
import struct
import sys
import time
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

from .eventloop import EVENT_READ, EventLoop
from .metrics import Family, Labels, bind_error, format_families, loop_families, serve_metrics
from .server import bind_inet
from .stats import LIMIT_KINDS, LoopStats, StatsSampler

__all__ = ["SLOT_SIZE", "BoardPublisher", "MetricsBoard", "SlotReading", "WorkerMetrics", "render_board"]

logger = logging.getLogger("evloop")

_SEQ = struct.Struct("=Q")
# started (wall clock), published (CLOCK_MONOTONIC, shared by every
# process), lag; then connections, accepted, requests, bytes in, bytes
# out; then one count per LIMIT_KINDS, and one for every other kind.
_BODY = struct.Struct("=ddd" + "q" * (5 + len(LIMIT_KINDS) + 1))
#: Bytes between two slots: a slot rounded up to whole 64-byte cache lines.
SLOT_SIZE = -(-(_SEQ.size + _BODY.size) // 64) * 64
_READ_TRIES = 1000


class SlotReading(NamedTuple):
    """One worker's last publication."""

    stats: LoopStats
    #: ``time.time()`` when the worker started.
    started: float
    #: ``time.monotonic()`` when it published this.
    published: float


class MetricsBoard:
    """``slots`` rows of counters in anonymous shared memory. Make it
    before forking; every process forked afterwards shares it."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"a board needs at least one slot, not {slots!r}")
        self.slots = slots
        self._map = mmap.mmap(-1, slots * SLOT_SIZE)  # zero-filled: nothing published

    def write(self, index: int, stats: LoopStats, started: float) -> None:
        """Publish ``stats`` as slot ``index``'s (one writer per slot)."""
        buf, offset = self._map, self._offset(index)
        (seq,) = _SEQ.unpack_from(buf, offset)
        seq += seq & 1  # odd: a writer died mid-write; start from even
        hits = stats.limit_hits
        counts = [hits.get(kind, 0) for kind in LIMIT_KINDS]
        others = sum(count for kind, count in hits.items() if kind not in LIMIT_KINDS)
        _SEQ.pack_into(buf, offset, seq + 1)
        _BODY.pack_into(
            buf,
            offset + _SEQ.size,
            started,
            time.monotonic(),
            stats.lag,
            stats.connections,
            stats.connections_accepted,
            stats.requests,
            stats.bytes_received,
            stats.bytes_sent,
            *counts,
            others,
        )
        _SEQ.pack_into(buf, offset, seq + 2)

    def read(self, index: int) -> Optional[SlotReading]:
        """Slot ``index``'s last publication; None if it has none yet, or
        if no steady copy could be read (its writer died mid-write)."""
        buf, offset = self._map, self._offset(index)
        for _ in range(_READ_TRIES):
            (before,) = _SEQ.unpack_from(buf, offset)
            if before == 0:
                return None
            if not before & 1:
                fields = _BODY.unpack_from(buf, offset + _SEQ.size)
                (after,) = _SEQ.unpack_from(buf, offset)
                if after == before:
                    return _reading(fields)
            os.sched_yield()  # a writer is at it: a few microseconds
        return None

    def close(self) -> None:
        self._map.close()

    def _offset(self, index: int) -> int:
        if not 0 <= index < self.slots:
            raise IndexError(f"slot {index} of a board of {self.slots}")
        return index * SLOT_SIZE


def _reading(fields: Tuple[Any, ...]) -> SlotReading:
    started, published, lag = fields[:3]
    connections, accepted, requests, received, sent = fields[3:8]
    hits = dict(zip(LIMIT_KINDS, fields[8:-1], strict=True))
    hits["other"] = fields[-1]
    stats = LoopStats(
        published, connections, requests, received, sent, 0.0, 0.0, 0.0, lag, 0.0, accepted, hits
    )
    return SlotReading(stats, started, published)


class BoardPublisher(StatsSampler):
    """In a worker: publishes ``loop``'s counters into slot ``index`` of
    ``board`` now, every ``interval`` seconds, and when the loop closes."""

    def __init__(self, board: MetricsBoard, index: int, loop: EventLoop, interval: float = 1.0) -> None:
        self.board = board
        self.index = index
        self.started = time.time()
        super().__init__(loop, interval, self._publish)
        self._publish(self.snapshot())
        loop.add_close_callback(lambda: self._publish(self.snapshot()))

    def _publish(self, stats: LoopStats) -> None:
        self.board.write(self.index, stats, self.started)


def render_board(board: MetricsBoard) -> str:
    """The text format of every published slot, labelled ``worker="i"``."""
    series: List[Tuple[Labels, LoopStats]] = []
    starts: List[Tuple[Labels, float]] = []
    ages: List[Tuple[Labels, float]] = []
    now = time.monotonic()
    for index in range(board.slots):
        reading = board.read(index)
        if reading is None:
            continue
        labels = {"worker": str(index)}
        series.append((labels, reading.stats))
        starts.append((labels, reading.started))
        ages.append((labels, max(0.0, now - reading.published)))
    families = loop_families(series)
    families.append(
        Family(
            "evloop_worker_start_time_seconds",
            "gauge",
            "When the worker now in this place started (Unix time): its counters began at 0 then.",
            starts,
        )
    )
    families.append(
        Family(
            "evloop_worker_publish_age_seconds",
            "gauge",
            "Seconds since the worker last published its counters (it does every second).",
            ages,
        )
    )
    return format_families(families)


class WorkerMetrics:
    """The metrics of ``workers`` worker processes, served on
    ``host:port`` by an exporter process (see the module's header).

    Made by the supervisor before it forks: binds the endpoint's address
    at once (:class:`~evloop.metrics.MetricsAddressError` if it will not). :meth:`start` forks the exporter,
    :meth:`worker_started` runs in each worker, :meth:`close` reaps the
    exporter."""

    def __init__(self, workers: int, host: str, port: int, *, interval: float = 1.0) -> None:
        # Two slots per worker: during a reload the old and the new
        # generation both publish, each worker into a slot of its own.
        self.board = MetricsBoard(2 * workers)
        self.interval = interval
        try:
            self._sock: socket.socket = bind_inet(host, port, backlog=128)
        except OSError as exc:
            self.board.close()
            raise bind_error(exc, host, port) from exc
        self.address = self._sock.getsockname()
        #: The exporter's pid, once started.
        self.pid: Optional[int] = None

    @property
    def host(self) -> str:
        return str(self.address[0])

    @property
    def port(self) -> int:
        return int(self.address[1])

    def start(self, lifeline: int, inherited: Sequence[Any] = ()) -> None:
        """Fork the exporter; call before forking the workers. ``lifeline``
        is a descriptor that reads end of file once the supervisor is gone;
        ``inherited`` the supervisor's sockets and descriptors (objects
        with ``close()``, or ints) the exporter must not keep open."""
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self._exporter_main(lifeline, inherited)
        self.pid = pid
        self._sock.close()  # the exporter's now; workers forked later do not inherit it
        logger.info("metrics on http://%s:%d/metrics (exporter pid %d)", self.host, self.port, pid)

    def worker_started(self, loop: EventLoop, place: Optional[int]) -> None:
        """In a worker, once its loop exists: publish into slot ``place``
        (one no other living worker writes to; None: do not publish)."""
        self._sock.close()
        if place is not None:
            BoardPublisher(self.board, place, loop, self.interval)

    def close(self, timeout: float = 5.0) -> None:
        """Let go of the endpoint; reap the exporter, SIGTERM first (and
        SIGKILL if it is still there after ``timeout`` seconds)."""
        self._sock.close()
        pid, self.pid = self.pid, None
        if pid is None:
            return
        _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while True:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return
            if done:
                return
            if time.monotonic() > deadline:
                logger.error("metrics exporter (pid %d) did not stop; killing it", pid)
                _signal(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return
            time.sleep(0.01)  # a process's exit has no descriptor to wait on

    def _exporter_main(self, lifeline: int, inherited: Sequence[Any]) -> None:
        """The body of the forked exporter; never returns."""
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for thing in inherited:
                if isinstance(thing, int):
                    os.close(thing)
                else:
                    thing.close()
            loop = EventLoop()
            signal.signal(signal.SIGTERM, lambda signum, frame: loop.stop())
            _Lifeline(loop, lifeline)
            serve_metrics(loop, sock=self._sock, text=lambda: render_board(self.board))
            loop.run()
            code = 0
        except BaseException:
            logger.exception("metrics exporter (pid %d) failed", os.getpid())
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)


class _Lifeline:
    """In the exporter: end of file on ``fd`` stops the loop."""

    def __init__(self, loop: EventLoop, fd: int) -> None:
        self.loop = loop
        self.fd = fd
        loop.set_events(fd, 0, EVENT_READ, self)

    def handle_read(self) -> None:
        if not os.read(self.fd, 1):
            self.loop.set_events(self.fd, EVENT_READ, 0, self)
            self.loop.stop()

    def handle_write(self) -> None:
        pass

    def handle_error(self, exc: BaseException) -> None:
        logger.error("metrics exporter: lifeline failed; stopping", exc_info=exc)
        self.loop.stop()


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
