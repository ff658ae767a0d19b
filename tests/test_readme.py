"""The README's two commands, as a newcomer runs them."""

import re
import shlex
import shutil
import socket
import subprocess
import sys
import venv

import pytest

from tests.conftest import recv_all
from tests.examples import ROOT, running_example

README = (ROOT / "README.md").read_text()


def command_after(heading):
    section = README.split(heading, 1)[1]
    return re.search(r"```sh\n(.+?)\n```", section, re.S).group(1).strip()


RUN_COMMAND = command_after("## Try it")
TEST_COMMAND = command_after("## Run the tests")


def test_ci_runs_the_readmes_test_command_word_for_word():
    ci = (ROOT / ".ci" / "run").read_text()
    assert f'TEST_COMMAND="{TEST_COMMAND}"' in ci
    assert 'eval "$TEST_COMMAND"' in ci


@pytest.mark.timeout(300)
def test_readme_run_command_installs_and_serves_from_a_fresh_venv(tmp_path):
    install, run = [part.strip() for part in RUN_COMMAND.split("&&")]
    assert install.startswith("python -m pip install ")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = str(env_dir / "bin" / "python")
    # A copy stands in for a fresh clone, and keeps build files out of this one.
    clone = tmp_path / "clone"
    shutil.copytree(
        ROOT,
        clone,
        ignore=shutil.ignore_patterns(
            ".git", "build", "*.egg-info", "__pycache__", ".venv*", ".hypothesis", ".*_cache"
        ),
    )
    subprocess.run(
        [python, *shlex.split(install)[1:]],
        cwd=clone,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=240,
    )
    words = shlex.split(run)
    assert words[0] == "python" and words[1].startswith("examples/")
    script = words[1].split("/", 1)[1]
    options = words[2:]
    port_at = options.index("--port")
    del options[port_at : port_at + 2]  # the test picks a free port instead of 8000
    with running_example(script, *options, python=python, cwd=tmp_path, source_tree=False) as (host, port, _):
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(b"5\nhello")  # what the README's printf sends
            assert recv_all(sock) == b"hello"


def test_readme_protocol_example_runs():
    code = re.search(r"## A protocol in 15 lines\n\n```python\n(.+?)```", README, re.S).group(1)
    assert len([line for line in code.splitlines() if line.strip()]) <= 15
    code = code.replace('loop(Server("localhost", 8001), Shout)', "")
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    from evloop.testing import HandlerHarness

    harness = HandlerHarness(namespace["Shout"])
    assert harness.feed(b"hi\nthere\npart") == b"HI\nTHERE\n"
    assert harness.feed(b"ial\n") == b"PARTIAL\n"
    assert not harness.closed


if sys.platform != "linux":  # pragma: no cover
    pytestmark = pytest.mark.skip("the README's commands are written for a POSIX shell")
