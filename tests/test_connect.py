"""Outgoing connections from the loop: the same handlers as a client,
non-blocking connect, timeout, errors reported to the handler; and the
engine pieces a client or proxy needs (half-close, pause/resume reading)."""

import collections
import errno
import logging
import queue
import socket
import threading
from concurrent.futures import Future

import pytest
from evloop.protocols import FramedHandler, LengthSepEcho, LengthSepFramer

import evloop.connect
from evloop import ClientHandler, EventLoop, open_connection, set_offload_executor, shutdown_write_when_sent
from evloop.testing import FakeClock, HandlerHarness
from tests.conftest import connect, recv_all, recv_exactly

WAIT = 10


def frame(body):
    return b"%d\n" % len(body) + body


class Recorder(ClientHandler):
    """An outgoing handler that reports what happens to it on a queue
    (``self.server.events``, set by the test through the connector)."""

    close_when_done = False

    def setup(self):
        self.events.put(("setup", self.client_address))

    def data_received(self, data):
        self.events.put(("data", data))

    def handle_error(self, exc):
        self.events.put(("error", exc))
        super().handle_error(exc)

    def finish(self):
        self.events.put(("finish", None))


def recorder_class(events):
    return type("Recorder", (Recorder,), {"events": events})


def expect(events, kind):
    event = events.get(timeout=WAIT)
    assert event[0] == kind, event
    return event[1]


def refused_port():
    """A port on 127.0.0.1 where nothing listens (bound, so nobody else takes it)."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    return holder, holder.getsockname()[1]


def full_listener():
    """A listener whose accept queue is full: a connect to it hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.create_connection(listener.getsockname(), timeout=WAIT)
    return listener, filler


# -- a server that is a client too ---------------------------------------------


class BackendClient(FramedHandler):
    """Talks LengthSep to a backend: each reply settles the oldest future."""

    framer_class = LengthSepFramer

    def ask(self, body):
        future = Future()
        self.waiting.append(future)
        self.send(frame(body))
        return future

    def make_response(self):
        self.waiting.popleft().set_result(frame(b"backend says " + self.request))


class Front(LengthSepEcho):
    """Answers each request with what a backend server says about it; the
    backend connection is opened when the client connects."""

    def setup(self):
        host, port = self.server.backend_address
        self.backend = open_connection(self.loop, host, port, BackendClient)
        self.backend.waiting = collections.deque()

    def make_response(self):
        return self.backend.ask(self.request)  # a Future: order is kept

    def finish(self):
        self.backend.close()


def test_a_server_handler_asks_another_server_through_the_loop(running_loop):
    backend = running_loop.serve(LengthSepEcho)
    front = running_loop.serve(Front)
    front.backend_address = ("127.0.0.1", backend.port)
    bodies = [b"one", b"two", b"x" * 5000]
    with connect(front) as sock:
        # Pipelined before the backend connection can exist: queued, then in order.
        sock.sendall(b"".join(frame(body) for body in bodies))
        expected = b"".join(frame(b"backend says " + body) for body in bodies)
        assert recv_exactly(sock, len(expected)) == expected


def test_bytes_sent_before_the_connection_is_up_go_out_once_it_is(running_loop):
    listener = socket.create_server(("127.0.0.1", 0))
    events = queue.Queue()

    def start():
        handler = open_connection(
            running_loop.loop, "127.0.0.1", listener.getsockname()[1], recorder_class(events)
        )
        handler.send(b"early ")
        handler.send([b"bird", b"s"])
        return handler

    handler = running_loop.call(start)
    peer, _ = listener.accept()
    with peer, listener:
        peer.settimeout(WAIT)
        assert expect(events, "setup") == peer.getsockname()
        assert recv_exactly(peer, len(b"early birds")) == b"early birds"
        peer.sendall(b"welcome")
        assert expect(events, "data") == b"welcome"
        assert handler.server.connected and handler.peer == "127.0.0.1:%d" % listener.getsockname()[1]
        running_loop.call(handler.close_when_sent)
        assert recv_all(peer) == b""
        assert expect(events, "finish") is None


def test_a_refused_connection_reaches_handle_error_and_the_loop_serves_on(running_loop, caplog):
    holder, port = refused_port()
    events = queue.Queue()
    with holder:
        handler = running_loop.call(
            open_connection, running_loop.loop, "127.0.0.1", port, recorder_class(events)
        )
        exc = expect(events, "error")
        assert isinstance(exc, ConnectionRefusedError)
        assert expect(events, "finish") is None
    assert handler.closed and handler.server.error is exc and not handler.server.connected
    assert f"could not connect to 127.0.0.1:{port}" in caplog.text
    server = running_loop.serve(LengthSepEcho)
    with connect(server) as sock:
        sock.sendall(frame(b"alive"))
        assert recv_exactly(sock, len(frame(b"alive"))) == frame(b"alive")


