"""examples/tk_embed.py: evloop driven by Tk's main loop, on a virtual screen."""

import os
import shutil
import socket
import subprocess

import pytest

from tests.conftest import recv_exactly
from tests.examples import running_example

pytest.importorskip("tkinter")
pytestmark = pytest.mark.skipif(
    not shutil.which("Xvfb"), reason="Xvfb is not installed (.ci/run installs the xvfb package)"
)


@pytest.fixture
def display():
    """A private Xvfb server; yields its DISPLAY value."""
    read_end, write_end = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_end), "-nolisten", "tcp"],
        pass_fds=[write_end],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_end)
    try:
        with os.fdopen(read_end) as reader:
            number = reader.readline().strip()
        assert number, "Xvfb did not report a display"
        yield f":{number}"
    finally:
        xvfb.terminate()
        xvfb.wait(10)


def test_tk_window_serves_requests_through_run_once(display):
    with running_example("tk_embed.py", env={"DISPLAY": display}) as (host, port, _):
        with socket.create_connection((host, port), timeout=10) as sock:
            for body in (b"hello", b"from", b"tk"):
                sock.sendall(b"%d\n%s" % (len(body), body))
                assert recv_exactly(sock, len(body) + 2) == b"%d\n%s" % (len(body), body)
