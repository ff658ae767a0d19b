"""The engine over real sockets on 127.0.0.1, against every selector backend."""

import logging
import os
import resource
import selectors
import socket
import threading
import time

import pytest
from evloop.protocols import LengthSepBody, LengthSepEcho

from evloop import ClientHandler, EventLoop, Limits, Server, loop
from evloop.testing import HandlerHarness
from tests.conftest import connect, recv_all, recv_exactly


def frame(body):
    return b"%d\n" % len(body) + body


class RecipeLengthSep(ClientHandler):
    """Written exactly in the recipe's style, on bytes."""

    def request_complete(self):
        recv = self.incoming.split(b"\n", 1)
        if len(recv) == 1 or len(recv[1]) != int(recv[0]):
            return False
        self.msg_body = recv[1]
        return True

    def make_response(self):
        return [bytes(self.msg_body)]


def test_recipe_style_subclass_answers_and_closes(running_loop):
    server = running_loop.serve(RecipeLengthSep)
    with connect(server) as sock:
        sock.sendall(b"5\nhel")
        sock.sendall(b"lo")
        assert recv_all(sock) == b"hello"


def test_lengthsepbody_is_the_recipes_wire(running_loop):
    server = running_loop.serve(LengthSepBody)
    with connect(server) as sock:
        sock.sendall(b"5\nhello")
        assert recv_all(sock) == b"hello"


def test_hundred_pipelined_requests_in_one_write_answered_in_order(running_loop):
    server = running_loop.serve(LengthSepEcho)
    data = b"".join(frame(b"request %d" % i) for i in range(100))
    with connect(server) as sock:
        sock.sendall(data)
        assert recv_exactly(sock, len(data)) == data


def test_one_byte_at_a_time_gives_the_same_answer(running_loop):
    server = running_loop.serve(LengthSepEcho)
    data = frame(b"hello") + frame(b"world!")
    with connect(server) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(data)):
            sock.sendall(data[i : i + 1])
        assert recv_exactly(sock, len(data)) == data


def test_keep_alive_serves_request_after_request(running_loop):
    server = running_loop.serve(LengthSepEcho)
    with connect(server) as sock:
        for i in range(20):
            sock.sendall(frame(b"x" * i))
            assert recv_exactly(sock, len(frame(b"x" * i))) == frame(b"x" * i)


class Boom(LengthSepEcho):
    def make_response(self):
        if self.request == b"boom":
            raise ValueError("handler bug")
        return super().make_response()


def test_a_handler_that_raises_drops_only_its_client(running_loop, caplog):
    server = running_loop.serve(Boom)
    with connect(server) as good, connect(server) as bad:
        good.sendall(frame(b"before"))
        assert recv_exactly(good, len(frame(b"before"))) == frame(b"before")
        bad.sendall(frame(b"boom"))
        assert recv_all(bad) == b""
        good.sendall(frame(b"after"))
        assert recv_exactly(good, len(frame(b"after"))) == frame(b"after")
    with connect(server) as fresh:
        fresh.sendall(frame(b"next client"))
        assert recv_exactly(fresh, len(frame(b"next client"))) == frame(b"next client")
    assert "ValueError: handler bug" in caplog.text
    assert "127.0.0.1:" in caplog.text


def test_malformed_length_drops_only_its_client(running_loop, caplog):
    server = running_loop.serve(LengthSepEcho)
    with connect(server) as good, connect(server) as bad:
        bad.sendall(frame(b"fine") + b"12x\n")
        assert recv_all(bad) == frame(b"fine")
        good.sendall(frame(b"still here"))
        assert recv_exactly(good, len(frame(b"still here"))) == frame(b"still here")
    assert "not a decimal number: b'12x'" in caplog.text
    record = next(r for r in caplog.records if "not a decimal" in r.getMessage())
    assert record.levelno == logging.WARNING


def test_half_close_still_delivers_every_pending_reply(running_loop):
    server = running_loop.serve(LengthSepEcho)
    data = b"".join(frame(b"%d" % i * 1000) for i in range(50))
    with connect(server) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == data


class BigEcho(LengthSepEcho):
    max_size = 16 * 1024 * 1024


