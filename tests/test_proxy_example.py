"""examples/tcp_proxy.py: a LengthSepEcho session through the proxy, end to
end, with the echo server and the proxy each run as a user would run them."""

import importlib.util
import os
import queue
import select
import socket
import subprocess
import sys
import threading

import pytest

from evloop import Server
from tests.conftest import recv_all, recv_exactly
from tests.examples import ROOT, running_example

WAIT = 10


def frame(body):
    return b"%d\n" % len(body) + body


@pytest.fixture
def echo_target():
    with running_example("echo_lengthsep.py", "--persistent") as (host, port, _):
        yield host, port


@pytest.fixture
def proxy(echo_target):
    host, port = echo_target
    with running_example("tcp_proxy.py", "--target", f"{host}:{port}") as running:
        yield running


def test_a_lengthsep_echo_session_goes_through_the_proxy(proxy):
    host, port, _ = proxy
    with socket.create_connection((host, port), timeout=WAIT) as sock:
        # Request by request...
        for body in (b"hello", b"", b"x\ny\n"):
            sock.sendall(frame(body))
            assert recv_exactly(sock, len(frame(body))) == frame(body)
        # ...pipelined, split anywhere...
        burst = b"".join(frame(b"%d" % i) for i in range(200))
        for cut in range(0, len(burst), 7):
            sock.sendall(burst[cut : cut + 7])
        assert recv_exactly(sock, len(burst)) == burst
        # ...megabytes both ways at once...
        big = frame(bytes(range(256)) * 4000)
        sender = threading.Thread(target=sock.sendall, args=(big * 6,))
        sender.start()
        assert recv_exactly(sock, len(big) * 6) == big * 6
        sender.join(WAIT)
        # ...and a half-close: the last reply still arrives, then the end.
        sock.sendall(frame(b"last"))
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == frame(b"last")


def test_many_clients_at_once_each_get_their_own_session(proxy):
    host, port, _ = proxy
    clients = [socket.create_connection((host, port), timeout=WAIT) for _ in range(25)]
    try:
        for number, sock in enumerate(clients):
            sock.sendall(frame(b"client %d" % number))
        for number, sock in enumerate(clients):
            expected = frame(b"client %d" % number)
            assert recv_exactly(sock, len(expected)) == expected
    finally:
        for sock in clients:
            sock.close()


def test_an_unreachable_target_closes_that_client_and_the_proxy_serves_on(echo_target):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))  # bound, never listening: refused
    dead_port = holder.getsockname()[1]
    with (
        holder,
        running_example("tcp_proxy.py", "--target", f"127.0.0.1:{dead_port}") as (host, port, process),
    ):
        with socket.create_connection((host, port), timeout=WAIT) as sock:
            sock.sendall(frame(b"anyone?"))
            assert recv_all(sock) == b""
        with socket.create_connection((host, port), timeout=WAIT) as sock:
            assert recv_all(sock) == b""
        assert process.poll() is None  # still serving
        process.terminate()
        log = process.stdout.read()
    assert f"could not connect to 127.0.0.1:{dead_port}" in log
    assert "Traceback" not in log


def test_a_bad_target_is_refused_with_usage():
    environment = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "tcp_proxy.py"), "--port", "0", "--target", "nowhere"],
        capture_output=True,
        text=True,
        timeout=WAIT,
        env=environment,
    )
    assert result.returncode == 2 and "HOST:PORT" in result.stderr


def load_proxy_module():
    spec = importlib.util.spec_from_file_location("tcp_proxy", ROOT / "examples" / "tcp_proxy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_client_faster_than_the_target_is_paused_not_buffered(running_loop):
    """The target reads nothing for a while: the proxy stops reading from the
    client instead of holding the megabytes, and resumes once the target reads."""
    proxy_module = load_proxy_module()
    # Fixed, small kernel buffers on every hop (a set size also turns off
    # autotuning), so what the kernels hold is far below the payload.
    small = 64 * 1024

    class SmallBuffers(proxy_module.ProxyClient):
        def setup(self):
            super().setup()
            self.partner.client_socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, small)

    target = socket.socket()
    target.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, small)
    target.bind(("127.0.0.1", 0))
    target.listen()
    server = Server("127.0.0.1", 0)
    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, small)
    server.target = target.getsockname()
    server.connect_timeout = WAIT
    running_loop.call(running_loop.loop.add_server, server, SmallBuffers)
    payload = bytes(range(256)) * (40 * 1024)  # 10 MiB
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, small)
    client.settimeout(WAIT)
    client.connect((server.host, server.port))
    with target, client:
        upstream_end, _ = target.accept()
        with upstream_end:
            client.setblocking(False)
            sent = 0
            # Push until the client's own socket is full: the proxy stopped reading.
            while sent < len(payload):
                if not select.select([], [client], [], 0.5)[1]:
                    break
                try:
                    sent += client.send(payload[sent : sent + 65536])
                except BlockingIOError:
                    continue
            # Kernel buffers (a few times 64 KiB) plus the proxy's high water
            # and one read: far from the 10 MiB a proxy without it would take.
            assert sent < 2 * 1024 * 1024, f"the proxy took {sent} bytes: no backpressure"

            def upstream_backlog():
                relays = [h for h in running_loop.loop.handlers if isinstance(h, proxy_module.Relay)]
                return max(h.buffered_output for h in relays), len(relays)

            backlog, relays = running_loop.call(upstream_backlog)
            assert relays == 2
            assert backlog <= proxy_module.Relay.write_high_water + proxy_module.Relay.recv_size
            # The target reads: everything arrives, in order.
            received = queue.Queue()

            def read_all():
                data = bytearray()
                while len(data) < len(payload):
                    chunk = upstream_end.recv(1 << 20)
                    if not chunk:
                        break
                    data += chunk
                received.put(bytes(data))

            upstream_end.settimeout(WAIT)
            reader = threading.Thread(target=read_all)
            reader.start()
            client.setblocking(True)
            client.settimeout(WAIT)
            client.sendall(payload[sent:])
            reader.join(WAIT)
            assert received.get(timeout=WAIT) == payload
