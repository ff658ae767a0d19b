"""The benchmark machinery, in its quickest mode, so it cannot rot.

No timing is asserted: only that the C load generator builds, drives each
mode against a real evloop server on 127.0.0.1 and notices a wrong reply,
that ``benchmarks/run.py`` runs every workload end to end on tiny settings
and writes its report, and that the report's arithmetic is right.
"""

import json
import re
import shlex
import shutil
import subprocess
import sys

import pytest
from evloop.protocols import LengthSepBody, LengthSepEcho
from evloop.protocols.jsonmsg import JsonEcho

from benchmarks import report, run
from tests.examples import ROOT

pytestmark = pytest.mark.skipif(
    shutil.which("gcc") is None and shutil.which("cc") is None, reason="the load generator needs a C compiler"
)

QUICK = ["--warmup", "0", "--duration", "0.2", "--timeout", "20"]


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


def test_json_mode_checks_crc_and_framing(loadgen, running_loop):
    server = running_loop.serve(JsonEcho)
    result = drive(loadgen, server, "--mode", "json", "--clients", "3", "--depth", "2")
    assert result["errors"] == 0, result["first_error"]
    assert result["requests"] > 0


def test_conn_mode_opens_a_connection_per_request(loadgen, running_loop):
    server = running_loop.serve(LengthSepBody)
    result = drive(loadgen, server, "--mode", "conn", "--clients", "3", "--sources", "2")
    assert result["errors"] == 0, result["first_error"]
    assert result["requests"] > 0


def test_hold_mode_holds_then_serves(loadgen, running_loop):
    server = running_loop.serve(LengthSepEcho)
    process = subprocess.Popen(
        [
            loadgen,
            "--port",
            str(server.port),
            "--mode",
            "hold",
            "--clients",
            "30",
            "--silent",
            "1",
            "--timeout",
            "20",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
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


def test_the_runner_runs_every_workload_and_writes_the_report(tmp_path):
    results = tmp_path / "results.json"
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "run.py"),
        "--quick",
        "--runs",
        "1",
        "--duration",
        "0.2",
        "--warmup",
        "0.05",
        "--impls",
        "evloop,asyncio-protocol",
        "--idle-connections",
        "60",
        "--held-connections",
        "80",
        "--scaling",
        "70",
        "--docs-dir",
        str(tmp_path),
        "--results",
        str(results),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=110, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    saved = json.loads(results.read_text())
    for name in run.THROUGHPUT:
        row = saved["workloads"][name]["rounds"][0]
        for impl in ("evloop", "asyncio-protocol"):
            assert row[impl]["rate"] > 0, (name, impl, saved["workloads"][name]["failures"])
    idle = saved["workloads"]["idle"]["rounds"][0]["evloop"]
    assert idle["held"] == 60 and idle["served"] == 60 and idle["server_fds"] == 60
    held = saved["workloads"]["held"]
    assert held["served"] == 80 and held["alive"]
    scaling = saved["workloads"]["scaling"]["table"]
    assert scaling["evloop/epoll"]["70"]["samples"], scaling
    page = (tmp_path / "benchmarks.md").read_text()
    assert report.BEGIN in page and report.END in page
    assert "### echo-1:" in page and "### idle:" in page and "### scaling:" in page
    assert "echo-1:" in done.stdout  # the table went to stdout too
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (tmp_path / "benchmarks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ratios_are_per_round_medians_and_the_page_keeps_hand_written_text(tmp_path):
    def sample(rate, us):
        return {"rate": rate, "server_cpu": 1.0, "loadgen_cpu": 0.5, "server_us": us, "errors": 0}

    workload = {
        "title": "t",
        "impls": ["evloop", "asyncio-protocol"],
        "failures": {},
        "rounds": [
            {"evloop": sample(120, 10), "asyncio-protocol": sample(100, 20)},
            {"evloop": sample(60, 10), "asyncio-protocol": sample(40, 30)},
            {"evloop": sample(90, 10), "asyncio-protocol": sample(100, 40)},
        ],
    }
    table = report.stats(workload)["evloop"]
    # Per round: 1.2, 1.5, 0.9 -> median 1.2 (the ratio of medians would be 0.9).
    assert table["ratio"] == {"median": 1.2, "min": 0.9, "max": 1.5, "n": 3}
    assert table["cpu_ratio"]["median"] == 3.0
    assert table["rate"]["median"] == 90
    results = {"workloads": {"echo-1": workload}, "environment": {}, "settings": {}}
    checks = report.check_targets(results)
    assert checks[0][2] is True and "1.20x" in checks[0][1]
    page = tmp_path / "benchmarks.md"
    page.write_text(f"# Title\n\nkept above\n\n{report.BEGIN}\nold\n{report.END}\n\nkept below\n")
    report.write_markdown(results, str(page))
    text = page.read_text()
    assert "kept above" in text and "kept below" in text and "old" not in text
    assert "| evloop | 90 |" in text


def test_the_commands_on_the_benchmarks_page_run_as_written():
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    block = next(b for b in re.findall(r"```sh\n(.+?)```", page, re.S) if "--no-docs" in b)
    commands = [line for line in block.splitlines() if line.strip()]
    assert len(commands) == 3
    for line in commands:
        words = shlex.split(line)
        assert words[0] == "python"
        done = subprocess.run(
            [sys.executable, *words[1:]], capture_output=True, text=True, timeout=100, cwd=ROOT
        )
        assert done.returncode == 0, f"{line}\n{done.stderr[-2000:]}"
        assert done.stdout.strip(), line
