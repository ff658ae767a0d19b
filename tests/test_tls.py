"""TLS: Server(..., ssl=context) over TCP and Unix stream sockets, talked to
by Python's ssl client and by ``openssl s_client``; client certificates; the
handshake timeout; bad clients closed alone. Certificates are made at test
time (tests/certs.py)."""

import logging
import os
import selectors
import shutil
import socket
import ssl
import subprocess

import pytest
from evloop.protocols import LengthSepBody, LengthSepEcho

from evloop import ClientHandler
from evloop.limits import Limits
from evloop.tls import make_client_context, make_server_context, peer_certificate
from tests.certs import make_tls_files
from tests.conftest import recv_all, recv_exactly
from tests.waiting import wait_on_loop

OPENSSL = shutil.which("openssl")


def frame(body):
    return b"%d\n" % len(body) + body


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def server_context(tls_files):
    return make_server_context(str(tls_files.server_cert), str(tls_files.server_key))


@pytest.fixture
def client_context(tls_files):
    return make_client_context(str(tls_files.ca))


def tls_connect(server, context, host="127.0.0.1", **wrap_options):
    raw = socket.create_connection((host, server.port), timeout=10)
    try:
        return context.wrap_socket(raw, server_hostname="localhost", **wrap_options)
    except BaseException:
        raw.close()
        raise


def recv_exactly_tls(sock, count):
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(min(count - len(data), 1 << 20))
        if not chunk:
            raise EOFError(f"closed after {len(data)} of {count} bytes")
        data += chunk
    return bytes(data)


# -- the same handlers, over TLS -------------------------------------------------


def test_echo_over_tls_with_pipelining(running_loop, server_context, client_context):
    server = running_loop.serve(LengthSepEcho, ssl=server_context)
    data = b"".join(frame(b"request %d" % i) for i in range(100))
    with tls_connect(server, client_context) as sock:
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
        sock.sendall(data)
        assert recv_exactly_tls(sock, len(data)) == data


def exchange_tls(sock, data, expected):
    """Send ``data`` and read ``expected`` bytes on one TLS socket from one
    thread (an SSLSocket must not be read and written from two threads at
    once), interleaving as the socket allows."""
    sock.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    view, sent, received = memoryview(data), 0, bytearray()
    try:
        while len(received) < expected:
            if not selector.select(10):
                raise TimeoutError(f"stuck: sent {sent}, received {len(received)}")
            if sent < len(data):
                try:
                    sent += sock.send(view[sent : sent + 65536])
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
            else:
                selector.modify(sock, selectors.EVENT_READ)
            while True:
                try:
                    chunk = sock.recv(1 << 20)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    break
                if not chunk:
                    raise EOFError(f"closed after {len(received)} of {expected} bytes")
                received += chunk
    finally:
        selector.close()
        sock.setblocking(True)
    return bytes(received)


def test_large_replies_cross_partial_tls_writes_intact(running_loop, server_context, client_context):
    # 8 MB each way: the server's SSL writes block part-way (SSLWantWriteError)
    # and are retried with the same bytes; reading pauses at the high mark.
    server = running_loop.serve(LengthSepEcho, ssl=server_context)
    bodies = [os.urandom(1000000) for _ in range(8)]
    data = b"".join(frame(body) for body in bodies)
    with tls_connect(server, client_context) as sock:
        assert exchange_tls(sock, data, len(data)) == data


def test_the_server_ends_the_stream_with_close_notify(running_loop, server_context, client_context):
    server = running_loop.serve(LengthSepBody, ssl=server_context)
    # suppress_ragged_eofs=False: an end of stream without close_notify
    # would raise SSLEOFError here instead of reading as b"".
    with tls_connect(server, client_context, suppress_ragged_eofs=False) as sock:
        sock.sendall(frame(b"hello"))
        assert recv_all(sock) == b"hello"


def test_tls_over_a_unix_stream_socket(running_loop, server_context, client_context, tmp_path):
    from evloop import UnixServer

    path = str(tmp_path / "tls.sock")
    server = UnixServer(path, ssl=server_context, limits=Limits(idle_timeout=30))
    running_loop.call(running_loop.loop.add_server, server, LengthSepEcho)
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.settimeout(10)
    raw.connect(path)
    with client_context.wrap_socket(raw, server_hostname="localhost") as sock:
        sock.sendall(frame(b"over unix"))
        assert recv_exactly_tls(sock, 11) == frame(b"over unix")
    assert server.limits.idle_timeout == 30


