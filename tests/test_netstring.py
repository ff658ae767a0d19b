"""NetstringFramer and its handlers; Twisted's NetstringReceiver as the peer."""

import logging
import socket

import pytest
from evloop.protocols import NEED_DATA, NetstringEcho, NetstringFramer, NetstringHandler
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from twisted.protocols.basic import NetstringReceiver

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


def ns(payload):
    return b"%d:%s," % (len(payload), payload)


# -- the framer -----------------------------------------------------------------------


def test_every_split_with_trailing_bytes_untouched():
    data = ns(b"hello") + ns(b"") + ns(b"a,b:c") + ns(b"9" * 12) + b"7:par"
    assert_framer_every_split(NetstringFramer, data, [b"hello", b"", b"a,b:c", b"9" * 12], leftover=3)


@pytest.mark.parametrize(
    "bad, reason",
    [
        (b"x:", "not a decimal number"),
        (b"-1:", "not a decimal number"),
        (b" 5:hello,", "not a decimal number"),
        (b"5 :hello,", "not a decimal number"),
        (b"+5:hello,", "not a decimal number"),
        (b":", "length is missing"),
        (b"05:hello,", "leading zero"),
        (b"00:,", "leading zero"),
        (b"5:hello;", "not followed by ','"),
        (b"0:x", "not followed by ','"),
        (b"123456:", "longer than 5 digits"),
        (b"1234567", "longer than 5 digits"),
    ],
)
def test_malformed_netstrings_are_refused(bad, reason):
    assert_framer_every_split(NetstringFramer, ns(b"ok") + bad, [b"ok"], error=reason)


def test_the_length_is_checked_before_the_payload_arrives():
    framer = NetstringFramer(max_size=50)
    framer.feed(b"51:")
    with pytest.raises(RemoteProtocolError, match="over the limit of 50 bytes"):
        framer.next_request()
    framer = NetstringFramer(max_size=50)
    framer.feed(b"50:")
    assert framer.next_request() is NEED_DATA
    framer.feed(b"z" * 50 + b",")
    assert framer.next_request() == b"z" * 50


def test_the_error_sticks_and_the_buffer_is_dropped():
    framer = NetstringFramer()
    framer.feed(b"x:" + b"y" * 1000)
    for _ in range(2):
        with pytest.raises(RemoteProtocolError):
            framer.next_request()
    assert framer.buffered == 0


@pytest.mark.parametrize("tail", [b"1", b"12:", b"3:ab", b"3:abc"])
def test_end_of_stream_inside_a_netstring_is_an_error(tail):
    assert_framer_every_split(
        NetstringFramer, ns(b"a") + tail, [b"a"], error="ended inside a request", eof=True
    )


def test_end_of_stream_between_netstrings_is_fine():
    assert_framer_every_split(NetstringFramer, ns(b"a") + ns(b"b"), [b"a", b"b"], eof=True)


def test_encode_refuses_what_the_peer_would_refuse():
    framer = NetstringFramer(max_size=4)
    assert framer.encode(b"abcd") == b"4:abcd,"
    with pytest.raises(LocalProtocolError):
        framer.encode(b"abcde")


# Whole netstrings, bare length prefixes around the limit of 20, and junk.
_netstringish = st.lists(
    st.one_of(
        st.binary(max_size=25).map(ns),
        st.integers(min_value=15, max_value=25).map(b"%d:".__mod__),
        st.sampled_from([b":", b",", b"0", b"1", b"12", b"x"]),
    ),
    max_size=8,
).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.binary(max_size=60), _netstringish),
    st.lists(st.integers(min_value=1, max_value=7), max_size=12),
    st.booleans(),
)
def test_property_any_bytes_give_strings_or_a_protocol_error(data, sizes, eof):
    """Any input yields payloads or RemoteProtocolError, never anything
    else, and the chunking never changes the result."""

    def make():
        return NetstringFramer(max_size=20)

    payloads = assert_chunking_never_matters(make, data, sizes, eof)
    assert all(len(payload) <= 20 for payload in payloads)


@given(st.lists(st.binary(max_size=40), max_size=10))
def test_property_encode_then_parse_round_trips(payloads):
    assert_encode_round_trips(NetstringFramer(), payloads)


