"""Real applications on the WSGI server: Flask and Django, each with a
WebSocket route beside it on the same port, talked to with http.client and
the ``websockets`` client library. The applications are wrapped in
``wsgiref.validate.validator`` as well."""

import http.client
import logging
import sys
import types
import uuid
from wsgiref.validate import validator

import pytest

from evloop.protocols.wsgi import wsgi_handler
from tests.conftest import RunningLoop

pytest.importorskip("h11")
pytest.importorskip("wsproto")
ws_client = pytest.importorskip("websockets.sync.client")

from evloop.protocols.websocket import WebSocketHandler  # noqa: E402


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
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
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

    connection.request("GET", "/stream")
    response = connection.getresponse()
    assert response.getheader("Transfer-Encoding") == "chunked"
    assert response.read() == b"".join(b"line %d\n" % i for i in range(100))

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
        return flask.Response(b"line %d\n" % i for i in range(100))

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
        return StreamingHttpResponse(b"line %d\n" % i for i in range(100))

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
