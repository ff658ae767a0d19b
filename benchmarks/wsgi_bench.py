"""evloop's WSGI server against waitress and gunicorn, measured with wrk.

    python benchmarks/wsgi_bench.py                       # the full run
    python benchmarks/wsgi_bench.py --duration 1 --servers evloop,waitress   # a quick look

Every server serves the same Flask application (benchmarks/wsgi_apps.py):
``/`` is Flask's hello world, ``/stream`` a 1 MiB streamed response. Each
server process is pinned to one core (``taskset -c 0``) and wrk to another
(``-c 1``); every threaded server gets the same ``--threads``:

- evloop: ``python -m evloop serve --wsgi ... --threads N --no-access-log``
  (the others write no access log by default either);
- waitress: ``waitress-serve --threads N``;
- gunicorn sync: one worker process (the sync worker has no threads);
- gunicorn gthread: one worker with ``--threads N``.

For each server and path: wrk's requests/s and its p50/p99 latency, best of
``--runs``, and the server's CPU time per request (user + system, all its
threads and child processes, over that run, from ``/proc``): on a machine
that is not quiet, requests/s say little, CPU per request still compares
the servers. The table is printed as Markdown. Servers that are not
installed are skipped with a note. Nothing is asserted here: the numbers
only mean something on a quiet machine.
"""

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

__all__ = ["main", "parse_wrk"]

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.run import task_time  # noqa: E402  (run as a script: the repo root on the path)

APP = "benchmarks.wsgi_apps:app"
PATHS = {"hello": "/", "stream 1 MiB": "/stream"}


def server_commands(threads: int, port: int) -> Dict[str, List[str]]:
    python = sys.executable
    bind = f"127.0.0.1:{port}"
    return {
        "evloop": [
            python, "-m", "evloop", "serve", "--wsgi", APP, "--host", "127.0.0.1", "--port", str(port),
            "--threads", str(threads), "--log-level", "warning", "--no-access-log",
        ],
        "waitress": [
            python, "-m", "waitress", f"--listen={bind}", f"--threads={threads}", APP,
        ],
        "gunicorn sync": [
            python, "-m", "gunicorn", "-b", bind, "-w", "1", "-k", "sync", "--log-level", "warning", APP,
        ],
        "gunicorn gthread": [
            python, "-m", "gunicorn", "-b", bind, "-w", "1", "-k", "gthread", "--threads", str(threads),
            "--log-level", "warning", APP,
        ],
    }  # fmt: skip


INSTALLED = {
    "evloop": "flask",
    "waitress": "waitress",
    "gunicorn sync": "gunicorn",
    "gunicorn gthread": "gunicorn",
}


def is_installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None and importlib.util.find_spec("flask") is not None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_listening(port: int, process: "subprocess.Popen[bytes]", timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the server did not start listening")


def pinned(command: List[str], core: int) -> List[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(core), *command]
    return command


def _to_ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse_wrk(output: str) -> Dict[str, Optional[float]]:
    """requests/s, p50 and p99 (ms), the error count and the number of
    requests from wrk --latency."""
    found: Dict[str, Optional[float]] = dict.fromkeys(("rps", "p50", "p99", "requests"))
    found["errors"] = 0.0
    match = re.search(r"^\s*(\d+) requests in ", output, re.M)
    if match:
        found["requests"] = float(match.group(1))
    match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if match:
        found["rps"] = float(match.group(1))
    for name in ("50", "99"):
        match = re.search(rf"^\s+{name}%\s+([\d.]+(?:us|ms|s))\s*$", output, re.M)
        if match:
            found["p" + name] = _to_ms(match.group(1))
    match = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = int(match.group(1)) if match else 0
    match = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if match:
        errors += sum(int(group) for group in match.groups())
    found["errors"] = float(errors)
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid``, its threads and its living
    descendants (gunicorn's worker), from /proc; 0 where there is none."""
    ticks = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            ticks += task_time(current)
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
        except (OSError, IndexError, ValueError):
            continue
    return ticks / os.sysconf("SC_CLK_TCK")


def run_wrk(port: int, path: str, args: argparse.Namespace, pid: int) -> Dict[str, Optional[float]]:
    command = pinned(
        [
            "wrk", f"-t{args.wrk_threads}", f"-c{args.connections}", f"-d{args.duration}s", "--latency",
            f"http://127.0.0.1:{port}{path}",
        ],
        1,
    )  # fmt: skip
    before = cpu_seconds(pid)
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.duration + 60)
    found = parse_wrk(done.stdout)
    cpu = cpu_seconds(pid) - before
    found["cpu_us"] = cpu / found["requests"] * 1e6 if found["requests"] and cpu > 0 else None
    return found


def measure(name: str, command: List[str], args: argparse.Namespace, port: int) -> Dict[str, Dict]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen(pinned(command, 0), cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    results: Dict[str, Dict] = {}
    try:
        wait_until_listening(port, process)
        for label, path in PATHS.items():
            if label not in args.paths:
                continue
            runs = [run_wrk(port, path, args, process.pid) for _ in range(args.runs)]
            results[label] = max(runs, key=lambda run: run["rps"] or 0)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return results


def table(all_results: Dict[str, Dict[str, Dict]]) -> str:
    lines = [
        "| server | path | requests/s | p50 ms | p99 ms | server CPU µs/request | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, results in all_results.items():
        for label, found in results.items():
            rps = f"{found['rps']:,.0f}" if found["rps"] else "-"
            p50 = f"{found['p50']:.2f}" if found["p50"] is not None else "-"
            p99 = f"{found['p99']:.2f}" if found["p99"] is not None else "-"
            cpu = f"{found['cpu_us']:.0f}" if found.get("cpu_us") is not None else "-"
            lines.append(f"| {name} | {label} | {rps} | {p50} | {p99} | {cpu} | {found['errors']:.0f} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of wrk per measurement")
    parser.add_argument("--runs", type=int, default=3, help="measurements per case; the best is kept")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--threads", type=int, default=4, help="application threads of every threaded server")
    parser.add_argument(
        "--servers", default=",".join(INSTALLED), help="comma-separated, of: " + ", ".join(INSTALLED)
    )
    parser.add_argument("--paths", default=",".join(PATHS), help="comma-separated, of: " + ", ".join(PATHS))
    args = parser.parse_args(argv)
    args.paths = args.paths.split(",")
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    all_results = {}
    for name in args.servers.split(","):
        if name not in INSTALLED:
            parser.error(f"unknown server {name!r}")
        if not is_installed(INSTALLED[name]):
            print(
                f"skipping {name}: {INSTALLED[name]} is not installed (pip install '.[bench]')",
                file=sys.stderr,
            )
            continue
        port = free_port()
        all_results[name] = measure(name, server_commands(args.threads, port)[name], args, port)
        print(f"measured {name}", file=sys.stderr, flush=True)
    print(f"wrk -t{args.wrk_threads} -c{args.connections} -d{args.duration}s, best of {args.runs}; "
          f"{args.threads} application threads; servers on core 0, wrk on core 1")  # fmt: skip
    print(table(all_results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
