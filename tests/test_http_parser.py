"""The request parsers side by side: h11 and httptools must give the same
events and the same refusals for any input, whatever the chunking; and the
choice between them (automatic, class attribute, environment variable)."""

import pytest
from evloop.protocols.http import HTTPHandler
from evloop.protocols.http_parser import (
    CLOSED,
    END,
    NEED_DATA,
    ParseError,
    RequestHead,
    available_parsers,
    parser_class,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evloop.testing import HandlerHarness

pytest.importorskip("h11")
pytest.importorskip("httptools")


def events(name, chunks, limit=256):
    """What parser ``name`` makes of ``chunks`` and then the end of stream:
    heads, body bytes (joined per request), END, and the refusal's status."""
    parser = parser_class(name)(limit)
    out = []
    body = b""

    def drain():
        nonlocal body
        while True:
            event = parser.next_event()
            if event is NEED_DATA or event is CLOSED:
                return event
            if isinstance(event, RequestHead):
                out.append(
                    ("head", event.method, event.target, event.http_version, event.headers, event.keep_alive)
                )
            elif event is END:
                out.append(("body", body))
                body = b""
            else:
                body += event

    try:
        for chunk in chunks:
            parser.feed(chunk)
            drain()
        parser.feed_eof()
        out.append(drain())
    except ParseError as exc:
        out.append(("refused", exc.status))
    return out


PIECES = [
    b"GET / HTTP/1.1\r\n",
    b"POST /p?q=1 HTTP/1.1\r\n",
    b"GET http://a/b HTTP/1.0\r\n",
    b"BREW / HTTP/1.1\r\n",
    b"get / HTTP/1.1\r\n",
    b"GET / HTTP/1.2\r\n",
    b"Host: t\r\n",
    b"Host: \r\n",
    b"X-A: b c \r\n",
    b"X-A:\tv\t\r\n",
    b"Content-Length: 3\r\n",
    b"Content-Length: 03\r\n",
    b"Content-Length: +3\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: Chunked\r\n",
    b"Transfer-Encoding : chunked\r\n",
    b"Content-Lengthy: 1\r\n",
    b"Content-Length: 1, 1\r\n",
    b"Connection: close\r\n",
    b"Connection: keep-alive, Upgrade\r\n",
    b"Upgrade: websocket\r\n",
    b"Expect: 100-continue\r\n",
    b" folded\r\n",
    b"\r\n",
    b"\n",
    b"abc",
    b"3\r\nabc\r\n",
    b"3;x=y\r\nabc\r\n",
    b"0\r\n\r\n",
    b"\xff\x00\x7f",
    b": no name\r\n",
    b"Bad Name: x\r\n",
]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.one_of(st.sampled_from(PIECES), st.binary(max_size=12)), max_size=10),
    st.data(),
)
def test_both_parsers_agree_on_any_input_whatever_the_chunking(pieces, data):
    stream = b"".join(pieces)
    cut = data.draw(st.integers(0, len(stream)))
    whole = events("h11", [stream])
    assert events("httptools", [stream]) == whole
    assert events("h11", [stream[:cut], stream[cut:]]) == whole
    assert events("httptools", [stream[:cut], stream[cut:]]) == whole


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /a%20b?x=1&y HTTP/1.1\r\nHost: t\r\nAccept: */*\r\nX-Empty:\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nX-Latin: caf\xe9\r\n\r\n",
        b"GET /\xc3\xa9 HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nX-Tab: \tv  \r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nX: a\x7fb\r\n\r\n",
        b"GET /\x7f HTTP/1.1\r\nHost: t\r\n\r\n",
        b'GET /a"b{}|^` HTTP/1.1\r\nHost: t\r\n\r\n',
        b"GET / HTTP/1.1\r\nHost: t\r\nX!#$%&'*+-.^_`|~: 1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nX(y): 1\r\n\r\n",
        b"GET  / HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nContent-Lengthy: 5\r\nTransfer-Encodings: x\r\n\r\n",
        b"GET / HTTP/1.1 \r\nHost: t\r\n\r\n",
    ]
    + [
        b"%s / HTTP/1.1\r\nHost: t\r\n\r\n" % method.encode()
        for method in ("PATCH", "PURGE", "QUERY", "M-SEARCH")
    ],
)
def test_both_parsers_read_the_same_heads(head):
    assert events("httptools", [head]) == events("h11", [head])


def test_parser_choice(monkeypatch):
    assert available_parsers() == ["httptools", "h11"]
    monkeypatch.delenv("EVLOOP_HTTP_PARSER", raising=False)
    assert parser_class().name == "httptools"
    monkeypatch.setenv("EVLOOP_HTTP_PARSER", "h11")
    assert parser_class().name == "h11"
    assert parser_class("httptools").name == "httptools"
    with pytest.raises(ValueError):
        parser_class("nonesuch")

    class Slow(HTTPHandler):
        http_parser = "h11"
        routes = {"/": lambda request: "ok"}

    monkeypatch.setenv("EVLOOP_HTTP_PARSER", "httptools")
    harness = HandlerHarness(Slow)
    assert type(harness.handler.parser).name == "h11"
    assert harness.feed(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").endswith(b"\r\n\r\nok")