def test_peer_reset_and_epipe_do_not_stop_the_loop(running_loop):
    server = running_loop.serve(BigEcho)
    big = frame(b"z" * 12_000_000)
    for _ in range(3):
        sock = connect(server)
        sock.sendall(big[:100_000])
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # RST
    sock = connect(server)
    sock.sendall(big)  # reply larger than buffers; we vanish mid-reply
    sock.recv(10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()
    with connect(server) as sock:
        sock.sendall(frame(b"alive"))
        assert recv_exactly(sock, len(frame(b"alive"))) == frame(b"alive")


class Streams(ClientHandler):
    """Answers each line naming what kind of response to stream."""

    close_when_done = False
    path = None

    def request_complete(self):
        end = self.incoming.find(b"\n")
        return end + 1 if end >= 0 else False

    def make_response(self):
        kind = bytes(self.incoming[: self.incoming.find(b"\n")])
        if kind == b"str":
            return "h\u00e9llo\n"
        if kind == b"file":
            return open(self.path, "rb")
        if kind == b"gen":
            return (b"%d," % i for i in range(5000))
        if kind == b"mixed":
            return [b"a", "b", iter([b"c", [b"d", "e"]]), None, b"\n"]
        return [b"?\n"]


def test_str_file_generator_and_mixed_responses(running_loop, tmp_path):
    path = tmp_path / "blob"
    blob = os.urandom(3_000_000)
    path.write_bytes(blob)
    Streams.path = str(path)
    server = running_loop.serve(Streams)
    expected_gen = b"".join(b"%d," % i for i in range(5000))
    with connect(server) as sock:
        sock.sendall(b"str\nfile\ngen\nmixed\n")
        expected = "h\u00e9llo\n".encode() + blob + expected_gen + b"abcde\n"
        assert recv_exactly(sock, len(expected)) == expected


def test_close_when_done_false_keeps_the_recipe_handler(running_loop):
    class Persistent(RecipeLengthSep):
        close_when_done = False

    server = running_loop.serve(Persistent)
    with connect(server) as sock:
        for body in (b"one", b"three"):
            sock.sendall(frame(body))
            assert recv_exactly(sock, len(body)) == body


def test_setup_and_finish_run_once_per_connection(running_loop):
    events = []
    finished = threading.Event()

    class Hooks(LengthSepEcho):
        def setup(self):
            events.append(("setup", self.client_address[0]))

        def finish(self):
            events.append(("finish", self.client_address[0]))
            finished.set()

    server = running_loop.serve(Hooks)
    with connect(server) as sock:
        sock.sendall(frame(b"x"))
        recv_exactly(sock, 3)
    assert finished.wait(10)
    assert events == [("setup", "127.0.0.1"), ("finish", "127.0.0.1")]


def test_several_servers_each_with_its_handler_on_one_loop(running_loop):
    echo = running_loop.serve(LengthSepEcho)
    body = running_loop.serve(LengthSepBody)
    with connect(echo) as a, connect(body) as b:
        a.sendall(frame(b"one"))
        b.sendall(frame(b"two"))
        assert recv_all(b) == b"two"
        assert recv_exactly(a, len(frame(b"one"))) == frame(b"one")


def test_ipv6_listener_tells_its_real_address():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        server = Server("::1", 0)
    except OSError as exc:
        pytest.skip(f"cannot bind ::1: {exc}")
    ev = EventLoop()
    ev.add_server(server, LengthSepBody)
    assert server.address[0] == "::1" and server.port > 0
    thread = threading.Thread(target=ev.run)
    thread.start()
    try:
        with socket.create_connection(("::1", server.port), timeout=10) as sock:
            sock.sendall(b"2\nv6")
            assert recv_all(sock) == b"v6"
    finally:
        ev.stop()
        thread.join(10)
        ev.close()


def test_localhost_binds_ipv4_loopback_and_port_zero_picks_a_port():
    with Server() as server:
        assert server.host == "127.0.0.1"
        assert server.port > 0


def _raise_nofile(target):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < target:
        if hard != resource.RLIM_INFINITY and hard < target:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below {target}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return soft, hard


def test_two_thousand_simultaneous_clients_on_the_default_selector():
    count = 2000
    old = _raise_nofile(count * 2 + 100)
    ev = EventLoop()
    # All 2000 come from 127.0.0.1: no per-address cap for this test of descriptors.
    server = Server("127.0.0.1", 0, backlog=4096, limits=Limits(max_connections_per_peer=None))
    ev.add_server(server, LengthSepEcho)
    thread = threading.Thread(target=ev.run)
    thread.start()
    clients = []
    try:
        for _ in range(count):
            clients.append(socket.create_connection(server.address, timeout=20))
        assert max(c.fileno() for c in clients) > 1024
        for i, sock in enumerate(clients):
            sock.sendall(frame(b"%d" % i))
        for i, sock in enumerate(clients):
            expected = frame(b"%d" % i)
            assert recv_exactly(sock, len(expected)) == expected
    finally:
        for sock in clients:
            sock.close()
        ev.stop()
        thread.join(10)
        ev.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, old)


def test_select_backend_refuses_descriptors_past_its_limit_clearly():
    # select() cannot watch fd >= FD_SETSIZE; the platform's default can.
    assert selectors.DefaultSelector is not selectors.SelectSelector


def test_stop_from_another_thread_ends_run_promptly(selector_name):
    ev = EventLoop(None if selector_name == "default" else selector_name)
    ev.add_server(Server("127.0.0.1", 0), LengthSepEcho)
    started = threading.Event()
    ev.call_soon(started.set)
    thread = threading.Thread(target=ev.run)
    thread.start()
    assert started.wait(10)
    stop_at = time.monotonic()
    ev.stop()
    thread.join(10)
    assert not thread.is_alive()
    # "Promptly": the loop was blocked in select with no timeout; only the
    # wakeup socketpair can have ended it.
    assert time.monotonic() - stop_at < 5
    ev.close()


