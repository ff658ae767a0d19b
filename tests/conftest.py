"""Fixtures shared by the whole suite: a loop per selector backend, served
in a background thread, and plain blocking clients on 127.0.0.1."""

import selectors
import signal
import socket
import threading

import pytest

from evloop import EventLoop, Server

# A background job of a non-interactive shell (`pytest &`, nohup, some CI
# runners) starts with SIGINT ignored, and an ignored signal stays ignored
# across exec: the servers the tests stop with Ctrl-C (SIGINT) would never
# hear it. A handled signal is reset to the default on exec, so putting
# Python's own handler back here gives every child process a working Ctrl-C.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# The suite runs against select() and the platform's best selector.
SELECTOR_BACKENDS = ["select", "default"]


@pytest.fixture(params=SELECTOR_BACKENDS)
def selector_name(request):
    return request.param


class RunningLoop:
    """An EventLoop served by a background thread for the length of a test."""

    def __init__(self, selector=None):
        self.loop = EventLoop(selector)
        self.thread = None

    def serve(self, handler_class, host="127.0.0.1", **server_options):
        server = Server(host, 0, **server_options)
        self.call(self.loop.add_server, server, handler_class)
        return server

    def call(self, function, *args):
        """Run function(*args) on the loop's thread and return its result."""
        if self.thread is None:
            return function(*args)
        done = threading.Event()
        box = {}

        def run():
            try:
                box["value"] = function(*args)
            except BaseException as exc:  # handed back to the test thread
                box["error"] = exc
            finally:
                done.set()

        self.loop.call_soon_threadsafe(run)
        assert done.wait(10), "the loop did not run the call"
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def start(self):
        self.thread = threading.Thread(target=self.loop.run, name="evloop-test", daemon=True)
        self.thread.start()
        return self

    def stop(self):
        if self.thread is not None:
            self.loop.stop()
            self.thread.join(10)
            assert not self.thread.is_alive(), "the loop did not stop"
            self.thread = None
        self.loop.close()


@pytest.fixture
def running_loop(selector_name):
    """A started loop; serve(...) handlers on it with .serve()."""
    selector = None if selector_name == "default" else selector_name
    holder = RunningLoop(selector)
    holder.start()
    yield holder
    holder.stop()


def connect(server, timeout=10):
    sock = socket.create_connection((server.host, server.port), timeout=timeout)
    return sock


def recv_exactly(sock, count):
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise EOFError(f"connection closed after {len(data)} of {count} bytes")
        data += chunk
    return bytes(data)


def recv_all(sock):
    """Everything until the server closes."""
    data = bytearray()
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return bytes(data)
        data += chunk


__all__ = ["HTTP_PARSERS", "connect", "recv_all", "recv_exactly", "selectors"]


# The HTTP suites run once per request parser (evloop.protocols.http_parser).
HTTP_PARSERS = ["h11", "httptools"]


@pytest.fixture(params=HTTP_PARSERS)
def http_parser(request, monkeypatch):
    """The parser every HTTPHandler uses in this test (the environment
    variable the handler reads); skips when the library is missing."""
    pytest.importorskip(request.param)
    monkeypatch.setenv("EVLOOP_HTTP_PARSER", request.param)
    return request.param
