"""Malformed and oversized input for every framer (and for the HTTP and
WebSocket parsers, which are not Framer subclasses): each is refused with the
protocol's RemoteProtocolError, in every chunking, and none buffers more than
its limit however much a peer sends."""

import logging
import struct

import pytest
from evloop.protocols import NEED_DATA
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evloop import RemoteProtocolError
from evloop.testing import HandlerHarness
from tests.helpers import assert_framer_every_split, framer_results
from tests.hostile.targets import FRAMERS, NOT_SERVERS, framer_classes, handler_classes, server_cases

LIMIT = 64
# A framer may hold a header it has parsed beyond the payload limit.
SLACK = 32

CASES = {case.name: case for case in FRAMERS}


def test_every_framer_and_handler_is_a_target():
    covered = {type(case.make(LIMIT)).__name__ for case in FRAMERS}
    assert set(framer_classes()) <= covered, "add the new framer to tests/hostile/targets.py"
    served = set()
    for case in server_cases():
        served.update(cls.__name__ for cls in case.handler.__mro__)
    missing = set(handler_classes()) - served - set(NOT_SERVERS)
    assert not missing, f"add these handlers to tests/hostile/targets.py: {missing}"


def good_requests(case):
    requests, error, _ = framer_results(lambda: case.make(LIMIT), [case.good])
    assert error is None and requests, f"{case.name}: the good sample does not parse"
    return requests


@pytest.mark.parametrize("name", sorted(CASES))
def test_malformed_input_is_refused_in_every_chunking(name):
    case = CASES[name]
    expected = good_requests(case)
    for bad in case.malformed:
        assert_framer_every_split(lambda: case.make(LIMIT), case.good + bad, expected, error="")


# A line framer ends the last line at the end of the stream (yoton's wire).
@pytest.mark.parametrize("name", sorted(set(CASES) - {"lines"}))
def test_the_stream_ending_inside_a_request_is_refused(name):
    case = CASES[name]
    expected = good_requests(case)
    cut = case.big(10)[:-1]
    assert_framer_every_split(lambda: case.make(LIMIT), case.good + cut, expected, error="", eof=True)


def feed_tracking(framer, chunks):
    """Feed chunks, taking requests after each; return (requests, error,
    most bytes held after taking the requests of a chunk)."""
    requests, most = 0, 0
    try:
        for chunk in chunks:
            framer.feed(chunk)
            while framer.next_request() is not NEED_DATA:
                requests += 1
            most = max(most, framer.buffered)
    except RemoteProtocolError as exc:
        return requests, exc, most
    return requests, None, most


@pytest.mark.parametrize("name", sorted(CASES))
def test_an_oversized_request_is_refused_before_it_is_buffered(name):
    case = CASES[name]
    data = case.big(100 * LIMIT)
    for size in (1, 7, 4096):
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        requests, error, most = feed_tracking(case.make(LIMIT), chunks)
        assert requests == 0 and error is not None, f"{name}: {len(data)} bytes accepted"
        assert most <= LIMIT + SLACK, f"{name}: held {most} bytes"
    # The same encoding of a small request is fine: it is the size that is refused.
    assert feed_tracking(case.make(LIMIT), [case.big(8)])[:2] == (1, None)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("filler", [b"0", b"9", b"a", b"\n", b"\r\n", b"\x00", b"*", b"$", b":", b" ", b'"'])
def test_a_mebibyte_of_one_byte_never_buffers_past_the_limit(name, filler):
    case = CASES[name]
    chunk = filler * (4096 // len(filler))
    _requests, _error, most = feed_tracking(case.make(LIMIT), [chunk] * 256)
    # Refused, or turned into (empty) requests, or skipped: nothing piles up.
    assert most <= LIMIT + SLACK, f"{name} held {most} bytes of {filler!r}"


@pytest.mark.parametrize("name", sorted(CASES))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.one_of(
        st.binary(max_size=200),
        st.tuples(st.integers(0, 60), st.binary(max_size=20)).map(lambda t: (t[0], t[1])),
    ),
    sizes=st.lists(st.integers(1, 9), max_size=20),
)
def test_property_garbage_gives_requests_or_the_protocol_error(name, data, sizes):
    """Any bytes, or a valid stream with bytes spliced in: requests or
    RemoteProtocolError, never another exception, whatever the chunking."""
    case = CASES[name]
    if isinstance(data, tuple):
        at, junk = data
        good = case.good
        data = good[:at] + junk + good[at:]
    whole = framer_results(lambda: case.make(LIMIT), [data], eof=True)
    chunks, rest = [], data
    for size in sizes:
        chunks.append(rest[:size])
        rest = rest[size:]
    chunks.append(rest)
    pieces = framer_results(lambda: case.make(LIMIT), chunks, eof=True)
    assert whole[0] == pieces[0]
    assert (whole[1] is None) == (pieces[1] is None)


# -- HTTP and WebSocket: parsers that are not Framers -----------------------------

SERVERS = {case.name: case for case in server_cases()}


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n", b"431"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n", b"413"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", b"501"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", b"400"),
    ],
)
def test_malformed_http_gets_its_error_status_and_a_close(request_bytes, status, caplog):
    harness = HandlerHarness(SERVERS["http"].handler, peer=("10.9.8.7", 4321))
    reply = harness.feed(request_bytes)
    assert reply.startswith(b"HTTP/1.1 " + status), reply[:80]
    assert harness.closed
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and "10.9.8.7:4321" in warnings[0].getMessage()


def websocket_open():
    harness = HandlerHarness(SERVERS["websocket"].handler)
    assert harness.feed(SERVERS["websocket"].request).startswith(b"HTTP/1.1 101 ")
    return harness


def close_code(frame_bytes):
    assert frame_bytes[0] == 0x88, frame_bytes[:4]  # FIN + Close
    return struct.unpack("!H", frame_bytes[2:4])[0]


def test_an_unmasked_client_frame_is_a_protocol_error():
    harness = websocket_open()
    reply = harness.feed(b"\x81\x05hello")  # RFC 6455 section 5.1: must be masked
    assert close_code(reply) == 1002


def test_an_oversized_websocket_message_is_refused_at_the_limit():
    harness = websocket_open()
    handler = harness.handler
    limit = handler.upgraded.max_message_size
    header = b"\x82\xff" + struct.pack("!Q", 1 << 40) + b"\x00\x00\x00\x00"  # 1 TiB, masked
    assert harness.feed(header) == b""
    for _ in range(limit // 65536):
        assert harness.feed(bytes(65536)) == b""  # up to the limit: held
    reply = harness.feed(bytes(65536))  # past it: 1009, not 1 TiB of memory
    assert close_code(reply) == 1009
    assert harness.closed
