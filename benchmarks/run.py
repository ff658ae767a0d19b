"""The fair benchmark: evloop and its peers on the LengthSepEcho wire.

    python benchmarks/run.py            # 3 runs x 4 s of everything, about 20 minutes
    python benchmarks/run.py --quick    # 1 run x 0.5 s, 200 idle connections: a smoke test

Theory of operation. Every run starts a fresh server process, pinned to one
core, and drives it with the C load generator (``benchmarks/loadgen.c``,
built with the system's ``cc`` into ``benchmarks/build/``) pinned to
another. evloop is started as a user starts it,
``python -m evloop serve evloop.protocols:LengthSepEcho``; the peers
(``benchmarks/peers.py``: a bare epoll loop, asyncio ``Protocol``, uvloop,
Twisted) answer the same wire with the same Python per read. Each server
runs in two modes: as started by default, and in *fast mode*, with glibc
malloc's mmap and trim thresholds fixed in its environment (:data:`FAST_ENV`;
docs/benchmarks.md says why). The load generator waits 1 s after its
clients connect, then measures 4 s; it reads the server's user and system
CPU time from ``/proc/PID/stat`` at both ends of the measured window. A
round runs every server once, in turn; ratios are taken to asyncio
``Protocol`` in fast mode within a round, and the median over rounds is
reported, with absolute numbers beside it.

Workloads: 50 clients with one 64-byte request in flight each; the same
with 32 pipelined; one request in flight with 16 KiB bodies; a connection
per request (the client closes after its echo); an open loop (requests
sent at a fixed offered rate, as wrk2 does, so every server is measured
doing the same work per second: by default half the slowest server's
saturation rate on the first workload); and the memory per connection at
10,000 idle connections, each served one request.

Nothing is installed at run time: the peers come from the ``bench`` extra
(``pip install -e '.[bench]'``); a peer that is not installed is reported
and skipped.
"""

import argparse
import json
import os
import platform
import re
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

__all__ = [
    "FAST_ENV",
    "IMPLS",
    "MODES",
    "WORKLOADS",
    "ServerFailedError",
    "ServerProcess",
    "build_loadgen",
    "main",
    "run_loadgen",
    "server_command",
]

BUILD_DIR = os.path.join(HERE, "build")
LOADGEN_SOURCE = os.path.join(HERE, "loadgen.c")
LOADGEN = os.path.join(BUILD_DIR, "loadgen")
PEERS = os.path.join(HERE, "peers.py")
RESULTS = os.path.join(HERE, "results", "latest.json")
DOCS = os.path.join(ROOT, "docs", "benchmarks.md")

IMPLS = ["bare-epoll", "asyncio-protocol", "uvloop", "twisted", "evloop"]
PEER_MODULES = {"uvloop": "uvloop", "twisted": "twisted"}
MODES = ["default", "fast"]
# glibc malloc's thresholds, fixed: see docs/benchmarks.md, "Two modes".
FAST_ENV = {"MALLOC_MMAP_THRESHOLD_": "1048576", "MALLOC_TRIM_THRESHOLD_": "4194304"}
# Settings that change how a server allocates or runs; none is passed on,
# so "default" means the same thing on every machine.
SCRUBBED_ENV = ("MALLOC_", "GLIBC_TUNABLES", "PYTHONMALLOC", "PYTHONDEVMODE", "PYTHONASYNCIODEBUG")
SCRUBBED_ENV += ("PYTHONTRACEMALLOC", "PYTHONPROFILEIMPORTTIME", "PYTHONUSERBASE", "LD_PRELOAD")

ECHO = ["--mode", "echo", "--clients", "50"]
# name: (title, load generator arguments, what one unit of work is)
WORKLOADS = {
    "echo-1": ("50 clients x 1 request in flight, 64-byte bodies", [*ECHO, "--depth", "1"], "request"),
    "echo-32": ("50 clients x 32 pipelined requests, 64-byte bodies", [*ECHO, "--depth", "32"], "request"),
    "echo-16k": ("50 clients x 1 request in flight, 16 KiB bodies", [*ECHO, "--size", "16384"], "request"),
    "conn": (
        "a connection per request, 50 at a time, 64-byte bodies",
        ["--mode", "conn", "--clients", "50", "--sources", "16"],
        "connection",
    ),
    "open": ("open loop: 50 clients, 64-byte bodies, a fixed offered rate", ECHO, "request"),
}
ALL_WORKLOADS = [*WORKLOADS, "idle"]
# Without an echo-1 run to take it from, the open loop's offered rate.
FALLBACK_OPEN_RATE = 20000.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- building, pinning, the environment ---------------------------------------------


