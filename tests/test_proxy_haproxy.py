"""A real HAProxy (Debian's ``haproxy``) in front of an evloop server, on
127.0.0.1: ``send-proxy`` (version 1) and ``send-proxy-v2`` with CRC32c and
a unique id, and a TLS frontend whose ``send-proxy-v2-ssl-cn`` passes the
ALPN, the SNI and the TLS details on. The client connects from 127.0.0.5, an
address only the header can tell the server; HAProxy's health checks
(``check-send-proxy``) come as headers too (LOCAL in version 2) and must
keep the server up. Skipped, saying why, where haproxy is not installed
(``.ci/run`` installs it)."""

import contextlib
import shutil
import socket
import ssl
import subprocess
import threading
import time

import pytest

from evloop import ClientHandler, ProxyProtocol
from tests.certs import make_tls_files
from tests.conftest import RunningLoop
from tests.waiting import wait_on_loop

HAPROXY = shutil.which("haproxy") or (
    "/usr/sbin/haproxy" if shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin") else None
)
pytestmark = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (apt-get install haproxy)")

CLIENT_HOST = "127.0.0.5"  # any 127/8 address is the loopback on Linux


class Tell(ClientHandler):
    """Replies to a line with who the client is, as the header says."""

    close_when_done = False
    headers = []
    lock = threading.Lock()

    def setup(self):
        with self.lock:
            self.headers.append(self.proxy_header)

    def data_received(self, data):
        header = self.proxy_header
        host, port = self.client_address[:2]
        fields = [
            f"{host}:{port}",
            f"v{header.version}",
            header.command,
            str(header.alpn),
            str(header.authority),
            str(header.ssl_version),
            str(header.ssl_cipher),
            "id" if header.unique_id else "-",
        ]
        self.send((" ".join(fields) + "\n").encode())


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


CONFIG = """\
global
    maxconn 200
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend v1
    bind 127.0.0.1:{v1}
    default_backend v1
backend v1
    server evloop 127.0.0.1:{backend} send-proxy check inter 100ms rise 1 fall 1 check-send-proxy
frontend v2
    bind 127.0.0.1:{v2}
    unique-id-format %{{+X}}o%ci:%cp_%fi:%fp_%Ts_%rt:%pid
    default_backend v2
backend v2
    server evloop 127.0.0.1:{backend} send-proxy-v2 proxy-v2-options crc32c,unique-id \
check inter 100ms rise 1 fall 1 check-send-proxy
frontend tls
    bind 127.0.0.1:{tls} ssl crt {pem} alpn h2,http/1.1
    default_backend tls
backend tls
    server evloop 127.0.0.1:{backend} send-proxy-v2-ssl-cn \
proxy-v2-options crc32c,authority,ssl-cipher,cert-sig,cert-key
"""


@contextlib.contextmanager
def haproxy(config_path, ports):
    process = subprocess.Popen(
        [HAPROXY, "-db", "-f", str(config_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 20
        for port in ports:  # wait until every frontend listens
            while True:
                assert process.poll() is None, f"haproxy exited: {process.stdout.read()}"
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "haproxy did not listen"
                    time.sleep(0.05)  # polling a port haproxy has not opened yet
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def behind_haproxy(tmp_path_factory):
    directory = tmp_path_factory.mktemp("haproxy")
    files = make_tls_files(directory)
    pem = directory / "haproxy.pem"
    pem.write_bytes(files.server_cert.read_bytes() + files.server_key.read_bytes())
    running = RunningLoop().start()
    server = running.serve(Tell, proxy_protocol=ProxyProtocol(trusted=["127.0.0.1"]))
    ports = {"v1": free_port(), "v2": free_port(), "tls": free_port()}
    config = directory / "haproxy.cfg"
    config.write_text(CONFIG.format(backend=server.port, pem=pem, **ports))
    try:
        with haproxy(config, ports.values()):
            yield running, server, ports, files
    finally:
        running.stop()


def ask(port, wrap=None):
    raw = socket.socket()
    raw.settimeout(10)
    raw.bind((CLIENT_HOST, 0))
    raw.connect(("127.0.0.1", port))
    source_port = raw.getsockname()[1]
    sock = wrap(raw) if wrap else raw
    with sock:
        sock.sendall(b"who?\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(1000)
            assert chunk, f"closed after {reply!r}"
            reply += chunk
        return source_port, reply.decode().split()


def test_send_proxy_v1_names_the_client(behind_haproxy):
    _, _, ports, _ = behind_haproxy
    for _ in range(3):
        source_port, reply = ask(ports["v1"])
        assert reply[:3] == [f"{CLIENT_HOST}:{source_port}", "v1", "PROXY"]


def test_send_proxy_v2_with_crc32c_and_a_unique_id(behind_haproxy):
    _, _, ports, _ = behind_haproxy
    source_port, reply = ask(ports["v2"])
    assert reply[:3] == [f"{CLIENT_HOST}:{source_port}", "v2", "PROXY"]
    assert reply[-1] == "id"


def test_a_tls_frontend_passes_alpn_sni_and_the_tls_details(behind_haproxy):
    _, _, ports, files = behind_haproxy
    context = ssl.create_default_context(cafile=str(files.ca))
    context.set_alpn_protocols(["h2"])
    source_port, reply = ask(ports["tls"], lambda raw: context.wrap_socket(raw, server_hostname="localhost"))
    client, version, command, alpn, authority, ssl_version, cipher, _ = reply
    assert (client, version, command) == (f"{CLIENT_HOST}:{source_port}", "v2", "PROXY")
    assert (alpn, authority) == ("b'h2'", "localhost")
    assert ssl_version.startswith("TLSv1.") and cipher != "None"


def test_health_checks_arrive_as_headers_and_keep_the_server_up(behind_haproxy):
    running, server, ports, _ = behind_haproxy

    def local_checks():
        with Tell.lock:
            return [h for h in Tell.headers if h.command == "LOCAL"]

    assert wait_on_loop(running, lambda: len(local_checks()) >= 3, timeout=20)
    assert all(h.version == 2 and h.source is None for h in local_checks())
    # With the checks passing, every request still goes through.
    for _ in range(5):
        assert ask(ports["v2"])[1][1] == "v2"
    assert running.call(lambda: server.proxy_reception.buffered) == 0


def test_many_clients_through_haproxy_at_once(behind_haproxy):
    _, _, ports, _ = behind_haproxy
    results, errors = [], []

    def client():
        try:
            source_port, reply = ask(ports["v2"])
            results.append(reply[0] == f"{CLIENT_HOST}:{source_port}")
        except Exception as exc:  # handed to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors and results == [True] * 30
