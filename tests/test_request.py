"""RequestHandler and do_request: the yoton wire, in memory and on sockets.

do_request is tried against our RequestHandler, against a plain
socketserver line server (a peer that knows nothing of evloop), and against
a server that never answers (None once the timeout has run out)."""

import re
import socket
import socketserver
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from evloop.protocols import RequestHandler, do_request, split_address
from hypothesis import given, settings
from hypothesis import strategies as st

from evloop.testing import HandlerHarness
from tests.conftest import connect, recv_all
from tests.examples import running_example
from tests.helpers import assert_handler_every_split


class Shout(RequestHandler):
    def handle_request(self, request):
        if request == "bad type":
            return 42
        if request == "two lines":
            return "one\r\ntwo"
        return request.upper()


# -- the handler, in memory -----------------------------------------------------------


def test_one_request_one_reply_then_close_in_every_split():
    assert_handler_every_split(RequestHandler, b"hello\r\n", b"Requested: hello\r\n", closed=True)


def test_the_request_ends_at_end_of_stream_too():
    assert_handler_every_split(
        RequestHandler, b"no line end", b"Requested: no line end\r\n", closed=True, eof=True
    )


def test_only_the_first_request_is_answered():
    assert_handler_every_split(Shout, b"first\r\nsecond\r\n", b"FIRST\r\n", closed=True)


def test_utf8_both_ways():
    harness = HandlerHarness(Shout)
    assert harness.feed("gr\u00fc\u00dfe \u2713\r\n".encode()) == "GR\u00dcSSE \u2713\r\n".encode()


def test_an_empty_request_gets_a_reply():
    assert HandlerHarness(RequestHandler).feed(b"\r\n") == b"Requested: \r\n"


def test_a_peer_that_sends_nothing_gets_nothing():
    harness = HandlerHarness(RequestHandler)
    assert harness.feed_eof() == b""
    assert harness.closed


def test_bad_utf8_gets_an_error_reply_and_a_warning(caplog):
    harness = HandlerHarness(RequestHandler, peer=("192.0.2.1", 1234))
    assert harness.feed(b"caf\xe9\r\n") == b"ERROR request is not UTF-8\r\n"
    assert harness.closed
    assert "192.0.2.1:1234" in caplog.text and "not UTF-8" in caplog.text


def test_too_long_request_gets_an_error_reply_and_a_warning(caplog):
    class Small(RequestHandler):
        max_size = 16

    harness = HandlerHarness(Small, peer=("192.0.2.2", 99))
    assert harness.feed(b"x" * 17) == b"ERROR request too long\r\n"
    assert harness.closed
    assert "192.0.2.2:99" in caplog.text and "longer than 16 bytes" in caplog.text


@pytest.mark.parametrize("request_text", ["bad type", "two lines"])
def test_a_reply_the_wire_cannot_carry_is_logged_as_our_bug(request_text, caplog):
    harness = HandlerHarness(Shout, peer=("192.0.2.3", 7))
    assert harness.feed(request_text.encode() + b"\r\n") == b""
    assert harness.closed
    assert "192.0.2.3:7" in caplog.text and "LocalProtocolError" in caplog.text


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=60), st.integers(min_value=1, max_value=59))
def test_property_any_bytes_get_one_reply_or_an_error_reply(data, cut):
    """Whatever a peer sends, it gets exactly one reply line (a real one or
    an ERROR line) and the close, never a crash, and the split point of
    the reads changes nothing."""

    class Small(RequestHandler):
        max_size = 20

    whole = HandlerHarness(Small)
    whole.feed(data)
    whole.feed_eof()
    split = HandlerHarness(Small)
    split.feed(data[:cut])
    split.feed(data[cut:])
    split.feed_eof()
    assert whole.output == split.output
    assert whole.closed and split.closed
    if data:
        assert whole.output.endswith(b"\r\n") and whole.output.count(b"\r\n") == 1
        assert whole.output.startswith((b"Requested: ", b"ERROR "))


# -- split_address ----------------------------------------------------------------------


def test_split_address_names():
    assert split_address("localhost:8000") == ("localhost", 8000)
    assert split_address("LocalHost:1") == ("localhost", 1)
    assert split_address("127.0.0.1:80") == ("127.0.0.1", 80)
    assert split_address("[::1]:8000") == ("::1", 8000)
    assert split_address("example.org:0") == ("example.org", 0)
    assert split_address("publichost:8000") == (socket.gethostname(), 8000)
    assert split_address("publichost:8000", server=True) == ("", 8000)


@pytest.mark.parametrize(
    "bad", ["8000", "localhost", "localhost:", ":8000", "h:http", "h:70000", "h:-1", "h:\u0661"]
)
def test_split_address_refuses_what_is_not_host_port(bad):
    with pytest.raises(ValueError):
        split_address(bad)


def test_do_request_refuses_a_request_that_is_not_text():
    with pytest.raises(TypeError):
        do_request("localhost:1", b"bytes")


# -- do_request on real sockets -----------------------------------------------------------


def test_do_request_against_our_request_handler(running_loop):
    server = running_loop.serve(Shout)
    address = f"127.0.0.1:{server.port}"
    assert do_request(address, "hello") == "HELLO"
    assert do_request(address, "already ended\r\n", timeout=10) == "ALREADY ENDED"
    assert do_request(address, "gr\u00fc\u00dfe") == "GR\u00dcSSE"
    assert do_request(address, "") == ""
    assert do_request(f"localhost:{server.port}", "by name", 10) == "BY NAME"


