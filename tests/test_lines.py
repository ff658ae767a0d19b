"""LineFramer, LineHandler and LineEcho: in memory, then on real sockets."""

import logging
import socket

import pytest
from evloop.protocols import NEED_DATA, LineEcho, LineFramer, LineHandler
from hypothesis import given, settings
from hypothesis import strategies as st

from evloop import LocalProtocolError, RemoteProtocolError
from evloop.testing import HandlerHarness
from tests.conftest import connect, recv_all, recv_exactly
from tests.helpers import (
    assert_chunking_never_matters,
    assert_encode_round_trips,
    assert_framer_every_split,
    assert_handler_every_split,
)

# -- the framer -----------------------------------------------------------------


def test_crlf_lines_every_split_with_trailing_bytes_untouched():
    data = b"one\r\ntwo\r\n\r\nbare\nline\r\nthr"
    assert_framer_every_split(LineFramer, data, [b"one", b"two", b"", b"bare\nline"], leftover=3)


def test_newline_terminator_every_split():
    def make():
        return LineFramer(terminator=b"\n")

    assert_framer_every_split(make, b"a\nb\r\n\nc", [b"a", b"b\r", b""], leftover=1)


def test_long_terminator_split_anywhere_inside_it():
    def make():
        return LineFramer(terminator=b"<END>")

    data = b"x<EN<END><<END>abc<E"
    assert_framer_every_split(make, data, [b"x<EN", b"<"], leftover=5)


def test_end_of_stream_ends_the_last_line_or_is_an_error():
    assert_framer_every_split(LineFramer, b"a\r\nlast", [b"a", b"last"], eof=True, leftover=0)
    assert_framer_every_split(LineFramer, b"a\r\n", [b"a"], eof=True, leftover=0)

    def strict():
        return LineFramer(eof_ends_line=False)

    assert_framer_every_split(strict, b"a\r\nlast", [b"a"], eof=True, error="ended inside a request")
    assert_framer_every_split(strict, b"a\r\n", [b"a"], eof=True)


def test_line_limit_is_exact():
    def make():
        return LineFramer(5)

    assert_framer_every_split(make, b"12345\r\n\r\n", [b"12345", b""])
    assert_framer_every_split(make, b"ok\r\n123456\r\n", [b"ok"], error="longer than 5 bytes")
    # No terminator yet, but the sixth byte proves the line is too long.
    assert_framer_every_split(make, b"ok\r\n123456", [b"ok"], error="longer than 5 bytes")
    # Five bytes and half a terminator may still be a good line.
    assert_framer_every_split(make, b"12345\r", [], leftover=6)
    # ...but if the stream ends there, the half terminator is part of the
    # last line, which is then six bytes: over the limit.
    assert_framer_every_split(make, b"ok\r\n12345\r", [b"ok"], eof=True, error="longer than 5 bytes")
    assert_framer_every_split(make, b"ok\r\n1234\r", [b"ok", b"1234\r"], eof=True)


def test_too_long_carries_the_error_reply_and_sticks():
    framer = LineFramer(3, too_long_reply=b"ERR\r\n")
    framer.feed(b"abcd")
    for _ in range(2):
        with pytest.raises(RemoteProtocolError) as info:
            framer.next_request()
        assert info.value.reply == b"ERR\r\n"
        assert "b'abcd'" in info.value.message


def test_a_flood_without_terminator_is_refused_once_over_the_limit():
    framer = LineFramer(1000)
    framer.feed(b"x" * 1000 + b"\r")
    assert framer.next_request() is NEED_DATA  # 1000 bytes and half a terminator
    framer.feed(b"x")
    with pytest.raises(RemoteProtocolError, match="longer than 1000"):
        framer.next_request()
    framer = LineFramer(1000)
    framer.feed(b"x" * 100_000)
    with pytest.raises(RemoteProtocolError, match="longer than 1000"):
        framer.next_request()
    assert framer.buffered == 0  # the flood is not kept


class _CountingBuffer(bytearray):
    """A receive buffer that counts the bytes its searches look at."""

    looked_at = 0

    def find(self, sub, start=0, end=None):
        stop = len(self) if end is None else min(end, len(self))
        _CountingBuffer.looked_at += max(0, stop - start)
        return super().find(sub, start, end)


def test_a_slow_peers_partial_line_is_never_rescanned():
    _CountingBuffer.looked_at = 0
    framer = LineFramer(1 << 20)
    framer._buffer = _CountingBuffer()
    line = bytes(range(256)).replace(b"\r", b"") * 200
    for i in range(len(line)):
        framer.feed(line[i : i + 1])
        assert framer.next_request() is NEED_DATA
    framer.feed(b"\r\n")
    assert framer.next_request() == line
    # Byte at a time, each byte is searched about once, never once per read.
    assert _CountingBuffer.looked_at <= 2 * (len(line) + 2)


def test_encode_appends_the_terminator_and_refuses_two_lines():
    framer = LineFramer()
    assert framer.encode(b"hi") == b"hi\r\n"
    assert framer.encode("h\u00e9\r\n") == "h\u00e9\r\n".encode()
    with pytest.raises(LocalProtocolError):
        framer.encode(b"one\r\ntwo")
    assert LineFramer(terminator=b"\n").encode(b"a\r") == b"a\r\n"


@pytest.mark.parametrize(
    "terminator, line",
    [
        (b"\r\n\r\n", b"head\r\n"),  # b"head\r\n" + b"\r\n\r\n" ends at "head"
        (b"\r\n\r\n", b"head\r\n\r\n\r\n"),
        (b"abab", b"xab"),
    ],
)
def test_encode_refuses_a_line_whose_end_makes_the_terminator_early(terminator, line):
    # The terminator is not inside the line, but the line's end and the
    # terminator after it hold one that starts early: the peer would read
    # two lines.
    with pytest.raises(LocalProtocolError):
        LineFramer(terminator=terminator).encode(line)


