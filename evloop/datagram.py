"""Datagram servers: UDP (IPv4 and IPv6) and Unix datagram sockets.

Theory of operation. A datagram server is one bound socket and one
:class:`DatagramHandler` instance, made when a loop starts serving it. There
are no connections: on readability the server reads up to
``datagrams_per_wakeup`` datagrams (so a flood cannot starve the loop's other
sockets) and hands each to ``handler.handle_datagram(data, address)``, whose
return value is the reply: sent to ``address`` with ``sendto`` as one
datagram, or nothing for None.

Reading goes into one preallocated buffer of ``max_size + 1`` bytes, so each
datagram costs one copy of its own length; a datagram that fills the buffer
is over ``max_size`` (or was cut short by the kernel) and is dropped with a
warning naming the sender, never handed on half.

A reply the socket cannot take now (its send buffer is full) waits in a
queue, in order, and the socket is watched for writability only while
something waits; while ``max_queued`` replies wait, reading pauses, so the
kernel's receive buffer, not our memory, absorbs the excess, which is what
UDP promises anyway.

Errors are per datagram. An exception from the handler goes to
``handler.handle_error(exc, address)``: a :class:`RemoteProtocolError` gets a
warning line with the sender's address and its ``reply`` sent back, anything
else its traceback with the sender's address; the datagram is dropped and
the server goes on. ICMP errors that a previous reply provoked surface on the
next read (``ECONNREFUSED`` and friends) and are skipped; a reply that cannot
be delivered is logged with its address and dropped.
"""

import collections
import concurrent.futures
import errno
import logging
import os
import socket
from typing import Any, Callable, Deque, Optional, Tuple, TypeVar, Union, cast

from .addresses import format_address
from .errors import RemoteProtocolError
from .eventloop import EVENT_READ, EVENT_WRITE
from .lifecycle import ServerLifecycle
from .logs import loop_warnings
from .server import bind_inet
from .unix import PathLike, _SocketFile, bind_unix, remove_socket_file

T = TypeVar("T")

__all__ = ["DatagramHandler", "DatagramServer", "UnixDatagramServer"]

logger = logging.getLogger("evloop")

# Errors about one peer, not about our socket: a reply we sent earlier came
# back as ICMP "port unreachable" and friends, reported on a later call.
_PEER_ERRORS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.EHOSTDOWN,
    errno.ENETDOWN,
    errno.EMSGSIZE,
    errno.ENOENT,
    errno.EACCES,
    errno.EPERM,
    errno.ENOTCONN,
    errno.EDESTADDRREQ,
}


