"""Reading the PROXY protocol header off a new connection, before serving it.

Theory of operation. A server made with ``proxy_protocol=ProxyProtocol(...)``
(:mod:`evloop.proxy_protocol`) owns one :class:`ProxyReception`. At accept,
a TCP client whose address is not in the trusted networks is refused: one
rate-limited warning naming it, and the socket closed before any handler
exists. The others get their handler, and their connection starts in the
PROXY_HEADER state (:mod:`evloop.connection`), watched for reading.

Each time the socket is readable, :meth:`ProxyReception.readable` *peeks*
at what arrived (``MSG_PEEK``), feeds it to the connection's parser, and
then takes off the socket exactly the bytes that belong to the header.
Whatever follows the header stays in the kernel, untouched, for the
handler's first read or the TLS handshake: the header precedes the
ClientHello on a TLS server, and the raw socket is read past the
``SSLSocket`` (OpenSSL never sees the header). Once the header is whole,
the handler's ``client_address`` becomes the client it names (LOCAL and
UNKNOWN keep the socket's peer), ``proxy_header`` is set, and the
connection goes on to its TLS handshake or straight to OPEN, where
``setup()`` runs.

Bounds: the parser holds at most ``ProxyProtocol.max_header_size`` bytes
(107 for version 1); the header must be whole within
``Limits.handshake_timeout`` seconds (``request_timeout`` when that is
off); a TLS handshake then gets its own ``handshake_timeout``. No timer
per connection: one sweep per server runs while headers are under way,
every tenth of the timeout (10 ms to 1 s, as :mod:`evloop.timeouts`), and
cuts the connections whose header is late. Connections wait in the order
they began, so a sweep stops at the first one still in time. A header
that is malformed, too long or too slow is one rate-limited warning naming
the socket's peer, and that connection closed. With
``Limits.max_connections_per_peer`` on, the cap counts the clients the
headers name, not the load balancer, whose address every connection shares.
"""

import logging
import socket
from typing import Any, Dict

from .addresses import format_address, is_disconnect
from .logs import loop_warnings
from .proxy_protocol import ProxyHeader, ProxyHeaderError, ProxyHeaderParser, ProxyProtocol
from .states import PROXY_HEADER, STATE_MASK
from .timeouts import sweep_interval
from .tls import WOULD_BLOCK

__all__ = ["ProxyReception"]

logger = logging.getLogger("evloop")

# The socket's own recv, also for an ssl.SSLSocket before its handshake: the
# header is not TLS, and must be taken off the wire before OpenSSL reads.
_raw_recv = socket.socket.recv


