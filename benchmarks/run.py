"""Benchmark evloop against its peers; print a table; write docs/benchmarks.md.

    python benchmarks/run.py            # the full suite, about 15 minutes
    python benchmarks/run.py --quick    # one short run of everything, about 2 minutes

Theory of operation. A small C load generator (``benchmarks/loadgen.c``,
built with gcc into ``benchmarks/build/``) drives one server process at a
time (``benchmarks/peers.py``: evloop or a peer, all speaking the same wire
protocol with the same per-request work). On a machine with two cores or
more the server is pinned to one core and the load generator to another;
the load generator reads the server's CPU time from ``/proc`` over the
measured window and reports its own next to it, so a saturated client shows.
Every workload runs ``--runs`` rounds; within a round each implementation
runs once, in turn, so a ratio to asyncio ``Protocol`` compares two servers
measured minutes apart at most. The median over rounds is reported with the
spread (min-max).

Nothing is installed at run time: the peers come from the ``bench`` extra
(``pip install -e '.[bench]'``); a peer that is not installed is reported
as missing and skipped.
"""

import argparse
import json
import os
import platform
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from benchmarks import report  # noqa: E402

__all__ = ["WORKLOADS", "ServerProcess", "build_loadgen", "main"]

BUILD_DIR = os.path.join(HERE, "build")
LOADGEN_SOURCE = os.path.join(HERE, "loadgen.c")
LOADGEN = os.path.join(BUILD_DIR, "loadgen")
PEERS = os.path.join(HERE, "peers.py")
RESULTS = os.path.join(HERE, "results", "latest.json")

BASELINE = "asyncio-protocol"
ECHO_IMPLS = ["evloop", "asyncio-protocol", "asyncio-streams", "uvloop", "threading", "twisted"]
JSON_IMPLS = [*ECHO_IMPLS, "jsocket"]
# evloop with its idle, request and write timeouts off (none of the peers has
# them): where they cost the most, a connection each, it runs as well.
REFERENCE = "evloop-notimeouts"
CONN_IMPLS = ["evloop", REFERENCE, *ECHO_IMPLS[1:]]
ALL_IMPLS = ["evloop", REFERENCE, *JSON_IMPLS[1:]]
PEER_MODULES = {"uvloop": "uvloop", "twisted": "twisted", "jsocket": "jsocket"}

# name: (title, server workload, load generator arguments, implementations)
WORKLOADS = {
    "echo-1": (
        "LengthSepEcho, 50 clients, 1 request in flight, 64-byte bodies",
        "echo",
        ["--mode", "echo", "--clients", "50", "--depth", "1", "--size", "64"],
        ECHO_IMPLS,
    ),
    "echo-32": (
        "LengthSepEcho, 50 clients, 32 requests in flight each, 64-byte bodies",
        "echo",
        ["--mode", "echo", "--clients", "50", "--depth", "32", "--size", "64"],
        ECHO_IMPLS,
    ),
    "echo-16k": (
        "LengthSepEcho, 50 clients, 1 request in flight, 16 KiB bodies",
        "echo",
        ["--mode", "echo", "--clients", "50", "--depth", "1", "--size", "16384"],
        ECHO_IMPLS,
    ),
    "conn": (
        "LengthSepBody, a connection per request, 50 at a time, 64-byte bodies",
        "body",
        ["--mode", "conn", "--clients", "50", "--size", "64", "--sources", "16"],
        CONN_IMPLS,
    ),
    "json": (
        "JSON messages (JSN1), 50 clients, 1 request in flight, 86-byte payload",
        "json",
        ["--mode", "json", "--clients", "50", "--depth", "1"],
        JSON_IMPLS,
    ),
}
THROUGHPUT = list(WORKLOADS)
EXTRA = ["idle", "held", "scaling"]
ALL_WORKLOADS = THROUGHPUT + EXTRA
SCALING_IMPLS = [("evloop", "select"), ("evloop", "epoll"), ("asyncio-protocol", "epoll")]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- building and pinning -------------------------------------------------------


