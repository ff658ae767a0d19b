"""The servers the benchmarks measure: evloop and its peers, one wire protocol each.

    python benchmarks/peers.py IMPL WORKLOAD [--port 0] [--selector NAME]

IMPL is one of :data:`IMPLS`; WORKLOAD is ``echo`` (LengthSepEcho: many
``<digits>\\n<body>`` requests per connection, each answered with the same
framing), ``body`` (LengthSepBody, the recipe's mode: one request per
connection, answered with the bare body, then the server closes) or
``json`` (jsocket 2.x ``JSN1`` messages, each echoed as the same object).
The server binds 127.0.0.1, prints ``listening on HOST:PORT`` once bound
and serves until SIGINT or SIGTERM.

Fairness. Every peer does the same work per request: the length line must
be digits, at most as many as the size limit has, and is checked against
the limit before the body is waited for (LengthSepFramer's rules); a JSON
message has its magic, length, CRC-32, UTF-8 and JSON checked and the reply
is encoded with the same compact encoder that ``evloop.protocols.jsonmsg`` uses.
The callback-style peers (asyncio ``Protocol``, uvloop, Twisted) write all
the replies to one read in one ``write``, as evloop does, so a pipelined
burst costs them one send too; the stream-style peers (asyncio streams,
``socketserver``) use their APIs the way their documentation shows, which
is one write per reply. Every peer turns Nagle's algorithm off, as evloop,
asyncio and uvloop do by default. Only jsocket runs as shipped (its
``ServerFactory``, a thread per client, ``listen(5)``, Nagle on and two
``send`` calls per reply, so a reply's payload waits for the client's
delayed ACK of its header).
"""

import argparse
import asyncio
import json
import logging
import os
import resource
import signal
import socketserver
import struct
import sys
import threading
import zlib

__all__ = [
    "IMPLS",
    "WORKLOADS",
    "BadRequestError",
    "encode_json",
    "main",
    "split_json",
    "split_lengthsep",
]

logger = logging.getLogger("evloop.bench")

IMPLS = [
    "evloop",
    "evloop-notimeouts",
    "asyncio-protocol",
    "asyncio-streams",
    "uvloop",
    "threading",
    "twisted",
    "jsocket",
]
WORKLOADS = ["echo", "body", "json"]

# LengthSepFramer's default limit, and so its digit limit.
MAX_SIZE = 1024 * 1024
MAX_DIGITS = len(str(MAX_SIZE))
# evloop.protocols.jsonmsg's (and jsocket's) limit and framing.
JSON_MAX_SIZE = 10 * 1024 * 1024
JSON_HEADER = struct.Struct("!4sII")
JSON_MAGIC = b"JSN1"
_encode_text = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_decode_text = json.JSONDecoder().decode


class BadRequestError(Exception):
    """The peer broke the protocol; the connection is closed."""


def split_lengthsep(buf: bytearray, length: int) -> tuple:
    """Cut the whole requests off the front of ``buf``. ``length`` is the body
    length still awaited from an earlier call (-1: none). Returns (bodies,
    length now awaited). Raises BadRequestError as LengthSepFramer would."""
    bodies = []
    while True:
        if length < 0:
            newline = buf.find(b"\n", 0, MAX_DIGITS + 1)
            if newline < 0:
                if len(buf) > MAX_DIGITS or (buf and not buf.isdigit()):
                    raise BadRequestError(f"bad length line {bytes(buf[: MAX_DIGITS + 1])!r}")
                return bodies, -1
            head = buf[:newline]
            if not head.isdigit():
                raise BadRequestError(f"bad length line {bytes(head)!r}")
            length = int(head)
            if length > MAX_SIZE:
                raise BadRequestError(f"length {length} over the limit")
            del buf[: newline + 1]
        if len(buf) < length:
            return bodies, length
        bodies.append(bytes(buf[:length]))
        del buf[:length]
        length = -1


def check_length_line(line: bytes) -> int:
    """The body length from a length line read by a stream API (with its \\n)."""
    head = line[:-1]
    if not line.endswith(b"\n") or not head.isdigit() or len(head) > MAX_DIGITS:
        raise BadRequestError(f"bad length line {line[: MAX_DIGITS + 1]!r}")
    length = int(head)
    if length > MAX_SIZE:
        raise BadRequestError(f"length {length} over the limit")
    return length


def check_json_header(header: bytes) -> tuple:
    magic, length, checksum = JSON_HEADER.unpack(header)
    if magic != JSON_MAGIC:
        raise BadRequestError(f"bad magic {magic!r}")
    if length > JSON_MAX_SIZE:
        raise BadRequestError(f"payload length {length} over the limit")
    return length, checksum


