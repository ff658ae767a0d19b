"""The processes of a deployment test: evloop hosts, the balancer, and a
pool of clients, with waits on conditions (never a sleep as a sync).

``LoggedProcess`` runs a command in a session of its own, keeps every line
it writes, and can kill its whole process group and wait until none of it
is left. ``stats(socket_path)`` reads HAProxy's ``show stat``. ``Load`` is
a bounded pool of client threads, each doing one request per connection
through the balancer and recording what happened to it.
"""

import csv
import io
import os
import re
import signal
import socket
import subprocess
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

__all__ = ["Load", "LoggedProcess", "Record", "stats", "until"]

WAIT = 10.0


def until(predicate: Callable[[], Any], timeout: float = WAIT, what: str = "condition") -> Any:
    """Poll ``predicate`` every 20 ms until it returns something true;
    fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class LoggedProcess:
    """A command in its own session; its output lines in ``self.lines``."""

    def __init__(self, name: str, argv: List[str], env: Optional[Dict[str, str]] = None, cwd: Any = None):
        self.name = name
        self.lines: List[str] = []
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        self.pid = self.process.pid
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.lines.append(None)  # type: ignore[arg-type]
            self._changed.notify_all()

    def output(self) -> str:
        with self._changed:
            return "\n".join(line for line in self.lines if line is not None)

    def wait_for(self, pattern: str, start: int = 0, timeout: float = WAIT) -> "re.Match[str]":
        """The first line from index ``start`` on that matches ``pattern``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[start:]:
                    if line is None:
                        raise AssertionError(f"{self.name} exited before {pattern!r}:\n{self.output()}")
                    found = re.search(pattern, line)
                    if found:
                        return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no line like {pattern!r} from {self.name}:\n{self.output()}")
                self._changed.wait(left)

    def group(self) -> List[int]:
        """The live (not zombie) processes of this process's group."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == self.pid and fields[0] not in ("Z", "X"):
                pids.append(int(entry))
        return pids

    def kill(self) -> None:
        """SIGKILL the whole group, and wait until none of it is alive."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        until(lambda: not self.group(), what=f"{self.name}'s processes to die")
        self.process.wait(WAIT)

    def close(self) -> None:
        self.kill()
        self._reader.join(WAIT)
        if self.process.stdout is not None:
            self.process.stdout.close()


def stats(path: str) -> Dict[Tuple[str, str], Dict[str, str]]:
    """HAProxy's ``show stat`` over its stats socket: (proxy, server) -> row."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(WAIT)
        sock.connect(path)
        sock.sendall(b"show stat\n")
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    text = b"".join(chunks).decode().lstrip("# ")
    return {(row["pxname"], row["svname"]): row for row in csv.DictReader(io.StringIO(text))}


class Record:
    """One request: when it started and ended, the client's own address, and
    what came back (or the error)."""

    __slots__ = ("start", "end", "local", "answer", "error")

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.end = 0.0
        self.local: Optional[Tuple[str, int]] = None
        self.answer: Dict[str, str] = {}
        self.error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def __repr__(self) -> str:
        return f"<request {self.local} {self.answer or self.error} {self.start:.3f}..{self.end:.3f}>"


class Load:
    """``clients`` threads, each sending one request per connection to
    ``frontend`` from ``source`` until stopped; at most ``clients``
    requests are ever in flight."""

    def __init__(self, frontend: Tuple[str, int], source: str, clients: int = 8, delay: float = 0.05):
        self.frontend = frontend
        self.source = source
        self.delay = delay
        self.records: List[Record] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(WAIT)
            assert not thread.is_alive(), "a client did not finish"

    def done(self) -> List[Record]:
        with self._lock:
            return [record for record in self.records if record.end]

    def _run(self) -> None:
        while not self._stop.is_set():
            record = Record()
            with self._lock:
                self.records.append(record)
            try:
                record.answer = self._request(record)
            except (OSError, ValueError) as exc:
                record.error = f"{type(exc).__name__}: {exc}"
            record.end = time.monotonic()

    def _request(self, record: Record) -> Dict[str, str]:
        with socket.create_connection(self.frontend, timeout=5, source_address=(self.source, 0)) as sock:
            record.local = sock.getsockname()[:2]
            sock.sendall(
                b"GET /who?delay=%g HTTP/1.1\r\nHost: evloop\r\nConnection: close\r\n\r\n" % self.delay
            )
            reply = b""
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200 ") or not body.endswith(b"\n"):
            raise ValueError(f"not a whole 200 answer: {reply[:80]!r}")
        return dict(field.split("=", 1) for field in body.decode().split())
