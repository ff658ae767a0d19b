"""Listening sockets: bind, accept, hand each client to a handler.

A :class:`Server` owns one non-blocking listening socket. Added to a loop, it
is the selector's target for that socket: on readability it accepts as many
clients as are waiting (up to ``accepts_per_wakeup``, so a connect flood
cannot starve established clients) and gives each its own handler. Accept
errors that mean "out of descriptors or memory" pause accepting for a moment
instead of spinning, with one rate-limited log line however long it lasts;
errors that concern one client skip that client.

Each server counts its connections against ``Limits.max_connections`` (by
default derived from the descriptor limit, see :mod:`evloop.limits`): over
it a new client is accepted, sent the handler class's ``busy_reply`` and
closed, so it learns at once instead of waiting in the backlog. A TCP
server also caps the connections of each client IP address
(``Limits.max_connections_per_peer``), so one client cannot hold every slot
until the idle timeout: past it the client is refused in the same way.
Refusals are logged through :mod:`evloop.logs`: one line per kind per
10 s window, then a count of the rest. With
``ssl=`` a context, each client's connection first goes through a
non-blocking TLS handshake (its HANDSHAKING state, :mod:`evloop.connection`);
the handler's ``setup()`` runs once it is done. With ``proxy_protocol=``
a :class:`~evloop.proxy_protocol.ProxyProtocol`, each client first sends a
PROXY protocol header, read before the handshake and before ``setup()``
(:mod:`evloop.proxy_reception`), and the handler sees the client it names.
"""

import errno
import logging
import socket
from ssl import SSLContext
from typing import Any, Dict, Optional, Tuple

from .addresses import format_address
from .eventloop import EVENT_READ
from .lifecycle import ServerLifecycle
from .limits import DEFAULT_LIMITS, Limits, RateLimitedLog, default_max_connections
from .logs import loop_warnings
from .proxy_protocol import ProxyProtocol
from .proxy_reception import ProxyReception

__all__ = ["Server"]

logger = logging.getLogger("evloop")

