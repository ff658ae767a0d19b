"""A TCP proxy: every client gets its own connection to the target, and the
bytes flow both ways, from one thread. The loop is a server and a client at
once.

    python examples/echo_lengthsep.py --persistent --port 8000
    python examples/tcp_proxy.py --port 9000 --target localhost:8000
    printf '5\\nhello' | nc -q1 localhost 9000    # prints: 5 hello (via the proxy)

Both halves are the same ``Relay`` handler: what one side reads, the other
sends. A half-close is passed on (the client's end of stream becomes the
target's), and the connection closes once both directions have ended or
either side has gone. A side whose partner has more than ``write_high_water``
bytes unsent stops reading until they drain, so a fast sender cannot make
the proxy buffer without bound.
"""

import argparse
import logging
from typing import List, Optional, Tuple

from evloop import ClientHandler, Server, loop, open_connection, shutdown_write_when_sent


class Relay(ClientHandler):
    """One side of a proxied connection; ``partner`` is the other side."""

    close_when_done = False
    # What may wait for one side before the other is paused; the engine
    # calls resume_writing() once it is down to the low mark. Reading this
    # side feeds the other side's output, not ours: our backlog must not
    # stop our reading (it would deadlock two busy directions).
    write_high_water = 256 * 1024
    write_low_water = 128 * 1024
    backlog_stops_reading = False

    partner: "Relay"  # the Relay on the other socket (set before any data flows)
    ended = False  # this side's peer has sent end of stream
    paused_partner = False  # we paused the partner's reading

    def data_received(self, data: bytes) -> None:
        partner = self.partner
        if not partner.send(data) and not partner.closed:
            # The partner's client reads slower than ours sends: stop reading
            # ours until the partner's backlog drains (resume_writing).
            partner.paused_partner = True
            self.pause_reading()

    def eof_received(self) -> bool:
        self.ended = True
        shutdown_write_when_sent(self.partner)
        if self.partner.ended:
            self.close_when_sent()
            self.partner.close_when_sent()
        return True  # stay open: the other direction may still be talking

    def resume_writing(self) -> None:
        # Our backlog drained to the low mark: the side that feeds us may read again.
        if self.paused_partner:
            self.paused_partner = False
            if not self.partner.closed:
                self.partner.resume_reading()

    def finish(self) -> None:
        # One side is gone (closed, reset, failed to connect): the other
        # gets what is already queued for it, then its close.
        partner = getattr(self, "partner", None)
        if partner is not None and not partner.closed:
            partner.close_when_sent()


class ProxyClient(Relay):
    """The side a client connected to; it opens the side to the target."""

    def setup(self) -> None:
        server: ProxyServer = self.server
        host, port = server.target
        upstream = open_connection(self.loop, host, port, Relay, timeout=server.connect_timeout)
        upstream.partner = self
        self.partner = upstream


class ProxyServer(Server):
    """A Server that knows where its clients are to be forwarded."""

    def __init__(self, host: str, port: int, target: Tuple[str, int], connect_timeout: float) -> None:
        super().__init__(host, port)
        self.target = target
        self.connect_timeout = connect_timeout


def parse_target(text: str) -> Tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    return host.strip("[]") or "localhost", int(port)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--target", type=parse_target, required=True, help="HOST:PORT to forward to")
    parser.add_argument("--connect-timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        server = ProxyServer(args.host, args.port, args.target, args.connect_timeout)
    except OSError as exc:  # a port in use or not ours to bind: one line, not a traceback
        parser.exit(
            2, f"{parser.prog}: error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}\n"
        )
    print(f"listening on {server.host}:{server.port}", flush=True)
    loop(server, ProxyClient)


if __name__ == "__main__":
    main()
