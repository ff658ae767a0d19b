"""redis-benchmark against miniredis (evloop), miniredis on asyncio and a real
redis-server, with and without pipelining; writes docs/benchmarks-redis.md.

    python benchmarks/redis_bench.py                 # three runs, ~4 minutes
    python benchmarks/redis_bench.py --runs 1 --quick  # a quick look, no file written

Needs ``redis-benchmark`` and ``redis-server`` (Debian: ``apt-get install
redis-tools redis-server``). Each server runs pinned to one core and
redis-benchmark to another (on a machine with two or more cores), one
redis-benchmark process per test, so the CPU each side used is known: a
client near 100% of its core would mean the load generator, not the server,
is the limit. The three servers take turns within each run, so a noisy
neighbour hurts them alike; the table gives the median of the runs, the
spread (min-max) and ratios of medians.
"""

import argparse
import csv
import io
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "benchmarks-redis.md"
sys.path.insert(0, str(ROOT))
from benchmarks import report  # noqa: E402  (run as a script: the repo root on the path)
from benchmarks.run import task_time  # noqa: E402

TESTS = ["PING_MBULK", "SET", "GET", "INCR", "LPUSH", "LPOP", "SADD", "HSET", "MSET"]
# Requests per redis-benchmark run: enough for about a second of work each.
REQUESTS = {1: 100_000, 16: 500_000}
QUICK_REQUESTS = {1: 20_000, 16: 100_000}
SERVERS = ["redis-server", "miniredis (evloop)", "miniredis (asyncio)"]
LISTENING = re.compile(r"listening on (\S+):(\d+)")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def pin(core: Optional[int]) -> Optional[Callable[[], None]]:
    if core is None:
        return None
    return lambda: os.sched_setaffinity(0, {core})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """One server process, started pinned and ready to serve."""

    def __init__(self, name: str, core: Optional[int]) -> None:
        self.name = name
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        )
        if name == "redis-server":
            self.port = free_port()
            command = [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ]
            ready = "Ready to accept connections"
        else:
            script = (
                ROOT / "examples" / "miniredis.py"
                if "evloop" in name
                else ROOT / "benchmarks" / "miniredis_asyncio.py"
            )
            command = [sys.executable, str(script), "--host", "127.0.0.1", "--port", "0"]
            ready = "listening on"
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            preexec_fn=pin(core),
        )
        assert self.process.stdout is not None
        seen = []
        for line in self.process.stdout:
            seen.append(line)
            if ready in line:
                match = LISTENING.search(line)
                if match:
                    self.port = int(match.group(2))
                break
        else:
            raise RuntimeError(f"{name} did not start:\n{''.join(seen)}")
        # From here on its output is not read: send it nowhere.
        self.process.stdout.close()

    def cpu_seconds(self) -> float:
        return task_time(self.process.pid) / CLOCK_TICKS

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Sample(NamedTuple):
    rps: float  # requests per second, as redis-benchmark counted them
    server_us: float  # server CPU per request, microseconds
    server_cpu: float  # server CPU over the run, % of one core
    client_cpu: float  # redis-benchmark's CPU over the run, % of one core


def run_benchmark(server: Server, test: str, pipeline: int, requests: int, core: Optional[int]) -> Sample:
    """One redis-benchmark run of one test."""
    command = [
        "redis-benchmark",
        "-h",
        "127.0.0.1",
        "-p",
        str(server.port),
        "-c",
        "50",
        "-n",
        str(requests),
        "-P",
        str(pipeline),
        "-t",
        test.lower(),
        "--csv",
    ]
    cpu_before = server.cpu_seconds()
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=pin(core)
    )
    assert process.stdout is not None
    out = process.stdout.read().decode()
    # wait4, not wait: it also says how much CPU the client used.
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - started
    server_cpu = server.cpu_seconds() - cpu_before
    if process.returncode != 0:
        raise RuntimeError(f"redis-benchmark failed against {server.name}: {out}")
    rows = [row for row in csv.reader(io.StringIO(out)) if row and row[0] != "test"]
    rps = [float(row[1]) for row in rows if row[0].upper().startswith(test.split("_")[0])]
    if not rps:
        raise RuntimeError(f"no result for {test} from {server.name}: {out!r}")
    client_cpu = usage.ru_utime + usage.ru_stime
    # Shares of a core over the time redis-benchmark measured, not the
    # process's whole life: its start and its 50 connects are not the test.
    measured = min(elapsed, requests / rps[0])
    return Sample(
        rps[0], 1e6 * server_cpu / requests, 100 * server_cpu / measured, 100 * client_cpu / measured
    )


def version(command: List[str]) -> str:
    try:
        return (
            subprocess.run(command, capture_output=True, text=True, check=False)
            .stdout.strip()
            .splitlines()[0]
        )
    except (OSError, IndexError):
        return "unknown"


