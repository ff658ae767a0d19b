"""What the fuzzers check: one function per target, taking the fuzzer's bytes.

The invariant is the hypothesis tests' (tests/test_framers_adversarial.py,
tests/helpers.py): any bytes yield requests or the protocol's own
RemoteProtocolError, never another exception, and the chunking never changes
the result. Each target feeds the same stream whole, one byte at a time and
cut where the input's first byte says, and raises AssertionError (or lets the
stray exception out) when the invariant breaks; the fuzzer reports either as
a crash. No atheris here: ``tests/test_fuzz_corpus.py`` runs every target
over the corpus kept in ``fuzz/corpus/<target>/`` without it.

The ``proxy`` target is the PROXY protocol header parser
(:mod:`evloop.proxy_protocol`): a header (and the bytes after it, untouched),
need more, or its own error, the same in every chunking.

An input is ``control + stream``: bit 0 of the control byte asks for an end
of stream after the data, bit 1 for the framer's small limits, and the whole
byte (with the stream's length) places the cut points.
"""

import logging
from typing import Any, Callable, Dict, List, Optional, Tuple

__all__ = ["TARGETS", "check", "split_input"]


def split_input(data: bytes, bytewise_max: int = 1 << 30) -> Tuple[List[List[bytes]], bool, bool, bytes]:
    """(the chunkings to try, eof, small limits, the stream) for one input:
    whole, a byte at a time (streams up to ``bytewise_max`` bytes), in
    chunks of 2 to 14 bytes, and in two at a point the control byte picks."""
    control, stream = (data[0], data[1:]) if data else (0, b"")
    eof = bool(control & 1)
    small = bool(control & 2)
    chunkings = [[stream]]
    if 1 < len(stream) <= bytewise_max:
        chunkings.append([stream[i : i + 1] for i in range(len(stream))])
    if len(stream) > 2:
        step = 2 + (control >> 2) % 13
        chunkings.append([stream[i : i + step] for i in range(0, len(stream), step)])
        cut = 1 + (control * 37) % (len(stream) - 1)
        chunkings.append([stream[:cut], stream[cut:]])
    return chunkings, eof, small, stream


# -- framers --------------------------------------------------------------------


def _framers() -> Dict[str, Callable[[bool], Any]]:
    from evloop.protocols import (
        Int32Framer,
        JsonFramer,
        LengthSepFramer,
        LineFramer,
        NetstringFramer,
        RespFramer,
    )

    return {
        "lengthsep": lambda small: LengthSepFramer(10 if small else None),
        "lines": lambda small: LineFramer(3 if small else None),
        "netstring": lambda small: NetstringFramer(9 if small else None),
        "int32": lambda small: Int32Framer(5 if small else None),
        "jsonmsg": lambda small: JsonFramer(8 if small else None),
        "resp": lambda small: RespFramer(4, max_line=2, max_elements=2) if small else RespFramer(),
    }


def _framer_outcome(framer: Any, chunks: List[bytes], eof: bool, batched: bool) -> Tuple[Any, ...]:
    """Feed ``chunks``; return (requests, error reply or None, bytes left)."""
    from evloop.protocols import NEED_DATA

    from evloop import RemoteProtocolError

    requests: List[Any] = []

    def drain() -> None:
        if batched:
            requests.extend(framer.maybe_requests())
            requests.extend(framer.maybe_requests())  # an error found after commands shows now
            return
        while (request := framer.next_request()) is not NEED_DATA:
            requests.append(request)

    try:
        for chunk in chunks:
            framer.feed(chunk)
            drain()
        if eof:
            framer.feed_eof()
            drain()
    except RemoteProtocolError as exc:
        # The error sticks, and the buffer is dropped.
        assert framer.buffered == 0, "an error left bytes buffered"
        try:
            framer.maybe_requests() if batched else framer.next_request()
        except RemoteProtocolError as again:
            assert again is exc, "a second, different error"
        else:
            raise AssertionError("the error did not stick") from None
        return requests, ("error", exc.reply), 0
    return requests, None, framer.buffered


def _check_framer(name: str, data: bytes) -> None:
    make = _framers()[name]
    chunkings, eof, small, _ = split_input(data)
    ways = [False, True] if name == "resp" else [False]
    expected = _framer_outcome(make(small), chunkings[0], eof, False)
    for batched in ways:
        for chunks in chunkings:
            got = _framer_outcome(make(small), chunks, eof, batched)
            assert got == expected, (name, batched, len(chunks), got, expected)


# -- handlers, through evloop.testing.HandlerHarness ----------------------------


