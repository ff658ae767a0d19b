"""Outgoing connections: the loop as a client, with the same handlers.

Theory of operation. :func:`open_connection` makes the handler at once and
returns it, so the caller can wire it to other objects and even ``send()``
to it: output queues until the connection is up. Nothing happens until the
loop's next pass, so a failure is never reported before the caller has the
handler in hand. Then:

1. resolve: a numeric address at once; a name in the loop's offload pool,
   because ``getaddrinfo()`` blocks (see :mod:`evloop.offload`);
2. for each address in turn, a non-blocking ``connect()``; the socket is
   watched for writability, and ``SO_ERROR`` then says how it went
   (``connect(2)``, EINPROGRESS); a refused address moves on to the next;
3. on success the handler starts as an accepted one would
   (``ClientHandler.start()``): it is watched for reading, ``setup()`` runs,
   and what was queued goes out.

If every address fails, or ``timeout`` seconds pass first (resolution
included), a warning names the target and the reason, and the handler's
``handle_error()`` gets the ``OSError`` (``ConnectionRefusedError``,
``TimeoutError``, ``socket.gaierror``...); the connection is then closed if
``handle_error()`` left it open, and ``finish()`` runs as for any connection.
Closing the handler, or the loop, while it connects abandons the attempt.

The handler's ``server`` is the :class:`Connector`, which records where it
goes (``host``, ``port``, ``address`` once connected) and how it went.
"""

import collections
import errno
import logging
import os
import socket
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Deque, Optional, Tuple, Type, TypeVar, cast

from .addresses import format_address
from .offload import offload_executor

if TYPE_CHECKING:
    from .eventloop import EventLoop
    from .handler import ClientHandler

H = TypeVar("H", bound="ClientHandler")

__all__ = ["DEFAULT_CONNECT_TIMEOUT", "Connector", "open_connection", "shutdown_write_when_sent"]

logger = logging.getLogger("evloop")

#: Seconds an outgoing connection may take, name resolution included.
DEFAULT_CONNECT_TIMEOUT = 10.0

# connect() on a non-blocking socket: under way, not failed (EAGAIN is what
# a Unix socket or a busy Windows socket says for the same thing).
_IN_PROGRESS = {errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN, errno.EALREADY, errno.EINTR}

_AddrInfo = Tuple[Any, ...]


def open_connection(
    loop: "EventLoop",
    host: str,
    port: int,
    handler_class: Type[H],
    *,
    timeout: Optional[float] = DEFAULT_CONNECT_TIMEOUT,
    family: int = 0,
    source_address: Optional[Tuple[str, int]] = None,
) -> H:
    """Connect to ``host:port`` from ``loop`` and serve the connection with a
    new ``handler_class(connector, socket, address)``; return that handler
    at once, before it is connected. Call it on the loop's thread (or before
    the loop runs). ``timeout`` (seconds, None for none) bounds resolution
    and connecting together; ``family`` limits the address family;
    ``source_address`` binds the local end first. The outcome arrives later,
    as ``setup()`` (connected) or ``handle_error(exc)`` (failed)."""
    connector = Connector(
        loop, host, port, handler_class, timeout=timeout, family=family, source_address=source_address
    )
    return cast(H, connector.handler)


