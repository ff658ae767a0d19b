"""permessage-deflate (RFC 7692): the negotiation, compressed frames both
ways through an in-memory connection, the bounded inflater, and the echo
example against the ``websockets`` client library with compression on and
off."""

import gc
import struct
import tracemalloc
import zlib

import pytest

pytest.importorskip("h11")
pytest.importorskip("wsproto")

from evloop.protocols.http import HTTPHandler
from evloop.protocols.websocket import EchoWebSocket
from evloop.protocols.ws_deflate import negotiate, parse_offers

from evloop.testing import HandlerHarness
from tests.examples import running_example
from tests.hostile.test_websocket import compressed_bomb
from tests.test_websocket import KEY, client_frame, split_response

MIB = 1024 * 1024


# -- the negotiation (RFC 7692 section 7.1) -------------------------------------------


def test_parse_offers_reads_names_parameters_and_quoted_values():
    offers = parse_offers(['permessage-deflate; client_max_window_bits, x-webkit; a="9"', "foo"])
    assert offers == [
        ("permessage-deflate", {"client_max_window_bits": None}),
        ("x-webkit", {"a": "9"}),
        ("foo", {}),
    ]


@pytest.mark.parametrize(
    "offer, response",
    [
        # What Chromium and the websockets library send.
        ("permessage-deflate; client_max_window_bits", "permessage-deflate"),
        ("permessage-deflate", "permessage-deflate"),
        ("permessage-deflate; server_no_context_takeover", "permessage-deflate; server_no_context_takeover"),
        ("permessage-deflate; client_no_context_takeover", "permessage-deflate; client_no_context_takeover"),
        ("permessage-deflate; server_max_window_bits=10", "permessage-deflate; server_max_window_bits=10"),
        ("permessage-deflate; client_max_window_bits=9", "permessage-deflate"),
        # An invalid offer is declined and the next one is taken (section 5).
        (
            "permessage-deflate; server_max_window_bits=16, permessage-deflate; client_no_context_takeover",
            "permessage-deflate; client_no_context_takeover",
        ),
        ("x-other, permessage-deflate", "permessage-deflate"),
        # Declined: an unknown parameter, a repeated one, a value where none
        # belongs, a window out of 8..15, a missing value.
        ("permessage-deflate; mystery", None),
        ("permessage-deflate; server_no_context_takeover; server_no_context_takeover", None),
        ("permessage-deflate; server_no_context_takeover=1", None),
        ("permessage-deflate; client_max_window_bits=7", None),
        ("permessage-deflate; server_max_window_bits", None),
        ("permessage-deflate; server_max_window_bits=09x", None),
        ("x-webkit-deflate-frame", None),
    ],
)
def test_negotiate(offer, response):
    accepted = negotiate([offer], MIB)
    assert (accepted[0] if accepted else None) == response


def test_an_8_bit_window_is_accepted_and_nothing_is_compressed():
    # zlib cannot deflate with an 8-bit window; sending plain is allowed.
    response, extension = negotiate(["permessage-deflate; server_max_window_bits=8"], MIB)
    assert response == "permessage-deflate; server_max_window_bits=8"
    assert extension.server_bits is None


# -- compressed frames through one connection -----------------------------------------


class Echo(EchoWebSocket):
    max_message_size = 64 * 1024
    ping_interval = None


class App(HTTPHandler):
    routes = {"/": Echo}


def deflate_harness(offer="permessage-deflate; client_max_window_bits"):
    harness = HandlerHarness(App)
    request = (
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Extensions: {offer}\r\n\r\n"
    )
    head, rest = split_response(harness.feed(request.encode()))
    assert head.startswith("HTTP/1.1 101 "), head
    assert rest == b""
    return harness, head


class Deflater:
    """The client's side: one compressor, context kept unless told."""

    def __init__(self, keep_context=True):
        self.keep = keep_context
        self.deflater = zlib.compressobj(6, zlib.DEFLATED, -15)

    def message(self, data):
        out = self.deflater.compress(data) + self.deflater.flush(zlib.Z_SYNC_FLUSH)
        assert out.endswith(b"\x00\x00\xff\xff")
        if not self.keep:
            self.deflater = zlib.compressobj(6, zlib.DEFLATED, -15)
        return out[:-4]


