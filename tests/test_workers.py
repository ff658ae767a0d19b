"""workers=N: N forked single-threaded loops accepting from one listening
socket the supervisor owns, supervised by a parent that replaces a dead
worker and stops them all on SIGTERM or SIGINT (reloads on SIGHUP:
tests/test_reload.py). Each run is a real supervisor process on 127.0.0.1."""

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading

import pytest

from evloop import Server, WorkerProcesses
from tests.conftest import recv_all, recv_exactly
from tests.examples import ROOT

WAIT = 10
pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="worker processes need fork()")

# Each worker answers with its pid; "slow" is answered half a second later
# (a loop timer, not a sleep), to show a stopping worker finishes its requests.
APP = textwrap.dedent("""
    import logging, os, sys
    from concurrent.futures import Future
    from evloop import ClientHandler, serve_workers

    class WhoAmI(ClientHandler):
        def make_response(self):
            if self.incoming.startswith(b"slow"):
                print(f"slow request in {os.getpid()}", flush=True)
                reply = Future()
                self.loop.call_later(0.5, reply.set_result, b"%d\\n" % os.getpid())
                return reply
            return b"%d\\n" % os.getpid()

    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(levelname)s %(message)s")
    serve_workers(WhoAmI, "127.0.0.1", 0, workers=2, shutdown_timeout=5,
                  ready=lambda w: print(f"listening on {w.host}:{w.port}", flush=True))
    print("supervisor exits", flush=True)
""")

STARTED = re.compile(r"worker (\d) \(pid (\d+), generation \d+\) listening")


