"""The WSGI server (evloop.protocols.wsgi) against PEP 3333, on real sockets.

Every application here is wrapped in ``wsgiref.validate.validator``, which
checks both sides of the interface: what the server puts in environ and
how it calls start_response, write and close.
"""

import hashlib
import http.client
import io
import json
import logging
import os
import re
import socket
import sys
import threading
import time
from wsgiref.validate import validator

import pytest
from evloop.protocols.wsgi import wsgi_handler

from tests.conftest import RunningLoop, connect, recv_all

pytest.importorskip("h11")

# Every test here runs once with each request parser (tests/conftest.py):
# the WSGI server behaves the same on h11 and on httptools.
pytestmark = pytest.mark.usefixtures("http_parser")


@pytest.fixture
def running():
    holder = RunningLoop().start()
    yield holder
    holder.stop()


def serve(running, app, validate=True, **options):
    options.setdefault("threads", 4)
    return running.serve(wsgi_handler(validator(app) if validate else app, **options))


def client(server, timeout=10):
    return http.client.HTTPConnection(server.host, server.port, timeout=timeout)


def read_response(sock_file):
    """One response from a blocking socket file: (status, headers, body)."""
    status = int(sock_file.readline().split()[1])
    headers = {}
    while True:
        line = sock_file.readline().decode("latin-1").strip()
        if not line:
            break
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip()
    if "content-length" in headers:
        return status, headers, sock_file.read(int(headers["content-length"]))
    body = b""
    while True:  # chunked
        size = int(sock_file.readline().split(b";")[0], 16)
        if size == 0:
            sock_file.readline()
            return status, headers, body
        body += sock_file.read(size)
        sock_file.readline()


def environ_app(environ, start_response):
    shown = {
        key: value
        for key, value in environ.items()
        if isinstance(value, (str, bool, int, tuple)) and not key.startswith("wsgi.input")
    }
    length = int(environ.get("CONTENT_LENGTH") or 0)
    shown["body"] = environ["wsgi.input"].read(length).decode("latin-1")
    body = json.dumps(shown).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def test_environ_is_complete(running):
    server = serve(running, environ_app)
    with connect(server) as sock:
        sock.sendall(
            b"POST /caf%C3%A9/x%2Fy?a=1&b=%20 HTTP/1.1\r\nHost: example.org\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 5\r\n"
            b"X-Twice: one\r\nX-Twice: two\r\nX_Sneaky: no\r\n\r\nhello"
        )
        status, _, body = read_response(sock.makefile("rb"))
        local_port = sock.getsockname()[1]
    environ = json.loads(body)
    assert status == 200
    assert environ["REQUEST_METHOD"] == "POST"
    assert environ["SCRIPT_NAME"] == ""
    # PEP 3333: the decoded bytes, as latin-1; an encoded slash is a slash.
    assert environ["PATH_INFO"] == "/caf\u00c3\u00a9/x/y"
    assert environ["QUERY_STRING"] == "a=1&b=%20"
    assert environ["CONTENT_TYPE"] == "text/plain"
    assert environ["CONTENT_LENGTH"] == "5"
    assert environ["SERVER_NAME"] == "127.0.0.1"
    assert environ["SERVER_PORT"] == str(server.port)
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert environ["HTTP_HOST"] == "example.org"
    assert environ["HTTP_X_TWICE"] == "one, two"
    assert "HTTP_X_SNEAKY" not in environ
    assert environ["REMOTE_ADDR"] == "127.0.0.1"
    assert environ["REMOTE_PORT"] == str(local_port)
    assert environ["wsgi.version"] == [1, 0]
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["wsgi.multithread"] is True
    assert environ["wsgi.multiprocess"] is False
    assert environ["wsgi.run_once"] is False
    assert environ["body"] == "hello"


def test_script_name_is_split_off(running):
    server = serve(running, environ_app, script_name="/app")
    connection = client(server)
    connection.request("GET", "/app/page")
    environ = json.loads(connection.getresponse().read())
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("/app", "/page")