def build_loadgen(force: bool = False) -> str:
    """Compile the load generator with the system's C compiler if its binary
    is missing or older than its source; return its path."""
    if (
        not force
        and os.path.exists(LOADGEN)
        and os.path.getmtime(LOADGEN) >= os.path.getmtime(LOADGEN_SOURCE)
    ):
        return LOADGEN
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("the load generator needs a C compiler (cc) on PATH")
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


def pinned(cpus):
    """What a child runs before its program: SIGINT back to its default (a
    background job starts with it ignored, and servers are stopped with it)
    and, given ``cpus``, the pinning."""

    def setup():
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if cpus is not None:
            os.sched_setaffinity(0, cpus)

    return setup


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one (the servers and load
    generators inherit it); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def server_env(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED_ENV)}
    if mode == "fast":
        env.update(FAST_ENV)
    return env


# Other evloop builds to measure beside this one (--evloop-build), as
# "evloop-LABEL": the Python whose installed evloop serves.
EVLOOP_BUILDS = {}


def server_command(impl: str) -> list:
    if impl == "evloop" or impl in EVLOOP_BUILDS:
        # As a user starts it; only the address is chosen, the rest is
        # default, but for the per-address cap: every load-generator
        # connection comes from loopback, and the peers have no such cap.
        serve = ["serve", "evloop.protocols:LengthSepEcho", "--host", "127.0.0.1", "--port", "0"]
        if impl == "evloop":  # (a build from before the cap has no such option)
            serve += ["--max-connections-per-peer", "0"]
        return [EVLOOP_BUILDS.get(impl, sys.executable), "-m", "evloop", *serve]
    return [sys.executable, PEERS, impl, "--port", "0"]


# -- one server -----------------------------------------------------------------------


class ServerFailedError(RuntimeError):
    """The server did not start, or failed during the measurement."""


