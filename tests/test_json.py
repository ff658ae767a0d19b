"""JsonFramer, JsonHandler, JsonEcho and JsonClient: framing in every
chunking, every malformed input (in memory and on real sockets, with a
healthy client served alongside), the client's errors, the example and the
docs page."""

import json
import logging
import os
import re
import socket
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import Future

import pytest
from evloop.protocols import NEED_DATA, JsonClient, JsonEcho, JsonFramer, JsonHandler
from evloop.protocols.jsonclient import JsonConnectionError, JsonDisconnectedError, JsonTimeoutError
from evloop.protocols.jsonmsg import DEFAULT_MAX_SIZE, get_client_stats
from hypothesis import given, settings
from hypothesis import strategies as st

from evloop import EventLoop, LocalProtocolError, RemoteProtocolError, Server
from evloop.testing import FakeClock, HandlerHarness
from tests.conftest import connect, recv_all, recv_exactly
from tests.examples import ROOT, running_example
from tests.helpers import (
    assert_chunking_never_matters,
    assert_encode_round_trips,
    assert_framer_every_split,
    assert_handler_every_split,
    framer_results,
)


def raw(payload, magic=b"JSN1", length=None, checksum=None):
    """A message built straight from the spec: ``!4sII`` header, payload."""
    if length is None:
        length = len(payload)
    if checksum is None:
        checksum = zlib.crc32(payload)
    return struct.pack("!4sII", magic, length, checksum) + payload


def msg(obj):
    return raw(json.dumps(obj, separators=(",", ":")).encode("utf-8"))


def frame(obj):
    return JsonFramer().encode(obj)


# Each malformed message, after one good one: (bytes, reason in the error).
MALFORMED = {
    "bad magic": (raw(b"{}", magic=b"JSN2"), "bad magic b'JSN2'"),
    # Refused as soon as the first byte shows, so the message shows what came.
    "not this protocol": (b"GET / HTTP/1.1\r\n\r\n", "bad magic b'G"),
    "oversize length": (raw(b"", length=DEFAULT_MAX_SIZE + 1), "over the limit of 10485760"),
    "checksum mismatch": (raw(b'{"a":1}', checksum=12345), "checksum mismatch"),
    "bad UTF-8": (raw(b'"caf\xe9"'), "not UTF-8"),
    "bad JSON": (raw(b'{"a":'), "not JSON"),
    "trailing garbage": (raw(b"{} {}"), "not JSON"),
    "nesting too deep": (raw(b"[" * 200_000), "not JSON"),
}


# -- the framer, sans-I/O ------------------------------------------------------


def test_framer_every_split_with_trailing_bytes_untouched():
    objects = [{"a": [1, 2.5, None, True]}, [], "", 0, {"é": "ü\u2603"}, None, False]
    data = b"".join(msg(obj) for obj in objects) + msg({"next": 1})[:20]
    assert_framer_every_split(JsonFramer, data, objects, leftover=20)


def test_framer_reads_what_jsocket_writes():
    # jsocket's send_obj: json.dumps(obj, ensure_ascii=False), UTF-8, and
    # crc32 & 0xFFFFFFFF in the header.
    obj = {"message": "new connection", "text": "naïve ☃", "n": [1, 2]}
    payload = json.dumps(obj, ensure_ascii=False).encode("utf-8")
    data = struct.pack("!4sII", b"JSN1", len(payload), zlib.crc32(payload) & 0xFFFFFFFF) + payload
    assert_framer_every_split(JsonFramer, data * 2, [obj, obj], leftover=0)


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_framer_refuses_malformed_messages_in_every_split(case):
    bad, reason = MALFORMED[case]
    if len(bad) > 100:  # every split of a big payload would be quadratic
        requests, exc, framer = framer_results(JsonFramer, [msg("ok") + bad])
        assert requests == ["ok"] and reason in exc.message and framer.buffered == 0
        return
    assert_framer_every_split(JsonFramer, msg("ok") + bad, ["ok"], error=reason, leftover=0)


def test_a_wrong_magic_is_refused_before_the_header_is_whole():
    framer = JsonFramer()
    framer.feed(b"JS")
    assert framer.next_request() is NEED_DATA
    framer.feed(b"X")
    with pytest.raises(RemoteProtocolError, match="bad magic b'JSX'"):
        framer.next_request()


