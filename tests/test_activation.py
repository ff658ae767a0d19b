"""systemd socket activation (evloop.activation, ``serve --systemd``),
started the way systemd starts a service: the test binds the sockets, and a
small exec shim puts them on descriptors 3, 4, 5, sets LISTEN_FDS,
LISTEN_FDNAMES and LISTEN_PID (its own pid, which exec keeps) and execs
the server; then the test talks to it over TCP, a Unix socket and UDP.
``systemd-socket-activate`` itself drives one more test where installed."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from tests.examples import ROOT

WAIT = 20

# argv: the names joined by ":", the descriptors to pass, "--", the command.
SHIM = textwrap.dedent("""
    import fcntl, os, sys
    names, rest = sys.argv[1], sys.argv[2:]
    split = rest.index("--")
    fds, command = [int(fd) for fd in rest[:split]], rest[split + 1:]
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]  # out of the way of 3, 4, ...
    for fd in fds:
        os.close(fd)
    for offset, fd in enumerate(high):
        os.dup2(fd, 3 + offset)  # inheritable
        os.close(fd)
    os.environ.update(LISTEN_FDS=str(len(fds)), LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES=names)
    os.execvp(command[0], command)
""")

UDP_MODULE = """\
from evloop import DatagramHandler


class Echo(DatagramHandler):
    def handle_datagram(self, data, address):
        return b"udp:" + data
"""


def activated(names, sockets, command, path="", **extra_env):
    """Start ``command`` as systemd would, with ``sockets`` from fd 3 on."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), path]), **extra_env)
    fds = [sock.fileno() for sock in sockets]
    return subprocess.Popen(
        [sys.executable, "-c", SHIM, ":".join(names), *map(str, fds), "--", *command],
        pass_fds=fds,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def stop(process):
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate(timeout=WAIT)
    return output


def echo_over(family, address, payload=b"hello"):
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(WAIT)
        sock.connect(address)
        sock.sendall(b"%d\n%s" % (len(payload), payload))
        wanted = b"%d\n%s" % (len(payload), payload)
        got = b""
        while len(got) < len(wanted):
            chunk = sock.recv(4096)
            if not chunk:
                break
            got += chunk
        return got


def test_serve_systemd_answers_on_tcp_unix_and_udp_sockets_it_did_not_bind(tmp_path):
    (tmp_path / "udpecho.py").write_text(UDP_MODULE)
    tcp = socket.create_server(("127.0.0.1", 0))
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(tmp_path / "s.sock"))
    unix.listen()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    command = [
        sys.executable, "-m", "evloop", "serve", "evloop.protocols:LengthSepEcho",
        "--systemd", "--systemd-socket", "dgram=udpecho:Echo",
    ]  # fmt: skip
    with tcp, unix, udp:
        process = activated(["web", "local", "dgram"], [tcp, unix, udp], command, path=str(tmp_path))
        tcp_address, udp_address = tcp.getsockname(), udp.getsockname()
    # The server is the only holder now; the sockets were listening all along,
    # so no wait for it to start: the kernel queues until it accepts.
    try:
        assert echo_over(socket.AF_INET, tcp_address) == b"5\nhello"
        assert echo_over(socket.AF_UNIX, str(tmp_path / "s.sock")) == b"5\nhello"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(WAIT)
            client.sendto(b"ping", udp_address)
            assert client.recvfrom(100) == (b"udp:ping", udp_address)
    finally:
        output = stop(process)
    assert process.returncode == 0, output
    assert output.count("listening on") == 3, output
    # The socket file is systemd's: the server leaves it in place.
    assert (tmp_path / "s.sock").exists()


PROBE = textwrap.dedent("""
    import fcntl, json, os, socket
    from evloop.activation import listen_sockets, systemd_servers
    keep = os.environ.get("KEEP") == "1"
    pairs = listen_sockets(unset_environment=not keep)
    print(json.dumps({
        "names": [name for name, _ in pairs],
        "kinds": [[s.family.name, s.type.name] for _, s in pairs],
        "cloexec": [bool(fcntl.fcntl(s.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC) for _, s in pairs],
        "left": sorted(k for k in os.environ if k.startswith("LISTEN_")),
        "servers": {n: [type(x).__name__ for x in g] for n, g in systemd_servers(pairs).items()},
    }))
""")


def probe(names, sockets, **env):
    """Run PROBE activated with ``sockets``; what it saw."""
    process = activated(names, sockets, [sys.executable, "-c", PROBE], **env)
    output, _ = process.communicate(timeout=WAIT)
    assert process.returncode == 0, output
    return json.loads(output.strip().splitlines()[-1])


