"""What the hostile suite attacks: every framer and every server handler the
project has, with a well-formed request for each and, for framers, input
each wire format forbids. ``test_every_target_is_listed`` fails when a new
framer or handler appears in ``protocols/`` without being added here."""

import importlib
import importlib.util
import inspect
import pkgutil
import struct
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List

import evloop.protocols
from evloop.protocols import (
    Int32Echo,
    Int32Framer,
    JsonEcho,
    JsonFramer,
    LengthSepBody,
    LengthSepEcho,
    LengthSepFramer,
    LineEcho,
    LineFramer,
    NetstringEcho,
    NetstringFramer,
    RequestHandler,
    RespFramer,
    encode_command,
)
from evloop.protocols.framing import Framer

from evloop import ClientHandler

ROOT = Path(__file__).resolve().parents[2]

_JSON_HEADER = struct.Struct("!4sII")


def json_message(payload, magic=b"JSN1", checksum=None):
    crc = zlib.crc32(payload) if checksum is None else checksum
    return _JSON_HEADER.pack(magic, len(payload), crc) + payload


def frame(body):
    return b"%d\n" % len(body) + body


@dataclass
class FramerCase:
    """One framer: how to make it with a small limit, a valid stream, a
    valid encoding of a message of n bytes, and malformed streams."""

    name: str
    make: Callable[[int], Framer]
    good: bytes
    big: Callable[[int], bytes]
    malformed: List[bytes] = field(default_factory=list)


FRAMERS = [
    FramerCase(
        "lengthsep",
        LengthSepFramer,
        frame(b"hello") + frame(b""),
        lambda n: frame(b"x" * n),
        [b"-1\n", b"abc\nxyz", b" 5\nhello", b"\n", b"5\r\nhello", b"99999999999\n"],
    ),
    FramerCase(
        "int32",
        Int32Framer,
        struct.pack("!I", 5) + b"hello",
        lambda n: struct.pack("!I", n) + b"x" * n,
        [b"\xff\xff\xff\xff", b"\x00\x00\x10\x00"],
    ),
    FramerCase(
        "netstring",
        NetstringFramer,
        b"5:hello,0:,",
        lambda n: b"%d:%s," % (n, b"x" * n),
        [b"5:hello!", b"05:hello,", b"-1:", b"x:", b":", b"5 :hello,", b"1:a1:b,"],
    ),
    FramerCase(
        "json",
        JsonFramer,
        json_message(b'{"a": [1, 2]}') + json_message(b'"x"'),
        lambda n: json_message(b'"' + b"x" * n + b'"'),
        [
            json_message(b'{"a":1}', magic=b"JSN2"),
            json_message(b'{"a":1}', checksum=1),
            json_message(b"\xff\xfe"),
            json_message(b"{nope"),
            json_message(b""),
            _JSON_HEADER.pack(b"JSN1", 1 << 31, 0),
        ],
    ),
    FramerCase("lines", LineFramer, b"hello\r\n\r\nworld\r\n", lambda n: b"x" * n + b"\r\n", []),
    # RESP has a second bound, on one line (an inline command or a header):
    # here as small as the payload's. Its charge per argument is off, so the
    # limit is in bytes as for the others (test_resp_arguments.py tests it).
    FramerCase(
        "resp",
        lambda n: RespFramer(n, max_line=n, argument_cost=0),
        encode_command(b"SET", b"k", b"v") + b"PING\r\n",
        lambda n: encode_command(b"SET", b"k", b"x" * n),
        [
            b"*x\r\n",
            b"*1\r\n$x\r\n",
            b"*1\r\n+foo\r\n",
            b"*1\r\n$3\r\nfooXY",
            b'"unbalanced\r\n',
            b"*1\r\n$-1\r\n",
            b"*99999999999\r\n",
        ],
    ),
]


# -- servers ---------------------------------------------------------------------


def load_example(name):
    """Import ``examples/<name>.py`` as a module (the examples are scripts)."""
    module_name = f"evloop_example_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class ServerCase:
    """One server: its handler class, a request it answers, and a test of
    the answer (bytes it must start with)."""

    name: str
    handler: Any
    request: bytes
    answer: bytes
    persistent: bool = True  # many requests per connection
    prepare: Any = None  # prepare(server): what the handler needs of it

    def make_server(self, *args, **options):
        """A Server for this case (options as for Server)."""
        from evloop import Server

        server = Server(*args, **options)
        if self.prepare is not None:
            self.prepare(server)
        return server


