"""Real applications on the WSGI server: Flask and Django, each with a
WebSocket route beside it on the same port, talked to with http.client and
the ``websockets`` client library. The applications are wrapped in
``wsgiref.validate.validator`` as well."""

import http.client
import json
import logging
import sys
import threading
import types
import uuid
from wsgiref.validate import validator

import pytest
from evloop.protocols.wsgi import wsgi_handler

from tests.conftest import RunningLoop
from tests.examples import running_example
from tests.test_cli import cli_server, run_cli

pytest.importorskip("h11")
pytest.importorskip("wsproto")
ws_client = pytest.importorskip("websockets.sync.client")

# Every test here runs once with each request parser (tests/conftest.py):
# the WSGI server behaves the same on h11 and on httptools.
pytestmark = pytest.mark.usefixtures("http_parser")

from evloop.protocols.websocket import WebSocketHandler  # noqa: E402

STREAM_GATE = threading.Event()


def lines():
    yield b"line 0\n"
    STREAM_GATE.wait(10)
    for i in range(1, 100):
        yield b"line %d\n" % i


class Upper(WebSocketHandler):
    def received_message(self, message):
        self.send(message.upper() if isinstance(message, str) else message)


@pytest.fixture
def running():
    holder = RunningLoop().start()
    yield holder
    holder.stop()


def multipart(fields, files):
    """A multipart/form-data body (RFC 7578) and its Content-Type."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    for name, (filename, data) in files.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def exercise(server, error_logger, caplog):
    """The same checks for either framework's application."""
    connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
    connection.request("GET", "/hello?name=evloop")
    response = connection.getresponse()
    assert (response.status, response.read()) == (200, b"Hello, evloop!")

    # The first line arrives while the view's generator still waits for us.
    connection.request("GET", "/stream")
    response = connection.getresponse()
    assert response.getheader("Transfer-Encoding") == "chunked"
    assert response.read(7) == b"line 0\n"
    STREAM_GATE.set()
    assert response.read() == b"".join(b"line %d\n" % i for i in range(1, 100))
    STREAM_GATE.clear()

    upload = bytes(range(256)) * 4096  # 1 MiB, every byte value
    body, content_type = multipart({"title": "a file"}, {"file": ("data.bin", upload)})
    connection.request("POST", "/upload", body=body, headers={"Content-Type": content_type})
    response = connection.getresponse()
    assert (response.status, response.read()) == (200, b"a file: data.bin, %d bytes" % len(upload))

    connection.request("GET", "/nope")
    response = connection.getresponse()
    assert response.status == 404
    response.read()

    caplog.clear()
    with caplog.at_level(logging.ERROR):
        connection.request("GET", "/boom")
        response = connection.getresponse()
        assert response.status == 500
        response.read()
    records = [r for r in caplog.records if r.name.startswith(error_logger) and r.exc_info]
    assert records and records[0].exc_info[0] is ZeroDivisionError

    # The WebSocket route on the same port, and HTTP again after it.
    with ws_client.connect(f"ws://{server.host}:{server.port}/ws", open_timeout=10) as websocket:
        websocket.send("shout")
        assert websocket.recv(timeout=10) == "SHOUT"
        websocket.send(b"\x00\x01")
        assert websocket.recv(timeout=10) == b"\x00\x01"
    connection.request("GET", "/hello?name=again")
    assert connection.getresponse().read() == b"Hello, again!"


# -- Flask ---------------------------------------------------------------------


def make_flask_app():
    flask = pytest.importorskip("flask")
    app = flask.Flask("evloop_flask_test")

    @app.route("/hello")
    def hello():
        return f"Hello, {flask.request.args['name']}!"

    @app.route("/stream")
    def stream():
        return flask.Response(lines())

    @app.route("/upload", methods=["POST"])
    def upload():
        file = flask.request.files["file"]
        data = file.read()
        return f"{flask.request.form['title']}: {file.filename}, {len(data)} bytes"

    @app.route("/boom")
    def boom():
        return 1 // 0

    return app


