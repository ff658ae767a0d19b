"""Request smuggling over real sockets (issue 12, RFC 9112 sections 6.1 and
6.3): every ambiguous framing is refused with its status, the connection is
closed, and a second request hidden in the body is never answered. Run
against both request parsers, which must refuse the same way."""

import re
import socket

import pytest
from evloop.protocols.http import HTTPHandler

from tests.conftest import HTTP_PARSERS, RunningLoop, recv_all

HIDDEN = b"GET /hidden HTTP/1.1\r\nHost: t\r\n\r\n"
CHUNKED_END = b"0\r\n\r\n"


def post(*headers, body=b"", version=b"1.1"):
    lines = [b"POST / HTTP/" + version, b"Host: t", *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# (name, request with the hidden one in its body, status)
SMUGGLING = [
    (
        "Content-Length then Transfer-Encoding",
        post(
            b"Content-Length: %d" % len(CHUNKED_END + HIDDEN),
            b"Transfer-Encoding: chunked",
            body=CHUNKED_END + HIDDEN,
        ),
        400,
    ),
    (
        "Transfer-Encoding then Content-Length",
        post(b"Transfer-Encoding: chunked", b"Content-Length: 3", body=CHUNKED_END + HIDDEN),
        400,
    ),
    ("Transfer-Encoding in upper case", post(b"Transfer-Encoding: CHUNKED", body=CHUNKED_END + HIDDEN), 400),
    ("Transfer-Encoding in mixed case", post(b"Transfer-Encoding: Chunked", body=CHUNKED_END + HIDDEN), 400),
    ("space before the colon", post(b"Transfer-Encoding : chunked", body=CHUNKED_END + HIDDEN), 400),
    ("Content-Length space before the colon", post(b"Content-Length : 0", body=HIDDEN), 400),
    ("vertical tab before chunked", post(b"Transfer-Encoding:\x0bchunked", body=CHUNKED_END + HIDDEN), 501),
    (
        "Transfer-Encoding repeated",
        post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked", body=CHUNKED_END + HIDDEN),
        400,
    ),
    ("chunked listed twice", post(b"Transfer-Encoding: chunked, chunked", body=CHUNKED_END + HIDDEN), 400),
    ("chunked not last", post(b"Transfer-Encoding: chunked, identity", body=CHUNKED_END + HIDDEN), 400),
    (
        "unknown coding before chunked",
        post(b"Transfer-Encoding: gzip, chunked", body=CHUNKED_END + HIDDEN),
        400,
    ),
    ("unknown coding alone", post(b"Transfer-Encoding: xchunked", body=CHUNKED_END + HIDDEN), 501),
    (
        "Transfer-Encoding in HTTP/1.0",
        post(b"Transfer-Encoding: chunked", body=CHUNKED_END + HIDDEN, version=b"1.0"),
        400,
    ),
    (
        "Transfer-Encoding folded (obs-fold)",
        post(b"Transfer-Encoding:", b" chunked", body=CHUNKED_END + HIDDEN),
        400,
    ),
    ("another header folded", post(b"X-Note: a", b"\tb", b"Content-Length: 0", body=HIDDEN), 400),
    ("Content-Length with a plus sign", post(b"Content-Length: +0", body=HIDDEN), 400),
    ("Content-Length with a minus sign", post(b"Content-Length: -1", body=HIDDEN), 400),
    ("Content-Length with inner space", post(b"Content-Length: 1 0", body=HIDDEN), 400),
    ("Content-Length in hex", post(b"Content-Length: 0x0", body=HIDDEN), 400),
    ("Content-Length list, identical", post(b"Content-Length: 0, 0", body=HIDDEN), 400),
    ("Content-Length twice, identical", post(b"Content-Length: 0", b"Content-Length: 0", body=HIDDEN), 400),
    (
        "Content-Length twice, different",
        post(b"Content-Length: 0", b"Content-Length: %d" % len(HIDDEN), body=HIDDEN),
        400,
    ),
    ("Content-Length overflowing", post(b"Content-Length: 1" + b"0" * 30, body=HIDDEN), 400),
    ("bare LF line ending", b"POST / HTTP/1.1\nHost: t\nContent-Length: 0\n\n" + HIDDEN, 400),
    ("bare CR inside a header", post(b"X: a\rContent-Length: 0", body=HIDDEN), 400),
]


class Target(HTTPHandler):
    hidden_hits = 0

    @staticmethod
    def _hidden(request):
        Target.hidden_hits += 1
        return "hidden answered"

    routes = {"/": lambda request: "front", "/hidden": _hidden}


@pytest.fixture(scope="module", params=HTTP_PARSERS)
def server(request):
    pytest.importorskip(request.param)
    handler = type(f"Target_{request.param}", (Target,), {"http_parser": request.param})
    holder = RunningLoop().start()
    yield holder.serve(handler)
    holder.stop()


def statuses(data):
    return [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]


@pytest.mark.parametrize("name, request_bytes, status", SMUGGLING, ids=[case[0] for case in SMUGGLING])
def test_ambiguous_framing_is_refused_and_the_hidden_request_never_answered(
    server, name, request_bytes, status
):
    hits = Target.hidden_hits
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(request_bytes)
        # recv_all returns only when the server closes: the close is checked.
        data = recv_all(sock)
    assert statuses(data) == [status], data
    assert b"Connection: close" in data
    assert b"hidden answered" not in data and Target.hidden_hits == hits


def test_the_same_requests_framed_honestly_are_answered(server):
    # The control: without the ambiguity both requests are answered.
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(
            post(b"Transfer-Encoding: chunked", body=CHUNKED_END) + HIDDEN[:-2] + b"Connection: close\r\n\r\n"
        )
        data = recv_all(sock)
    assert statuses(data) == [200, 200] and data.endswith(b"hidden answered")
