"""Per-connection timeouts: one sweep per loop, no timer per connection.

Theory of operation. Reads and writes only note the loop time in the
connection (``active``: last byte in or out; ``request_since``: when the
incomplete request now buffered began; the output queue's ``write_since``:
when the client last took output), and the time they note is
``loop.pass_time``, one float the loop takes after each select, so every
connection active in a pass shares it. One :class:`TimeoutSweep` per loop
(Redis's ``clientsCron``) looks at every connection once per interval,
works out from those notes which deadline applies (:func:`current_deadline`)
and calls the handler's ``handle_timeout()`` when a deadline has passed.
The interval is a tenth of the shortest timeout in force, held between
10 ms and 1 s, so **a timeout due at T fires between T and T + one
interval** (with the defaults, within 1 s of it; later only if the loop
itself is late). A tick looks at no more than :data:`SWEEP_BATCH`
descriptors, spreading a large cycle over the interval, so 50,000
connections never stall the loop for a whole sweep. The sweep runs only
while the loop has connections with a timeout on: an idle loop sleeps.

Which deadline applies, in order:

1. output waits for a client that does not take it: ``write_timeout`` from
   the last time the socket accepted bytes;
2. a request has begun and is not complete: ``request_timeout`` from its
   first byte, however the bytes dribble in (slowloris);
3. the server is still producing a reply (a future): no timeout;
4. otherwise the connection is idle: ``idle_timeout`` from the last byte in
   or out.

The settings are :class:`~evloop.limits.Limits`; TLS handshakes are timed
by the connection's handshake state (:mod:`evloop.connection`).
"""

import math
import selectors
from typing import Any, Dict, Optional

from .limits import Limits

__all__ = [
    "SWEEP_BATCH",
    "SWEEP_MAX",
    "SWEEP_MIN",
    "TimeoutSweep",
    "arm_timeouts",
    "check_timeouts",
    "current_deadline",
    "sweep_interval",
]

EVENT_WRITE = selectors.EVENT_WRITE
#: Bounds of the timeout sweep's interval, in seconds.
SWEEP_MIN, SWEEP_MAX = 0.01, 1.0
#: Most descriptors the timeout sweep looks at in one tick.
SWEEP_BATCH = 2000
# The kind each timeout counts as (EventLoop.limit_hit, evloop.metrics).
_HIT_KINDS: Dict[Optional[str], str] = {
    "idle": "idle_timeout",
    "request": "request_timeout",
    "write": "write_timeout",
}


def sweep_interval(shortest: float) -> float:
    """Seconds between two looks at a connection, for the shortest timeout
    in force: a tenth of it, so a timeout is late by at most a tenth, held
    between :data:`SWEEP_MIN` and :data:`SWEEP_MAX`."""
    return min(SWEEP_MAX, max(SWEEP_MIN, shortest / 10))


def arm_timeouts(connection: Any) -> bool:
    """Put a new connection under its loop's timeout sweep, if its limits
    have any timeout on (returns whether they do); its clocks start at the
    loop's time for this pass."""
    limits = connection.handler.limits
    if limits.shortest_timeout is None:
        return False
    loop = connection.loop
    # In a pass (an accept), the pass's shared float; otherwise (started by
    # hand before the loop runs) the time now.
    connection.active = loop.pass_time if loop.is_running() else loop.time()
    sweep = loop.timeout_sweep
    if sweep is None:
        sweep = loop.timeout_sweep = TimeoutSweep(loop)
    sweep.watch(limits)
    return True


def current_deadline(connection: Any) -> "tuple[Optional[str], Optional[float], Optional[float]]":
    """Which timeout applies to the connection now: (name, seconds, deadline),
    or (None, None, None) while the server itself is producing a reply."""
    limits = connection.handler.limits
    output = connection.output
    if connection.events & EVENT_WRITE and output is not None and limits.write_timeout is not None:
        return "write", limits.write_timeout, output.write_since + limits.write_timeout
    if connection.request_since is not None:
        if limits.request_timeout is None:
            return None, None, None
        return "request", limits.request_timeout, connection.request_since + limits.request_timeout
    if output is not None or connection.batch is not None:
        return None, None, None  # a reply is being produced (a future) or flushed
    if limits.idle_timeout is None:
        return None, None, None
    return "idle", limits.idle_timeout, connection.active + limits.idle_timeout


def check_timeouts(connection: Any, now: float) -> None:
    """Call the handler's ``handle_timeout()`` if a timeout of
    ``connection`` is due at loop time ``now``."""
    name, seconds, deadline = current_deadline(connection)
    if deadline is None:
        # Nothing is due in this state (the server is busy producing a
        # reply), and that time is not the client's idleness.
        connection.active = now
    elif now >= deadline:
        connection.loop.limit_hit(_HIT_KINDS[name])
        connection.handler.handle_timeout(name, seconds)


