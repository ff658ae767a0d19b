"""A client that sends 100 MiB of requests and never reads a reply. The
server (a subprocess, default limits) must stop reading from it once its
replies pile up past the high-water mark, so the flood stalls in the kernel
instead of in the server's memory; its RSS stays bounded, and every other
client is served meanwhile."""

import selectors
import socket
import time

from tests.hostile.tools import linux_only, server_process

MIB = 1024 * 1024
FLOOD = 100 * MIB
# What the server's peak RSS may grow by. The output high-water mark is
# 1 MiB, one read is 256 KiB; the rest is the interpreter's own slack.
RSS_BUDGET_KIB = 24 * 1024


def frame(body):
    return b"%d\n" % len(body) + body


def ask(sock, body):
    request = frame(body)
    sock.sendall(request)
    got = b""
    while len(got) < len(request):
        chunk = sock.recv(65536)
        assert chunk, "the server closed a normal client"
        got += chunk
    return got == request


def flood_until_stalled(address, total, stall=1.0):
    """Send up to ``total`` bytes of echo requests without reading; stop when
    the connection takes nothing for ``stall`` seconds. Returns (socket,
    bytes the server side took)."""
    sock = socket.create_connection(address, timeout=10)
    sock.setblocking(False)
    block = frame(b"f" * (64 * 1024 - 8))
    view, sent = memoryview(block * 16), 0
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_WRITE)
    try:
        while sent < total:
            if not selector.select(stall):
                break  # nothing taken for a while: stalled
            try:
                n = sock.send(view[sent % len(view) :])
            except BlockingIOError:
                continue
            sent += n
    finally:
        selector.close()
    return sock, sent


@linux_only
def test_a_client_that_never_reads_cannot_grow_the_servers_memory():
    with server_process() as server:
        with socket.create_connection(server.address, timeout=10) as normal:
            assert ask(normal, b"warm up" * 1000)
            baseline = server.rss_kib()
            started = time.monotonic()
            flooder, taken = flood_until_stalled(server.address, FLOOD)
            try:
                # The flood stalled long before 100 MiB: the server stopped reading.
                assert taken < 40 * MIB, f"the server took {taken / MIB:.0f} MiB without pause"
                peak = max(server.rss_kib(), _peak_rss(server))
                for n in range(50):  # everyone else is served meanwhile
                    assert ask(normal, b"still here %d" % n)
                assert server.rss_kib() - baseline < RSS_BUDGET_KIB
            finally:
                flooder.close()
            elapsed = time.monotonic() - started
            assert ask(normal, b"after")
        growth = peak - baseline
        assert growth < RSS_BUDGET_KIB, f"server RSS grew {growth / 1024:.1f} MiB"
        print(
            f"\nflood: of {FLOOD // MIB} MiB of requests the server side took "
            f"{taken / MIB:.1f} MiB (kernel buffers included) before reading paused; "
            f"server peak RSS +{growth / 1024:.1f} MiB over {baseline / 1024:.1f} MiB; "
            f"{elapsed:.1f}s"
        )


def _peak_rss(server):
    from tests.hostile.tools import _status_field

    return _status_field(server.pid, "VmHWM")
