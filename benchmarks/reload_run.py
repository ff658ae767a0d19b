"""Zero-downtime reload under load: no request lost, no connection reset.

    python benchmarks/reload_run.py                      # 3 reloads, ~20 s of load
    python benchmarks/reload_run.py --wrk 16             # and wrk beside, 16 connections
    python benchmarks/reload_run.py --reloads 3 --seconds 2 --clients 6   # a smoke test

Theory of operation. It writes an HTTP application (a module with one route
answering ``version N``) into a temporary directory, starts it as a user
does, ``python -m evloop serve app:Handler --workers 2``, and drives it with
a pool of client threads on 127.0.0.1: half keep one keep-alive connection
open and send request after request on it, half open a new connection for
each request (``Connection: close``). Between load phases it rewrites the
module (version 1 -> 2 -> 3 -> 4) and sends SIGHUP to the supervisor; a
phase ends once every client has been answered by the new version, then
load goes on for ``--seconds`` / reloads seconds more.

What counts. A request answered ``200 version N`` is good. A keep-alive
connection the server closed cleanly (end of stream, no byte of a response)
after at least one answer is the idle keep-alive close every HTTP client
handles (RFC 9112 section 9.3.1: the request had not been taken, and it is
retried on a new connection): counted as ``retried``, not as a failure. A
reset (ECONNRESET, EPIPE), a refused connect, a timeout, a stream that ends
in the middle of a response or on a new connection's first request, or a
wrong answer is a failure, and resets are also counted on their own.

It prints requests sent, answered, failed, resets, retried and the version
that answered last, and exits 1 if anything failed or the last version is
not the newest. ``--wrk N`` runs wrk (N keep-alive connections) against the
same server for the whole run too, and prints its report; wrk counts any
socket error (a reset, a connection closed without a response) and
non-2xx answers, and the run fails if it reports one.
``tests/test_reload.py`` runs :func:`reload_run` briefly.
"""

import argparse
import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["LoadClients", "ServerProcess", "reload_run", "write_app"]

APP = """\
from evloop.protocols.http import HTTPHandler
from evloop.protocols.routing import Router

VERSION = {version}
router = Router()


@router.route("/")
def index(request):
    return "version %d\\n" % VERSION


class Handler(HTTPHandler):
    routes = router
"""

ANSWER = re.compile(rb"^HTTP/1\.1 200 [^\r]*\r\n", re.S)
RESET_ERRNOS = {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED}
TIMEOUT = 10.0


def write_app(directory: Path, version: int) -> None:
    """(Re)write ``directory/app.py`` answering ``version N``. The file is
    replaced with a rename, so a worker never imports half of it."""
    temporary = directory / "app.py.new"
    temporary.write_text(APP.format(version=version))
    os.replace(temporary, directory / "app.py")