class Supervisor:
    """The APP in a subprocess; its output lines arrive on a queue."""

    def __init__(self):
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        # A session of its own: teardown can end every process it made.
        self.process = subprocess.Popen(
            [sys.executable, "-c", APP],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.lines = queue.Queue()
        self.log = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.workers = {}
        line = self.wait_for(r"^listening on 127\.0\.0\.1:(\d+)$")
        self.port = int(line.rsplit(":", 1)[1])

    def _read(self):
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, pattern):
        """The next line matching ``pattern``; worker start lines on the way
        are noted in ``self.workers``."""
        while True:
            try:
                line = self.lines.get(timeout=WAIT)
            except queue.Empty:
                raise AssertionError(f"no line like {pattern!r} in:\n" + "\n".join(self.log)) from None
            if line is None:
                raise AssertionError(f"exited before {pattern!r}:\n" + "\n".join(self.log))
            self.log.append(line)
            started = STARTED.search(line)
            if started:
                self.workers[int(started.group(1))] = int(started.group(2))
            if re.search(pattern, line):
                return line

    def ask(self, request=b"who"):
        with socket.create_connection(("127.0.0.1", self.port), timeout=WAIT) as sock:
            sock.sendall(request)
            return int(recv_all(sock))

    def pids_answering(self, wanted, tries=300):
        """Ask until every pid in ``wanted`` has answered (a new connection
        wakes every idle worker and the quickest takes it, so a few dozen
        tries see every worker)."""
        seen = set()
        for _ in range(tries):
            seen.add(self.ask())
            if wanted <= seen:
                break
        return seen

    def stop(self, signum=signal.SIGTERM):
        self.process.send_signal(signum)
        assert self.process.wait(WAIT) == 0
        self.reader.join(WAIT)
        while True:
            line = self.lines.get(timeout=WAIT)
            if line is None:
                break
            self.log.append(line)

    def kill(self):
        """Teardown: whatever happened, no process of this run is left."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(WAIT)
        self.reader.join(WAIT)
        self.process.stdout.close()


@pytest.fixture
def supervisor():
    running = Supervisor()
    yield running
    running.kill()


def port_is_free(port):
    try:
        with Server("127.0.0.1", port):
            return True
    except OSError:
        return False


def gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_two_workers_answer_a_killed_one_is_replaced_and_sigterm_stops_all(supervisor):
    first = dict(supervisor.workers)
    assert sorted(first) == [0, 1] and supervisor.process.pid not in first.values()
    # Both processes serve the one port; the supervisor itself never does.
    assert supervisor.pids_answering(set(first.values())) == set(first.values())
    assert not port_is_free(supervisor.port)

    os.kill(first[0], signal.SIGKILL)
    supervisor.wait_for(rf"worker 0 \(pid {first[0]}\) was killed by SIGKILL")
    supervisor.wait_for(r"worker 0 \(pid \d+, generation 1\) listening")
    replacement = supervisor.workers[0]
    assert replacement != first[0] and gone(first[0])
    assert supervisor.pids_answering({replacement, first[1]}) == {replacement, first[1]}

    supervisor.stop(signal.SIGTERM)
    assert "supervisor exits" in supervisor.log
    assert all(gone(pid) for pid in (replacement, first[1]))
    assert port_is_free(supervisor.port)


def test_sigint_stops_all_and_a_request_in_flight_is_still_answered(supervisor):
    workers = set(supervisor.workers.values())
    sock = socket.create_connection(("127.0.0.1", supervisor.port), timeout=WAIT)
    with sock:
        sock.sendall(b"slow")
        line = supervisor.wait_for(r"slow request in \d+")
        serving = int(line.rsplit(" ", 1)[1])
        supervisor.process.send_signal(signal.SIGINT)  # Ctrl-C
        # The worker stops accepting but finishes what it was doing.
        assert int(recv_all(sock)) == serving
    assert supervisor.process.wait(WAIT) == 0
    assert all(gone(pid) for pid in workers)
    assert port_is_free(supervisor.port)


def test_the_port_is_fixed_before_any_worker_starts_and_workers_must_be_positive():
    with pytest.raises(ValueError):
        WorkerProcesses(object, "127.0.0.1", 0, workers=0)
    pool = WorkerProcesses(object, "127.0.0.1", 0, workers=2)
    try:
        assert pool.port > 0 and pool.host == "127.0.0.1"
        # Bound, not listening yet: nobody can connect before run() starts the workers.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", pool.port), timeout=WAIT)
    finally:
        pool.close()
    assert port_is_free(pool.port)


def test_workers_stop_by_themselves_when_the_supervisor_is_killed(supervisor):
    workers = set(supervisor.workers.values())
    assert supervisor.pids_answering(workers) == workers
    os.kill(supervisor.process.pid, signal.SIGKILL)  # no chance to clean up
    supervisor.process.wait(WAIT)
    # The workers hold the output pipe: its end means every one has exited.
    while (line := supervisor.lines.get(timeout=WAIT)) is not None:
        supervisor.log.append(line)
    for pid in workers:
        assert f"worker {pid}: the supervisor is gone; stopping" in "\n".join(supervisor.log)
    assert port_is_free(supervisor.port)


UNIX_APP = textwrap.dedent("""
    import os, socket, sys
    from evloop import WorkerProcesses
    from evloop.protocols import LengthSepEcho

    path = sys.argv[1]
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    pool = WorkerProcesses(LengthSepEcho, sock=listener, workers=2)
    pool.run(lambda w: print("ready", flush=True))
    print("socket file still there:", os.path.exists(path), flush=True)
""")


def test_workers_serve_a_unix_socket_given_to_them_and_leave_its_file(tmp_path):
    path = str(tmp_path / "w.sock")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen(
        [sys.executable, "-c", UNIX_APP, path],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        assert process.stdout.readline() == "ready\n"
        for _ in range(4):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.settimeout(WAIT)
                client.connect(path)
                client.sendall(b"2\nhi")
                assert recv_exactly(client, 4) == b"2\nhi"
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=WAIT)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(WAIT)
    # The workers closed their copies only; the file is the caller's to remove.
    assert "socket file still there: True" in output