def test_https_scheme_on_tls(running, tmp_path):
    pytest.importorskip("cryptography")
    from evloop.tls import make_client_context, make_server_context
    from tests.certs import make_tls_files

    files = make_tls_files(tmp_path)
    context = make_server_context(str(files.server_cert), str(files.server_key))
    server = running.serve(wsgi_handler(validator(environ_app), threads=2), ssl=context)
    client_context = make_client_context(cafile=str(files.ca))
    connection = http.client.HTTPSConnection("127.0.0.1", server.port, context=client_context, timeout=10)
    connection.request("GET", "/")
    assert json.loads(connection.getresponse().read())["wsgi.url_scheme"] == "https"


def test_keep_alive_and_pipelining_answer_in_order(running):
    release = threading.Event()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/slow":
            release.wait(10)  # the fast ones after it must still wait their turn
        body = environ["PATH_INFO"].encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]

    server = serve(running, app)
    with connect(server) as sock:
        paths = ["/slow", "/a", "/b", "/c"]
        sock.sendall(b"".join(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode() for path in paths))
        release.set()
        reader = sock.makefile("rb")
        bodies = [read_response(reader)[2] for _ in paths]
    assert bodies == [path.encode() for path in paths]


def test_pipelined_requests_then_end_of_stream_are_all_answered(running):
    release = threading.Event()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/0":
            release.wait(10)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["PATH_INFO"].encode()]

    # Past max_pipelined, reading pauses until the answers catch up.
    server = serve(running, app, max_pipelined=1024)
    with connect(server) as sock:
        count = 200
        sock.sendall(b"".join(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(count)))
        sock.shutdown(socket.SHUT_WR)  # the client says it is done sending
        release.set()
        reply = recv_all(sock)
    replies = io.BytesIO(reply)
    assert [read_response(replies)[2] for _ in range(count)] == [b"/%d" % i for i in range(count)]
    assert replies.read() == b""


def test_whole_body_gets_content_length_a_stream_is_chunked(running):
    head_seen = threading.Event()

    def stream():
        yield b"one "
        head_seen.wait(10)  # the rest is not there when the head goes out
        yield b"two "
        yield b"three"

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        if environ["PATH_INFO"] == "/stream":
            return stream()
        return [b"whole"]

    server = serve(running, app)
    with connect(server) as sock:
        reader = sock.makefile("rb")
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        _, headers, body = read_response(reader)
        assert headers["content-length"] == "5" and body == b"whole"
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reader.peek(1)
        head_seen.set()
        _, headers, body = read_response(reader)
    assert headers.get("transfer-encoding") == "chunked" and "content-length" not in headers
    assert body == b"one two three"


def test_http10_stream_is_close_delimited(running):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter([b"a", b"b"])

    server = serve(running, app)
    with connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        reply = recv_all(sock)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" not in head.lower()
    assert body == b"ab"


def test_head_sends_no_body(running):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "11")])
        return [b"hello world"]

    server = serve(running, app)
    with connect(server) as sock:
        sock.sendall(
            b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        reply = recv_all(sock)
    first, _, rest = reply.partition(b"\r\n\r\n")
    assert b"Content-Length: 11" in first
    assert rest.startswith(b"HTTP/1.1 200") and rest.endswith(b"\r\n\r\nhello world")


def test_a_sleeping_generator_does_not_block_the_loop(running):
    produced_first = threading.Event()
    go_on = threading.Event()
    closed = threading.Event()

    class Slow:
        def __iter__(self):
            yield b"first "
            produced_first.set()
            go_on.wait(10)
            yield b"last"

        def close(self):
            closed.set()

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        if environ["PATH_INFO"] == "/slow":
            return Slow()
        return [b"quick"]

    server = serve(running, app)
    slow = connect(server)
    slow.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    assert produced_first.wait(10)
    slow_reader = slow.makefile("rb")
    assert slow_reader.readline().startswith(b"HTTP/1.1 200")
    # The first piece went out while the generator is still running...
    while slow_reader.readline() != b"\r\n":
        pass
    assert slow_reader.readline() == b"6\r\n" and slow_reader.readline() == b"first \r\n"
    # ...and the loop serves others meanwhile.
    quick = client(server)
    quick.request("GET", "/quick")
    assert quick.getresponse().read() == b"quick"
    go_on.set()
    assert slow_reader.readline() == b"4\r\n"
    assert closed.wait(10)
    slow.close()


def test_input_streams_while_the_application_runs_with_back_pressure(running):
    started = threading.Event()
    seen = {}
    size = 8 * 1024 * 1024

    def app(environ, start_response):
        started.set()
        stream = environ["wsgi.input"]
        digest = hashlib.sha256()
        most = 0
        while True:
            most = max(most, stream.buffered)
            block = stream.read(16 * 1024)
            if not block:
                break
            digest.update(block)
        seen["most"] = most
        body = digest.hexdigest().encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]

    server = serve(running, app, validate=False, input_buffer_size=64 * 1024)
    payload = os.urandom(size)
    with connect(server) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        # The application is called on the head alone: its body is still to come.
        assert started.wait(10)
        sock.sendall(payload)
        _, _, body = read_response(sock.makefile("rb"))
    assert body == hashlib.sha256(payload).hexdigest().encode()
    # Never more than the buffer and one read of the socket held for it.
    assert seen["most"] <= 64 * 1024 + 256 * 1024