class ServerProcess:
    """A fresh server process pinned to the server core; its output goes to
    a log file, where ``listening on HOST:PORT`` gives its port."""

    LISTENING = re.compile(rb"listening on [0-9.]+:(\d+)")

    def __init__(self, impl: str, mode: str = "default", command=None, log_dir: str = BUILD_DIR):
        self.name = f"{impl}/{mode}"
        os.makedirs(log_dir, exist_ok=True)
        self.log_path = os.path.join(log_dir, f"server-{impl}-{mode}.log")
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            command or server_command(impl),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=server_env(mode),
            preexec_fn=pinned(SERVER_CPUS),
            # From the checkout, so "evloop" is this commit's; another build
            # from elsewhere, so that the checkout's sources do not shadow it.
            cwd=BUILD_DIR if impl in EVLOOP_BUILDS else ROOT,
        )
        self.pid = self.process.pid
        try:
            self.port = self._wait_listening(timeout=30)
        except ServerFailedError:
            self.stop()
            raise

    def _wait_listening(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as log_file:
                found = self.LISTENING.search(log_file.read())
            if found:
                return int(found.group(1))
            if not self.alive():
                break
            time.sleep(0.02)  # a process starting up: nothing to wait on but its log
        raise ServerFailedError(f"{self.name} did not start: {self.log_tail()}")

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

    def log_tail(self, lines: int = 3) -> str:
        self._log.flush()
        with open(self.log_path, "rb") as log_file:
            text = log_file.read().decode("utf-8", "replace").strip().splitlines()
        return " | ".join(text[-lines:])

    def stop(self, signum: int = signal.SIGTERM) -> None:
        if self.alive():
            self.process.send_signal(signum)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def core_time(cpu) -> tuple:
    """(time the CPU spent running tasks, stolen by the hypervisor) from
    /proc/stat, in clock ticks; (0, 0) when not pinned."""
    if cpu is None:
        return 0, 0
    with open("/proc/stat") as stat:
        for line in stat:
            if line.startswith(f"cpu{cpu} "):
                ticks = [int(x) for x in line.split()[1:]]
                return sum(ticks[:3]), (ticks[7] if len(ticks) > 7 else 0)
    return 0, 0


def task_time(pid) -> int:
    """User + system clock ticks of a process, every thread (0 for None)."""
    if pid is None:
        return 0
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def softirq_thread(cpu):
    """The pid of the kernel thread that runs deferred network work on
    ``cpu`` (ksoftirqd/N): its time is the benchmark's own, not another
    process's. None if there is none to be found."""
    if cpu is None:
        return None
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as comm:
                if comm.read().strip() == f"ksoftirqd/{cpu}":
                    return int(pid)
        except OSError:
            continue
    return None


SOFTIRQ_PID = softirq_thread(min(SERVER_CPUS) if SERVER_CPUS else None)


def run_loadgen(args: list, server: ServerProcess, timeout: float) -> dict:
    """Run the load generator against ``server``; its JSON report, with
    ``other_load``: the share of the server's core that other processes
    (or the hypervisor) took meanwhile, which a fair run keeps near 0. The
    server's own time and the core's ksoftirqd thread's do not count."""
    command = [LOADGEN, "--port", str(server.port), "--server-pid", str(server.pid), *args]
    cpu = min(SERVER_CPUS) if SERVER_CPUS else None
    busy0, steal0, t0 = *core_time(cpu), time.monotonic()
    task0 = task_time(server.pid) + task_time(SOFTIRQ_PID)
    done = subprocess.run(command, capture_output=True, timeout=timeout, preexec_fn=pinned(LOADGEN_CPUS))
    if cpu is not None and server.alive():
        busy1, steal1 = core_time(cpu)
        elapsed_ticks = (time.monotonic() - t0) * os.sysconf("SC_CLK_TCK")
        ours = task_time(server.pid) + task_time(SOFTIRQ_PID) - task0
        others = (busy1 - busy0) - ours + (steal1 - steal0)
        other_load = max(0.0, others / elapsed_ticks)
    else:
        other_load = None
    lines = done.stdout.decode().strip().splitlines()
    if not lines:
        raise ServerFailedError(f"load generator printed nothing: {done.stderr.decode()[-300:]}")
    result = json.loads(lines[-1])
    result["other_load"] = other_load
    if (result.get("errors") and result["mode"] != "conn") or not result.get("requests"):
        why = result.get("first_error") or "no requests completed"
        tail = server.log_tail(1)
        state = "server died" if not server.alive() else "server log"
        raise ServerFailedError(f"{server.name}: {why}" + (f" ({state}: {tail})" if tail else ""))
    return result


def summarise(result: dict) -> dict:
    seconds, count = result["seconds"], result["requests"]
    known = result["server_cpu"] >= 0
    row = {
        "rate": count / seconds,
        "server_busy": result["server_cpu"] / seconds if known else None,
        "loadgen_busy": result["loadgen_cpu"] / seconds,
        "us": result["server_cpu"] / count * 1e6 if known else None,
        "user_us": result["server_user"] / count * 1e6 if known else None,
        "sys_us": result["server_sys"] / count * 1e6 if known else None,
        "faults": result["server_minflt"] / count if known else None,
        "errors": result.get("errors", 0),
        "other_load": result.get("other_load"),
    }
    if result.get("offered_rate"):
        row.update(
            offered=result["offered_rate"],
            p50_us=result["latency_p50_us"],
            p99_us=result["latency_p99_us"],
            max_us=result["latency_max_us"],
        )
    return row


# -- workloads --------------------------------------------------------------------------


def available(impl: str) -> bool:
    module = PEER_MODULES.get(impl)
    if module is None:
        return True
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def entries(impls: list, modes: list) -> list:
    return [f"{impl}/{mode}" for impl in impls for mode in modes]


def run_throughput(name: str, servers: list, settings: dict, extra_args=()) -> dict:
    title, args, unit = WORKLOADS[name]
    timing = ["--warmup", str(settings["warmup"]), "--duration", str(settings["duration"])]
    rounds, failures = [], {}
    for round_index in range(settings["runs"]):
        row = {}
        for entry in servers:
            impl, mode = entry.split("/")
            try:
                with ServerProcess(impl, mode) as server:
                    row[entry] = summarise(run_loadgen([*args, *extra_args, *timing], server, timeout=120))
            except (ServerFailedError, subprocess.TimeoutExpired) as exc:
                failures[entry] = str(exc)
                log(f"  {name} run {round_index + 1} {entry:24s} failed: {exc}")
                continue
            s = row[entry]
            log(
                f"  {name} run {round_index + 1} {entry:24s} {s['rate']:9.0f}/s  "
                f"{s['us']:6.1f} us/{unit} ({s['user_us']:.1f} user + {s['sys_us']:.1f} sys)  "
                f"server {s['server_busy']:4.0%}  loadgen {s['loadgen_busy']:4.0%}"
                + (f"  other work on the server's core {s['other_load']:4.0%}" if s["other_load"] else "")
            )
        rounds.append(row)
    return {"title": title, "unit": unit, "servers": servers, "rounds": rounds, "failures": failures}


def open_loop_rate(results: dict, settings: dict) -> tuple:
    """(offered rate, how it was chosen)."""
    if settings["open_rate"]:
        return settings["open_rate"], "set with --open-rate"
    saturation = results["workloads"].get("echo-1")
    medians = []
    for entry in (saturation or {}).get("servers", []):
        rates = [r[entry]["rate"] for r in saturation["rounds"] if entry in r]
        if rates:
            medians.append((statistics.median(rates), entry))
    if not medians:
        return FALLBACK_OPEN_RATE, "fixed (no echo-1 run to take it from)"
    slowest, entry = min(medians)
    rate = float(f"{slowest * 0.5:.2g}")  # two significant digits: a rate one can quote
    return rate, f"half the slowest echo-1 saturation rate in this run ({entry}, {slowest:,.0f}/s)"


def _hold_clients(server: ServerProcess, total: int, settings: dict) -> list:
    """Load generators in hold mode: ``total`` connections, one request
    each; each process keeps under its descriptor limit."""
    per_process = max(1, min(total, settings["fd_limit"] - 200))
    clients, first, source = [], 0, 1
    while first < total:
        count = min(per_process, total - first)
        command = [LOADGEN, "--port", str(server.port), "--mode", "hold", "--clients", str(count)]
        command += ["--sources", "8", "--source-first", str(source), "--silent", "0", "--timeout", "60"]
        clients.append(
            subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, preexec_fn=pinned(LOADGEN_CPUS)
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


def _finish(clients: list) -> None:
    for client in clients:
        try:
            client.stdin.close()
        except OSError:
            pass
        try:
            client.wait(30)
        except subprocess.TimeoutExpired:
            client.kill()
            client.wait()


def measure_idle(entry: str, count: int, settings: dict) -> dict:
    """The server's RSS growth per connection: ``count`` connections, each
    answered one request and then left idle, over the RSS it had after 50
    warm-up clients came and went."""
    impl, mode = entry.split("/")
    with ServerProcess(impl, mode) as server:
        warm = _hold_clients(server, 50, settings)
        try:
            _read_json_line(warm[0], 70)
            peak_fds = server.open_fds()
        finally:
            _finish(warm)
        base_fds = _wait_fds(server, lambda n: n <= peak_fds - 50)
        base_rss = server.rss_kib()
        clients = _hold_clients(server, count, settings)
        try:
            reports = [_read_json_line(c, 90) for c in clients]
            served = sum(r["held"] for r in reports)
            fds = _wait_fds(server, lambda n: n >= base_fds + served) - base_fds
            rss = server.rss_kib()
        finally:
            _finish(clients)
        errors = [r["first_error"] for r in reports if r["first_error"]]
        if served < count or not server.alive():
            raise ServerFailedError(f"{entry}: {served} of {count} connections served; {errors[:1]}")
    return {
        "connections": count,
        "served": served,
        "server_fds": fds,
        "base_rss_kib": base_rss,
        "rss_kib": rss,
        "bytes_per_connection": (rss - base_rss) * 1024 / served,
    }


def run_idle(servers: list, settings: dict) -> dict:
    count = settings["idle_connections"]
    rounds, failures = [], {}
    if settings["fd_limit"] < count + 100:
        # The server needs a descriptor per connection and a few of its own.
        why = f"RLIMIT_NOFILE's hard limit {settings['fd_limit']:,} is too low for {count:,} connections"
        log(f"  idle: {why}")
        failures = dict.fromkeys(servers, why)
        servers_run = []
    else:
        servers_run = servers
    for round_index in range(settings["runs"]):
        row = {}
        for entry in servers_run:
            try:
                row[entry] = measure_idle(entry, count, settings)
            except (ServerFailedError, subprocess.TimeoutExpired, OSError) as exc:
                failures[entry] = str(exc)
                log(f"  idle run {round_index + 1} {entry:24s} failed: {exc}")
                continue
            log(
                f"  idle run {round_index + 1} {entry:24s} "
                f"{row[entry]['bytes_per_connection']:7.0f} bytes per connection"
            )
        rounds.append(row)
    return {
        "title": f"memory per idle connection, {count:,} connections, each served one request",
        "unit": "connection",
        "servers": servers,
        "rounds": rounds,
        "failures": failures,
    }


# -- the report's header ------------------------------------------------------------------


def environment() -> dict:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    def version(name):
        try:
            return dist_version(name)
        except PackageNotFoundError:
            return "not installed"

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    cc = subprocess.run(
        [shutil.which("cc") or "gcc", "--version"], capture_output=True, text=True
    ).stdout.splitlines()
    return {
        "cpu": report.cpu_model(),
        "cpus": os.cpu_count(),
        "pinning": f"server on CPU {min(SERVER_CPUS)}, load generator on CPU {min(LOADGEN_CPUS)}"
        if SERVER_CPUS
        else "not pinned (one core)",
        "kernel": platform.release(),
        "libc": " ".join(platform.libc_ver()),
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
        "cc": cc[0] if cc else "",
        "versions": {name: version(name) for name in ("evloop-server", "uvloop", "twisted")},
        "commit": commit + (" (with uncommitted changes)" if dirty else ""),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_before": os.getloadavg(),
    }


# -- main -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a smoke test: 1 run x 0.5 s, 200 idle connections"
    )
    parser.add_argument("--runs", type=int, help="runs of every server per workload (default 3; quick 1)")
    parser.add_argument("--duration", type=float, help="measured seconds per run (default 4; quick 0.5)")
    parser.add_argument("--warmup", type=float, help="seconds before measuring (default 1; quick 0.2)")
    parser.add_argument(
        "--workloads", default=",".join(ALL_WORKLOADS), help=f"from {','.join(ALL_WORKLOADS)}"
    )
    parser.add_argument("--impls", default=",".join(IMPLS), help=f"from {','.join(IMPLS)}")
    parser.add_argument("--modes", default=",".join(MODES), help="default, fast or both")
    parser.add_argument(
        "--evloop-build",
        action="append",
        default=[],
        metavar="LABEL=PYTHON",
        help="also measure the evloop that PYTHON has installed (say a compiled build in another venv; "
        "started outside this checkout) as evloop-LABEL; repeatable",
    )
    parser.add_argument("--idle-connections", type=int, help="default 10000 (quick 200)")
    parser.add_argument(
        "--open-rate",
        type=float,
        help="the open loop's offered requests/s (default: half the slowest echo-1 saturation rate)",
    )
    parser.add_argument(
        "--docs", help=f"the page whose generated part is rewritten (default {os.path.relpath(DOCS, ROOT)})"
    )
    parser.add_argument("--no-docs", action="store_true", help="print the tables only")
    parser.add_argument("--results", help=f"raw results as JSON (default {os.path.relpath(RESULTS, ROOT)})")
    parser.add_argument(
        "--from-results", action="store_true", help="measure nothing: rewrite the report from --results"
    )
    return parser


def parse_args(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    quick = args.quick
    if quick and args.docs is None and args.results is None:
        # A smoke test's numbers mean nothing: they go to the page and the
        # results file only when asked for by name.
        args.no_docs = True
    args.docs = args.docs or DOCS
    settings = {
        "runs": args.runs or (1 if quick else 3),
        "duration": args.duration or (0.5 if quick else 4.0),
        "warmup": args.warmup if args.warmup is not None else (0.2 if quick else 1.0),
        "idle_connections": args.idle_connections or (200 if quick else 10000),
        "open_rate": args.open_rate,
    }
    chosen = {
        "workloads": [w for w in args.workloads.split(",") if w],
        "impls": [i for i in args.impls.split(",") if i],
        "modes": [m for m in args.modes.split(",") if m],
    }
    for build in args.evloop_build:
        name, _, python = build.partition("=")
        if not name or not os.access(python, os.X_OK):
            parser.error(f"--evloop-build wants LABEL=PYTHON (an executable), got {build!r}")
        EVLOOP_BUILDS[f"evloop-{name}"] = python
        chosen["impls"].append(f"evloop-{name}")
    known = {"workloads": ALL_WORKLOADS, "impls": [*IMPLS, *EVLOOP_BUILDS], "modes": MODES}
    for key, values in chosen.items():
        unknown = sorted(set(values) - set(known[key]))
        if unknown:
            parser.error(f"unknown {key}: {', '.join(unknown)} (known: {', '.join(known[key])})")
    return args, settings, chosen


def measure(settings: dict, chosen: dict, command: str) -> dict:
    settings["fd_limit"] = raise_fd_limit()
    build_loadgen()
    missing = [impl for impl in chosen["impls"] if not available(impl)]
    if missing:
        log(f"not installed, skipped: {', '.join(missing)} (pip install -e '.[bench]')")
    impls = [impl for impl in chosen["impls"] if impl not in missing]
    servers = entries(impls, chosen["modes"])
    results = {
        "settings": settings,
        "command": command,
        "environment": environment(),
        "servers": servers,
        "missing": missing,
        "workloads": {},
    }
    throughput = [name for name in chosen["workloads"] if name != "idle"]
    estimate = (
        settings["runs"] * len(servers) * len(throughput) * (settings["warmup"] + settings["duration"] + 0.8)
    )
    estimate += (
        settings["runs"]
        * len(servers)
        * (3 + settings["idle_connections"] / 3000)
        * ("idle" in chosen["workloads"])
    )
    log(f"{len(servers)} servers, {settings['runs']} runs each: about {estimate / 60:.0f} minutes")
    started = time.monotonic()
    for name in chosen["workloads"]:
        log(f"{name}:")
        if name == "idle":
            results["workloads"][name] = run_idle(servers, settings)
        elif name == "open":
            rate, why = open_loop_rate(results, settings)
            log(f"  offered rate {rate:,.0f}/s: {why}")
            workload = run_throughput(name, servers, settings, ["--rate", str(rate)])
            workload.update(offered=rate, offered_why=why)
            results["workloads"][name] = workload
        else:
            results["workloads"][name] = run_throughput(name, servers, settings)
    results["elapsed"] = time.monotonic() - started
    results["environment"]["load_after"] = os.getloadavg()
    return results


def main(argv=None) -> int:
    args, settings, chosen = parse_args(argv)
    if args.results is None and (args.from_results or not args.no_docs):
        # A --no-docs run does not overwrite the results the page came from.
        args.results = RESULTS
    if args.from_results:
        with open(args.results) as saved:
            results = json.load(saved)
    else:
        words = argv if argv is not None else sys.argv[1:]
        results = measure(settings, chosen, " ".join(["python", "benchmarks/run.py", *words]))
        if args.results:
            os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
            with open(args.results, "w") as saved:
                json.dump(results, saved, indent=1)
    print(report.text_report(results))
    if not args.no_docs:
        report.write_markdown(results, args.docs)
        log(f"wrote {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
