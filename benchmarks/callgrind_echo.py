"""Instructions per request, counted by callgrind: a deterministic figure
for small changes to the hot path that a timing would drown in noise.

    python benchmarks/callgrind_echo.py                      # 1 in flight and 32 pipelined
    python benchmarks/callgrind_echo.py --budget off         # without the client memory budget

``LengthSepEcho`` is served in-process over 50 socketpairs (no listener, no
kernel networking), 64-byte requests, the client side in the same process
(so it is counted too). Each figure is the instructions of a run of
``--rounds`` rounds minus those of a run of none (start-up, imports),
divided by the requests: what one more request costs. Needs valgrind.
``--child`` runs the workload itself (what valgrind is given).
"""

import argparse
import re
import shutil
import socket
import subprocess
import sys
from typing import List, Optional

CONNECTIONS = 50
BODY = b"x" * 64


def serve_rounds(pipeline: int, rounds: int, budget: bool) -> None:
    """The workload: ``rounds`` times, every connection sends ``pipeline``
    requests at once and the loop runs until every reply is back."""
    from evloop.protocols import LengthSepEcho

    from evloop import EventLoop, Server
    from evloop.limits import Limits

    loop = EventLoop()
    limits = Limits(max_clients_memory=(1 << 30) if budget else None)
    server = Server("127.0.0.1", 0, limits=limits)
    loop.add_server(server, LengthSepEcho)
    clients = []
    for number in range(CONNECTIONS):
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        LengthSepEcho(server, ours, ("127.0.0.1", 40000 + number)).start()
        clients.append(theirs)
    burst = (b"%d\n" % len(BODY) + BODY) * pipeline
    for _ in range(rounds):
        for client in clients:
            client.sendall(burst)
        waiting = {client: len(burst) for client in clients}
        while waiting:
            loop.run_once(0.1)
            for client in list(waiting):
                try:
                    waiting[client] -= len(client.recv(1 << 20, socket.MSG_DONTWAIT))
                except BlockingIOError:
                    continue
                if waiting[client] <= 0:
                    del waiting[client]
    loop.close()


def instructions(pipeline: int, rounds: int, budget: bool) -> int:
    command = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, __file__, "--child", "--pipeline", str(pipeline), "--rounds", str(rounds),
        "--budget", "on" if budget else "off",
    ]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, check=True).stderr
    found = re.search(r"Collected : (\d+)", output)
    if found is None:
        raise RuntimeError(f"no count from callgrind:\n{output[-2000:]}")
    return int(found.group(1))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--pipeline", type=int, action="append", help="requests in flight (repeatable)")
    parser.add_argument("--budget", choices=("on", "off"), default="on", help="the client memory budget")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    pipelines = args.pipeline or [1, 32]
    budget = args.budget == "on"
    if args.child:
        serve_rounds(pipelines[0], args.rounds, budget)
        return 0
    if shutil.which("valgrind") is None:
        print("callgrind_echo: valgrind is not installed", file=sys.stderr)
        return 2
    print(f"budget {args.budget}; {CONNECTIONS} connections, {len(BODY)}-byte requests, {args.rounds} rounds")
    for pipeline in pipelines:
        extra = instructions(pipeline, args.rounds, budget) - instructions(pipeline, 0, budget)
        per_request = extra / (args.rounds * CONNECTIONS * pipeline)
        print(f"{pipeline} in flight: {per_request:,.0f} instructions per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