def decode_json(payload: bytes, checksum: int) -> object:
    if zlib.crc32(payload) != checksum:
        raise BadRequestError("checksum mismatch")
    try:
        return _decode_text(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadRequestError(f"bad payload: {exc}") from None


def split_json(buf: bytearray) -> list:
    """Cut the whole JSN1 messages off the front of ``buf``, decoded."""
    objects = []
    while len(buf) >= JSON_HEADER.size:
        length, checksum = check_json_header(bytes(buf[: JSON_HEADER.size]))
        end = JSON_HEADER.size + length
        if len(buf) < end:
            break
        payload = bytes(buf[JSON_HEADER.size : end])
        del buf[:end]
        objects.append(decode_json(payload, checksum))
    if buf and len(buf) < 4 and not JSON_MAGIC.startswith(bytes(buf)):
        raise BadRequestError(f"bad magic {bytes(buf)!r}")
    return objects


def encode_json(obj: object) -> bytes:
    payload = _encode_text(obj).encode("utf-8")
    return JSON_HEADER.pack(JSON_MAGIC, len(payload), zlib.crc32(payload)) + payload


def frame(body: bytes) -> bytes:
    return b"%d\n" % len(body) + body


# -- callback peers: asyncio Protocol, uvloop, Twisted share these --------------


class _CallbackLogic:
    """The per-read work of a callback-style peer; ``write`` and
    ``close`` are the transport's."""

    def __init__(self, workload: str) -> None:
        self.workload = workload
        self.buf = bytearray()
        self.length = -1
        self.done = False

    def received(self, data: bytes, write, close) -> None:
        if self.done:
            return
        buf = self.buf
        buf += data
        try:
            if self.workload == "json":
                replies = [encode_json(obj) for obj in split_json(buf)]
            else:
                bodies, self.length = split_lengthsep(buf, self.length)
                if self.workload == "body":
                    if bodies:
                        self.done = True
                        write(bodies[0])
                        close()
                    return
                replies = [b"%d\n" % len(body) + body for body in bodies]
        except BadRequestError as exc:
            logger.warning("closing a connection: %s", exc)
            self.done = True
            close()
            return
        if replies:
            write(replies[0] if len(replies) == 1 else b"".join(replies))


def asyncio_protocol_class(workload: str):
    class Peer(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.logic = _CallbackLogic(workload)
            self.write = transport.write
            self.close = transport.close

        def data_received(self, data):
            self.logic.received(data, self.write, self.close)

    return Peer


async def _serve_asyncio(protocol_factory, port, started):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol_factory, "127.0.0.1", port, backlog=1024)
    started(server.sockets[0].getsockname())
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.close()


def _streams_handler(workload: str):
    async def handle(reader, writer):
        try:
            if workload == "json":
                while True:
                    header = await reader.readexactly(JSON_HEADER.size)
                    length, checksum = check_json_header(header)
                    obj = decode_json(await reader.readexactly(length), checksum)
                    writer.write(encode_json(obj))
                    await writer.drain()
            while True:
                length = check_length_line(await reader.readuntil(b"\n"))
                body = await reader.readexactly(length)
                if workload == "body":
                    writer.write(body)
                    await writer.drain()
                    break
                writer.write(b"%d\n" % len(body) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except (BadRequestError, asyncio.LimitOverrunError) as exc:
            logger.warning("closing a connection: %s", exc)
        writer.close()

    return handle


async def _serve_streams(workload, port, started):
    loop = asyncio.get_running_loop()
    server = await asyncio.start_server(_streams_handler(workload), "127.0.0.1", port, backlog=1024)
    started(server.sockets[0].getsockname())
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.close()


# -- the implementations --------------------------------------------------------


def serve_evloop(workload, port, started, selector=None, limits=None):
    from evloop.protocols import LengthSepBody, LengthSepEcho

    from evloop import Server, loop

    if workload == "json":
        from evloop.protocols.jsonmsg import JsonEcho

        handler = JsonEcho
    else:
        handler = LengthSepEcho if workload == "echo" else LengthSepBody
    from evloop.limits import DEFAULT_LIMITS

    # The load generator's thousands of connections come from 8 loopback
    # addresses, and the peers measured have no per-address cap: off here.
    limits = (limits or DEFAULT_LIMITS).replace(max_connections_per_peer=None)
    server = Server("127.0.0.1", port, limits=limits)
    started(server.address)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    loop(server, handler, selector=selector)


def serve_evloop_notimeouts(workload, port, started, selector=None):
    """evloop with its per-connection timeouts off (the peers have none):
    what the idle, request and write timers cost."""
    from evloop.limits import DEFAULT_LIMITS

    limits = DEFAULT_LIMITS.replace(idle_timeout=None, request_timeout=None, write_timeout=None)
    serve_evloop(workload, port, started, selector, limits)


def serve_asyncio_protocol(workload, port, started, selector=None):
    factory = asyncio_protocol_class(workload)
    if selector in (None, "default"):
        event_loop = asyncio.new_event_loop()
    else:
        from evloop import make_selector

        event_loop = asyncio.SelectorEventLoop(make_selector(selector))
    event_loop.run_until_complete(_serve_asyncio(factory, port, started))


def serve_asyncio_streams(workload, port, started, selector=None):
    asyncio.new_event_loop().run_until_complete(_serve_streams(workload, port, started))


def serve_uvloop(workload, port, started, selector=None):
    import uvloop

    uvloop.new_event_loop().run_until_complete(
        _serve_asyncio(asyncio_protocol_class(workload), port, started)
    )


def serve_threading(workload, port, started, selector=None):
    class Handler(socketserver.StreamRequestHandler):
        # socketserver leaves Nagle on; evloop, asyncio and uvloop turn it off.
        disable_nagle_algorithm = True

        def handle(self):
            rfile, wfile = self.rfile, self.wfile
            try:
                if workload == "json":
                    while True:
                        header = rfile.read(JSON_HEADER.size)
                        if len(header) < JSON_HEADER.size:
                            return
                        length, checksum = check_json_header(header)
                        payload = rfile.read(length)
                        if len(payload) < length:
                            return
                        wfile.write(encode_json(decode_json(payload, checksum)))
                while True:
                    line = rfile.readline(MAX_DIGITS + 1)
                    if not line:
                        return
                    length = check_length_line(line)
                    body = rfile.read(length)
                    if len(body) < length:
                        return
                    if workload == "body":
                        wfile.write(body)
                        return
                    wfile.write(b"%d\n" % len(body) + body)
            except BadRequestError as exc:
                logger.warning("%s: closing the connection: %s", self.client_address, exc)
            except ConnectionError:
                pass

    class Threaded(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True
        request_queue_size = 1024
        block_on_close = False

    server = Threaded(("127.0.0.1", port), Handler)
    started(server.server_address)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    server.server_close()


def serve_twisted(workload, port, started, selector=None):
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import protocol, reactor

    class Peer(protocol.Protocol):
        def connectionMade(self):  # noqa: N802 (Twisted's name)
            # Twisted leaves Nagle on; evloop, asyncio and uvloop turn it off.
            self.transport.setTcpNoDelay(True)
            self.logic = _CallbackLogic(workload)
            self.write = self.transport.write
            self.close = self.transport.loseConnection

        def dataReceived(self, data):  # noqa: N802 (Twisted's name)
            self.logic.received(data, self.write, self.close)

    factory = protocol.Factory.forProtocol(Peer)
    listening = reactor.listenTCP(port, factory, backlog=1024, interface="127.0.0.1")
    host = listening.getHost()
    started((host.host, host.port))
    reactor.run()


def serve_jsocket(workload, port, started, selector=None):
    if workload != "json":
        raise SystemExit("jsocket only serves the json workload")
    import jsocket

    class Echo(jsocket.ServerFactoryThread):
        def _process_message(self, obj):
            return obj

    server = jsocket.ServerFactory(Echo, address="127.0.0.1", port=port)
    started(server.socket.getsockname())
    server.start()
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    stopped.wait()
    # ServerFactory.stop() joins every worker, each blocked in recv for up
    # to its timeout; the measurement is over, so leave at once.
    os._exit(0)


SERVE = {
    "evloop": serve_evloop,
    "evloop-notimeouts": serve_evloop_notimeouts,
    "asyncio-protocol": serve_asyncio_protocol,
    "asyncio-streams": serve_asyncio_streams,
    "uvloop": serve_uvloop,
    "threading": serve_threading,
    "twisted": serve_twisted,
    "jsocket": serve_jsocket,
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
    parser.add_argument("workload", choices=WORKLOADS)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--selector", default=None, help="evloop / asyncio-protocol: select, poll, epoll or default"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    raise_fd_limit()

    def started(address):
        print(f"listening on {address[0]}:{address[1]}", flush=True)

    SERVE[args.impl](args.workload, args.port, started, args.selector)


if __name__ == "__main__":
    # Run from anywhere: the project's packages sit one level up.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
