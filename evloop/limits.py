"""What one client may cost a server, and for how long: limits and timeouts.

Theory of operation. A :class:`Limits` object holds every bound a server puts
on its clients; ``Server(..., limits=Limits(...))`` sets them per server and
every handler that server makes reads them as ``self.limits``. The defaults
(:data:`DEFAULT_LIMITS`) are safe for a server on the open internet; each
bound can be raised, lowered or (where it says so) switched off with None.

Timeouts cost no timer per connection. Reads and writes only note the loop
time in the handler (``_active``: last byte in or out; ``_request_since``:
when the incomplete request now buffered began; the output queue's
``write_since``: when the client last took output), and the time they note
is ``loop.pass_time``, one float the loop takes after each select, so every
connection active in a pass shares it. One :class:`TimeoutSweep` per loop
(Redis's ``clientsCron``) looks at every connection once per interval,
works out from those notes which deadline applies (:func:`current_deadline`)
and calls ``handle_timeout()`` on the connections whose deadline has passed.
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

TLS handshakes have ``handshake_timeout`` (see :mod:`evloop.tls`); graceful
shutdown waits ``shutdown_timeout`` (see :mod:`evloop.shutdown`).
"""

import dataclasses
import logging
import math
import selectors
import time
from typing import Any, Callable, Optional

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_MAX_REQUEST_SIZE",
    "SWEEP_BATCH",
    "SWEEP_MAX",
    "SWEEP_MIN",
    "Limits",
    "RateLimitedLog",
    "TimeoutSweep",
    "default_max_connections",
    "limits_of",
]

logger = logging.getLogger("evloop")

#: Bytes one incomplete request of a recipe-style handler may buffer in
#: ``incoming`` when ``Limits.max_request_size`` is None (framers have their own).
DEFAULT_MAX_REQUEST_SIZE = 1024 * 1024

# Descriptors kept back from max_connections for listeners, files being
# streamed, log files and the loop's own waker: an eighth of the limit,
# between 16 and 128.
_RESERVE_MIN, _RESERVE_MAX = 16, 128
# select() cannot watch a descriptor numbered FD_SETSIZE or more.
_FD_SETSIZE = 1024
# What "no limit" on descriptors is taken to mean.
_NOFILE_UNLIMITED = 1 << 20
#: Bounds of the timeout sweep's interval, in seconds.
SWEEP_MIN, SWEEP_MAX = 0.01, 1.0
#: Most descriptors the timeout sweep looks at in one tick.
SWEEP_BATCH = 2000


