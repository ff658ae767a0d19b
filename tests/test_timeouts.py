"""Per-connection timeouts: idle, request (slowloris) and write. The logic on
a FakeClock with HandlerHarness; then each once over a real socket."""

import logging
import socket
import threading
import time
from concurrent.futures import Future
from types import SimpleNamespace

from evloop.protocols import LengthSepEcho

from evloop import timeouts as timeouts_module
from evloop.eventloop import EventLoop
from evloop.limits import Limits
from evloop.testing import FakeClock, FakeSocket, HandlerHarness, ManualLoop
from evloop.timeouts import sweep_interval
from tests.conftest import connect, recv_all, recv_exactly

LIMITS = Limits(idle_timeout=10, request_timeout=3, write_timeout=5)
# A timeout due at T fires between T and T + one sweep interval (a tenth of
# the shortest timeout, 3s): never before T, at the latest by T + 0.3.
LATE = sweep_interval(3)


def frame(body):
    return b"%d\n" % len(body) + body


def timeout_lines(caplog):
    return [(r.levelno, r.getMessage()) for r in caplog.records if "timeout" in r.getMessage()]


# -- idle ------------------------------------------------------------------------


def test_idle_timeout_fires_after_the_idle_time_within_the_sweep_interval(caplog):
    caplog.set_level(logging.INFO, logger="evloop")
    harness = HandlerHarness(LengthSepEcho, limits=LIMITS, peer=("10.0.0.9", 1234))
    for _ in range(999):  # the sweep looks every 0.3s; never before 10s
        harness.advance(0.01)
        assert not harness.closed
    harness.advance(0.02 + LATE)
    assert harness.closed
    assert timeout_lines(caplog) == [
        (logging.INFO, "10.0.0.9:1234: idle timeout (10s) fired; closing the connection")
    ]


def test_traffic_keeps_a_connection_from_being_idle():
    harness = HandlerHarness(LengthSepEcho, limits=LIMITS)
    for _ in range(5):
        harness.advance(8)
        assert harness.feed(frame(b"ping")) == frame(b"ping")
    assert not harness.closed
    harness.advance(10.01 + LATE)
    assert harness.closed


def test_waiting_for_the_servers_own_reply_is_not_idleness():
    future = Future()

    class Slow(LengthSepEcho):
        def make_response(self):
            return future

    harness = HandlerHarness(Slow, limits=LIMITS)
    harness.feed(frame(b"work"))
    harness.advance(100)  # the server is busy, not the client idle
    assert not harness.closed
    future.set_result(b"done")
    harness.advance(0)
    assert harness.output == b"done"
    harness.advance(9)  # idleness counts from the reply
    assert not harness.closed
    harness.advance(3.5 + LATE)
    assert harness.closed


# -- request (slowloris) -----------------------------------------------------------


def test_a_request_must_be_whole_within_request_timeout_however_it_dribbles(caplog):
    harness = HandlerHarness(LengthSepEcho, limits=LIMITS)
    harness.advance(7)  # idle a while first: that is not the request's time
    harness.feed(b"1000\nx")
    for _ in range(29):  # a byte every 0.1s keeps it busy, not alive
        harness.advance(0.1)
        harness.feed(b"x")
    assert not harness.closed
    harness.advance(0.11 + LATE)  # 3.01s (and the sweep's lateness) after its first byte
    assert harness.closed
    assert timeout_lines(caplog) == [
        (logging.WARNING, "127.0.0.1:40000: request timeout (3s) fired; closing the connection")
    ]


def test_the_request_clock_restarts_with_each_new_request():
    harness = HandlerHarness(LengthSepEcho, limits=LIMITS)
    harness.feed(b"3\nab")
    harness.advance(2.5)
    assert harness.feed(b"c" + b"3\nde") == frame(b"abc")  # done; the next one begins now
    harness.advance(2.5)
    assert not harness.closed  # 5s after the first request began
    assert harness.feed(b"f") == frame(b"def")
    harness.advance(2.9)
    assert not harness.closed  # nothing in flight: only idle counts now
    harness.advance(7.2 + LATE)
    assert harness.closed


# -- write --------------------------------------------------------------------------