def test_chunked_request_body_and_input_methods(running):
    def app(environ, start_response):
        stream = environ["wsgi.input"]
        first = stream.readline()
        rest = list(stream)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [json.dumps([first.decode(), [line.decode() for line in rest]]).encode()]

    server = serve(running, app)
    with connect(server) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"4\r\nab\nc\r\n5\r\nd\nefg\r\n0\r\n\r\n"
        )
        _, _, body = read_response(sock.makefile("rb"))
    assert json.loads(body) == ["ab\n", ["cd\n", "efg"]]


def test_body_over_the_limit_is_refused(running):
    def app(environ, start_response):
        environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"read it"]

    server = serve(running, app, validate=False, max_body_size=1000)
    with connect(server) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n")
        assert recv_all(sock).startswith(b"HTTP/1.1 413 ")
    with connect(server) as sock:  # chunked: found out on the way, the connection is cut
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        sock.sendall(b"800\r\n" + b"x" * 0x800 + b"\r\n")
        reply = recv_all(sock)
    assert b"read it" not in reply


def test_bad_request_gets_400_and_the_server_goes_on(running):
    server = serve(running, environ_app)
    with connect(server) as sock:
        sock.sendall(b"GARBAGE\r\n\r\n")
        assert recv_all(sock).startswith(b"HTTP/1.1 400 ")
    connection = client(server)
    connection.request("GET", "/")
    assert connection.getresponse().status == 200


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"BREW / HTTP/1.1\r\nHost: x\r\n\r\n", 501),
        (b"GET / HTTP/1.2\r\nHost: x\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n", 400),
        (b"GET / HTTP/1.1\nHost: x\n\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431),
    ],
)
def test_refusals_are_the_parsers_shared_rules(running, request_bytes, status):
    """The same statuses whichever parser reads (the module runs once per
    parser), the connection closed after, and the application never called."""
    called = []

    def app(environ, start_response):
        called.append(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    server = serve(running, app)
    with connect(server) as sock:
        sock.sendall(request_bytes)
        reply = recv_all(sock)  # to the end: the server closed
    assert reply.startswith(b"HTTP/1.1 %d " % status), reply[:80]
    assert b"Connection: close" in reply
    assert called == []


def test_write_callable_and_close_is_always_called(running):
    closed = []
    both_closed = threading.Event()

    class Result:
        def __init__(self, pieces, fail=False):
            self.pieces, self.fail = pieces, fail

        def __iter__(self):
            yield from self.pieces
            if self.fail:
                raise RuntimeError("broken in the middle")

        def close(self):
            closed.append(self.pieces)
            if len(closed) == 2:
                both_closed.set()

    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        if environ["PATH_INFO"] == "/write":
            write(b"written ")
            return Result([b"then iterated"])
        return Result([b"partial"], fail=True)

    server = serve(running, app, validate=False)
    connection = client(server)
    connection.request("GET", "/write")
    assert connection.getresponse().read() == b"written then iterated"
    with connect(server) as sock:
        sock.sendall(b"GET /fail HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = recv_all(sock)  # the head was out: the connection is cut
    assert b"partial" in reply and not reply.endswith(b"0\r\n\r\n")
    assert both_closed.wait(10)  # in the worker, maybe just after the connection was cut
    assert closed == [[b"then iterated"], [b"partial"]]


def test_exception_before_the_head_is_a_500_with_the_traceback_logged(running, caplog):
    def app(environ, start_response):
        raise ZeroDivisionError("the application broke")

    server = serve(running, app)
    caplog.set_level(logging.ERROR, logger="evloop.wsgi")
    connection = client(server)
    connection.request("GET", "/x")
    response = connection.getresponse()
    assert response.status == 500 and response.read() == b"500 Internal Server Error\n"
    record = next(r for r in caplog.records if r.name == "evloop.wsgi")
    assert "127.0.0.1" in record.getMessage() and record.exc_info[0] is ZeroDivisionError
    connection.request("GET", "/x")  # the connection is still usable
    assert connection.getresponse().status == 500


def test_exc_info_replaces_a_head_not_sent_and_reraises_after(running):
    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise ValueError("oops")
        except ValueError:
            if environ["PATH_INFO"] == "/late":
                write(b"too late")  # the head goes out
            start_response("503 Busy", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"replaced"]

    server = serve(running, app, validate=False)
    connection = client(server)
    connection.request("GET", "/early")
    response = connection.getresponse()
    assert (response.status, response.read()) == (503, b"replaced")
    with connect(server) as sock:
        sock.sendall(b"GET /late HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = recv_all(sock)
    assert reply.startswith(b"HTTP/1.1 200") and b"too late" in reply and b"replaced" not in reply


def test_start_response_twice_without_exc_info_is_an_error(running):
    def app(environ, start_response):
        start_response("200 OK", [])
        start_response("200 OK", [])
        return [b""]

    server = serve(running, app, validate=False)
    connection = client(server)
    connection.request("GET", "/")
    assert connection.getresponse().status == 500


def test_file_wrapper_goes_out_with_sendfile(running, tmp_path, monkeypatch):
    data = os.urandom(3 * 1024 * 1024 + 7)
    path = tmp_path / "blob"
    path.write_bytes(data)
    calls = []
    real_sendfile = os.sendfile

    def counting_sendfile(*args):
        calls.append(args[0])
        return real_sendfile(*args)

    monkeypatch.setattr(os, "sendfile", counting_sendfile)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](open(path, "rb"), 32 * 1024)

    # validator() wraps the result, hiding the file: it is iterated, the
    # body is the same.
    connection = client(serve(running, app))
    connection.request("GET", "/")
    assert connection.getresponse().read() == data
    assert not calls
    connection = client(serve(running, app, validate=False))
    for _ in range(2):  # and the connection goes on after it
        connection.request("GET", "/")
        response = connection.getresponse()
        assert response.getheader("Content-Length") == str(len(data))
        assert response.read() == data
    assert calls


def test_a_large_stream_is_not_produced_ahead_of_the_client(running):
    produced = [0]
    piece = b"x" * 65536
    count = 1024  # 64 MiB

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream")])

        def body():
            for _ in range(count):
                produced[0] += len(piece)
                yield piece

        return body()

    server = serve(running, app, output_buffer_size=128 * 1024)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(10)
    sock.connect((server.host, server.port))
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    received = 0
    ahead = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += len(chunk)
        ahead = max(ahead, produced[0] - received)
        if received < 8 * 1024 * 1024:
            time.sleep(0.0005)  # a slow reader for the first part, so the server gets ahead if it can
    sock.close()
    assert received > count * len(piece)
    # The channel, the output queue and the kernel's buffers: megabytes, not the whole body.
    assert ahead < 16 * 1024 * 1024


def test_client_gone_mid_stream_closes_the_result(running):
    closed = threading.Event()
    started = threading.Event()

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])

        def forever():
            try:
                started.set()
                while True:
                    yield b"y" * 65536
            finally:
                closed.set()

        return forever()

    server = serve(running, app)
    sock = connect(server)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert started.wait(10)
    sock.recv(1000)
    sock.close()
    assert closed.wait(10)


