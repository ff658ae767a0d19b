"""The client memory budget at full scale: RESP clients that each open a
``SET`` with a 60 MiB value and send all but its last bytes, against the
mini Redis with its default limits (a 64 MiB request limit, so each client
is within its own bounds), with and without the default 1 GiB budget.

    python benchmarks/client_memory.py --clients 40

prints, for each server, its peak RSS growth (VmHWM), how many clients it
closed and whether an honest client was answered throughout. 40 clients
send 2.4 GB; without a budget the server holds all of it, so run this on a
machine with a few GB free, alone. ``--budget-only`` skips the server
without a budget (for many clients). The server inherits the environment:
``MALLOC_MMAP_THRESHOLD_=131072`` before the command measures it with big
buffers kept in mmap (docs/security.md says why that matters). Linux only
(reads /proc).
"""

import argparse
import socket
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.hostile.tools import _status_field, server_process

MIB = 1024 * 1024


def attack(server, clients, value_size):
    """(peak RSS growth in MiB, clients closed, honest client answered)."""
    header = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n" % value_size
    body = b"v" * (value_size - 1)
    with socket.create_connection(server.address, timeout=60) as honest:
        honest.sendall(b"*1\r\n$4\r\nPING\r\n")
        assert honest.recv(100) == b"+PONG\r\n"
        before = _status_field(server.pid, "VmHWM")
        socks = [socket.create_connection(server.address, timeout=60) for _ in range(clients)]

        def hold(sock):
            try:
                sock.sendall(header)
                sock.sendall(body)
            except OSError:
                pass  # closed by the server meanwhile

        threads = [threading.Thread(target=hold, args=(sock,)) for sock in socks]
        for thread in threads:
            thread.start()
        answered = True
        for thread in threads:
            honest.sendall(b"*1\r\n$4\r\nPING\r\n")
            answered &= honest.recv(100) == b"+PONG\r\n"
            thread.join(120)
        honest.sendall(b"*1\r\n$4\r\nPING\r\n")
        answered &= honest.recv(100) == b"+PONG\r\n"
        peak = _status_field(server.pid, "VmHWM")
        closed = 0
        for sock in socks:
            sock.settimeout(1)
            try:
                closed += sock.recv(1) == b""
            except ConnectionResetError:
                closed += 1
            except TimeoutError:
                pass
            sock.close()
    return (peak - before) / 1024, closed, answered


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--value-mib", type=int, default=60)
    parser.add_argument("--budget-only", action="store_true", help="skip the server without a budget")
    args = parser.parse_args(argv)
    servers = [("default budget (1 GiB)", None), ("no budget", "0")][: 1 if args.budget_only else 2]
    for label, budget in servers:
        extra = () if budget is None else ("--max-clients-memory", budget)
        with server_process("--case", "resp", *extra) as server:
            growth, closed, answered = attack(server, args.clients, args.value_mib * MIB)
        print(
            f"{label}: {args.clients} clients x {args.value_mib} MiB: peak RSS grew {growth:.0f} MiB, "
            f"{closed} closed, honest client answered throughout: {answered}"
        )


if __name__ == "__main__":
    main()