def test_a_client_that_takes_no_output_is_closed_after_write_timeout(caplog):
    harness = HandlerHarness(LengthSepEcho, limits=LIMITS, send_window=100)
    harness.feed(frame(b"x" * 1000))
    for _ in range(3):  # it reads a little every 4s: alive
        harness.advance(4)
        assert harness.drain()
    assert not harness.closed
    harness.advance(5.01 + LATE)  # then stops reading
    assert harness.closed
    assert timeout_lines(caplog)[-1] == (
        logging.WARNING,
        "127.0.0.1:40000: write timeout (5s) fired; closing the connection",
    )


# -- cost and switches -----------------------------------------------------------------


def test_one_timer_per_loop_not_one_per_connection_or_read():
    clock = FakeClock()
    loop = ManualLoop(clock)
    server = SimpleNamespace(loop=loop, limits=LIMITS)
    handlers = [LengthSepEcho(server, FakeSocket(("127.0.0.1", 40000 + i)), None) for i in range(50)]
    for handler in handlers:
        handler.start()
    assert len(loop._timers) == 1  # the loop's sweep, whatever the number of connections
    pushes = []
    call_at = loop.call_at
    loop.call_at = lambda *args: pushes.append(args) or call_at(*args)
    for _ in range(1000):  # 1000 requests on each connection in 100 seconds
        clock.advance(0.1)
        loop.run_once(0)
        for handler in handlers:
            handler.client_socket.to_receive.append(frame(b"hi"))
            handler.handle_read()
        loop.run_once(0)
    assert len(loop._timers) == 1
    # The sweep ticks once per interval (0.3s): reads never touch a timer.
    assert len(pushes) <= 100 / LATE + 2, len(pushes)
    assert not any(handler.closed for handler in handlers)
    assert all(handler.client_socket.sent == frame(b"hi") * 1000 for handler in handlers)


def test_timeouts_switched_off_cost_no_timer():
    harness = HandlerHarness(
        LengthSepEcho, limits=Limits(idle_timeout=None, request_timeout=None, write_timeout=None)
    )
    assert harness.loop.timeout_sweep is None and len(harness.loop._timers) == 0
    harness.feed(b"5\nab")
    harness.advance(10**6)
    assert not harness.closed
    assert len(harness.loop._timers) == 0


def test_only_the_idle_timeout():
    harness = HandlerHarness(
        LengthSepEcho, limits=Limits(request_timeout=None, write_timeout=None, idle_timeout=2)
    )
    harness.feed(b"5\nab")  # an incomplete request is not idle
    harness.advance(100)
    assert not harness.closed
    harness.feed(b"cde")
    harness.advance(2.01 + sweep_interval(2))
    assert harness.closed


def test_handle_timeout_may_answer_before_closing():
    class Polite(LengthSepEcho):
        def handle_timeout(self, kind, seconds):
            self.send(b"%s timeout\n" % kind.encode())
            self.close_when_sent()

    harness = HandlerHarness(Polite, limits=LIMITS)
    harness.feed(b"9\nabc")
    assert harness.advance(3.01 + LATE) == b"request timeout\n"
    assert harness.closed


def test_the_sweep_stops_once_no_connection_is_left():
    harness = HandlerHarness(LengthSepEcho, limits=LIMITS)
    assert len(harness.loop._timers) == 1
    harness.feed_eof()
    assert harness.closed
    harness.advance(LATE)  # the sweep finds no connection with a timeout...
    assert len(harness.loop._timers) == 0  # ...and stops: an idle loop sleeps
    assert not harness.loop.timeout_sweep.running


