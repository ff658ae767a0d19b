"""WebSocket: the handshake, every protocol violation's close code, the close
handshake, keepalive, broadcast; the echo example against the ``websockets``
client library.

In-memory tests drive one connection through :class:`HandlerHarness` (no
socket, a clock moved by hand); the example runs as a real server in a
subprocess on 127.0.0.1.
"""

import base64
import logging
import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("h11")
pytest.importorskip("wsproto")

from evloop.protocols.http import HTTPHandler
from evloop.protocols.websocket import EchoWebSocket, WebSocketHandler, accept_key, broadcast

from evloop import RemoteProtocolError
from evloop.testing import HandlerHarness, every_split
from tests.conftest import connect, recv_exactly
from tests.examples import running_example
from tests.helpers import assert_handler_every_split

ROOT = Path(__file__).resolve().parent.parent
KEY = base64.b64encode(b"0123456789abcdef").decode()


# -- helpers --------------------------------------------------------------------


def client_frame(opcode, payload=b"", *, fin=True, rsv=0, mask=True):
    """A client-to-server frame, built by hand (RFC 6455 section 5.2)."""
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    size = len(payload)
    mask_bit = 0x80 if mask else 0
    if size < 126:
        head += bytes([mask_bit | size])
    elif size < 65536:
        head += bytes([mask_bit | 126]) + struct.pack("!H", size)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", size)
    if not mask:
        return head + payload
    key = b"\x37\xfa\x21\x3d"
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_payload(code, reason=b""):
    return struct.pack("!H", code) + reason


def server_frames(data):
    """Parse unmasked server frames: [(opcode, payload, fin)]; asserts on
    anything a server must not send."""
    frames = []
    i = 0
    while i < len(data):
        first, second = data[i], data[i + 1]
        assert not second & 0x80, "a server frame must not be masked"
        assert not first & 0x70, "no extension was negotiated"
        size = second & 0x7F
        i += 2
        if size == 126:
            (size,) = struct.unpack("!H", data[i : i + 2])
            i += 2
        elif size == 127:
            (size,) = struct.unpack("!Q", data[i : i + 8])
            i += 8
        frames.append((first & 0x0F, data[i : i + size], bool(first & 0x80)))
        i += size
    assert i == len(data), "truncated frame"
    return frames


def split_response(data):
    head, _, rest = data.partition(b"\r\n\r\n")
    return head.decode("latin-1"), rest


