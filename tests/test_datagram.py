"""UDP and Unix datagram servers: real sockets on every selector backend, and
an in-memory datagram socket for what a real one will not do on demand
(a full send buffer, ICMP errors, floods)."""

import collections
import concurrent.futures
import errno
import logging
import os
import socket
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evloop import (
    EVENT_READ,
    EVENT_WRITE,
    DatagramHandler,
    DatagramServer,
    RemoteProtocolError,
    UnixDatagramServer,
    set_offload_executor,
)
from evloop.logs import loop_warnings
from evloop.testing import FakeSocket, ManualLoop


class Upper(DatagramHandler):
    """Answers each datagram in capitals; a few commands test the edges."""

    def setup(self):
        self.seen = []

    def handle_datagram(self, data, address):
        self.seen.append(data)
        if data == b"silence":
            return None
        if data == b"crash":
            raise ValueError("the handler broke")
        if data == b"garbage":
            raise RemoteProtocolError("not a command: b'garbage'", reply=b"ERR unknown command")
        if data == b"pieces":
            return ["one ", b"two ", bytearray(b"three")]
        if data == b"text":
            return "caf\u00e9"
        if data == b"bad reply":
            return 42
        return data.upper()


def serve(running_loop, server, handler_class=Upper):
    running_loop.call(running_loop.loop.add_server, server, handler_class)
    return server


def udp_client(family=socket.AF_INET):
    client = socket.socket(family, socket.SOCK_DGRAM)
    client.settimeout(10)
    return client


def ask(client, data, address):
    client.sendto(data, address)
    reply, _source = client.recvfrom(70000)
    return reply


def ipv6_available():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback here")


# -- UDP over real sockets -----------------------------------------------------


def test_udp_reply_goes_back_to_the_sender(running_loop):
    server = serve(running_loop, DatagramServer("127.0.0.1", 0))
    with udp_client() as one, udp_client() as two:
        one.sendto(b"from one", server.address)
        two.sendto(b"from two", server.address)
        assert one.recvfrom(100) == (b"FROM ONE", server.address)
        assert two.recvfrom(100) == (b"FROM TWO", server.address)


def test_udp_reply_kinds_and_no_reply(running_loop):
    server = serve(running_loop, DatagramServer("127.0.0.1", 0))
    with udp_client() as client:
        # Loopback keeps order, so "silence" answered anything would show up
        # before the next reply.
        client.sendto(b"silence", server.address)
        assert ask(client, b"pieces", server.address) == b"one two three"
        assert ask(client, b"text", server.address) == "caf\u00e9".encode()
        assert ask(client, b"", server.address) == b""


@needs_ipv6
def test_udp_over_ipv6(running_loop):
    server = serve(running_loop, DatagramServer("::1", 0))
    assert server.host == "::1" and server.socket.family == socket.AF_INET6
    with udp_client(socket.AF_INET6) as client:
        assert ask(client, b"six", server.address[:2]) == b"SIX"


@needs_ipv6
def test_udp_on_every_interface_serves_ipv4_and_ipv6(running_loop):
    server = serve(running_loop, DatagramServer("::", 0))
    with udp_client() as four, udp_client(socket.AF_INET6) as six:
        assert ask(four, b"four", ("127.0.0.1", server.port)) == b"FOUR"
        assert ask(six, b"six", ("::1", server.port)) == b"SIX"


def test_handler_errors_are_logged_with_the_sender_and_serving_goes_on(running_loop, caplog):
    server = serve(running_loop, DatagramServer("127.0.0.1", 0))
    with udp_client() as client:
        client.bind(("127.0.0.1", 0))
        me = "127.0.0.1:%d" % client.getsockname()[1]
        client.sendto(b"crash", server.address)
        client.sendto(b"bad reply", server.address)
        assert ask(client, b"garbage", server.address) == b"ERR unknown command"
        assert ask(client, b"still here", server.address) == b"STILL HERE"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and all(me in r.getMessage() for r in errors)
    assert "the handler broke" in str(errors[0].exc_info[1])
    assert "must be bytes" in str(errors[1].exc_info[1])
    warning = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warning] == [f"{me}: not a command: b'garbage'; datagram dropped"]