def build_loadgen(force: bool = False) -> str:
    """Compile the load generator if its binary is missing or older than its
    source; return its path. Raises RuntimeError without gcc."""
    if (
        not force
        and os.path.exists(LOADGEN)
        and os.path.getmtime(LOADGEN) >= os.path.getmtime(LOADGEN_SOURCE)
    ):
        return LOADGEN
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise RuntimeError("the load generator needs a C compiler (gcc) on PATH")
    os.makedirs(BUILD_DIR, exist_ok=True)
    subprocess.run([compiler, "-O2", "-Wall", "-o", LOADGEN, LOADGEN_SOURCE], check=True)
    return LOADGEN


def cpu_plan() -> tuple:
    """(server cpus, load generator cpus): separate cores when there are two."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return None, None
    if len(cpus) < 2:
        return None, None
    return {cpus[0]}, {cpus[1]}


SERVER_CPUS, LOADGEN_CPUS = cpu_plan()


def _pinned(cpus):
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# -- one server -------------------------------------------------------------------


class ServerFailedError(RuntimeError):
    """The server did not start, or died during the measurement."""


class ServerProcess:
    """``peers.py IMPL WORKLOAD`` in a child process pinned to the server core;
    ``port`` is parsed from its ``listening on HOST:PORT`` line."""

    def __init__(self, impl: str, workload: str, selector: str | None = None, log_dir: str | None = None):
        command = [sys.executable, PEERS, impl, workload, "--port", "0"]
        if selector:
            command += ["--selector", selector]
        self.name = impl if not selector else f"{impl}/{selector}"
        log_dir = log_dir or os.path.join(HERE, "build")
        os.makedirs(log_dir, exist_ok=True)
        self.stderr_path = os.path.join(log_dir, f"server-{impl}-{workload}.log")
        self._stderr = open(self.stderr_path, "wb")
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=self._stderr, preexec_fn=_pinned(SERVER_CPUS), cwd=ROOT
        )
        self.pid = self.process.pid
        self.port = self._wait_listening(timeout=30)

    def _wait_listening(self, timeout: float) -> int:
        out = self.process.stdout
        ready, _, _ = select.select([out], [], [], timeout)
        line = out.readline().decode() if ready else ""
        if not line.startswith("listening on "):
            self.stop()
            raise ServerFailedError(f"{self.name} did not start: {line!r} {self.stderr_tail()}")
        return int(line.rsplit(":", 1)[1])

    def alive(self) -> bool:
        return self.process.poll() is None

    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise ServerFailedError(f"{self.name}: no VmRSS")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def stderr_tail(self, lines: int = 3) -> str:
        self._stderr.flush()
        with open(self.stderr_path, "rb") as err:
            text = err.read().decode("utf-8", "replace").strip().splitlines()
        return " | ".join(text[-lines:])

    def stop(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()
        self._stderr.close()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def run_loadgen(args: list, server: ServerProcess, timeout: float) -> dict:
    command = [LOADGEN, "--port", str(server.port), "--server-pid", str(server.pid), *args]
    done = subprocess.run(command, capture_output=True, timeout=timeout, preexec_fn=_pinned(LOADGEN_CPUS))
    lines = done.stdout.decode().strip().splitlines()
    if not lines:
        raise ServerFailedError(f"load generator printed nothing: {done.stderr.decode()[-300:]}")
    result = json.loads(lines[-1])
    if (result.get("errors") and result["mode"] != "conn") or not result.get("requests"):
        why = result.get("first_error") or "no requests completed"
        try:
            # A server that crashed closes its connections just before it exits.
            server.process.wait(3)
        except subprocess.TimeoutExpired:
            pass
        state = "server died" if not server.alive() else "server log"
        tail = server.stderr_tail(1)
        raise ServerFailedError(f"{server.name}: {why}" + (f" ({state}: {tail})" if tail else ""))
    return result


def summarise(result: dict) -> dict:
    seconds, requests = result["seconds"], result["requests"]
    return {
        "rate": requests / seconds,
        "server_cpu": result["server_cpu"] / seconds,
        "loadgen_cpu": result["loadgen_cpu"] / seconds,
        "server_us": result["server_cpu"] / requests * 1e6 if result["server_cpu"] >= 0 else None,
        "errors": result.get("errors", 0),
    }


# -- workloads --------------------------------------------------------------------


def available(impl: str) -> bool:
    module = PEER_MODULES.get(impl)
    if module is None:
        return True
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def run_throughput(name: str, impls: list, settings: dict) -> dict:
    title, server_workload, args, candidates = WORKLOADS[name]
    impls = [impl for impl in candidates if impl in impls]
    timing = ["--warmup", str(settings["warmup"]), "--duration", str(settings["duration"])]
    rounds = []
    failures = {}
    for round_index in range(settings["runs"]):
        row = {}
        for impl in impls:
            try:
                with ServerProcess(impl, server_workload, log_dir=settings["log_dir"]) as server:
                    row[impl] = summarise(run_loadgen(args + timing, server, timeout=120))
            except (ServerFailedError, subprocess.TimeoutExpired) as exc:
                failures[impl] = str(exc)
                continue
            log(
                f"  {name} round {round_index + 1} {impl:17s} {row[impl]['rate']:10.0f}/s  "
                f"server {row[impl]['server_cpu']:4.0%}  loadgen {row[impl]['loadgen_cpu']:4.0%}"
            )
        rounds.append(row)
    return {"title": title, "impls": impls, "rounds": rounds, "failures": failures}


def run_idle(impls: list, settings: dict) -> dict:
    """Server RSS per idle connection, each connection having been served once."""
    count = settings["idle_connections"]
    impls = [impl for impl in CONN_IMPLS if impl in impls]
    rounds, failures = [], {}
    for round_index in range(settings["runs"]):
        row = {}
        for impl in impls:
            try:
                row[impl] = measure_held(impl, count, settings)
            except (ServerFailedError, subprocess.TimeoutExpired, OSError) as exc:
                failures[impl] = str(exc)
                continue
            log(
                f"  idle round {round_index + 1} {impl:17s} "
                f"{row[impl]['per_connection_silent']:8.0f} bytes per connection before its "
                f"first request, {row[impl]['per_connection']:8.0f} after ({row[impl]['served']} served)"
            )
        rounds.append(row)
    return {
        "title": f"Memory per idle connection, {count:,} connections",
        "impls": impls,
        "connections": count,
        "rounds": rounds,
        "failures": failures,
    }


def _hold_clients(server: ServerProcess, total: int, settings: dict, silent: bool = True) -> list:
    """Start enough load generators in hold mode for ``total`` connections;
    each keeps under its own descriptor limit and its own source addresses."""
    per_process = max(1, min(total, settings["fd_limit"] - 200))
    clients = []
    first, source = 0, 1
    while first < total:
        count = min(per_process, total - first)
        command = [
            LOADGEN,
            "--port",
            str(server.port),
            "--mode",
            "hold",
            "--clients",
            str(count),
            "--sources",
            "8",
            "--source-first",
            str(source),
            "--silent",
            str(int(silent)),
            "--timeout",
            str(settings["hold_timeout"]),
        ]
        clients.append(
            subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, preexec_fn=_pinned(LOADGEN_CPUS)
            )
        )
        first += count
        source += 8
    return clients


def _read_json_line(process, timeout: float) -> dict:
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        raise ServerFailedError("load generator did not report in time")
    line = process.stdout.readline()
    if not line:
        raise ServerFailedError("load generator exited without a report")
    return json.loads(line)


def _wait_fds(server: ServerProcess, done, timeout: float = 30.0) -> int:
    """Poll the server's descriptor count until ``done(count)``; return it."""
    deadline = time.monotonic() + timeout
    count = server.open_fds()
    while not done(count) and time.monotonic() < deadline and server.alive():
        time.sleep(0.05)  # the server accepts (or closes) at its own pace
        count = server.open_fds()
    return count


