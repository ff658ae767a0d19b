"""A loop's work in numbers: a snapshot for programs, a live line for people.

The loop keeps running totals (requests answered, bytes in and out) and the
count of open connections. Rates and lag need time: a :class:`StatsSampler`
fires a timer every ``interval`` seconds, takes the totals' differences over
that window, and measures the loop's lag, how late its own timer fired. A
loop kept busy by a slow handler shows it there first.

- ``EventLoop.stats()`` (:func:`loop_stats`) returns a frozen
  :class:`LoopStats`: the totals now, with the rates and the lag of the last
  complete window. The first call starts a one-second sampler on that loop,
  so its rates and lag read 0 until a second has passed.
- :class:`StatsReporter` logs one line per window; it is what
  ``python -m evloop serve --stats SECONDS`` prints.
- :data:`LIMIT_KINDS` names the limits and timeouts the engine counts
  where it decides them (``EventLoop.limit_hit``): a dict increment on
  those rare paths, nothing on a request's path. :mod:`evloop.metrics`
  serves all of this to Prometheus.

Both read the loop and set timers on it, so call them on the loop's thread
(in a handler or a timer, or before ``run()``), as every loop method but
``stop()`` and ``call_soon_threadsafe()``.
"""

import logging
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Dict, Optional

if TYPE_CHECKING:
    from .eventloop import EventLoop

__all__ = ["LIMIT_KINDS", "LoopStats", "StatsReporter", "StatsSampler", "format_stats", "loop_stats"]

logger = logging.getLogger("evloop.stats")


#: The kinds of limit and timeout hit the engine counts, and where it
#: decides each (``EventLoop.limit_hit(kind)``; other code may count more).
LIMIT_KINDS = (
    "idle_timeout",  # evloop.timeouts: no byte in or out for Limits.idle_timeout
    "request_timeout",  # evloop.timeouts: a request not whole in time (slowloris)
    "write_timeout",  # evloop.timeouts: a client that takes none of its output
    "handshake_timeout",  # evloop.connection: a TLS handshake not done in time
    "handshake_failed",  # evloop.connection: a TLS handshake that failed
    "request_too_large",  # evloop.connection: the peer raised RequestTooLargeError
    "protocol_error",  # evloop.connection: any other RemoteProtocolError
    "output_backlog",  # evloop.handler: output passed the high-water mark
    "max_connections",  # evloop.server: refused over Limits.max_connections
    "max_connections_per_peer",  # evloop.server: refused over the per-address cap
    "accept_paused",  # evloop.server: accept() out of descriptors or memory
    "max_clients_memory",  # evloop.budget: closed over the client memory budget
)


@dataclass(frozen=True)
class LoopStats:
    """A snapshot of one loop's counters."""

    #: ``loop.time()`` when the snapshot was taken.
    time: float
    #: Client connections open now.
    connections: int
    #: Requests answered since the loop was made.
    requests: int
    #: Bytes read from and written to client sockets since the loop was made.
    bytes_received: int
    bytes_sent: int
    #: Rates over the last complete window (0.0 before the first one ends).
    requests_per_second: float
    bytes_received_per_second: float
    bytes_sent_per_second: float
    #: Seconds the sampler's timer fired late at the end of that window:
    #: near 0 on a loop that keeps up, the length of the slowest handler
    #: call on one that does not.
    lag: float
    #: The window the rates and the lag were measured over, in seconds
    #: (0.0: none has ended yet).
    window: float
    #: Client connections accepted since the loop was made.
    connections_accepted: int = 0
    #: Limits and timeouts that fired since the loop was made, by kind
    #: (:data:`LIMIT_KINDS`; a kind that never fired is absent).
    limit_hits: Dict[str, int] = field(default_factory=dict)


class StatsSampler:
    """Samples ``loop``'s counters every ``interval`` seconds; ``on_sample``
    (if given) receives each new :class:`LoopStats`."""

    def __init__(
        self,
        loop: "EventLoop",
        interval: float = 1.0,
        on_sample: Optional[Callable[[LoopStats], None]] = None,
    ) -> None:
        if not interval > 0:
            raise ValueError("the stats interval must be positive")
        self.loop = loop
        self.interval = interval
        self.on_sample = on_sample
        self._latest = self._take(0.0, 0.0, 0.0, 0.0, 0.0)
        self._due = loop.time() + interval
        self._timer = loop.call_at(self._due, self._sample)

    def snapshot(self) -> LoopStats:
        """The totals now, with the rates and lag of the last window."""
        last = self._latest
        return self._take(
            last.requests_per_second,
            last.bytes_received_per_second,
            last.bytes_sent_per_second,
            last.lag,
            last.window,
        )

    def cancel(self) -> None:
        """Stop sampling (the loop's timer is cancelled)."""
        self._timer.cancel()

    def _take(self, requests: float, received: float, sent: float, lag: float, window: float) -> LoopStats:
        loop = self.loop
        return LoopStats(
            loop.time(),
            loop.connection_count,
            loop.requests,
            loop.bytes_received,
            loop.bytes_sent,
            requests,
            received,
            sent,
            lag,
            window,
            loop.connections_accepted,
            dict(loop.limit_hits),
        )

    def _sample(self) -> None:
        loop, before = self.loop, self._latest
        now = loop.time()
        lag = max(0.0, now - self._due)
        elapsed = max(now - before.time, 1e-9)
        self._latest = self._take(
            (loop.requests - before.requests) / elapsed,
            (loop.bytes_received - before.bytes_received) / elapsed,
            (loop.bytes_sent - before.bytes_sent) / elapsed,
            lag,
            elapsed,
        )
        self._due = now + self.interval
        self._timer = loop.call_at(self._due, self._sample)
        if self.on_sample is not None:
            self.on_sample(self._latest)


# One sampler per loop for loop_stats(); it goes with its loop.
_samplers: "weakref.WeakKeyDictionary[EventLoop, StatsSampler]" = weakref.WeakKeyDictionary()


def loop_stats(loop: "EventLoop") -> LoopStats:
    """``loop.stats()``: a :class:`LoopStats` snapshot of ``loop``. The first
    call starts sampling (one timer a second) for the rates and the lag."""
    sampler = _samplers.get(loop)
    if sampler is None:
        sampler = _samplers[loop] = StatsSampler(loop)
    return sampler.snapshot()


def format_stats(stats: LoopStats) -> str:
    """The one-line report: ``connections=3 requests/s=120 in=2KB/s out=2KB/s lag=0.1ms``."""
    return (
        f"connections={stats.connections} "
        f"requests/s={stats.requests_per_second:.0f} "
        f"in={_rate(stats.bytes_received_per_second)} "
        f"out={_rate(stats.bytes_sent_per_second)} "
        f"lag={stats.lag * 1000:.1f}ms"
    )


class StatsReporter(StatsSampler):
    """Logs one line of ``loop``'s counters every ``interval`` seconds.

    ``emit`` receives the line (default: an INFO log record on
    ``evloop.stats``)."""

    def __init__(
        self, loop: "EventLoop", interval: float, emit: Optional[Callable[[str], None]] = None
    ) -> None:
        self.emit = emit if emit is not None else logger.info
        super().__init__(loop, interval, self._report)

    def _report(self, stats: LoopStats) -> None:
        self.emit(format_stats(stats))


def _rate(per_second: float) -> str:
    for unit in ("B/s", "KB/s", "MB/s"):
        if per_second < 1024:
            return f"{per_second:.0f}{unit}"
        per_second /= 1024
    return f"{per_second:.1f}GB/s"