def test_a_connect_that_hangs_times_out_on_the_loop_clock(caplog):
    clock = FakeClock()
    loop = EventLoop(clock=clock)
    listener, filler = full_listener()
    events = queue.Queue()
    try:
        handler = open_connection(
            loop, "127.0.0.1", listener.getsockname()[1], recorder_class(events), timeout=5
        )
        for _ in range(5):
            loop.run_once(0.01)
        assert events.empty() and not handler.closed  # still connecting
        clock.advance(5)
        loop.run_once(0)
        exc = expect(events, "error")
        assert isinstance(exc, TimeoutError) and exc.errno == errno.ETIMEDOUT
        assert "timed out after 5 s" in str(exc)
        assert expect(events, "finish") is None
        assert handler.closed and handler.client_socket.fileno() == -1
        assert "could not connect" in caplog.text
    finally:
        loop.close()
        filler.close()
        listener.close()


def test_closing_a_handler_while_it_connects_abandons_the_attempt(caplog):
    clock = FakeClock()
    loop = EventLoop(clock=clock)
    listener, filler = full_listener()
    events = queue.Queue()
    try:
        handler = open_connection(
            loop, "127.0.0.1", listener.getsockname()[1], recorder_class(events), timeout=5
        )
        loop.run_once(0.01)
        handler.close()
        assert expect(events, "finish") is None
        clock.advance(10)
        for _ in range(3):
            loop.run_once(0)
        assert events.empty()  # no late error, no second finish
        assert "could not connect" not in caplog.text
        assert len(loop.selector.get_map()) == 1  # only the loop's own waker is left
    finally:
        loop.close()
        filler.close()
        listener.close()


def test_closing_the_loop_closes_connections_still_being_made():
    loop = EventLoop()
    listener, filler = full_listener()
    events = queue.Queue()
    try:
        hanging = open_connection(loop, "127.0.0.1", listener.getsockname()[1], recorder_class(events))
        loop.run_once(0.01)
        not_begun = open_connection(loop, "127.0.0.1", listener.getsockname()[1], recorder_class(events))
        loop.close()
        assert hanging.closed and not_begun.closed
        assert [events.get_nowait(), events.get_nowait()] == [("finish", None)] * 2
    finally:
        filler.close()
        listener.close()


def test_a_name_is_resolved_in_the_pool_and_each_address_is_tried_in_turn(running_loop, monkeypatch):
    holder, dead_port = refused_port()
    live = socket.create_server(("127.0.0.1", 0))
    live_port = live.getsockname()[1]
    asked_from = []
    real_getaddrinfo = socket.getaddrinfo

    def fake_getaddrinfo(host, port, family=0, kind=0, proto=0, flags=0):
        if host != "service.test" or flags & socket.AI_NUMERICHOST:
            return real_getaddrinfo(host, port, family, kind, proto, flags)
        asked_from.append(threading.current_thread().name)
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", dead_port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", live_port)),
        ]

    monkeypatch.setattr(evloop.connect.socket, "getaddrinfo", fake_getaddrinfo)
    events = queue.Queue()
    with holder, live:
        handler = running_loop.call(
            open_connection, running_loop.loop, "service.test", 80, recorder_class(events)
        )
        assert expect(events, "setup") == ("127.0.0.1", live_port)
        assert asked_from and asked_from[0].startswith("evloop-offload")
        assert handler.server.address == ("127.0.0.1", live_port)
        running_loop.call(handler.close)


