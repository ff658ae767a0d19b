"""HTTPHandler and Router: pipelining and keep-alive in every chunking, the
size limits and their status codes, malformed requests, HEAD, streamed and
file bodies, futures, timeouts; the standard library's http.client as a
real peer over 127.0.0.1."""

import concurrent.futures
import http.client
import io
import logging
import os
import re
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("h11")

import evloop.protocols.http as http_module
from evloop.protocols.http import HTTPError, HTTPHandler, Request, Response
from evloop.protocols.routing import Router

from evloop import RemoteProtocolError
from evloop.testing import HandlerHarness, every_split
from tests.conftest import connect, recv_all
from tests.helpers import assert_handler_every_split

DATE = "Thu, 01 Jan 2026 00:00:00 GMT"

# Every test here runs once with each request parser (tests/conftest.py):
# a user gets the same behaviour from h11 and from httptools.
pytestmark = pytest.mark.usefixtures("http_parser")


@pytest.fixture(autouse=True)
def fixed_date(monkeypatch):
    # Every response carries Date; fixed, the output of two runs can be compared.
    monkeypatch.setattr(http_module, "http_date", lambda when=None: DATE)


def hello(request):
    return f"hello {request.method} {request.path} {request.query}"


def echo_body(request):
    return Response(request.body, content_type=request.header("content-type"))


def stream(request):
    def pieces():
        yield "one,"
        yield b""
        yield b"two,"
        yield "three"

    return Response(pieces())


def stream_known_length(request):
    return Response(iter([b"abc", b"def"]), length=6)


def bytes_file(request):
    return Response(io.BytesIO(b"from a file object"), content_type="text/plain")


def broken(request):
    raise ValueError("application bug")


def teapot(request):
    raise HTTPError(418, "short and stout", [("X-Kind", "teapot")])


class Items:
    def get(self, request):
        return "items"

    def post(self, request):
        return Response(b"created " + request.body, 201)


pool = concurrent.futures.ThreadPoolExecutor(2)
release = threading.Event()


def slow(request):
    def work():
        release.wait(10)
        return "slow done"

    return pool.submit(work)


router = Router(
    {
        "/*": hello,
        "/echo": echo_body,
        "/stream": stream,
        "/sized": stream_known_length,
        "/file": bytes_file,
        "/broken": broken,
        "/teapot": teapot,
        "/items": Items,
        "/slow": slow,
    }
)


@router.route("/docs/*")
def docs(request):
    return f"docs route={request.route} subpath={request.subpath}"


class App(HTTPHandler):
    routes = router
    max_head_size = 1024
    max_body_size = 100


def get(path, extra=""):
    return f"GET {path} HTTP/1.1\r\nHost: test\r\n{extra}\r\n".encode()


def response(status, body, extra=(), content_type="text/plain; charset=utf-8"):
    reason = {200: "OK", 201: "Created", 404: "Not Found", 405: "Method Not Allowed"}[status]
    headers = [f"HTTP/1.1 {status} {reason}", f"Date: {DATE}", "Server: evloop"]
    headers.append(f"Content-Type: {content_type}")
    headers.append(f"Content-Length: {len(body)}")
    headers.extend(extra)
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


def parse_responses(data):
    """Split a byte stream into [(status, headers dict, body)]; bodies by
    Content-Length or chunked framing."""
    out = []
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size_line, _, data = data.partition(b"\r\n")
                size = int(size_line, 16)
                body += data[:size]
                data = data[size + 2 :]
                if size == 0:
                    break
        elif status in (100, 101, 204, 304):
            body = b""
        else:
            size = int(headers.get("content-length", len(data)))
            body, data = data[:size], data[size:]
        out.append((status, headers, body))
    return out


# -- the request cycle ------------------------------------------------------------


def test_pipelined_requests_in_every_split_answered_in_order():
    data = (
        get("/a?x=1")
        + b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: text/x\r\nContent-Length: 5\r\n\r\nhello"
        + b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        + b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n"
        + b"DELETE /items HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    expected = (
        response(200, b"hello GET /a x=1")
        + response(200, b"hello", content_type="text/x")
        + response(200, b"abcde", content_type="application/octet-stream")
        + response(200, b"hello HEAD / ")[: -len(b"hello HEAD / ")]
        + response(405, b"405 Method Not Allowed: DELETE is not allowed here\n", ["Allow: GET, HEAD, POST"])
    )
    assert_handler_every_split(App, data, expected, closed=False)