def test_a_plain_server_and_a_tls_server_on_one_loop(running_loop, server_context, client_context):
    plain = running_loop.serve(LengthSepEcho)
    secure = running_loop.serve(LengthSepEcho, ssl=server_context)
    with (
        socket.create_connection((plain.host, plain.port), timeout=10) as a,
        tls_connect(secure, client_context) as b,
    ):
        a.sendall(frame(b"plain"))
        b.sendall(frame(b"secure"))
        assert recv_exactly(a, 7) == frame(b"plain")
        assert recv_exactly_tls(b, 8) == frame(b"secure")


# -- client certificates -----------------------------------------------------------


class WhoAreYou(ClientHandler):
    """Answers with the common name of the client's verified certificate."""

    def make_response(self):
        cert = peer_certificate(self)
        names = dict(pair[0] for pair in cert["subject"]) if cert else {}
        return names.get("commonName", "anonymous").encode() + b"\n"


def test_client_certificates_required(running_loop, tls_files, caplog):
    context = make_server_context(
        str(tls_files.server_cert),
        str(tls_files.server_key),
        cafile=str(tls_files.ca),
        client_certs="required",
    )
    server = running_loop.serve(WhoAreYou, ssl=context)
    with_cert = make_client_context(
        str(tls_files.ca), certfile=str(tls_files.client_cert), keyfile=str(tls_files.client_key)
    )
    with tls_connect(server, with_cert) as sock:
        sock.sendall(b"?")
        assert recv_all(sock) == tls_files.client_name.encode() + b"\n"
    # Without one the handshake fails (TLS 1.3 reports it on the first read).
    with pytest.raises((ssl.SSLError, ConnectionResetError, EOFError)):
        with tls_connect(server, make_client_context(str(tls_files.ca))) as sock:
            sock.sendall(b"?")
            if not sock.recv(100):
                raise EOFError("closed without an answer")

    # ... which is logged with the client's address, and only that client
    # goes. The client may see the alert before the server has logged it.
    def failures():
        return [r.getMessage() for r in caplog.records if "TLS handshake failed" in r.getMessage()]

    assert wait_on_loop(running_loop, failures)
    assert "127.0.0.1:" in failures()[0]
    with tls_connect(server, with_cert) as sock:
        sock.sendall(b"?")
        assert recv_all(sock) == tls_files.client_name.encode() + b"\n"


def test_client_certificates_optional(running_loop, tls_files):
    context = make_server_context(
        str(tls_files.server_cert),
        str(tls_files.server_key),
        cafile=str(tls_files.ca),
        client_certs="optional",
    )
    server = running_loop.serve(WhoAreYou, ssl=context)
    with tls_connect(server, make_client_context(str(tls_files.ca))) as sock:
        sock.sendall(b"?")
        assert recv_all(sock) == b"anonymous\n"


def test_make_server_context_refuses_nonsense(tls_files):
    with pytest.raises(ValueError):
        make_server_context(str(tls_files.server_cert), str(tls_files.server_key), client_certs="sometimes")
    with pytest.raises(ValueError):
        make_server_context(
            str(tls_files.server_cert), str(tls_files.server_key), client_certs="required"
        )  # no CA to check them against


# -- bad clients ---------------------------------------------------------------------


def test_a_silent_client_is_cut_by_the_handshake_timeout(
    running_loop, server_context, client_context, caplog
):
    server = running_loop.serve(LengthSepEcho, ssl=server_context, limits=Limits(handshake_timeout=0.3))
    with socket.create_connection((server.host, server.port), timeout=10) as silent:
        with tls_connect(server, client_context) as other:  # others are served meanwhile
            other.sendall(frame(b"ok"))
            assert recv_exactly_tls(other, 4) == frame(b"ok")
        assert recv_all(silent) == b""
    assert any("TLS handshake timeout (0.3s) fired" in r.getMessage() for r in caplog.records)
    assert running_loop.call(lambda: server.connections) == 0