def read_frames(data):
    """[(rsv1, opcode, payload)] of unmasked server frames."""
    frames, i = [], 0
    while i < len(data):
        first, size = data[i], data[i + 1] & 0x7F
        i += 2
        if size == 126:
            (size,) = struct.unpack("!H", data[i : i + 2])
            i += 2
        elif size == 127:
            (size,) = struct.unpack("!Q", data[i : i + 8])
            i += 8
        frames.append((bool(first & 0x40), first & 0x0F, data[i : i + size]))
        i += size
    return frames


def inflate(payloads, keep_context=True):
    inflater = zlib.decompressobj(-15)
    out = []
    for payload in payloads:
        out.append(inflater.decompress(payload + b"\x00\x00\xff\xff"))
        if not keep_context:
            inflater = zlib.decompressobj(-15)
    return out


def test_compressed_messages_echo_compressed_with_context_kept():
    harness, head = deflate_harness()
    assert "Sec-WebSocket-Extensions: permessage-deflate\r\n" in head + "\r\n"
    client = Deflater()
    messages = [b"hello " * 50, b"hello " * 50 + b"again", "text ✓ ".encode() * 40]
    replies = []
    for opcode, message in zip([0x2, 0x2, 0x1], messages, strict=True):
        replies += read_frames(harness.feed(client_frame(opcode, client.message(message), rsv=4)))
    assert [(rsv1, opcode) for rsv1, opcode, _ in replies] == [(True, 0x2), (True, 0x2), (True, 0x1)]
    assert inflate([payload for _, _, payload in replies]) == messages
    # The second message leaned on the first one's window: tiny on the wire.
    assert len(replies[1][2]) < 20


def test_server_no_context_takeover_makes_each_reply_stand_alone():
    harness, head = deflate_harness("permessage-deflate; server_no_context_takeover")
    assert "server_no_context_takeover" in head
    client = Deflater()
    replies = []
    for _ in range(2):
        replies += read_frames(harness.feed(client_frame(0x2, client.message(b"abc" * 100), rsv=4)))
    assert inflate([p for _, _, p in replies], keep_context=False) == [b"abc" * 100] * 2


def test_a_fragmented_compressed_message_and_plain_ones_between():
    harness, _ = deflate_harness()
    payload = Deflater().message(b"fragmented and compressed " * 20)
    third = len(payload) // 3
    wire = (
        client_frame(0x2, payload[:third], fin=False, rsv=4)  # RSV1 on the first frame only
        + client_frame(0x9, b"ping")  # a control frame between fragments
        + client_frame(0x0, payload[third : 2 * third], fin=False)
        + client_frame(0x0, payload[2 * third :])
        + client_frame(0x1, b"plain")  # RSV1 clear: not compressed (section 6)
    )
    frames = read_frames(harness.feed(wire))
    assert frames[0] == (False, 0xA, b"ping")
    assert frames[1][:2] == (True, 0x2)
    assert inflate([frames[1][2]]) == [b"fragmented and compressed " * 20]
    assert frames[2] == (False, 0x1, b"plain")  # under compress_min_size: sent plain


@pytest.mark.parametrize(
    "frame",
    [
        client_frame(0x9, b"x", rsv=4),  # a compressed control frame
        client_frame(0x2, Deflater().message(b"ab"), fin=False, rsv=4) + client_frame(0x0, b"", rsv=4),
    ],
    ids=["rsv1 on a ping", "rsv1 on a continuation"],
)
def test_rsv1_where_it_does_not_belong_is_1002(frame):
    harness, _ = deflate_harness()
    frames = read_frames(harness.feed(frame))
    assert frames[-1][1] == 0x8 and struct.unpack("!H", frames[-1][2][:2])[0] == 1002
    assert harness.closed


def test_bad_deflate_data_is_1007():
    harness, _ = deflate_harness()
    frames = read_frames(harness.feed(client_frame(0x2, b"\xff\xff\xff\xff", rsv=4)))
    assert struct.unpack("!H", frames[-1][2][:2])[0] == 1007


def test_a_message_that_inflates_to_the_limit_passes_and_one_byte_more_is_1009():
    limit = Echo.max_message_size
    harness, _ = deflate_harness()
    client = Deflater()
    frames = read_frames(harness.feed(client_frame(0x2, client.message(b"\0" * limit), rsv=4)))
    assert inflate([frames[0][2]]) == [b"\0" * limit]
    frames = read_frames(harness.feed(client_frame(0x2, client.message(b"\0" * (limit + 1)), rsv=4)))
    assert struct.unpack("!H", frames[-1][2][:2])[0] == 1009
    assert harness.closed


