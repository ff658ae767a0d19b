"""docs/architecture.md tells the truth about the code: every module is in
its map, its state table is the connection's, its picture is current; and
the house rules it states hold (module sizes, the loop core's imports)."""

import ast
import re
import subprocess
import sys

from evloop.states import STATE_NAMES, TRANSITIONS
from tests.examples import ROOT

DOC = (ROOT / "docs" / "architecture.md").read_text()


def test_every_module_is_in_the_map_and_every_entry_is_a_module():
    mapped = set(re.findall(r"^\| `((?:evloop|protocols)/[\w.]+\.py)` \|", DOC, re.M))
    present = {
        str(path.relative_to(ROOT))
        for folder in ("evloop", "protocols")
        for path in (ROOT / folder).glob("*.py")
    }
    assert mapped == present


def test_the_state_table_is_the_connections():
    rows = re.findall(r"^\| ([A-Z_]+) \| [^|]+ \| ([^|]+) \|$", DOC, re.M)
    table = {
        STATE_NAMES.index(state): {STATE_NAMES.index(name.strip()) for name in moves.split(",")}
        if moves.strip() != "(none)"
        else set()
        for state, moves in rows
    }
    assert table == {state: set(moves) for state, moves in TRANSITIONS.items()}


def test_the_picture_is_drawn_from_the_map():
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "make_architecture_svg.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout


def test_no_engine_module_is_over_500_lines():
    long = {
        path.name: count
        for path in (ROOT / "evloop").glob("*.py")
        if (count := len(path.read_text().splitlines())) > 500
    }
    assert long == {}


def test_the_loop_core_imports_nothing_above_it():
    # At import time: module-level imports only (typing-only ones aside).
    # EventLoop.stats() loads the reporting module when first called.
    core = {"eventloop", "timers", "multiplexer"}
    for name in core:
        tree = ast.parse((ROOT / "evloop" / f"{name}.py").read_text())
        imported = {node.module for node in tree.body if isinstance(node, ast.ImportFrom) and node.level}
        assert imported <= core, (name, imported - core)
