"""10,000 simultaneous connections to one server process (RLIMIT_NOFILE
raised for it and for the test), every one answered while all are open."""

import selectors
import socket
import time

from tests.hostile.tools import descriptor_limit, linux_only, server_process, source_addresses

CONNECTIONS = 10_000


def frame(body):
    return b"%d\n" % len(body) + body


@linux_only
def test_ten_thousand_simultaneous_connections():
    with descriptor_limit(CONNECTIONS + 500), server_process("--nofile", str(CONNECTIONS + 2000)) as server:
        baseline_kib = server.rss_kib()
        # 40 addresses: 250 connections each, under the per-peer cap (256).
        sources = source_addresses(40)
        clients = []
        selector = selectors.DefaultSelector()
        started = time.monotonic()
        try:
            for n in range(CONNECTIONS):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.settimeout(10)
                if len(sources) > 1:
                    sock.bind((sources[n % len(sources)], 0))
                sock.connect(server.address)
                clients.append(sock)
            connected = time.monotonic() - started
            requests = {}
            for n, sock in enumerate(clients):
                requests[sock] = frame(b"client %05d" % n)
                sock.sendall(requests[sock])
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ, bytearray())
            pending = CONNECTIONS
            deadline = time.monotonic() + 60
            while pending and time.monotonic() < deadline:
                for key, _ in selector.select(5):
                    received = key.data
                    received += key.fileobj.recv(100)
                    if len(received) >= len(requests[key.fileobj]):
                        assert bytes(received) == requests[key.fileobj]
                        selector.unregister(key.fileobj)
                        pending -= 1
            answered = time.monotonic() - started
            assert pending == 0, f"{pending} connections never answered"
            # All of them are still open on the server's side, at once.
            assert server.open_descriptors() >= CONNECTIONS
            held_kib = server.rss_kib()
            first = clients[0]
            first.setblocking(True)
            first.sendall(frame(b"once more"))
            assert first.recv(100) == frame(b"once more")
        finally:
            selector.close()
            for sock in clients:
                sock.close()
        per_connection = (held_kib - baseline_kib) * 1024 / CONNECTIONS
        print(
            f"\n10k: {CONNECTIONS} connected in {connected:.2f}s, all answered after "
            f"{answered:.2f}s; server RSS {baseline_kib / 1024:.1f} -> {held_kib / 1024:.1f} MiB "
            f"(~{per_connection:.0f} bytes per open connection)"
        )