def test_wsgi_handler_refuses_unknown_options():
    with pytest.raises(TypeError, match="thread"):
        wsgi_handler(environ_app, thread=4)


# -- response framing, without a socket ------------------------------------------


def framer(version_11=True, head=False, keep_alive=True):
    from evloop.protocols.wsgi_framing import ResponseFramer

    return ResponseFramer(version_11, head, keep_alive, b"test")


def test_framing_follows_rfc_9112():
    from evloop.protocols.wsgi_framing import FramingError

    chunked = framer()
    head = chunked.head(200, b"OK", [(b"Content-Type", b"text/plain")], None)
    assert head.startswith(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nDate: ")
    assert head.endswith(b"Server: test\r\nTransfer-Encoding: chunked\r\n\r\n") and chunked.keep_alive
    assert chunked.data(b"abc") + chunked.data(b"") + chunked.end() == b"3\r\nabc\r\n0\r\n\r\n"

    whole = framer()
    assert b"Content-Length: 5\r\n" in whole.head(200, b"OK", [], 5)
    assert whole.data(b"hello") + whole.end() == b"hello"

    declared = framer()
    declared.head(200, b"OK", [(b"Content-Length", b"4")], None)
    with pytest.raises(FramingError, match="more than"):
        declared.data(b"hello")
    short = framer()
    short.head(200, b"OK", [(b"Content-Length", b"4")], None)
    short.data(b"hi")
    with pytest.raises(FramingError, match="short"):
        short.end()

    for status, is_head in ((204, False), (304, False), (200, True)):
        bodiless = framer(head=is_head)
        text = bodiless.head(status, b"X", [(b"Content-Length", b"9")], None)
        assert b"chunked" not in text and bodiless.data(b"ignored") == b"" and bodiless.end() == b""

    old = framer(version_11=False)
    assert old.head(200, b"OK", [], None).endswith(b"Connection: close\r\n\r\n") and not old.keep_alive
    assert old.data(b"raw") == b"raw"

    closing = framer()
    closing.head(200, b"OK", [(b"Connection", b"close")], 0)
    assert not closing.keep_alive
    dropped = framer()
    assert b"gzip" not in dropped.head(200, b"OK", [(b"Transfer-Encoding", b"gzip")], None)


def test_a_header_that_would_split_the_response_is_a_500(running):
    def app(environ, start_response):
        start_response("200 OK", [("X-Evil", "a\r\nSet-Cookie: stolen=1")])
        return [b"never"]

    server = serve(running, app, validate=False)
    connection = client(server)
    connection.request("GET", "/")
    response = connection.getresponse()
    assert response.status == 500 and response.getheader("Set-Cookie") is None


def test_a_graceful_stop_lets_the_response_in_flight_finish(running):
    started = threading.Event()
    go_on = threading.Event()

    def app(environ, start_response):
        started.set()
        go_on.wait(10)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"finished"]

    server = serve(running, app)
    with connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert started.wait(10)
        running.loop.stop(graceful=True, timeout=10)
        # The shutdown has begun once the listener is gone.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection((server.host, server.port), timeout=1).close()
            except OSError:
                break
        else:
            raise AssertionError("the server kept accepting")
        go_on.set()
        reply = recv_all(sock)
    status, _, body = read_response(io.BytesIO(reply))
    assert (status, body) == (200, b"finished")
    running.thread.join(10)
    assert not running.thread.is_alive()


