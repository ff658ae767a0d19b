"""Hostile PROXY protocol headers, over real sockets on 127.0.0.1: missing,
malformed, oversized, untrusted, too slow, by the hundred. Each costs one
rate-limited warning naming the peer and that one connection; a client
already being served never notices, and nothing is left held afterwards."""

import logging
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evloop import ClientHandler, Limits, ProxyProtocol
from evloop.logs import loop_warnings
from tests.conftest import RunningLoop, recv_exactly
from tests.proxy_headers import tlv, v1, v2
from tests.waiting import wait_on_loop


class Echo(ClientHandler):
    close_when_done = False
    setups = 0

    def setup(self):
        Echo.setups += 1

    def data_received(self, data):
        self.send(data)


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def at(self, level):
        return [r.getMessage() for r in self.records if r.levelno == level]


@pytest.fixture
def records():
    handler = Records()
    logger = logging.getLogger("evloop")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old)


@pytest.fixture
def running():
    loop = RunningLoop().start()
    Echo.setups = 0
    yield loop
    loop.stop()


def serve(running, trusted=("127.0.0.1",), **options):
    limits = options.pop("limits", Limits())
    proxy = ProxyProtocol(trusted=list(trusted), **options)
    return running.serve(Echo, proxy_protocol=proxy, limits=limits)


def closed_by_server(sock, timeout=10):
    """Whether the server closes ``sock`` (a FIN or a reset) within ``timeout``."""
    sock.settimeout(timeout)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def good_client(server):
    sock = socket.create_connection(server.address, timeout=10)
    sock.sendall(v2() + b"ping")
    assert recv_exactly(sock, 4) == b"ping"
    return sock


def still_served(sock, n):
    message = b"still here %d" % n
    sock.sendall(message)
    assert recv_exactly(sock, len(message)) == message