def handshake(path="/", extra=""):
    return (
        f"GET {path} HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\n"
        f"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n"
        f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


class Recorder(WebSocketHandler):
    """Records what happens to it, class-wide, for the tests to look at."""

    events = []
    max_message_size = 1000
    ping_interval = None

    def opened(self):
        self.events.append(("opened",))

    def received_message(self, message):
        self.events.append(("message", message))
        if message == "boom":
            raise ValueError("application bug")
        self.send(message)

    def closed(self, code, reason):
        self.events.append(("closed", code, reason))


class Keepalive(Recorder):
    ping_interval = 10.0
    ping_timeout = 5.0


class Chat(EchoWebSocket):
    subprotocols = ("chat.v2", "chat.v1")
    allowed_origins = ("https://good.example",)


class App(HTTPHandler):
    routes = {"/": Recorder, "/ka": Keepalive, "/echo": EchoWebSocket, "/chat": Chat}


@pytest.fixture(autouse=True)
def fresh_recorder():
    Recorder.events = []
    yield


def opened_harness(path="/", **options):
    harness = HandlerHarness(App, **options)
    head, rest = split_response(harness.feed(handshake(path)))
    assert head.startswith("HTTP/1.1 101 "), head
    assert rest == b""
    return harness


def close_code_of(output):
    frames = server_frames(output)
    assert frames and frames[-1][0] == 0x8, frames
    payload = frames[-1][1]
    return struct.unpack("!H", payload[:2])[0] if payload else None


# -- the opening handshake ----------------------------------------------------------


def test_handshake_answers_101_with_the_accept_key():
    harness = HandlerHarness(App)
    head, _rest = split_response(harness.feed(handshake()))
    lines = head.split("\r\n")
    assert lines[0] == "HTTP/1.1 101 Switching Protocols"
    headers = {line.split(":", 1)[0].lower(): line.split(":", 1)[1].strip() for line in lines[1:]}
    # RFC 6455 section 1.3's worked example, then ours.
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert headers["sec-websocket-accept"] == accept_key(KEY)
    assert headers["upgrade"].lower() == "websocket"
    assert "upgrade" in headers["connection"].lower()
    assert "sec-websocket-protocol" not in headers
    assert Recorder.events == [("opened",)]
    assert not harness.closed


@pytest.mark.parametrize(
    "request_bytes, status, header",
    [
        (
            handshake().replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8"),
            "426",
            "sec-websocket-version: 13",
        ),
        (handshake().replace(KEY.encode(), b"short"), "400", None),
        (handshake().replace(b"Sec-WebSocket-Key: " + KEY.encode() + b"\r\n", b""), "400", None),
        (b"GET / HTTP/1.1\r\nHost: example\r\n\r\n", "426", "upgrade: websocket"),
        (b"POST / HTTP/1.1\r\nHost: example\r\nContent-Length: 0\r\n\r\n", "405", "allow: get"),
        (handshake("/chat", "Origin: https://evil.example\r\n"), "403", None),
    ],
)
def test_bad_handshakes_get_an_http_error_and_the_connection_stays(request_bytes, status, header):
    harness = HandlerHarness(App)
    head, _ = split_response(harness.feed(request_bytes))
    assert head.split(" ")[1] == status, head
    if header:
        assert header in head.lower()
    assert Recorder.events == []
    assert not harness.closed
    # Still HTTP: a proper handshake on the same connection works.
    head, _ = split_response(harness.feed(handshake("/echo")))
    assert head.startswith("HTTP/1.1 101 ")


def test_subprotocol_is_chosen_by_server_preference():
    harness = HandlerHarness(App)
    head, _ = split_response(
        harness.feed(
            handshake("/chat", "Origin: https://good.example\r\nSec-WebSocket-Protocol: chat.v1, chat.v2\r\n")
        )
    )
    assert "Sec-WebSocket-Protocol: chat.v2" in head
    assert harness.handler.upgraded.subprotocol == "chat.v2"


def test_frames_in_the_same_read_as_the_handshake_are_served():
    harness = HandlerHarness(App)
    output = harness.feed(handshake() + client_frame(0x1, b"early"))
    _, frames = split_response(output)
    assert server_frames(frames) == [(0x1, b"early", True)]


# -- messages -----------------------------------------------------------------------


def test_text_binary_and_fragmented_messages_every_split():
    data = (
        handshake("/echo")
        + client_frame(0x1, "héllo".encode())
        + client_frame(0x2, b"\x00\xff", fin=False)
        + client_frame(0x9, b"mid")  # a ping between fragments
        + client_frame(0x0, b"\x01", fin=False)
        + client_frame(0x0, b"", fin=True)
        + client_frame(0x1, "é".encode()[:1], fin=False)  # a character split across frames
        + client_frame(0x0, "é".encode()[1:])
        + client_frame(0x8, close_payload(1000, b"done"))
    )
    harness = HandlerHarness(App)
    expected = harness.feed(data)
    head, frames = split_response(expected)
    assert head.startswith("HTTP/1.1 101 ")
    assert server_frames(frames) == [
        (0x1, "héllo".encode(), True),
        (0xA, b"mid", True),
        (0x2, b"\x00\xff\x01", True),
        (0x1, "é".encode(), True),
        (0x8, close_payload(1000, b"done"), True),
    ]
    assert harness.closed
    assert_handler_every_split(App, data, expected, closed=True)


def test_peer_close_is_echoed_then_the_server_closes_tcp():
    harness = opened_harness()
    output = harness.feed(client_frame(0x8, close_payload(4001, b"bye")))
    assert server_frames(output) == [(0x8, close_payload(4001, b"bye"), True)]
    assert harness.closed
    assert Recorder.events[-1] == ("closed", 4001, "bye")


def test_close_without_status_is_answered_without_status():
    harness = opened_harness()
    assert server_frames(harness.feed(client_frame(0x8))) == [(0x8, b"", True)]
    assert Recorder.events[-1] == ("closed", 1005, "")


def test_our_close_waits_for_the_answer_then_closes():
    harness = opened_harness()
    harness.handler.upgraded.close(1001, "going away")
    assert server_frames(harness.feed(b"")) == [(0x8, close_payload(1001, b"going away"), True)]
    assert not harness.closed
    # Data the peer sent before it saw our Close is still delivered
    # (section 5.5.1), but nothing more goes out: no echo.
    assert harness.feed(client_frame(0x1, b"late")) == b""
    assert harness.feed(client_frame(0x8, close_payload(1001))) == b""
    assert harness.closed
    assert ("message", "late") in Recorder.events
    assert Recorder.events[-1] == ("closed", 1001, "going away")


def test_close_timeout_drops_a_silent_peer():
    harness = opened_harness()
    harness.handler.upgraded.close()
    harness.advance(4.9)
    assert not harness.closed
    harness.advance(0.2)
    assert harness.closed
    assert Recorder.events[-1] == ("closed", 1000, "")


def test_ping_gets_a_pong_with_the_same_payload():
    harness = opened_harness()
    assert server_frames(harness.feed(client_frame(0x9, b"ping-data"))) == [(0xA, b"ping-data", True)]
    # An unsolicited pong needs no answer (section 5.5.3).
    assert harness.feed(client_frame(0xA, b"x")) == b""


def test_keepalive_pings_and_a_missing_pong_closes():
    harness = opened_harness("/ka")
    assert harness.advance(9.9) == b""
    frames = server_frames(harness.advance(0.2))
    assert [opcode for opcode, _, _ in frames] == [0x9]
    # The pong comes back: the next ping is due ping_interval later.
    harness.feed(client_frame(0xA, frames[0][1]))
    harness.advance(9.9)
    assert not harness.closed
    frames = server_frames(harness.advance(0.2))
    assert [opcode for opcode, _, _ in frames] == [0x9]
    # This one is never answered.
    harness.advance(4.9)
    assert not harness.closed
    assert close_code_of(harness.advance(0.2)) == 1001
    assert harness.closed
    assert Recorder.events[-1] == ("closed", 1006, "keepalive ping timeout")


def test_an_idle_socket_without_keepalive_is_closed_with_1001():
    harness = opened_harness()  # Recorder: ping_interval None
    assert harness.advance(299) == b""
    assert close_code_of(harness.advance(2)) == 1001  # the engine's idle timeout, 300 s
    assert harness.closed
    assert Recorder.events[-1] == ("closed", 1001, "idle")


class Small(EchoWebSocket):
    max_backlog = 10_000
    ping_interval = None


class SmallApp(HTTPHandler):
    routes = {"/": Small}


def test_a_client_that_does_not_read_is_dropped_at_the_backlog_limit(caplog):
    harness = HandlerHarness(SmallApp, send_window=200)
    harness.feed(handshake())  # the 101 fits the window; then it is shut
    socket = harness.handler.upgraded
    sent = 0
    while socket.send(b"x" * 1000):
        sent += 1
        harness.feed(b"")
        assert sent < 50, "the backlog was never bounded"
    assert harness.closed and sent >= 10
    assert "dropping the connection" in caplog.text and "127.0.0.1:40000" in caplog.text


def test_an_exception_in_the_application_closes_with_1011(caplog):
    harness = opened_harness()
    with caplog.at_level(logging.ERROR, logger="evloop.websocket"):
        output = harness.feed(client_frame(0x1, b"boom"))
    assert close_code_of(output) == 1011
    assert "application bug" in caplog.text and "127.0.0.1:40000" in caplog.text


def test_tcp_end_without_close_frame_reports_1006():
    harness = opened_harness()
    harness.feed_eof()
    assert harness.closed
    assert Recorder.events[-1] == ("closed", 1006, "")


def test_send_after_close_is_refused():
    harness = opened_harness()
    socket = harness.handler.upgraded
    harness.feed(client_frame(0x8, close_payload(1000)))
    assert socket.send("too late") is False
    assert not socket.is_open


# -- every violation gets its close code ------------------------------------------

VIOLATIONS = [
    ("reserved opcode", client_frame(0x3, b""), 1002),
    ("reserved control opcode", client_frame(0xB, b""), 1002),
    ("RSV1 without an extension", client_frame(0x1, b"x", rsv=4), 1002),
    ("RSV3 without an extension", client_frame(0x2, b"x", rsv=1), 1002),
    ("unmasked client frame", client_frame(0x1, b"x", mask=False), 1002),
    ("control frame over 125 bytes", client_frame(0x9, b"p" * 126), 1002),
    ("fragmented control frame", client_frame(0x9, b"p", fin=False), 1002),
    ("continuation with nothing to continue", client_frame(0x0, b"x"), 1002),
    (
        "new message inside a fragmented one",
        client_frame(0x1, b"a", fin=False) + client_frame(0x1, b"b"),
        1002,
    ),
    ("invalid UTF-8 text", client_frame(0x1, b"\xce\xba\xff"), 1007),
    (
        "invalid UTF-8 in a first fragment (fail fast)",
        client_frame(0x1, b"ok\xf4\x90\x80\x80", fin=False),
        1007,
    ),
    ("truncated UTF-8 at the end of a message", client_frame(0x1, b"\xce"), 1007),
    ("close with one byte", client_frame(0x8, b"\x03"), 1002),
    ("close code 999", client_frame(0x8, close_payload(999)), 1002),
    ("close code 1004 (reserved)", client_frame(0x8, close_payload(1004)), 1002),
    ("close code 1005 (local only)", client_frame(0x8, close_payload(1005)), 1002),
    ("close code 1006 (local only)", client_frame(0x8, close_payload(1006)), 1002),
    ("close code 1016 (unassigned)", client_frame(0x8, close_payload(1016)), 1002),
    ("close code 5000", client_frame(0x8, close_payload(5000)), 1002),
    ("close reason not UTF-8", client_frame(0x8, close_payload(1000, b"\xff")), 1007),
    ("message over the size limit", client_frame(0x2, b"x" * 1001), 1009),
    (
        "fragments over the size limit",
        client_frame(0x2, b"x" * 600, fin=False) + client_frame(0x0, b"x" * 600),
        1009,
    ),
]


@pytest.mark.parametrize("name, frames, code", VIOLATIONS, ids=[v[0] for v in VIOLATIONS])
def test_violation_fails_the_connection_with_its_code(name, frames, code, caplog):
    data = client_frame(0x1, b"before") + frames + client_frame(0x1, b"after")
    with caplog.at_level(logging.WARNING):
        for label, chunks in every_split(data) if len(data) < 80 else [("whole", [data])]:
            Recorder.events = []
            harness = opened_harness()
            output = b"".join(harness.feed(chunk) for chunk in chunks)
            frames_out = server_frames(output)
            assert frames_out[0] == (0x1, b"before", True), label
            assert close_code_of(output) == code, label
            assert harness.closed, label
            assert ("message", "after") not in Recorder.events, label
            assert Recorder.events[-1][:2] == ("closed", code), label
    # One warning line naming the peer and the rule broken.
    assert "127.0.0.1:40000" in caplog.text and f"WebSocket {code}" in caplog.text


def test_oversize_frame_is_refused_before_its_payload_arrives():
    harness = opened_harness()
    header = client_frame(0x2, b"x" * 70000)[:14]  # 64-bit length, mask key
    output = harness.feed(header + b"y" * 2000)
    assert close_code_of(output) == 1009
    assert harness.closed


class FaultLog(App):
    """Records what handle_error saw."""

    errors = []

    def handle_error(self, exc):
        self.errors.append(exc)
        super().handle_error(exc)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=40),
            st.builds(
                client_frame,
                st.integers(0, 15),
                st.binary(max_size=140),
                fin=st.booleans(),
                rsv=st.integers(0, 7),
                mask=st.booleans(),
            ),
        ),
        max_size=6,
    ),
    st.data(),
)
def test_any_bytes_give_messages_or_a_close_never_another_error(pieces, data):
    stream = b"".join(pieces)
    results = []
    cut = data.draw(st.integers(0, len(stream)))
    for chunks in ([stream], [stream[:cut], stream[cut:]]):
        FaultLog.errors = []
        Recorder.events = []
        harness = HandlerHarness(FaultLog)
        harness.feed(handshake())
        output = b"".join(harness.feed(chunk) for chunk in chunks)
        assert all(isinstance(exc, RemoteProtocolError) for exc in FaultLog.errors), FaultLog.errors
        server_frames(output)  # whatever came back is well-formed
        results.append((output, harness.closed, list(Recorder.events)))
        harness.close()
    assert results[0] == results[1]


