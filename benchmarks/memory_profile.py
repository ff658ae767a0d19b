"""Where an idle evloop connection's memory goes, line by line.

    python benchmarks/memory_profile.py --connections 2000

An evloop server (LengthSepEcho, or ``--handler json``) runs on a thread of
this process under :mod:`tracemalloc`; the C load generator, in hold mode,
opens the connections from another process, so only the server's
allocations are counted. Two snapshots are compared with the one taken
before: once every connection is accepted and has sent nothing, and once
each has been answered one request. Printed: bytes per connection by the
source line that allocated them. (RSS, which ``benchmarks/run.py`` reports,
adds the allocator's rounding and free space to these.)
"""

import argparse
import gc
import json
import os
import subprocess
import sys
import threading
import tracemalloc

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from benchmarks import run  # noqa: E402
from evloop import EventLoop, Limits, Server  # noqa: E402

__all__ = ["main"]


def _on_loop(loop, function):
    done = threading.Event()
    box = []

    def call():
        box.append(function())
        done.set()

    loop.call_soon_threadsafe(call)
    if not done.wait(30):
        raise RuntimeError("the loop did not answer")
    return box[0]


def _snapshot(loop):
    # Taken on the loop's thread, between passes, after a full collection.
    def take():
        gc.collect()
        return tracemalloc.take_snapshot()

    return _on_loop(loop, take)


def _wait_for(loop, count, timeout=60.0):
    """Until the loop holds ``count`` handlers (checked on its own thread)."""
    reached = threading.Event()
    deadline = [None]

    def check():
        if deadline[0] is None:
            deadline[0] = loop.time() + timeout
        if len(loop.handlers) >= count:
            reached.set()
        elif loop.time() < deadline[0]:
            loop.call_later(0.01, check)

    loop.call_soon_threadsafe(check)
    return reached.wait(timeout + 5)


def _print_top(title, before, after, count, top):
    stats = after.compare_to(before, "lineno")
    total = sum(stat.size_diff for stat in stats)
    print(f"\n{title}: {total / count:.0f} bytes per connection (tracemalloc)")
    print(f"{'bytes':>7} {'objects':>7}  allocated at")
    for stat in stats[:top]:
        if abs(stat.size_diff) < count:  # under a byte per connection
            continue
        frame = stat.traceback[0]
        name = frame.filename
        name = os.path.relpath(name, run.ROOT) if name.startswith(run.ROOT) else os.path.basename(name)
        where = f"{name}:{frame.lineno}"
        print(f"{stat.size_diff / count:7.1f} {stat.count_diff / count:7.2f}  {where}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--handler", choices=["echo", "json"], default="echo")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args(argv)
    run.raise_fd_limit()
    loadgen = run.build_loadgen()
    if args.handler == "json":
        from evloop.protocols.jsonmsg import JsonEcho

        handler = JsonEcho
    else:
        from evloop.protocols import LengthSepEcho

        handler = LengthSepEcho
    loop = EventLoop()
    # The connections come from 8 loopback addresses: no per-address cap.
    server = Server("127.0.0.1", 0, limits=Limits(max_connections_per_peer=None))
    loop.add_server(server, handler)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    count = args.connections
    tracemalloc.start()
    try:
        # Warm up the code paths and the allocator, as the benchmark does.
        warm = subprocess.run(
            [
                loadgen,
                "--port",
                str(server.port),
                "--mode",
                "echo",
                "--clients",
                "50",
                "--warmup",
                "0",
                "--duration",
                "0.2",
            ],
            capture_output=True,
            timeout=60,
        )
        if warm.returncode != 0:
            raise RuntimeError(f"warm-up failed: {warm.stdout!r}")
        _on_loop(loop, lambda: None)
        if not _wait_for_zero(loop):
            raise RuntimeError("the warm-up connections did not close")
        before = _snapshot(loop)
        client = subprocess.Popen(
            [
                loadgen,
                "--port",
                str(server.port),
                "--mode",
                "hold",
                "--clients",
                str(count),
                "--silent",
                "1",
                "--sources",
                "8",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            held = json.loads(client.stdout.readline())
            if held["held"] != count or not _wait_for(loop, count):
                raise RuntimeError(f"only {held['held']} connections held")
            idle = _snapshot(loop)
            client.stdin.write("serve\n")
            client.stdin.flush()
            served = json.loads(client.stdout.readline())
            if served["served"] != count:
                raise RuntimeError(f"only {served['served']} connections served")
            answered = _snapshot(loop)
        finally:
            client.stdin.close()
            client.wait(30)
    finally:
        tracemalloc.stop()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
    name = handler.__name__
    _print_top(f"{name}, {count} connections, accepted, nothing sent yet", before, idle, count, args.top)
    _print_top(f"{name}, {count} connections, each answered once", before, answered, count, args.top)
    return 0


def _wait_for_zero(loop, timeout=30.0):
    reached = threading.Event()

    def check():
        if not loop.handlers:
            reached.set()
        else:
            loop.call_later(0.01, check)

    loop.call_soon_threadsafe(check)
    return reached.wait(timeout)


if __name__ == "__main__":
    sys.exit(main())