class TimeoutSweep:
    """The one timer of a loop that checks its connections' timeouts.

    It runs only while the loop has connections with a timeout on: a
    connection's start (:func:`arm_timeouts`) starts it, and a whole pass
    over the connections that finds none stops it, so an idle loop sleeps.

    A pass over the connections (a cycle) takes one interval and goes
    through the selector's descriptors in numeric order, at most
    :data:`SWEEP_BATCH` of them per tick (Redis's ``clientsCron`` does a
    share of its clients each tick in the same way), so 50,000 connections
    never stall the loop for more than one batch. A connection keeps its
    descriptor for life, so it is looked at once per interval at the same
    point of each cycle: a timeout due at T fires between T and T + the
    interval (later only if the loop itself is late). Connections with no
    descriptor in the selector (waiting on a future, paused) are looked at
    at the start of each cycle.
    """

    def __init__(self, loop: Any) -> None:
        self.loop = loop
        self.interval: Optional[float] = None  # None: not running
        self._timer: Any = None
        self._cursor = 0  # the next descriptor to look at
        self._end = 0  # one past the highest descriptor of this cycle
        self._period = 0.0  # seconds between two ticks of this cycle
        self._next = 0.0  # loop time the current tick was due
        self._found = False  # a connection with a timeout was seen this cycle
        self._shortest = math.inf  # the shortest timeout seen this cycle
        self._seen: Optional[Limits] = None  # the last limits a check met
        self._watched: Optional[Limits] = None  # the last limits watch() met

    @property
    def running(self) -> bool:
        return self._timer is not None

    def watch(self, limits: "Limits") -> None:
        """A connection with these limits started: make sure the sweep runs,
        often enough for its shortest timeout."""
        shortest = limits._shortest
        assert shortest is not None
        # The cycle under way may have passed the new connection's
        # descriptor: it must not conclude that no connection is left.
        self._found = True
        if limits is not self._watched:  # once per server's limits, not per connection
            self._watched = limits
            self._shortest = min(self._shortest, shortest)
            interval = sweep_interval(shortest)
            if self.interval is None or interval < self.interval:
                self.interval = interval
                if self._timer is not None:  # come sooner than planned
                    self._timer.cancel()
                    self._timer = None
                    self._cursor = self._end  # and begin a cycle at that interval
        if self._timer is None:
            if self.interval is None:
                self.interval = sweep_interval(shortest)
            self._next = self.loop.time() + self.interval
            self._timer = self.loop.call_at(self._next, self._tick)

    def _tick(self) -> None:
        self._timer = None
        loop = self.loop
        now = loop.time()
        if self._cursor >= self._end:
            self._begin_cycle(now)
        get = _fd_to_key(loop.selector).get
        stop = min(self._end, self._cursor + SWEEP_BATCH)
        for fd in range(self._cursor, stop):
            key = get(fd)
            if key is not None:
                self._check(key.data, now)
        self._cursor = stop
        if stop >= self._end and not self._found:
            # A whole cycle found no connection with a timeout: stop, so an
            # idle loop sleeps; the next connection's start starts it again.
            self.interval = None
            self._watched = None
            return
        if not loop.is_closed():
            # Ticks keep to the cycle's schedule, so a tick that ran late
            # does not make every later one late too.
            self._next += self._period
            self._timer = loop.call_at(self._next, self._tick)

    def _begin_cycle(self, now: float) -> None:
        """Start a pass over the connections, at an interval for the
        shortest timeout the last pass saw."""
        interval = sweep_interval(self._shortest) if self._shortest < math.inf else self.interval
        assert interval is not None
        self.interval = interval
        self._found = False
        self._shortest = math.inf
        self._seen = None
        self._cursor = 0
        self._end = max(_fd_to_key(self.loop.selector), default=-1) + 1
        ticks = max(1, -(-self._end // SWEEP_BATCH))
        self._period = interval / ticks
        if self._next < now - interval:  # far behind (the loop was blocked): start afresh
            self._next = now
        for connection in list(self.loop.parked):
            self._check(connection, now)

    def _check(self, target: Any, now: float) -> None:
        if not getattr(target, "is_connection", False) or target.closed:
            return
        limits = target.handler.limits
        shortest = limits.shortest_timeout
        if shortest is None:
            return
        self._found = True
        if limits is not self._seen:
            self._seen = limits
            if shortest < self._shortest:
                self._shortest = shortest
        try:
            check_timeouts(target, now)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            self.loop.report_error(target, exc)


def _fd_to_key(selector: selectors.BaseSelector) -> "dict[int, selectors.SelectorKey]":
    # The stdlib selectors keep this dict; reading it directly is a dict
    # lookup per descriptor, where get_map()[fd] is three Python calls.
    fd_to_key = getattr(selector, "_fd_to_key", None)
    if isinstance(fd_to_key, dict):
        return fd_to_key
    return {key.fd: key for key in selector.get_map().values()}
