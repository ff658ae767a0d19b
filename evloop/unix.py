"""Unix-domain stream listeners, and the socket-file care they need.

Theory of operation. :class:`UnixServer` is a :class:`~evloop.server.Server`
whose listening socket is bound to a path instead of a port; everything else
(accepting, the ``ClientHandler`` classes, the loop) is the same as for TCP.
What is particular to Unix sockets is the file the bind leaves behind:

- Before binding, a file already at the path is examined. A socket file that
  nobody answers on (a server that died without cleaning up) is *stale* and is
  removed; one that accepts a probe connection belongs to a live server and
  the bind fails with ``EADDRINUSE``, as a TCP port in use would. Anything that
  is not a socket is never touched (``FileExistsError``).
- On close, the file is removed only if it is still the one this process
  bound (same device and inode, same process id): a forked child closing its
  inherited copy, or a server whose file was since replaced, removes nothing.

A path starting with a NUL byte is Linux's abstract namespace: there is no
file, so neither step applies. The probe, then remove, then bind sequence
leaves a window in which two servers starting on the same stale path at the
same instant could both proceed; the inode is re-checked just before removal
to keep it as narrow as a check can make it.

:func:`bind_unix` is shared with the Unix datagram server.
"""

import errno
import os
import socket
import stat
import struct
from ssl import SSLContext
from typing import Any, Optional, Tuple, Union, cast

from .proxy_protocol import ProxyProtocol
from .server import Server

__all__ = ["UnixServer", "bind_unix", "remove_socket_file"]

PathLike = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]

# Connecting to a bound Unix socket answers at once, so the probe never waits;
# these answers mean "nobody is bound there".
_NOBODY_THERE = (errno.ECONNREFUSED, errno.ENOENT)


def _is_abstract(path: Union[str, bytes]) -> bool:
    return path[:1] in ("\0", b"\0")


def _file_identity(path: Union[str, bytes]) -> Optional[Tuple[int, int]]:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino


def _remove_stale(path: Union[str, bytes], kind: int) -> None:
    """Remove a socket file at ``path`` that no live server answers on.
    Raise ``EADDRINUSE`` if one does, ``FileExistsError`` if the path is not
    a socket at all."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a socket; not removing it", os.fsdecode(path))
    probe = socket.socket(socket.AF_UNIX, kind)
    try:
        probe.setblocking(False)
        probe.connect(path)
    except OSError as exc:
        if exc.errno not in _NOBODY_THERE:
            # EAGAIN: a listener with a full backlog; EPROTOTYPE: a socket of
            # the other kind is bound there. Either way it is alive.
            raise OSError(
                errno.EADDRINUSE, f"a live socket is bound there ({exc.strerror})", os.fsdecode(path)
            ) from None
    else:
        raise OSError(errno.EADDRINUSE, "a server is listening there", os.fsdecode(path))
    finally:
        probe.close()
    # Only the file we probed may go: if it changed since, start again.
    if _file_identity(path) != (info.st_dev, info.st_ino):
        _remove_stale(path, kind)
        return
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def bind_unix(path: PathLike, kind: int, *, mode: Optional[int] = None) -> socket.socket:
    """A ``kind`` (``SOCK_STREAM`` or ``SOCK_DGRAM``) Unix socket bound to
    ``path``, a stale socket file there removed first (see the module
    header). ``mode`` sets the file's permission bits. Raises OSError
    (``EADDRINUSE`` when a live server holds the path)."""
    path = os.fspath(path)
    if not _is_abstract(path):
        _remove_stale(path, kind)
    sock = socket.socket(socket.AF_UNIX, kind)
    try:
        sock.bind(path)
        if mode is not None and not _is_abstract(path):
            os.chmod(path, mode)
    except BaseException:
        sock.close()
        raise
    return sock


class _SocketFile:
    """The file one bind made, and whether this process may remove it."""

    __slots__ = ("path", "identity", "pid")

    def __init__(self, path: Any) -> None:
        self.path = path if path and not _is_abstract(path) else None
        self.identity = _file_identity(path) if self.path is not None else None
        self.pid = os.getpid()

    def remove(self) -> None:
        path = self.path
        if path is None or os.getpid() != self.pid:
            return
        self.path = None
        if self.identity is not None and _file_identity(path) == self.identity:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def remove_socket_file(owner: Any) -> None:
    """Remove the socket file ``owner`` bound, if it is still its own."""
    socket_file = getattr(owner, "_socket_file", None)
    if socket_file is not None:
        socket_file.remove()


class UnixServer(Server):
    """A non-blocking Unix-domain stream listener at ``path``, served with
    the same ``ClientHandler`` classes as TCP.

    A stale socket file at ``path`` is replaced; a live one makes the bind
    fail with ``EADDRINUSE``; anything else there raises
    ``FileExistsError``. ``mode`` sets the file's permission bits (who may
    connect). ``sock`` serves an already bound listening socket instead (its
    file is then removed on close as well). The file is removed when the
    server closes, unless ``remove_file=False`` (a socket other processes
    share). ``ssl`` and ``limits`` are as for :class:`Server`, and
    so is ``proxy_protocol``, except that its ``trusted`` networks are not
    consulted: a Unix peer has no address, and the file's permissions
    (``mode``) decide who may connect and so who may send the header.
    """

    def __init__(
        self,
        path: Optional[PathLike] = None,
        *,
        backlog: int = 1024,
        mode: Optional[int] = None,
        sock: Optional[socket.socket] = None,
        ssl: Optional[SSLContext] = None,
        limits: Any = None,
        proxy_protocol: Optional[ProxyProtocol] = None,
        remove_file: bool = True,
    ) -> None:
        if sock is None:
            if path is None:
                raise TypeError("UnixServer needs a path or a sock")
            sock = bind_unix(path, socket.SOCK_STREAM, mode=mode)
            try:
                sock.listen(backlog)
            except BaseException:
                sock.close()
                raise
        super().__init__(sock=sock, ssl=ssl, limits=limits, proxy_protocol=proxy_protocol)
        # remove_file=False: the socket is shared (a worker's, systemd's).
        self._socket_file = _SocketFile(self.address if remove_file else None)

    @property
    def path(self) -> Union[str, bytes]:
        """The path this server listens on (str; bytes if bound with bytes
        that are not valid UTF-8; starting with NUL if abstract)."""
        return cast(Union[str, bytes], self.address)

    @property
    def host(self) -> str:
        """The path, so code written for TCP servers can name the listener."""
        return os.fsdecode(self.path)

    @property
    def port(self) -> None:  # type: ignore[override]
        """Unix sockets have no port."""
        return None

    def connection_made(self, client: socket.socket, address: Any) -> None:
        # A Unix client is usually unbound, so accept() names it "": say
        # instead which listener it came through and, where the system
        # tells, which process it is, so log lines identify the peer.
        if not address:
            address = f"unix:{os.fsdecode(self.path)}{_peer_process(client)}"
        super().connection_made(client, address)

    def close(self) -> None:
        """Stop listening and remove the socket file (if still ours)."""
        if self.closed:
            return
        super().close()
        remove_socket_file(self)


def _peer_process(client: socket.socket) -> str:
    peercred = getattr(socket, "SO_PEERCRED", None)
    if peercred is None:
        return ""
    try:
        pid, _uid, _gid = struct.unpack(
            "3i", client.getsockopt(socket.SOL_SOCKET, peercred, struct.calcsize("3i"))
        )
    except (OSError, struct.error):
        return ""
    return f" pid {pid}" if pid > 0 else ""
