"""TCP, UDP and Unix servers in the socketserver style, on one evloop loop.

    python examples/socketserver_style.py --port 9000 --unix /tmp/upper.sock
    printf 'hello\\n' | nc -q1 localhost 9000        # HELLO   (TCP)
    printf 'hello\\n' | nc -u -w1 localhost 9000     # HELLO   (UDP, same port number)
    printf 'hello\\n' | nc -q1 -U /tmp/upper.sock    # HELLO   (Unix stream)

Each server answers every line with the same line in capitals. The stream
servers (TCP and Unix) share one handler class and keep the connection for
the next line; the UDP server answers each datagram, line by line, in one
reply. What socketserver would spell ``TCPServer``, ``UDPServer`` and
``UnixStreamServer`` with ``serve_forever()`` in three threads is here three
servers on one loop in one thread, served by one ``serve_forever()``.
SIGTERM or Ctrl-C stops it; the Unix socket file is removed on the way out.
"""

import argparse
import logging
import os
import signal
import tempfile
from typing import Any, List, Optional, Tuple, Union

from evloop import ClientHandler, DatagramHandler, DatagramServer, EventLoop, Server, UnixServer


class UpperLines(ClientHandler):
    """socketserver's ``StreamRequestHandler`` with ``for line in
    self.rfile``: one request per line, many per connection."""

    close_when_done = False
    max_line = 64 * 1024

    def request_complete(self) -> Union[bool, int]:
        end: int = self.find(b"\n")  # resumes where the last search stopped
        if end < 0:
            if len(self.incoming) > self.max_line:
                self.send(b"line too long\n")
                self.close_when_sent()
            return False
        self.line = bytes(self.incoming[: end + 1])
        return end + 1  # the bytes this request used; the rest stays

    def make_response(self) -> bytes:
        return self.line.upper()


class UpperDatagram(DatagramHandler):
    """socketserver's ``DatagramRequestHandler``: one datagram in, one out."""

    def handle_datagram(self, data: bytes, address: Any) -> bytes:
        return data.upper()


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="localhost")
    parser.add_argument(
        "--port", type=int, default=9000, help="TCP port; UDP is served on the same number (0: any free one)"
    )
    parser.add_argument(
        "--unix",
        default=os.path.join(tempfile.gettempdir(), "evloop-upper.sock"),
        help="path of the Unix stream socket",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    try:
        tcp, udp = bind_tcp_and_udp(args.host, args.port)
        unix = UnixServer(args.unix)
    except OSError as exc:  # a port in use or not ours to bind: one line, not a traceback
        where = f"{args.host}:{args.port} or {args.unix}"
        parser.exit(2, f"{parser.prog}: error: cannot listen on {where}: {exc.strerror or exc}\n")
    with EventLoop() as loop, tcp, udp, unix:
        loop.add_server(tcp, UpperLines)
        loop.add_server(udp, UpperDatagram)
        loop.add_server(unix, UpperLines)
        # shutdown() is safe here: in the serving thread it only asks.
        signal.signal(signal.SIGTERM, lambda signum, frame: tcp.shutdown())
        print(f"udp on {udp.host}:{udp.port}", flush=True)
        print(f"unix on {os.fsdecode(unix.path)}", flush=True)
        print(f"listening on {tcp.host}:{tcp.port}", flush=True)
        try:
            tcp.serve_forever()  # runs the loop: all three servers are served
        except KeyboardInterrupt:
            pass
    print("stopped", flush=True)


def bind_tcp_and_udp(host: str, port: int, attempts: int = 20) -> Tuple[Server, DatagramServer]:
    """A TCP listener and a UDP socket on the same port number. With port 0
    the system picks the TCP port; if that number is taken for UDP, try
    another."""
    for _ in range(attempts if port == 0 else 1):
        tcp = Server(host, port)
        try:
            return tcp, DatagramServer(host, tcp.port)
        except OSError:
            tcp.server_close()
            if port != 0:
                raise
    raise OSError(f"no port number free for both TCP and UDP after {attempts} tries")


if __name__ == "__main__":
    main()