# -- broadcast and the real loop ------------------------------------------------------


def test_broadcast_frames_once_and_reaches_only_open_sockets():
    harnesses = [HandlerHarness(App) for _ in range(3)]
    sockets = []
    for harness in harnesses:
        harness.feed(handshake("/echo"))
        sockets.append(harness.handler.upgraded)
    harnesses[2].feed(client_frame(0x8, close_payload(1000)))
    assert broadcast(sockets, "news") == 2
    assert broadcast(sockets[:1], b"\x01") == 1
    assert server_frames(harnesses[0].feed(b"")) == [(0x1, b"news", True), (0x2, b"\x01", True)]
    assert server_frames(harnesses[1].feed(b"")) == [(0x1, b"news", True)]
    assert harnesses[2].feed(b"") == b""


class Room(WebSocketHandler):
    """Every message goes to every open socket of the room but the sender."""

    def received_message(self, message):
        self.broadcast(f"{len(self.open_sockets(self.loop))}:{message}", include_self=False)


class RoomServer(HTTPHandler):
    routes = {"/room": Room}


def read_frame(sock):
    head = recv_exactly(sock, 2)
    size = head[1] & 0x7F
    if size == 126:
        (size,) = struct.unpack("!H", recv_exactly(sock, 2))
    elif size == 127:
        (size,) = struct.unpack("!Q", recv_exactly(sock, 8))
    return head[0] & 0x0F, recv_exactly(sock, size)