def test_a_name_that_does_not_resolve_is_reported(running_loop, monkeypatch):
    def no_such_name(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(evloop.connect.socket, "getaddrinfo", no_such_name)
    events = queue.Queue()
    running_loop.call(open_connection, running_loop.loop, "nowhere.test", 80, recorder_class(events))
    assert isinstance(expect(events, "error"), socket.gaierror)
    assert expect(events, "finish") is None


def test_localhost_connects_whatever_it_resolves_to_first(running_loop):
    server = running_loop.serve(LengthSepEcho)
    events = queue.Queue()

    class Asker(Recorder):
        def setup(self):
            super().setup()
            self.send(frame(b"hi"))

    handler = running_loop.call(
        open_connection,
        running_loop.loop,
        "localhost",
        server.port,
        type("Asker", (Asker,), {"events": events}),
    )
    expect(events, "setup")
    received = b""
    while len(received) < len(frame(b"hi")):
        received += expect(events, "data")
    assert received == frame(b"hi")
    running_loop.call(handler.close)


# -- half-close, the client's way to end a request (yoton) ---------------------


class ReverseAtEof(ClientHandler):
    """A server that answers once the client has finished sending."""

    def request_complete(self):
        return False

    def eof_received(self):
        self.send(bytes(reversed(self.incoming)))


def test_shutdown_write_when_sent_ends_the_request_and_the_reply_still_arrives(running_loop):
    server = running_loop.serve(ReverseAtEof)
    events = queue.Queue()

    def start():
        handler = open_connection(running_loop.loop, "127.0.0.1", server.port, recorder_class(events))
        handler.send(b"stressed")
        shutdown_write_when_sent(handler)
        return handler

    handler = running_loop.call(start)
    expect(events, "setup")
    assert expect(events, "data") == b"desserts"
    assert expect(events, "finish") is None  # the server's close ends it
    assert handler.closed


def test_eof_received_returning_true_keeps_the_connection_half_open():
    class Late(ClientHandler):
        close_when_done = False

        def request_complete(self):
            return False

        def eof_received(self):
            return True

    harness = HandlerHarness(Late)
    harness.feed(b"question")
    harness.feed_eof()
    assert not harness.closed  # it may still answer
    harness.handler.send(b"answer")
    harness.handler.close_when_sent()
    assert harness.advance(0) == b"answer"
    assert harness.closed and harness.socket.write_shut


def test_pause_and_resume_reading():
    from evloop import EVENT_READ

    harness = HandlerHarness(LengthSepEcho)
    assert harness.feed(frame(b"a")) == frame(b"a")
    harness.handler.pause_reading()
    harness.advance(0)
    assert not harness.loop.events_of(harness.socket) & EVENT_READ
    assert harness.feed(frame(b"b")) == b""  # left unread in the socket
    harness.handler.resume_reading()
    harness.advance(0)
    assert harness.loop.events_of(harness.socket) & EVENT_READ
    assert harness.feed(frame(b"c")) == frame(b"b") + frame(b"c")


def test_buffered_output_counts_what_waits_to_be_sent():
    harness = HandlerHarness(LengthSepEcho, send_window=10)
    assert harness.handler.buffered_output == 0
    harness.feed(frame(b"x" * 100))
    assert harness.handler.buffered_output == len(frame(b"x" * 100)) - 10
    harness.handler.send(b"more")
    assert harness.handler.buffered_output == len(frame(b"x" * 100)) - 10 + 4


def test_open_connection_refuses_a_closed_loop():
    loop = EventLoop()
    loop.close()
    with pytest.raises(RuntimeError):
        open_connection(loop, "127.0.0.1", 1, Recorder)


def test_outgoing_connections_count_and_list_like_accepted_ones(running_loop):
    listener = socket.create_server(("127.0.0.1", 0))
    events = queue.Queue()
    with listener:
        handler = running_loop.call(
            open_connection, running_loop.loop, "127.0.0.1", listener.getsockname()[1], recorder_class(events)
        )
        peer, _ = listener.accept()
        with peer:
            expect(events, "setup")
            assert running_loop.call(lambda: handler in running_loop.loop.handlers)
            running_loop.call(handler.close)
            expect(events, "finish")
            assert running_loop.call(lambda: handler not in running_loop.loop.handlers)
    if hasattr(running_loop.loop, "connection_count"):
        assert running_loop.call(lambda: running_loop.loop.connection_count) == 0


def test_a_connect_failure_logs_no_traceback_for_ordinary_errors(running_loop, caplog):
    caplog.set_level(logging.DEBUG, logger="evloop")
    holder, port = refused_port()
    events = queue.Queue()
    with holder:
        running_loop.call(open_connection, running_loop.loop, "127.0.0.1", port, recorder_class(events))
        expect(events, "error")
        expect(events, "finish")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].exc_info is None


def test_a_name_to_resolve_on_a_loop_whose_pool_is_shut_down_is_an_error():
    loop = EventLoop()
    executor = set_offload_executor(loop, max_workers=1)
    executor.shutdown()
    events = queue.Queue()
    try:
        open_connection(loop, "name.test", 80, recorder_class(events))
        loop.run_once(0)
        exc = expect(events, "error")
        assert isinstance(exc, OSError) and exc.errno == errno.ECANCELED
    finally:
        loop.close()
