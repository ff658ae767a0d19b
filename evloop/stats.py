"""A one-line live report of a loop's work, for a person to watch.

Every ``interval`` seconds a timer logs connections, requests and bytes per
second since the last line, and the loop's lag: how late that timer itself
fired. A loop kept busy by a slow handler shows it there first.
"""

import logging
from typing import Any, Callable, Optional

__all__ = ["StatsReporter"]

logger = logging.getLogger("evloop.stats")


class StatsReporter:
    """Logs one line of ``loop``'s counters every ``interval`` seconds.

    ``emit`` receives the line (default: an INFO log record on
    ``evloop.stats``)."""

    def __init__(self, loop: Any, interval: float, emit: Optional[Callable[[str], None]] = None) -> None:
        if interval <= 0:
            raise ValueError("the stats interval must be positive")
        self.loop = loop
        self.interval = interval
        self.emit = emit if emit is not None else logger.info
        self._last = (loop.time(), loop.requests, loop.bytes_received, loop.bytes_sent)
        self._due = loop.time() + interval
        self._timer = loop.call_at(self._due, self._report)

    def _report(self) -> None:
        loop = self.loop
        now = loop.time()
        lag = max(0.0, now - self._due)
        then, requests, received, sent = self._last
        elapsed = max(now - then, 1e-9)
        self.emit(
            f"connections={loop.connection_count} "
            f"requests/s={(loop.requests - requests) / elapsed:.0f} "
            f"in={_rate(loop.bytes_received - received, elapsed)} "
            f"out={_rate(loop.bytes_sent - sent, elapsed)} "
            f"lag={lag * 1000:.1f}ms"
        )
        self._last = (now, loop.requests, loop.bytes_received, loop.bytes_sent)
        self._due = now + self.interval
        self._timer = loop.call_at(self._due, self._report)

    def cancel(self) -> None:
        self._timer.cancel()


def _rate(count: int, seconds: float) -> str:
    per_second = count / seconds
    for unit in ("B/s", "KB/s", "MB/s"):
        if per_second < 1024:
            return f"{per_second:.0f}{unit}"
        per_second /= 1024
    return f"{per_second:.1f}GB/s"