def test_the_length_is_checked_before_any_payload_is_buffered():
    framer = JsonFramer(max_size=100)
    framer.feed(raw(b"", length=101))
    with pytest.raises(RemoteProtocolError, match="length 101 is over the limit of 100"):
        framer.next_request()
    assert framer.buffered == 0
    exact = JsonFramer(max_size=7)
    exact.feed(msg("12345"))  # "12345" with its quotes: 7 bytes
    assert exact.next_request() == "12345"


def test_default_limit_is_jsockets_ten_mebibytes():
    assert JsonFramer().max_size == 10 * 1024 * 1024 == DEFAULT_MAX_SIZE


def test_the_error_sticks():
    framer = JsonFramer()
    framer.feed(raw(b"{}", magic=b"XXXX"))
    for _ in range(2):
        with pytest.raises(RemoteProtocolError, match="bad magic"):
            framer.next_request()


def test_end_of_stream_inside_a_message_is_an_error_and_between_messages_is_not():
    assert_framer_every_split(
        JsonFramer, msg(1) + msg([2])[:-1], [1], error="ended inside a request", eof=True
    )
    assert_framer_every_split(JsonFramer, msg(1) + b"JSN", [1], error="ended inside a request", eof=True)
    assert_framer_every_split(JsonFramer, msg(1) + msg(2), [1, 2], eof=True)


def test_encode_is_compact_and_carries_the_checksum():
    data = JsonFramer().encode({"a": [1, 2], "b": "é"})
    payload = '{"a":[1,2],"b":"é"}'.encode()
    assert data == struct.pack("!4sII", b"JSN1", len(payload), zlib.crc32(payload)) + payload


def test_encode_refuses_what_json_cannot_carry():
    framer = JsonFramer(max_size=10)
    circular = []
    circular.append(circular)
    for bad, reason in [
        (object(), "not JSON serializable"),
        ({1, 2}, "not JSON serializable"),
        (circular, "Circular reference"),
        ("x" * 20, "over the limit of 10"),
    ]:
        with pytest.raises(LocalProtocolError, match=reason):
            framer.encode(bad)


def test_a_lone_surrogate_is_escaped_not_refused():
    framer = JsonFramer()
    framer.feed(framer.encode({"s": "a\ud800b"}))
    assert framer.next_request() == {"s": "a\ud800b"}


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_property_any_bytes_give_messages_or_a_protocol_error(data):
    """Any input yields messages or RemoteProtocolError, never another
    exception, and the chunking never changes the outcome. Inputs are
    random bytes, the magic plus random bytes, or real messages with one
    byte flipped, a cut or noise appended."""
    objects = data.draw(st.lists(json_values, max_size=4))
    stream = bytearray(b"".join(frame(obj) for obj in objects))
    kind = data.draw(st.sampled_from(["intact", "flip", "cut", "noise", "random", "magic"]))
    if kind == "flip" and stream:
        at = data.draw(st.integers(0, len(stream) - 1))
        stream[at] ^= data.draw(st.integers(1, 255))
    elif kind == "cut":
        del stream[data.draw(st.integers(0, len(stream))) :]
    elif kind == "noise":
        stream += data.draw(st.binary(max_size=30))
    elif kind == "random":
        stream = bytearray(data.draw(st.binary(max_size=60)))
    elif kind == "magic":
        stream = bytearray(b"JSN1" + data.draw(st.binary(max_size=60)))
    stream = bytes(stream)
    sizes = data.draw(st.lists(st.integers(1, 9), max_size=12))
    eof = data.draw(st.booleans())

    def make():
        return JsonFramer(max_size=400)

    messages = assert_chunking_never_matters(make, stream, sizes, eof)
    if kind == "intact":
        assert messages == objects and framer_results(make, [stream], eof)[1] is None


@given(st.lists(json_values, max_size=6))
def test_property_encode_then_parse_round_trips(objects):
    framer = JsonFramer()
    assert_encode_round_trips(framer, objects)
    assert framer.buffered == 0


# -- the handler, without a socket ---------------------------------------------


