"""benchmarks/wsgi_bench.py in its quickest mode, so it cannot rot: wrk
drives evloop (and waitress or gunicorn where installed) for a second per
case. No timing is asserted: only that every case ran without errors and
that wrk's report is read right."""

import importlib.util
import shutil
import subprocess
import sys

import pytest

from benchmarks.wsgi_bench import parse_wrk
from tests.examples import ROOT

WRK_OUTPUT = """\
Running 1s test @ http://127.0.0.1:40000/
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   810.00us  200.00us   3.00ms   90.00%
    Req/Sec     4.90k   300.00     5.20k    80.00%
  Latency Distribution
     50%  780.00us
     75%  850.00us
     90%    1.00ms
     99%    1.20s
  4900 requests in 1.00s, 700.00KB read
  Socket errors: connect 0, read 1, write 0, timeout 2
  Non-2xx or 3xx responses: 4
Requests/sec:   4899.50
Transfer/sec:    700.00KB
"""


def test_wrk_report_is_read_right():
    assert parse_wrk(WRK_OUTPUT) == {
        "rps": 4899.5,
        "p50": 0.78,
        "p99": 1200.0,
        "errors": 7.0,
        "requests": 4900.0,
    }


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)")
@pytest.mark.skipif(importlib.util.find_spec("flask") is None, reason="the benchmark serves a Flask app")
def test_the_benchmark_runs_end_to_end():
    servers = ["evloop"] + [
        name
        for name, module in (("waitress", "waitress"), ("gunicorn gthread", "gunicorn"))
        if importlib.util.find_spec(module) is not None
    ]
    done = subprocess.run(
        [
            sys.executable, "benchmarks/wsgi_bench.py", "--duration", "1", "--runs", "1",
            "--connections", "4", "--threads", "2", "--servers", ",".join(servers),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=100,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [line.split("|")[1:-1] for line in done.stdout.splitlines() if line.startswith("| ")][1:]
    assert {row[0].strip() for row in rows} == set(servers)
    for name, path, rps, _p50, _p99, cpu, errors in rows:
        assert float(rps.replace(",", "")) > 0, (name, path)
        assert float(cpu) > 0, (name, path)
        assert errors.strip() == "0", (name, path)
