"""A user's program, typed as a newcomer would write it from the docs: strict
mypy must accept it (tools/check_types.py; .ci/run's lint step). It is
type-checked, not run."""

from concurrent.futures import Future
from typing import List, Optional

from evloop.protocols import LengthSepEcho, LineHandler

from evloop import (
    ClientHandler,
    EventLoop,
    LoopStats,
    LoopThread,
    ProxyHeader,
    ProxyProtocol,
    Server,
    loop,
    open_connection,
)


class Upper(LineHandler):
    def handle_line(self, line: bytes) -> bytes:
        return line.upper()


class Lengths(LineHandler):
    def make_response(self) -> "Future[int]":
        return self.offload(len, self.request)


class Greeter(ClientHandler):
    greeting: Optional[bytes] = None

    def setup(self) -> None:
        self.send(b"hello\n")


class Proxied(ClientHandler):
    def setup(self) -> None:
        header: Optional[ProxyHeader] = self.proxy_header
        if header is not None and header.authority is not None:
            self.send(f"{self.peer} asked for {header.authority} over {header.ssl_version}\n")


def behind_a_balancer() -> Server:
    return Server("0.0.0.0", 9000, proxy_protocol=ProxyProtocol(trusted=["10.0.0.0/8", "::1"]))


def counters(event_loop: EventLoop) -> List[int]:
    stats: LoopStats = event_loop.stats()
    return [stats.connections, stats.requests, stats.bytes_received, stats.bytes_sent]


def background() -> int:
    with LoopThread() as thread:
        server: Server = thread.add_server(Server("127.0.0.1", 0), LengthSepEcho)
        port: int = thread.call(lambda: server.port)
        greeter: Greeter = thread.call(open_connection, thread.loop, "127.0.0.1", port, Greeter)
        return port if greeter.greeting is None else 0


def main() -> None:
    event_loop = EventLoop("select")
    greeter: Greeter = open_connection(event_loop, "localhost", 8000, Greeter, timeout=5.0)
    greeter.close_when_sent()
    event_loop.close()
    loop(Server("localhost", 8000), Upper, timeout=None, default_logging=False)


if __name__ == "__main__":
    main()
