"""LengthSepFramer, LengthSepBody and LengthSepEcho without sockets."""

from evloop.protocols import LengthSepBody, LengthSepEcho, LengthSepFramer
from hypothesis import given, settings
from hypothesis import strategies as st

from evloop import RemoteProtocolError
from evloop.testing import HandlerHarness
from tests.helpers import (
    assert_chunking_never_matters,
    assert_encode_round_trips,
    assert_framer_every_split,
    assert_handler_every_split,
)


def frame(body):
    return b"%d\n" % len(body) + body


def test_framer_every_split_with_trailing_bytes_untouched():
    data = frame(b"hello") + frame(b"") + frame(b"x\ny\n") + b"12\nabc"
    assert_framer_every_split(LengthSepFramer, data, [b"hello", b"", b"x\ny\n"], leftover=3)


def test_framer_refuses_bad_length_lines():
    for bad, reason in [
        (b"x\nabc", "not a decimal number"),
        (b"-1\n", "not a decimal number"),
        (b" 5\nhello", "not a decimal number"),
        (b"\nabc", "not a decimal number"),
        (b"99999999999\n", "longer than"),
        (b"2000000\n", "over the limit"),
    ]:
        assert_framer_every_split(LengthSepFramer, frame(b"ok") + bad, [b"ok"], error=reason)


def test_length_is_checked_before_the_body_arrives():
    framer = LengthSepFramer(max_size=10)
    framer.feed(b"11\n")
    try:
        framer.next_request()
    except RemoteProtocolError as exc:
        assert "over the limit of 10" in exc.message
    else:
        raise AssertionError("an oversize length was trusted")


def test_the_error_sticks():
    framer = LengthSepFramer()
    framer.feed(b"zz\n")
    for _ in range(2):
        try:
            framer.next_request()
        except RemoteProtocolError:
            pass
        else:
            raise AssertionError("no error")


def test_end_of_stream_inside_a_request_is_an_error():
    assert_framer_every_split(
        LengthSepFramer, frame(b"a") + b"5\nhel", [b"a"], error="ended inside a request", eof=True
    )
    assert_framer_every_split(LengthSepFramer, frame(b"a"), [b"a"], eof=True)


def test_body_answers_and_closes_in_every_split():
    assert_handler_every_split(LengthSepBody, b"5\nhello", b"hello", closed=True)


def test_body_ignores_what_follows_the_first_request():
    assert_handler_every_split(LengthSepBody, b"5\nhello3\nabc", b"hello", closed=True)


def test_echo_answers_pipelined_requests_in_order_in_every_split():
    bodies = [b"a" * n for n in (0, 1, 9, 10, 11)] + [b"\n\n"]
    data = b"".join(frame(b) for b in bodies)
    assert_handler_every_split(LengthSepEcho, data, data, closed=False)


def test_echo_hundred_pipelined_in_one_read_leave_in_one_send():
    data = b"".join(frame(b"%d" % i) for i in range(100))
    harness = HandlerHarness(LengthSepEcho)
    assert harness.feed(data) == data
    assert harness.socket.send_calls == 1
    assert not harness.closed


def test_malformed_length_closes_with_a_warning(caplog):
    harness = HandlerHarness(LengthSepEcho, peer=("10.1.2.3", 5555))
    assert harness.feed(frame(b"ok") + b"abc\n") == frame(b"ok")
    assert harness.closed
    assert "10.1.2.3:5555" in caplog.text and "not a decimal number" in caplog.text


def test_max_size_is_configurable_on_the_handler():
    class Small(LengthSepEcho):
        max_size = 4

    harness = HandlerHarness(Small)
    assert harness.feed(frame(b"1234")) == frame(b"1234")
    harness.feed(frame(b"12345"))
    assert harness.closed


def test_echo_half_close_still_delivers_replies():
    harness = HandlerHarness(LengthSepEcho)
    harness.feed(frame(b"one") + frame(b"two"))
    harness.feed_eof()
    assert harness.output == frame(b"one") + frame(b"two")
    assert harness.closed


def test_echo_partial_sends_resume_when_the_peer_reads():
    body = bytes(range(256)) * 40
    harness = HandlerHarness(LengthSepEcho, send_window=1000)
    harness.feed(frame(body))
    while len(harness.output) < len(frame(body)):
        assert harness.drain()
    assert harness.output == frame(body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60), st.lists(st.integers(min_value=1, max_value=7), max_size=12))
def test_property_any_bytes_give_requests_or_a_protocol_error(data, sizes):
    """Any input yields requests or RemoteProtocolError, never anything else,
    and the chunking never changes which."""
    assert_chunking_never_matters(lambda: LengthSepFramer(max_size=50), data, sizes)


@given(st.lists(st.binary(max_size=30), max_size=10))
def test_property_encode_then_parse_round_trips(bodies):
    assert_encode_round_trips(LengthSepFramer(), bodies)