def test_listen_sockets_names_kinds_cloexec_and_the_environment(tmp_path):
    tcp = socket.create_server(("127.0.0.1", 0))
    unix_dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    unix_dgram.bind(str(tmp_path / "d.sock"))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with tcp, unix_dgram, udp:
        seen = probe(["web", "log", ""], [tcp, unix_dgram, udp])
        kept = probe(["a", "b", "c"], [tcp, unix_dgram, udp], KEEP="1")
    assert seen["names"] == ["web", "log", "unknown"]  # an empty name is "unknown", as systemd says
    assert seen["kinds"] == [["AF_INET", "SOCK_STREAM"], ["AF_UNIX", "SOCK_DGRAM"], ["AF_INET", "SOCK_DGRAM"]]
    assert seen["cloexec"] == [True, True, True]
    assert seen["left"] == []  # unset, so a child does not take them
    assert seen["servers"] == {
        "web": ["Server"],
        "log": ["UnixDatagramServer"],
        "unknown": ["DatagramServer"],
    }
    assert kept["left"] == ["LISTEN_FDNAMES", "LISTEN_FDS", "LISTEN_PID"]


def test_sockets_meant_for_another_pid_are_not_taken(monkeypatch):
    from evloop.activation import listen_fds

    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    assert listen_fds() == []
    assert "LISTEN_FDS" not in os.environ
    monkeypatch.setenv("LISTEN_FDS", "two")
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    with pytest.raises(ValueError, match="malformed LISTEN_FDS"):
        listen_fds()
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    assert listen_fds() == []  # not activated


def test_serve_systemd_without_sockets_is_one_clear_line():
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "-m", "evloop", "serve", "evloop.protocols:LengthSepEcho", "--systemd"],
        capture_output=True,
        text=True,
        env=env,
        timeout=WAIT,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "evloop: error: --systemd: no sockets were passed (LISTEN_FDS and LISTEN_PID name no socket for us)"
    )


def echo_on_one_activated_socket(*options):
    """``serve LengthSepEcho --systemd *options`` started as systemd would,
    on one TCP socket named "web": the process and the socket's address."""
    serve = [sys.executable, "-m", "evloop", "serve", "evloop.protocols:LengthSepEcho"]
    command = [*serve, "--systemd", *options]
    with socket.create_server(("127.0.0.1", 0)) as tcp:
        return activated(["web"], [tcp], command), tcp.getsockname()


def test_systemd_in_one_process_reads_proxy_headers_on_its_stream_sockets():
    process, address = echo_on_one_activated_socket("--proxy-protocol", "127.0.0.1/32")
    try:
        with socket.create_connection(address, timeout=WAIT) as sock:
            sock.sendall(b"PROXY TCP4 192.0.2.7 192.0.2.1 41000 80\r\n5\nhello")
            got = b""
            while len(got) < 7 and (chunk := sock.recv(4096)):
                got += chunk
        assert got == b"5\nhello"
        # Without a header the connection is refused, with a log line naming the peer.
        assert echo_over(socket.AF_INET, address) == b""
    finally:
        output = stop(process)
    assert process.returncode == 0, output
    assert "bad PROXY protocol header" in output, output


def test_systemd_with_workers_shares_the_one_socket_and_reloads(tmp_path):
    process, address = echo_on_one_activated_socket("--workers", "2")
    try:
        assert echo_over(socket.AF_INET, address) == b"5\nhello"
        process.send_signal(signal.SIGHUP)
        for line in process.stdout:
            if "reload: generation 2" in line:
                break
        assert echo_over(socket.AF_INET, address) == b"5\nhello"
    finally:
        output = stop(process)
    assert process.returncode == 0, output


@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate is not installed"
)
def test_started_by_systemd_socket_activate():
    with socket.create_server(("127.0.0.1", 0)) as probe_socket:
        port = probe_socket.getsockname()[1]  # free a moment ago; the tool binds it
    command = [
        "systemd-socket-activate", "-l", f"127.0.0.1:{port}", "--fdname=web",
        "-E", f"PYTHONPATH={ROOT}",
        sys.executable, "-m", "evloop", "serve", "evloop.protocols:LengthSepEcho", "--systemd",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        # The tool listens first and starts the server on the first connection.
        line = process.stdout.readline()
        assert "Listening on" in line, line
        assert echo_over(socket.AF_INET, ("127.0.0.1", port)) == b"5\nhello"
    finally:
        output = stop(process)
    assert "listening on 127.0.0.1:%d" % port in output, output