class Connector:
    """One outgoing connection being made; the ``server`` of its handler.

    ``connected`` says whether it got through; ``address`` is the address
    connected to (``(host, port)`` until then); ``error`` is the ``OSError``
    that ended a failed attempt."""

    def __init__(
        self,
        loop: Any,
        host: str,
        port: int,
        handler_class: Any,
        *,
        timeout: Optional[float] = DEFAULT_CONNECT_TIMEOUT,
        family: int = 0,
        source_address: Optional[Tuple[str, int]] = None,
    ) -> None:
        if loop.is_closed():
            raise RuntimeError("this loop is closed")
        self.loop = loop
        self.host = host
        self.port = port
        self.handler_class = handler_class
        self.timeout = timeout
        self.family = family
        self.source_address = source_address
        self.address: Any = (host, port)
        self.connected = False
        self.error: Optional[OSError] = None
        self._done = False
        self._addresses: Deque[_AddrInfo] = collections.deque()
        self._timer: Any = None
        self._resolving: Optional[Future[Any]] = None
        self._last_error: Optional[OSError] = None
        # The handler needs a socket from birth; it is replaced if the
        # address found needs another family, and for each new attempt.
        sock = socket.socket(family or socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        self._sock_used = False
        try:
            self.handler = handler_class(self, sock, (host, port))
        except BaseException:
            sock.close()
            raise
        # Until connected the connection counts as open (the loop's books)
        # and its output waits; while no socket is watched it is parked, so
        # loop.close() finds it and closes it.
        self.connection = self.handler.connection
        self.connection.start_connecting()
        loop.call_soon(self._begin)

    # -- steps --------------------------------------------------------------

    def _begin(self) -> None:
        if self._abandoned():
            return
        if self.timeout is not None:
            self._timer = self.loop.call_later(self.timeout, self._timed_out)
        try:
            infos = socket.getaddrinfo(
                self.host, self.port, self.family, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST
            )
        except (socket.gaierror, UnicodeError):
            # A name: resolving may block for seconds, so not on this thread.
            try:
                future = offload_executor(self.loop).submit(
                    socket.getaddrinfo, self.host, self.port, self.family, socket.SOCK_STREAM
                )
            except RuntimeError as exc:  # the pool is shut down
                self._fail(OSError(errno.ECANCELED, str(exc)))
                return
            self._resolving = future
            call_soon_threadsafe = self.loop.call_soon_threadsafe
            future.add_done_callback(lambda done: call_soon_threadsafe(self._resolved, done))
            return
        self._addresses.extend(infos)
        self._try_next()

    def _resolved(self, future: Future[Any]) -> None:
        if future is not self._resolving or self._abandoned():
            return
        self._resolving = None
        try:
            infos = future.result()
        except OSError as exc:
            self._fail(exc)
            return
        except Exception as exc:  # e.g. UnicodeError for a malformed name
            self._fail(OSError(errno.EINVAL, f"cannot resolve {self.host!r}: {exc}"))
            return
        if not infos:
            self._fail(OSError(errno.EADDRNOTAVAIL, f"no address found for {self.host!r}"))
            return
        self._addresses.extend(infos)
        self._try_next()

    def _try_next(self) -> None:
        """Start connecting to the next address; report failure when none is left."""
        handler = self.handler
        while self._addresses:
            af, kind, proto, _, sockaddr = self._addresses.popleft()
            sock = handler.client_socket
            if self._sock_used or sock.family != af:
                self.connection.unwatch()
                sock.close()
                sock = self.connection.sock = socket.socket(af, kind, proto)
                sock.setblocking(False)
            self._sock_used = True
            handler.client_address = sockaddr
            try:
                if self.source_address is not None:
                    sock.bind(self.source_address)
                code = sock.connect_ex(sockaddr)
            except OSError as exc:
                self._last_error = exc
                continue
            if code == 0:
                self._connected()
                return
            if code in _IN_PROGRESS:
                self.connection.watch_connect()
                return
            self._last_error = OSError(code, os.strerror(code))
        error = self._last_error or OSError(errno.EADDRNOTAVAIL, "no address to connect to")
        self._fail(error)

    # What the connection calls while the connect is under way.

    def connect_ready(self, connection: Any) -> None:
        """The socket being connected is writable: ``SO_ERROR`` says how
        the attempt went; on to the next address if it failed."""
        if self._abandoned():
            return
        code = connection.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        connection.unwatch()
        if code == 0:
            self._connected()
            return
        self._last_error = OSError(code, os.strerror(code))
        self._try_next()

    def handle_error(self, exc: BaseException) -> None:
        if isinstance(exc, OSError):
            self._fail(exc)
        else:
            logger.error("connecting to %s failed", self, exc_info=exc)
            self._fail(OSError(errno.EIO, f"{type(exc).__name__}: {exc}"))

    def _connected(self) -> None:
        handler = self.handler
        sock = handler.client_socket
        self._finish_attempt()
        self.connected = True
        try:
            self.address = handler.client_address = sock.getpeername()
        except OSError:
            pass
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            # Serve as an accepted connection would (reading, timeouts,
            # setup()), and send what was queued meanwhile.
            self.connection.connected()
        except Exception as exc:
            self.loop.report_error(self.connection, exc)

    def _timed_out(self) -> None:
        self._timer = None
        if self._abandoned():
            return
        self.connection.unwatch()
        self._fail(
            TimeoutError(
                errno.ETIMEDOUT,
                f"connecting to {format_address((self.host, self.port))} timed out after {self.timeout:g} s",
            )
        )

    def _fail(self, exc: OSError) -> None:
        handler = self.handler
        self._finish_attempt()
        self.error = exc
        logger.warning("could not connect to %s: %s", format_address((self.host, self.port)), exc)
        try:
            handler.handle_error(exc)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:
            logger.exception("handle_error of %r failed", handler)
        # Nothing can be sent on a connection that never was.
        handler.close()

    # -- ending -------------------------------------------------------------

    def _abandoned(self) -> bool:
        """True, and clean up, if the handler was closed while connecting."""
        if self._done:
            return True
        if not self.handler.closed:
            return False
        self._finish_attempt()
        return True

    def _finish_attempt(self) -> None:
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._resolving is not None:
            self._resolving.cancel()
            self._resolving = None

    def client_gone(self, handler: Any) -> None:
        """The connection closed (while connecting, or after): nothing to count."""

    def __repr__(self) -> str:
        state = "connected" if self.connected else "failed" if self.error else "connecting"
        return f"<{type(self).__name__} {format_address(self.address)} {state}>"


def shutdown_write_when_sent(handler: Any) -> None:
    """Once everything queued for ``handler`` so far has been sent, shut
    down the write side of its socket: the peer reads end of stream, and the
    handler goes on reading its replies. For a client whose protocol ends a
    request with end of stream (yoton's), or a proxy passing a half-close
    on. Nothing may be sent after it."""
    handler.send(_shutdown_write(handler))


def _shutdown_write(handler: Any) -> Any:
    # A generator, so the output queue runs it in its turn: only when every
    # byte queued before it has gone to the kernel.
    try:
        handler.client_socket.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # already gone: the close will tell the handler
    return
    yield