def http_handler():
    from evloop.protocols.http import HTTPHandler

    class Hello(HTTPHandler):
        routes = {"/": lambda request: "hello"}

    return Hello


def wsgi_handler():
    from evloop.protocols.wsgi import wsgi_handler as make

    def hello(environ, start_response):
        environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello"]

    return make(hello, threads=2)


def websocket_handler():
    return load_example("websocket_echo").make_handler(1024 * 1024)


def server_cases():
    """Every kind of server the project ships, each with a handler class."""
    miniredis = load_example("miniredis")
    cases = [
        ServerCase("lengthsep-body", LengthSepBody, frame(b"hi"), b"hi", persistent=False),
        ServerCase("lengthsep-echo", LengthSepEcho, frame(b"hi"), frame(b"hi")),
        ServerCase("int32", Int32Echo, struct.pack("!I", 2) + b"hi", struct.pack("!I", 2) + b"hi"),
        ServerCase("netstring", NetstringEcho, b"2:hi,", b"2:hi,"),
        ServerCase("json", JsonEcho, json_message(b'{"a":1}'), b"JSN1"),
        ServerCase("lines", LineEcho, b"hi\r\n", b"hi\r\n"),
        ServerCase("request", RequestHandler, b"hi\r\n", b"Requested: hi", persistent=False),
        ServerCase(
            "resp",
            miniredis.MiniRedisHandler,
            encode_command(b"PING"),
            b"+PONG\r\n",
            prepare=lambda server: setattr(server, "database", miniredis.Database()),
        ),
        ServerCase("http", http_handler(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 200 "),
        ServerCase(
            "websocket",
            websocket_handler(),
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            b"HTTP/1.1 101 ",
            persistent=False,
        ),
        ServerCase("recipe", load_example("socketserver_style").UpperLines, b"hi\n", b"HI\n"),
        ServerCase("wsgi", wsgi_handler(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 200 "),
    ]
    return cases


# Handler classes in protocols/ that need no server of their own here, and why.
NOT_SERVERS = {
    "FramedHandler": "abstract: no framer_class",
    "Int32Handler": "abstract: served as Int32Echo",
    "NetstringHandler": "abstract: served as NetstringEcho",
    "JsonHandler": "abstract: served as JsonEcho",
    "LineHandler": "abstract: served as LineEcho",
    "HTTPHandler": "served with a route (the http and websocket cases)",
}


def protocol_classes(base):
    """Every subclass of ``base`` defined in a module of ``protocols``."""
    found = {}
    for info in pkgutil.iter_modules(evloop.protocols.__path__):
        try:
            module = importlib.import_module(f"evloop.protocols.{info.name}")
        except ImportError:  # an optional extra that is not installed
            continue
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, base)
                and value is not base
                and value.__module__ == module.__name__
            ):
                found[name] = value
    return found


def framer_classes():
    return protocol_classes(Framer)


def handler_classes():
    return protocol_classes(ClientHandler)


# -- servers whose small requests get large replies (tests/hostile/test_amplification.py)

BIG_REPLY = 16 * 1024


class BigReplies(ClientHandler):
    """A recipe handler: each line ``N\\n`` is answered with 16 KiB that
    start with ``N``, so a client can check every reply and its order."""

    close_when_done = False

    def request_complete(self):
        end = self.find(b"\n")
        return end + 1 if end >= 0 else False

    def make_response(self):
        number = bytes(self.incoming[: self.find(b"\n")])
        return big_reply(number)


def big_reply(number):
    head = number + b":"
    return head + b"x" * (BIG_REPLY - len(head))


def big_http_handler():
    from evloop.protocols.http import HTTPHandler

    def page(request):
        return big_reply(request.query.encode())

    class BigPages(HTTPHandler):
        routes = {"/big": page}

    return BigPages


def amplification_cases():
    """Servers that answer a small request with 16 KiB."""
    miniredis = load_example("miniredis")

    def big_database(server):
        server.database = miniredis.Database()
        for number in range(64):
            server.database.execute_many([[b"SET", b"k%d" % number, big_reply(b"%d" % number)]])

    return [
        ServerCase("big-recipe", BigReplies, b"7\n", b"7:"),
        ServerCase(
            "big-resp",
            miniredis.MiniRedisHandler,
            encode_command(b"GET", b"k7"),
            b"$16384\r\n7:",
            prepare=big_database,
        ),
        ServerCase(
            "big-http", big_http_handler(), b"GET /big?7 HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 200 "
        ),
    ]