def test_an_empty_terminator_is_refused():
    with pytest.raises(ValueError):
        LineFramer(terminator=b"")


_line_bytes = st.lists(
    st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b"xyz", b"\x00", b"\xff"]), max_size=40
).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.binary(max_size=80), _line_bytes),
    st.lists(st.integers(min_value=1, max_value=7), max_size=12),
    st.sampled_from([b"\r\n", b"\n", b"abc"]),
    st.booleans(),
    st.booleans(),
)
def test_property_any_bytes_give_lines_or_a_protocol_error(data, sizes, terminator, eof, eof_ends_line):
    """Any input yields lines or RemoteProtocolError, never anything else
    (framer_results lets only RemoteProtocolError through), and the chunking
    never changes the result."""

    def make():
        return LineFramer(8, terminator, eof_ends_line=eof_ends_line)

    for line in assert_chunking_never_matters(make, data, sizes, eof):
        assert len(line) <= 8 or eof
        assert eof or terminator not in line


@given(st.lists(st.binary(max_size=30).filter(lambda b: b"\r\n" not in b), max_size=10))
def test_property_encode_then_parse_round_trips(lines):
    assert_encode_round_trips(LineFramer(), lines)


# -- the handlers, in memory -------------------------------------------------------


class Upper(LineHandler):
    def handle_line(self, line):
        if line == b"quiet":
            return None
        if line == b"two":
            return "one\r\ntwo"  # two lines: a local protocol error
        return line.decode().upper()


def test_echo_answers_pipelined_lines_in_order_in_every_split():
    data = b"a\r\n\r\nbb\r\nccc\r\n"
    assert_handler_every_split(LineEcho, data, data, closed=False)


def test_a_hundred_pipelined_lines_in_one_read_leave_in_one_send():
    data = b"".join(b"line %d\r\n" % i for i in range(100))
    harness = HandlerHarness(LineEcho)
    assert harness.feed(data) == data
    assert harness.socket.send_calls == 1
    assert not harness.closed


def test_handle_line_may_return_str_or_nothing():
    harness = HandlerHarness(Upper)
    assert harness.feed(b"h\xc3\xa9llo\r\nquiet\r\nx\r\n") == "H\u00c9LLO\r\nX\r\n".encode()
    assert not harness.closed


def test_half_close_answers_the_last_unterminated_line_then_closes():
    harness = HandlerHarness(LineEcho)
    harness.feed(b"one\r\ntw")
    harness.feed_eof()
    assert harness.output == b"one\r\ntw\r\n"
    assert harness.closed


def test_too_long_line_gets_the_error_reply_after_earlier_replies(caplog):
    class Small(LineEcho):
        max_size = 10

    harness = HandlerHarness(Small, peer=("10.9.8.7", 4321))
    with caplog.at_level(logging.WARNING, "evloop"):
        sent = harness.feed(b"fine\r\n" + b"y" * 11 + b"\r\nnever\r\n")
    assert sent == b"fine\r\nERROR line too long\r\n"
    assert harness.closed
    assert "10.9.8.7:4321" in caplog.text and "longer than 10 bytes" in caplog.text


def test_error_reply_follows_the_terminator_and_can_be_turned_off():
    class Unix(LineEcho):
        terminator = b"\n"
        max_size = 3

    assert HandlerHarness(Unix).feed(b"abcdef") == b"ERROR line too long\n"

    class Silent(LineEcho):
        max_size = 3
        too_long_reply = None

    harness = HandlerHarness(Silent)
    assert harness.feed(b"abcdef") == b""
    assert harness.closed


def test_a_reply_of_two_lines_is_our_bug_logged_and_closed(caplog):
    harness = HandlerHarness(Upper, peer=("10.0.0.5", 99))
    # Our own bug closes at once (the engine's rule): nothing more is sent.
    assert harness.feed(b"x\r\ntwo\r\ny\r\n") == b""
    assert harness.closed
    assert "10.0.0.5:99" in caplog.text and "LocalProtocolError" in caplog.text


# -- real sockets ------------------------------------------------------------------


def test_echo_on_a_real_socket_pipelined_and_half_closed(running_loop):
    server = running_loop.serve(LineEcho)
    data = b"".join(b"request number %d\r\n" % i for i in range(1000))
    with connect(server) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == data


def test_an_overlong_line_closes_only_that_client(running_loop, caplog):
    class Small(LineEcho):
        max_size = 100

    server = running_loop.serve(Small)
    with connect(server) as good, connect(server) as bad:
        good.sendall(b"before\r\n")
        assert recv_exactly(good, 8) == b"before\r\n"
        bad.sendall(b"ok\r\n" + b"z" * 500)
        assert recv_all(bad) == b"ok\r\nERROR line too long\r\n"
        good.sendall(b"after\r\n")
        assert recv_exactly(good, 7) == b"after\r\n"
    assert "longer than 100 bytes" in caplog.text


def test_a_reply_that_is_not_bytes_or_str_is_a_local_error():
    from evloop import LocalProtocolError

    for wrong in (5, None, ["a"], 2.5):
        with pytest.raises(LocalProtocolError, match="must be bytes or str"):
            LineFramer().encode(wrong)


def test_the_servers_request_size_limit_bounds_lines_too():
    from evloop import Limits

    harness = HandlerHarness(LineEcho, limits=Limits(max_request_size=8))
    assert harness.feed(b"12345678\r\n") == b"12345678\r\n"
    harness.feed(b"123456789")
    assert harness.closed