def test_the_sweep_looks_at_a_bounded_batch_of_descriptors_per_tick(monkeypatch):
    monkeypatch.setattr(timeouts_module, "SWEEP_BATCH", 4)
    clock = FakeClock()
    loop = EventLoop("select", clock=clock)
    server = SimpleNamespace(
        loop=loop, limits=Limits(idle_timeout=1, request_timeout=None, write_timeout=None)
    )
    pairs = [socket.socketpair() for _ in range(20)]
    try:
        handlers = [LengthSepEcho(server, ours, None) for ours, _theirs in pairs]
        for handler in handlers:
            handler.client_socket.setblocking(False)
            handler.start()
        sweep = loop.timeout_sweep
        assert sweep.interval == sweep_interval(1) == 0.1
        looked_at = []
        check = sweep._check
        monkeypatch.setattr(
            sweep, "_check", lambda target, now: looked_at.append(target) or check(target, now)
        )
        ticks = []
        while not all(handler.closed for handler in handlers):
            clock.advance(0.001)
            looked_at.clear()
            loop.run_once(0)
            if looked_at:
                ticks.append((clock(), len(looked_at)))
            assert clock() < 1 + 0.1 + 0.01, "an idle timeout was later than one interval"
        assert max(count for _when, count in ticks) <= 4  # never more than a batch
        assert ticks[0][0] >= 1 / 20  # the first tick comes after a share of the interval, not at once
        assert len(loop._timers) <= 1
    finally:
        loop.close()
        for ours, theirs in pairs:
            ours.close()
            theirs.close()


def test_the_shortest_timeout_in_force_sets_the_interval():
    clock = FakeClock()
    loop = ManualLoop(clock)
    slow = SimpleNamespace(loop=loop, limits=Limits(idle_timeout=300, request_timeout=60, write_timeout=60))
    quick = SimpleNamespace(loop=loop, limits=Limits(idle_timeout=0.5))
    LengthSepEcho(slow, FakeSocket(), None).start()
    assert loop.timeout_sweep.interval == 1.0  # a tenth of 60s, held at most 1s
    handler = LengthSepEcho(quick, FakeSocket(), None)
    handler.start()
    assert loop.timeout_sweep.interval == 0.05  # a tenth of 0.5s, at once
    clock.advance(0.5 + 0.05)
    loop.run_once(0)
    assert handler.closed
    clock.advance(0.05)
    loop.run_once(0)
    clock.advance(0.05)
    loop.run_once(0)  # a cycle without the quick connection: back to its own pace
    assert loop.timeout_sweep.interval == 1.0


# -- over real sockets -------------------------------------------------------------------


def test_real_socket_request_timeout_closes_only_the_slow_client(running_loop, caplog):
    server = running_loop.serve(LengthSepEcho, limits=Limits(request_timeout=0.3))
    with connect(server) as slow, connect(server) as quick:
        started = time.monotonic()
        slow.sendall(b"10\nabc")
        quick.sendall(frame(b"hi"))
        assert recv_exactly(quick, 4) == frame(b"hi")
        assert recv_all(slow) == b""  # the server gave up on it
        waited = time.monotonic() - started
        assert 0.3 <= waited < 5
        quick.sendall(frame(b"still"))  # the other client is untouched
        assert recv_exactly(quick, 7) == frame(b"still")
    assert any("request timeout (0.3s) fired" in line for _, line in timeout_lines(caplog))


def test_real_socket_idle_timeout(running_loop, caplog):
    caplog.set_level(logging.INFO, logger="evloop")
    server = running_loop.serve(LengthSepEcho, limits=Limits(idle_timeout=0.3))
    with connect(server) as sock:
        sock.sendall(frame(b"hi"))
        assert recv_exactly(sock, 4) == frame(b"hi")
        started = time.monotonic()
        assert recv_all(sock) == b""
        assert 0.25 <= time.monotonic() - started < 5
    assert any("idle timeout (0.3s) fired" in line for _, line in timeout_lines(caplog))


class SmallSendBuffer(LengthSepEcho):
    closed_event = threading.Event()

    def setup(self):
        # Little kernel buffering, so a 1 MB reply must wait for the client.
        self.client_socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

    def finish(self):
        self.closed_event.set()


def test_real_socket_write_timeout(running_loop, caplog):
    SmallSendBuffer.closed_event.clear()
    server = running_loop.serve(SmallSendBuffer, limits=Limits(write_timeout=0.3))
    reply = frame(b"x" * 1000000)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect((server.host, server.port))
        started = time.monotonic()
        sock.sendall(reply)  # one request; its reply is not read
        assert SmallSendBuffer.closed_event.wait(10)  # the server gave up on this client
        assert time.monotonic() - started >= 0.3
        received = 0
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += len(chunk)
        except ConnectionResetError:
            pass
    assert 0 < received < len(reply)
    assert any("write timeout (0.3s) fired" in line for _, line in timeout_lines(caplog))
