"""Every ``nc`` command the docs show finishes by itself and prints what the
docs say. Each row names the file that documents the command (the text must
be there, word for word), the example that serves it, and the reply."""

import shutil
import subprocess

import pytest

from tests.examples import ROOT, running_example

pytestmark = pytest.mark.skipif(
    not shutil.which("nc"), reason="nc is not installed (.ci/run installs netcat-openbsd)"
)

# (documented in, the example and its options, the command as a user types
# it, what it prints). The port in the command is replaced by the one the
# example bound.
COMMANDS = [
    ("README.md", ["echo_lengthsep.py"], "printf '5\\nhello' | nc localhost 8000", "hello"),
    ("examples/echo_lengthsep.py", ["echo_lengthsep.py"], "printf '5\\nhello' | nc localhost 8000", "hello"),
    (
        "examples/echo_lengthsep.py",
        ["echo_lengthsep.py", "--persistent", "--upper"],
        "printf '5\\nhello' | nc -q1 localhost 8000",
        "5\nHELLO",
    ),
    # The command line's help; `serve evloop.protocols:LengthSepEcho` is
    # what echo_lengthsep.py --persistent serves.
    (
        "evloop/cli_options.py",
        ["echo_lengthsep.py", "--persistent"],
        "printf '5\\nhello' | nc -q1 localhost 8000",
        "5\nhello",
    ),
    # tk_embed.py serves a LengthSepEcho too (tests/test_example_tk.py runs
    # it under Xvfb); the command is the same.
    (
        "examples/tk_embed.py",
        ["echo_lengthsep.py", "--persistent"],
        "printf '5\\nhello' | nc -q1 localhost 8000",
        "5\nhello",
    ),
    (
        "examples/asyncio_bridge.py",
        ["asyncio_bridge.py"],
        "printf '0.5 slow\\n0 fast\\n' | nc -q1 localhost 8000",
        "SLOW\nFAST",
    ),
    (
        "examples/asyncio_bridge.py",
        ["asyncio_bridge.py"],
        "printf 'timer 0.2\\n' | nc -q1 localhost 8000",
        "tick",
    ),
    (
        "examples/request_server.py",
        ["request_server.py"],
        "printf 'hello\\r\\n' | nc localhost 8000",
        "Requested: hello",
    ),
    (
        "examples/socketserver_style.py",
        ["socketserver_style.py", "--unix", "{tmp}/upper.sock"],
        "printf 'hello\\n' | nc -q1 localhost 9000",
        "HELLO",
    ),
    (
        "examples/socketserver_style.py",
        ["socketserver_style.py", "--unix", "{tmp}/upper.sock"],
        "printf 'hello\\n' | nc -u -w1 localhost 9000",
        "HELLO",
    ),
    (
        "examples/socketserver_style.py",
        ["socketserver_style.py", "--unix", "{tmp}/upper.sock"],
        "printf 'hello\\n' | nc -q1 -U /tmp/upper.sock",
        "HELLO",
    ),
]


def documented(path, command):
    """Is ``command`` in ``path`` as written (in a .py docstring, with its
    backslashes doubled)?"""
    text = (ROOT / path).read_text()
    return command in text or command.replace("\\", "\\\\") in text


@pytest.mark.parametrize("path, example, command, reply", COMMANDS)
def test_every_documented_nc_command_finishes_and_prints_the_reply(path, example, command, reply, tmp_path):
    assert documented(path, command), f"{path} no longer shows: {command}"
    script, *options = example
    options = [option.format(tmp=tmp_path) for option in options]
    with running_example(script, *options) as (_, port, _process):
        runnable = command.replace(" 8000", f" {port}").replace(" 9000", f" {port}")
        runnable = runnable.replace("/tmp/upper.sock", str(tmp_path / "upper.sock"))
        result = subprocess.run(["sh", "-c", runnable], capture_output=True, text=True, timeout=20)
    assert result.stdout.strip() == reply, result.stderr


def test_the_proxy_command_finishes(tmp_path):
    command = "printf '5\\nhello' | nc -q1 localhost 9000"
    assert documented("examples/tcp_proxy.py", command)
    with running_example("echo_lengthsep.py", "--persistent") as (host, target, _):
        with running_example("tcp_proxy.py", "--target", f"{host}:{target}") as (_, port, _process):
            runnable = command.replace(" 9000", f" {port}")
            result = subprocess.run(["sh", "-c", runnable], capture_output=True, text=True, timeout=20)
    assert result.stdout.strip() == "5\nhello", result.stderr