def test_pipelined_requests_in_one_read_leave_in_one_send():
    harness = HandlerHarness(App)
    output = harness.feed(get("/1") + get("/2") + get("/3"))
    assert [body for _, _, body in parse_responses(output)] == [
        b"hello GET /1 ",
        b"hello GET /2 ",
        b"hello GET /3 ",
    ]
    assert harness.socket.send_calls == 1


def test_connection_close_and_http10_close_after_the_response():
    harness = HandlerHarness(App)
    ((status, headers, _),) = parse_responses(harness.feed(get("/", "Connection: close\r\n")))
    assert status == 200 and headers["connection"] == "close"
    assert harness.closed
    harness = HandlerHarness(App)
    output = harness.feed(b"GET / HTTP/1.0\r\n\r\n")
    assert output.startswith(b"HTTP/1.1 200 ") and harness.closed


def test_head_sends_the_get_headers_and_no_body():
    harness = HandlerHarness(App)
    output = harness.feed(b"HEAD /stream HTTP/1.1\r\nHost: t\r\n\r\n")
    head, _, body = output.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and body == b""
    assert b"Transfer-Encoding: chunked" in head
    # The connection is ready for the next request: no body was owed.
    assert parse_responses(harness.feed(get("/")))[0][2] == b"hello GET / "


def test_generator_body_is_chunked_and_later_requests_wait_for_it():
    harness = HandlerHarness(App)
    output = harness.feed(get("/stream") + get("/sized") + get("/file") + get("/"))
    answers = parse_responses(output)
    assert [(status, body) for status, _, body in answers] == [
        (200, b"one,two,three"),
        (200, b"abcdef"),
        (200, b"from a file object"),
        (200, b"hello GET / "),
    ]
    assert answers[0][1]["transfer-encoding"] == "chunked"
    assert answers[1][1]["content-length"] == "6"
    assert not harness.closed


def test_generator_body_to_an_http10_client_ends_with_the_connection():
    harness = HandlerHarness(App)
    output = harness.feed(b"GET /stream HTTP/1.0\r\n\r\n")
    head, _, body = output.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower() and body == b"one,two,three"
    assert harness.closed


def test_future_answers_keep_request_order():
    release.clear()
    harness = HandlerHarness(App)
    first = harness.feed(get("/slow") + get("/"))
    assert first == b""  # the slow answer holds its place; the fast one waits behind it
    release.set()
    output = bytearray()
    for _ in range(500):
        output += harness.advance(0.01)
        if output.count(b"HTTP/1.1") == 2:
            break
        threading.Event().wait(0.005)  # let the worker thread finish
    assert [body for _, _, body in parse_responses(bytes(output))] == [b"slow done", b"hello GET / "]


def test_application_errors():
    harness = HandlerHarness(App)
    ((status, _, body),) = parse_responses(harness.feed(get("/broken")))
    assert status == 500 and not harness.closed
    ((status, headers, body),) = parse_responses(harness.feed(get("/teapot")))
    assert status == 418 and headers["x-kind"] == "teapot" and b"short and stout" in body
    ((status, headers, _),) = parse_responses(harness.feed(b"DELETE /items HTTP/1.1\r\nHost: t\r\n\r\n"))
    assert status == 405 and headers["allow"] == "GET, HEAD, POST"
    ((status, _, body),) = parse_responses(
        harness.feed(b"POST /items HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nok")
    )
    assert (status, body) == (201, b"created ok")
    assert not harness.closed