class _ErrorRecords(logging.Handler):
    """Log records at ERROR or above: a traceback the harness logged."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


_handler_classes: Dict[str, Any] = {}


def _handler_class(name: str) -> Any:
    """The handler a target serves: made once, recording what
    ``handle_error()`` is given in ``errors``."""
    if name in _handler_classes:
        return _handler_classes[name]
    from evloop.protocols import RequestHandler
    from evloop.protocols.http import HTTPHandler, Response
    from evloop.protocols.websocket import EchoWebSocket, WebSocketHandler

    class Recording:
        errors: List[BaseException] = []

        def handle_error(self, exc: BaseException) -> None:
            self.errors.append(exc)
            super().handle_error(exc)  # type: ignore[misc]

    class Echo(WebSocketHandler):
        max_message_size = 1000
        ping_interval = None

        def received_message(self, message: Any) -> None:
            self.send(message)

    def echo(request: Any) -> Any:
        return Response(request.body)

    class Request(Recording, RequestHandler):
        max_size = 64

    class HTTP(Recording, HTTPHandler):
        routes = {"/": lambda request: "hello", "/echo": echo}
        max_head_size = 256
        max_body_size = 100

    class WebSocket(Recording, HTTPHandler):
        routes = {"/": Echo, "/echo": EchoWebSocket}

    _handler_classes.update(request=Request, http=HTTP, websocket=WebSocket)
    return _handler_classes[name]


WEBSOCKET_HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: fuzz\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZg==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def _handler_outcome(name: str, chunks: List[bytes], eof: bool) -> Tuple[bytes, bool]:
    from evloop import RemoteProtocolError
    from evloop.testing import HandlerHarness

    handler_class = _handler_class(name)
    handler_class.errors = []
    records = _ErrorRecords()
    logger = logging.getLogger("evloop")
    logger.addHandler(records)
    try:
        harness = HandlerHarness(handler_class)
        try:
            if name == "websocket":
                opened = harness.feed(WEBSOCKET_HANDSHAKE)
                assert opened.startswith(b"HTTP/1.1 101 "), opened
            output = b"".join(harness.feed(chunk) for chunk in chunks)
            if eof:
                output += harness.feed_eof()
            closed = harness.closed
        finally:
            harness.close()
    finally:
        logger.removeHandler(records)
    strays = [exc for exc in handler_class.errors if not isinstance(exc, RemoteProtocolError)]
    assert not strays, f"{name}: not a RemoteProtocolError: {strays!r}"
    assert not records.records, f"{name}: logged {records.records[0].getMessage()!r}"
    return output, closed


#: A handler fed a byte a time costs a loop pass per byte: longer streams
#: are fed in chunks only, so the fuzzer keeps its pace.
HANDLER_BYTEWISE_MAX = 48


def _check_handler(name: str, data: bytes) -> None:
    chunkings, eof, _, _ = split_input(data, HANDLER_BYTEWISE_MAX)
    expected = _handler_outcome(name, chunkings[0], eof)
    for chunks in chunkings[1:]:
        got = _handler_outcome(name, chunks, eof)
        assert got == expected, (name, len(chunks), got, expected)


# -- the PROXY protocol header ----------------------------------------------------


def _proxy_outcome(chunks: List[bytes], small: bool) -> Tuple[Any, ...]:
    """Feed ``chunks`` to a PROXY header parser: ("header", header, what
    followed it), ("need more", bytes held) or ("error",). The error's
    message may show a different prefix of the bytes, so only its kind is
    compared."""
    from evloop.proxy_protocol import ProxyHeaderError, ProxyHeaderParser

    parser = ProxyHeaderParser((1, 2), 40 if small else 65551)
    header = None
    after = b""
    try:
        for chunk in chunks:
            if header is None:
                header = parser.feed(chunk)
                if header is not None:
                    after = parser.rest
            else:
                after += chunk
    except ProxyHeaderError:
        assert parser.buffered == 0, "an error left bytes held"
        try:
            parser.feed(b"x")
        except ProxyHeaderError:
            pass
        else:
            raise AssertionError("the error did not stick") from None
        return ("error",)
    if header is None:
        assert parser.buffered <= (40 if small else 65551), "held more than the limit"
        return ("need more", parser.buffered)
    return ("header", header, after)


def _check_proxy(data: bytes) -> None:
    chunkings, _, small, stream = split_input(data)
    expected = _proxy_outcome(chunkings[0], small)
    if expected[0] == "header":
        assert stream.endswith(expected[2]), "the bytes after the header changed"
    for chunks in chunkings[1:]:
        got = _proxy_outcome(chunks, small)
        assert got == expected, ("proxy", len(chunks), got, expected)


def _fixed_date() -> None:
    # Every HTTP response carries Date: fixed, two runs' output compares.
    import evloop.protocols.http as http_module

    http_module.http_date = lambda when=None: "Thu, 01 Jan 2026 00:00:00 GMT"


FRAMER_TARGETS = ("lengthsep", "lines", "netstring", "int32", "jsonmsg", "resp")
HANDLER_TARGETS = ("request", "http", "websocket")
#: Every target's name, in the order the CI run fuzzes them.
TARGETS = FRAMER_TARGETS + HANDLER_TARGETS + ("proxy",)


def check(target: str, data: bytes) -> None:
    """Run ``target``'s invariant on one input; raises when it breaks."""
    if target in FRAMER_TARGETS:
        _check_framer(target, data)
    elif target in HANDLER_TARGETS:
        _fixed_date()
        _check_handler(target, data)
    elif target == "proxy":
        _check_proxy(data)
    else:
        raise ValueError(f"no fuzz target {target!r}; the targets are {', '.join(TARGETS)}")


def checker(target: str) -> Callable[[bytes], None]:
    """``check`` bound to one target (what the fuzzer calls per input)."""
    if target not in TARGETS:
        raise ValueError(f"no fuzz target {target!r}; the targets are {', '.join(TARGETS)}")

    def one_input(data: bytes, target: Optional[str] = target) -> None:
        check(str(target), data)

    return one_input