class _TwistedPeer(NetstringReceiver):
    """Twisted's own netstring codec, driven without a reactor."""

    def __init__(self, max_length=None):
        self.strings = []
        if max_length is not None:
            self.MAX_LENGTH = max_length
        self.transport = StringTransport()
        self.makeConnection(self.transport)

    def stringReceived(self, string):  # noqa: N802 (Twisted's name)
        self.strings.append(string)

    def take_output(self):
        data = self.transport.value()
        self.transport.clear()
        return data


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=40), _netstringish))
def test_property_twisted_and_we_agree_on_any_bytes(data):
    """Differential test: what Twisted's NetstringReceiver accepts we
    accept, with the same payloads; what it refuses, we refuse."""
    twisted = _TwistedPeer(max_length=20)
    twisted.dataReceived(data)
    ours, error, _ = framer_results(lambda: NetstringFramer(max_size=20), [data])
    assert ours == twisted.strings
    assert (error is not None) == bool(twisted.brokenPeer)


# -- handlers, in memory -----------------------------------------------------------------


class Tally(NetstringHandler):
    def setup(self):
        self.count = 0

    def string_received(self, string):
        self.count += 1
        if string == b"quiet":
            return None
        if string == b"twice":
            self.send_string(b"one")
        return b"%d:%s" % (self.count, string)


def test_echo_answers_pipelined_netstrings_in_order_in_every_split():
    data = ns(b"a") + ns(b"") + ns(b"b" * 10) + ns(b",")
    assert_handler_every_split(NetstringEcho, data, data, closed=False)


def test_a_hundred_pipelined_in_one_read_leave_in_one_send():
    data = b"".join(ns(b"%d" % i) for i in range(100))
    harness = HandlerHarness(NetstringEcho)
    assert harness.feed(data) == data
    assert harness.socket.send_calls == 1


def test_string_received_may_reply_nothing_or_more():
    harness = HandlerHarness(Tally)
    sent = harness.feed(ns(b"x") + ns(b"quiet") + ns(b"twice"))
    assert sent == ns(b"1:x") + ns(b"one") + ns(b"3:twice")


def test_malformed_input_closes_with_a_warning_and_no_reply(caplog):
    harness = HandlerHarness(NetstringEcho, peer=("10.1.1.1", 5000))
    with caplog.at_level(logging.WARNING, "evloop"):
        assert harness.feed(ns(b"ok") + b"3:abc!") == ns(b"ok")
    assert harness.closed
    assert "10.1.1.1:5000" in caplog.text and "not followed by ','" in caplog.text


def test_max_size_is_configurable_on_the_handler(caplog):
    class Small(NetstringEcho):
        max_size = 4

    harness = HandlerHarness(Small)
    assert harness.feed(ns(b"1234")) == ns(b"1234")
    assert harness.feed(b"5:") == b""
    assert harness.closed
    assert "over the limit of 4 bytes" in caplog.text


# -- real sockets, Twisted's codec as the client -------------------------------------------


def test_twisted_client_against_our_server_pipelined(running_loop):
    server = running_loop.serve(NetstringEcho)
    peer = _TwistedPeer()
    payloads = [b"message %d" % i for i in range(1000)] + [b"x" * 99999, b""]
    for payload in payloads:
        peer.sendString(payload)
    with connect(server) as sock:
        sock.sendall(peer.take_output())
        sock.shutdown(socket.SHUT_WR)
        peer.dataReceived(recv_all(sock))
    assert peer.strings == payloads
    assert not peer.brokenPeer


def test_a_bad_client_is_closed_and_the_others_are_served(running_loop, caplog):
    server = running_loop.serve(NetstringEcho)
    good = _TwistedPeer()
    with connect(server) as good_sock, connect(server) as bad_sock:
        bad_sock.sendall(b"100000:")  # over Twisted's and our 99,999
        assert recv_all(bad_sock) == b""
        good.sendString(b"still here")
        good_sock.sendall(good.take_output())
        good_sock.shutdown(socket.SHUT_WR)
        good.dataReceived(recv_all(good_sock))
    assert good.strings == [b"still here"]
    assert "longer than 5 digits" in caplog.text


def test_a_partial_length_already_over_the_limit_is_refused_at_once():
    # "21" can only grow with more digits: over a limit of 20 it is refused
    # before the colon arrives, as Twisted's NetstringReceiver does.
    framer = NetstringFramer(max_size=20)
    framer.feed(b"21")
    with pytest.raises(RemoteProtocolError, match="over the limit of 20"):
        framer.next_request()
    framer = NetstringFramer(max_size=20)
    framer.feed(b"2")
    assert framer.next_request() is NEED_DATA