def test_a_bomb_costs_no_more_memory_than_the_limit():
    """1 MB standing for 1 GiB of zeros: refused with 1009 having inflated
    64 KiB + 1 byte (the limit here); Python's peak allocation stays a few
    MiB (the frame itself, a copy in wsproto's buffer, the inflated part)."""
    wire = client_frame(0x2, compressed_bomb(), rsv=4)
    harness, _ = deflate_harness()
    tracemalloc.start()
    try:
        frames = read_frames(harness.feed(wire))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert struct.unpack("!H", frames[-1][2][:2])[0] == 1009
    assert peak < 8 * MIB, peak


def held_per_connection(compressed, count=10):
    """Bytes each of ``count`` open connections holds (tracemalloc sees
    zlib's allocations) after one message each way."""
    gc.collect()
    tracemalloc.start()
    try:
        harnesses = []
        for _ in range(count):
            if compressed:
                harness, _ = deflate_harness()
                harness.feed(client_frame(0x2, Deflater().message(b"hello there " * 50), rsv=4))
            else:
                harness, _ = deflate_harness("x-no-such-extension")
                harness.feed(client_frame(0x2, b"hello there " * 50))
            harnesses.append(harness)
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return held / count


def test_a_compressed_connection_holds_under_128_kib_more():
    # The deflater's 12-bit window and memLevel 5 (38 KiB) and the inflater
    # (42 KiB); zlib's default deflater alone would be 262 KiB.
    extra = held_per_connection(True) - held_per_connection(False)
    assert extra < 128 * 1024, extra


def test_compression_off_on_the_class_answers_without_the_extension():
    class Plain(Echo):
        compression = False

    class PlainApp(HTTPHandler):
        routes = {"/": Plain}

    harness = HandlerHarness(PlainApp)
    request = (
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
    )
    head, _ = split_response(harness.feed(request.encode()))
    assert head.startswith("HTTP/1.1 101 ") and "extensions" not in head.lower()


# -- the echo example against the websockets client library ---------------------------

websockets_client = pytest.importorskip("websockets.sync.client")
from websockets.exceptions import ConnectionClosedError  # noqa: E402


@pytest.fixture(scope="module")
def echo_url():
    with running_example("websocket_echo.py", "--max-size", str(MIB)) as (host, port, _):
        yield f"ws://{host}:{port}/"


MESSAGES = ["short", "compressible text ✓ " * 500, b"\x00" * 100_000, bytes(range(256)) * 40]


@pytest.mark.parametrize("compression", ["deflate", None])
def test_websockets_client_with_compression_on_and_off(echo_url, compression):
    with websockets_client.connect(echo_url, compression=compression) as ws:
        negotiated = ws.response.headers.get("Sec-WebSocket-Extensions")
        assert negotiated == ("permessage-deflate" if compression else None)
        assert [type(e).__name__ for e in ws.protocol.extensions] == (
            ["PerMessageDeflate"] if compression else []
        )
        for message in MESSAGES:
            ws.send(message)
            assert ws.recv(10) == message
        ws.send(["frag", "mented ✓" * 100])  # compressed across fragments
        assert ws.recv(10) == "frag" + "mented ✓" * 100


def test_websockets_client_compression_without_context_takeover(echo_url):
    from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

    factory = ClientPerMessageDeflateFactory(
        server_no_context_takeover=True, client_no_context_takeover=True, server_max_window_bits=10
    )
    with websockets_client.connect(echo_url, extensions=[factory], compression=None) as ws:
        negotiated = ws.response.headers["Sec-WebSocket-Extensions"]
        assert negotiated == (
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover;"
            " server_max_window_bits=10"
        )
        for message in MESSAGES:
            ws.send(message)
            assert ws.recv(10) == message


def test_websockets_client_compressed_message_over_the_limit_is_1009(echo_url):
    with websockets_client.connect(echo_url, max_size=None) as ws:
        ws.send(b"\x00" * (MIB + 1))  # about 1 KiB once compressed
        with pytest.raises(ConnectionClosedError):
            ws.recv(10)
    assert ws.protocol.close_rcvd.code == 1009