def test_idle_loop_uses_no_cpu():
    ev = EventLoop()
    ev.add_server(Server("127.0.0.1", 0), LengthSepEcho)
    passes = []
    original = ev._run_pass

    def counting(timeout):
        passes.append(timeout)
        original(timeout)

    ev._run_pass = counting
    thread = threading.Thread(target=ev.run)
    before = time.thread_time()
    thread.start()
    stop = threading.Timer(0.5, ev.stop)  # a deadline for the idle period, not synchronisation
    stop.start()
    thread.join(10)
    ev.close()
    # An idle loop sleeps in one select until woken: the stop is the only wake-up.
    assert len(passes) <= 2, passes
    assert time.thread_time() - before < 0.2


def test_loop_function_serves_until_stop_and_closes(selector_name):
    server = Server("127.0.0.1", 0)

    class StopOnRequest(LengthSepBody):
        def make_response(self):
            if self.msg_body == b"stop":
                self.loop.stop()
            return [self.msg_body]

    thread = threading.Thread(
        target=loop,
        args=(server, StopOnRequest),
        kwargs={"selector": None if selector_name == "default" else selector_name},
    )
    thread.start()
    with connect(server) as sock:
        sock.sendall(b"2\nhi")
        assert recv_all(sock) == b"hi"
    with connect(server) as sock:
        sock.sendall(b"4\nstop")
        assert recv_all(sock) == b"stop"
    thread.join(10)
    assert not thread.is_alive()
    assert server.closed


class AnswersOnCue(LengthSepBody):
    """Holds its reply until the test has sent bytes it will never read."""

    answering = threading.Event()
    cue = threading.Event()

    def make_response(self):
        self.answering.set()
        assert self.cue.wait(10)
        return super().make_response()


def test_closing_with_unread_bytes_sends_a_fin_not_a_reset(running_loop):
    # Bytes left unread in the kernel when a socket closes make it send a
    # RST, and a RST can make the client drop the reply before it reads it.
    AnswersOnCue.answering.clear()
    AnswersOnCue.cue.clear()
    server = running_loop.serve(AnswersOnCue)
    with connect(server) as sock:
        sock.sendall(b"5\nhello")
        assert AnswersOnCue.answering.wait(10)
        sock.sendall(b"more bytes after the request" * 100)  # arrive after the server's read
        AnswersOnCue.cue.set()
        assert recv_all(sock) == b"hello"  # the reply, then a clean end of stream


class ReportsNodelay(LengthSepEcho):
    def make_response(self):
        return b"%d\n" % self.client_socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_every_accepted_tcp_connection_has_nagle_off(running_loop):
    # The first client checks whether accepted sockets inherit the
    # listener's TCP_NODELAY; the later ones rely on the answer.
    server = running_loop.serve(ReportsNodelay)
    for _ in range(3):
        with connect(server) as sock:
            sock.sendall(b"1\nx")
            assert recv_exactly(sock, 2) != b"0\n"


# -- find(): a search that resumes -------------------------------------------------


class _CountingBuffer(bytearray):
    """A bytearray that counts the bytes its find() looks at."""

    looked_at = 0

    def find(self, sub, start=0, *args):
        _CountingBuffer.looked_at += len(self) - start
        return super().find(sub, start, *args)


class _Lines(ClientHandler):
    close_when_done = False

    def request_complete(self):
        end = self.find(b"\n")
        return end + 1 if end >= 0 else False

    def make_response(self):
        return bytes(self.incoming[: self.find(b"\n") + 1]).upper()


def test_find_resumes_where_its_last_unsuccessful_search_stopped():
    harness = HandlerHarness(_Lines)
    handler = harness.handler
    handler.incoming = _CountingBuffer()
    _CountingBuffer.looked_at = 0
    size = 20_000
    for _ in range(size):  # a line that trickles in a byte at a time
        handler.incoming += b"a"
        assert handler.find(b"\n") == -1
    handler.incoming += b"\n"
    assert handler.find(b"\n") == size
    # Each byte is looked at about once; a search from the start every time
    # would look at size * size / 2 = 200 million.
    assert _CountingBuffer.looked_at <= 2 * size
    harness.close()


def test_find_starts_again_after_a_request_is_consumed_and_with_a_longer_terminator():
    harness = HandlerHarness(_Lines)
    assert harness.feed(b"one\ntw") == b"ONE\n"
    assert harness.feed(b"o\n") == b"TWO\n"
    handler = harness.handler
    handler.incoming = bytearray(b"abc\r")
    assert handler.find(b"\r\n") == -1
    handler.incoming += b"\nrest"
    assert handler.find(b"\r\n") == 3  # the terminator straddled the old end
    handler.incoming = bytearray(b"x\r\n")  # replaced: shorter than where it stopped
    handler.forget_search()
    assert handler.find(b"\r\n") == 1
    harness.close()


def test_a_line_fed_a_byte_at_a_time_is_answered_once_whole():
    harness = HandlerHarness(_Lines)
    for byte in b"slow":
        assert harness.feed(bytes([byte])) == b""
    assert harness.feed(b"\nnext\n") == b"SLOW\nNEXT\n"
    harness.close()
