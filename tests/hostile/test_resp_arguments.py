"""One RESP command of a million 2-byte arguments: 8 MB on the wire, 2 MB of
argument bytes, but tens of megabytes to hold as Python objects. The framer
charges each argument its cost as well as its bytes, so what one command
may hold is bounded by the request limit: under the default (64 MiB) the
command is taken and the server's memory grows by less than the limit;
under a 1 MiB limit it is refused at its ``*`` line, before any argument."""

import socket
import time

from evloop.protocols import encode_command

from tests.conftest import recv_all
from tests.hostile.tools import _status_field, linux_only, server_process

MIB = 1024 * 1024
ARGUMENTS = 1_000_000
# What the interpreter may add beyond the limit itself: the read buffer,
# the reply, the allocator's slack (as in test_flood.py).
SLACK_KIB = 24 * 1024


def million_arguments():
    return b"*%d\r\n$3\r\nDEL\r\n" % ARGUMENTS + b"$2\r\nab\r\n" * (ARGUMENTS - 1)


def attack(server, data):
    """Send ``data``, half-close, read the answer; (answer, peak RSS growth
    in KiB, server CPU seconds, wall seconds)."""
    with socket.create_connection(server.address, timeout=60) as sock:
        sock.sendall(encode_command("PING"))
        assert sock.recv(100) == b"+PONG\r\n"
        baseline, cpu = server.rss_kib(), server.cpu_seconds()
        started = time.monotonic()
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        answer = recv_all(sock)
        elapsed = time.monotonic() - started
    peak = _status_field(server.pid, "VmHWM")
    return answer, peak - baseline, server.cpu_seconds() - cpu, elapsed


@linux_only
def test_a_million_tiny_arguments_hold_no_more_than_the_limit():
    with server_process("--case", "resp") as server:
        answer, grew_kib, cpu, elapsed = attack(server, million_arguments())
    assert answer == b":0\r\n"  # DEL of keys that do not exist
    assert grew_kib < 64 * 1024 + SLACK_KIB, f"peak RSS grew {grew_kib / 1024:.1f} MiB"
    print(
        f"\nresp, 64 MiB limit: {ARGUMENTS:,} 2-byte arguments taken; server peak RSS "
        f"+{grew_kib / 1024:.1f} MiB, CPU {cpu:.2f}s, {elapsed:.2f}s"
    )


@linux_only
def test_a_million_tiny_arguments_are_refused_under_a_small_limit():
    with server_process("--case", "resp", "--max-request-size", str(MIB)) as server:
        # Its first 8 KB: the server refuses at the count line and closes,
        # so the rest is never sent (a close with unread bytes would be a
        # reset, which could destroy the reply before it is read).
        answer, grew_kib, cpu, elapsed = attack(server, million_arguments()[:8192])
        server.wait_for("arguments would cost")
    assert answer == b"-ERR Protocol error: invalid multibulk length\r\n"
    assert grew_kib < MIB // 1024 + SLACK_KIB, f"peak RSS grew {grew_kib / 1024:.1f} MiB"
    print(
        f"\nresp, 1 MiB limit: {ARGUMENTS:,} 2-byte arguments refused at the count; "
        f"server peak RSS +{grew_kib / 1024:.1f} MiB, CPU {cpu:.2f}s, {elapsed:.2f}s"
    )
