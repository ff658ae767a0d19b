"""What one client may cost a server, and for how long: limits and timeouts.

Theory of operation. A :class:`Limits` object holds every bound a server puts
on its clients; ``Server(..., limits=Limits(...))`` sets them per server and
every handler that server makes reads them as ``self.limits``. The defaults
(:data:`DEFAULT_LIMITS`) are safe for a server on the open internet; each
bound can be raised, lowered or (where it says so) switched off with None.

Timeouts cost one loop timer per connection, whatever the traffic. Reads and
writes never touch the timer: they only note the loop time in the handler
(``_active``: last byte in or out; ``_request_since``: when the incomplete
request now buffered began; ``_write_since``: when the client last took
output). The timer fires at the earliest moment a timeout *could* be due;
:func:`check_timeouts` then works out which deadline really applies from
those notes and either closes the connection (that timeout fired) or moves
the timer to the new deadline. So a connection that keeps busy reschedules
its timer about once per timeout period, not once per read (libev's and
Tornado's trick). Only a change to a state with a *shorter* deadline (a
request begins; output stalls) pulls the timer earlier, once per request.

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
    "Limits",
    "RateLimitedLog",
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
    idle_timeout: Optional[float] = 300.0
    request_timeout: Optional[float] = 60.0
    write_timeout: Optional[float] = 60.0
    handshake_timeout: Optional[float] = 10.0
    shutdown_timeout: float = 10.0

    def __post_init__(self) -> None:
        for name in ("max_request_size", "max_connections"):
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

    def replace(self, **changes: Any) -> "Limits":
        """A copy with ``changes`` applied: ``DEFAULT_LIMITS.replace(idle_timeout=30)``."""
        return dataclasses.replace(self, **changes)

    @property
    def has_timeouts(self) -> bool:
        """Whether any per-connection timeout is on (then each connection has a timer)."""
        return (
            self.idle_timeout is not None
            or self.request_timeout is not None
            or self.write_timeout is not None
        )


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


def arm_timeouts(handler: Any) -> None:
    """Start the connection's timer, if its limits have any timeout on."""
    limits = handler.limits
    if not limits.has_timeouts:
        return
    now = handler.loop.time()
    handler._active = handler._write_since = now
    first = min(
        t for t in (limits.idle_timeout, limits.request_timeout, limits.write_timeout) if t is not None
    )
    handler._timer = handler.loop.call_at(now + first, check_timeouts, handler)


def note_read(handler: Any, before: int, received: int) -> None:
    """After ``data_received()``: ``before`` bytes of an incomplete request
    were buffered and ``received`` more came. A request that begins now (the
    buffer was empty, or a request was consumed) starts the request clock."""
    if handler.closed:
        return
    now = handler.loop.time()
    handler._active = now
    pending = handler.pending_input()
    if not pending:
        handler._request_since = None
    elif handler._request_since is None or pending < before + received:
        handler._request_since = now
        timeout = handler.limits.request_timeout
        if timeout is not None:
            pull_timer(handler, now + timeout)


def note_write_stall(handler: Any) -> None:
    """Output has started to wait for the client: start the write clock."""
    now = handler.loop.time()
    handler._write_since = now
    timeout = handler.limits.write_timeout
    if timeout is not None:
        pull_timer(handler, now + timeout)


def pull_timer(handler: Any, deadline: float) -> None:
    """Make the connection's timer fire no later than ``deadline``."""
    timer = handler._timer
    if timer is None or handler.closed or timer.when <= deadline:
        return
    timer.cancel()
    handler._timer = handler.loop.call_at(deadline, check_timeouts, handler)


def current_deadline(handler: Any) -> "tuple[Optional[str], Optional[float], Optional[float]]":
    """Which timeout applies to the connection now: (name, seconds, deadline),
    or (None, None, None) while the server itself is producing a reply."""
    limits = handler.limits
    if handler._events & selectors.EVENT_WRITE and limits.write_timeout is not None:
        return "write", limits.write_timeout, handler._write_since + limits.write_timeout
    if handler._request_since is not None:
        if limits.request_timeout is None:
            return None, None, None
        return "request", limits.request_timeout, handler._request_since + limits.request_timeout
    if handler._output is not None or handler._batch is not None:
        return None, None, None  # a reply is being produced (a future) or flushed
    if limits.idle_timeout is None:
        return None, None, None
    return "idle", limits.idle_timeout, handler._active + limits.idle_timeout


def check_timeouts(handler: Any) -> None:
    """The connection's timer fired: close it if a timeout is due, else set
    the timer for the deadline that applies now."""
    handler._timer = None
    if handler.closed:
        return
    now = handler.loop.time()
    name, seconds, deadline = current_deadline(handler)
    if deadline is not None and now >= deadline:
        handler.handle_timeout(name, seconds)
        return
    if deadline is None:
        # Nothing is due in this state (the server is busy producing a
        # reply), and that time is not the client's idleness: look again
        # after the shortest timeout.
        handler._active = now
        limits = handler.limits
        deadline = now + min(
            t for t in (limits.idle_timeout, limits.request_timeout, limits.write_timeout) if t is not None
        )
    handler._timer = handler.loop.call_at(deadline, check_timeouts, handler)
