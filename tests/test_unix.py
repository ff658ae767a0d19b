"""Unix stream servers: the TCP handler classes over a path, and the care
the socket file needs (stale ones replaced, live ones and other files left
alone, removed on close only by the process and bind that made it)."""

import errno
import logging
import os
import socket
import stat
import sys

import pytest
from evloop.protocols import LengthSepBody, LengthSepEcho

from evloop import ClientHandler, EventLoop, UnixDatagramServer, UnixServer
from tests.conftest import recv_all, recv_exactly


def frame(body):
    return b"%d\n" % len(body) + body


def connect_unix(path):
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.settimeout(10)
        client.connect(path)
    except BaseException:
        client.close()
        raise
    return client


def serve(running_loop, server, handler_class):
    running_loop.call(running_loop.loop.add_server, server, handler_class)
    return server


def leave_stale_file(path, kind=socket.SOCK_STREAM):
    """What a server killed with SIGKILL leaves: a socket file nobody binds."""
    dead = socket.socket(socket.AF_UNIX, kind)
    dead.bind(str(path))
    if kind == socket.SOCK_STREAM:
        dead.listen(1)
    dead.close()
    assert stat.S_ISSOCK(os.stat(path).st_mode)


class RecipeStyle(ClientHandler):
    """The recipe's own way, byte for byte as over TCP."""

    def request_complete(self):
        head, _, body = bytes(self.incoming).partition(b"\n")
        return bool(_) and len(body) == int(head)

    def make_response(self):
        return [bytes(self.incoming).partition(b"\n")[2][::-1]]


def test_unix_stream_serves_the_tcp_handler_classes(running_loop, tmp_path):
    echo = serve(running_loop, UnixServer(tmp_path / "echo.sock"), LengthSepEcho)
    body = serve(running_loop, UnixServer(str(tmp_path / "body.sock")), LengthSepBody)
    recipe = serve(running_loop, UnixServer(str(tmp_path / "recipe.sock")), RecipeStyle)
    assert echo.path == str(tmp_path / "echo.sock") and echo.port is None
    data = b"".join(frame(b"request %d" % n) for n in range(50))
    with connect_unix(echo.path) as client:
        client.sendall(data)
        assert recv_exactly(client, len(data)) == data
    with connect_unix(body.path) as client:
        client.sendall(b"5\nhel")
        client.sendall(b"lo")
        assert recv_all(client) == b"hello"
    with connect_unix(recipe.path) as client:
        client.sendall(b"3\nabc")
        assert recv_all(client) == b"cba"


def test_the_socket_file_goes_when_the_server_or_its_loop_closes(running_loop, tmp_path):
    one = serve(running_loop, UnixServer(tmp_path / "one.sock"), LengthSepEcho)
    two = serve(running_loop, UnixServer(tmp_path / "two.sock"), LengthSepEcho)
    running_loop.call(running_loop.loop.remove_server, one)
    assert not os.path.exists(one.path) and os.path.exists(two.path)
    with pytest.raises(OSError):
        connect_unix(one.path)
    running_loop.stop()  # closes the loop, and with it every server
    assert not os.path.exists(two.path)


def test_a_stale_socket_file_is_replaced(running_loop, tmp_path):
    path = tmp_path / "stale.sock"
    leave_stale_file(path)
    server = serve(running_loop, UnixServer(path), LengthSepEcho)
    with connect_unix(server.path) as client:
        client.sendall(frame(b"fresh"))
        assert recv_exactly(client, 7) == frame(b"fresh")


def test_a_live_server_is_never_displaced(running_loop, tmp_path):
    path = str(tmp_path / "live.sock")
    live = serve(running_loop, UnixServer(path), LengthSepEcho)
    for second in (lambda: UnixServer(path), lambda: UnixDatagramServer(path)):
        with pytest.raises(OSError) as refused:
            second()
        assert refused.value.errno == errno.EADDRINUSE and path in str(refused.value)
    with connect_unix(path) as client:  # still the first server, still answering
        client.sendall(frame(b"still"))
        assert recv_exactly(client, 7) == frame(b"still")
    assert running_loop.call(lambda: live.closed) is False


def test_a_live_datagram_socket_is_never_displaced_either(tmp_path):
    path = str(tmp_path / "dgram.sock")
    with UnixDatagramServer(path):
        for second in (lambda: UnixDatagramServer(path), lambda: UnixServer(path)):
            with pytest.raises(OSError) as refused:
                second()
            assert refused.value.errno == errno.EADDRINUSE
    leave_stale_file(path, socket.SOCK_DGRAM)
    with UnixDatagramServer(path) as fresh:
        assert os.path.exists(fresh.path)
    assert not os.path.exists(path)


def test_a_file_that_is_not_a_socket_is_left_alone(tmp_path):
    path = tmp_path / "precious.txt"
    path.write_text("do not delete")
    for kind in (UnixServer, UnixDatagramServer):
        with pytest.raises(FileExistsError):
            kind(path)
    assert path.read_text() == "do not delete"


def test_close_leaves_a_file_that_another_server_has_since_bound(tmp_path):
    path = str(tmp_path / "taken-over.sock")
    first = UnixServer(path)
    os.unlink(path)  # someone removed it, and a second server bound the path
    second = UnixServer(path)
    first.server_close()
    assert os.path.exists(path)
    with connect_unix(path):
        pass  # the second server's listener, untouched
    second.server_close()
    assert not os.path.exists(path)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_closing_its_copy_leaves_the_file(tmp_path):
    path = str(tmp_path / "parent.sock")
    server = UnixServer(path)
    pid = os.fork()
    if pid == 0:  # the child: close the inherited server and leave at once
        try:
            server.close()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.path.exists(path)
    with connect_unix(path):
        pass
    server.close()
    assert not os.path.exists(path)


def test_mode_sets_who_may_connect(tmp_path):
    with UnixServer(tmp_path / "private.sock", mode=0o600) as server:
        assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract namespace is Linux's")
def test_abstract_namespace_has_no_file_to_manage(running_loop):
    name = f"\0evloop-test-{os.getpid()}-{id(running_loop)}"
    server = serve(running_loop, UnixServer(name), LengthSepEcho)
    with connect_unix(name) as client:
        client.sendall(frame(b"abstract"))
        assert recv_exactly(client, 10) == frame(b"abstract")
    running_loop.call(server.close)
    with pytest.raises(OSError):
        connect_unix(name)


def test_log_lines_name_the_unix_peer(running_loop, tmp_path, caplog):
    server = serve(running_loop, UnixServer(tmp_path / "peer.sock"), LengthSepEcho)
    with connect_unix(server.path) as client:
        client.sendall(b"x\n")
        assert recv_all(client) == b""
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"unix:{server.path}")
    if hasattr(socket, "SO_PEERCRED"):
        assert f"pid {os.getpid()}" in warnings[0]
    assert "not a decimal number" in warnings[0]


def test_a_bad_path_fails_cleanly_and_leaks_nothing(tmp_path):
    with pytest.raises(OSError):
        UnixServer(tmp_path / "no-such-dir" / "x.sock")
    with pytest.raises(TypeError):
        UnixServer()
    with EventLoop() as loop:
        server = UnixServer(tmp_path / "ok.sock")
        loop.add_server(server, LengthSepEcho)
    assert server.closed and not os.path.exists(tmp_path / "ok.sock")