def measure_held(impl: str, count: int, settings: dict) -> dict:
    """Open ``count`` connections that send nothing, then one request on
    each: the server's RSS growth per connection at both points."""
    with ServerProcess(impl, "echo", log_dir=settings["log_dir"]) as server:
        # Warm the server's code paths and allocator with a few clients first.
        warm = _hold_clients(server, 50, settings, silent=False)
        _read_json_line(warm[0], settings["hold_timeout"] + 10)
        peak_fds = server.open_fds()  # every warm-up client has had its reply
        warm[0].stdin.close()
        warm[0].wait(10)
        base_fds = _wait_fds(server, lambda n: n <= peak_fds - 50)
        base_rss = server.rss_kib()
        clients = _hold_clients(server, count, settings)
        held_reports, served_reports = [], []
        try:
            held_reports = [_read_json_line(c, settings["hold_timeout"] + 30) for c in clients]
            held = sum(r["held"] for r in held_reports)
            held_fds = _wait_fds(server, lambda n: n >= base_fds + held) - base_fds
            held_rss = server.rss_kib()
            for client in clients:
                client.stdin.write(b"serve\n")
                client.stdin.flush()
            served_reports = [_read_json_line(c, settings["hold_timeout"] + 30) for c in clients]
            served = sum(r["served"] for r in served_reports)
            served_rss = server.rss_kib()
            alive = server.alive()
        finally:
            for client in clients:
                try:
                    client.stdin.close()
                except OSError:
                    pass
                client.wait(30)
        errors = [r["first_error"] for r in held_reports + served_reports if r["first_error"]]
        return {
            "asked": count,
            "held": held,
            "served": served,
            "server_fds": held_fds,
            "base_rss_kib": base_rss,
            "held_rss_kib": held_rss,
            "served_rss_kib": served_rss,
            "per_connection_silent": (held_rss - base_rss) * 1024 / max(held_fds, 1),
            "per_connection": (served_rss - base_rss) * 1024 / max(served, 1),
            "alive": alive,
            "errors": errors[:3],
        }