def test_oversize_datagrams_are_dropped_with_a_warning(running_loop, caplog):
    server = serve(running_loop, DatagramServer("127.0.0.1", 0, max_size=100))
    with udp_client() as client:
        client.bind(("127.0.0.1", 0))
        me = "127.0.0.1:%d" % client.getsockname()[1]
        client.sendto(b"x" * 101, server.address)
        client.sendto(b"y" * 5000, server.address)
        assert ask(client, b"z" * 100, server.address) == b"Z" * 100
    handler = server.handler
    assert running_loop.call(lambda: list(handler.seen)) == [b"z" * 100]
    drops = [r.getMessage() for r in caplog.records if "over the limit" in r.getMessage()]
    # The second is counted, not written: a flood of them (senders' addresses
    # are free to forge) gets one line and a count per window (evloop.logs).
    assert drops == [f"{me}: datagram over the limit of 100 bytes; dropped"]
    warnings = loop_warnings(running_loop.loop)
    assert running_loop.call(lambda: warnings.suppressed_total["datagram-too-large"]) == 1


def test_a_future_reply_is_sent_when_it_is_done(running_loop):
    release = threading.Event()

    class Slow(DatagramHandler):
        pool = concurrent.futures.ThreadPoolExecutor(2)

        def handle_datagram(self, data, address):
            if data == b"slow":
                return self.pool.submit(lambda: release.wait(10) and b"slow done")
            if data == b"fails":
                return self.pool.submit(lambda: 1 / 0)
            return data

    server = serve(running_loop, DatagramServer("127.0.0.1", 0), Slow)
    with udp_client() as slow, udp_client() as quick:
        slow.sendto(b"slow", server.address)
        slow.sendto(b"fails", server.address)
        # Served while the slow reply is pending:
        assert ask(quick, b"quick", server.address) == b"quick"
        release.set()
        assert slow.recvfrom(100)[0] == b"slow done"
    Slow.pool.shutdown()


def test_offload_runs_in_the_loops_pool_and_its_failure_is_logged_with_the_sender(running_loop, caplog):
    class Pooled(DatagramHandler):
        def handle_datagram(self, data, address):
            if data == b"fail":
                return self.offload(int, "not a number")
            return self.offload(lambda: data + b" in %s" % threading.current_thread().name.encode())

    # One worker: "fail" finishes, and its failure reaches the loop, before
    # "work" starts, so its log line is there once "work" is answered.
    running_loop.call(lambda: set_offload_executor(running_loop.loop, max_workers=1))
    server = serve(running_loop, DatagramServer("127.0.0.1", 0), Pooled)
    with udp_client() as client:
        client.bind(("127.0.0.1", 0))
        me = "127.0.0.1:%d" % client.getsockname()[1]
        client.sendto(b"fail", server.address)
        reply = ask(client, b"work", server.address)
        assert reply.startswith(b"work in ") and reply != b"work in evloop-test"
    failures = [r for r in caplog.records if "datagram dropped" in r.getMessage()]
    assert len(failures) == 1 and isinstance(failures[0].exc_info[1], ValueError)
    assert failures[0].getMessage().startswith(me)


def test_datagram_server_closes_with_its_loop_and_finish_runs(selector_name):
    from tests.conftest import RunningLoop

    finished = []

    class Counting(Upper):
        def finish(self):
            finished.append(self.server)

    holder = RunningLoop(None if selector_name == "default" else selector_name).start()
    server = serve(holder, DatagramServer("127.0.0.1", 0), Counting)
    holder.stop()
    assert server.closed and server.socket.fileno() == -1 and finished == [server]


# -- Unix datagram over real sockets ---------------------------------------------


def test_unix_datagram_round_trip_and_file_removed(running_loop, tmp_path):
    path = str(tmp_path / "upper.sock")
    server = serve(running_loop, UnixDatagramServer(path))
    assert server.path == path and server.port is None and os.path.exists(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        client.bind(str(tmp_path / "client.sock"))
        client.sendto(b"over unix", path)
        assert client.recvfrom(100) == (b"OVER UNIX", path)
    running_loop.call(server.close)
    assert not os.path.exists(path)


def test_unix_datagram_from_an_unbound_client_cannot_be_answered(running_loop, tmp_path, caplog):
    path = str(tmp_path / "upper.sock")
    server = serve(running_loop, UnixDatagramServer(path))
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as anonymous,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as named,
    ):
        anonymous.sendto(b"who am i", path)
        named.settimeout(10)
        named.bind(str(tmp_path / "named.sock"))
        assert ask(named, b"after", path) == b"AFTER"
    assert "the sender has no address; reply of 8 bytes dropped" in caplog.text
    assert running_loop.call(lambda: list(server.handler.seen)) == [b"who am i", b"after"]


# -- an in-memory datagram socket -----------------------------------------------


