"""socketserver parity: every transport on one loop at once, serve_forever /
shutdown / server_close / with on every server type, the example and the
docs page."""

import os
import re
import signal
import socket
import threading

import pytest
from evloop.protocols import LengthSepEcho

from evloop import (
    ClientHandler,
    DatagramHandler,
    DatagramServer,
    EventLoop,
    LoopThread,
    Server,
    UnixDatagramServer,
    UnixServer,
)
from tests.conftest import recv_all, recv_exactly
from tests.examples import running_example


def frame(body):
    return b"%d\n" % len(body) + body


class Upper(DatagramHandler):
    def handle_datagram(self, data, address):
        return data.upper()


def stream_client(server):
    """A connected client for a TCP or a Unix stream server."""
    if isinstance(server, UnixServer):
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(10)
        client.connect(server.path)
        return client
    return socket.create_connection((server.host, server.port), timeout=10)


def datagram_client(server, tmp_path):
    """A client socket able to get replies from a UDP or Unix datagram server."""
    if isinstance(server, UnixDatagramServer):
        client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        client.bind(str(tmp_path / f"client-{id(client)}.sock"))
    else:
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(10)
    return client


def test_tcp_udp_unix_stream_and_unix_datagram_served_by_one_loop_at_once(selector_name, tmp_path):
    threads = set()

    class Echo(LengthSepEcho):
        def make_response(self):
            threads.add(threading.get_ident())
            return super().make_response()

    class Shout(Upper):
        def handle_datagram(self, data, address):
            threads.add(threading.get_ident())
            return super().handle_datagram(data, address)

    background = LoopThread(selector=None if selector_name == "default" else selector_name)
    tcp = background.add_server(Server("127.0.0.1", 0), Echo)
    udp = background.add_server(DatagramServer("127.0.0.1", 0), Shout)
    unix = background.add_server(UnixServer(tmp_path / "stream.sock"), Echo)
    unix_dgram = background.add_server(UnixDatagramServer(tmp_path / "dgram.sock"), Shout)
    background.start()
    try:
        assert background.loop.servers == [tcp, udp, unix, unix_dgram]
        tcp_client, unix_client = stream_client(tcp), stream_client(unix)
        udp_client, unix_dgram_client = datagram_client(udp, tmp_path), datagram_client(unix_dgram, tmp_path)
        with tcp_client, unix_client, udp_client, unix_dgram_client:
            # Both stream requests are left half-sent while the datagram
            # servers answer: one loop is serving all four at the same time.
            tcp_client.sendall(b"8\nover ")
            unix_client.sendall(b"9\nover ")
            udp_client.sendto(b"over udp", udp.address)
            unix_dgram_client.sendto(b"over unix dgram", unix_dgram.path)
            assert udp_client.recvfrom(100) == (b"OVER UDP", udp.address)
            assert unix_dgram_client.recvfrom(100) == (b"OVER UNIX DGRAM", unix_dgram.path)
            unix_client.sendall(b"unix")
            tcp_client.sendall(b"tcp")
            assert recv_exactly(unix_client, 11) == frame(b"over unix")
            assert recv_exactly(tcp_client, 10) == frame(b"over tcp")
        assert threads == {background.thread.ident}
    finally:
        background.stop()
        assert background.join(10)
    assert all(server.closed for server in (tcp, udp, unix, unix_dgram))
    assert not os.path.exists(unix.path) and not os.path.exists(unix_dgram.path)


# -- serve_forever / shutdown / server_close / with ------------------------------


def make_server(kind, tmp_path):
    if kind == "tcp":
        return Server("127.0.0.1", 0), LengthSepEcho
    if kind == "unix":
        return UnixServer(tmp_path / "s.sock"), LengthSepEcho
    if kind == "udp":
        return DatagramServer("127.0.0.1", 0), Upper
    return UnixDatagramServer(tmp_path / "d.sock"), Upper


def exchange(server, tmp_path):
    if isinstance(server, (DatagramServer,)):
        with datagram_client(server, tmp_path) as client:
            client.sendto(b"ping", server.server_address)
            return client.recvfrom(100)[0]
    with stream_client(server) as client:
        client.sendall(frame(b"ping"))
        return recv_exactly(client, 6)


@pytest.mark.parametrize("kind", ["tcp", "udp", "unix", "unix-dgram"])
def test_serve_forever_in_a_thread_and_shutdown_from_the_main_thread(kind, tmp_path):
    server, handler_class = make_server(kind, tmp_path)
    with server:
        thread = threading.Thread(target=server.serve_forever, args=(handler_class,))
        thread.start()
        assert exchange(server, tmp_path) in (b"PING", frame(b"ping"))
        assert server.RequestHandlerClass is handler_class
        server.shutdown()
        # shutdown() returned: serve_forever() has returned, or is returning.
        thread.join(10)
        assert not thread.is_alive() and not server.loop.is_running()
    assert server.closed and server.loop.is_closed()
    if kind.startswith("unix"):
        assert not os.path.exists(server.server_address)