BAD = {
    "missing (plain HTTP)": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "no PROXY protocol header"),
    "v1 bad address": (b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n", "bad TCP4 address"),
    "v1 no CRLF": (b"PROXY UNKNOWN " + b"A" * 200, "without CRLF"),
    "v1 lone LF": (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\npayload", "lone CR or LF"),
    "v2 bad version": (v2()[:12] + b"\x31" + v2()[13:], "version/command"),
    "v2 oversized": (v2()[:14] + b"\xff\xff", "over the limit"),
    "v2 TLV past the end": (v2(tlvs=b"\x01\x00\x09ab"), "runs past"),
    "v2 bad CRC": (v2(crc=True)[:-1] + b"\x00", "CRC32c"),
    "binary garbage": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "no PROXY protocol header"),
    "ends mid-header": (v2()[:20], "end of stream after 20 bytes"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_a_bad_header_is_one_warning_naming_the_peer_and_one_closed_connection(running, records, name):
    data, reason = BAD[name]
    server = serve(running)
    good = good_client(server)
    try:
        with socket.create_connection(server.address, timeout=10) as bad:
            port = bad.getsockname()[1]
            bad.sendall(data)
            if name == "ends mid-header":
                bad.shutdown(socket.SHUT_WR)
            assert closed_by_server(bad)
        warnings = [m for m in records.at(logging.WARNING) if f"127.0.0.1:{port}" in m]
        assert len(warnings) == 1 and reason in warnings[0] and "closing the connection" in warnings[0]
        still_served(good, 1)
        assert Echo.setups == 1  # the bad client never reached a handler's setup()
        assert not records.at(logging.ERROR)
        assert wait_on_loop(running, lambda: server.connections == 1 and server.proxy_reception.buffered == 0)
    finally:
        good.close()


def test_the_oversized_header_is_refused_from_its_first_16_bytes(running):
    server = serve(running, max_header_size=1024)
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(v2()[:14] + (2000).to_bytes(2, "big"))  # and not one byte more
        assert closed_by_server(sock)


def test_a_header_too_slow_is_cut_at_the_handshake_timeout(running, records):
    server = serve(running, limits=Limits(handshake_timeout=0.3))
    good = good_client(server)
    try:
        silent = socket.create_connection(server.address, timeout=10)
        dribbler = socket.create_connection(server.address, timeout=10)
        started = time.monotonic()
        dribbler.sendall(b"PROXY TCP4 1.2")
        assert closed_by_server(silent) and closed_by_server(dribbler)
        assert 0.25 < time.monotonic() - started < 5
        silent.close()
        dribbler.close()
        timeouts = [
            m for m in records.at(logging.WARNING) if "no complete PROXY protocol header within 0.3s" in m
        ]
        assert len(timeouts) == 1  # rate-limited: one line per kind per window
        assert loop_warnings(running.loop).suppressed_total.get("proxy-header-timeout") == 1
        assert server.proxy_reception.refusals == {"proxy-header-timeout": 2}
        still_served(good, 1)
    finally:
        good.close()


def test_a_header_dribbled_within_the_timeout_is_served(running):
    server = serve(running, limits=Limits(handshake_timeout=5))
    header = v2(tlvs=tlv(2, b"example.com"), crc=True)
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i, byte in enumerate(header):
            sock.sendall(bytes([byte]))
            if i % 8 == 0 and i + 1 < len(header):
                assert wait_on_loop(running, lambda i=i: server.proxy_reception.buffered == i + 1)
        sock.sendall(b"done")
        assert recv_exactly(sock, 4) == b"done"


def test_a_flood_of_bad_headers_is_rate_limited_and_the_loop_serves_on(running, records):
    server = serve(running)
    good = good_client(server)
    try:
        count = 200
        for n in range(count):
            with socket.create_connection(server.address, timeout=10) as bad:
                bad.sendall(b"NOT A HEADER %d\r\n" % n)
                assert closed_by_server(bad)
            if n % 50 == 0:
                still_served(good, n)
        warnings = loop_warnings(running.loop)
        assert wait_on_loop(
            running, lambda: warnings.suppressed_total.get("proxy-header-invalid", 0) == count - 1
        )
        assert len([m for m in records.at(logging.WARNING) if "bad PROXY protocol header" in m]) == 1
        assert server.proxy_reception.refusals == {"proxy-header-invalid": count}
        assert not records.at(logging.ERROR)
        assert wait_on_loop(running, lambda: server.connections == 1)
    finally:
        good.close()


def test_untrusted_sources_are_refused_at_accept(running, records):
    server = serve(running, trusted=("10.0.0.0/8", "::1"))
    for _ in range(50):
        with socket.create_connection(server.address, timeout=10) as sock:
            sock.sendall(v1())
            assert closed_by_server(sock)
    assert Echo.setups == 0
    assert wait_on_loop(running, lambda: server.refused == 50 and server.connections == 0)
    assert server.proxy_reception.refusals == {"proxy-untrusted": 50}
    assert len([m for m in records.at(logging.WARNING) if "not a trusted source" in m]) == 1


def test_hundreds_of_half_headers_are_bounded_and_all_released(running):
    server = serve(running, limits=Limits(handshake_timeout=1.0))
    reception = server.proxy_reception
    half = v2(tlvs=tlv(4, b"\0" * 200))[:150]
    socks = []
    try:
        for _ in range(300):
            sock = socket.create_connection(server.address, timeout=10)
            sock.sendall(half)
            socks.append(sock)
        assert wait_on_loop(running, lambda: reception.buffered == 300 * 150)
        assert reception.headers_under_way == 300
        assert wait_on_loop(running, lambda: server.connections == 0, timeout=20)
        assert (reception.buffered, reception.headers_under_way) == (0, 0)
        assert all(closed_by_server(sock) for sock in socks)
    finally:
        for sock in socks:
            sock.close()


def test_a_bare_connect_and_close_is_only_a_debug_line(running, records):
    """A TCP health check connects and leaves without a byte."""
    server = serve(running)
    socket.create_connection(server.address, timeout=10).close()
    assert wait_on_loop(running, lambda: server.connections == 0)
    assert not records.at(logging.WARNING)
    assert any("closed before sending a PROXY protocol header" in m for m in records.at(logging.DEBUG))


@pytest.fixture(scope="module")
def garbage_server():
    running = RunningLoop().start()
    server = running.serve(
        Echo, proxy_protocol=ProxyProtocol(trusted=["127.0.0.1"]), limits=Limits(handshake_timeout=0.5)
    )
    yield running, server
    running.stop()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(
        st.binary(max_size=300),
        st.sampled_from([v1(), v2(crc=True), v2("TCP6", ("::1", 1), ("::2", 2), tlvs=tlv(1, b"h2"))]).flatmap(
            lambda header: st.tuples(st.integers(0, len(header) - 1), st.binary(min_size=1, max_size=4)).map(
                lambda cut: header[: cut[0]] + cut[1] + header[cut[0] + 1 :]
            )
        ),
    )
)
def test_any_bytes_serve_or_close_that_connection_only(garbage_server, data):
    running, server = garbage_server
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        closed_by_server(sock)
    good = good_client(server)
    good.close()
    assert wait_on_loop(running, lambda: server.connections == 0 and server.proxy_reception.buffered == 0)
