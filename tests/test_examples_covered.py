"""Every file in examples/ is started, as a user starts it, by some test."""

import re

from tests.examples import ROOT


def test_every_example_is_started_by_a_test():
    started = set()
    for test_file in (ROOT / "tests").rglob("test_*.py"):
        started.update(re.findall(r'running_example\(\s*"([\w.]+\.py)"', test_file.read_text()))
    examples = {path.name for path in (ROOT / "examples").glob("*.py")}
    assert examples - started == set(), "examples no test starts"


def test_every_example_takes_a_port_and_says_where_it_listens():
    for path in (ROOT / "examples").glob("*.py"):
        text = path.read_text()
        assert '"--port"' in text, path.name
        assert "listening on" in text, path.name
