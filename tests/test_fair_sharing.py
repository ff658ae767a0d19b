"""Sharing a server fairly: the per-peer connection cap (over real sockets on
127.0.0.1 and, on Linux, a second loopback address), and warnings rate-limited
per kind (on a FakeClock, and on a real loop with its timer)."""

import logging
import socket
import sys

import pytest
from evloop.protocols import LengthSepEcho

from evloop import UnixServer
from evloop.limits import DEFAULT_LIMITS, Limits
from evloop.logs import RateLimitedWarnings, loop_warnings
from evloop.testing import FakeClock
from tests.conftest import connect, recv_all, recv_exactly
from tests.waiting import wait_on_loop


def frame(body):
    return b"%d\n" % len(body) + body


class Busy(LengthSepEcho):
    busy_reply = b"busy\n"


def echoed(sock, body=b"hi"):
    sock.sendall(frame(body))
    return recv_exactly(sock, len(frame(body))) == frame(body)


# -- the per-peer cap ------------------------------------------------------------


def test_the_default_cap_and_its_validation():
    assert DEFAULT_LIMITS.max_connections_per_peer == 256
    assert Limits(max_connections_per_peer=None).max_connections_per_peer is None
    for bad in (0, -1, 2.5, "3"):
        with pytest.raises(ValueError, match="max_connections_per_peer"):
            Limits(max_connections_per_peer=bad)


def test_one_address_past_its_cap_gets_the_busy_reply_others_are_served(running_loop, caplog):
    server = running_loop.serve(Busy, host="0.0.0.0", limits=Limits(max_connections_per_peer=3))
    address = ("127.0.0.1", server.port)
    held = [socket.create_connection(address, timeout=10) for _ in range(3)]
    try:
        assert all(echoed(sock) for sock in held)
        refused = []
        for _ in range(4):
            with socket.create_connection(address, timeout=10) as extra:
                refused.append(recv_all(extra))
        assert refused == [b"busy\n"] * 4
        assert running_loop.call(server.peer_connections, "127.0.0.1") == 3
        assert running_loop.call(lambda: server.refused) == 4
        if sys.platform.startswith("linux"):  # all of 127/8 is loopback there
            other = socket.socket()
            other.settimeout(10)
            other.bind(("127.0.0.2", 0))
            other.connect(address)
            with other:
                assert echoed(other, b"another address")
        assert echoed(held[0], b"still served")
        # One leaves: once the server has seen the close, there is room again.
        held.pop().close()
        assert wait_on_loop(running_loop, lambda: server.peer_connections("127.0.0.1") == 2)
        with socket.create_connection(address, timeout=10) as again:
            assert echoed(again, b"room again")
    finally:
        for sock in held:
            sock.close()
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1, "refusals are rate-limited, not one line each"
    assert "Limits.max_connections_per_peer" in lines[0] and "127.0.0.1" in lines[0]


def test_connections_that_come_and_go_do_not_count(running_loop):
    server = running_loop.serve(LengthSepEcho, limits=Limits(max_connections_per_peer=2))
    for n in range(40):
        with connect(server) as sock:
            assert echoed(sock, b"%d" % n)
            sock.shutdown(socket.SHUT_WR)
            assert recv_all(sock) == b""  # the server has closed its side
    with connect(server) as a, connect(server) as b:
        assert echoed(a) and echoed(b)
        # Counted exactly: the 40 that came and went left nothing behind.
        assert running_loop.call(server.peer_connections, "127.0.0.1") == 2


def test_no_cap_means_none(running_loop):
    server = running_loop.serve(LengthSepEcho, limits=Limits(max_connections_per_peer=None))
    socks = [connect(server) for _ in range(5)]
    try:
        assert all(echoed(sock) for sock in socks)
    finally:
        for sock in socks:
            sock.close()


def test_unix_clients_have_no_address_and_are_not_capped(running_loop, tmp_path):
    path = str(tmp_path / "cap.sock")
    server = UnixServer(path, limits=Limits(max_connections_per_peer=1))
    running_loop.call(running_loop.loop.add_server, server, LengthSepEcho)
    socks = []
    try:
        for _ in range(3):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(10)
            sock.connect(path)
            socks.append(sock)
        assert all(echoed(sock) for sock in socks)
    finally:
        for sock in socks:
            sock.close()