class FakeDatagramSocket(FakeSocket):
    """Datagrams to hand out (or exceptions to raise) and a send buffer of
    ``room`` datagrams (None: unlimited) that empties when told."""

    type = socket.SOCK_DGRAM

    def __init__(self, room=None):
        super().__init__()
        self.incoming = collections.deque()
        self.sent_to = []
        self.room = room
        self.reads = 0

    def getsockname(self):
        return ("127.0.0.1", 9999)

    def recvfrom_into(self, buffer):
        if not self.incoming:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        self.reads += 1
        item = self.incoming.popleft()
        if isinstance(item, BaseException):
            raise item
        data, address = item
        size = min(len(data), len(buffer))  # the kernel truncates, silently
        buffer[:size] = data[:size]
        return size, address

    def sendto(self, data, address):
        if self.room is not None:
            if self.room == 0:
                raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
            self.room -= 1
        self.sent_to.append((bytes(data), address))
        return len(data)


_open_loops = []


@pytest.fixture(autouse=True)
def close_manual_loops():
    yield
    while _open_loops:
        _open_loops.pop().close()


def fake_server(room=None, handler_class=Upper, **options):
    sock = FakeDatagramSocket(room)
    server = DatagramServer(sock=sock, **options)
    loop = ManualLoop()
    _open_loops.append(loop)
    loop.add_server(server, handler_class)
    return server, sock, loop


PEER = ("10.0.0.7", 5353)


def test_a_full_send_buffer_queues_replies_in_order_and_pauses_reading():
    server, sock, loop = fake_server(room=2)
    server.max_queued = 3
    for n in range(8):
        sock.incoming.append((b"r%d" % n, PEER))
    server.handle_read()
    # Two went out, three wait, and reading stopped with three still unread.
    assert [d for d, _ in sock.sent_to] == [b"R0", b"R1"]
    assert len(sock.incoming) == 3
    assert loop.events_of(sock) == EVENT_WRITE
    sock.room = 1
    server.handle_write()
    assert [d for d, _ in sock.sent_to] == [b"R0", b"R1", b"R2"]
    assert loop.events_of(sock) == EVENT_READ | EVENT_WRITE
    sock.room = None
    server.handle_write()
    assert loop.events_of(sock) == EVENT_READ
    server.handle_read()
    assert [d for d, _ in sock.sent_to] == [b"R%d" % n for n in range(8)]
    assert all(address == PEER for _, address in sock.sent_to)


def test_a_flood_is_read_in_bounded_batches():
    server, sock, _ = fake_server()
    for n in range(200):
        sock.incoming.append((b"%d" % n, PEER))
    server.handle_read()
    assert sock.reads == server.datagrams_per_wakeup
    while sock.incoming:
        server.handle_read()
    assert len(sock.sent_to) == 200


def test_icmp_errors_from_earlier_replies_are_skipped():
    server, sock, _ = fake_server()
    sock.incoming.extend([ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), (b"after", PEER)])
    server.handle_read()
    assert sock.sent_to == [(b"AFTER", PEER)]


def test_undeliverable_replies_are_logged_with_their_address(caplog):
    server, sock, _ = fake_server()

    def refuse(data, address):
        raise OSError(errno.EHOSTUNREACH, "No route to host")

    sock.sendto = refuse
    sock.incoming.append((b"hello", PEER))
    server.handle_read()
    assert "10.0.0.7:5353: reply of 5 bytes not delivered: No route to host" in caplog.text
    assert not server.closed


def test_an_unexpected_socket_error_is_logged_and_the_server_stays(caplog):
    server, sock, loop = fake_server()
    sock.incoming.extend([OSError(errno.EBADF, "Bad file descriptor"), (b"next", PEER)])
    with pytest.raises(OSError) as raised:
        server.handle_read()
    loop.report_error(server, raised.value)  # what the loop does with it
    assert "socket error; still serving" in caplog.text
    assert not server.closed
    server.handle_read()
    assert sock.sent_to == [(b"NEXT", PEER)]


class Reverse(DatagramHandler):
    def setup(self):
        self.seen = []

    def handle_datagram(self, data, address):
        self.seen.append(data)
        return data[::-1]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=30), st.integers(min_value=0, max_value=8))
def test_property_every_datagram_is_answered_or_dropped_never_an_error(datagrams, room):
    """Any datagrams, any send-buffer room: those within max_size reach the
    handler whole and in order, and every one is answered, in order, once
    the socket drains; oversize ones are dropped; nothing raises."""
    server, sock, loop = fake_server(room=room, handler_class=Reverse, max_size=100)
    _open_loops.remove(loop)  # hypothesis runs this many times in one test
    try:
        server.max_queued = 4
        sock.incoming.extend((data, PEER) for data in datagrams)
        while sock.incoming or server._queue:
            server.handle_read()
            sock.room += 1  # the peer reads one more reply's worth
            server.handle_write()
        kept = [d for d in datagrams if len(d) <= 100]
        assert server.handler.seen == kept
        assert sock.sent_to == [(d[::-1], PEER) for d in kept]
    finally:
        loop.close()
