"""`python -m evloop`: help, version, clear one-line errors, serving, stats."""

import contextlib
import http.client
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest

from evloop import DatagramHandler, __version__
from tests.conftest import recv_exactly
from tests.examples import ROOT


class Shout(DatagramHandler):
    """Served over UDP by test_unix_and_udp_from_the_command_line."""

    def handle_datagram(self, data, address):
        return data.upper()


def run_cli(*args, timeout=30, **options):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "evloop", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
        **options,
    )


def test_no_arguments_prints_help_with_a_working_example():
    result = run_cli()
    assert result.returncode == 0
    assert "python -m evloop serve evloop.protocols:LengthSepEcho --port 8000" in result.stdout


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"evloop {__version__}"


# Without h11 (as after a plain `pip install .`): the examples must name the extra.
WITHOUT_H11 = (
    "import runpy, sys; sys.modules['h11'] = None; sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)
SERVE = ["-m", "evloop", "serve"]
ECHO = [*SERVE, "evloop.protocols:LengthSepEcho", "--port", "0"]

# Every mistake a newcomer makes in the first minutes: (python arguments,
# what the one line says). {busy} is a port another socket holds.
BAD_INVOCATIONS = {
    "module not found": (
        [*SERVE, "no_such_module:Handler"],
        "evloop: error: module not found: no_such_module",
    ),
    "no such class": (
        [*SERVE, "evloop.protocols:NoSuchHandler"],
        "evloop: error: module 'evloop.protocols' has no attribute 'NoSuchHandler'",
    ),
    "no such file": ([*SERVE, "missing/file.py:Handler"], "evloop: error: no such file: missing/file.py"),
    "no class named": ([*SERVE, "protocols"], "evloop: error: expected MODULE:HANDLER, got 'protocols'"),
    "not a handler": ([*SERVE, "json:JSONDecoder"], "json:JSONDecoder is not a ClientHandler subclass"),
    "not a class": ([*SERVE, "json:dumps"], "json:dumps is not a class"),
    "datagram handler on TCP": ([*SERVE, "tests.test_cli:Shout"], "(serve it with --udp)"),
    "stream handler on UDP": ([*ECHO, "--udp"], "--udp serves a DatagramHandler subclass"),
    "port out of range": ([*SERVE, "evloop.protocols:LengthSepEcho", "--port", "99999"], "port 99999 is out"),
    "port not a number": ([*SERVE, "evloop.protocols:LengthSepEcho", "--port", "http"], "not a port number"),
    "negative stats": ([*ECHO, "--stats", "-1"], "--stats: must be a number of seconds above 0"),
    "negative timeout": ([*ECHO, "--idle-timeout", "-1"], "idle_timeout must be a number of seconds"),
    "workers with unix": ([*ECHO, "--workers", "2", "--unix", "x.sock"], "--workers serves plain TCP"),
    "half of tls": ([*ECHO, "--tls-cert", "x.pem"], "--tls-cert and --tls-key go together"),
    "missing handler": (SERVE, "give MODULE:HANDLER, or --wsgi MODULE:APP"),
    "unknown option": ([*ECHO, "--verbose"], "unrecognized arguments: --verbose"),
    "busy port": (
        [*SERVE, "evloop.protocols:LengthSepEcho", "--host", "127.0.0.1", "--port", "{busy}"],
        "evloop: error: 127.0.0.1:{busy} is already in use",
    ),
    **{
        f"busy port: {script}": (
            [f"examples/{script}", "--host", "127.0.0.1", "--port", "{busy}", *extra],
            "cannot listen on 127.0.0.1:{busy}",
        )
        for script, extra in [
            ("asyncio_bridge.py", []),
            ("echo_lengthsep.py", []),
            ("json_server.py", []),
            ("miniredis.py", []),
            ("request_server.py", []),
            ("socketserver_style.py", []),
            ("tcp_proxy.py", ["--target", "localhost:1"]),
            ("websocket_chat.py", []),
            ("websocket_echo.py", []),
        ]
    },
    "websocket_echo.py without h11": (
        ["-c", WITHOUT_H11, "examples/websocket_echo.py"],
        "websocket_echo.py: error: h11 is missing: pip install 'evloop-server[websocket]'",
    ),
    "websocket_chat.py without h11": (
        ["-c", WITHOUT_H11, "examples/websocket_chat.py"],
        "websocket_chat.py: error: h11 is missing: pip install 'evloop-server[websocket]'",
    ),
    "tk_embed.py without a display": (["examples/tk_embed.py", "--port", "0"], "cannot open a window"),
}


@pytest.fixture(scope="module")
def busy_port():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


@pytest.mark.parametrize("name", list(BAD_INVOCATIONS))
def test_every_bad_invocation_is_one_line_and_exit_status_2(name, busy_port):
    arguments, message = BAD_INVOCATIONS[name]
    if "tk_embed" in name:
        pytest.importorskip("tkinter")
    arguments = [argument.format(busy=busy_port) for argument in arguments]
    env = {key: value for key, value in os.environ.items() if key != "DISPLAY"}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, *arguments], capture_output=True, text=True, timeout=30, env=env, cwd=ROOT
    )
    assert (result.returncode, result.stderr.count("\n")) == (2, 1), result.stderr
    assert message.format(busy=busy_port) in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"),
    reason="needs root and setpriv to drop the capability to bind low ports",
)
def test_permission_denied_is_one_clear_line():
    # Root without CAP_NET_BIND_SERVICE may not bind port 80: the error a
    # user without privileges meets.
    result = subprocess.run(
        [
            "setpriv",
            "--bounding-set=-net_bind_service",
            "--inh-caps=-net_bind_service",
            sys.executable,
            "-m",
            "evloop",
            "serve",
            "evloop.protocols:LengthSepEcho",
            "--port",
            "80",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        cwd="/",
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "evloop: error: permission denied binding localhost:80 (ports below 1024 need privileges)"
    )


@contextlib.contextmanager
def cli_server(*args, listening=r"listening on (\S+):(\d+)"):
    """Run ``python -m evloop serve *args``; yield (process, host, port) once
    it says where it listens (host and port are None for a Unix socket)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "evloop", "serve", *args], stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    try:
        for line in process.stderr:
            found = re.search(listening, line)
            if found:
                break
        else:
            raise AssertionError("the server did not start")
        groups = found.groups()
        yield process, (groups[0] if groups else None), (int(groups[1]) if groups else None)
    finally:
        process.kill()
        process.wait()
        process.stderr.close()


def test_serve_answers_and_reports_stats():
    with cli_server("evloop.protocols:LengthSepEcho", "--port", "0", "--stats", "0.05") as (
        process,
        host,
        port,
    ):
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(b"5\nhello" * 10)
            assert recv_exactly(sock, 70) == b"5\nhello" * 10
            for line in process.stderr:
                stats = re.search(r"connections=(\d+) requests/s=(\d+) in=\S+ out=\S+ lag=[\d.]+ms", line)
                if stats and int(stats.group(2)) > 0:
                    assert int(stats.group(1)) == 1
                    break
        process.terminate()  # SIGTERM: a clean stop
        assert process.wait(10) == 0
        assert "stopped" in process.stderr.read()


def test_serve_a_handler_from_a_file():
    with cli_server("examples/echo_lengthsep.py:UpperBody", "--port", "0") as (_, host, port):
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(b"2\nhi")
            assert recv_exactly(sock, 2) == b"HI"


def test_workers_share_the_port_and_stop_on_sigterm():
    with cli_server("evloop.protocols:LengthSepEcho", "--port", "0", "--workers", "2") as (
        process,
        host,
        port,
    ):
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(b"2\nhi")
            assert recv_exactly(sock, 4) == b"2\nhi"
        process.terminate()
        assert process.wait(20) == 0
    with socket.socket() as probe:  # the port is free again
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


def test_timeouts_from_the_command_line_close_idle_clients():
    with cli_server("evloop.protocols:LengthSepEcho", "--port", "0", "--idle-timeout", "0.2") as (
        process,
        host,
        port,
    ):
        with socket.create_connection((host, port), timeout=10) as sock:
            assert sock.recv(10) == b""  # closed by the server's idle timeout
        assert any("idle" in line and "timeout" in line for line in process.stderr)


def test_tls_from_the_command_line(tmp_path):
    import ssl

    from tests.certs import make_tls_files

    files = make_tls_files(tmp_path)
    options = ["--tls-cert", str(files.server_cert), "--tls-key", str(files.server_key)]
    with cli_server("evloop.protocols:LengthSepEcho", "--port", "0", *options) as (_, host, port):
        context = ssl.create_default_context(cafile=str(files.ca))
        with socket.create_connection((host, port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as sock:
                sock.sendall(b"3\ntls")
                assert recv_exactly(sock, 5) == b"3\ntls"


def test_unix_and_udp_from_the_command_line(tmp_path):
    path = str(tmp_path / "echo.sock")
    with cli_server(
        "evloop.protocols:LengthSepEcho", "--unix", path, listening=f"listening on {re.escape(path)}"
    ):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(path)
            sock.sendall(b"4\nunix")
            assert recv_exactly(sock, 6) == b"4\nunix"
    with cli_server("tests.test_cli:Shout", "--port", "0", "--udp") as (_, host, port):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(10)
            sock.sendto(b"datagram", (host, port))
            assert sock.recvfrom(100)[0] == b"DATAGRAM"


CLF = r'127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] "GET /nowhere HTTP/1\.1" 404 14'


@pytest.mark.parametrize(
    "options, logged",
    [((), True), (("--no-access-log",), False), (("--http-parser", "h11"), True)],
)
def test_http_access_log_on_by_default_and_off_with_a_flag(options, logged):
    pytest.importorskip("h11")
    with cli_server("examples/websocket_chat.py:ChatServer", "--port", "0", *options) as (
        process,
        host,
        port,
    ):
        client = http.client.HTTPConnection(host, port, timeout=10)
        client.request("GET", "/nowhere")
        assert client.getresponse().status == 404
        client.close()
        # The line is written before the response is sent: it is in stderr now.
        process.terminate()
        assert process.wait(10) == 0
        output = process.stderr.read()
    assert bool(re.search(r"^" + CLF + "$", output, re.MULTILINE)) is logged, output