Result = Dict[Tuple[str, str, int], List[Sample]]
EVLOOP, ASYNCIO, REAL = "miniredis (evloop)", "miniredis (asyncio)", "redis-server"
# A client above this share of its core may be what limits the rate.
CLIENT_BOUND = 90.0
# A run in which neither the server nor the client used this much of its core
# was held back by something else: other work on a busy machine.
STARVED = 75.0


def starved(sample: Sample) -> bool:
    return sample.server_cpu < STARVED and sample.client_cpu < STARVED


def measure(
    tests: List[str], pipelines: List[int], runs: int, requests: Dict[int, int]
) -> Tuple[Result, int]:
    """Every test against every server, ``runs`` times; returns the samples
    and how many starved ones were measured again."""
    cores = sorted(os.sched_getaffinity(0))
    server_core, client_core = (cores[0], cores[1]) if len(cores) >= 2 else (None, None)
    results: Result = {}
    retried = 0
    # All three stay up (an idle one costs nothing) and take turns test by
    # test, so that the samples a ratio compares were taken seconds apart.
    servers = []
    try:
        for name in SERVERS:
            servers.append(Server(name, server_core))
        for run in range(1, runs + 1):
            for pipeline in pipelines:
                for test in tests:
                    for server in servers:
                        sample = run_benchmark(server, test, pipeline, requests[pipeline], client_core)
                        for _ in range(2):
                            if not starved(sample):
                                break
                            retried += 1
                            sample = run_benchmark(server, test, pipeline, requests[pipeline], client_core)
                        results.setdefault((server.name, test, pipeline), []).append(sample)
                        print(
                            f"run {run} {server.name:20} {test:10} -P {pipeline:<2} "
                            f"{sample.rps:>11,.0f} req/s  "
                            f"server {sample.server_us:5.2f} us/req, CPU "
                            f"{sample.server_cpu:3.0f}%  client CPU {sample.client_cpu:3.0f}%",
                            flush=True,
                        )
    finally:
        for server in servers:
            server.stop()
    return results, retried


def median(results: Result, name: str, test: str, pipeline: int, field: str) -> float:
    values: List[float] = [getattr(sample, field) for sample in results[(name, test, pipeline)]]
    return statistics.median(values)


def spread(results: Result, name: str, test: str, pipeline: int) -> str:
    values = [sample.rps / 1000 for sample in results[(name, test, pipeline)]]
    return f"{min(values):,.0f}-{max(values):,.0f}k"


