"""How a connection ends: the one close path, and closing without losing the last reply.

Theory of operation. A connection ends in one of two ways. :meth:`close`
ends it now, dropping what is unsent; it is the only place a socket is
closed, the loop's books updated and the handler's ``finish()`` run.
:meth:`close_when_sent` (OPEN -> CLOSING) takes no more requests and
closes once the queued output is out.

Closing a socket that still has bytes unread from the peer makes the
kernel send a RST instead of a FIN, and a RST can destroy our last reply
before the peer reads it (RFC 9112 section 9.6). So before closing, what
the peer sent is read and dropped (at most :data:`LINGER_DRAIN` bytes). A
refused connection (a protocol error, ``close_when_sent(linger=True)``)
whose peer is still sending goes further: our side is shut, and the
connection LINGERS, reading and dropping, until the peer ends its stream or
:data:`LINGER_SECONDS` pass, so a client that is still uploading sees the
error status. A connection closed by a graceful shutdown lingers the same
way even if the peer has sent nothing yet, until its end of stream: a
keep-alive client may send a request before it sees our FIN, and that
request must meet a FIN, not a RST. A TLS connection sends ``close_notify`` first, so the peer
can tell a complete reply from a truncated one.

These are methods of :class:`~evloop.connection.Connection`, kept in their
own module as a base class it builds on.
"""

import logging
import socket
from typing import Any

from .states import (
    CHARGED,
    CLOSED,
    CLOSING,
    CONNECTING,
    DRAINING,
    EVENT_READ,
    EVENTS_MASK,
    EVENTS_SHIFT,
    HANDSHAKING,
    LINGER,
    LINGERING,
    NEW,
    OPEN,
    PROXY_HEADER,
    READING,
    STATE_MASK,
)
from .tls import WOULD_BLOCK, send_close_notify

__all__ = ["LINGER_DRAIN", "LINGER_SECONDS", "ConnectionClosing"]

logger = logging.getLogger("evloop")

# Bytes left unread in the kernel when a socket closes turn its FIN into a
# RST, which can make the peer discard our last reply; this much is drained.
LINGER_DRAIN = 256 * 1024
#: Seconds a refused connection keeps reading (and dropping) the peer's bytes.
LINGER_SECONDS = 2.0
# What Connection._drain() found.
LINGER_DRAIN_NONE, LINGER_DRAIN_MORE, LINGER_DRAIN_EOF = range(3)


