"""Many clients, each within its own limits, together past what the server
may hold: Limits.max_clients_memory (evloop.budget) bounds the sum.

Each of 24 attackers opens a request of 8 MiB (the per-request limit here is
9 MiB) and sends 6 MiB of it, then stops: 144 MiB held in all, every client
within its bounds. An honest client asks and is answered meanwhile. With no
budget the server holds it all; with a 32 MiB budget the biggest holders
are closed as the sum passes it, one log line each, and the server's peak
memory stays near the budget however often the attack is repeated. The
server runs in its own process (peak RSS from /proc's VmHWM).

What the budget bounds is what the clients hold; the process's peak RSS
also has what the allocator keeps of freed buffers. glibc's malloc raises
its mmap threshold after the first big free, so later buffers come from the
heap and the holes the closed ones leave are reused only in part: the
default allocator may hold up to about twice the budget.
``MALLOC_MMAP_THRESHOLD_=131072`` keeps big buffers in mmap, given back to
the system as they are freed, and then the peak is the budget and a little
(docs/security.md)."""

import socket
import threading

import pytest

from tests.hostile.tools import _status_field, linux_only, server_process

MIB = 1024 * 1024
ATTACKERS = 24
HELD = 6 * MIB  # what each attacker's incomplete request holds
BUDGET = 32 * MIB
#: What the interpreter may add beyond what the clients hold (read buffer,
#: allocator slack), as in the other hostile tests.
SLACK = 24 * MIB


def frame(body):
    return b"%d\n" % len(body) + body


def attack(server):
    """Run the attack; returns (peak RSS growth in bytes, attackers the
    server closed, whether the honest client was answered each time)."""
    with socket.create_connection(server.address, timeout=30) as honest:
        honest.sendall(frame(b"warm-up"))
        assert honest.recv(100) == frame(b"warm-up")
        before = _status_field(server.pid, "VmHWM") * 1024
        attackers = [socket.create_connection(server.address, timeout=30) for _ in range(ATTACKERS)]
        closed = []
        try:

            def hold(sock):
                try:
                    sock.sendall(b"%d\n" % (8 * MIB) + b"a" * HELD)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # closed while sending: counted below

            senders = [threading.Thread(target=hold, args=(sock,)) for sock in attackers]
            for sender in senders:
                sender.start()
            answered = []
            for number in range(20):
                request = frame(b"honest %d" % number)
                honest.sendall(request)
                answered.append(honest.recv(100) == request)
            for sender in senders:
                sender.join(60)
            # Every attacker's bytes are in: one more honest round trip means
            # the server has read all it was going to, so the charges are in.
            honest.sendall(frame(b"last"))
            answered.append(honest.recv(100) == frame(b"last"))
            peak = _status_field(server.pid, "VmHWM") * 1024
            for sock in attackers:
                sock.settimeout(0.5)
                try:
                    closed.append(sock.recv(1) == b"")
                except ConnectionResetError:
                    closed.append(True)
                except TimeoutError:
                    closed.append(False)
        finally:
            for sock in attackers:
                sock.close()
    return peak - before, sum(closed), all(answered)


@linux_only
@pytest.mark.timeout(120)
def test_without_a_budget_the_attack_holds_every_byte():
    with server_process(
        "--case", "lengthsep-echo", "--max-request-size", str(9 * MIB), "--max-clients-memory", "0"
    ) as server:
        growth, closed, answered = attack(server)
    print(f"no budget: peak RSS grew {growth / MIB:.1f} MiB, {closed} of {ATTACKERS} attackers closed")
    assert answered and closed == 0
    assert growth > ATTACKERS * HELD * 0.9  # the attack is real: 144 MiB held


ALLOCATORS = {
    "glibc-default": ({}, 2 * BUDGET + SLACK),
    "mmap-threshold-128k": ({"MALLOC_MMAP_THRESHOLD_": "131072"}, BUDGET + SLACK),
}


@linux_only
@pytest.mark.timeout(180)
@pytest.mark.parametrize("allocator", sorted(ALLOCATORS))
def test_a_budget_closes_the_biggest_holders_and_bounds_the_server(allocator):
    env, bound = ALLOCATORS[allocator]
    args = (
        "--case",
        "lengthsep-echo",
        "--max-request-size",
        str(9 * MIB),
        "--max-clients-memory",
        str(BUDGET),
    )
    with server_process(*args, env=env) as server:
        baseline = _status_field(server.pid, "VmHWM") * 1024
        for wave in range(3):
            _growth, closed, answered = attack(server)
            growth = _status_field(server.pid, "VmHWM") * 1024 - baseline
            print(
                f"{allocator}, wave {wave + 1}: peak RSS grew {growth / MIB:.1f} MiB, "
                f"{closed} of {ATTACKERS} closed"
            )
            assert answered, "the honest client was not answered every time"
            # The sum kept under 32 MiB: at most 5 attackers of 6 MiB hold on.
            assert closed >= ATTACKERS - BUDGET // HELD
        named = server.count("Limits.max_clients_memory")
        counted = server.count("more connections over the client memory budget")
    assert named >= 1 and named + counted >= 3  # a line each (10 by name per enforcement, then a count)
    assert growth <= bound
