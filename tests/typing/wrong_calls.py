"""Calls a user's type checker must refuse: tools/check_types.py runs strict
mypy here and expects an error on each line marked ``# wrong`` and on no
other line."""

from concurrent.futures import Future

from evloop.protocols import LineHandler

from evloop import EventLoop, ProxyProtocol, Server, loop, open_connection


class Upper(LineHandler):
    def handle_line(self, line: bytes) -> bytes:
        return line.upper()


def calls(event_loop: EventLoop, handler: Upper) -> None:
    loop(Server("localhost", 8000), "Upper")  # wrong: a class, not its name
    loop("localhost:8000", Upper)  # wrong: a Server, not an address
    Server("localhost", "8000")  # wrong: the port is an int
    as_text: Future[str] = handler.offload(len, b"abc")  # wrong: offload(len) is a Future[int]
    open_connection(event_loop, "localhost", 8000, Upper).no_such_method()  # wrong: an Upper has none
    event_loop.stats().requests = 0  # wrong: a snapshot is frozen
    event_loop.call_later("soon", print)  # wrong: the delay is in seconds
    Server("localhost", 9000, proxy_protocol=["10.0.0.0/8"])  # wrong: a ProxyProtocol, not its networks
    ProxyProtocol(trusted=["10.0.0.0/8"]).trusted = ()  # wrong: the setting is frozen
    print(as_text)
