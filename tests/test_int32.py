"""Int32Framer and its handlers; Twisted's Int32StringReceiver as the peer."""

import logging
import socket
import struct

import pytest
from evloop.protocols import Int32Echo, Int32Framer, Int32Handler
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from twisted.protocols.basic import Int32StringReceiver

from evloop import LocalProtocolError, RemoteProtocolError
from evloop.testing import HandlerHarness
from tests.conftest import connect, recv_all
from tests.helpers import (
    assert_chunking_never_matters,
    assert_encode_round_trips,
    assert_framer_every_split,
    assert_handler_every_split,
    framer_results,
)


def msg(payload):
    return struct.pack("!I", len(payload)) + payload


# -- the framer -----------------------------------------------------------------------


def test_every_split_with_trailing_bytes_untouched():
    data = msg(b"hello") + msg(b"") + msg(b"\x00\x00\x00\x05") + msg(b"x" * 300) + b"\x00\x00"
    assert_framer_every_split(Int32Framer, data, [b"hello", b"", b"\x00\x00\x00\x05", b"x" * 300], leftover=2)
    # A partial payload stays buffered too, prefix consumed.
    assert_framer_every_split(Int32Framer, msg(b"a") + msg(b"bcd")[:6], [b"a"], leftover=2)


def test_an_oversize_length_is_refused_before_the_payload_arrives():
    framer = Int32Framer(max_size=100)
    framer.feed(struct.pack("!I", 101))
    with pytest.raises(RemoteProtocolError, match=r"message length 101 .* over the limit of 100"):
        framer.next_request()
    assert framer.buffered == 0


@pytest.mark.parametrize("length", [100_000, 0x7FFFFFFF, 0xFFFFFFFF])
def test_huge_lengths_are_refused_at_the_default_limit(length):
    assert_framer_every_split(
        Int32Framer,
        msg(b"ok") + struct.pack("!I", length) + b"junk",
        [b"ok"],
        error="over the limit of 99999 bytes",
    )


def test_the_limit_itself_is_allowed():
    payload = b"m" * 99999
    framer = Int32Framer()
    framer.feed(msg(payload))
    assert framer.next_request() == payload


def test_the_error_sticks():
    framer = Int32Framer(max_size=1)
    framer.feed(msg(b"ab"))
    for _ in range(2):
        with pytest.raises(RemoteProtocolError):
            framer.next_request()


@pytest.mark.parametrize("tail", [b"\x00", b"\x00\x00\x00", b"\x00\x00\x00\x03ab", b"\x00\x00\x00\x01"])
def test_end_of_stream_inside_a_message_is_an_error(tail):
    assert_framer_every_split(Int32Framer, msg(b"a") + tail, [b"a"], error="ended inside a request", eof=True)


def test_end_of_stream_between_messages_is_fine():
    assert_framer_every_split(Int32Framer, msg(b"a") + msg(b""), [b"a", b""], eof=True)


def test_encode_refuses_what_the_peer_would_refuse():
    framer = Int32Framer(max_size=3)
    assert framer.encode(b"abc") == b"\x00\x00\x00\x03abc"
    with pytest.raises(LocalProtocolError):
        framer.encode(b"abcd")


# Whole messages, bare prefixes around the limit of 25, and junk.
_int32ish = st.lists(
    st.one_of(
        st.binary(max_size=30).map(msg),
        st.integers(min_value=20, max_value=30).map(struct.Struct("!I").pack),
        st.binary(min_size=1, max_size=5),
    ),
    max_size=6,
).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.binary(max_size=60), _int32ish),
    st.lists(st.integers(min_value=1, max_value=7), max_size=12),
    st.booleans(),
)
def test_property_any_bytes_give_messages_or_a_protocol_error(data, sizes, eof):
    """Any input yields payloads or RemoteProtocolError, never anything
    else, and the chunking never changes the result."""

    def make():
        return Int32Framer(max_size=25)

    payloads = assert_chunking_never_matters(make, data, sizes, eof)
    assert all(len(payload) <= 25 for payload in payloads)


@given(st.lists(st.binary(max_size=40), max_size=10))
def test_property_encode_then_parse_round_trips(payloads):
    assert_encode_round_trips(Int32Framer(), payloads)