class ConnectionClosing:
    """The data of a :class:`~evloop.connection.Connection` and its closing half."""

    # The connection's data lives here, in the base class, so that both
    # halves are checked against one list of slots.
    __slots__ = (
        "loop",
        "handler",
        "sock",
        "flags",
        "batch",
        "output",
        "queued",
        "high_water",
        "active",
        "request_since",
    )

    loop: Any
    handler: Any
    sock: Any
    flags: int
    batch: Any
    output: Any
    queued: int
    high_water: int
    active: float
    request_since: Any

    def _move(self, new: int) -> None:
        raise NotImplementedError

    def _watch(self, events: int) -> None:
        raise NotImplementedError

    def schedule_flush(self) -> None:
        raise NotImplementedError

    def close_when_sent(self, linger: bool = False) -> None:
        """OPEN -> CLOSING: take no more requests; close once every queued
        reply is out. ``linger``: the connection is refused, so after the
        last reply read and drop the peer's bytes for a while (RFC 9112
        section 9.6) instead of closing at once."""
        state = self.flags & STATE_MASK
        if state == OPEN:
            self._move(CLOSING)
        elif state != CLOSING:
            if state in (CONNECTING, PROXY_HEADER, HANDSHAKING, NEW):
                self.close()
            return
        if linger:
            self.flags |= LINGER
        self.schedule_flush()

    def drain_on_shutdown(self) -> None:
        """A graceful shutdown: close once the request under way is answered,
        and linger until the peer's end of stream (a keep-alive client may
        send its next request before it sees our FIN: it must meet no RST)."""
        self.flags |= DRAINING | LINGER

    def _finish_closing(self) -> None:
        """CLOSING, everything sent: close. Bytes the peer sent that are
        still unread would turn our FIN into a RST, which can destroy our
        last reply before the peer reads it: they are read and dropped
        first. A refused connection whose peer is still sending then
        lingers (LINGERING) until the peer ends its stream or
        LINGER_SECONDS pass."""
        sock = self.sock
        plain = type(sock) is socket.socket
        try:
            if not plain:
                send_close_notify(sock)  # TLS: the end of the stream, signed
                sock.shutdown(socket.SHUT_WR)
            elif self.flags & LINGER:
                sock.shutdown(socket.SHUT_WR)
            # With nothing unread, close() alone sends the FIN on a plain
            # socket: a shutdown(SHUT_WR) first would be one more call.
            drained = self._drain() if self.flags & READING else LINGER_DRAIN_EOF
            # A graceful shutdown waits for the peer's FIN even if it sent
            # nothing yet; a refused connection only if it is still sending.
            still_sending = drained == LINGER_DRAIN_MORE or (
                self.flags & DRAINING and drained != LINGER_DRAIN_EOF
            )
        except OSError:
            still_sending = False
        if still_sending and self.flags & LINGER:
            self._move(LINGERING)
            self.active = self.loop.pass_time
            self.loop.call_later(LINGER_SECONDS, self._linger_expired)
            self._watch(EVENT_READ)
            return
        self.close()

    def _drain(self) -> int:
        """Read and drop what the peer has sent, at most LINGER_DRAIN bytes.
        Returns LINGER_DRAIN_EOF (the peer ended its stream),
        LINGER_DRAIN_MORE (it sent something and may send more) or
        LINGER_DRAIN_NONE (nothing was waiting). Raises OSError."""
        sock = self.sock
        buffer = self.loop.recv_buffer
        plain = type(sock) is socket.socket
        drained = 0
        try:
            while drained < LINGER_DRAIN:
                count = sock.recv_into(buffer) if plain else len(sock.recv(65536))
                if not count:
                    self.flags &= ~READING
                    return LINGER_DRAIN_EOF
                drained += count
        except WOULD_BLOCK:
            pass
        return LINGER_DRAIN_MORE if drained else LINGER_DRAIN_NONE

    def _discard_input(self) -> None:
        """LINGERING and readable: drop what came; close at its end."""
        try:
            if self._drain() != LINGER_DRAIN_EOF:
                return
        except OSError:
            pass
        self.close()

    def _linger_expired(self) -> None:
        if self.flags & STATE_MASK == LINGERING:
            self.close()

    def close(self) -> None:
        """Close now, dropping unsent output; the one way any connection
        ends. Runs the handler's ``finish()`` if it was served. Idempotent."""
        flags = self.flags
        state = flags & STATE_MASK
        if state == CLOSED:
            return
        self.flags = (flags & ~STATE_MASK) | CLOSED
        sock = self.sock
        events = (flags >> EVENTS_SHIFT) & EVENTS_MASK
        if events:
            try:
                self.loop.set_events(sock, events, 0, self)
            except (KeyError, ValueError, OSError):
                pass
            self.flags &= ~(EVENTS_MASK << EVENTS_SHIFT)
        if self.output is not None:
            self.output.close()
            self.output = None
        self.batch = None
        self.queued = 0
        if flags & CHARGED:
            self.flags &= ~CHARGED
            self.handler.server.memory_budget.release(self)
        try:
            sock.close()
        except OSError:
            pass
        handler = self.handler
        gone = getattr(handler.server, "client_gone", None)
        if gone is not None:
            gone(handler)
        if state != NEW:
            self.loop.connection_closed(self)
        # setup() ran, or a connect was tried:
        if state != NEW and state != HANDSHAKING and state != PROXY_HEADER:
            try:
                handler.finish()
            except Exception:
                logger.exception("%s: error in finish()", handler.peer)
        handler.discard_input()
