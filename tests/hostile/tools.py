"""What the hostile tests share: a server in a subprocess with its log read
through a queue, readings of its memory, CPU and descriptors from /proc, and
a raised descriptor limit for the attacking side."""

import contextlib
import os
import queue
import re
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"listening on (\S+):(\d+)")

linux_only = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")


class ServerProcess:
    """``python -m tests.hostile.serve ARGS`` and its output, line by line."""

    def __init__(self, *args, env=None):
        env = dict(
            os.environ,
            **(env or {}),
            PYTHONUNBUFFERED="1",
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.hostile.serve", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.pid = self.process.pid
        self.lines = queue.Queue()
        self.seen = []
        threading.Thread(target=self._pump, daemon=True).start()
        match = LISTENING.search(self.wait_for("listening on"))
        self.host, self.port = match.group(1), int(match.group(2))
        self.address = (self.host, self.port)

    def _pump(self):
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text, timeout=20):
        """The next line of output holding ``text`` (waited for, not polled)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {text!r} in the server's output:\n{self.output()}"
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            assert line is not None, f"the server ended before {text!r}:\n{self.output()}"
            self.seen.append(line)
            if text in line:
                return line

    def output(self):
        """Everything it printed so far."""
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.seen.append(line)
        return "".join(self.seen)

    def count(self, text):
        return sum(text in line for line in self.output().splitlines())

    def rss_kib(self):
        return _status_field(self.pid, "VmRSS")

    def cpu_seconds(self):
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def open_descriptors(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.output()
        self.process.stdout.close()


@contextlib.contextmanager
def server_process(*args, env=None):
    server = ServerProcess(*args, env=env)
    try:
        yield server
    finally:
        server.stop()


def _status_field(pid, name):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise KeyError(name)


@contextlib.contextmanager
def descriptor_limit(wanted):
    """Raise this process's soft RLIMIT_NOFILE to ``wanted`` (skip the test
    if the hard limit is lower), and put it back afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"needs {wanted} descriptors; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def source_addresses(count):
    """Loopback source addresses to spread many client connections over, so
    one run does not use up the ephemeral ports of a single address pair
    (Linux routes all of 127/8 to lo; elsewhere just 127.0.0.1)."""
    if not sys.platform.startswith("linux"):
        return ["127.0.0.1"]
    return [f"127.0.0.{n}" for n in range(2, 2 + count)]
