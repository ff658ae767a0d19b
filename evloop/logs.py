"""Warnings that repeat as fast as clients can cause them, rate-limited per kind.

Theory of operation. A hostile or broken client population can make the same
warning thousands of times a second: TLS handshakes that time out, peers that
break the protocol, connections refused over a limit. Each must be seen, but
550 identical lines hide everything else in the log and cost the loop a
write each. :class:`RateLimitedWarnings` keeps, for each *kind* (a short
fixed name such as ``"tls-handshake-timeout"``), a window of ``interval``
seconds: the first ``burst`` warnings of a window are written, the rest are
counted, and the window's count comes out as one line, ``suppressed N similar
warnings (kind) in the last Ts``, when the window ends (a timer, where the
facility has a loop), or else with the next warning of that kind or at
:meth:`~RateLimitedWarnings.flush`. Kinds are independent: a flood of one
never hides the first lines of another.

:func:`loop_warnings` gives each loop one facility on the loop's clock, so
every server and connection of a loop shares the windows, and the loop's
close writes what is still counted.
"""

import logging
import time
import weakref
from typing import Any, Callable, Dict, Optional

__all__ = ["DEFAULT_BURST", "DEFAULT_INTERVAL", "RateLimitedWarnings", "loop_warnings"]

logger = logging.getLogger("evloop")

#: Lines of one kind written per window before the rest are only counted:
#: one, as :class:`evloop.limits.RateLimitedLog` always did; the count that
#: follows says how often it happened.
DEFAULT_BURST = 1
#: Seconds in one window.
DEFAULT_INTERVAL = 10.0


class _Window:
    __slots__ = ("end", "written", "suppressed", "summary_due")

    def __init__(self, end: float) -> None:
        self.end = end
        self.written = 0
        self.suppressed = 0
        self.summary_due = False  # a timer will write the summary at ``end``


class RateLimitedWarnings:
    """At most ``burst`` lines of each kind per ``interval`` seconds of
    ``clock``; with ``call_later`` (a loop's), a timer writes the count of
    what was held back when the window ends."""

    def __init__(
        self,
        log: logging.Logger = logger,
        *,
        burst: int = DEFAULT_BURST,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        call_later: Optional[Callable[..., Any]] = None,
    ) -> None:
        if burst < 1 or not interval > 0:
            raise ValueError(f"need burst >= 1 and interval > 0, not {burst!r} and {interval!r}")
        self.log = log
        self.burst = burst
        self.interval = interval
        self.clock = clock
        self.call_later = call_later
        self._windows: Dict[str, _Window] = {}
        #: Warnings held back so far, by kind (a running total, for tests and stats).
        self.suppressed_total: Dict[str, int] = {}

    def warn(
        self,
        kind: str,
        message: str,
        *args: Any,
        level: int = logging.WARNING,
        log: Optional[logging.Logger] = None,
        exc_info: Any = None,
    ) -> bool:
        """Log ``message % args`` at ``level`` (to ``log``, default this
        facility's logger; with ``exc_info`` as ``logging`` takes it) unless
        ``burst`` lines of ``kind`` went out in this window already. Returns
        whether it was logged."""
        now = self.clock()
        window = self._windows.get(kind)
        if window is None or now >= window.end:
            if window is not None:
                self._summarize(kind, window)
            window = self._windows[kind] = _Window(now + self.interval)
        if window.written < self.burst:
            window.written += 1
            (log or self.log).log(level, message, *args, exc_info=exc_info)
            return True
        window.suppressed += 1
        self.suppressed_total[kind] = self.suppressed_total.get(kind, 0) + 1
        if self.call_later is not None and not window.summary_due:
            window.summary_due = True
            self.call_later(max(0.0, window.end - now), self._window_ended, kind, window)
        return False

    def flush(self) -> None:
        """Write the count of every kind held back now (at a close)."""
        for kind, window in list(self._windows.items()):
            self._summarize(kind, window)
        self._windows.clear()

    def _window_ended(self, kind: str, window: _Window) -> None:
        window.summary_due = False
        if self._windows.get(kind) is window:
            del self._windows[kind]
            self._summarize(kind, window)

    def _summarize(self, kind: str, window: _Window) -> None:
        if window.suppressed:
            self.log.warning(
                "suppressed %d similar warnings (%s) in the last %gs",
                window.suppressed,
                kind,
                self.interval,
            )
            window.suppressed = 0


_by_loop: "weakref.WeakKeyDictionary[Any, RateLimitedWarnings]" = weakref.WeakKeyDictionary()


def loop_warnings(loop: Any) -> RateLimitedWarnings:
    """The rate-limited warnings of ``loop`` (made on first use): windows in
    loop time, summaries written by the loop's timers, and at its close."""
    warnings = _by_loop.get(loop)
    if warnings is None:
        # The facility reaches its loop through a weak reference: a strong
        # one from the value would keep the weak key, the loop and its
        # descriptors, alive for good when a loop is dropped unclosed.
        loop_ref = weakref.ref(loop)
        start = loop.time()

        def clock() -> float:
            alive = loop_ref()
            return float(alive.time()) if alive is not None else start

        warnings = RateLimitedWarnings(clock=clock, call_later=_timer_of(loop_ref))
        _by_loop[loop] = warnings
        add_close_callback = getattr(loop, "add_close_callback", None)
        if add_close_callback is not None:
            add_close_callback(lambda: _closed(loop_ref))
    return warnings


def _closed(loop_ref: Any) -> None:
    loop = loop_ref()
    warnings = _by_loop.pop(loop, None) if loop is not None else None
    if warnings is not None:
        warnings.flush()


def _timer_of(loop_ref: Any) -> Callable[..., Any]:
    def call_later(delay: float, callback: Callable[..., Any], *args: Any) -> None:
        loop = loop_ref()
        if loop is not None and not loop.is_closed():
            loop.call_later(delay, callback, *args)

    return call_later
