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
closed, so it learns at once instead of waiting in the backlog. With
``ssl=`` a context, each client first goes through a non-blocking TLS
handshake (:mod:`evloop.tls`), then gets the same handler.
"""

import errno
import logging
import socket
from ssl import SSLContext
from typing import Any, Dict, Optional, Tuple

from .eventloop import EVENT_READ
from .lifecycle import ServerLifecycle
from .limits import DEFAULT_LIMITS, Limits, RateLimitedLog, default_max_connections
from .tls import TLSHandshake

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
    :attr:`connections` counts the clients it holds now.

    socketserver's ``serve_forever()``, ``shutdown()``, ``server_close()``
    and ``with`` come from :class:`~evloop.lifecycle.ServerLifecycle`.
    """

    accepts_per_wakeup = 128
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
        self._refuse_log = RateLimitedLog(10.0, loop.time, logger)
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
            self.connection_made(client, address)

    def _refuse(self, client: socket.socket, address: Any) -> None:
        """Over max_connections: tell the client (``busy_reply``) and close."""
        from .handler import format_address

        self.refused += 1
        self._refuse_log(
            logging.WARNING,
            "%s: refused %s: %d connections open, the limit (Limits.max_connections) is %d",
            self,
            format_address(address),
            self.connections,
            self.max_connections,
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

    def _client_gone(self) -> None:
        """A connection of this server closed (its handler or its handshake)."""
        if self.connections > 0:
            self.connections -= 1

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
        if self.ssl_context is not None:
            try:
                handshake = TLSHandshake(self, client, address)
            except Exception:
                logger.exception("%s: could not start TLS for %s", self, address)
                client.close()
                self._client_gone()
                return
            try:
                handshake.start()
            except Exception as exc:
                self.loop._report_error(handshake, exc)
            return
        self._start_handler(client, address)

    def _start_handler(self, client: socket.socket, address: Any) -> None:
        """Make the handler for a counted connection and start it."""
        try:
            handler = self.handler_class(self, client, address)
        except Exception:
            logger.exception(
                "%s: could not create %s for %s",
                self,
                getattr(self.handler_class, "__name__", self.handler_class),
                address,
            )
            client.close()
            self._client_gone()
            return
        try:
            handler.start()
        except Exception as exc:
            self.loop._report_error(handler, exc)

    def handle_write(self) -> None:  # a listener is never registered for writing
        pass

    def handle_error(self, exc: BaseException) -> None:
        logger.error("%s: accept failed; still listening", self, exc_info=exc)

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
        from .handler import format_address

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
