"""The command line's options: ``build_parser()`` and the types of its values.

:mod:`evloop.cli` parses ``sys.argv`` with this parser and acts on the
result; everything here only describes and checks what may be typed: each
option's help, its default, and a type function that turns a mistake into
one line (``evloop: error: ... (see python -m evloop serve --help)``).
"""

import argparse
import re
from typing import NoReturn

from . import __version__

__all__ = [
    "EXAMPLE",
    "OneLineParser",
    "build_parser",
    "byte_size",
    "host_and_port",
    "port_number",
    "positive_seconds",
]

EXAMPLE = """\
example:
  python -m evloop serve evloop.protocols:LengthSepEcho --port 8000
  printf '5\\nhello' | nc -q1 localhost 8000     # answers: 5\\nhello

(-q1: nc quits a second after its input ends; the echo keeps the
connection open for more requests.)

MODULE:HANDLER names a handler class: a module on the path (protocols,
myapp.handlers) or a file (examples/echo_lengthsep.py), then the class.
A WSGI application (Flask, Django) instead: --wsgi myapp:app --threads 8.
"""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (and exit status 2), like
    every other error of the command line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"evloop: error: {message} (see {self.prog} --help)\n")


def port_number(text: str) -> int:
    """argparse type for --port: an integer from 0 (pick one) to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range (0 to 65535)")
    return port


def positive_seconds(text: str) -> float:
    """argparse type for --stats: a number of seconds above zero."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not seconds > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, not {text}")
    return seconds


def host_and_port(text: str) -> "tuple[str, int]":
    """argparse type for --metrics: ``HOST:PORT`` (``[::1]:9100`` for IPv6)."""
    host, colon, port = text.rpartition(":")
    if not colon or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port_number(port)


def _add_wsgi_arguments(serve: argparse.ArgumentParser) -> None:
    wsgi = serve.add_argument_group("a WSGI application (PEP 3333), e.g. Flask or Django")
    wsgi.add_argument("--wsgi", metavar="MODULE:APP", help="serve this WSGI application instead of a handler")
    wsgi.add_argument(
        "--threads", type=int, metavar="N", help="threads the application runs in, per process (default: 8)"
    )
    wsgi.add_argument(
        "--websocket",
        action="append",
        default=[],
        metavar="PATH=MODULE:CLASS",
        help="answer PATH with this WebSocketHandler, before the application (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="evloop",
        description="Serve a protocol handler on a single-threaded event loop.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"evloop {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    serve = commands.add_parser(
        "serve",
        help="serve MODULE:HANDLER",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "handler", metavar="MODULE:HANDLER", nargs="?", help="the handler class to serve (or --wsgi)"
    )
    _add_wsgi_arguments(serve)
    where = serve.add_argument_group("where to listen")
    where.add_argument(
        "--host",
        default="localhost",
        help="address to bind (default: localhost; 0.0.0.0 or :: for every interface)",
    )
    where.add_argument(
        "--port", type=port_number, default=8000, help="TCP or UDP port (default: 8000; 0 picks one)"
    )
    where.add_argument("--unix", metavar="PATH", help="listen on a Unix socket at PATH instead")
    where.add_argument(
        "--systemd",
        action="store_true",
        help="serve the sockets systemd passed (socket activation: LISTEN_FDS) instead of binding",
    )
    where.add_argument(
        "--systemd-socket",
        action="append",
        default=[],
        metavar="NAME=MODULE:CLASS",
        help="serve the passed socket(s) named NAME (FileDescriptorName=) with this handler (repeatable)",
    )
    where.add_argument(
        "--udp", action="store_true", help="serve datagrams (the handler is a DatagramHandler)"
    )
    where.add_argument("--tls-cert", metavar="FILE", help="serve TLS with this certificate chain (PEM)")
    where.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    where.add_argument(
        "--proxy-protocol",
        action="append",
        metavar="CIDR",
        help="every client sends a PROXY protocol header (v1 or v2) first, from this trusted "
        "network only (repeatable; 'any': every source, only where a firewall keeps the port "
        "to the load balancers; a Unix socket's file permissions decide instead)",
    )
    how = serve.add_argument_group("how to run")
    how.add_argument(
        "--selector", default=None, help="select, poll, epoll, kqueue (default: the best this platform has)"
    )
    how.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes sharing one listening socket; SIGHUP to the supervisor reloads them "
        "with fresh code (default: 1)",
    )
    limits = serve.add_argument_group(
        "limits and timeouts",
        "per-connection bounds; see docs/security.md (seconds; 0 switches a timeout off)",
    )
    limits.add_argument(
        "--max-connections",
        type=int,
        metavar="N",
        help="connections held at once (default: from the descriptor limit)",
    )
    limits.add_argument(
        "--max-connections-per-peer",
        type=int,
        metavar="N",
        help="connections one client IP address holds at once; 0: no cap, behind a proxy (default: 256)",
    )
    limits.add_argument(
        "--max-request-size",
        type=int,
        metavar="BYTES",
        help="bytes one incomplete request may buffer (default: the protocol's own)",
    )
    limits.add_argument(
        "--max-clients-memory",
        type=byte_size,
        metavar="BYTES",
        help="bytes all clients may hold in buffers at once, e.g. 512mb; past it the biggest "
        "holders are closed first; 0: no budget (default: 1gb)",
    )
    for name, default in (("idle", 300), ("request", 60), ("write", 60), ("handshake", 10)):
        limits.add_argument(
            f"--{name}-timeout", type=float, metavar="SECONDS", help=f"{name} timeout (default: {default})"
        )
    limits.add_argument(
        "--shutdown-timeout",
        type=float,
        metavar="SECONDS",
        help="how long a graceful stop lets responses finish (default: 10)",
    )
    how.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error", "critical"])
    how.add_argument(
        "--no-access-log",
        action="store_true",
        help="do not write the HTTP access log (one Common Log Format line per request, to stderr)",
    )
    how.add_argument(
        "--http-parser",
        choices=["auto", "httptools", "h11"],
        help="the HTTP request parser (default: httptools when installed, else h11; sets EVLOOP_HTTP_PARSER)",
    )
    how.add_argument(
        "--stats",
        type=positive_seconds,
        metavar="SECONDS",
        help="log a one-line report (connections, requests/s, bytes, loop lag) this often",
    )
    how.add_argument(
        "--metrics",
        type=host_and_port,
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (every worker's, with --workers)",
    )
    return parser


_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2, "g": 1024**3, "gb": 1024**3}


def byte_size(text: str) -> int:
    """``"512mb"`` -> 536870912: a size as Redis's configuration writes it
    (k, kb, m, mb, g, gb: powers of 1024; any case)."""
    match = re.fullmatch(r"\s*(\d+)\s*([a-z]*)\s*", text.lower())
    if match is None or match.group(2) not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"not a size in bytes (such as 1048576, 512kb, 64mb, 1gb): {text!r}")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]
