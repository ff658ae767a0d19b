"""loop.stats(): a frozen snapshot of the loop's counters, rates and lag;
and what loop() logs when the program configured no logging."""

import dataclasses
import re
import subprocess
import sys
import textwrap

import pytest
from evloop.protocols import LengthSepEcho

from evloop import EventLoop, LoopStats
from evloop.stats import format_stats
from tests.conftest import RunningLoop, connect, recv_exactly
from tests.examples import ROOT
from tests.waiting import wait_on_loop


def test_a_fresh_loop_reports_zeros():
    with EventLoop() as loop:
        stats = loop.stats()
    assert isinstance(stats, LoopStats)
    assert (stats.connections, stats.requests, stats.bytes_received, stats.bytes_sent) == (0, 0, 0, 0)
    assert (stats.requests_per_second, stats.lag, stats.window) == (0.0, 0.0, 0.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.requests = 1  # type: ignore[misc]


def test_stats_count_connections_requests_bytes_and_measure_a_window():
    running = RunningLoop().start()
    try:
        server = running.serve(LengthSepEcho)
        running.call(running.loop.stats)  # starts sampling
        with connect(server) as sock:
            for _ in range(5):
                sock.sendall(b"5\nhello")
                assert recv_exactly(sock, 7) == b"5\nhello"
            stats = running.call(running.loop.stats)
            assert (stats.connections, stats.requests) == (1, 5)
            assert (stats.bytes_received, stats.bytes_sent) == (35, 35)
            # The first one-second window ends: it saw the five requests.
            assert wait_on_loop(running, lambda: running.loop.stats().window > 0)
            stats = running.call(running.loop.stats)
        assert stats.requests_per_second > 0 and stats.bytes_sent_per_second > 0
        assert 0.0 <= stats.lag < stats.window
        line = format_stats(stats)
        assert re.fullmatch(r"connections=\d requests/s=\d+ in=\d+B/s out=\d+B/s lag=[\d.]+ms", line), line
    finally:
        running.stop()


PROGRAM = textwrap.dedent(
    """
    import logging, socket, sys, threading
    from evloop import Server, loop
    from evloop.protocols import LengthSepEcho

    class StopOnConnect(LengthSepEcho):
        def setup(self):
            self.loop.stop()

    if sys.argv[1] == "configured":
        logging.basicConfig(level=logging.INFO, format="mine: %(message)s")
    server = Server("127.0.0.1", 0)
    threading.Thread(target=socket.create_connection, args=(("127.0.0.1", server.port),)).start()
    loop(server, StopOnConnect, default_logging=sys.argv[1] != "off")
    """
)


@pytest.mark.parametrize(
    "mode, expected",
    [
        # No logging configured: time, level, logger, where it listens.
        (
            "default",
            r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO evloop: "
            r"listening on 127\.0\.0\.1:\d+ \(StopOnConnect\)\n",
        ),
        # The program's own configuration wins, and nothing is doubled.
        ("configured", r"mine: listening on 127\.0\.0\.1:\d+ \(StopOnConnect\)\n"),
        # default_logging=False: logging is left as Python has it (warnings only).
        ("off", r""),
    ],
)
def test_loop_logs_where_it_listens_readably_unless_told_not_to(mode, expected):
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, timeout=30, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(expected, result.stderr), result.stderr