def test_broadcast_over_real_sockets(running_loop):
    server = running_loop.serve(RoomServer)
    clients = []
    for _ in range(3):
        sock = connect(server)
        sock.sendall(handshake("/room"))
        response = b""
        while not response.endswith(b"\r\n\r\n"):
            response += recv_exactly(sock, 1)
        assert response.startswith(b"HTTP/1.1 101 ")
        clients.append(sock)
    # The third handshake is answered, so all three are open on the loop.
    assert len(running_loop.call(Room.open_sockets, running_loop.loop)) == 3
    clients[0].sendall(client_frame(0x1, b"hi all"))
    for sock in clients[1:]:
        assert read_frame(sock) == (0x1, b"3:hi all")
    clients[2].sendall(client_frame(0x8, close_payload(1000)))
    assert read_frame(clients[2]) == (0x8, close_payload(1000))
    assert clients[2].recv(10) == b""
    clients[1].sendall(client_frame(0x1, b"two left"))
    assert read_frame(clients[0]) == (0x1, b"2:two left")
    for sock in clients:
        sock.close()


def test_graceful_shutdown_says_going_away(running_loop):
    server = running_loop.serve(RoomServer)
    sock = connect(server)
    sock.sendall(handshake("/room"))
    response = b""
    while not response.endswith(b"\r\n\r\n"):
        response += recv_exactly(sock, 1)
    assert response.startswith(b"HTTP/1.1 101 ")
    running_loop.loop.stop(graceful=True, timeout=5)
    assert read_frame(sock) == (0x8, close_payload(1001, b"server shutting down"))
    assert sock.recv(10) == b""
    sock.close()
    running_loop.thread.join(10)
    assert not running_loop.thread.is_alive()
    running_loop.thread = None