def run_held(impls: list, settings: dict) -> dict:
    """Can evloop hold (and then serve) the connection count the issue asks for?"""
    wanted = settings["held_connections"]
    # The server needs a descriptor per connection plus a few of its own.
    possible = settings["fd_limit"] - 64
    count = min(wanted, possible)
    result = {"wanted": wanted, "asked": count, "fd_limit": settings["fd_limit"]}
    if "evloop" in impls:
        try:
            result.update(measure_held("evloop", count, settings))
        except (ServerFailedError, subprocess.TimeoutExpired, OSError) as exc:
            result["failure"] = str(exc)
    log(f"  held: {result}")
    return result


def run_scaling(impls: list, settings: dict) -> dict:
    """50 active clients (one request at a time) among N connections."""
    sizes = settings["scaling"]
    timing = ["--warmup", str(settings["warmup"]), "--duration", str(settings["duration"])]
    cases = [(impl, sel) for impl, sel in SCALING_IMPLS if impl in impls]
    table = {}
    for total in sizes:
        active = min(50, total)
        args = [
            "--mode",
            "echo",
            "--clients",
            str(active),
            "--idle",
            str(total - active),
            "--sources",
            "8",
            *timing,
        ]
        for impl, sel in cases:
            name = f"{impl}/{sel}"
            samples, failure = [], None
            for _ in range(settings["runs"]):
                try:
                    with ServerProcess(impl, "echo", selector=sel, log_dir=settings["log_dir"]) as server:
                        samples.append(summarise(run_loadgen(args, server, timeout=180)))
                except (ServerFailedError, subprocess.TimeoutExpired) as exc:
                    failure = str(exc)
                    break
            table.setdefault(name, {})[str(total)] = {"samples": samples, "failure": failure}
            if samples:
                log(
                    f"  scaling {total:6d} {name:24s} "
                    f"{statistics.median(s['rate'] for s in samples):9.0f}/s  "
                    f"{statistics.median(s['server_us'] for s in samples):6.1f} us/request"
                )
            else:
                log(f"  scaling {total:6d} {name:24s} failed: {failure}")
    return {"sizes": sizes, "cases": [f"{i}/{s}" for i, s in cases], "table": table}


# -- the environment, for the report ----------------------------------------------


def environment() -> dict:
    def version(module):
        try:
            from importlib.metadata import version as dist_version

            return dist_version(module)
        except Exception:
            return "not installed"

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit = ""
    gcc = subprocess.run(
        [shutil.which("gcc") or "cc", "--version"], capture_output=True, text=True
    ).stdout.splitlines()
    return {
        "cpu": report.cpu_model(),
        "cpus": os.cpu_count(),
        "pinning": (
            f"server on CPU {sorted(SERVER_CPUS)[0]}, load generator on CPU {sorted(LOADGEN_CPUS)[0]}"
        )
        if SERVER_CPUS
        else "not pinned (one core)",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
        "gcc": gcc[0] if gcc else "",
        "versions": {name: version(name) for name in ("uvloop", "twisted", "jsocket", "matplotlib")},
        "commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        "load_before": os.getloadavg(),
    }