class _TwistedPeer(Int32StringReceiver):
    """Twisted's own codec, driven without a reactor."""

    def __init__(self, max_length=None):
        self.strings = []
        self.too_long = False
        if max_length is not None:
            self.MAX_LENGTH = max_length
        self.transport = StringTransport()
        self.makeConnection(self.transport)

    def stringReceived(self, string):  # noqa: N802 (Twisted's name)
        self.strings.append(string)

    def lengthLimitExceeded(self, length):  # noqa: N802 (Twisted's name)
        self.too_long = True
        super().lengthLimitExceeded(length)

    def take_output(self):
        data = self.transport.value()
        self.transport.clear()
        return data


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=40), _int32ish))
def test_property_twisted_and_we_agree_on_any_bytes(data):
    """Differential test: same payloads as Twisted's Int32StringReceiver,
    and we refuse an oversize length exactly when it does."""
    twisted = _TwistedPeer(max_length=25)
    twisted.dataReceived(data)
    ours, error, _ = framer_results(lambda: Int32Framer(max_size=25), [data])
    assert ours == twisted.strings
    assert (error is not None) == twisted.too_long


# -- handlers, in memory -----------------------------------------------------------------


class Split(Int32Handler):
    def string_received(self, string):
        if not string:
            return None
        for word in string.split()[:-1]:
            self.send_string(word)
        return string.split()[-1]


def test_echo_answers_pipelined_messages_in_order_in_every_split():
    data = msg(b"a") + msg(b"") + msg(b"b" * 10)
    assert_handler_every_split(Int32Echo, data, data, closed=False)


def test_a_hundred_pipelined_in_one_read_leave_in_one_send():
    data = b"".join(msg(b"%d" % i) for i in range(100))
    harness = HandlerHarness(Int32Echo)
    assert harness.feed(data) == data
    assert harness.socket.send_calls == 1


def test_string_received_may_reply_nothing_or_more():
    harness = HandlerHarness(Split)
    assert harness.feed(msg(b"") + msg(b"one two three")) == msg(b"one") + msg(b"two") + msg(b"three")


def test_oversize_length_closes_with_a_warning(caplog):
    harness = HandlerHarness(Int32Echo, peer=("10.2.2.2", 6000))
    with caplog.at_level(logging.WARNING, "evloop"):
        assert harness.feed(msg(b"ok") + struct.pack("!I", 1 << 31)) == msg(b"ok")
    assert harness.closed
    assert "10.2.2.2:6000" in caplog.text and "over the limit" in caplog.text


def test_a_truncated_message_at_end_of_stream_is_logged(caplog):
    harness = HandlerHarness(Int32Echo, peer=("10.2.2.3", 6001))
    harness.feed(msg(b"ok") + b"\x00\x00\x00\x09abc")
    harness.feed_eof()
    assert harness.output == msg(b"ok")
    assert harness.closed
    assert "10.2.2.3:6001" in caplog.text and "ended inside a request" in caplog.text


def test_max_size_is_configurable_on_the_handler():
    class Big(Int32Echo):
        max_size = 1 << 20

    payload = bytes(range(256)) * 1024
    harness = HandlerHarness(Big)
    assert harness.feed(msg(payload)) == msg(payload)


# -- real sockets, Twisted's codec as the client -------------------------------------------


def test_twisted_client_against_our_server_pipelined(running_loop):
    server = running_loop.serve(Int32Echo)
    peer = _TwistedPeer()
    payloads = [b"message %d" % i for i in range(1000)] + [b"\xff" * 99999, b""]
    for payload in payloads:
        peer.sendString(payload)
    with connect(server) as sock:
        sock.sendall(peer.take_output())
        sock.shutdown(socket.SHUT_WR)
        peer.dataReceived(recv_all(sock))
    assert peer.strings == payloads
    assert not peer.too_long


def test_a_bad_client_is_closed_and_the_others_are_served(running_loop, caplog):
    server = running_loop.serve(Int32Echo)
    good = _TwistedPeer()
    with connect(server) as good_sock, connect(server) as bad_sock:
        bad_sock.sendall(struct.pack("!I", 100_000))  # over Twisted's and our 99,999
        assert recv_all(bad_sock) == b""
        good.sendString(b"still here")
        good_sock.sendall(good.take_output())
        good_sock.shutdown(socket.SHUT_WR)
        good.dataReceived(recv_all(good_sock))
    assert good.strings == [b"still here"]
    assert "over the limit of 99999 bytes" in caplog.text