class Service(JsonHandler):
    """Echoes, except: "quiet" gets no reply, "set" gets a reply JSON cannot
    carry, "boom" raises, and {"later": n} is answered by a future."""

    futures = []

    def handle_message(self, obj):
        if obj == "quiet":
            return None
        if obj == "set":
            return {"numbers": {1, 2}}
        if obj == "boom":
            raise ValueError("handler bug")
        if isinstance(obj, dict) and "later" in obj:
            future = Future()
            self.futures.append(future)
            return future
        return obj


def test_echo_answers_pipelined_messages_in_order_in_every_split():
    objects = [{"id": 1}, [1, "two"], "", {"é": None}, 3.5]
    data = b"".join(frame(obj) for obj in objects)
    assert_handler_every_split(JsonEcho, data, data, closed=False)


def test_hundred_pipelined_messages_in_one_read_leave_in_one_send():
    data = b"".join(frame({"n": n}) for n in range(100))
    harness = HandlerHarness(JsonEcho)
    assert harness.feed(data) == data
    assert harness.socket.send_calls == 1
    assert not harness.closed


def test_none_means_no_reply_and_the_connection_stays():
    harness = HandlerHarness(Service)
    assert harness.feed(frame("quiet") + frame("loud")) == frame("loud")
    assert not harness.closed


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_message_closes_with_a_warning_after_earlier_replies(case, caplog):
    bad, reason = MALFORMED[case]
    harness = HandlerHarness(JsonEcho, peer=("10.1.2.3", 5555))
    assert harness.feed(frame("ok") + bad) == frame("ok")
    assert harness.closed
    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.levelno == logging.WARNING
    assert "10.1.2.3:5555" in record.getMessage() and reason in record.getMessage()


def test_a_reply_json_cannot_carry_closes_with_a_warning(caplog):
    harness = HandlerHarness(Service, peer=("10.9.9.9", 4242))
    assert harness.feed(frame(1) + frame("set") + frame(2)) == frame(1)
    assert harness.closed
    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.levelno == logging.WARNING
    assert "10.9.9.9:4242" in record.getMessage()
    assert "cannot send the reply" in record.getMessage()
    assert "not JSON serializable" in record.getMessage()


def test_an_exception_in_handle_message_is_logged_with_the_peer(caplog):
    harness = HandlerHarness(Service, peer=("10.0.0.7", 1234))
    harness.feed(frame("boom"))
    assert harness.closed
    assert "10.0.0.7:1234" in caplog.text and "handler bug" in caplog.text


def test_a_future_reply_keeps_its_place_in_the_order():
    Service.futures.clear()
    harness = HandlerHarness(Service)
    assert harness.feed(frame({"later": 1}) + frame("next")) == b""
    Service.futures[0].set_result({"done": 1})
    assert harness.advance(0) == frame({"done": 1}) + frame("next")
    assert not harness.closed


def test_a_future_reply_that_cannot_be_encoded_closes_with_a_warning(caplog):
    Service.futures.clear()
    harness = HandlerHarness(Service, peer=("10.0.0.8", 8))
    harness.feed(frame({"later": 1}))
    Service.futures[0].set_result(object())
    harness.advance(0)
    assert harness.closed
    assert "10.0.0.8:8" in caplog.text and "cannot send the reply" in caplog.text


def test_max_size_is_configurable_on_the_handler():
    class Small(JsonEcho):
        max_size = 7

    harness = HandlerHarness(Small)
    assert harness.feed(msg("12345")) == msg("12345")
    assert harness.feed(msg("123456")) == b""
    assert harness.closed


def test_half_close_still_delivers_the_replies():
    harness = HandlerHarness(JsonEcho)
    harness.feed(frame("one") + frame("two"))
    harness.feed_eof()
    assert harness.output == frame("one") + frame("two")
    assert harness.closed


def test_a_big_reply_goes_out_as_the_peer_reads():
    obj = {"blob": "x" * 100_000}
    harness = HandlerHarness(JsonEcho, send_window=4096)
    harness.feed(frame(obj))
    while len(harness.output) < len(frame(obj)):
        assert harness.drain()
    assert harness.output == frame(obj)


