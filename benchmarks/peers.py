"""The peers evloop is measured against: one LengthSepEcho server each.

    python benchmarks/peers.py IMPL [--port 0]

IMPL is one of :data:`IMPLS`:

- ``bare-epoll``: a hand-written ``select.epoll`` loop, a socket and a dict
  entry per connection and nothing else; the pure-Python floor.
- ``asyncio-protocol``: an ``asyncio.Protocol`` on the default event loop.
- ``uvloop``: the same ``Protocol`` class on uvloop's loop.
- ``twisted``: a ``twisted.internet.protocol.Protocol`` on the epoll reactor.

evloop itself is not here: the harness starts it the way a user would,
``python -m evloop serve evloop.protocols:LengthSepEcho``.

The wire is LengthSepEcho's: requests ``<digits>\\n<body>``, each answered
with ``b"%d\\n" % len(body) + body``. Every server binds 127.0.0.1, prints
``listening on HOST:PORT`` once bound and serves until SIGINT or SIGTERM.

Fairness. Every peer runs the same Python per read, :func:`answer`: the
length line must be digits, at most as many as the 1 MiB limit has, and is
checked against the limit before the body is awaited (LengthSepFramer's
rules); each body is copied out once and framed as LengthSepEcho frames it;
all the replies to one read go out in one write, as evloop does. What
differs is only the loop and its transports. Nagle's algorithm is off
everywhere (asyncio and uvloop do it by default, the Twisted peer is told
to, the bare loop sets it on the listener and its clients inherit it).
"""

import argparse
import asyncio
import logging
import resource
import select
import signal
import socket

__all__ = ["IMPLS", "MAX_DIGITS", "MAX_SIZE", "BadRequestError", "EchoState", "answer", "main"]

logger = logging.getLogger("evloop.bench")

IMPLS = ["bare-epoll", "asyncio-protocol", "uvloop", "twisted"]

# LengthSepFramer's default limit, and so its digit limit.
MAX_SIZE = 1024 * 1024
MAX_DIGITS = len(str(MAX_SIZE))


class BadRequestError(Exception):
    """The peer broke the protocol: the connection is closed once the
    replies to the requests before it are written (``args[1]``)."""


def answer(src, pos: int, stop: int) -> tuple:
    """The replies to every whole request in ``src[pos:stop]`` (bytes or a
    bytearray), the offset of the first byte not yet answered, and why the
    input from there on is refused as LengthSepFramer would refuse it, or
    None. The replies before a refused request still go out."""
    replies = []
    find = src.find
    while pos < stop:
        newline = find(b"\n", pos, min(stop, pos + MAX_DIGITS + 1))
        if newline < 0:
            if stop - pos > MAX_DIGITS or not src[pos:stop].isdigit():
                return replies, pos, f"bad length line {bytes(src[pos : pos + MAX_DIGITS + 1])!r}"
            break
        head = src[pos:newline]
        if not head.isdigit():
            return replies, pos, f"bad length line {bytes(head)!r}"
        length = int(head)
        if length > MAX_SIZE:
            return replies, pos, f"length {length} over the limit"
        end = newline + 1 + length
        if end > stop:
            break
        body = src[newline + 1 : end]
        replies.append(b"%d\n" % length + body)
        pos = end
    return replies, pos, None


class EchoState:
    """What a callback peer keeps per connection: the unanswered tail of
    the input, if any. ``feed`` returns the bytes to write (or b"")."""

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending = None

    def feed(self, data: bytes) -> bytes:
        pending = self.pending
        if pending is not None:
            pending += data
            data = pending
        replies, pos, refused = answer(data, 0, len(data))
        if refused:
            raise BadRequestError(refused, b"".join(replies))
        if pos == len(data):
            self.pending = None
        elif pending is None or pos:
            self.pending = bytearray(data[pos:])
        if not replies:
            return b""
        return replies[0] if len(replies) == 1 else b"".join(replies)


# -- asyncio Protocol and uvloop -------------------------------------------------


