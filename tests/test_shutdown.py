"""Graceful shutdown: stop(graceful=True) on a running loop, and SIGTERM /
SIGINT to a real server process. Stop accepting, finish what is in flight,
cut the rest at the deadline, say how many of each."""

import logging
import queue
import signal
import socket
import sys
import threading
import time
from concurrent.futures import Future

import pytest
from evloop.protocols import LengthSepEcho
from evloop.protocols.http import HTTPHandler

from evloop import EventLoop, Server
from evloop.limits import Limits
from tests.conftest import RunningLoop, connect, recv_all, recv_exactly
from tests.examples import running_example
from tests.waiting import wait_on_loop

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def frame(body):
    return b"%d\n" % len(body) + body


class SlowOnRequest(LengthSepEcho):
    """``slow`` is answered with a future the test completes."""

    futures = queue.Queue()

    def make_response(self):
        if self.request == b"slow":
            future = Future()
            self.futures.put(future)
            return future
        return super().make_response()


@pytest.fixture
def shutting_loop(selector_name):
    holder = RunningLoop(None if selector_name == "default" else selector_name)
    holder.start()
    yield holder
    holder.stop()


def test_graceful_stop_finishes_in_flight_work_and_cuts_the_rest(shutting_loop, caplog):
    caplog.set_level(logging.INFO, logger="evloop")
    loop = shutting_loop.loop
    server = shutting_loop.serve(SlowOnRequest)
    idle, slow, partial, stuck = (connect(server) for _ in range(4))
    try:
        idle.sendall(frame(b"hi"))
        assert recv_exactly(idle, 4) == frame(b"hi")  # served, now idle
        slow.sendall(frame(b"slow"))  # its reply is being made
        future = SlowOnRequest.futures.get(timeout=10)
        partial.sendall(b"5\nab")  # half a request each
        stuck.sendall(b"9\nab")
        assert wait_on_loop(shutting_loop, lambda: sum(h.pending_input() for h in loop.handlers) == 4)

        started = time.monotonic()
        loop.stop(graceful=True, timeout=1.0)
        assert recv_all(idle) == b""  # nothing in flight: closed now
        with pytest.raises(ConnectionRefusedError):  # and nothing new is accepted
            socket.create_connection((server.host, server.port), timeout=10).close()
        partial.sendall(b"cde")  # its request completes: answered
        assert recv_all(partial) == frame(b"abcde")
        future.set_result(b"done late")  # its reply goes out
        assert recv_all(slow) == b"done late"
        assert recv_all(stuck) == b""  # cut at the deadline
        shutting_loop.thread.join(10)
        assert not shutting_loop.thread.is_alive(), "run() returned by itself"
        assert 1.0 <= time.monotonic() - started < 5
    finally:
        for sock in (idle, slow, partial, stuck):
            sock.close()
    summary = loop.last_shutdown
    assert (summary["idle"], summary["finished"], summary["cut"]) == (1, 2, 1)
    lines = [r for r in caplog.records if "graceful shutdown done" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING  # something was cut
    assert "1 idle connections closed, 2 finished, 1 cut at the 1s deadline" in lines[0].getMessage()


def test_graceful_stop_with_nothing_open_returns_at_once(shutting_loop, caplog):
    caplog.set_level(logging.INFO, logger="evloop")
    server = shutting_loop.serve(LengthSepEcho)
    with connect(server) as sock:
        sock.sendall(frame(b"x"))
        recv_exactly(sock, 3)
    shutting_loop.loop.stop(graceful=True)
    shutting_loop.thread.join(10)
    assert not shutting_loop.thread.is_alive()
    summary = shutting_loop.loop.last_shutdown
    assert summary["cut"] == 0 and summary["seconds"] < 5


def test_the_deadline_comes_from_the_servers_limits(shutting_loop):
    server = shutting_loop.serve(LengthSepEcho, limits=Limits(shutdown_timeout=0.2))
    with connect(server) as stuck:
        stuck.sendall(b"9\nab")
        assert wait_on_loop(
            shutting_loop,
            lambda: (
                len(shutting_loop.loop.handlers) == 1
                and any(h.pending_input() for h in shutting_loop.loop.handlers)
            ),
        )
        shutting_loop.loop.stop(graceful=True)
        assert recv_all(stuck) == b""
    shutting_loop.thread.join(10)
    summary = shutting_loop.loop.last_shutdown
    assert summary["timeout"] == 0.2 and summary["cut"] == 1
    assert 0.2 <= summary["seconds"] < 3


def test_a_second_graceful_stop_does_not_start_another(shutting_loop):
    shutting_loop.serve(LengthSepEcho)
    loop = shutting_loop.loop
    loop.stop(graceful=True)
    loop.stop(graceful=True)
    shutting_loop.thread.join(10)
    assert not shutting_loop.thread.is_alive() and loop.last_shutdown["idle"] == 0


class Hello(HTTPHandler):
    def handle_request(self, request):
        return "hello"


def hello_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


@pytest.mark.parametrize("kind", ["http", "wsgi"])
def test_an_http_request_served_during_a_graceful_stop_says_connection_close(shutting_loop, kind):
    """RFC 9112 section 9.6: the last response on a keep-alive connection
    says so, and the connection closes after it."""
    if kind == "http":
        handler = Hello
    else:
        pytest.importorskip("h11")
        from evloop.protocols.wsgi import wsgi_handler

        handler = wsgi_handler(hello_app, threads=2)
    server = shutting_loop.serve(handler)
    loop = shutting_loop.loop
    with connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while not first.endswith(b"hello"):
            first += sock.recv(4096)
        assert b"connection: close" not in first.lower()  # kept alive
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # the next one, half sent
        assert wait_on_loop(shutting_loop, lambda: sum(h.pending_input() for h in loop.handlers) > 0)
        loop.stop(graceful=True, timeout=10)
        assert wait_on_loop(shutting_loop, lambda: server.closed)  # the shutdown has begun
        sock.sendall(b"\r\n")
        last = recv_all(sock)  # the answer, then the end of the stream
    head, _, body = last.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and body == b"hello"
    assert b"\r\nconnection: close" in head.lower()
    shutting_loop.thread.join(10)
    assert not shutting_loop.thread.is_alive()


def test_graceful_stop_on_an_embedded_loop_with_run_once():
    with EventLoop("select") as loop:
        server = Server("127.0.0.1", 0)
        loop.add_server(server, LengthSepEcho)
        loop.stop(graceful=True, timeout=0)
        for _ in range(3):
            loop.run_once(0)
        assert server.closed and loop.last_shutdown["cut"] == 0


# -- signals to a real server process ---------------------------------------------


def output_lines(process):
    """The process's output, line by line, through a queue (waited on, not polled)."""
    lines = queue.Queue()

    def pump():
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def wait_for_line(lines, text, seen, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no line with {text!r} in:\n{''.join(seen)}"
        line = lines.get(timeout=remaining)
        assert line is not None, f"the process ended before {text!r}:\n{''.join(seen)}"
        seen.append(line)
        if text in line:
            return line


def test_sigterm_lets_the_request_in_flight_finish(tmp_path):
    with running_example("echo_lengthsep.py", "--persistent") as (host, port, process):
        lines, seen = output_lines(process), []
        with socket.create_connection((host, port), timeout=10) as sock:
            # A whole request and half of the next in one segment: once the
            # first is answered, the server holds the second half-read.
            sock.sendall(frame(b"first") + b"6\nsec")
            assert recv_exactly(sock, 7) == frame(b"first")
            process.send_signal(signal.SIGTERM)
            wait_for_line(lines, "no longer accepting", seen)
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((host, port), timeout=10).close()
            sock.sendall(b"ond")
            assert recv_all(sock) == frame(b"second")
        assert process.wait(10) == 0
        done = wait_for_line(lines, "graceful shutdown done", seen)
        assert "0 idle connections closed, 1 finished, 0 cut" in done


def test_sigint_closes_idle_connections_and_exits(tmp_path):
    with running_example("echo_lengthsep.py", "--persistent") as (host, port, process):
        lines, seen = output_lines(process), []
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(frame(b"hi"))
            assert recv_exactly(sock, 4) == frame(b"hi")
            process.send_signal(signal.SIGINT)
            assert recv_all(sock) == b""
        assert process.wait(10) == 0
        done = wait_for_line(lines, "graceful shutdown done", seen)
        assert "1 idle connections closed, 0 finished, 0 cut" in done
        wait_for_line(lines, "SIGINT received; shut down gracefully", seen)


def test_a_second_signal_stops_at_once(tmp_path):
    with running_example("echo_lengthsep.py", "--persistent") as (host, port, process):
        lines, seen = output_lines(process), []
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(frame(b"hi") + b"9\nab")  # then never completes it
            assert recv_exactly(sock, 4) == frame(b"hi")
            process.send_signal(signal.SIGTERM)
            wait_for_line(lines, "no longer accepting", seen)
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            assert recv_all(sock) == b""
            assert process.wait(10) == 0
            assert time.monotonic() - started < 5  # not the 10s deadline
        wait_for_line(lines, "stopped at once on the second signal", seen)


SERVE_FOREVER = """
import logging
from evloop import Server
from evloop.protocols import LengthSepEcho
logging.basicConfig(level=logging.INFO)
server = Server("127.0.0.1", 0)
print(f"listening on {server.host}:{server.port}", flush=True)
server.serve_forever(LengthSepEcho)
print("serve_forever returned", flush=True)
server.server_close()
"""


def test_sigterm_during_serve_forever_is_graceful():
    import os
    import subprocess

    from tests.examples import LISTENING, ROOT

    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE_FOREVER],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines, seen = output_lines(process), []
        host, port = LISTENING.search(wait_for_line(lines, "listening on", seen)).groups()
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(frame(b"first") + b"6\nsec")
            assert recv_exactly(sock, 7) == frame(b"first")
            process.send_signal(signal.SIGTERM)
            wait_for_line(lines, "no longer accepting", seen)
            sock.sendall(b"ond")
            assert recv_all(sock) == frame(b"second")
        assert process.wait(10) == 0
        assert "1 finished, 0 cut" in wait_for_line(lines, "graceful shutdown done", seen)
        wait_for_line(lines, "serve_forever returned", seen)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stdout.close()
