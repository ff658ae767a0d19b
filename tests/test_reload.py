"""Zero-downtime reload: SIGHUP to ``python -m evloop serve ... --workers 2``
starts a new generation of workers importing the code now on disk, on the
same listening socket, and stops the old one gracefully. Real processes on
127.0.0.1, driven by benchmarks/reload_run.py's clients and server wrapper;
every wait is on a condition (a log line, the version an answer names)."""

import os
import re
import socket
import subprocess
import sys
import textwrap

import pytest

from benchmarks.reload_run import LoadClients, ServerProcess, reload_run, write_app

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="worker processes need fork()")

WAIT = 30.0


def ask(port, request=b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"):
    """One request on a new connection; the body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data
    return body.decode()


def reload_until_answered(server, generation, wanted):
    """SIGHUP the supervisor, wait for the new generation to serve, then
    ask until the answer is ``wanted``."""
    mark = len(server.log)
    server.reload()
    server.wait_for(rf"reload: generation {generation} \(pids [\d, ]+\) serving", start=mark)
    answers(server.port, wanted)


def answers(port, wanted, tries=200):
    """Ask until the answer is ``wanted`` (an old worker may still hold a
    connection the kernel gave it just before the reload); the answers."""
    seen = []
    for _ in range(tries):
        seen.append(ask(port))
        if seen[-1] == wanted:
            return seen
    raise AssertionError(f"never answered {wanted!r}: {seen[-5:]}")


def test_three_reloads_under_load_lose_no_request_and_reset_no_connection():
    figures = reload_run(reloads=3, seconds=3.0, clients=6, out=open(os.devnull, "w"))
    log = "\n".join(figures["log"])
    assert figures["errors"] == [], log
    assert (figures["failed"], figures["resets"]) == (0, 0), log
    assert figures["answered"] == figures["sent"] > 100
    assert figures["last_version"] == figures["expected_version"] == 4
    # One line per reload names both generations' pids.
    assert (
        len(
            re.findall(
                r"reload: generation \d \(pids \d+, \d+\) serving; generation \d \(pids \d+, \d+\)", log
            )
        )
        == 3
    )
    assert "cut at" not in log or " 0 cut at" in log


def test_a_generation_that_cannot_start_leaves_the_old_one_serving(tmp_path):
    write_app(tmp_path, 1)
    with ServerProcess(tmp_path) as server:
        assert ask(server.port) == "version 1\n"
        (tmp_path / "app.py").write_text("def broken(:\n")
        mark = len(server.log)
        server.reload()
        failed = server.wait_for(r"reload failed", start=mark)
        assert "generation 2 did not start" in failed and "SyntaxError" in failed
        assert re.search(r"generation 1 \(pids \d+, \d+\) keeps serving", failed)
        assert ask(server.port) == "version 1\n"
        # Fixed, the next SIGHUP works.
        write_app(tmp_path, 2)
        reload_until_answered(server, 2, "version 2\n")
    assert server.process.returncode == 0


def test_a_sighup_during_a_reload_is_queued_and_one_more_reload_follows(tmp_path):
    write_app(tmp_path, 1)
    with ServerProcess(tmp_path) as server:
        # Version 2 takes until the test says go to import: the reload is
        # surely under way when the second SIGHUP comes.
        go = tmp_path / "go"
        slow = textwrap.dedent(f"""
            import os, time
            deadline = time.monotonic() + 30
            while not os.path.exists({str(go)!r}) and time.monotonic() < deadline:
                time.sleep(0.01)
        """)
        write_app(tmp_path, 2)
        (tmp_path / "app.py").write_text(slow + (tmp_path / "app.py").read_text())
        mark = len(server.log)
        server.reload()
        server.wait_for(r"reload: starting generation 2", start=mark)
        server.reload()
        go.touch()
        server.wait_for(r"reload: 1 SIGHUP came during the reload; reloading once more", start=mark)
        server.wait_for(r"reload: generation 3 \(pids [\d, ]+\) serving; generation 2", start=mark)
        answers(server.port, "version 2\n")


WSGI_APP = """\
VERSION = {version}


def application(environ, start_response):
    body = b"version %d\\n" % VERSION
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


def test_a_wsgi_application_reloads_too(tmp_path):
    pytest.importorskip("h11")
    (tmp_path / "app.py").write_text(WSGI_APP.format(version=1))
    with ServerProcess(tmp_path, target=["--wsgi", "app:application"]) as server:
        load = LoadClients(server.port, 4).start()
        try:
            assert ask(server.port) == "version 1\n"
            (tmp_path / "app.py").write_text(WSGI_APP.format(version=2))
            reload_until_answered(server, 2, "version 2\n")
        finally:
            totals = load.stop()
        assert (totals["failed"], totals["resets"]) == (0, 0), load.errors
        assert totals["answered"] > 0


RUNNER = """\
import logging, sys
from evloop import serve_workers

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
def ready(w):
    print(f"listening on 127.0.0.1:{w.port} with workers", file=sys.stderr, flush=True)


serve_workers("app:Handler", "127.0.0.1", 0, workers=2, ready=ready)
"""


def test_serve_workers_given_a_module_name_imports_fresh_code_on_sighup(tmp_path):
    write_app(tmp_path, 1)
    (tmp_path / "runner.py").write_text(RUNNER)
    with ServerProcess(tmp_path, command=[sys.executable, str(tmp_path / "runner.py")]) as server:
        assert ask(server.port) == "version 1\n"
        write_app(tmp_path, 2)
        reload_until_answered(server, 2, "version 2\n")


def test_the_first_generation_failing_is_an_error_from_run(tmp_path):
    script = (
        "from evloop.workers import WorkerProcesses, WorkerStartError\n"
        "try:\n"
        "    WorkerProcesses('no_such_module:Handler', '127.0.0.1', 0, workers=2).run()\n"
        "except WorkerStartError as exc:\n"
        "    print('error:', exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=WAIT, cwd=tmp_path
    )
    assert re.search(
        r"^error: worker \d \(pid \d+\): module not found: no_such_module$", result.stdout, re.M
    ), result.stdout + result.stderr