def test_flask_application(running, caplog):
    app = make_flask_app()
    server = running.serve(wsgi_handler(validator(app), websocket={"/ws": Upper}, threads=4))
    exercise(server, "evloop_flask_test", caplog)


# -- Django --------------------------------------------------------------------


def make_django_app():
    pytest.importorskip("django")
    import django
    from django.conf import settings

    urls = types.ModuleType("evloop_django_urls")
    sys.modules["evloop_django_urls"] = urls
    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="not secret: a test",
            ALLOWED_HOSTS=["*"],
            ROOT_URLCONF="evloop_django_urls",
            MIDDLEWARE=[],
            INSTALLED_APPS=[],
            LOGGING_CONFIG=None,  # django.request records reach the root logger as they are
            DATA_UPLOAD_MAX_MEMORY_SIZE=None,
        )
        django.setup()
    from django.http import HttpResponse, StreamingHttpResponse
    from django.urls import path
    from django.views.decorators.csrf import csrf_exempt

    def hello(request):
        return HttpResponse(f"Hello, {request.GET['name']}!")

    def stream(request):
        return StreamingHttpResponse(lines())

    @csrf_exempt
    def upload(request):
        file = request.FILES["file"]
        data = file.read()
        return HttpResponse(f"{request.POST['title']}: {file.name}, {len(data)} bytes")

    def boom(request):
        return 1 // 0

    urls.urlpatterns = [
        path("hello", hello),
        path("stream", stream),
        path("upload", upload),
        path("boom", boom),
    ]
    from django.core.wsgi import get_wsgi_application

    return get_wsgi_application()


def test_django_application(running, caplog):
    app = make_django_app()
    server = running.serve(wsgi_handler(validator(app), websocket={"/ws": Upper}, threads=4))
    exercise(server, "django.request", caplog)


# -- the example and the command line -------------------------------------------


def check_flask_example(host, port):
    connection = http.client.HTTPConnection(host, port, timeout=10)
    connection.request("GET", "/")
    assert connection.getresponse().read() == b"Hello from Flask on evloop!\n"
    connection.request("GET", "/count?upto=3")
    assert connection.getresponse().read() == b"1\n2\n3\n"
    body, content_type = multipart({"who": "me"}, {"a": ("a.txt", b"12345")})
    connection.request("POST", "/upload", body=body, headers={"Content-Type": content_type})
    assert json.loads(connection.getresponse().read()) == {"files": {"a": 5}, "fields": {"who": "me"}}
    with ws_client.connect(f"ws://{host}:{port}/echo", open_timeout=10) as websocket:
        websocket.send("ping?")
        assert websocket.recv(timeout=10) == "ping?"


def test_the_example_serves_flask_and_a_websocket():
    pytest.importorskip("flask")
    with running_example("wsgi_app.py", "--host", "127.0.0.1", "--threads", "2") as (host, port, _):
        check_flask_example(host, port)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_wsgi_from_the_command_line(workers):
    pytest.importorskip("flask")
    with cli_server(
        "--wsgi",
        "examples/wsgi_app.py:app",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--threads",
        "2",
        "--workers",
        workers,
        "--websocket",
        "/echo=evloop.protocols.websocket:EchoWebSocket",
    ) as (process, host, port):
        check_flask_example(host, port)
        process.terminate()  # SIGTERM: a graceful stop
        assert process.wait(20) == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--wsgi", "no_such_module:app"], "evloop: error: module not found: no_such_module"),
        (["--wsgi", "examples/wsgi_app.py:app", "x:Y"], "evloop: error: give MODULE:HANDLER or --wsgi"),
        (
            ["--wsgi", "examples/wsgi_app.py:app", "--websocket", "echo"],
            "evloop: error: expected --websocket",
        ),
        (["--wsgi", "examples/wsgi_app.py:app", "--threads", "0"], "evloop: error: --threads must be"),
        ([], "evloop: error: give MODULE:HANDLER, or --wsgi MODULE:APP"),
    ],
)
def test_wsgi_command_line_mistakes_are_one_clear_line(args, message):
    pytest.importorskip("flask")
    result = run_cli("serve", *args)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(message)
