"""Background-thread mode: loops running in threads of their own, started,
stopped and joined from the main thread; several in one process."""

import os
import signal
import socket
import threading

import pytest
from evloop.protocols import LengthSepEcho

from evloop import ClientHandler, EventLoop, LoopThread, Server, UnixServer
from tests.conftest import connect, recv_exactly


def frame(body):
    return b"%d\n" % len(body) + body


def echo_once(server, body):
    with connect(server) as client:
        client.sendall(frame(body))
        return recv_exactly(client, len(frame(body)))


def assert_refused(server):
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((server.host, server.port), timeout=10).close()


def selector_of(selector_name):
    return None if selector_name == "default" else selector_name


def test_started_in_the_background_stopped_and_joined_from_the_main_thread(selector_name, tmp_path):
    background = LoopThread(selector=selector_of(selector_name), name="evloop-bg")
    tcp = background.add_server(Server("127.0.0.1", 0), LengthSepEcho)  # before start: direct
    background.start()
    unix = background.add_server(UnixServer(tmp_path / "bg.sock"), LengthSepEcho)  # after: hops
    assert background.is_alive() and background.loop.is_running()
    assert threading.current_thread() is threading.main_thread()
    assert echo_once(tcp, b"served from the background") == frame(b"served from the background")
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(10)
        client.connect(unix.path)
        client.sendall(frame(b"unix too"))
        assert recv_exactly(client, 10) == frame(b"unix too")
    # A client that is connected when the loop stops is closed with it.
    idle = connect(tcp)
    idle.sendall(frame(b"hi"))
    assert recv_exactly(idle, 4) == frame(b"hi")
    background.stop()
    assert background.join(10) is True
    assert not background.is_alive() and background.loop.is_closed()
    assert tcp.closed and unix.closed and not os.path.exists(unix.path)
    assert idle.recv(10) == b""  # the server side closed the connection
    idle.close()
    assert_refused(tcp)


def test_stop_wakes_an_idle_loop_with_nothing_due(selector_name):
    # No timers, no max_wait: the loop sleeps in select with no timeout, so
    # only the wake-up byte can end it; join() returning proves it came.
    background = LoopThread(selector=selector_of(selector_name), max_wait=None).start()
    assert background.loop.is_running()
    background.stop()
    assert background.join(10) is True


def test_two_loops_in_one_process_serve_and_stop_independently(selector_name):
    loops = [LoopThread(selector=selector_of(selector_name), name=f"loop-{n}").start() for n in range(2)]
    servers = [lt.add_server(Server("127.0.0.1", 0), LengthSepEcho) for lt in loops]
    seen_threads = []

    class WhereAmI(ClientHandler):
        def make_response(self):
            seen_threads.append(threading.current_thread().name)
            return bytes(self.incoming)

    where = [lt.add_server(Server("127.0.0.1", 0), WhereAmI) for lt in loops]
    # Both serve at the same time: a request held half-sent on each loop.
    first, second = connect(servers[0]), connect(servers[1])
    first.sendall(b"5\nhel")
    second.sendall(b"5\nwor")
    second.sendall(b"ld")
    first.sendall(b"lo")
    assert recv_exactly(second, 7) == frame(b"world")
    assert recv_exactly(first, 7) == frame(b"hello")
    for server in where:
        with connect(server) as client:
            client.sendall(b"ping")
            client.shutdown(socket.SHUT_WR)
            assert recv_exactly(client, 4) == b"ping"
    assert seen_threads == ["loop-0", "loop-1"]
    # Stopping one leaves the other serving.
    loops[0].stop()
    assert loops[0].join(10)
    assert_refused(servers[0])
    assert echo_once(servers[1], b"still up") == frame(b"still up")
    first.close()
    second.close()
    loops[1].stop()
    assert loops[1].join(10)


def test_several_loops_as_context_managers():
    with LoopThread() as a, LoopThread() as b, LoopThread() as c:
        servers = [lt.add_server(Server("127.0.0.1", 0), LengthSepEcho) for lt in (a, b, c)]
        for n, server in enumerate(servers):
            assert echo_once(server, b"loop %d" % n) == frame(b"loop %d" % n)
    assert not any(lt.is_alive() for lt in (a, b, c))
    assert all(server.closed for server in servers)


def test_stop_from_a_signal_handler_in_the_main_thread():
    background = LoopThread().start()
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: background.stop())
    try:
        signal.raise_signal(signal.SIGUSR1)
        assert background.join(10) is True
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_submit_and_call_run_on_the_loop_thread_and_return_results():
    with LoopThread(name="the-loop") as background:
        assert background.call(lambda: threading.current_thread().name) == "the-loop"
        future = background.submit(lambda a, b: a + b, 2, 3)
        assert future.result(10) == 5
        with pytest.raises(ZeroDivisionError):
            background.call(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            background.submit(lambda: 1 / 0).result(10)


def test_an_exception_that_ends_the_loop_is_re_raised_by_join(caplog):
    class Quits(ClientHandler):
        def data_received(self, data):
            raise SystemExit("asked to quit")

    background = LoopThread().start()
    server = background.add_server(Server("127.0.0.1", 0), Quits)
    with connect(server) as client:
        client.sendall(b"bye")
        with pytest.raises(SystemExit, match="asked to quit"):
            background.join(10)
    assert background.loop.is_closed() and server.closed
    assert "the loop ended with an exception" in caplog.text


def test_misuse_is_refused_clearly():
    background = LoopThread().start()
    with pytest.raises(RuntimeError, match="started already"):
        background.start()
    with pytest.raises(RuntimeError, match="wait for ever"):
        background.call(background.join)
    background.stop()
    background.stop()  # idempotent
    assert background.join(10)
    background.stop()  # and harmless once closed
    assert background.join(0) is True
    # A loop already running elsewhere cannot be run again by a LoopThread,
    # and is left running: it is not that LoopThread's to close.
    with LoopThread() as running:
        again = LoopThread(running.loop).start()
        with pytest.raises(RuntimeError, match="already running"):
            again.join(10)
        assert running.loop.is_running() and not running.loop.is_closed()


def test_a_given_loop_is_run_and_closed_by_the_thread():
    loop = EventLoop("select")
    background = LoopThread(loop).start()
    assert background.loop is loop and loop.is_running()
    background.stop()
    assert background.join(10) and loop.is_closed()
