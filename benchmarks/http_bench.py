"""HTTP hello world: evloop (each parser) against uvicorn (h11, and
httptools + uvloop), measured with wrk in one run.

    python benchmarks/http_bench.py                       # the full run
    python benchmarks/http_bench.py --duration 1 --rounds 1 --servers evloop-httptools

Each server is a subprocess on 127.0.0.1 pinned to one CPU (``--server-cpu``,
default 0), wrk (Debian's package) is pinned to another (``--wrk-cpu``,
default 1) and runs ``wrk -t1 -cN -dS --latency``. Every server answers
``GET /`` with ``Hello, World!`` (text/plain, keep-alive) and writes no
access log. A round measures every server once, in turn; the table gives
the best round's requests/s and that round's p50/p99 latency. The goals
(issue 13): evloop-httptools >= 1.2x uvicorn-standard, evloop-h11 >= 1.4x
uvicorn-h11.

Numbers depend on the machine and on what else runs on it: compare them
only within one run on a quiet machine.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
BODY = b"Hello, World!"

# name -> (what it is, the --serve argument)
SERVERS = {
    "evloop-httptools": "evloop.protocols.http, httptools parser",
    "evloop-h11": "evloop.protocols.http, h11 parser",
    "uvicorn-standard": "uvicorn[standard]: httptools + uvloop",
    "uvicorn-h11": "uvicorn, h11 + asyncio",
}
GOALS = [("evloop-httptools", "uvicorn-standard", 1.2), ("evloop-h11", "uvicorn-h11", 1.4)]


# -- the servers (run in the subprocess) -------------------------------------------


def serve_evloop(parser: str, port: int) -> None:
    from evloop.protocols.http import HTTPHandler

    from evloop import Server, loop

    class Hello(HTTPHandler):
        http_parser = parser
        access_log = None
        routes = {"/": lambda request: "Hello, World!"}

    server = Server("127.0.0.1", port)
    print(f"listening on {server.host}:{server.port}", flush=True)
    loop(server, Hello)


async def asgi_hello(scope: Dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"13")],
        }
    )
    await send({"type": "http.response.body", "body": BODY})


def serve_uvicorn(http: str, event_loop: str, port: int) -> None:
    import socket

    import uvicorn

    if port == 0:
        # uvicorn binds its own socket (given one with sockets=, its h11
        # mode ran 3x slower here): a free port is found first.
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    print(f"listening on 127.0.0.1:{port}", flush=True)
    uvicorn.run(
        asgi_hello,
        host="127.0.0.1",
        port=port,
        http=http,
        loop=event_loop,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )


def serve(name: str, port: int) -> None:
    if name == "evloop-httptools":
        serve_evloop("httptools", port)
    elif name == "evloop-h11":
        serve_evloop("h11", port)
    elif name == "uvicorn-standard":
        serve_uvicorn("httptools", "uvloop", port)
    elif name == "uvicorn-h11":
        serve_uvicorn("h11", "asyncio", port)
    else:
        raise SystemExit(f"unknown server {name!r}")


# -- the driver -------------------------------------------------------------------------


def pinned(cpu: Optional[int]) -> Any:
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def start(name: str, cpu: Optional[int]) -> "tuple[subprocess.Popen[str], int]":
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", name],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=pinned(cpu),
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"listening on \S+:(\d+)", line)
    if not match:
        process.kill()
        raise SystemExit(f"{name} did not start: {line!r}")
    port = int(match.group(1))
    check(name, port)
    return process, port


def check(name: str, port: int) -> None:
    """One request, to know the server answers what the others answer."""
    import http.client

    deadline = time.monotonic() + 10
    while True:
        try:
            client = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            client.request("GET", "/")
            reply = client.getresponse()
            body = reply.read()
            client.close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    if reply.status != 200 or body != BODY:
        raise SystemExit(f"{name} answered {reply.status} {body!r}")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _milliseconds(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def run_wrk(port: int, args: argparse.Namespace) -> Dict[str, Any]:
    command = [
        "wrk",
        "-t1",
        f"-c{args.connections}",
        f"-d{args.duration}s",
        "--latency",
        f"http://127.0.0.1:{port}/",
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=args.duration + 60, preexec_fn=pinned(args.wrk_cpu)
    )
    out = done.stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    if not (rate and p50 and p99):
        raise SystemExit(f"could not read wrk's output:\n{out}\n{done.stderr}")
    return {
        "requests_per_second": float(rate.group(1)),
        "p50_ms": _milliseconds(p50.group(1)),
        "p99_ms": _milliseconds(p99.group(1)),
        "errors": errors.group(0) if errors else "",
    }


def measure(args: argparse.Namespace) -> Dict[str, Dict[str, Any]]:
    best: Dict[str, Dict[str, Any]] = {}
    for round_number in range(args.rounds):
        for name in args.servers:
            process, port = start(name, args.server_cpu)
            try:
                if args.warmup:
                    run_wrk(port, argparse.Namespace(**{**vars(args), "duration": args.warmup}))
                result = run_wrk(port, args)
            finally:
                process.terminate()
                process.wait(10)
            print(
                f"round {round_number + 1} {name:18} {result['requests_per_second']:10.0f} req/s"
                f"  p50 {result['p50_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms {result['errors']}",
                file=sys.stderr,
                flush=True,
            )
            if name not in best or result["requests_per_second"] > best[name]["requests_per_second"]:
                best[name] = result
    return best


def table(best: Dict[str, Dict[str, Any]]) -> str:
    lines = ["| server | requests/s | p50 | p99 |", "|---|---|---|---|"]
    for name, result in best.items():
        lines.append(
            f"| {name} ({SERVERS[name]}) | {result['requests_per_second']:.0f} "
            f"| {result['p50_ms']:.2f} ms | {result['p99_ms']:.2f} ms |"
        )
    for ours, theirs, goal in GOALS:
        if ours in best and theirs in best:
            ratio = best[ours]["requests_per_second"] / best[theirs]["requests_per_second"]
            verdict = "met" if ratio >= goal else "NOT met"
            lines.append(f"\n{ours} / {theirs}: {ratio:.2f}x (goal {goal}x: {verdict})")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=list(SERVERS))
    parser.add_argument("--duration", type=float, default=10, help="seconds of each measurement (default 10)")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of load before each (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every server (default 3)")
    parser.add_argument("--connections", type=int, default=50, help="wrk -c (default 50)")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--wrk-cpu", type=int, default=1)
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port)
        return 0
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    args.duration = max(1, round(args.duration))
    args.warmup = round(args.warmup)
    best = measure(args)
    print(table(best))
    if args.json:
        Path(args.json).write_text(json.dumps(best, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