def test_do_request_many_clients_at_once(running_loop):
    server = running_loop.serve(RequestHandler)
    address = f"127.0.0.1:{server.port}"
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda i: do_request(address, f"r{i}", 10), range(200)))
    assert replies == [f"Requested: r{i}" for i in range(200)]


def test_do_request_gets_the_error_reply_of_an_overlong_request(running_loop):
    class Small(RequestHandler):
        max_size = 100

    server = running_loop.serve(Small)
    assert do_request(f"127.0.0.1:{server.port}", "x" * 5000, 10) == "ERROR request too long"


class _PlainLineServer(socketserver.ThreadingTCPServer):
    """A line server from the standard library: reads one line, answers, closes."""

    daemon_threads = True
    allow_reuse_address = True


class _PlainLineHandler(socketserver.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline(1024)
        text = line.decode().rstrip("\r\n")
        if text == "two lines":
            self.wfile.write(b"first\r\nsecond\r\n")
        elif text == "no crlf":
            self.wfile.write(b"ends with a bare newline\n")
        else:
            self.wfile.write(b"plain: " + text[::-1].encode() + b"\r\n")


@pytest.fixture
def plain_line_server():
    server = _PlainLineServer(("127.0.0.1", 0), _PlainLineHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_do_request_against_a_plain_line_server(plain_line_server):
    assert do_request(plain_line_server, "hello", 10) == "plain: olleh"
    # The reply ends at its first CRLF, as on yoton's wire.
    assert do_request(plain_line_server, "two lines", 10) == "first"
    # A reply ended by the close loses its final newline.
    assert do_request(plain_line_server, "no crlf", 10) == "ends with a bare newline"


def test_a_plain_client_talks_to_our_request_handler(running_loop):
    """The other direction: socket calls a yoton or telnet user would make."""
    server = running_loop.serve(Shout)
    with connect(server) as sock:
        sock.sendall(b"no shutdown needed\r\n")
        assert recv_all(sock) == b"NO SHUTDOWN NEEDED\r\n"
    with connect(server) as sock:
        sock.sendall(b"ended by shutdown")
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"ENDED BY SHUTDOWN\r\n"


def test_do_request_returns_none_after_the_timeout():
    """A server that accepts (the kernel does, from the backlog) but never
    answers: do_request gives up after its timeout and returns None."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        assert do_request(address, "anyone there?", timeout=0.3) is None
        elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 5


def test_the_timeout_covers_a_reply_that_never_ends():
    """A server that sends half a reply line and stalls: still None in time."""
    finished = threading.Event()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def stall():
            conn, _ = listener.accept()
            with conn:
                conn.recv(100)
                conn.sendall(b"half a reply without its line end")
                finished.wait(10)

        thread = threading.Thread(target=stall, daemon=True)
        thread.start()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        assert do_request(address, "x", timeout=0.3) is None
        finished.set()
        thread.join(10)


def test_do_request_when_nobody_listens_raises():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        do_request(f"127.0.0.1:{port}", "hello", 5)


def test_publichost_serves_every_interface_and_is_reachable_by_name(running_loop):
    try:
        socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    except OSError:
        pytest.skip("this machine's name does not resolve")
    host, _ = split_address("publichost:0", server=True)
    server = running_loop.serve(Shout, host=host)
    assert server.host == "0.0.0.0"
    assert do_request(f"publichost:{server.port}", "from afar", 10) == "FROM AFAR"


def test_an_executor_keeps_a_slow_request_from_blocking_others(running_loop):
    """yoton's async option: the slow request waits until a fast one, sent
    after it, has been answered; on the loop's thread that would deadlock."""
    fast_done = threading.Event()

    class Slow(RequestHandler):
        executor = ThreadPoolExecutor(2)

        def handle_request(self, request):
            if request == "slow":
                assert fast_done.wait(10), "the fast request was held up"
                return "slow done"
            return "fast done"

    server = running_loop.serve(Slow)
    address = f"127.0.0.1:{server.port}"
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(do_request, address, "slow", 10)
        assert do_request(address, "fast", 10) == "fast done"
        fast_done.set()
        assert slow.result(10) == "slow done"
    Slow.executor.shutdown()


def test_do_request_refuses_an_endless_reply_line(running_loop):
    class Flood(RequestHandler):
        def handle_request(self, request):
            return "y" * 3000

    server = running_loop.serve(Flood)
    with pytest.raises(Exception, match="longer than 1000 bytes"):
        do_request(f"127.0.0.1:{server.port}", "x", 10, max_size=1000)


# -- the example and the docs -------------------------------------------------------


def test_request_server_example():
    with running_example("request_server.py") as (host, port, _):
        assert do_request(f"{host}:{port}", "hello", 10) == "Requested: hello"
        reply = do_request(f"{host}:{port}", "time", 10)
        assert re.fullmatch(r"The current time is \d+", reply)
        assert abs(int(reply.split()[-1]) - time.time()) < 60


def test_request_server_example_threads_and_publichost():
    with running_example("request_server.py", "--threads", "2", "--host", "publichost") as (host, port, _):
        assert host == "0.0.0.0"
        assert do_request(f"127.0.0.1:{port}", "threaded", 10) == "Requested: threaded"
