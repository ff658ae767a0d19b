"""How a connection comes to be served: accepted, connected, TLS, PROXY header.

Theory of operation. A :class:`~evloop.connection.Connection` starts NEW
and reaches OPEN, where its handler's ``setup()`` runs, by one of four
roads: at once (a plain accepted client, :meth:`start`); through a TLS
handshake (HANDSHAKING, stepped each time the socket is ready for what
OpenSSL wants, bounded by ``Limits.handshake_timeout``); through a PROXY
protocol header first (PROXY_HEADER, read by :mod:`evloop.proxy_reception`,
then a handshake or OPEN); or through an outgoing ``connect()``
(CONNECTING, :mod:`evloop.connect`). Each road counts the connection open
on the loop as it leaves NEW, so ``loop.close()`` finds it whatever state
it is in.

These are methods of :class:`~evloop.connection.Connection`, kept in their
own module as a base class it builds on, as :mod:`evloop.closing` keeps
how it ends.
"""

from typing import Optional

from .closing import ConnectionClosing
from .logs import loop_warnings
from .states import (
    CONNECTING,
    DIRTY,
    EVENT_READ,
    EVENT_WRITE,
    HANDSHAKING,
    OPEN,
    PROXY_HEADER,
    STATE_MASK,
    TIMED,
)
from .timeouts import arm_timeouts
from .tls import handshake_step, is_tls

__all__ = ["ConnectionOpening"]


class ConnectionOpening(ConnectionClosing):
    """The opening half of :class:`~evloop.connection.Connection`."""

    __slots__ = ()

    # -- starting -----------------------------------------------------------

    def start(self) -> None:
        """NEW -> OPEN: count the connection, watch it, run ``setup()``."""
        self._move(OPEN)
        self.loop.connection_opened(self)
        self._begin_serving()

    def _begin_serving(self) -> None:
        self._watch(EVENT_READ)
        if arm_timeouts(self):
            self.flags |= TIMED
        self.handler.setup()
        if self.batch is not None or self.output is not None:
            self.schedule_flush()  # what was queued before serving began

    def start_handshake(self, timeout: Optional[float]) -> None:
        """NEW -> HANDSHAKING: a TLS server's fresh client. ``setup()`` runs
        once the handshake is done; ``timeout`` seconds bound it."""
        self._move(HANDSHAKING)
        self.loop.connection_opened(self)
        self._time_handshake(timeout)

    def start_proxy_header(self) -> None:
        """NEW -> PROXY_HEADER: the header is read first (:mod:`evloop.proxy_reception`)."""
        self._move(PROXY_HEADER)
        # The idle clock starts now: a header under way is not idle since 0.0.
        loop = self.loop
        self.active = loop.pass_time if loop.is_running() else loop.time()
        loop.connection_opened(self)
        self._watch(EVENT_READ)

    def proxy_header_read(self, handshake_timeout: Optional[float]) -> None:
        """PROXY_HEADER -> HANDSHAKING on a TLS socket, else OPEN."""
        if is_tls(self.sock):
            self._move(HANDSHAKING)
            self._time_handshake(handshake_timeout)
        else:
            self._move(OPEN)
            self._begin_serving()

    def _time_handshake(self, timeout: Optional[float]) -> None:
        if timeout is not None:
            # No handle is kept: the callback finds the state moved on.
            self.loop.call_later(timeout, self._handshake_expired, timeout)
        self._step_handshake()

    def start_connecting(self) -> None:
        """NEW -> CONNECTING: an outgoing connection; counted as open, and
        ``send()`` only queues until :meth:`connected`."""
        self._move(CONNECTING)
        self.loop.connection_opened(self)
        self.loop.park(self)  # in no selector yet: loop.close() still finds it
        self.flags |= DIRTY  # output waits: no flush is scheduled while connecting

    def watch_connect(self) -> None:
        """A non-blocking ``connect()`` is under way on ``sock``."""
        self._watch(EVENT_WRITE)

    def unwatch(self) -> None:
        """Take the socket out of the selector (before it is replaced)."""
        self._watch(0)

    def connected(self) -> None:
        """CONNECTING -> OPEN: the connect succeeded; serve, and send what
        was queued meanwhile."""
        self._watch(0)
        self._move(OPEN)
        self.flags &= ~DIRTY
        self._begin_serving()
        self.schedule_flush()  # settle the events, even with nothing queued

    # -- TLS handshake ------------------------------------------------------

    def _step_handshake(self) -> None:
        peer = self.handler.peer
        wanted = handshake_step(self.sock, peer, loop_warnings(self.loop).warn)
        if wanted is None:  # failed; handshake_step said why
            self.loop.limit_hit("handshake_failed")
            self.close()
        elif wanted:
            self._watch(wanted)
        else:
            self._move(OPEN)
            self._begin_serving()

    def _handshake_expired(self, seconds: float) -> None:
        if self.flags & STATE_MASK == HANDSHAKING:
            self.loop.limit_hit("handshake_timeout")
            loop_warnings(self.loop).warn(
                "tls-handshake-timeout",
                "%s: TLS handshake timeout (%gs) fired; closing the connection",
                self.handler.peer,
                seconds,
            )
            self.close()
