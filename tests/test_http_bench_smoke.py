"""benchmarks/http_bench.py in its quickest mode, so it cannot rot: each
server starts, answers the check request and is measured by wrk; the table
and the JSON come out. No timing is asserted."""

import importlib.util
import json
import shutil
import subprocess
import sys

import pytest

from tests.examples import ROOT

pytestmark = pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (Debian: apt-get install wrk)")


def test_http_bench_runs_every_server_it_can(tmp_path):
    servers = ["evloop-h11"]
    if importlib.util.find_spec("httptools"):
        servers.append("evloop-httptools")
    if importlib.util.find_spec("uvicorn"):
        servers.append("uvicorn-h11")
    out = tmp_path / "result.json"
    done = subprocess.run(
        [
            sys.executable,
            "benchmarks/http_bench.py",
            "--duration",
            "1",
            "--warmup",
            "0",
            "--rounds",
            "1",
            "--connections",
            "4",
            "--servers",
            *servers,
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())
    assert sorted(results) == sorted(servers)
    for result in results.values():
        assert result["requests_per_second"] > 0 and result["p99_ms"] >= result["p50_ms"] > 0
        assert result["errors"] == ""
    assert "| evloop-h11 (" in done.stdout
