"""KEYS and CONFIG GET with patterns made to backtrack (Redis's
CVE-2022-36021), sent over loopback to miniredis in its own process: each
is answered in milliseconds of server CPU, and a client asking for a key
meanwhile is answered at once."""

import socket
import time

from evloop.protocols import encode_command

from tests.hostile.tools import linux_only, server_process
from tests.test_miniredis import read_replies

PATTERNS = [
    "*a*a*a*a*ab",
    "*a" * 512,
    ("*" + "?" * 20) * 48,
    "*" + "[a-z]*" * 170,
    "a*" * 500 + "b",
]


def ask(sock, *argv):
    sock.sendall(encode_command(*argv))
    return read_replies(sock, 1)[0]


@linux_only
def test_backtracking_patterns_cost_milliseconds():
    with server_process("--case", "resp") as server:
        with (
            socket.create_connection(server.address, timeout=30) as attacker,
            socket.create_connection(server.address, timeout=30) as honest,
        ):
            assert ask(attacker, "SET", "a" * 200, "1") == "OK"
            cpu = server.cpu_seconds()
            started = time.monotonic()
            found = [ask(attacker, "KEYS", pattern) for pattern in PATTERNS]
            assert found == [[], [], [], [b"a" * 200], []]
            assert ask(attacker, "CONFIG", "GET", "*" * 22 + "x") == []
            elapsed = time.monotonic() - started
            spent = server.cpu_seconds() - cpu
            asked = time.monotonic()
            assert ask(honest, "GET", "a" * 200) == b"1"
            honest_wait = time.monotonic() - asked
    assert spent < 1.0, f"the server spent {spent:.2f}s of CPU on {len(PATTERNS) + 1} patterns"
    print(
        f"\nglobs: {len(PATTERNS)} backtracking KEYS patterns over a 200-byte key and CONFIG GET "
        f"with 22 stars: {spent * 1000:.0f} ms of server CPU (clock tick 10 ms), {elapsed * 1000:.0f} ms "
        f"in all; an honest GET then waited {honest_wait * 1000:.1f} ms"
    )
