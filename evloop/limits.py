"""What one client may cost a server: the limits and timeouts a user sets.

Theory of operation. A :class:`Limits` object is configuration only, a
frozen dataclass: every bound a server puts on its clients.
``Server(..., limits=Limits(...))`` sets them per server and every handler
that server makes reads them as ``self.limits``. The defaults
(:data:`DEFAULT_LIMITS`) are safe for a server on the open internet; each
bound can be raised, lowered or (where it says so) switched off with None.

The machinery that enforces them lives elsewhere: the output marks in
:mod:`evloop.connection`, the idle, request and write timeouts in
:mod:`evloop.timeouts` (one sweep per loop, no timer per connection), the
TLS handshake timeout in the connection's handshake state, the connection
limit in :mod:`evloop.server`, the client memory budget in
:mod:`evloop.budget`, graceful shutdown in :mod:`evloop.shutdown`.
"""

import dataclasses
import logging
import math
import selectors
import time
from typing import Any, Callable, Optional

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_MAX_CLIENTS_MEMORY",
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

#: ``Limits.max_clients_memory`` by default: 1 GiB per server (per worker
#: process with ``--workers``). Why this figure: docs/security.md,
#: "A memory budget for all clients".
DEFAULT_MAX_CLIENTS_MEMORY = 1024 * 1024 * 1024

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
    - ``max_connections_per_peer``: connections one client IP address holds
      at once on a TCP server; the next is refused like one over
      ``max_connections``. None: no per-address cap (behind a proxy).
    - ``max_clients_memory``: bytes all of one server's connections may hold
      in memory at once (input buffered, output queued), as Redis's
      ``maxmemory-clients``; past it the connections holding the most are
      closed first (:mod:`evloop.budget`). None: no budget.
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
    max_clients_memory: Optional[int] = DEFAULT_MAX_CLIENTS_MEMORY
    idle_timeout: Optional[float] = 300.0
    request_timeout: Optional[float] = 60.0
    write_timeout: Optional[float] = 60.0
    handshake_timeout: Optional[float] = 10.0
    shutdown_timeout: float = 10.0
    # Worked out from the three timeouts by __post_init__ (shortest_timeout).
    _shortest: Optional[float] = dataclasses.field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        for name in ("max_request_size", "max_connections", "max_connections_per_peer", "max_clients_memory"):
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