def test_shutdown_before_serve_forever_started_is_not_lost():
    with Server("127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, args=(LengthSepEcho,))
        server.shutdown()  # the thread has not even started
        thread.start()
        thread.join(10)
        assert not thread.is_alive()
        # The request was used up: serving again works, and stops again.
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        with stream_client(server) as client:
            client.sendall(frame(b"again"))
            assert recv_exactly(client, 7) == frame(b"again")
        server.shutdown()
        thread.join(10)
        assert not thread.is_alive()


def test_shutdown_from_a_handler_does_not_deadlock(selector_name):
    class StopOnRequest(ClientHandler):
        def make_response(self):
            self.server.shutdown()  # in the serving thread: asks, does not wait
            return b"stopping"

    done = threading.Event()
    with Server("127.0.0.1", 0) as server:

        def serve():
            server.serve_forever(
                StopOnRequest, selector=None if selector_name == "default" else selector_name
            )
            done.set()

        thread = threading.Thread(target=serve)
        thread.start()
        with stream_client(server) as client:
            client.sendall(b"stop")
            assert done.wait(10), "serve_forever() did not return"
        thread.join(10)


def test_shutdown_from_a_signal_handler_in_the_serving_thread():
    previous = None
    with Server("127.0.0.1", 0) as server:

        class SignalSelf(ClientHandler):
            def make_response(self):
                signal.raise_signal(signal.SIGUSR1)  # delivered to this, the main thread
                return b"ok"

        previous = signal.signal(signal.SIGUSR1, lambda signum, frame: server.shutdown())
        try:
            client_done = threading.Event()

            def client():
                with stream_client(server) as sock:
                    sock.sendall(b"go")
                    recv_all(sock)
                client_done.set()

            threading.Thread(target=client).start()
            server.serve_forever(SignalSelf)  # returns once the handler's signal ran
            assert client_done.wait(10)
        finally:
            signal.signal(signal.SIGUSR1, previous)


def test_server_close_from_another_thread_closes_the_listener_not_the_connections():
    with Server("127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, args=(LengthSepEcho,))
        thread.start()
        with stream_client(server) as client:
            client.sendall(frame(b"one"))
            assert recv_exactly(client, 5) == frame(b"one")
            server.server_close()  # hops onto the loop thread, while it serves
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((server.host, server.port), timeout=10)
            client.sendall(frame(b"two"))  # socketserver's contract: only the listener
            assert recv_exactly(client, 5) == frame(b"two")
            server.shutdown()
            thread.join(10)
        assert not server.loop.is_running()
    assert server.loop.is_closed()


def test_leaving_with_closes_the_loop_serve_forever_made_and_its_connections():
    with Server("127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, args=(LengthSepEcho,))
        thread.start()
        client = stream_client(server)
        client.sendall(frame(b"kept"))
        assert recv_exactly(client, 6) == frame(b"kept")
        server.shutdown()
        thread.join(10)
    with client:
        assert client.recv(10) == b""  # closed by server_close()


def test_serve_forever_on_a_server_already_on_a_loop_runs_that_loop():
    with EventLoop() as loop:
        first, second = Server("127.0.0.1", 0), DatagramServer("127.0.0.1", 0)
        loop.add_server(first, LengthSepEcho)
        loop.add_server(second, Upper)
        with pytest.raises(RuntimeError, match="already served"):
            first.serve_forever(Upper)
        thread = threading.Thread(target=first.serve_forever)
        thread.start()
        with datagram_client(second, None) as client:  # the other server is served too
            client.sendto(b"both", second.address)
            assert client.recvfrom(100)[0] == b"BOTH"
        second.shutdown()  # any server of the loop stops the serve_forever() running it
        thread.join(10)
        assert not thread.is_alive()
        first.server_close()
        assert not loop.is_closed()  # not made by serve_forever: the caller's to close
    with Server("127.0.0.1", 0) as unserved, pytest.raises(TypeError, match="handler class"):
        unserved.serve_forever()


def test_keyboard_interrupt_leaves_serve_forever_and_serving_again_works():
    class Interrupts(ClientHandler):
        def data_received(self, data):
            if data == b"^C":
                raise KeyboardInterrupt
            self.send(data)
            self.close_when_sent()

    with Server("127.0.0.1", 0) as server:

        def interrupt():
            with stream_client(server) as client:
                client.sendall(b"^C")

        sender = threading.Thread(target=interrupt)
        sender.start()
        with pytest.raises(KeyboardInterrupt):
            server.serve_forever(Interrupts)
        sender.join(10)
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        with stream_client(server) as client:
            client.sendall(b"still")
            assert recv_all(client) == b"still"
        server.shutdown()
        thread.join(10)


def test_socketserver_names():
    with Server("127.0.0.1", 0) as server:
        assert server.server_address == server.address == ("127.0.0.1", server.port)
        assert server.fileno() == server.socket.fileno()
        assert server.RequestHandlerClass is None


# -- the example and the docs page --------------------------------------------------


def test_socketserver_style_example_serves_tcp_udp_and_unix(tmp_path):
    path = str(tmp_path / "upper.sock")
    with running_example("socketserver_style.py", "--unix", path) as (host, port, process):
        with socket.create_connection((host, port), timeout=10) as tcp:
            tcp.sendall(b"hello\nwor")
            tcp.sendall(b"ld\n")
            assert recv_exactly(tcp, 12) == b"HELLO\nWORLD\n"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(10)
            udp.sendto(b"datagram\n", (host, port))  # UDP on the TCP port's number
            assert udp.recvfrom(100)[0] == b"DATAGRAM\n"
        with socket.socket(socket.AF_UNIX) as unix:
            unix.settimeout(10)
            unix.connect(path)
            unix.sendall(b"unix\n")
            assert recv_exactly(unix, 5) == b"UNIX\n"
        process.terminate()  # SIGTERM: shutdown() from the signal handler
        assert process.wait(10) == 0
        assert "stopped" in process.stdout.read()
    assert not os.path.exists(path)


def test_the_transports_benchmark_runs_on_tiny_settings(capsys):
    from benchmarks.transports_bench import main

    main(["--requests", "20"])
    out = capsys.readouterr().out
    for transport in ("udp", "unix-dgram", "tcp", "unix-stream"):
        assert re.search(rf"^{transport} +\d+ +\d+$", out, re.M), out
    assert re.search(r"stop\(\) -> join\(\) returned: median \d+ us", out)