# -- the echo example against the websockets client library -----------------------

websockets_client = pytest.importorskip("websockets.sync.client")
from websockets.exceptions import ConnectionClosedError  # noqa: E402


@pytest.fixture(scope="module")
def echo_server():
    with running_example("websocket_echo.py") as (host, port, process):
        yield f"ws://{host}:{port}/", process


def test_echo_example_text_binary_and_fragments(echo_server):
    url, _ = echo_server
    with websockets_client.connect(url) as ws:
        ws.send("hello, wörld")
        assert ws.recv(10) == "hello, wörld"
        ws.send(b"\x00\x01\xfe\xff")
        assert ws.recv(10) == b"\x00\x01\xfe\xff"
        ws.send(["frag", "ment", "ed ✓"])
        assert ws.recv(10) == "fragmented ✓"
        ws.send([b"\x01", b"\x02" * 1000, b""])
        assert ws.recv(10) == b"\x01" + b"\x02" * 1000
        ws.send("")
        assert ws.recv(10) == ""


def test_echo_example_16_mib_message(echo_server):
    url, _ = echo_server
    message = os.urandom(16 * 1024 * 1024)
    with websockets_client.connect(url, max_size=None) as ws:
        ws.send(message)
        assert ws.recv(30) == message


def test_echo_example_ping_and_pong(echo_server):
    url, _ = echo_server
    with websockets_client.connect(url) as ws:
        pong = ws.ping(b"are you there")
        assert pong.wait(10)


