"""Limits: the settings object, the output marks, request size, max
connections and the out-of-descriptors pause. Logic on FakeClock and
HandlerHarness; each limit also once over real sockets on 127.0.0.1."""

import dataclasses
import errno
import logging
import selectors
import socket

import pytest
from evloop.protocols import LengthSepEcho

from evloop import ClientHandler, EventLoop, RemoteProtocolError, Server
from evloop.eventloop import EVENT_READ, EVENT_WRITE
from evloop.limits import (
    DEFAULT_LIMITS,
    DEFAULT_MAX_REQUEST_SIZE,
    Limits,
    RateLimitedLog,
    default_max_connections,
)
from evloop.testing import FakeClock, HandlerHarness
from tests.conftest import connect, recv_all, recv_exactly


def frame(body):
    return b"%d\n" % len(body) + body


# -- the settings object ----------------------------------------------------


def test_defaults_are_the_documented_ones():
    limits = Limits()
    assert limits == DEFAULT_LIMITS
    assert (limits.max_request_size, limits.max_connections) == (None, None)
    assert (limits.write_high_water, limits.write_low_water) == (1024 * 1024, 256 * 1024)
    assert (
        limits.idle_timeout,
        limits.request_timeout,
        limits.write_timeout,
        limits.handshake_timeout,
        limits.shutdown_timeout,
    ) == (300, 60, 60, 10, 10)
    assert limits.has_timeouts


def test_replace_and_validation():
    tuned = DEFAULT_LIMITS.replace(idle_timeout=None, request_timeout=None, write_timeout=None)
    assert not tuned.has_timeouts and DEFAULT_LIMITS.has_timeouts
    for bad in [
        dict(max_connections=0),
        dict(max_request_size=-1),
        dict(idle_timeout=-1),
        dict(write_low_water=10, write_high_water=5),
        dict(shutdown_timeout=None),
        dict(request_timeout=float("inf")),
        dict(write_timeout="5"),
    ]:
        with pytest.raises(ValueError):
            Limits(**bad)
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_LIMITS.idle_timeout = 1  # frozen: one object may be shared by servers


@pytest.mark.parametrize(
    "soft, select, expected",
    [
        (1024, False, 1024 - 128),
        (64, False, 64 - 16),
        (20000, False, 20000 - 128),
        (20000, True, 1024 - 128),  # select() cannot watch descriptors past 1023
        (-1, False, (1 << 20) - 128),  # RLIM_INFINITY
    ],
)
def test_max_connections_is_derived_from_the_descriptor_limit(monkeypatch, soft, select, expected):
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda which: (soft, max(soft, 1 << 20)))
    selector = selectors.SelectSelector() if select else None
    try:
        assert default_max_connections(selector) == expected
    finally:
        if selector is not None:
            selector.close()


def test_a_server_reads_its_limits_when_it_starts_serving():
    with EventLoop("select") as loop:
        plain = Server("127.0.0.1", 0)
        tuned = Server("127.0.0.1", 0, limits=Limits(max_connections=7))
        loop.add_server(plain, LengthSepEcho)
        loop.add_server(tuned, LengthSepEcho)
        assert plain.limits is DEFAULT_LIMITS
        assert plain.max_connections == default_max_connections(loop.selector)
        assert tuned.max_connections == 7


def test_servers_bind_to_localhost_unless_told_otherwise():
    with Server() as server:
        assert server.host in ("127.0.0.1", "::1")


# -- the output marks ----------------------------------------------------------


def test_requests_and_reading_stop_above_the_high_mark_and_resume_only_at_the_low_one():
    limits = Limits(write_high_water=1000, write_low_water=100)
    harness = HandlerHarness(LengthSepEcho, send_window=700, limits=limits)
    sock = harness.socket
    # Three requests in one read, 600 bytes of reply each. The second reply
    # takes the queue over 1000: the third request waits, unanswered.
    harness.feed(b"".join(frame(b"x" * 596) for _ in range(3)))
    assert len(harness.output) == 700
    assert harness.handler.buffered_output == 500
    assert not harness.handler.takes_requests
    assert harness.loop.events_of(sock) == EVENT_WRITE  # over 1000: not reading
    harness.drain()  # the 500 go: at the low mark, the third request is answered
    assert harness.handler.buffered_output == 400  # of its 600, 200 fit the window
    assert harness.loop.events_of(sock) == EVENT_WRITE  # over the low mark: not reading yet
    harness.drain()
    assert harness.handler.buffered_output == 0
    assert harness.loop.events_of(sock) == EVENT_READ
    assert harness.output == b"".join(frame(b"x" * 596) for _ in range(3))


