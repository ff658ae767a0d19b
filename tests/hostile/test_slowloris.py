"""1,000 slowloris connections dribbling bytes while a normal client keeps
getting answers. The server (a subprocess, request_timeout 2s) must cut every
dribbler about 2s after its first byte, however steadily it dribbles, and
answer the normal client promptly all along."""

import selectors
import socket
import threading
import time

from tests.hostile.tools import descriptor_limit, linux_only, server_process, source_addresses

SLOW_CLIENTS = 1000
REQUEST_TIMEOUT = 2.0
DRIBBLE_EVERY = 0.25  # each dribbler sends one byte this often


def frame(body):
    return b"%d\n" % len(body) + body


def normal_client(address, stop, latencies, errors):
    try:
        with socket.create_connection(address, timeout=10) as sock:
            n = 0
            while not stop.is_set():
                request = frame(b"normal %d" % n)
                started = time.monotonic()
                sock.sendall(request)
                got = b""
                while len(got) < len(request):
                    chunk = sock.recv(len(request) - len(got))
                    if not chunk:
                        raise EOFError("the server closed the normal client")
                    got += chunk
                latencies.append(time.monotonic() - started)
                assert got == request
                n += 1
                stop.wait(0.02)  # a request every 20 ms: a steady, ordinary client
    except BaseException as exc:  # handed to the test thread
        errors.append(exc)


@linux_only
def test_a_thousand_slowloris_connections_do_not_starve_a_normal_client():
    with (
        descriptor_limit(SLOW_CLIENTS + 200),
        server_process("--request-timeout", str(REQUEST_TIMEOUT), "--nofile", "4096") as server,
    ):
        sources = source_addresses(4)
        slow = []
        for i in range(SLOW_CLIENTS):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(10)
            if len(sources) > 1:
                sock.bind((sources[i % len(sources)], 0))
            sock.connect(server.address)
            slow.append(sock)
        stop, latencies, errors = threading.Event(), [], []
        normal = threading.Thread(target=normal_client, args=(server.address, stop, latencies, errors))
        normal.start()
        selector = selectors.DefaultSelector()
        first_byte, cut_after = {}, {}
        try:
            for sock in slow:  # a header and the first byte of a 1000-byte body each
                sock.sendall(b"1000\nx")
                first_byte[sock] = time.monotonic()
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ)
            began = time.monotonic()
            next_dribble = began + DRIBBLE_EVERY
            dribbled = 0
            while len(cut_after) < SLOW_CLIENTS and time.monotonic() - began < 20:
                # The select timeout paces the dribbling; readability means the server cut one.
                for key, _ in selector.select(max(0.0, next_dribble - time.monotonic())):
                    sock = key.fileobj
                    try:
                        data = sock.recv(100)
                    except ConnectionResetError:
                        data = b""
                    assert data == b"", "a slowloris client got an answer"
                    cut_after[sock] = time.monotonic() - first_byte[sock]
                    selector.unregister(sock)
                if time.monotonic() >= next_dribble:
                    for sock in slow:
                        if sock not in cut_after:
                            try:
                                sock.send(b"x")
                                dribbled += 1
                            except OSError:
                                pass  # cut meanwhile: its readability says so next
                    next_dribble += DRIBBLE_EVERY
            total = time.monotonic() - began
        finally:
            stop.set()
            normal.join(10)
            selector.close()
            for sock in slow:
                sock.close()
        assert not errors, errors
        assert len(cut_after) == SLOW_CLIENTS, f"only {len(cut_after)} were cut"
        assert dribbled >= SLOW_CLIENTS * 4, "they did dribble, several bytes each"
        assert min(cut_after.values()) >= REQUEST_TIMEOUT * 0.9
        assert max(cut_after.values()) < REQUEST_TIMEOUT + 3
        assert len(latencies) >= 20
        worst = max(latencies)
        assert worst < 1.0, f"the normal client waited {worst:.3f}s"
        assert server.count(f"request timeout ({REQUEST_TIMEOUT:g}s) fired") == SLOW_CLIENTS
        print(
            f"\nslowloris: {SLOW_CLIENTS} dribblers cut {min(cut_after.values()):.2f}-"
            f"{max(cut_after.values()):.2f}s after their first byte, all gone in {total:.2f}s; "
            f"normal client: {len(latencies)} requests, median "
            f"{sorted(latencies)[len(latencies) // 2] * 1000:.1f} ms, worst {worst * 1000:.1f} ms"
        )