def test_plaintext_at_a_tls_port_is_refused_alone(running_loop, server_context, client_context, caplog):
    server = running_loop.serve(LengthSepEcho, ssl=server_context)
    with socket.create_connection((server.host, server.port), timeout=10) as plain:
        plain.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            recv_all(plain)  # an alert or nothing, then the close
        except ConnectionResetError:
            pass
    with tls_connect(server, client_context) as sock:
        sock.sendall(frame(b"fine"))
        assert recv_exactly_tls(sock, 6) == frame(b"fine")
    warnings = [r for r in caplog.records if "TLS handshake failed" in r.getMessage()]
    assert warnings and warnings[0].levelno == logging.WARNING


def test_a_client_that_leaves_mid_handshake_is_forgotten(running_loop, server_context, caplog):
    server = running_loop.serve(LengthSepEcho, ssl=server_context)
    for _ in range(20):
        with socket.create_connection((server.host, server.port), timeout=10) as sock:
            sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello begins
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(b"\x16\x03\x01\x00\x05hello")  # junk record: refused, closed
        try:
            recv_all(sock)
        except ConnectionResetError:
            pass
    # Every one of them is closed and uncounted, and nothing was logged as an error.
    assert wait_on_loop(running_loop, lambda: server.connections == 0)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- openssl s_client, a TLS client that is not Python's ------------------------------


def s_client(port, tls_files, request, *options):
    """Run ``openssl s_client`` against 127.0.0.1:``port``, verifying the
    server against the test CA; send ``request`` and return the result."""
    command = [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost"]
    command += ["-CAfile", str(tls_files.ca), "-verify_return_error", "-quiet", *options]
    return subprocess.run(command, input=request, capture_output=True, timeout=30)


@pytest.mark.skipif(OPENSSL is None, reason="no openssl command")
def test_openssl_s_client(running_loop, server_context, tls_files):
    server = running_loop.serve(LengthSepBody, ssl=server_context)
    result = s_client(server.port, tls_files, frame(b"hello from openssl"))
    assert result.stdout == b"hello from openssl", result.stderr


@pytest.mark.skipif(OPENSSL is None, reason="no openssl command")
def test_openssl_s_client_with_a_client_certificate(running_loop, tls_files):
    context = make_server_context(
        str(tls_files.server_cert),
        str(tls_files.server_key),
        cafile=str(tls_files.ca),
        client_certs="required",
    )
    server = running_loop.serve(WhoAreYou, ssl=context)
    certificate = ["-cert", str(tls_files.client_cert), "-key", str(tls_files.client_key)]
    result = s_client(server.port, tls_files, b"?", *certificate)
    assert result.stdout == tls_files.client_name.encode() + b"\n", result.stderr


# -- the blocking clients speak TLS too ------------------------------------------------


def test_json_client_over_tls(running_loop, server_context, client_context):
    from evloop.protocols import JsonClient, JsonEcho

    server = running_loop.serve(JsonEcho, ssl=server_context)
    with JsonClient("localhost", server.port, timeout=10, ssl=client_context) as client:
        for message in ({"a": [1, 2, 3]}, "x" * 100000, [None], 3.5):
            client.send_obj(message)
            assert client.read_obj() == message
        assert client.socket.version() in ("TLSv1.2", "TLSv1.3")


def test_json_client_refuses_a_server_it_cannot_verify(running_loop, server_context, tls_files):
    from evloop.protocols import JsonClient, JsonEcho
    from evloop.protocols.jsonclient import JsonConnectionError

    server = running_loop.serve(JsonEcho, ssl=server_context)
    wrong_ca = make_client_context(str(tls_files.other_ca))
    with pytest.raises(JsonConnectionError):
        JsonClient("localhost", server.port, timeout=10, ssl=wrong_ca).connect()


def test_do_request_over_tls(running_loop, server_context, client_context):
    from evloop.protocols import RequestHandler, do_request

    server = running_loop.serve(RequestHandler, ssl=server_context)
    assert do_request(f"localhost:{server.port}", "hello", 10, ssl=client_context) == "Requested: hello"
    with pytest.raises(ssl.SSLError):
        do_request(f"localhost:{server.port}", "hello", 10, ssl=ssl.create_default_context())