def test_a_class_high_mark_below_the_servers_low_mark_still_pauses():
    class OnlyHigh(LengthSepEcho):
        write_high_water = 1000  # the server's low mark is 256 KiB

    harness = HandlerHarness(OnlyHigh, send_window=700)
    harness.feed(b"".join(frame(b"x" * 596) for _ in range(3)))
    assert harness.loop.events_of(harness.socket) == EVENT_WRITE
    harness.drain()  # 400 left: at most 1000
    assert harness.loop.events_of(harness.socket) == EVENT_WRITE | EVENT_READ


def test_a_handler_class_may_set_its_own_marks():
    class Small(LengthSepEcho):
        write_high_water = 10
        write_low_water = 0

    harness = HandlerHarness(Small, send_window=2)  # 11 of 13 bytes left: over 10
    harness.feed(frame(b"0123456789"))
    assert harness.loop.events_of(harness.socket) == EVENT_WRITE


# -- request size ----------------------------------------------------------------


class UntilNewline(ClientHandler):
    close_when_done = False

    def request_complete(self):
        end = self.incoming.find(b"\n")
        return end + 1 if end >= 0 else False

    def make_response(self):
        return b"ok\n"


def test_a_recipe_handler_cannot_buffer_more_than_max_request_size(caplog):
    harness = HandlerHarness(UntilNewline, limits=Limits(max_request_size=100))
    assert harness.feed(b"a\n" + b"x" * 100) == b"ok\n"  # 100 buffered: allowed
    assert not harness.closed
    harness.feed(b"x")  # 101: refused
    assert harness.closed
    assert "request over the limit of 100 bytes" in caplog.text
    assert "127.0.0.1:40000" in caplog.text


def test_recipe_handlers_default_to_one_mebibyte():
    harness = HandlerHarness(UntilNewline)
    harness.feed(b"x" * DEFAULT_MAX_REQUEST_SIZE)
    assert not harness.closed
    harness.feed(b"x")
    assert harness.closed


def test_framers_take_the_servers_max_request_size_unless_the_handler_sets_one():
    harness = HandlerHarness(LengthSepEcho, limits=Limits(max_request_size=10))
    assert harness.feed(frame(b"0123456789")) == frame(b"0123456789")
    harness.feed(b"11\n")
    assert harness.closed

    class OwnSize(LengthSepEcho):
        max_size = 20

    harness = HandlerHarness(OwnSize, limits=Limits(max_request_size=10))
    assert harness.feed(frame(b"x" * 20)) == frame(b"x" * 20)


# -- max connections: a polite refusal ------------------------------------------


class Busy(LengthSepEcho):
    busy_reply = b"busy\n"


def test_over_max_connections_a_client_gets_the_busy_reply_then_a_close(running_loop, caplog):
    server = running_loop.serve(Busy, limits=Limits(max_connections=2))
    with connect(server) as first, connect(server) as second:
        for sock in (first, second):
            sock.sendall(frame(b"hi"))
            assert recv_exactly(sock, 4) == frame(b"hi")
        refused = []
        for _ in range(5):
            with connect(server) as third:
                refused.append(recv_all(third))
        assert refused == [b"busy\n"] * 5
        assert running_loop.call(lambda: (server.connections, server.refused)) == (2, 5)
        first.sendall(frame(b"still"))  # the two held are served
        assert recv_exactly(first, 7) == frame(b"still")
        for sock in (first, second):  # leave, and wait for the server's close
            sock.shutdown(socket.SHUT_WR)
            assert recv_all(sock) == b""
    # Once they have gone there is room again.
    with connect(server) as again:
        again.sendall(frame(b"room"))
        assert recv_exactly(again, 6) == frame(b"room")
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1, "refusals are logged once per 10 seconds, not once each"
    assert "Limits.max_connections" in refusals[0].getMessage()
    assert refusals[0].levelno == logging.WARNING


