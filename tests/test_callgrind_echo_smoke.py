"""benchmarks/callgrind_echo.py's workload, so it cannot rot: it serves
every round's pipelined requests, with the client memory budget on and
off (the count itself needs valgrind and is not taken here)."""

import pytest

from benchmarks import callgrind_echo


@pytest.mark.parametrize("budget", [True, False])
def test_the_workload_serves_every_round(budget):
    # serve_rounds returns only once every reply of every round is back.
    callgrind_echo.serve_rounds(pipeline=4, rounds=3, budget=budget)


def test_without_valgrind_it_says_so(monkeypatch, capsys):
    monkeypatch.setattr(callgrind_echo.shutil, "which", lambda name: None)
    assert callgrind_echo.main(["--rounds", "1"]) == 2
    assert "valgrind is not installed" in capsys.readouterr().err
