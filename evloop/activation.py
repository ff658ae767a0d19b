"""systemd socket activation: serve the sockets the service manager passed.

Theory of operation (sd_listen_fds(3)). systemd (or any manager speaking
the same protocol: ``systemd-socket-activate``, s6, a test) binds the
sockets of a ``.socket`` unit itself, then starts the service with them as
descriptors 3, 4, ... and three variables: ``LISTEN_FDS``, how many;
``LISTEN_PID``, the pid they are meant for (a child that inherited the
environment must not take them); ``LISTEN_FDNAMES``, their names joined
by ``:`` (``FileDescriptorName=``; ``unknown`` when unnamed). The
variables are checked and, unless asked not to, removed from the
environment, so that a process this one starts does not think the
sockets are its own; the descriptors get ``FD_CLOEXEC`` for the same
reason.

:func:`listen_sockets` turns the descriptors into ``socket.socket``
objects, each with its name (the kernel says the family and type);
:func:`systemd_servers` makes the evloop server each one needs: a
:class:`~evloop.Server` for TCP, a :class:`~evloop.UnixServer` for a Unix
stream socket (its file is systemd's: it is never removed), a
:class:`~evloop.DatagramServer` for UDP, a
:class:`~evloop.UnixDatagramServer` for Unix datagrams. Stream sockets
come listening (``Accept=no``, the default); evloop does not call
``listen()`` again. ``python -m evloop serve MODULE:HANDLER --systemd``
serves them all (see docs/deployment.md for a unit pair).
"""

import os
import socket
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["LISTEN_FDS_START", "listen_fds", "listen_sockets", "systemd_servers"]

#: The first descriptor systemd passes (SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3

_VARIABLES = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


def listen_fds(unset_environment: bool = True) -> List[Tuple[int, str]]:
    """The descriptors passed to this process and their names, in order:
    ``[(3, "web"), (4, "unknown"), ...]``; ``[]`` if none were (the
    variables are missing, or name another process). Each descriptor is
    made close-on-exec. With ``unset_environment`` (the default) the three
    variables are removed from ``os.environ``. Raises ValueError if the
    variables are malformed."""
    environ = os.environ
    try:
        if "LISTEN_FDS" not in environ or "LISTEN_PID" not in environ:
            return []
        try:
            count = int(environ["LISTEN_FDS"])
            pid = int(environ["LISTEN_PID"])
        except ValueError:
            raise ValueError(
                f"malformed LISTEN_FDS={environ['LISTEN_FDS']!r} / LISTEN_PID={environ['LISTEN_PID']!r}"
            ) from None
        if pid != os.getpid() or count <= 0:
            return []  # meant for another process (the one that exec'ed us)
        names = environ.get("LISTEN_FDNAMES", "").split(":") if "LISTEN_FDNAMES" in environ else []
        if names and len(names) != count:
            raise ValueError(f"LISTEN_FDNAMES names {len(names)} sockets, LISTEN_FDS says {count}")
        names = names or ["unknown"] * count
        passed = []
        for offset in range(count):
            fd = LISTEN_FDS_START + offset
            os.set_inheritable(fd, False)  # FD_CLOEXEC; also checks it is open
            passed.append((fd, names[offset] or "unknown"))
        return passed
    finally:
        if unset_environment:
            for name in _VARIABLES:
                environ.pop(name, None)


def listen_sockets(unset_environment: bool = True) -> List[Tuple[str, socket.socket]]:
    """The passed sockets as ``(name, socket)`` pairs, in order (see
    :func:`listen_fds`); several may share a name. ``[]`` when the process
    was not socket-activated. Raises ValueError for a descriptor that is
    not a socket."""
    found = []
    for fd, name in listen_fds(unset_environment):
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise ValueError(f"descriptor {fd} ({name}) passed by systemd is not a socket: {exc}") from None
        found.append((name, sock))
    return found


def systemd_servers(
    sockets: Optional[List[Tuple[str, socket.socket]]] = None,
    *,
    ssl: Any = None,
    limits: Any = None,
    max_size: Optional[int] = None,
    proxy_protocol: Any = None,
) -> Dict[str, List[Any]]:
    """An evloop server for each passed socket (by default
    :func:`listen_sockets`), grouped by name: ``{"web": [Server], "dns":
    [DatagramServer]}``. ``ssl``, ``limits`` and ``proxy_protocol`` (a
    :class:`~evloop.proxy_protocol.ProxyProtocol`) go to the stream servers,
    ``max_size`` to the datagram ones. Add each to a loop with the handler
    its kind needs (a ClientHandler for streams, a DatagramHandler for
    datagrams; ``server.socket.type`` tells). Raises ValueError for a
    socket of another kind (say, a FIFO or a SEQPACKET socket)."""
    if sockets is None:
        sockets = listen_sockets()
    servers: Dict[str, List[Any]] = {}
    for name, sock in sockets:
        servers.setdefault(name, []).append(_server_for(name, sock, ssl, limits, max_size, proxy_protocol))
    return servers


def _server_for(
    name: str, sock: socket.socket, ssl: Any, limits: Any, max_size: Optional[int], proxy_protocol: Any
) -> Any:
    from .datagram import DatagramServer, UnixDatagramServer
    from .server import Server
    from .unix import UnixServer

    unix = sock.family == socket.AF_UNIX
    if sock.type == socket.SOCK_STREAM:
        if unix:
            return UnixServer(
                sock=sock, ssl=ssl, limits=limits, remove_file=False, proxy_protocol=proxy_protocol
            )
        return Server(sock=sock, ssl=ssl, limits=limits, proxy_protocol=proxy_protocol)
    if sock.type == socket.SOCK_DGRAM:
        if unix:
            return UnixDatagramServer(sock=sock, max_size=max_size, remove_file=False)
        return DatagramServer(sock=sock, max_size=max_size)
    raise ValueError(
        f"socket {name!r} (descriptor {sock.fileno()}) is neither a stream nor a datagram socket"
    )