class ProxyReception:
    """A server's side of the PROXY protocol: the trust check at accept,
    then each new connection's header. ``server`` is the listener (its
    ``loop``, ``limits`` and ``refused`` count are used); ``checks_trust``
    is False on a Unix-domain server, whose peers have no address."""

    def __init__(self, server: Any, config: ProxyProtocol, checks_trust: bool) -> None:
        self.server = server
        self.config = config
        self.checks_trust = checks_trust
        self._parsers: Dict[Any, ProxyHeaderParser] = {}
        # When each header began (loop time), in that order: what the sweep reads.
        self._since: Dict[Any, float] = {}
        self._sweeping = False
        #: Connections refused so far, by the kind of their warning:
        #: ``"proxy-untrusted"``, ``"proxy-header-invalid"``,
        #: ``"proxy-header-timeout"``, ``"max-connections-per-peer"``.
        self.refusals: Dict[str, int] = {}
        # With max_connections_per_peer: connection -> the client host it counts under.
        self._counted: Dict[Any, Any] = {}
        self._per_host: Dict[Any, int] = {}

    def admits(self, client: socket.socket, address: Any) -> bool:
        """At accept: whether ``client`` may send a header. An untrusted TCP
        peer is refused here (a warning, the socket closed)."""
        if not self.checks_trust or self.config.trusts(address[0]):
            return True
        server = self.server
        server.refused += 1
        self._note("proxy-untrusted")
        loop_warnings(server.loop).warn(
            "proxy-untrusted",
            "%s: refused %s: not a trusted source of PROXY protocol headers (ProxyProtocol.trusted)",
            server,
            format_address(address),
        )
        client.close()
        return False

    def begin(self, connection: Any) -> None:
        """A new connection: read its header before anything else."""
        self._parsers[connection] = self.config.parser()
        connection.start_proxy_header()
        seconds = self._timeout()
        if seconds is not None:
            loop = self.server.loop
            self._since[connection] = loop.time()
            if not self._sweeping:
                self._sweeping = True
                loop.call_later(sweep_interval(seconds), self._sweep, seconds)

    def readable(self, connection: Any) -> None:
        """The socket of a connection in PROXY_HEADER is readable."""
        parser = self._parsers.get(connection)
        if parser is None:  # not one of ours: never left readable and unread
            connection.close()
            return
        sock = connection.sock
        room = max(1, min(self.config.max_header_size - parser.buffered, 65536))
        try:
            data = _raw_recv(sock, room, socket.MSG_PEEK)
        except WOULD_BLOCK:
            return
        except OSError as exc:
            self._fail(connection, exc)
            return
        if not data:
            self._ended(connection, parser)
            return
        try:
            header = parser.feed(data)
        except ProxyHeaderError as exc:
            try:  # taken off the socket, so the close is a FIN rather than a reset
                _raw_recv(sock, len(data))
            except OSError:
                pass
            self._refuse(connection, "proxy-header-invalid", "bad PROXY protocol header: %s", exc.message)
            return
        used = len(data) - len(parser.rest) if header is not None else len(data)
        try:
            taken = _raw_recv(sock, used)
        except OSError as exc:
            self._fail(connection, exc)
            return
        if len(taken) != used:  # what was peeked is in the kernel: cannot happen
            self._fail(connection, OSError(f"took {len(taken)} of the {used} bytes peeked"))
            return
        if header is not None:
            del self._parsers[connection]
            self._since.pop(connection, None)
            self._serve(connection, header)

    def forget(self, handler: Any) -> None:
        """A connection closed (the server's ``client_gone``)."""
        if handler is None:
            return
        connection = handler.connection
        if self._parsers.pop(connection, None) is not None:
            self._since.pop(connection, None)
        host = self._counted.pop(connection, None)
        if host is not None:
            left = self._per_host.get(host, 0) - 1
            if left > 0:
                self._per_host[host] = left
            else:
                self._per_host.pop(host, None)

    @property
    def headers_under_way(self) -> int:
        """Connections whose header is not whole yet."""
        return len(self._parsers)

    @property
    def buffered(self) -> int:
        """Bytes of incomplete headers held now, all connections together."""
        return sum(parser.buffered for parser in self._parsers.values())

    def peer_connections(self, host: Any) -> int:
        """Connections the headers attributed to client address ``host``
        (counted only with ``Limits.max_connections_per_peer`` on)."""
        return int(self._per_host.get(host, 0))

    # -- internals ------------------------------------------------------------

    def _serve(self, connection: Any, header: ProxyHeader) -> None:
        handler = connection.handler
        if header.source:  # LOCAL and UNKNOWN: the socket's peer stands (section 2.2)
            handler.client_address = header.source
            if not self._count(connection, header.source):
                return
        handler.proxy_header = header
        connection.proxy_header_read(self.server.limits.handshake_timeout)

    def _count(self, connection: Any, source: Any) -> bool:
        cap = self.server.limits.max_connections_per_peer
        if cap is None or not isinstance(source, tuple):
            return True
        host = source[0]
        if self._per_host.get(host, 0) >= cap:
            self.server.refused += 1
            self._note("max-connections-per-peer")
            loop_warnings(self.server.loop).warn(
                "max-connections-per-peer",
                "%s: refused %s: that address holds %d connections, "
                "the limit (Limits.max_connections_per_peer) is %d",
                self.server,
                format_address(source),
                cap,
                cap,
            )
            connection.close()
            return False
        self._per_host[host] = self._per_host.get(host, 0) + 1
        self._counted[connection] = host
        return True

    def _timeout(self) -> Any:
        limits = self.server.limits
        return limits.handshake_timeout if limits.handshake_timeout is not None else limits.request_timeout

    def _sweep(self, seconds: float) -> None:
        """Cut the connections whose header is later than ``seconds``; come
        back while headers are under way."""
        loop = self.server.loop
        late = loop.time() - seconds
        for connection, since in list(self._since.items()):
            if since > late:
                break  # the rest began later still
            del self._since[connection]
            if connection.flags & STATE_MASK == PROXY_HEADER:
                self._refuse(
                    connection,
                    "proxy-header-timeout",
                    "no complete PROXY protocol header within %gs (Limits.handshake_timeout)",
                    seconds,
                )
        if self._since and not loop.is_closed():
            loop.call_later(sweep_interval(seconds), self._sweep, seconds)
        else:
            self._sweeping = False

    def _ended(self, connection: Any, parser: ProxyHeaderParser) -> None:
        if parser.buffered:
            self._refuse(
                connection,
                "proxy-header-invalid",
                "end of stream after %d bytes of a PROXY protocol header",
                parser.buffered,
            )
        else:
            # A bare TCP health check connects and leaves: not worth a warning.
            logger.debug("%s: closed before sending a PROXY protocol header", connection.handler.peer)
            connection.close()

    def _fail(self, connection: Any, exc: OSError) -> None:
        if is_disconnect(exc):
            logger.debug(
                "%s: connection lost while reading the PROXY header: %s", connection.handler.peer, exc
            )
            connection.close()
        else:
            self._refuse(connection, "proxy-header-invalid", "cannot read the PROXY protocol header: %s", exc)

    def _note(self, kind: str) -> None:
        self.refusals[kind] = self.refusals.get(kind, 0) + 1

    def _refuse(self, connection: Any, kind: str, reason: str, *args: Any) -> None:
        self._note(kind)
        loop_warnings(self.server.loop).warn(
            kind, "%s: " + reason + "; closing the connection", connection.handler.peer, *args
        )
        connection.close()

    def __repr__(self) -> str:
        return f"<ProxyReception of {self.server!r}: {len(self._parsers)} headers under way>"