# -- main ---------------------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="one short round of everything, smaller connection counts"
    )
    parser.add_argument("--runs", type=int, help="rounds per workload (default 3; quick 1)")
    parser.add_argument("--duration", type=float, help="measured seconds per run (default 2)")
    parser.add_argument("--warmup", type=float, help="seconds before measuring (default 0.5)")
    parser.add_argument(
        "--workloads",
        default=",".join(ALL_WORKLOADS),
        help=f"comma-separated, from {','.join(ALL_WORKLOADS)}",
    )
    parser.add_argument(
        "--impls", default=",".join(ALL_IMPLS), help=f"comma-separated, from {','.join(ALL_IMPLS)}"
    )
    parser.add_argument("--idle-connections", type=int, help="default 10000 (quick 2000)")
    parser.add_argument("--held-connections", type=int, help="default 50000 (quick 3000)")
    parser.add_argument("--scaling", help="connection counts, default 100,1000,3000,10000")
    parser.add_argument(
        "--docs-dir", default=os.path.join(ROOT, "docs"), help="where benchmarks.md and benchmarks.png go"
    )
    parser.add_argument("--no-docs", action="store_true", help="print the table only")
    parser.add_argument(
        "--results",
        default=None,
        help=f"raw results as JSON (default {os.path.relpath(RESULTS, ROOT)}, not written with --no-docs)",
    )
    parser.add_argument(
        "--from-results", action="store_true", help="do not measure: rewrite the report from --results"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    settings = {
        "runs": args.runs or (1 if quick else 3),
        "duration": args.duration or (0.5 if quick else 2.0),
        "warmup": args.warmup if args.warmup is not None else (0.2 if quick else 0.5),
        "idle_connections": args.idle_connections or (2000 if quick else 10000),
        "held_connections": args.held_connections or (3000 if quick else 50000),
        "scaling": [
            int(n) for n in (args.scaling or ("100,1000" if quick else "100,1000,3000,10000")).split(",")
        ],
        "hold_timeout": 60,
        "log_dir": BUILD_DIR,
    }
    workloads = [w for w in args.workloads.split(",") if w]
    impls = [i for i in args.impls.split(",") if i]
    unknown = sorted(set(workloads) - set(ALL_WORKLOADS)) + sorted(set(impls) - set(ALL_IMPLS))
    if unknown:
        parser.error(f"unknown workload or implementation: {', '.join(unknown)}")
    return args, settings, workloads, impls


def main(argv=None) -> int:
    args, settings, workloads, impls = parse_args(argv)
    if args.results is None and (args.from_results or not args.no_docs):
        # A small --no-docs run must not overwrite the results the page came from.
        args.results = RESULTS
    if args.from_results:
        with open(args.results) as saved:
            results = json.load(saved)
    else:
        settings["fd_limit"] = raise_fd_limit()
        build_loadgen()
        missing = [impl for impl in impls if not available(impl)]
        if missing:
            log(f"not installed, skipped: {', '.join(missing)} (pip install -e '.[bench]')")
        impls = [impl for impl in impls if impl not in missing]
        results = {
            "settings": {k: v for k, v in settings.items() if k != "log_dir"},
            "command": " ".join(["python", "benchmarks/run.py"] + (argv or sys.argv[1:])),
            "environment": environment(),
            "missing": missing,
            "workloads": {},
        }
        started = time.monotonic()
        for name in workloads:
            log(f"{name}:")
            if name in WORKLOADS:
                results["workloads"][name] = run_throughput(name, impls, settings)
            elif name == "idle":
                results["workloads"][name] = run_idle(impls, settings)
            elif name == "held":
                results["workloads"][name] = run_held(impls, settings)
            elif name == "scaling":
                results["workloads"][name] = run_scaling(impls, settings)
        results["elapsed"] = time.monotonic() - started
        results["environment"]["load_after"] = os.getloadavg()
        if args.results:
            os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
            with open(args.results, "w") as saved:
                json.dump(results, saved, indent=1)
    print(report.text_table(results))
    if not args.no_docs:
        os.makedirs(args.docs_dir, exist_ok=True)
        md_path = os.path.join(args.docs_dir, "benchmarks.md")
        png_path = os.path.join(args.docs_dir, "benchmarks.png")
        chart = report.write_chart(results, png_path)
        report.write_markdown(results, md_path, chart_name=os.path.basename(png_path) if chart else None)
        log(
            f"wrote {md_path}"
            + (f" and {png_path}" if chart else " (no chart: no throughput workload, or matplotlib missing)")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