@pytest.mark.parametrize("code, reason", [(1000, ""), (1001, "leaving"), (4321, "custom ✓")])
def test_echo_example_echoes_close_codes(echo_server, code, reason):
    url, _ = echo_server
    with websockets_client.connect(url) as ws:
        ws.close(code, reason)
    assert ws.protocol.close_rcvd is not None
    assert (ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason) == (code, reason)


def test_echo_example_closes_an_oversize_message_with_1009():
    with running_example("websocket_echo.py", "--max-size", "1000") as (host, port, _):
        with websockets_client.connect(f"ws://{host}:{port}/") as ws:
            ws.send(b"x" * 1000)
            assert ws.recv(10) == b"x" * 1000
            ws.send(b"x" * 1001)
            with pytest.raises(ConnectionClosedError):
                ws.recv(10)
        assert ws.protocol.close_rcvd.code == 1009


def test_echo_example_closes_invalid_utf8_with_1007_and_keeps_serving(echo_server):
    url, _ = echo_server
    from websockets.frames import Frame, Opcode

    with websockets_client.connect(url) as bad, websockets_client.connect(url) as good:
        # The client library will not send bad UTF-8 itself: hand it a frame.
        with bad.protocol_mutex:
            bad.protocol.send_frame(Frame(Opcode.TEXT, b"\xff\xfe"))
            bad.send_data()
        with pytest.raises(ConnectionClosedError):
            bad.recv(10)
        assert bad.protocol.close_rcvd.code == 1007
        good.send("still here")
        assert good.recv(10) == "still here"


def test_echo_example_plain_http_gets_426(echo_server):
    url, _ = echo_server
    import socket

    host, port = url[5:-1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 426 ")
    assert b"upgrade: websocket" in data.lower()


def test_chat_example_serves_its_page_and_relays_messages():
    import json
    import urllib.request

    with running_example("websocket_chat.py") as (host, port, _):
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=10) as reply:
            assert reply.headers["Content-Type"] == "text/html; charset=utf-8"
            assert b"new WebSocket(" in reply.read()
        url = f"ws://{host}:{port}/chat"
        with websockets_client.connect(url) as alice:
            assert json.loads(alice.recv(10)) == {"kind": "presence", "online": 1}
            with websockets_client.connect(url) as bob:
                assert json.loads(bob.recv(10)) == {"kind": "presence", "online": 2}
                assert json.loads(alice.recv(10)) == {"kind": "presence", "online": 2}
                bob.send(json.dumps({"name": "bob", "text": "hi ✓"}))
                expected = {"kind": "message", "from": "bob", "text": "hi ✓"}
                assert json.loads(alice.recv(10)) == expected
                assert json.loads(bob.recv(10)) == expected
                bob.send("not json")
                assert json.loads(bob.recv(10))["kind"] == "error"
            assert json.loads(alice.recv(10)) == {"kind": "presence", "online": 1}