class BlockingCalls:
    """Calls that block until released, for a dispatcher with a limit of 3."""

    def __init__(self):
        self.release = threading.Event()
        self.started = threading.Semaphore(0)
        self.done = []

    def blocking(self, number):
        self.started.release()
        self.release.wait(10)
        self.done.append(number)

    def three_run_two_wait(self):
        """Three of five calls run at once, each in its own thread; the
        other two start once those are released."""
        for _ in range(3):
            assert self.started.acquire(timeout=10)
        assert not self.started.acquire(timeout=0.2)
        self.release.set()
        for _ in range(2):
            assert self.started.acquire(timeout=10)


def test_dispatcher_gives_blocked_calls_more_threads_up_to_its_limit():
    from concurrent.futures import ThreadPoolExecutor

    from evloop.protocols.wsgi_io import TaskDispatcher

    executor = ThreadPoolExecutor(8)
    dispatcher = TaskDispatcher(executor, 3)
    calls = BlockingCalls()
    for number in range(5):
        dispatcher.submit(calls.blocking, number)
    calls.three_run_two_wait()
    executor.shutdown(wait=True)
    assert sorted(calls.done) == [0, 1, 2, 3, 4]
    with pytest.raises(RuntimeError):
        dispatcher.submit(calls.blocking, 5)


