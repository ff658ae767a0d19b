"""nginx's stream module with ``proxy_protocol on`` (a version 1 line) in
front of an evloop server on 127.0.0.1: the handler sees the client's
address, 127.0.0.6 and its port, which only the header can tell it. Skipped,
saying why, where nginx or its stream module is missing (Debian: nginx-light
and libnginx-mod-stream)."""

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from evloop import ClientHandler, ProxyProtocol
from tests.conftest import RunningLoop

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
STREAM_MODULE = next(
    (
        path
        for path in (
            Path("/usr/lib/nginx/modules/ngx_stream_module.so"),
            Path("/usr/lib64/nginx/modules/ngx_stream_module.so"),
        )
        if path.exists()
    ),
    None,
)
pytestmark = pytest.mark.skipif(
    NGINX is None or STREAM_MODULE is None,
    reason="nginx with its stream module is not installed (apt-get install nginx-light libnginx-mod-stream)",
)

CLIENT_HOST = "127.0.0.6"


class Tell(ClientHandler):
    close_when_done = False

    def data_received(self, data):
        header = self.proxy_header
        host, port = self.client_address[:2]
        self.send(f"{host}:{port} v{header.version} {header.command} {header.destination[1]}\n".encode())


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


CONFIG = """\
load_module {module};
daemon off;
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log info;
events {{ worker_connections 64; }}
stream {{
    server {{
        listen 127.0.0.1:{front};
        proxy_pass 127.0.0.1:{backend};
        proxy_protocol on;
    }}
}}
"""


@pytest.fixture(scope="module")
def behind_nginx(tmp_path_factory):
    directory = tmp_path_factory.mktemp("nginx")
    running = RunningLoop().start()
    server = running.serve(Tell, proxy_protocol=ProxyProtocol(trusted=["127.0.0.1"]))
    front = free_port()
    config = directory / "nginx.conf"
    config.write_text(
        CONFIG.format(module=STREAM_MODULE, directory=directory, front=front, backend=server.port)
    )
    process = subprocess.Popen(
        [NGINX, "-p", str(directory), "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:  # until nginx listens
            assert process.poll() is None, f"nginx exited: {process.stdout.read()}"
            try:
                socket.create_connection(("127.0.0.1", front), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not listen"
                time.sleep(0.05)  # polling a port nginx has not opened yet
        yield front
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        running.stop()


def test_nginx_proxy_protocol_names_the_client(behind_nginx):
    for _ in range(3):
        with socket.socket() as sock:
            sock.settimeout(10)
            sock.bind((CLIENT_HOST, 0))
            sock.connect(("127.0.0.1", behind_nginx))
            sock.sendall(b"who?\n")
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = sock.recv(100)
                assert chunk, f"closed after {reply!r}"
                reply += chunk
            assert reply.decode() == f"{CLIENT_HOST}:{sock.getsockname()[1]} v1 PROXY {behind_nginx}\n"