def test_client_stats_have_jsockets_shape():
    clock = FakeClock()
    with EventLoop("select", clock=clock) as event_loop:
        server = Server("127.0.0.1", 0)
        event_loop.add_server(server, JsonEcho)
        with socket.create_connection((server.host, server.port), timeout=10) as sock:
            for _ in range(100):  # real sockets, stepped by hand: accept, then serve
                event_loop.run_once(0.1)
                if event_loop.handlers:
                    break
            clock.advance(2.5)
            assert get_client_stats(event_loop) == {"connected_clients": 1, "clients": {_peer_of(sock): 2.5}}
        for _ in range(100):  # the server sees the close and lets the handler go
            event_loop.run_once(0.1)
            if not event_loop.handlers:
                break
        assert get_client_stats(event_loop) == {"connected_clients": 0, "clients": {}}


# -- real sockets ----------------------------------------------------------------


def _peer_of(sock):
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


@pytest.mark.parametrize("case", [*sorted(MALFORMED), "unserialisable reply"])
def test_on_real_sockets_a_bad_client_is_closed_and_another_keeps_being_served(running_loop, case, caplog):
    server = running_loop.serve(Service)
    with JsonClient("127.0.0.1", server.port, timeout=10) as healthy:
        healthy.send_obj({"before": case})
        assert healthy.read_obj() == {"before": case}
        with connect(server) as bad:
            if case == "unserialisable reply":
                bad.sendall(msg("ok") + msg("set"))
                reason = "cannot send the reply"
            else:
                data, reason = MALFORMED[case]
                bad.sendall(msg("ok") + data)
            # The good message's reply, then the close: for the oversize
            # length, before a single payload byte was sent.
            assert recv_all(bad) == msg("ok")
            peer = _peer_of(bad)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(peer in line and reason in line for line in warnings), warnings
        assert running_loop.call(lambda: len(running_loop.loop.handlers)) == 1
        healthy.send_obj({"after": case})
        assert healthy.read_obj() == {"after": case}


def test_on_real_sockets_many_clients_pipeline_in_order(running_loop):
    server = running_loop.serve(JsonEcho)
    clients = [JsonClient("127.0.0.1", server.port, timeout=10) for _ in range(10)]
    try:
        for client in clients:
            client.connect()
        for round_number in range(20):
            for number, client in enumerate(clients):
                client.send_obj({"client": number, "round": round_number})
        for number, client in enumerate(clients):
            assert [client.read_obj() for _ in range(20)] == [
                {"client": number, "round": r} for r in range(20)
            ]
        stats = running_loop.call(get_client_stats, running_loop.loop)
        assert stats["connected_clients"] == 10
        assert set(stats["clients"]) == {_peer_of(c.socket) for c in clients}
    finally:
        for client in clients:
            client.close()


# -- the client's errors ---------------------------------------------------------