def test_dispatcher_on_the_loop_wakes_threads_only_for_blocked_calls(running):
    """With the loop's call_later, calls that merely queue behind a busy
    thread wait for it (one thread serves them all), and calls behind
    blocked threads get more threads, one per stall interval, up to the limit."""
    from concurrent.futures import ThreadPoolExecutor

    from evloop.protocols.wsgi_io import TaskDispatcher

    executor = ThreadPoolExecutor(8)
    quick = TaskDispatcher(executor, 3, running.loop.call_later, stall=5.0)
    threads = []
    all_ran = threading.Semaphore(0)

    def record(number):
        threads.append(threading.get_ident())
        all_ran.release()

    def submit_all(dispatcher, func, count):
        for number in range(count):
            dispatcher.submit(func, number)

    running.call(submit_all, quick, record, 20)
    for _ in range(20):
        assert all_ran.acquire(timeout=10)
    assert len(set(threads)) == 1, "quick calls were handed to more than one thread"

    blocked = TaskDispatcher(executor, 3, running.loop.call_later, stall=0.01)
    calls = BlockingCalls()
    running.call(submit_all, blocked, calls.blocking, 5)
    calls.three_run_two_wait()  # stalled: a thread more per check, up to the limit
    executor.shutdown(wait=True)
    assert sorted(calls.done) == [0, 1, 2, 3, 4]


def test_access_log_one_line_per_response_and_per_refusal(running, caplog):
    from evloop.protocols.http_access import AccessLog

    released = threading.Event()

    def pieces():
        yield b"a"
        released.wait(10)  # the head went out with the first piece alone
        yield b"b"

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/stream":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return pieces()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
        return [b"hello"]

    plain = serve(running, app)
    combined = serve(running, app, access_log=AccessLog(AccessLog.COMBINED))
    quiet = serve(running, app, access_log=None)
    with caplog.at_level(logging.INFO, logger="evloop.access"):
        with connect(plain) as sock:
            sock.sendall(b"GET /a?x=1 HTTP/1.1\r\nHost: x\r\n\r\nGET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
            seen = b""
            while not seen.endswith(b"\r\n1\r\na\r\n"):
                seen += sock.recv(4096)
            released.set()
            sock.sendall(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nGET /q\x22 HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.sendall(b"GET / HTTP/1.1\r\n\r\n")  # no Host: refused
            recv_all(sock)
        with connect(combined) as sock:
            sock.sendall(
                b"GET / HTTP/1.1\r\nHost: x\r\nReferer: http://r/\r\nUser-Agent: probe/1\r\n"
                b"Connection: close\r\n\r\n"
            )
            recv_all(sock)
        with connect(quiet) as sock:
            sock.sendall(b"GET /quiet HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            recv_all(sock)
    lines = [record.getMessage() for record in caplog.records if record.name == "evloop.access"]
    assert len(lines) == 6, lines
    time_field = r"\[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\]"
    assert re.fullmatch(r"127\.0\.0\.1 - - " + time_field + r' "GET /a\?x=1 HTTP/1\.1" 200 5', lines[0])
    assert lines[1].endswith('"GET /stream HTTP/1.1" 200 -')  # chunked: not known ahead
    assert lines[2].endswith('"HEAD /h HTTP/1.1" 200 0')
    assert lines[3].endswith('"GET /q\\" HTTP/1.1" 200 5')  # the client cannot forge a line
    assert lines[4].endswith('"-" 400 16')
    assert lines[5].endswith('"GET / HTTP/1.1" 200 5 "http://r/" "probe/1"')


def test_clients_that_never_read_a_stream_hold_no_thread(running):
    """A streamed response whose client does not read parks once its
    hand-off is full: with both threads' worth of such clients, another
    request is still answered at once, and closing them closes the
    application's iterables (PEP 3333)."""
    closed = threading.Semaphore(0)

    def endless():
        try:
            while True:
                yield b"s" * 65536
        finally:
            closed.release()

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        if environ["PATH_INFO"] == "/stream":
            return endless()
        return [b"hello"]

    server = serve(running, app, validate=False, threads=2, output_buffer_size=64 * 1024)
    stalled = []
    for _ in range(3):  # more than the threads
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((server.host, server.port))
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 200")  # the stream has begun; no more is read
        stalled.append(sock)
    try:
        connection = client(server)
        connection.request("GET", "/hello")
        assert connection.getresponse().read() == b"hello"
        connection.close()
    finally:
        for sock in stalled:
            sock.close()
    for _ in stalled:
        assert closed.acquire(timeout=10), "an iterable was not closed"