class AsyncioEcho(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.state = EchoState()

    def data_received(self, data):
        try:
            out = self.state.feed(data)
        except BadRequestError as exc:
            peer = self.transport.get_extra_info("peername")
            logger.warning("%s: closing the connection: %s", peer, exc.args[0])
            self.transport.write(exc.args[1])
            self.transport.close()
            return
        if out:
            self.transport.write(out)


async def _serve_asyncio(port, started):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(AsyncioEcho, "127.0.0.1", port, backlog=1024)
    started(server.sockets[0].getsockname())
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.close()


def serve_asyncio_protocol(port, started):
    asyncio.new_event_loop().run_until_complete(_serve_asyncio(port, started))


def serve_uvloop(port, started):
    import uvloop

    uvloop.new_event_loop().run_until_complete(_serve_asyncio(port, started))


# -- Twisted -----------------------------------------------------------------------


def serve_twisted(port, started):
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import protocol, reactor

    class TwistedEcho(protocol.Protocol):
        def connectionMade(self):  # noqa: N802 (Twisted's name)
            # Twisted leaves Nagle on; asyncio and uvloop turn it off.
            self.transport.setTcpNoDelay(True)
            self.state = EchoState()

        def dataReceived(self, data):  # noqa: N802 (Twisted's name)
            try:
                out = self.state.feed(data)
            except BadRequestError as exc:
                logger.warning("%s: closing the connection: %s", self.transport.getPeer(), exc.args[0])
                self.transport.write(exc.args[1])
                self.transport.loseConnection()
                return
            if out:
                self.transport.write(out)

    factory = protocol.Factory.forProtocol(TwistedEcho)
    listening = reactor.listenTCP(port, factory, backlog=1024, interface="127.0.0.1")
    host = listening.getHost()
    started((host.host, host.port))
    reactor.run()


# -- the bare epoll loop ---------------------------------------------------------


def serve_bare_epoll(port, started):
    """One epoll set; per connection its socket in a dict and, only while
    there is any, its unanswered input or its unsent output."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit TCP_NODELAY from the listener on Linux.
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(1024)
    listener.setblocking(False)
    started(listener.getsockname())
    poll = select.epoll()
    lfd = listener.fileno()
    poll.register(lfd, select.EPOLLIN)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        _bare_loop(poll, listener, lfd)
    except KeyboardInterrupt:
        pass
    poll.close()
    listener.close()


def _bare_loop(poll, listener, lfd):
    socks = {}  # fd -> socket
    pending_in = {}  # fd -> bytearray: the start of a request
    pending_out = {}  # fd -> bytes still to send (reading stops meanwhile)
    buf = bytearray(256 * 1024)
    epollin, epollout = select.EPOLLIN, select.EPOLLOUT

    def close(fd):
        poll.unregister(fd)
        socks.pop(fd).close()
        pending_in.pop(fd, None)
        pending_out.pop(fd, None)

    def send(fd, sock, out):
        try:
            sent = sock.send(out)
        except BlockingIOError:
            sent = 0
        if sent < len(out):
            pending_out[fd] = out[sent:]
            poll.modify(fd, epollout)
        elif fd in pending_out:
            del pending_out[fd]
            poll.modify(fd, epollin)

    while True:
        for fd, events in poll.poll():
            if fd == lfd:
                while True:
                    try:
                        sock, _ = listener.accept()
                    except BlockingIOError:
                        break
                    sock.setblocking(False)
                    socks[sock.fileno()] = sock
                    poll.register(sock.fileno(), epollin)
                continue
            sock = socks[fd]
            try:
                if events & epollout:
                    send(fd, sock, pending_out[fd])
                    continue
                n = sock.recv_into(buf)
                if not n:
                    close(fd)
                    continue
                if fd in pending_in:
                    src = pending_in.pop(fd)
                    src += memoryview(buf)[:n]
                    n = len(src)
                else:
                    src = buf
                replies, pos, refused = answer(src, 0, n)
                if refused:
                    logger.warning("%s: closing the connection: %s", sock.getpeername(), refused)
                    sock.send(b"".join(replies))  # the replies before it, as far as they go
                    close(fd)
                    continue
                if pos < n:
                    pending_in[fd] = src[pos:n]  # a bytearray: a copy
                if replies:
                    send(fd, sock, replies[0] if len(replies) == 1 else b"".join(replies))
            except OSError:
                close(fd)


SERVE = {
    "bare-epoll": serve_bare_epoll,
    "asyncio-protocol": serve_asyncio_protocol,
    "uvloop": serve_uvloop,
    "twisted": serve_twisted,
}


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one; return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("impl", choices=IMPLS)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    raise_fd_limit()

    def started(address):
        print(f"listening on {address[0]}:{address[1]}", flush=True)

    SERVE[args.impl](args.port, started)


if __name__ == "__main__":
    main()
