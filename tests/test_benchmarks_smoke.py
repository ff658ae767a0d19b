"""The benchmark harness, in its quickest mode, so it cannot rot.

No speed is asserted: only that the C load generator builds, drives each
mode against a real server on 127.0.0.1 and notices a wrong reply; that
every peer answers the LengthSepEcho wire as evloop does; that
``benchmarks/run.py --quick`` measures every server in both modes, in every
workload, and writes its tables into the page between the markers; that
the report's arithmetic is right; and that the commands the benchmarks page
gives run (or, for the full run, parse) as written.
"""

import json
import re
import shlex
import shutil
import socket
import subprocess
import sys

import pytest
from evloop.protocols import LengthSepEcho

from benchmarks import report, run
from tests.examples import ROOT

pytestmark = pytest.mark.skipif(
    shutil.which("gcc") is None and shutil.which("cc") is None, reason="the load generator needs a C compiler"
)

QUICK = ["--warmup", "0", "--duration", "0.2", "--timeout", "20"]
PAGE = ROOT / "docs" / "benchmarks.md"


@pytest.fixture(scope="module")
def loadgen():
    return run.build_loadgen()


def drive(loadgen, server, *args):
    done = subprocess.run(
        [loadgen, "--port", str(server.port), *QUICK, *args], capture_output=True, text=True, timeout=60
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


class Shouting(LengthSepEcho):
    """Answers with the body in capitals: the load generator must notice."""

    __slots__ = ()

    def make_response(self):
        body = self.request.upper()
        return b"%d\n" % len(body) + body


def test_echo_mode_counts_verified_replies(loadgen, running_loop):
    server = running_loop.serve(LengthSepEcho)
    result = drive(loadgen, server, "--mode", "echo", "--clients", "4", "--depth", "3")
    assert result["errors"] == 0, result["first_error"]
    assert result["requests"] > 0
    result = drive(loadgen, server, "--mode", "echo", "--clients", "2", "--size", "16384")
    assert result["errors"] == 0 and result["requests"] > 0, result


def test_a_wrong_reply_is_reported(loadgen, running_loop):
    server = running_loop.serve(Shouting)
    result = drive(loadgen, server, "--mode", "echo", "--clients", "2")
    assert result["errors"] > 0
    assert "differs" in result["first_error"]


def test_conn_mode_opens_a_connection_per_request(loadgen, running_loop):
    server = running_loop.serve(LengthSepEcho)
    result = drive(loadgen, server, "--mode", "conn", "--clients", "3", "--sources", "2")
    assert result["errors"] == 0, result["first_error"]
    assert result["requests"] > 0
    shouting = running_loop.serve(Shouting)
    result = drive(loadgen, shouting, "--mode", "conn", "--clients", "2")
    assert "differs" in result["first_error"]


def test_open_loop_sends_on_schedule_and_reads_the_servers_cpu(loadgen):
    # A real server process, so that its CPU time is its own.
    with run.ServerProcess("evloop", "default", log_dir=str(ROOT / "benchmarks" / "build")) as server:
        command = [loadgen, "--port", str(server.port), "--server-pid", str(server.pid), "--rate", "400"]
        command += ["--clients", "4", "--warmup", "0.1", "--duration", "1", "--timeout", "20"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["errors"] == 0, result["first_error"]
    assert result["offered_rate"] == 400
    # The schedule, not the server, sets the count: never more than was due.
    assert 100 <= result["requests"] <= 400 * result["seconds"] + 4 + 40, result
    assert 0 < result["latency_p50_us"] <= result["latency_p99_us"] <= result["latency_max_us"]
    assert result["server_user"] >= 0 and result["server_sys"] >= 0 and result["server_minflt"] >= 0
    assert result["server_cpu"] == pytest.approx(result["server_user"] + result["server_sys"], abs=1e-3)


def test_hold_mode_holds_then_serves(loadgen, running_loop):
    server = running_loop.serve(LengthSepEcho)
    command = [loadgen, "--port", str(server.port), "--mode", "hold", "--clients", "30"]
    command += ["--silent", "1", "--timeout", "20"]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        held = json.loads(process.stdout.readline())
        assert held["phase"] == "held" and held["held"] == 30, held
        process.stdin.write("serve\n")
        process.stdin.flush()
        served = json.loads(process.stdout.readline())
        assert served == dict(served, phase="served", asked=30, served=30, errors=0)
    finally:
        process.stdin.close()
        assert process.wait(20) == 0


def exchange(port, data, until=None):
    """Send ``data``; read ``until`` bytes, or until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        received = bytearray()
        while until is None or len(received) < until:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    return bytes(received)


@pytest.mark.parametrize("impl", run.IMPLS)
def test_every_server_answers_the_same_wire_and_refuses_the_same_input(impl, tmp_path):
    if not run.available(impl):
        pytest.skip(f"{impl} is not installed (pip install -e '.[bench]')")
    big = b"x" * 300_000
    with run.ServerProcess(impl, "fast", log_dir=str(tmp_path)) as server:
        # Pipelined, split anywhere, a body larger than one read.
        requests = b"5\nhello0\n3\nabc" + b"%d\n" % len(big) + big
        assert exchange(server.port, requests, until=len(requests)) == requests
        # A bad length line: the replies before it, then the connection closes.
        assert exchange(server.port, b"2\nok" + b"x1\n") == b"2\nok"
        assert exchange(server.port, b"99999999\n") == b""  # over the 1 MiB limit
        assert server.alive()


@pytest.mark.timeout(300)
def test_the_quick_run_measures_every_server_in_both_modes_and_writes_the_page(tmp_path):
    page = tmp_path / "benchmarks.md"
    page.write_text(f"# Kept above\n\n{report.BEGIN}\nold\n{report.END}\n\nkept below\n")
    results = tmp_path / "results.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--duration", "0.2"]
    command += [
        "--warmup",
        "0.05",
        "--idle-connections",
        "40",
        "--docs",
        str(page),
        "--results",
        str(results),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=290, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    saved = json.loads(results.read_text())
    servers = [f"{impl}/{mode}" for impl in run.IMPLS for mode in run.MODES]
    servers = [s for s in servers if s.split("/")[0] not in saved["missing"]]
    assert saved["servers"] == servers and "asyncio-protocol/fast" in servers
    for name in run.ALL_WORKLOADS:
        workload = saved["workloads"][name]
        assert set(workload["rounds"][0]) == set(servers), (name, workload["failures"])
    for name in run.WORKLOADS:
        for entry, row in saved["workloads"][name]["rounds"][0].items():
            # CPU time is read in clock ticks: a 0.2 s run may see none.
            assert row["rate"] > 0 and row["user_us"] >= 0 and row["sys_us"] >= 0, (name, entry)
    assert saved["workloads"]["open"]["offered"] > 0
    idle = saved["workloads"]["idle"]["rounds"][0]
    assert all(row["served"] == 40 for row in idle.values()), idle
    text = page.read_text()
    assert text.startswith("# Kept above") and "kept below" in text and "\nold\n" not in text
    generated = text.split(report.BEGIN)[1].split(report.END)[0]
    for entry in servers:
        # In both summary tables and in every workload's table.
        assert generated.count(f"| {report.label(entry)} |") == 2 + len(run.ALL_WORKLOADS), entry
    assert "### Targets (issue 11)" in generated
    assert "echo-1: 50 clients" in done.stdout  # the tables went to stdout too


def test_ratios_are_per_round_medians_against_asyncio_in_fast_mode():
    def sample(rate, us):
        return {"rate": rate, "us": us, "user_us": us / 2, "sys_us": us / 2, "server_busy": 1.0}

    base, evloop = report.BASELINE, report.EVLOOP
    workload = {
        "title": "t",
        "unit": "request",
        "servers": [evloop, base],
        "failures": {},
        "rounds": [
            {evloop: sample(120, 10), base: sample(100, 20)},
            {evloop: sample(60, 10), base: sample(40, 30)},
            {evloop: sample(90, 10), base: sample(100, 40)},
        ],
    }
    table = report.stats(workload)[evloop]
    # Per round: 1.2, 1.5, 0.9 -> median 1.2 (the ratio of the medians would be 0.9).
    assert table["rate_vs"][base] == {"median": 1.2, "min": 0.9, "max": 1.5, "n": 3}
    # CPU per request: 10/20, 10/30, 10/40 -> median 1/3.
    assert table["cpu_vs"][base]["median"] == pytest.approx(1 / 3)
    assert table["rate"]["median"] == 90
    checks = dict(
        (what, (shown, met)) for what, shown, met in report.check_targets({"workloads": {"echo-1": workload}})
    )
    assert checks["50 x 1: rate >= 1.15x asyncio Protocol's"] == (
        "1.20x (0.90-1.50) of asyncio Protocol, fast's",
        True,
    )
    assert checks["50 x 1: CPU per request <= asyncio's / 1.15"][1] is True


def rerun_command():
    """The full run's command, as the benchmarks page gives it."""
    block = re.search(r"```sh\n(python benchmarks/run\.py[^\n]*)\n", PAGE.read_text())
    assert block, "docs/benchmarks.md gives the command that reruns the benchmark"
    return shlex.split(block.group(1))


def test_the_page_gives_the_full_runs_command_and_it_parses():
    words = rerun_command()
    _args, settings, chosen = run.parse_args(words[2:])
    assert settings["runs"] == 3 and settings["duration"] == 4 and settings["warmup"] == 1
    assert settings["idle_connections"] == 10000
    assert chosen["impls"] == run.IMPLS and chosen["modes"] == run.MODES
    assert chosen["workloads"] == run.ALL_WORKLOADS


def test_the_profiling_commands_on_the_page_run_as_written():
    text = PAGE.read_text()
    block = next(b for b in re.findall(r"```sh\n(.+?)```", text, re.S) if "profile_evloop" in b)
    commands = [line for line in block.splitlines() if line.strip()]
    assert len(commands) == 2
    for line in commands:
        words = shlex.split(line)
        assert words[0] == "python"
        done = subprocess.run(
            [sys.executable, *words[1:]], capture_output=True, text=True, timeout=100, cwd=ROOT
        )
        assert done.returncode == 0, f"{line}\n{done.stderr[-2000:]}"
        assert done.stdout.strip(), line