@pytest.fixture
def listener():
    """A plain listening socket the test plays the server on, by hand."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(10)
    yield sock
    sock.close()


def _accepted(listener, client):
    client.connect()
    conn, _ = listener.accept()
    return conn


def test_client_read_timeout_leaves_the_connection_usable(listener):
    client = JsonClient("127.0.0.1", listener.getsockname()[1], timeout=0.2)
    with client, _accepted(listener, client) as conn:
        data = msg({"big": "y" * 100})
        conn.sendall(data[:30])
        with pytest.raises(JsonTimeoutError, match=r"no message from 127\.0\.0\.1:"):
            client.read_obj()
        assert client.connected
        conn.sendall(data[30:])
        assert client.read_obj() == {"big": "y" * 100}


def test_client_disconnects_between_and_inside_messages_are_clear(listener):
    port = listener.getsockname()[1]
    client = JsonClient("127.0.0.1", port, timeout=10)
    conn = _accepted(listener, client)
    conn.sendall(msg(1))
    conn.close()
    assert client.read_obj() == 1
    with pytest.raises(JsonDisconnectedError, match=r"closed the connection$"):
        client.read_obj()
    assert not client.connected
    with pytest.raises(JsonDisconnectedError, match="not connected"):
        client.send_obj(2)
    conn = _accepted(listener, client)  # connect() opens it again
    conn.sendall(msg([1, 2])[:-2])
    conn.close()
    with pytest.raises(JsonDisconnectedError, match=r"inside a message \(15 bytes of it received\)"):
        client.read_obj()


@pytest.mark.parametrize("case", ["bad magic", "checksum mismatch", "bad UTF-8", "bad JSON"])
def test_client_framing_errors_raise_the_protocol_error_and_close(listener, case):
    data, reason = MALFORMED[case]
    client = JsonClient("127.0.0.1", listener.getsockname()[1], timeout=10)
    with _accepted(listener, client) as conn:
        conn.sendall(data)
        with pytest.raises(RemoteProtocolError, match=re.escape(reason)):
            client.read_obj()
        assert not client.connected


def test_client_refuses_an_oversize_reply_by_its_header(listener):
    client = JsonClient("127.0.0.1", listener.getsockname()[1], timeout=10, max_message_size=50)
    with _accepted(listener, client) as conn:
        conn.sendall(raw(b"", length=51))
        with pytest.raises(RemoteProtocolError, match="length 51 is over the limit of 50"):
            client.read_obj()


def test_client_connect_failure_and_bad_objects_are_clear(running_loop):
    closed_port = socket.create_server(("127.0.0.1", 0))
    port = closed_port.getsockname()[1]
    closed_port.close()
    with pytest.raises(JsonConnectionError, match=f"cannot connect to 127.0.0.1:{port}"):
        JsonClient("127.0.0.1", port, timeout=5).connect()
    server = running_loop.serve(JsonEcho)
    with JsonClient("127.0.0.1", server.port, timeout=10) as client:
        with pytest.raises(LocalProtocolError, match="not JSON serializable"):
            client.send_obj({"a": object()})
        client.send_obj("still fine")  # nothing of the bad one was sent
        assert client.read_obj() == "still fine"
        assert client.connect() is True  # already connected: nothing to do


def test_client_over_ipv6_when_the_machine_has_it():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        listener = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback")
    with listener:
        client = JsonClient("::1", listener.getsockname()[1], timeout=10)
        with _accepted(listener, client) as conn:
            conn.sendall(msg("v6"))
            assert client.read_obj() == "v6"
            assert repr(client).startswith("<JsonClient [::1]:")
        client.close()


# -- the example and the docs ----------------------------------------------------


def test_json_server_example_with_its_own_client_and_a_raw_one():
    with running_example("json_server.py") as (host, port, _):
        result = subprocess.run(
            [
                sys.executable,
                str(ROOT / "examples" / "json_server.py"),
                "--client",
                "--host",
                host,
                "--port",
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        assert result.returncode == 0, result.stderr
        lines = [json.loads(line) for line in result.stdout.splitlines()]
        assert lines[0]["message"] == "welcome"
        assert lines[1]["connected_clients"] == 1
        assert lines[2:] == [{"message": "echo", "data": {"n": n, "text": "héllo"}} for n in range(3)]
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(msg({"message": "new connection"}))
            reply = frame({"message": "welcome", "peer": _peer_of(sock)})
            assert recv_exactly(sock, len(reply)) == reply


def test_json_server_example_max_size_option():
    with running_example("json_server.py", "--max-size", "20") as (host, port, _):
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(raw(b"", length=21))
            assert recv_all(sock) == b""


def test_json_server_stats_cost_the_same_whatever_the_number_of_clients():
    # Counters kept as clients come and go: the reply does not list the
    # clients, so neither its size nor its cost grows with them.
    with running_example("json_server.py") as (host, port, _):

        def stats(client):
            client.send_obj({"message": "stats"})
            return client.read_obj()

        with JsonClient(host, port, timeout=10) as asker:
            alone = stats(asker)
            assert alone == {"connected_clients": 1, "connections_total": 1, "messages_total": 1}
            others = [JsonClient(host, port, timeout=10) for _ in range(40)]
            try:
                for other in others:  # each says hello, so it is being served
                    other.connect()
                    other.send_obj({"message": "new connection"})
                    assert other.read_obj()["message"] == "welcome"
                crowded = stats(asker)
                assert crowded == {"connected_clients": 41, "connections_total": 41, "messages_total": 42}
                assert len(json.dumps(crowded)) - len(json.dumps(alone)) <= 6  # digits only
            finally:
                for other in others[:30]:
                    other.close()
            deadline = time.monotonic() + 10
            while (now := stats(asker))["connected_clients"] != 11 and time.monotonic() < deadline:
                pass  # the server sees the closes on its next passes
            assert now["connected_clients"] == 11 and now["connections_total"] == 41
            for other in others[30:]:
                other.close()
