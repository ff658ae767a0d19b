"""Small requests with large replies, from clients that never read: the
server must stop taking their requests once a connection's queued output
passes the high-water mark, so its memory is bounded per connection by the
high-water mark, one reply and the unread input, however many requests one
read brought (issue: back-pressure per request, not per loop pass).

Each of 20 clients pipelines 2,048 requests whose replies are 16 KiB each
(32 MiB of replies per client, 640 MiB in all, from about 60 KB of
requests), then reads nothing until every client has sent; then each reads
all its replies and checks every one, in order. The server runs in its own
process; its peak RSS (VmHWM) is read before and after.
"""

import re
import socket
import threading

import pytest
from evloop.protocols import encode_command

from evloop.limits import DEFAULT_LIMITS, DEFAULT_MAX_REQUEST_SIZE
from tests.hostile.targets import BIG_REPLY, big_reply
from tests.hostile.tools import _status_field, linux_only, server_process

CLIENTS = 20
REQUESTS = 2048
KEYS = 64  # the miniredis case's keys, k0..k63
#: What one client may cost: the high-water mark, one reply, the unread input.
PER_CLIENT = DEFAULT_LIMITS.write_high_water + BIG_REPLY + DEFAULT_MAX_REQUEST_SIZE
#: An allowance for what is not the clients' (the allocator's slack, the
#: interpreter's caches, the threads' stacks of the test itself are not in it).
SLACK = 24 * 1024 * 1024


def request(case, number):
    if case == "big-recipe":
        return b"%d\n" % number
    if case == "big-resp":
        return encode_command(b"GET", b"k%d" % (number % KEYS))
    return b"GET /big?%d HTTP/1.1\r\nHost: x\r\n\r\n" % number


def expected(case, number):
    if case == "big-recipe":
        return big_reply(b"%d" % number)
    if case == "big-resp":
        return b"$%d\r\n%s\r\n" % (BIG_REPLY, big_reply(b"%d" % (number % KEYS)))
    return big_reply(b"%d" % number)


def read_replies(sock, case, count):
    """Read ``count`` replies and return them, in order (HTTP bodies only)."""
    stream = sock.makefile("rb")
    replies = []
    for _ in range(count):
        if case == "big-http":
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                line = stream.readline()
                assert line, "the connection ended early"
                head += line
            length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))
            replies.append(stream.read(length))
        elif case == "big-resp":
            header = stream.readline()
            replies.append(header + stream.read(BIG_REPLY + 2))
        else:
            replies.append(stream.read(BIG_REPLY))
    return replies


@linux_only
@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", ["big-recipe", "big-resp", "big-http"])
def test_never_reading_clients_cost_at_most_the_high_water_mark_each(case):
    with server_process("--case", case) as server:
        # Warm the server up with one honest client, so the baseline holds
        # what any served connection costs.
        with socket.create_connection(server.address, timeout=30) as sock:
            sock.sendall(request(case, 1))
            assert read_replies(sock, case, 1) == [expected(case, 1)]
        before = _status_field(server.pid, "VmHWM") * 1024
        clients = [socket.create_connection(server.address, timeout=60) for _ in range(CLIENTS)]
        try:
            burst = b"".join(request(case, number) for number in range(REQUESTS))
            senders = [threading.Thread(target=sock.sendall, args=(burst,)) for sock in clients]
            for sender in senders:
                sender.start()
            results = {}

            def read_all(index, sock):
                results[index] = read_replies(sock, case, REQUESTS)

            readers = [threading.Thread(target=read_all, args=item) for item in enumerate(clients)]
            for reader in readers:
                reader.start()
            for thread in senders + readers:
                thread.join(240)
            want = [expected(case, number) for number in range(REQUESTS)]
            for index in range(CLIENTS):
                assert results.get(index) == want, f"client {index}: replies missing or out of order"
        finally:
            for sock in clients:
                sock.close()
        peak = _status_field(server.pid, "VmHWM") * 1024
    growth = peak - before
    bound = CLIENTS * PER_CLIENT + SLACK
    print(f"{case}: peak RSS grew {growth / 2**20:.1f} MiB (bound {bound / 2**20:.1f} MiB)")
    assert growth <= bound