# accept() errors about one client that gave up already: skip it.
_ACCEPT_SKIP = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ECONNRESET}
# accept() errors about this process or machine: pause, do not spin.
_ACCEPT_PAUSE = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class Server(ServerLifecycle):
    """A non-blocking TCP listener.

    ``host`` may be a name, an IPv4 or an IPv6 address. ``"localhost"`` (the
    default) means the loopback interface; a name that resolves to both
    families binds the IPv4 address first, as a client would try it. ``""``
    or ``"0.0.0.0"`` listens on every IPv4 interface, ``"::"`` on every
    interface of both families. ``port=0`` lets the system pick a free port;
    :attr:`address` and :attr:`port` tell which. ``sock`` serves an already
    bound listening socket instead.

    ``ssl`` is an ``ssl.SSLContext`` (see :func:`evloop.tls.make_server_context`)
    to serve TLS; ``limits`` a :class:`~evloop.limits.Limits` for this
    server's clients (default :data:`~evloop.limits.DEFAULT_LIMITS`).
    :attr:`connections` counts the clients it holds now, :meth:`peer_connections`
    those of one client address. ``proxy_protocol`` (a
    :class:`~evloop.proxy_protocol.ProxyProtocol`) makes every client send
    a PROXY protocol header first, from a trusted network only.

    socketserver's ``serve_forever()``, ``shutdown()``, ``server_close()``
    and ``with`` come from :class:`~evloop.lifecycle.ServerLifecycle`.
    """

    accepts_per_wakeup = 128
    _peer_counts: Optional[Dict[Any, int]]
    accept_pause = 0.1  # seconds accepting rests after EMFILE and friends

    def __init__(
        self,
        host: str = "localhost",
        port: int = 0,
        *,
        family: int = 0,
        backlog: int = 1024,
        reuse_port: bool = False,
        sock: Optional[socket.socket] = None,
        ssl: Optional[SSLContext] = None,
        limits: Optional[Limits] = None,
        proxy_protocol: Optional[ProxyProtocol] = None,
    ) -> None:
        self._init_limits(ssl, limits)
        if sock is None:
            sock = bind_inet(
                "localhost" if host is None else host,
                port,
                family=family,
                reuse_port=reuse_port,
                backlog=backlog,
            )
        sock.setblocking(False)
        self.socket = sock
        self.address: Tuple[Any, ...] = sock.getsockname()
        self.loop: Any = None
        self.handler_class: Any = None
        self.closed = False
        self._listening = False
        self._tcp = sock.family in (socket.AF_INET, socket.AF_INET6)
        self.proxy_protocol = proxy_protocol
        #: The PROXY header reading (None when ``proxy_protocol`` is off).
        self.proxy_reception: Optional[ProxyReception] = None
        if proxy_protocol is not None:
            self.proxy_reception = ProxyReception(self, proxy_protocol, checks_trust=self._tcp)
        if self._tcp and self.limits.max_connections_per_peer is not None:
            self._peer_counts = {}  # counted from accept to client_gone()
        self._hosts: Dict[Any, Any] = {}
        # Whether accepted sockets come with TCP_NODELAY from the listener
        # (Linux copies it): then each saves a setsockopt() call. None: not
        # known until the first client.
        self._nodelay_inherited: Optional[bool] = None
        if self._tcp:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                self._nodelay_inherited = False

    @property
    def host(self) -> str:
        return str(self.address[0])

    @property
    def port(self) -> int:
        return int(self.address[1])

    def _init_limits(self, ssl: Optional[SSLContext], limits: Optional[Limits]) -> None:
        self.ssl_context = ssl
        self.limits = limits if limits is not None else DEFAULT_LIMITS
        self.connections = 0
        self.max_connections = 0  # set when served: the descriptor limit is read then
        self.refused = 0
        # Connections per client address, for Limits.max_connections_per_peer
        # (a TCP server with the cap on; None otherwise): counted up at
        # accept, down in client_gone().
        self._peer_counts = None

    # -- what the loop calls ------------------------------------------------

    def _start_serving(self, loop: Any, handler_class: Any) -> None:
        if self.loop is not None:
            raise RuntimeError("this server is already served by a loop")
        self.loop = loop
        self.handler_class = handler_class
        self.max_connections = self.limits.max_connections or default_max_connections(loop.selector)
        # Conditions that repeat as fast as clients connect get one log
        # line per 10 seconds of loop time, not one per client.
        self._accept_log = RateLimitedLog(10.0, loop.time, logger)
        self._resume_accepting()

    def _resume_accepting(self) -> None:
        if not self.closed and not self._listening:
            self.loop.set_events(self.socket, 0, EVENT_READ, self)
            self._listening = True

    def _pause_accepting(self, seconds: float) -> None:
        if self._listening:
            self.loop.set_events(self.socket, EVENT_READ, 0, self)
            self._listening = False
        self.loop.call_later(seconds, self._resume_accepting)

    def handle_read(self) -> None:
        listener = self.socket
        for _ in range(self.accepts_per_wakeup):
            try:
                client, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _ACCEPT_SKIP:
                    continue
                if exc.errno in _ACCEPT_PAUSE:
                    # Retrying at once would spin: the backlog stays
                    # readable until a descriptor frees up.
                    self._accept_log(
                        logging.ERROR,
                        "%s: accept failed (%s); pausing accepting for %.2fs at a time until it works",
                        self,
                        exc.strerror,
                        self.accept_pause,
                    )
                    self._pause_accepting(self.accept_pause)
                    return
                raise
            if self.connections >= self.max_connections:
                self._refuse(client, address)
                continue
            cap = self.limits.max_connections_per_peer
            # Behind the PROXY protocol every client shares the balancer's
            # address: the cap counts the header's client instead.
            if (
                cap is not None
                and self._tcp
                and self.proxy_reception is None
                and self._peer_full(address[0], cap)
            ):
                self._refuse(client, address, cap)
                continue
            self.connection_made(client, address)

    def _refuse(self, client: socket.socket, address: Any, peer_cap: Optional[int] = None) -> None:
        """Over max_connections (or, given ``peer_cap``, over the client
        address's share): tell the client (``busy_reply``) and close."""
        self.refused += 1
        if peer_cap is None:
            loop_warnings(self.loop).warn(
                "max-connections",
                "%s: refused %s: %d connections open, the limit (Limits.max_connections) is %d",
                self,
                format_address(address),
                self.connections,
                self.max_connections,
            )
        else:
            loop_warnings(self.loop).warn(
                "max-connections-per-peer",
                "%s: refused %s: that address holds %d connections, "
                "the limit (Limits.max_connections_per_peer) is %d",
                self,
                format_address(address),
                peer_cap,
                peer_cap,
            )
        reply = getattr(self.handler_class, "busy_reply", None)
        try:
            client.setblocking(False)
            if reply and self.ssl_context is None:
                client.send(reply)
            client.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        client.close()

    def client_gone(self, handler: Any) -> None:
        """A connection of this server closed (the connection calls this
        with its handler; None for one that never got a handler)."""
        if self.connections > 0:
            self.connections -= 1
        if self.proxy_reception is not None:
            self.proxy_reception.forget(handler)
            return
        counts = self._peer_counts
        if counts is not None and handler is not None:
            host = handler.client_address[0]
            left = counts.get(host, 0) - 1
            if left > 0:
                counts[host] = left
            else:
                counts.pop(host, None)

    def peer_connections(self, host: Any) -> int:
        """The connections (TLS handshakes included) client address ``host``
        holds now. Counted on TCP servers with a per-peer cap only: Unix
        sockets have no address. With ``proxy_protocol``, the clients the
        headers name (on Unix servers too), not the balancer."""
        if self.proxy_reception is not None:
            return self.proxy_reception.peer_connections(host)
        counts = self._peer_counts
        return 0 if counts is None else int(counts.get(host, 0))

    def _peer_full(self, host: Any, cap: int) -> bool:
        return self.peer_connections(host) >= cap

    def _share_host(self, address: Tuple[Any, ...]) -> Tuple[Any, ...]:
        # accept() makes a new host string for every client; many clients
        # share a few hosts (a proxy, a NAT), so keep one copy of each and
        # save an idle connection ~60 bytes. The cache is bounded.
        hosts = self._hosts
        host = address[0]
        shared = hosts.get(host)
        if shared is None:
            if len(hosts) >= 4096:
                hosts.clear()
            hosts[host] = host
            return address
        return (shared, *address[1:])

    def connection_made(self, client: socket.socket, address: Any) -> None:
        """Make a handler for a freshly accepted client and start it (after
        the TLS handshake, on a TLS server)."""
        reception = self.proxy_reception
        if reception is not None and not reception.admits(client, address):
            return
        client.setblocking(False)
        if self._tcp:
            inherited = self._nodelay_inherited
            if inherited is None:
                inherited = self._nodelay_inherited = bool(
                    client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                )
            if not inherited:
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            address = self._share_host(address)
        self.connections += 1
        tls = self.ssl_context is not None
        try:
            if tls:
                assert self.ssl_context is not None
                client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
            handler = self.handler_class(self, client, address)
        except Exception:
            logger.exception(
                "%s: could not %s %s for %s",
                self,
                "start TLS and create" if tls else "create",
                getattr(self.handler_class, "__name__", self.handler_class),
                format_address(address),
            )
            client.close()
            self.client_gone(None)
            return
        connection = handler.connection
        if self._peer_counts is not None and reception is None:
            host = address[0]
            self._peer_counts[host] = self._peer_counts.get(host, 0) + 1
        try:
            if reception is not None:
                reception.begin(connection)  # then the handshake, or OPEN
            elif tls:
                # The handler's setup() runs once the handshake is done.
                connection.start_handshake(self.limits.handshake_timeout)
            else:
                connection.start()
        except Exception as exc:
            self.loop.report_error(connection, exc)

    def handle_write(self) -> None:  # a listener is never registered for writing
        pass

    def handle_error(self, exc: BaseException) -> None:
        loop_warnings(self.loop).warn(
            "accept-error", "%s: accept failed; still listening", self, level=logging.ERROR, exc_info=exc
        )

    # -- closing ------------------------------------------------------------

    def close(self) -> None:
        """Stop listening. Connections already accepted are not touched."""
        if self.closed:
            return
        self.closed = True
        if self._listening:
            self.loop.set_events(self.socket, EVENT_READ, 0, self)
            self._listening = False
        self.socket.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {format_address(self.address)}>"


def bind_inet(
    host: Optional[str],
    port: int,
    *,
    family: int = 0,
    kind: int = socket.SOCK_STREAM,
    reuse_address: bool = True,
    reuse_port: bool = False,
    backlog: Optional[int] = None,
) -> socket.socket:
    """Bind a socket of ``kind`` to the first address ``host`` resolves to
    (``""`` or None: every interface) and, given a ``backlog``, listen on
    it. Raises the last OSError when no address would bind.

    Where a name has both families the IPv4 address is tried first, so
    "localhost" is 127.0.0.1 as clients (and the recipe's users) expect;
    "::" is asked for explicitly, and serves IPv4 too."""
    infos = socket.getaddrinfo(host or None, port, family, kind, 0, socket.AI_PASSIVE)
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    error: Optional[OSError] = None
    for af, sock_kind, proto, _, sockaddr in infos:
        sock = socket.socket(af, sock_kind, proto)
        try:
            if reuse_address and hasattr(socket, "SO_REUSEADDR"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if af == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                # "::" serves IPv4 too; a specific IPv6 address only itself.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if sockaddr[0] == "::" else 1)
            sock.bind(sockaddr)
            if backlog is not None:
                sock.listen(backlog)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    assert error is not None
    raise error