def throughput_table(results: Result, tests: List[str], pipelines: List[int]) -> List[str]:
    lines = [
        "| test | -P | redis-server req/s | evloop req/s | asyncio req/s "
        "| evloop / redis | evloop / asyncio | caveats |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for pipeline in pipelines:
        for test in tests:
            rate = {name: median(results, name, test, pipeline, "rps") for name in SERVERS}
            lines.append(
                f"| {test} | {pipeline} "
                + "".join(
                    f"| {rate[name]:,.0f} ({spread(results, name, test, pipeline)}) "
                    for name in (REAL, EVLOOP, ASYNCIO)
                )
                + f"| {rate[EVLOOP] / rate[REAL]:.2f}x | {rate[EVLOOP] / rate[ASYNCIO]:.2f}x "
                f"| {caveats(results, test, pipeline) or '-'} |"
            )
    return lines


def caveats(results: Result, test: str, pipeline: int) -> str:
    """Which servers' rates say less than they seem to, and why."""
    notes = []
    for name, label in ((REAL, "redis"), (EVLOOP, "evloop"), (ASYNCIO, "asyncio")):
        client = median(results, name, test, pipeline, "client_cpu")
        server = median(results, name, test, pipeline, "server_cpu")
        if client >= CLIENT_BOUND:
            notes.append(f"{label}: client-bound")
        elif starved(Sample(0, 0, server, client)):
            notes.append(f"{label}: starved ({server:.0f}% / {client:.0f}% CPU)")
    return "; ".join(notes)


def cpu_table(results: Result, tests: List[str], pipelines: List[int]) -> List[str]:
    lines = [
        "| test | -P | redis-server us/req | evloop us/req | asyncio us/req "
        "| redis / evloop | asyncio / evloop | client CPU % (redis, evloop, asyncio) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for pipeline in pipelines:
        for test in tests:
            cost = {name: median(results, name, test, pipeline, "server_us") for name in SERVERS}
            client = ", ".join(
                f"{median(results, name, test, pipeline, 'client_cpu'):.0f}"
                for name in (REAL, EVLOOP, ASYNCIO)
            )
            lines.append(
                f"| {test} | {pipeline} | {cost[REAL]:.2f} | {cost[EVLOOP]:.2f} "
                f"| {cost[ASYNCIO]:.2f} | {cost[REAL] / cost[EVLOOP]:.2f}x "
                f"| {cost[ASYNCIO] / cost[EVLOOP]:.2f}x | {client} |"
            )
    return lines


def verdict(results: Result) -> List[str]:
    lines = []
    for test in ("SET", "GET"):
        if (REAL, test, 16) in results and (EVLOOP, test, 16) in results:
            ours = median(results, EVLOOP, test, 16, "rps")
            real = median(results, REAL, test, 16, "rps")
            efficiency = median(results, REAL, test, 16, "server_us") / median(
                results, EVLOOP, test, 16, "server_us"
            )
            mark = "met" if ours / real >= 0.30 else "NOT met"
            lines.append(
                f"- {test} with `-P 16`: {ours / real:.2f}x redis-server's requests "
                f"per second (target 0.30x: {mark}); by server CPU per request, "
                f"{efficiency:.2f}x."
            )
    return lines


def write_report(
    results: Result, tests: List[str], pipelines: List[int], runs: int, retried: int, command: str
) -> None:
    cores = len(os.sched_getaffinity(0))
    text = [
        "# miniredis against redis-server and asyncio",
        "",
        "Written by `benchmarks/redis_bench.py`; do not edit by hand. How miniredis",
        "works and why it is fast: [miniredis.md](miniredis.md).",
        "",
        "`redis-benchmark` (50 clients, 3-byte values, its default keys) against three",
        "servers: a real `redis-server` (the ceiling), `examples/miniredis.py` on",
        "evloop, and `benchmarks/miniredis_asyncio.py`, the same command code and",
        "framer on an asyncio `Protocol`. `-P 1` sends one command and waits for the",
        "reply; `-P 16` keeps 16 commands in flight per client. Each server is pinned",
        "to one core and redis-benchmark to another; one redis-benchmark process per",
        "test; the three servers stay up and take turns test by test, so the samples",
        "a ratio compares were taken seconds apart.",
        "",
        "## Requests per second",
        "",
        f"Median of {runs} run(s), spread (min-max) in brackets; ratios are of medians.",
        'Caveats: "client-bound" marks a server against which redis-benchmark',
        f"itself used {CLIENT_BOUND:.0f}% or more of its core: the rate is then the",
        "client's limit as much as the server's, and the ratio flatters the slower",
        'server. "starved" marks one whose server and client both stayed under',
        f"{STARVED:.0f}% of their cores: other work on the machine held the run back,",
        "and its rate (and any ratio built on it) is not to be trusted. A starved",
        f"sample is measured again, twice at most: {retried} were, in this report.",
        "The CPU table below is much less disturbed by either.",
        "",
        *throughput_table(results, tests, pipelines),
        "",
        "## Server CPU per request",
        "",
        "Microseconds of CPU (user + system, from `/proc`) the server process used",
        "per request, median of the runs: the server's own cost, which a saturated",
        'client cannot hide. "redis / evloop" is the share of redis-server\'s',
        "efficiency miniredis reaches.",
        "",
        *cpu_table(results, tests, pipelines),
        "",
        "## Targets (issue 6)",
        "",
        *verdict(results),
        "",
        "## Machine",
        "",
        f"- CPU: {report.cpu_model()}, {cores} core(s) available"
        f"{'; server and client pinned to different cores' if cores >= 2 else ''}",
        f"- Kernel: {platform.system()} {platform.release()}",
        f"- Python: {platform.python_implementation()} {platform.python_version()}",
        f"- redis-server: {version(['redis-server', '--version'])}",
        f"- redis-benchmark: {version(['redis-benchmark', '--version'])}",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
        "",
        "## Rerun",
        "",
        "```sh",
        "apt-get install redis-tools redis-server   # redis-benchmark, redis-server",
        command,
        "```",
        "",
    ]
    OUTPUT.write_text("\n".join(text))
    print(f"wrote {OUTPUT.relative_to(ROOT)}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tests", default=",".join(TESTS), help="redis-benchmark tests, comma-separated")
    parser.add_argument("--pipelines", default="1,16", help="-P values, comma-separated")
    parser.add_argument(
        "--quick", action="store_true", help="fewer requests per run; the report is not written"
    )
    args = parser.parse_args(argv)
    for tool in ("redis-benchmark", "redis-server"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: apt-get install redis-tools redis-server", file=sys.stderr)
            return 2
    tests = [t.strip().upper() for t in args.tests.split(",") if t.strip()]
    pipelines = [int(p) for p in args.pipelines.split(",")]
    requests = QUICK_REQUESTS if args.quick else REQUESTS
    requests = {p: requests.get(p, requests[16]) for p in pipelines}
    results, retried = measure(tests, pipelines, args.runs, requests)
    print("\n".join(throughput_table(results, tests, pipelines)))
    print("\n".join(cpu_table(results, tests, pipelines)))
    print("\n".join(verdict(results)))
    if not args.quick:
        command = "python benchmarks/redis_bench.py" + "".join(
            f" {a}" for a in (argv if argv is not None else sys.argv[1:])
        )
        write_report(results, tests, pipelines, args.runs, retried, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
