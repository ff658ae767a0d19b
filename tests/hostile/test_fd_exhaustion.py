"""Out of file descriptors, in a server subprocess run under RLIMIT_NOFILE=64.

- With the default limits, max_connections is derived from that limit, so
  the server refuses the excess politely (accept, close) and never reaches
  EMFILE.
- With max_connections forced above what the descriptors allow, accept()
  fails with EMFILE: the server must not spin (CPU measured), must log one
  line (not one per retry), and must serve the waiting clients as soon as
  descriptors free up."""

import selectors
import socket
import time

from tests.hostile.tools import linux_only, server_process

NOFILE = 64


def frame(body):
    return b"%d\n" % len(body) + body


def open_clients(address, count):
    clients = []
    for n in range(count):
        sock = socket.create_connection(address, timeout=10)
        sock.sendall(frame(b"%03d" % n))
        clients.append(sock)
    return clients


def answered_within(clients, seconds):
    """The clients whose answer arrives within ``seconds``, waiting the whole
    window (one select() returns as soon as any one answer is there)."""
    selector = selectors.DefaultSelector()
    for sock in clients:
        selector.register(sock, selectors.EVENT_READ)
    answered = set()
    deadline = time.monotonic() + seconds
    try:
        while (left := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(left):
                answered.add(key.fileobj)
                selector.unregister(key.fileobj)
    finally:
        selector.close()
    return answered


def answered_until_quiet(clients, quiet=1.0, deadline=30.0):
    """Collect answers until none has come for ``quiet`` seconds (or the
    deadline passes): a loaded machine may take a while to serve them all."""
    answered = set()
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        fresh = answered_within([sock for sock in clients if sock not in answered], quiet)
        if not fresh:
            break
        answered |= fresh
    return answered


@linux_only
def test_the_derived_connection_limit_refuses_politely_before_descriptors_run_out():
    with server_process("--nofile", str(NOFILE)) as server:
        clients = open_clients(server.address, 70)
        try:
            held, refused = [], []
            for sock in clients:
                reply = sock.recv(100)
                (held if reply else refused).append(sock)
            assert len(held) == NOFILE - 16  # RLIMIT_NOFILE less the reserve
            assert len(refused) == 70 - len(held)  # told at once (closed), not left hanging
            for sock in held[:10]:  # leave, and wait for the server's close
                sock.shutdown(socket.SHUT_WR)
                assert sock.recv(100) == b""
            with socket.create_connection(server.address, timeout=10) as again:
                again.sendall(frame(b"room again"))
                assert again.recv(100) == frame(b"room again")
        finally:
            for sock in clients:
                sock.close()
        output = server.output()
        assert server.count("refused") == 1, output  # one line per 10s, not one per client
        assert "accept failed" not in output


@linux_only
def test_emfile_pauses_without_spinning_logs_once_and_recovers():
    with server_process("--nofile", str(NOFILE), "--max-connections", "1000") as server:
        clients = open_clients(server.address, 80)
        try:
            server.wait_for("accept failed (Too many open files)")
            served = answered_until_quiet(clients)
            waiting = [sock for sock in clients if sock not in served]
            assert 30 < len(served) < NOFILE and waiting
            # Out of descriptors with clients waiting: a second in which the
            # server must sleep, not spin on accept().
            cpu_before = server.cpu_seconds()
            assert not answered_within(waiting, 1.0)
            cpu = server.cpu_seconds() - cpu_before
            assert cpu < 0.25, f"the server used {cpu:.2f}s of CPU in 1s while out of descriptors"
            for sock in list(served)[:30]:  # descriptors free up...
                sock.close()
            for sock in waiting:  # ...and every waiting client is served
                n = clients.index(sock)
                assert sock.recv(100) == frame(b"%03d" % n)
            with socket.create_connection(server.address, timeout=10) as fresh:
                fresh.sendall(frame(b"new"))
                assert fresh.recv(100) == frame(b"new")
        finally:
            for sock in clients:
                sock.close()
        assert server.count("accept failed") == 1, server.output()
        print(
            f"\nEMFILE: {len(waiting)} clients waited in the backlog; the server used "
            f"{cpu * 1000:.0f} ms of CPU in the 1 s it was out of descriptors, logged one "
            f"line, and served them all once descriptors were free"
        )