def test_expect_100_continue_is_answered_before_the_body():
    harness = HandlerHarness(App)
    interim = harness.feed(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
    )
    assert interim.startswith(b"HTTP/1.1 100 ")
    ((status, _, body),) = parse_responses(harness.feed(b"abc"))
    assert (status, body) == (200, b"abc")
    # Also when the connection is to close after this request.
    harness = HandlerHarness(App)
    interim = harness.feed(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n"
        b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    assert interim.startswith(b"HTTP/1.1 100 ")
    assert parse_responses(harness.feed(b"x"))[-1][2] == b"x" and harness.closed


# -- what the peer gets wrong ---------------------------------------------------------

MALFORMED = [
    ("request line", b"GARBAGE\r\n\r\n", 400),
    ("header without a colon", b"GET / HTTP/1.1\r\nHost: t\r\nbroken header\r\n\r\n", 400),
    ("no Host in HTTP/1.1", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("bad Content-Length", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n", 400),
    ("bad chunk size", b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    ("unknown transfer coding", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    ("head over max_head_size", b"GET / HTTP/1.1\r\nHost: t\r\nX: " + b"a" * 2000 + b"\r\n\r\n", 431),
    (
        "declared body over max_body_size",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 101\r\n\r\n",
        413,
    ),
    ("HTTP/2.0 request line", b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505),
    ("unknown method", b"BREW /pot HTTP/1.1\r\nHost: t\r\n\r\n", 501),
    ("two Host headers", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (
        "both Content-Length and chunked",
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
    ),
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: t\r\nX: a\r\n b\r\n\r\n", 400),
    (
        "chunk-size line over max_head_size",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n1;" + b"e" * 1100,
        431,
    ),
    (
        "trailer section over max_head_size",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: " + b"t" * 1100,
        431,
    ),
    (
        "chunked body over max_body_size",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"40\r\n" + b"a" * 64 + b"\r\n40\r\n" + b"a" * 64 + b"\r\n",
        413,
    ),
]


@pytest.mark.parametrize("name, data, status", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_request_gets_its_status_a_warning_and_a_close(name, data, status, caplog):
    with caplog.at_level(logging.WARNING):
        data = get("/ok") + data
        for label, chunks in every_split(data) if len(data) < 160 else [("whole", [data])]:
            harness = HandlerHarness(App)
            output = b"".join(harness.feed(chunk) for chunk in chunks)
            answers = parse_responses(output)
            assert answers[0][2] == b"hello GET /ok ", label
            assert answers[-1][0] == status, label
            assert answers[-1][1]["connection"] == "close", label
            assert harness.closed, label
    assert "127.0.0.1:40000" in caplog.text and f"HTTP {status}" in caplog.text


def test_the_head_limit_is_exact_whatever_the_split():
    def head_of(size):
        start = b"GET / HTTP/1.1\r\nHost: t\r\nX: "
        return start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"

    for size, status in ((App.max_head_size, 200), (App.max_head_size + 1, 431)):
        data = head_of(size)
        assert len(data) == size
        for chunks in ([data], [data[:700], data[700:]], [data[:-1], data[-1:]]):
            harness = HandlerHarness(App)
            output = b"".join(harness.feed(chunk) for chunk in chunks)
            assert parse_responses(output)[0][0] == status


def test_leading_empty_lines_are_ignored_and_trailers_dropped():
    harness = HandlerHarness(App)
    output = harness.feed(
        b"\r\n\r\nPOST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;ext=1\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n"
    )
    assert parse_responses(output)[0][2] == b"abc" and not harness.closed


def test_empty_lines_before_a_request_are_bounded_like_a_head():
    harness = HandlerHarness(App)
    assert parse_responses(harness.feed(b"\r\n" * 500 + get("/after")))[0][2] == b"hello GET /after "
    # More than max_head_size of them, even in small pieces: refused.
    output = b"".join(harness.feed(b"\r\n" * 64) for _ in range(10))
    assert parse_responses(output)[-1][0] == 400 and harness.closed


def test_log_lines_show_the_peers_bytes_as_text(caplog):
    with caplog.at_level(logging.WARNING):
        HandlerHarness(App).feed(b"GARBAGE\r\n\r\n")
    assert "malformed request line 'GARBAGE'" in caplog.text
    assert "bytearray" not in caplog.text


def test_stream_ending_inside_a_request_is_refused():
    harness = HandlerHarness(App)
    harness.feed(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
    output = harness.feed_eof()
    assert harness.closed
    assert output == b"" or output.startswith(b"HTTP/1.1 400 ")


def test_an_idle_connection_closes_quietly_and_a_slow_request_gets_408():
    harness = HandlerHarness(App)
    harness.feed(get("/"))
    assert harness.advance(299) == b"" and not harness.closed
    harness.advance(2)
    assert harness.closed
    harness = HandlerHarness(App)
    harness.feed(b"GET / HTTP/1.1\r\nHo")
    harness.advance(59)
    assert not harness.closed
    output = harness.advance(2)
    assert output.startswith(b"HTTP/1.1 408 ") and harness.closed


class Faults(App):
    errors = []

    def handle_error(self, exc):
        self.errors.append(exc)
        super().handle_error(exc)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=30),
            st.sampled_from(
                [
                    get("/"),
                    get("/stream"),
                    get("/items"),
                    b"\r\n",
                    b"HTTP/1.1",
                    b"Host: t\r\n",
                    b"Content-Length: 3\r\n",
                    b"Transfer-Encoding: chunked\r\n",
                    b"0\r\n\r\n",
                    b"POST /echo HTTP/1.1\r\n",
                    b"GET / HTTP/1.0\r\n",
                    b"Connection: close\r\n",
                ]
            ),
        ),
        max_size=8,
    ),
    st.data(),
)
def test_any_bytes_give_responses_or_a_protocol_error_whatever_the_chunking(pieces, data):
    stream = b"".join(pieces)
    cut = data.draw(st.integers(0, len(stream)))
    results = []
    for chunks in ([stream], [stream[:cut], stream[cut:]]):
        Faults.errors = []
        harness = HandlerHarness(Faults)
        output = b"".join(harness.feed(chunk) for chunk in chunks)
        output += harness.feed_eof()
        assert all(isinstance(exc, RemoteProtocolError) for exc in Faults.errors), Faults.errors
        results.append((output, harness.closed))
        harness.close()
    assert results[0] == results[1]


# -- routing ----------------------------------------------------------------------------


def test_router_exact_prefix_and_encoded_paths():
    r = Router({"/": "root", "/a/*": "a-prefix", "/a/b/*": "ab-prefix", "/a/b": "ab-exact"})
    assert r.find("/") == ("/", "root")
    # Exact by default: "/" answers "/" only.
    assert r.find("/elsewhere") == (None, None)
    assert r.find("/a/x") == ("/a/*", "a-prefix")
    assert r.find("/a/b/c/d") == ("/a/b/*", "ab-prefix")
    assert r.find("/a/b") == ("/a/b", "ab-exact")
    r.add("/all", "catch", prefix=True)
    assert r.find("/all/of/it") == ("/all", "catch")
    r = Router({"/*": "everything", "/a/*": "a-prefix"})
    assert r.find("/elsewhere") == ("/*", "everything")
    # Routes see the path as sent: an encoded slash is not a separator.
    r = Router({"/a/*": "a-prefix", "/a/b": "ab-exact"})
    assert r.find("/a%2Fb") == (None, None)
    with pytest.raises(ValueError):
        r.add("relative", "x")


def test_routes_by_method_and_405_with_allow():
    r = Router()

    @r.route("/things", methods=["GET"])
    def list_things(request):
        return "all things"

    @r.route("/things", methods=["POST", "PUT"])
    def add_thing(request):
        return Response(b"added " + request.body, 201)

    class Things(HTTPHandler):
        routes = r

    harness = HandlerHarness(Things)
    assert parse_responses(harness.feed(get("/things")))[0][2] == b"all things"
    ((status, headers, body),) = parse_responses(harness.feed(b"HEAD /things HTTP/1.1\r\nHost: t\r\n\r\n"))
    assert (status, body) == (200, b"") and headers["content-length"] == "10"
    ((status, _, body),) = parse_responses(
        harness.feed(b"PUT /things HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx")
    )
    assert (status, body) == (201, b"added x")
    ((status, headers, _),) = parse_responses(harness.feed(b"DELETE /things HTTP/1.1\r\nHost: t\r\n\r\n"))
    assert status == 405 and headers["allow"] == "GET, HEAD, POST, PUT"
    assert not harness.closed


def test_a_prefix_route_without_its_slash_redirects():
    class Site(HTTPHandler):
        routes = {"/docs/*": docs, "/*": hello}

    harness = HandlerHarness(Site)
    ((status, headers, _),) = parse_responses(harness.feed(get("/docs?page=2")))
    assert status == 301 and headers["location"] == "/docs/?page=2"
    ((status, headers, _),) = parse_responses(
        harness.feed(b"POST /docs HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
    )
    assert status == 308 and headers["location"] == "/docs/"
    assert parse_responses(harness.feed(get("/docs/")))[0][2] == b"docs route=/docs/* subpath="


class Bare(HTTPHandler):
    routes = {"/only": hello}


def test_no_route_is_404_and_the_connection_stays():
    harness = HandlerHarness(Bare)
    assert harness.feed(get("/other")) == response(404, b"404 Not Found\n")
    assert parse_responses(harness.feed(get("/only")))[0][2] == b"hello GET /only "


def test_prefix_route_gets_the_subpath():
    harness = HandlerHarness(App)
    ((_, _, body),) = parse_responses(harness.feed(get("/docs/guide/intro?x")))
    assert body == b"docs route=/docs/* subpath=guide/intro"


def test_request_helpers():
    request = Request("GET", "/a%20b?q=1", [("accept", "a"), ("accept", "b"), ("x", " Up, grade ")])
    assert request.header("Accept") == "a, b"
    assert request.header("missing", "d") == "d"
    assert request.header_tokens("x") == ["up", "grade"]
    assert (request.path, request.query, request.unquoted_path) == ("/a%20b", "q=1", "/a b")


# -- real sockets, real clients -----------------------------------------------------------


class FileApp(HTTPHandler):
    routes = {}


def test_http_client_keep_alive_over_a_real_socket(running_loop):
    server = running_loop.serve(App)
    client = http.client.HTTPConnection(server.host, server.port, timeout=10)
    for i in range(3):
        client.request("POST", "/echo", body=b"x" * i, headers={"Content-Type": "a/b"})
        reply = client.getresponse()
        assert (reply.status, reply.read(), reply.getheader("content-type")) == (200, b"x" * i, "a/b")
    client.request("GET", "/stream")
    reply = client.getresponse()
    assert reply.read() == b"one,two,three"
    client.request("DELETE", "/items")
    reply = client.getresponse()
    assert reply.status == 405
    reply.read()
    client.close()


def test_a_file_goes_out_with_sendfile(running_loop, tmp_path, monkeypatch):
    payload = os.urandom(3 * 1024 * 1024)
    path = tmp_path / "blob.bin"
    path.write_bytes(payload)
    calls = []
    real_sendfile = os.sendfile

    def counting_sendfile(*args):
        calls.append(args[3])
        return real_sendfile(*args)

    monkeypatch.setattr(os, "sendfile", counting_sendfile)

    class Files(HTTPHandler):
        routes = {"/blob": lambda request: Response(open(path, "rb"))}

    server = running_loop.serve(Files)
    with connect(server) as sock:
        sock.sendall(get("/blob") + get("/blob", "Connection: close\r\n"))
        answers = parse_responses(recv_all(sock))
    assert [(status, body == payload) for status, _, body in answers] == [(200, True), (200, True)]
    assert answers[0][1]["content-length"] == str(len(payload))
    assert calls, "os.sendfile was not used"


def test_a_bad_client_does_not_disturb_the_others(running_loop):
    server = running_loop.serve(App)
    good = http.client.HTTPConnection(server.host, server.port, timeout=10)
    good.request("GET", "/")
    assert good.getresponse().read() == b"hello GET / "
    with connect(server) as bad:
        bad.sendall(b"NONSENSE\r\n\r\n")
        assert recv_all(bad).startswith(b"HTTP/1.1 400 ")
    good.request("GET", "/again")
    assert good.getresponse().read() == b"hello GET /again "
    good.close()


# -- the access log -----------------------------------------------------------------------

ACCESS_TIME = r"\[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\]"


def test_access_log_one_common_log_format_line_per_request(caplog):
    with caplog.at_level(logging.INFO, logger="evloop.access"):
        harness = HandlerHarness(App)
        harness.feed(get("/a?x=1") + b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
        harness.feed(get("/stream") + get("/nope\x22", ""))
    lines = [record.getMessage() for record in caplog.records if record.name == "evloop.access"]
    assert len(lines) == 4, lines
    assert re.fullmatch(r"127\.0\.0\.1 - - " + ACCESS_TIME + r' "GET /a\?x=1 HTTP/1\.1" 200 16', lines[0])
    assert lines[1].endswith('"POST /echo HTTP/1.1" 200 2')
    # A streamed body's size is not known when the line is written.
    assert lines[2].endswith('"GET /stream HTTP/1.1" 200 -')
    # The client's bytes cannot forge a line: quotes are escaped.
    assert lines[3].endswith('"GET /nope\\" HTTP/1.1" 200 17'), lines[3]


def test_access_log_configurable_and_off(caplog):
    from evloop.protocols.http_access import AccessLog

    class Combined(App):
        access_log = AccessLog(AccessLog.COMBINED)

    class Quiet(App):
        access_log = None

    with caplog.at_level(logging.INFO, logger="evloop.access"):
        HandlerHarness(Combined).feed(get("/", "Referer: http://x/\r\nUser-Agent: probe/1\r\n"))
        HandlerHarness(Quiet).feed(get("/quiet"))
        HandlerHarness(App).feed(b"GET / HTTP/1.1\r\n\r\n")  # no Host: refused, logged
    lines = [record.getMessage() for record in caplog.records if record.name == "evloop.access"]
    assert len(lines) == 2, lines
    assert lines[0].endswith('"GET / HTTP/1.1" 200 12 "http://x/" "probe/1"')
    # A request refused before its head was read is logged too, as "-".
    assert lines[1].endswith('"-" 400 16 "-" "-"') or lines[1].endswith('"-" 400 16'), lines[1]