def test_a_tls_connection_counts_once_through_its_handshake(running_loop, tmp_path):
    pytest.importorskip("cryptography")
    from evloop.tls import make_client_context, make_server_context
    from tests.certs import make_tls_files

    files = make_tls_files(tmp_path)
    server_context = make_server_context(str(files.server_cert), str(files.server_key))
    client_context = make_client_context(str(files.ca))
    server = running_loop.serve(Busy, ssl=server_context, limits=Limits(max_connections_per_peer=2))

    def tls_client():
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        return client_context.wrap_socket(raw, server_hostname="localhost")

    with tls_client() as a, tls_client() as b:
        assert echoed(a) and echoed(b)  # both handed over from handshake to handler
        assert running_loop.call(server.peer_connections, "127.0.0.1") == 2
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as third:
            assert recv_all(third) == b""  # refused; no plaintext busy reply on TLS
    assert wait_on_loop(running_loop, lambda: server.peer_connections("127.0.0.1") == 0)


def test_the_cli_option_sets_the_cap():
    from evloop.cli import _limits, build_parser

    def cap(value):
        args = build_parser().parse_args(["serve", "--max-connections-per-peer", value, "m:H"])
        return _limits(args).max_connections_per_peer

    assert (cap("7"), cap("0")) == (7, None)


# -- warnings rate-limited per kind ---------------------------------------------


def test_a_burst_of_identical_warnings_is_bounded_and_counted(caplog):
    clock = FakeClock()
    warnings = RateLimitedWarnings(logging.getLogger("evloop.test"), burst=2, interval=10.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="evloop.test"):
        for n in range(550):
            warnings.warn("tls-handshake-timeout", "127.0.0.1:%d: TLS handshake timeout", n)
            clock.advance(0.001)
        warnings.warn("protocol-error", "a different kind is not held back")
        clock.advance(10)  # the window ends: the next line of the kind says what was held
        warnings.warn("tls-handshake-timeout", "127.0.0.1:%d: TLS handshake timeout", 999)
        warnings.flush()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "127.0.0.1:0: TLS handshake timeout",
        "127.0.0.1:1: TLS handshake timeout",
        "a different kind is not held back",
        "suppressed 548 similar warnings (tls-handshake-timeout) in the last 10s",
        "127.0.0.1:999: TLS handshake timeout",
    ]
    assert warnings.suppressed_total == {"tls-handshake-timeout": 548}


def test_a_loops_timer_writes_the_count_when_the_window_ends(running_loop, caplog):
    def burst():
        warnings = loop_warnings(running_loop.loop)
        warnings.interval = 0.2
        for n in range(100):
            warnings.warn("protocol-error", "peer %d broke the protocol", n)
        return warnings

    with caplog.at_level(logging.WARNING, logger="evloop"):
        running_loop.call(burst)

        def summarized():
            return any("suppressed" in r.getMessage() for r in caplog.records)

        assert wait_on_loop(running_loop, summarized)
    lines = [r.getMessage() for r in caplog.records if r.name == "evloop"]
    assert lines == [
        "peer 0 broke the protocol",
        "suppressed 99 similar warnings (protocol-error) in the last 0.2s",
    ]


def test_the_loops_close_writes_what_is_still_counted(caplog):
    from evloop import EventLoop

    loop = EventLoop()
    warnings = loop_warnings(loop)
    assert loop_warnings(loop) is warnings  # one per loop
    with caplog.at_level(logging.WARNING, logger="evloop"):
        for _ in range(3):
            warnings.warn("max-connections", "refused")
        loop.close()
    assert [r.getMessage() for r in caplog.records] == [
        "refused",
        "suppressed 2 similar warnings (max-connections) in the last 10s",
    ]


def test_burst_and_interval_are_checked():
    with pytest.raises(ValueError):
        RateLimitedWarnings(burst=0)
    with pytest.raises(ValueError):
        RateLimitedWarnings(interval=0)


def test_a_traceback_can_be_rate_limited_too(caplog):
    warnings = RateLimitedWarnings(logging.getLogger("evloop.test"), clock=FakeClock())
    with caplog.at_level(logging.ERROR, logger="evloop.test"):
        for _ in range(3):
            try:
                raise OSError("accept went wrong")
            except OSError as exc:
                warnings.warn("accept-error", "accept failed", level=logging.ERROR, exc_info=exc)
    assert len(caplog.records) == 1 and caplog.records[0].exc_info[1].args == ("accept went wrong",)
    assert warnings.suppressed_total == {"accept-error": 2}


def test_a_closed_loop_is_not_kept_alive_by_its_warnings():
    import gc
    import weakref

    from evloop import EventLoop

    loop = EventLoop()
    loop_warnings(loop).warn("protocol-error", "once")
    loop.close()
    gone = weakref.ref(loop)
    del loop
    gc.collect()
    assert gone() is None