def test_a_refused_client_without_a_busy_reply_is_just_closed(running_loop):
    server = running_loop.serve(LengthSepEcho, limits=Limits(max_connections=1))
    with connect(server) as held:
        held.sendall(frame(b"a"))
        recv_exactly(held, 3)
        with connect(server) as refused:
            assert recv_all(refused) == b""


# -- rate-limited logging and the out-of-descriptors pause ------------------------


def test_rate_limited_log_says_how_many_lines_it_held_back(caplog):
    clock = FakeClock()
    log = RateLimitedLog(10.0, clock, logging.getLogger("evloop.test"))
    with caplog.at_level(logging.INFO, logger="evloop.test"):
        assert log(logging.ERROR, "trouble %d", 1)
        for n in range(2, 51):
            clock.advance(0.1)
            assert not log(logging.ERROR, "trouble %d", n)
        clock.advance(5.2)  # 10.1s after the first line
        assert log(logging.ERROR, "trouble %d", 99)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["trouble 1", "trouble 99 (49 more like this in the last 10s)"]


class FlakyListener(socket.socket):
    """A listener whose accept() fails with EMFILE the first ``failures`` times."""

    failures = 0
    calls = 0

    def accept(self):
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return super().accept()


def test_out_of_descriptors_pauses_accepting_logs_once_and_recovers(caplog):
    listener = FlakyListener(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.failures = 50
    clock = FakeClock()
    with EventLoop("select", clock=clock) as loop:
        server = Server(sock=listener)
        loop.add_server(server, LengthSepEcho)
        with socket.create_connection(server.address, timeout=10) as client:
            client.sendall(frame(b"waiting"))
            loop.run_once(5)  # readable: accept fails, accepting pauses
            assert listener.calls == 1
            for _ in range(20):  # no time passes: the listener is not watched,
                loop.run_once(0)  # so nothing spins on the full backlog
            assert listener.calls == 1
            while listener.failures:  # each pause ends after accept_pause seconds
                clock.advance(server.accept_pause)
                loop.run_once(0)  # the resume
                loop.run_once(5)  # readable again: one more attempt
            assert listener.calls == 50
            clock.advance(server.accept_pause)
            for _ in range(4):  # descriptors are back: served
                loop.run_once(1)
            client.settimeout(10)
            assert client.recv(100) == frame(b"waiting")
    failures = [r for r in caplog.records if "accept failed" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in failures]
    assert "Too many open files" in failures[0].getMessage()


def test_a_protocol_error_over_the_size_limit_closes_only_that_client(running_loop):
    server = running_loop.serve(UntilNewline, limits=Limits(max_request_size=1000))
    with connect(server) as good, connect(server) as bad:
        bad.sendall(b"x" * 5000)
        assert recv_all(bad) == b""
        good.sendall(b"fine\n")
        assert recv_exactly(good, 3) == b"ok\n"


def test_remote_protocol_error_is_the_one_raised():
    harness = HandlerHarness(UntilNewline, limits=Limits(max_request_size=1))
    handler = harness.handler
    handler.incoming = bytearray()
    with pytest.raises(RemoteProtocolError):
        handler.data_received(b"xyz")


@pytest.mark.parametrize(
    "handler, oversized",
    [
        (LengthSepEcho, b"100\n"),
        ("lines", b"x" * 40 + b"\r\n"),
        ("netstring", b"100:"),
    ],
)
def test_a_framer_refusing_a_request_over_its_size_counts_as_request_too_large(handler, oversized):
    from evloop.protocols import LineEcho, NetstringEcho

    handler = {"lines": LineEcho, "netstring": NetstringEcho}.get(handler, handler)
    with EventLoop() as loop:
        server = Server("127.0.0.1", 0, limits=Limits(max_request_size=16))
        loop.add_server(server, handler)
        with connect(server) as client:
            client.sendall(oversized)
            client.settimeout(0)
            for _ in range(500):
                if loop.limit_hits.get("request_too_large"):
                    break
                loop.run_once(0.02)
        assert loop.limit_hits.get("request_too_large") == 1
        assert not loop.limit_hits.get("protocol_error")