class ServerProcess:
    """``python -m evloop serve app:Handler --workers N`` in ``directory``
    (``target`` replaces ``app:Handler``, e.g. ``["--wsgi", "app:application"]``;
    ``command`` replaces the whole command, which logs as the CLI does);
    its log lines are kept in :attr:`log` (a reader thread) and the port
    is read from its "listening on" line."""

    def __init__(
        self,
        directory: Path,
        workers: int = 2,
        target: Optional[List[str]] = None,
        extra: Optional[List[str]] = None,
        command: Optional[List[str]] = None,
    ) -> None:
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join([str(directory), str(ROOT), env.get("PYTHONPATH", "")])
        serve = [
            sys.executable,
            "-m",
            "evloop",
            "serve",
            *(target or ["app:Handler"]),
            "--host",
            "127.0.0.1",
        ]
        serve += ["--port", "0", "--workers", str(workers), "--no-access-log", *(extra or [])]
        self.process = subprocess.Popen(
            command or serve,
            cwd=directory,
            env=env,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self.log: List[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        line = self.wait_for(r"listening on 127\.0\.0\.1:(\d+) with")
        self.port = int(re.search(r":(\d+) with", line).group(1))  # type: ignore[union-attr]

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self.changed:
                self.log.append(line.rstrip("\n"))
                self.changed.notify_all()
        with self.changed:
            self.log.append("<exited>")
            self.changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = 30.0, start: int = 0) -> str:
        """The first log line from ``start`` on that matches ``pattern``."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for line in self.log[start:]:
                    if re.search(pattern, line):
                        return line
                    if line == "<exited>":
                        raise RuntimeError("the server exited:\n" + "\n".join(self.log))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no log line like {pattern!r}:\n" + "\n".join(self.log))
                self.changed.wait(left)

    def reload(self) -> None:
        self.process.send_signal(signal.SIGHUP)

    def stop(self) -> int:
        """SIGTERM, and the exit status (killed after a deadline)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            code = self.process.wait(30)
        self.reader.join(10)
        return code

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()
        if self.process.stderr is not None:
            self.process.stderr.close()


class RequestFailedError(Exception):
    """A request that did not get its answer; ``reset`` if the peer reset."""

    def __init__(self, message: str, reset: bool = False) -> None:
        super().__init__(message)
        self.reset = reset


class LoadClients:
    """``count`` client threads against ``port``; see the module's header."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.count = count
        self.lock = threading.Lock()
        self.totals: Dict[str, int] = dict(sent=0, answered=0, failed=0, resets=0, retried=0)
        self.errors: List[str] = []
        #: Client index -> the version that answered it last.
        self.last_version: Dict[int, int] = {}
        self.done = threading.Event()
        self.threads = [
            threading.Thread(target=self._client, args=(index, index % 2 == 0), daemon=True)
            for index in range(count)
        ]

    def start(self) -> "LoadClients":
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> Dict[str, int]:
        self.done.set()
        for thread in self.threads:
            thread.join(TIMEOUT * 3)
        return dict(self.totals)

    def all_answered_by(self, version: int) -> bool:
        with self.lock:
            seen = dict(self.last_version)
        return len(seen) == self.count and all(v >= version for v in seen.values())

    def _count(self, name: str, error: str = "") -> None:
        with self.lock:
            self.totals[name] += 1
            if error and len(self.errors) < 20:
                self.errors.append(error)

    def _client(self, index: int, keep_alive: bool) -> None:
        sock: Optional[socket.socket] = None
        used = False  # this connection has carried an answer already
        while not self.done.is_set():
            if sock is None:
                try:
                    sock = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)
                except OSError as exc:
                    self._count("sent")
                    self._failed(f"connect: {exc!r}", exc)
                    continue
                used = False
            self._count("sent")
            try:
                version, server_closes = self._exchange(sock, keep_alive, used)
            except _CleanCloseError:
                with self.lock:  # sent again on a new connection: one request
                    self.totals["retried"] += 1
                    self.totals["sent"] -= 1
                sock.close()
                sock = None
                continue
            except (OSError, RequestFailedError) as exc:
                self._failed(f"client {index}: {exc!r}", exc)
                sock.close()
                sock = None
                continue
            self._count("answered")
            with self.lock:
                self.last_version[index] = version
            used = True
            if server_closes or not keep_alive:
                sock.close()
                sock = None
        if sock is not None:
            sock.close()

    def _failed(self, message: str, exc: BaseException) -> None:
        reset = isinstance(exc, RequestFailedError) and exc.reset
        reset = reset or (isinstance(exc, OSError) and exc.errno in RESET_ERRNOS)
        self._count("failed", message)
        if reset:
            self._count("resets")

    def _exchange(self, sock: socket.socket, keep_alive: bool, used: bool) -> Any:
        """One request; returns (version, whether the server closes)."""
        header = "" if keep_alive else "Connection: close\r\n"
        try:
            sock.sendall(f"GET / HTTP/1.1\r\nHost: reload\r\n{header}\r\n".encode())
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    if not data and used:
                        raise _CleanCloseError()
                    raise RequestFailedError(f"end of stream after {len(data)} bytes of the response")
                data += chunk
        except OSError as exc:
            if exc.errno in RESET_ERRNOS:
                raise RequestFailedError(f"reset: {exc!r}", reset=True) from None
            raise
        head, _, body = data.partition(b"\r\n\r\n")
        if not ANSWER.match(head + b"\r\n"):
            raise RequestFailedError(f"unexpected answer {head[:80]!r}")
        length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise RequestFailedError("end of stream in the middle of a body")
            body += chunk
        found = re.match(rb"version (\d+)\n$", body)
        if found is None:
            raise RequestFailedError(f"unexpected body {body!r}")
        closes = re.search(rb"(?i)\r\nconnection: *close", head) is not None
        return int(found.group(1)), closes


class _CleanCloseError(Exception):
    """A used keep-alive connection ended before any byte of a response."""


def reload_run(
    reloads: int = 3,
    seconds: float = 20.0,
    clients: int = 16,
    workers: int = 2,
    out: Any = sys.stdout,
    wrk_connections: int = 0,
) -> Dict[str, Any]:
    """Run the load across ``reloads`` reloads; return the figures (the
    counters, ``last_version``, ``versions`` expected, ``log``, and with
    ``wrk_connections`` wrk's own report as ``wrk``)."""
    with tempfile.TemporaryDirectory(prefix="evloop-reload-") as temporary:
        directory = Path(temporary)
        write_app(directory, 1)
        with ServerProcess(directory, workers) as server:
            load = LoadClients(server.port, clients).start()
            wrk = _start_wrk(server.port, wrk_connections, seconds) if wrk_connections else None
            try:
                _wait(lambda: load.all_answered_by(1), "every client answered by version 1")
                phase = seconds / (reloads + 1)
                for version in range(2, reloads + 2):
                    _sleep_under_load(phase, load)
                    write_app(directory, version)
                    mark = len(server.log)
                    server.reload()
                    server.wait_for(rf"reload: generation {version} \(pids [\d, ]+\) serving", start=mark)
                    _wait(
                        lambda v=version: load.all_answered_by(v),
                        f"every client answered by version {version}",
                    )
                    print(f"reload {version - 1}: version {version} answers every client", file=out)
                _sleep_under_load(phase, load)
            finally:
                totals = load.stop()
                wrk_report = _stop_wrk(wrk) if wrk is not None else ""
        figures: Dict[str, Any] = dict(totals)
        figures["wrk"] = wrk_report
        figures["last_version"] = min(load.last_version.values(), default=0)
        figures["expected_version"] = reloads + 1
        figures["errors"] = load.errors
        figures["log"] = server.log
        return figures


def _start_wrk(port: int, connections: int, seconds: float) -> "subprocess.Popen[str]":
    """wrk against the same server for the whole run (its connections are
    keep-alive; it counts a connection closed without a response as a
    read error, and does not retry)."""
    if shutil.which("wrk") is None:
        raise SystemExit("--wrk needs wrk (apt-get install wrk)")
    threads = str(min(2, connections))
    # Longer than the run: it is stopped with SIGINT, and reports then.
    duration = f"{seconds * 2 + 120:g}s"
    command = ["wrk", "-t", threads, "-c", str(connections), "-d", duration, f"http://127.0.0.1:{port}/"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _stop_wrk(wrk: "subprocess.Popen[str]") -> str:
    wrk.send_signal(signal.SIGINT)
    return wrk.communicate(timeout=60)[0]


def _sleep_under_load(seconds: float, load: LoadClients) -> None:
    """Let the load run for ``seconds`` (a pause for this thread only)."""
    load.done.wait(seconds)


def _wait(predicate: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout:g}s: {what}")
        time.sleep(0.01)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reloads", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0, help="load time in all (default: 20)")
    parser.add_argument("--clients", type=int, default=16, help="client threads (default: 16)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--wrk", type=int, default=0, metavar="CONNECTIONS", help="also run wrk with this many connections"
    )
    args = parser.parse_args(argv)
    figures = reload_run(args.reloads, args.seconds, args.clients, args.workers, wrk_connections=args.wrk)
    for line in figures["log"]:
        if "reload" in line:
            print("server:", line)
    print(
        "requests sent {sent}, answered {answered}, failed {failed}, resets {resets}, "
        "retried after a clean keep-alive close {retried}".format(**figures)
    )
    print(f"version answering last: {figures['last_version']} (expected {figures['expected_version']})")
    for error in figures["errors"]:
        print("error:", error)
    ok = figures["failed"] == 0 and figures["last_version"] == figures["expected_version"]
    if figures["wrk"]:
        print("wrk, beside the clients above:\n" + figures["wrk"].rstrip())
        ok = ok and "Socket errors" not in figures["wrk"] and "Non-2xx" not in figures["wrk"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
