"""The package as a user gets it: built into an sdist and a wheel, installed
in a fresh virtual environment, run from a directory whose own files could
shadow it, and installed with every command the docs show."""

import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import venv
import zipfile

import pytest

from evloop import __version__
from tests.conftest import recv_exactly
from tests.examples import ROOT, running_example

# Building and installing with pip takes tens of seconds on a quiet machine,
# minutes on a loaded one: more than the suite's 120 s per test.
pytestmark = pytest.mark.timeout(900)

USERS_PROTOCOLS = '''\
"""A user's own protocols.py, beside their program: it must not hide evloop's."""
from evloop.protocols import LengthSepEcho


class Mine(LengthSepEcho):
    def make_response(self):
        return b"mine:" + self.request
'''


def serve_and_ask(command, cwd, env, request, size):
    """Run ``command`` (a CLI server with --port 0), send ``request`` once it
    listens, return the ``size``-byte reply."""
    process = subprocess.Popen(command, cwd=cwd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stderr:
            found = re.search(r"listening on (\S+):(\d+)", line)
            if found:
                break
        else:
            raise AssertionError("the server did not start")
        with socket.create_connection((found.group(1).strip("[]"), int(found.group(2))), timeout=10) as sock:
            sock.sendall(request)
            return recv_exactly(sock, size)
    finally:
        process.kill()
        process.wait()
        process.stderr.close()


def test_the_command_line_from_a_directory_with_its_own_protocols_py(tmp_path):
    (tmp_path / "protocols.py").write_text(USERS_PROTOCOLS)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    serve = [sys.executable, "-m", "evloop", "serve", "--host", "127.0.0.1", "--port", "0"]
    assert serve_and_ask([*serve, "evloop.protocols:LengthSepEcho"], tmp_path, env, b"2\nhi", 4) == b"2\nhi"
    # ...and the user's own module of that name is theirs to serve.
    assert serve_and_ask([*serve, "protocols:Mine"], tmp_path, env, b"2\nhi", 7) == b"mine:hi"


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """The sdist and the wheel, built by `python -m build` (the wheel from
    the sdist, as a release is)."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


@pytest.fixture(scope="module")
def fresh_python(dist, tmp_path_factory):
    """The python of a fresh venv with only the wheel installed (no extras, no
    network)."""
    home = tmp_path_factory.mktemp("venv")
    venv.create(home, with_pip=True)
    python = str(home / "bin" / "python")
    (wheel,) = dist.glob("*.whl")
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return python


def test_the_sdist_and_the_wheel_hold_evloop_and_its_protocols(dist):
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")
    assert wheel.name == f"evloop_server-{__version__}-py3-none-any.whl"
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"protocols/lengthsep.py", "evloop/cli.py", "pyproject.toml", "README.md"} <= names
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {"evloop/protocols/lengthsep.py", "evloop/py.typed", "evloop/__main__.py"} <= names
    assert not any(name.startswith("protocols/") for name in names), "a top-level protocols package"


def test_the_installed_wheel_runs_the_command_line_and_an_example(fresh_python, tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    version = subprocess.run(
        [fresh_python, "-m", "evloop", "--version"], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert version.stdout.strip() == f"evloop {__version__}"
    with running_example("echo_lengthsep.py", python=fresh_python, cwd=tmp_path, source_tree=False) as (
        host,
        port,
        _,
    ):
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(b"5\nhello")
            assert recv_exactly(sock, 5) == b"hello"
    # No extras installed: the WebSocket example names the one to install.
    example = subprocess.run(
        [fresh_python, str(ROOT / "examples" / "websocket_echo.py")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=30,
    )
    assert example.returncode == 2
    # Installed with no extras: the first of the websocket extra's modules
    # it imports is the one named (wsproto; HTTP's parser is loaded lazily).
    assert (
        example.stderr
        == "websocket_echo.py: error: wsproto is missing: pip install 'evloop-server[websocket]'\n"
    )


def documented_installs():
    """Every `pip install` command in README.md and docs/, as written: a
    code line (less its comment) or an inline `code` span."""
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for line in path.read_text().splitlines():
            spans = re.findall(r"`([^`]*pip install[^`]*)`", line) if "`" in line else [line]
            for span in spans:
                command = span.split("  #")[0].strip()
                if "pip install" in command:
                    yield path.relative_to(ROOT).as_posix(), command


def extras_of_the_project():
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([\w-]+) = \[", section, re.M))


def test_every_documented_install_command_names_real_extras_and_files(dist):
    extras = extras_of_the_project()
    assert {"http", "websocket", "test", "bench"} <= extras
    (wheel,) = dist.glob("*.whl")
    commands = list(documented_installs())
    assert len(commands) >= 8
    for path, command in commands:
        for named in re.findall(r"\[([\w,]+)\]", command):
            assert set(named.split(",")) <= extras, (path, command)
        for file in re.findall(r"dist/(\S+?\.whl)", command):
            assert file == wheel.name, (path, command)


def test_the_documented_install_commands_run_as_written(tmp_path):
    """From a copy of the checkout, in one fresh venv: the README's and the
    HTTP and WebSocket pages' commands (these fetch h11 and wsproto from the
    package index). The -e '.[test]' and -e '.[bench]' lines are .ci/run's
    own and the benchmarks'; they are not repeated here."""
    checkout = tmp_path / "checkout"
    shutil.copytree(
        ROOT,
        checkout,
        ignore=shutil.ignore_patterns(
            ".git", "build", "dist", "site", "*.egg-info", "__pycache__", ".*_cache", ".venv*"
        ),
    )
    home = tmp_path / "venv"
    venv.create(home, with_pip=True)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PATH"] = f"{home / 'bin'}{os.pathsep}{env['PATH']}"
    env["VIRTUAL_ENV"] = str(home)
    # The README's and miniredis.md's lines also start a server: only their
    # install part is run; each distinct install once, in order.
    installs = [command.split(" && python ")[0] for _, command in documented_installs()]
    for install in dict.fromkeys(command for command in installs if " -e " not in command):
        result = subprocess.run(
            ["sh", "-c", install], cwd=checkout, env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, f"{install}\n{result.stderr[-2000:]}"
        shutil.rmtree(checkout / "dist", ignore_errors=True)
    check = "import evloop.protocols.http, evloop.protocols.websocket; print('ok')"
    imported = subprocess.run(
        [str(home / "bin" / "python"), "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert imported.stdout.strip() == "ok", imported.stderr