class DatagramHandler:
    """Serves every datagram one datagram server receives. Subclass it and
    override :meth:`handle_datagram`.

    One instance per server (not per datagram, unlike socketserver): state
    kept on ``self`` lasts as long as the server, and per-peer state can be
    kept in a dict keyed by address. ``self.server`` and ``self.loop`` are
    set before :meth:`setup` runs.
    """

    def __init__(self, server: Any) -> None:
        self.server = server
        self.loop = server.loop

    def setup(self) -> None:
        """Called once when the server starts being served."""

    def finish(self) -> None:
        """Called once when the server closes."""

    def handle_datagram(self, data: bytes, address: Any) -> Any:
        """Answer one datagram from ``address``: return the reply (bytes,
        str, a list of those joined into one datagram, a
        ``concurrent.futures.Future`` whose result is one of those) or None
        for no reply. Raise :class:`RemoteProtocolError` for a datagram that
        breaks the protocol."""
        raise NotImplementedError(f"{type(self).__name__} must override handle_datagram()")

    def handle_error(self, exc: BaseException, address: Any) -> None:
        """Handling the datagram from ``address`` failed. The default logs it
        with the sender's address (a warning for a RemoteProtocolError, whose
        ``reply`` is sent back, else the traceback). The server goes on."""
        peer = format_address(address)
        if isinstance(exc, RemoteProtocolError):
            # Senders' addresses cost nothing to forge: a flood of bad
            # datagrams gets a few lines and a count, not a line each.
            loop_warnings(self.loop).warn(
                "datagram-protocol-error", "%s: %s; datagram dropped", peer, exc.message
            )
            if exc.reply:
                self.send(exc.reply, address)
        else:
            logger.error("%s: error in %s; datagram dropped", peer, type(self).__name__, exc_info=exc)

    def send(self, reply: Any, address: Any) -> None:
        """Send ``reply`` (as :meth:`handle_datagram` may return it) to
        ``address``, for more than one reply or an unsolicited one."""
        self.server.sendto(reply, address)

    def offload(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> "concurrent.futures.Future[T]":
        """Run ``func(*args, **kwargs)`` in the loop's worker pool (the one
        ``ClientHandler.offload`` uses) and return a Future for its result:
        return that from :meth:`handle_datagram` and the reply is sent when
        it is ready, while other datagrams are served meanwhile."""
        from .offload import offload_executor

        return offload_executor(self.loop).submit(func, *args, **kwargs)


class DatagramServer(ServerLifecycle):
    """A UDP server. ``host``, ``port``, ``family`` and ``reuse_port`` mean
    what they mean for :class:`~evloop.server.Server`: ``"localhost"`` is the
    IPv4 loopback, ``"::1"`` the IPv6 one, ``"::"`` every interface of both
    families, ``port=0`` a free port. ``sock`` serves an already bound
    datagram socket. ``max_size`` is the largest datagram handed to the
    handler (default 65535: anything UDP can carry)."""

    max_size = 65535
    datagrams_per_wakeup = 64
    max_queued = 1024  # replies held while the send buffer is full

    def __init__(
        self,
        host: str = "localhost",
        port: int = 0,
        *,
        family: int = 0,
        reuse_port: bool = False,
        sock: Optional[socket.socket] = None,
        max_size: Optional[int] = None,
    ) -> None:
        if sock is None:
            sock = bind_inet(
                host, port, family=family, kind=socket.SOCK_DGRAM, reuse_address=False, reuse_port=reuse_port
            )
        self._init_socket(sock, max_size)

    def _init_socket(self, sock: socket.socket, max_size: Optional[int]) -> None:
        sock.setblocking(False)
        self.socket = sock
        self.address: Any = sock.getsockname()
        if max_size is not None:
            self.max_size = max_size
        self._buffer = bytearray(self.max_size + 1)
        self._view = memoryview(self._buffer)
        self._queue: Deque[Tuple[bytes, Any]] = collections.deque()
        self._events = 0
        self.loop: Any = None
        self.handler_class: Any = None
        self.handler: Any = None
        self.closed = False

    @property
    def host(self) -> str:
        return str(self.address[0])

    @property
    def port(self) -> int:
        return int(self.address[1])

    # -- what the loop calls ------------------------------------------------

    def _start_serving(self, loop: Any, handler_class: Any) -> None:
        if self.loop is not None:
            raise RuntimeError("this server is already served by a loop")
        if self.closed:
            raise RuntimeError("this server is closed")
        self.loop = loop
        self.handler_class = handler_class
        self.handler = handler_class(self)
        self._set_events(EVENT_READ)
        self.handler.setup()

    def _set_events(self, events: int) -> None:
        if events != self._events:
            self.loop.set_events(self.socket, self._events, events, self)
            self._events = events

    def handle_read(self) -> None:
        sock, view, limit = self.socket, self._view, self.max_size
        for _ in range(self.datagrams_per_wakeup):
            if self.closed or len(self._queue) >= self.max_queued:
                return
            try:
                size, address = sock.recvfrom_into(self._buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _PEER_ERRORS:
                    logger.debug("%s: %s (about an earlier reply); still serving", self, exc)
                    continue
                raise
            if size > limit:
                loop_warnings(self.loop).warn(
                    "datagram-too-large",
                    "%s: datagram over the limit of %d bytes; dropped",
                    format_address(address),
                    limit,
                )
                continue
            self.datagram_received(bytes(view[:size]), address)

    def datagram_received(self, data: bytes, address: Any) -> None:
        """Hand one datagram to the handler and send its reply."""
        handler = self.handler
        try:
            reply = handler.handle_datagram(data, address)
            if reply is not None:
                self.sendto(reply, address)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            self._report(exc, address)

    def _report(self, exc: BaseException, address: Any) -> None:
        try:
            self.handler.handle_error(exc, address)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:
            logger.exception(
                "%s: handle_error failed for the datagram from %s", self, format_address(address)
            )

    def sendto(self, reply: Any, address: Any) -> None:
        """Send ``reply`` to ``address`` as one datagram: bytes-like, str
        (UTF-8), a list or tuple of those (joined), a Future whose result is
        one of those (sent when it is done), or None (nothing). Undeliverable
        replies are logged and dropped; raises TypeError for other types."""
        if reply is None or self.closed:
            return
        if isinstance(reply, concurrent.futures.Future):
            reply.add_done_callback(
                lambda future: self.loop.call_soon_threadsafe(self._future_done, future, address)
            )
            return
        data = _as_bytes(reply)
        if not address:
            # A Unix datagram client that never bound a path cannot be answered.
            logger.warning("%s: the sender has no address; reply of %d bytes dropped", self, len(data))
            return
        if self._queue:
            # Keep the order: behind the replies already waiting.
            self._queue.append((data, address))
            self._set_events(self._wanted_events())
            return
        self._send_now(data, address)

    def _send_now(self, data: bytes, address: Any) -> bool:
        """Try one sendto; queue on would-block. False if it must wait."""
        try:
            self.socket.sendto(data, address)
        except (BlockingIOError, InterruptedError):
            self._queue.append((data, address))
            self._set_events(self._wanted_events())
            return False
        except OSError as exc:
            if exc.errno not in _PEER_ERRORS and exc.errno != errno.ENOBUFS:
                raise
            loop_warnings(self.loop).warn(
                "datagram-reply-failed",
                "%s: reply of %d bytes not delivered: %s",
                format_address(address),
                len(data),
                exc.strerror,
            )
        return True

    def _future_done(self, future: "concurrent.futures.Future[Any]", address: Any) -> None:
        if self.closed or future.cancelled():
            return
        try:
            self.sendto(future.result(), address)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            self._report(exc, address)

    def _wanted_events(self) -> int:
        events = EVENT_WRITE if self._queue else 0
        if len(self._queue) < self.max_queued:
            events |= EVENT_READ
        return events

    def handle_write(self) -> None:
        queue = self._queue
        while queue:
            data, address = queue.popleft()
            if not self._send_now(data, address):
                # It went back on the end of the queue: restore its place.
                queue.rotate(1)
                break
        self._set_events(self._wanted_events())

    def handle_error(self, exc: BaseException) -> None:
        logger.error("%s: socket error; still serving", self, exc_info=exc)

    # -- closing ------------------------------------------------------------

    def close(self) -> None:
        """Stop serving and close the socket; queued replies are dropped.
        The handler's ``finish()`` runs. Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self._events:
            try:
                self.loop.set_events(self.socket, self._events, 0, self)
            except (KeyError, ValueError, OSError):
                pass
            self._events = 0
        self._queue.clear()
        self.socket.close()
        if self.handler is not None:
            try:
                self.handler.finish()
            except Exception:
                logger.exception("%s: error in finish()", self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {format_address(self.address)}>"


class UnixDatagramServer(DatagramServer):
    """A Unix datagram server at ``path``. Stale socket files are replaced
    and the file is removed on close (unless ``remove_file=False``), as for
    :class:`~evloop.unix.UnixServer`.
    To get replies, a client binds a path of its own; a reply to a client
    that did not is logged and dropped."""

    def __init__(
        self,
        path: Optional[PathLike] = None,
        *,
        mode: Optional[int] = None,
        sock: Optional[socket.socket] = None,
        max_size: Optional[int] = None,
        remove_file: bool = True,
    ) -> None:
        if sock is None:
            if path is None:
                raise TypeError("UnixDatagramServer needs a path or a sock")
            sock = bind_unix(path, socket.SOCK_DGRAM, mode=mode)
        self._init_socket(sock, max_size)
        # remove_file=False: the socket is not ours alone (systemd's).
        self._socket_file = _SocketFile(self.address if remove_file else None)

    @property
    def path(self) -> Union[str, bytes]:
        """The path this server listens on (as for ``UnixServer.path``)."""
        return cast(Union[str, bytes], self.address)

    @property
    def host(self) -> str:
        return os.fsdecode(self.address)

    @property
    def port(self) -> None:  # type: ignore[override]
        return None

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        remove_socket_file(self)


def _as_bytes(reply: Any) -> bytes:
    if isinstance(reply, bytes):
        return reply
    if isinstance(reply, str):
        return reply.encode("utf-8")
    if isinstance(reply, (bytearray, memoryview)):
        return bytes(reply)
    if isinstance(reply, (list, tuple)):
        return b"".join(_as_bytes(piece) for piece in reply)
    raise TypeError(f"a datagram reply must be bytes, str or a list of them, not {type(reply).__name__}")
