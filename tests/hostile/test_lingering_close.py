"""A refused client that is still sending must still read the refusal.

Closing a socket with the peer's bytes unread makes the kernel answer with
a RST, which can destroy the error reply before the client reads it. The
engine closes a refused connection with a lingering close (RFC 9112 section
9.6): it shuts its side, then reads and drops what the client sends until
the client ends its stream or a bounded time passes.
"""

import socket
import threading

import pytest
from evloop.protocols.http import HTTPHandler

from tests.conftest import HTTP_PARSERS, RunningLoop

UPLOAD = 4 * 1024 * 1024  # far past any buffer: the client is still sending when refused


class Hello(HTTPHandler):
    routes = {"/": lambda request: "hello"}


@pytest.fixture(params=HTTP_PARSERS)
def server(request):
    pytest.importorskip(request.param)
    handler = type(f"Hello_{request.param}", (Hello,), {"http_parser": request.param})
    holder = RunningLoop().start()
    yield holder.serve(handler)
    holder.stop()


def upload_then_read(address, head, body_size):
    """Send ``head`` and ``body_size`` more bytes from a thread while this
    thread reads; return (what was read, the sender's error or None)."""
    with socket.create_connection(address, timeout=30) as sock:
        failure = []

        def send():
            try:
                sock.sendall(head)
                chunk = b"a" * 65536
                for _ in range(body_size // len(chunk)):
                    sock.sendall(chunk)
                sock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                failure.append(exc)

        sender = threading.Thread(target=send)
        sender.start()
        received = b""
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                received += data
        except ConnectionResetError:
            received += b"<reset>"
        sender.join(30)
        return received, (failure[0] if failure else None)


def test_a_head_over_the_limit_gets_its_431_while_the_client_is_still_sending(server):
    # A header line that never ends: refused once past the head limit.
    received, _error = upload_then_read(
        (server.host, server.port), b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: ", UPLOAD
    )
    assert received.startswith(b"HTTP/1.1 431 "), received[:200]
    assert b"<reset>" not in received


def test_a_body_over_the_limit_gets_its_413_while_the_client_is_still_sending(server):
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % UPLOAD
    received, _error = upload_then_read((server.host, server.port), head, UPLOAD)
    assert received.startswith(b"HTTP/1.1 413 "), received[:200]
    assert b"<reset>" not in received