@dataclasses.dataclass(frozen=True)
class Limits:
    """Bounds and timeouts for one server's clients. Times are seconds of
    loop time; a timeout of None switches that timeout off.

    - ``max_request_size``: bytes one incomplete request may buffer. None:
      each framer's own default (``Framer.default_max_size``) and
      :data:`DEFAULT_MAX_REQUEST_SIZE` for ``request_complete()`` handlers.
    - ``write_high_water`` / ``write_low_water``: stop reading from a client
      once more than ``write_high_water`` bytes of its replies wait unsent;
      read again once they are down to ``write_low_water``.
    - ``max_connections``: connections one server holds at once; the next
      is accepted, sent the handler's ``busy_reply`` and closed. None: from
      the process's descriptor limit (:func:`default_max_connections`).
    - ``max_connections_per_peer``: connections one client IP address holds
      at once on a TCP server; the next is refused like one over
      ``max_connections``. None: no per-address cap (behind a proxy).
    - ``idle_timeout``: close a connection with nothing in flight after this.
    - ``request_timeout``: a request must be whole this long after its first byte.
    - ``write_timeout``: close a client that takes none of its pending output
      for this long.
    - ``handshake_timeout``: a TLS handshake must be done this long after accept.
    - ``shutdown_timeout``: how long a graceful shutdown lets in-flight
      responses finish before cutting the connections still open.
    """

    max_request_size: Optional[int] = None
    write_high_water: int = 1024 * 1024
    write_low_water: int = 256 * 1024
    max_connections: Optional[int] = None
    max_connections_per_peer: Optional[int] = 256
    idle_timeout: Optional[float] = 300.0
    request_timeout: Optional[float] = 60.0
    write_timeout: Optional[float] = 60.0
    handshake_timeout: Optional[float] = 10.0
    shutdown_timeout: float = 10.0
    # Worked out from the three timeouts by __post_init__ (shortest_timeout).
    _shortest: Optional[float] = dataclasses.field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        for name in ("max_request_size", "max_connections", "max_connections_per_peer"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int or None, not {value!r}")
        if not 0 <= self.write_low_water <= self.write_high_water:
            raise ValueError(
                f"need 0 <= write_low_water ({self.write_low_water}) "
                f"<= write_high_water ({self.write_high_water})"
            )
        for name in (
            "idle_timeout",
            "request_timeout",
            "write_timeout",
            "handshake_timeout",
            "shutdown_timeout",
        ):
            value = getattr(self, name)
            if value is None and name != "shutdown_timeout":
                continue
            if not isinstance(value, (int, float)) or not value >= 0 or math.isinf(value):
                raise ValueError(
                    f"{name} must be a number of seconds >= 0"
                    f"{'' if name == 'shutdown_timeout' else ' or None'}, not {value!r}"
                )
        # Read for every connection that starts and at every sweep: kept
        # ready, not recomputed (a frozen dataclass, so set past __setattr__).
        timeouts = [t for t in (self.idle_timeout, self.request_timeout, self.write_timeout) if t is not None]
        object.__setattr__(self, "_shortest", min(timeouts) if timeouts else None)

    @property
    def shortest_timeout(self) -> Optional[float]:
        """The shortest of the idle, request and write timeouts that are on
        (None: all three are off, and connections are not swept)."""
        return self._shortest

    def replace(self, **changes: Any) -> "Limits":
        """A copy with ``changes`` applied: ``DEFAULT_LIMITS.replace(idle_timeout=30)``."""
        return dataclasses.replace(self, **changes)

    @property
    def has_timeouts(self) -> bool:
        """Whether any per-connection timeout is on (then the loop's timeout
        sweep looks at each connection)."""
        return self._shortest is not None


#: The limits of a server made without ``limits=``.
DEFAULT_LIMITS = Limits()


def limits_of(server: Any) -> Limits:
    """The limits ``server`` sets, or the defaults for an object that has none."""
    limits = getattr(server, "limits", None)
    return limits if isinstance(limits, Limits) else DEFAULT_LIMITS


def default_max_connections(selector: Optional[selectors.BaseSelector] = None) -> int:
    """Connections a server may hold with the descriptors this process may
    open (``RLIMIT_NOFILE``'s soft limit, read now), less a reserve of an
    eighth (16 to 128) for listeners, streamed files and logs. Under
    ``select()`` also below 1024, the highest descriptor it can watch."""
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # no resource module (Windows)
        soft = _FD_SETSIZE
    if soft < 0 or soft > _NOFILE_UNLIMITED:  # RLIM_INFINITY
        soft = _NOFILE_UNLIMITED
    if isinstance(selector, selectors.SelectSelector):
        soft = min(soft, _FD_SETSIZE)
    reserve = min(_RESERVE_MAX, max(_RESERVE_MIN, soft // 8))
    return max(1, soft - reserve)


class RateLimitedLog:
    """Log one line per ``interval`` seconds at most; the next line that is
    let through says how many were held back meanwhile. For conditions that
    repeat as fast as the loop turns (out of descriptors, refused clients),
    which must be seen but must not flood the log."""

    def __init__(
        self,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        log: logging.Logger = logger,
    ) -> None:
        self.interval = interval
        self.clock = clock
        self.log = log
        self._next = -math.inf
        self.suppressed = 0

    def __call__(self, level: int, message: str, *args: Any) -> bool:
        """Log ``message % args`` at ``level`` unless a line went out less
        than ``interval`` ago. Returns whether it was logged."""
        now = self.clock()
        if now < self._next:
            self.suppressed += 1
            return False
        self._next = now + self.interval
        if self.suppressed:
            message += " (%d more like this in the last %.0fs)"
            args = (*args, self.suppressed, self.interval)
            self.suppressed = 0
        self.log.log(level, message, *args)
        return True


# -- per-connection timeouts (the handler calls these) -----------------------


def sweep_interval(shortest: float) -> float:
    """Seconds between two looks at a connection, for the shortest timeout
    in force: a tenth of it, so a timeout is late by at most a tenth, held
    between :data:`SWEEP_MIN` and :data:`SWEEP_MAX`."""
    return min(SWEEP_MAX, max(SWEEP_MIN, shortest / 10))


def arm_timeouts(handler: Any) -> None:
    """Put a new connection under the loop's timeout sweep, if its limits
    have any timeout on; its clocks start at the loop's time for this pass."""
    limits = handler.limits
    if limits.shortest_timeout is None:
        return
    loop = handler.loop
    # In a pass (an accept), the pass's shared float; otherwise (started by
    # hand before the loop runs) the time now.
    handler._active = loop.pass_time if loop._running_thread is not None else loop.time()
    sweep = handler.loop._timeout_sweep
    if sweep is None:
        sweep = handler.loop._timeout_sweep = TimeoutSweep(handler.loop)
    sweep.watch(limits)


def note_read(handler: Any, before: int, received: int) -> None:
    """After ``data_received()``: ``before`` bytes of an incomplete request
    were buffered and ``received`` more came. A request that begins now (the
    buffer was empty, or a request was consumed) starts the request clock.
    The time noted is the loop's one float for this pass, shared by every
    connection that reads in it (no float allocated per read)."""
    if handler.closed:
        return
    now = handler.loop.pass_time
    handler._active = now
    pending = handler.pending_input()
    if not pending:
        handler._request_since = None
    elif handler._request_since is None or pending < before + received:
        handler._request_since = now


def note_write_stall(handler: Any) -> None:
    """Output has started to wait for the client: start the write clock."""
    handler._output.write_since = handler.loop.pass_time


def current_deadline(handler: Any) -> "tuple[Optional[str], Optional[float], Optional[float]]":
    """Which timeout applies to the connection now: (name, seconds, deadline),
    or (None, None, None) while the server itself is producing a reply."""
    limits = handler.limits
    output = handler._output
    if handler._events & selectors.EVENT_WRITE and output is not None and limits.write_timeout is not None:
        return "write", limits.write_timeout, output.write_since + limits.write_timeout
    if handler._request_since is not None:
        if limits.request_timeout is None:
            return None, None, None
        return "request", limits.request_timeout, handler._request_since + limits.request_timeout
    if output is not None or handler._batch is not None:
        return None, None, None  # a reply is being produced (a future) or flushed
    if limits.idle_timeout is None:
        return None, None, None
    return "idle", limits.idle_timeout, handler._active + limits.idle_timeout


def check_timeouts(handler: Any, now: float) -> None:
    """Close ``handler`` (through its ``handle_timeout()``) if a timeout is
    due at loop time ``now``."""
    name, seconds, deadline = current_deadline(handler)
    if deadline is None:
        # Nothing is due in this state (the server is busy producing a
        # reply), and that time is not the client's idleness.
        handler._active = now
    elif now >= deadline:
        handler.handle_timeout(name, seconds)


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
        for handler in self.loop._unselected_handlers():
            self._check(handler, now)

    def _check(self, target: Any, now: float) -> None:
        limits = getattr(target, "limits", None)
        if not getattr(target, "is_client_handler", False) or limits is None or target.closed:
            return
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
            self.loop._report_error(target, exc)


def _fd_to_key(selector: selectors.BaseSelector) -> "dict[int, selectors.SelectorKey]":
    # The stdlib selectors keep this dict; reading it directly is a dict
    # lookup per descriptor, where get_map()[fd] is three Python calls.
    fd_to_key = getattr(selector, "_fd_to_key", None)
    if isinstance(fd_to_key, dict):
        return fd_to_key
    return {key.fd: key for key in selector.get_map().values()}
