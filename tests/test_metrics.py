"""evloop.metrics: the Prometheus endpoint, scraped over 127.0.0.1 by real
HTTP clients while real traffic hits the loop's limits; every scrape is read
by a strict parser of the text format written here and by prometheus_client's
own, and the numbers must move by exactly what the traffic did."""

import contextlib
import http.client
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from evloop import ClientHandler, EventLoop, Limits, Server
from evloop.metrics import (
    CONTENT_TYPE,
    METRICS_LIMITS,
    Family,
    MetricsAddressError,
    format_families,
    render,
    serve_metrics,
)
from evloop.metrics_board import SLOT_SIZE, MetricsBoard, render_board
from evloop.stats import LIMIT_KINDS, LoopStats
from tests.conftest import recv_all
from tests.examples import ROOT
from tests.waiting import wait_on_loop

# -- a strict reader of the text exposition format 0.0.4 -------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"'
_SAMPLE = re.compile(rf"({_NAME})(?:\{{((?:{_LABEL})(?:,{_LABEL})*)\}})? (\S+)")
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def parse_strictly(text):
    """{(name, ((label, value), ...)): float}. Fails on anything the format
    (version 0.0.4, as evloop writes it) does not allow: a missing final line
    feed, a sample before its family's HELP and TYPE, a family split in two,
    a counter not named ..._total, a duplicate series, a bad escape."""
    assert text.endswith("\n") and "\r" not in text
    samples, seen, current = {}, set(), None
    lines = text[:-1].split("\n")
    index = 0
    while index < len(lines):
        line = lines[index]
        help_line = re.fullmatch(rf"# HELP ({_NAME}) ((?:[^\\\n]|\\[\\n])*)", line)
        assert help_line, f"expected a HELP line, got {line!r}"
        name = help_line.group(1)
        assert name not in seen, f"family {name} appears twice"
        seen.add(name)
        type_line = re.fullmatch(rf"# TYPE {re.escape(name)} (counter|gauge)", lines[index + 1])
        assert type_line, f"expected the TYPE of {name}, got {lines[index + 1]!r}"
        if type_line.group(1) == "counter":
            assert name.endswith("_total"), f"counter {name} is not named ..._total"
        current, index = name, index + 2
        while index < len(lines) and not lines[index].startswith("#"):
            sample = _SAMPLE.fullmatch(lines[index])
            assert sample, f"not a sample line: {lines[index]!r}"
            assert sample.group(1) == current, f"{sample.group(1)} inside family {current}"
            labels = tuple(
                (label, re.sub(r"\\[\\\"n]", lambda m: _UNESCAPE[m.group(0)], value))
                for label, value in re.findall(_LABEL, sample.group(2) or "")
            )
            key = (current, labels)
            assert key not in samples, f"duplicate series {key}"
            samples[key] = float(sample.group(len(sample.groups())))
            index += 1
    # The official parser must read the same numbers.
    official = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert official == {(name, tuple(sorted(labels))): value for (name, labels), value in samples.items()}
    return samples


def value(samples, name, **labels):
    return samples[(name, tuple(labels.items()))]


# -- the text -------------------------------------------------------------------


def test_the_text_escapes_labels_and_help_and_both_parsers_read_it_back():
    tricky = 'a "quoted" back\\slash and a\nnewline'
    text = format_families(
        [
            Family("demo_things_total", "counter", "Help with \\ and\na newline.", [({"kind": tricky}, 3)]),
            Family("demo_level", "gauge", "A gauge.", [({}, 0.25), ({"worker": "1"}, float("inf"))]),
        ]
    )
    assert 'demo_things_total{kind="a \\"quoted\\" back\\\\slash and a\\nnewline"} 3\n' in text
    assert "# HELP demo_things_total Help with \\\\ and\\na newline.\n" in text
    samples = parse_strictly(text)
    assert value(samples, "demo_things_total", kind=tricky) == 3
    assert value(samples, "demo_level", worker="1") == float("inf")


def test_every_limit_kind_is_there_at_zero_before_it_fires():
    loop = EventLoop()
    try:
        samples = parse_strictly(render(loop))
    finally:
        loop.close()
    for kind in LIMIT_KINDS:
        assert value(samples, "evloop_limit_hits_total", kind=kind) == 0
    assert value(samples, "evloop_connections_open") == 0
    assert value(samples, "evloop_loop_lag_seconds") >= 0


# -- scraping a loop under traffic ------------------------------------------------


class Lines(ClientHandler):
    """Echoes newline-terminated requests; keeps the connection."""

    close_when_done = False

    def request_complete(self):
        end = self.find(b"\n")
        return end + 1 if end >= 0 else 0

    def make_response(self):
        return bytes(self.incoming[: self.find(b"\n") + 1])


def raw_scrape(port):
    """(request bytes, whole response bytes, body text): one GET /metrics on
    a plain socket, so the test knows every byte the scrape moved."""
    request = b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nUser-Agent: test\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        response = recv_all(sock)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert f"Content-Type: {CONTENT_TYPE}".encode() in head
    assert f"Content-Length: {len(body)}".encode() in head
    return request, response, body.decode("utf-8")


def expect_eof(sock):
    sock.settimeout(10)
    assert recv_all(sock) == b""


def test_the_numbers_move_by_exactly_what_the_traffic_did(running_loop):
    loop = running_loop.loop
    app = running_loop.serve(Lines, limits=Limits(max_request_size=64, max_connections_per_peer=2))
    idle = running_loop.serve(Lines, limits=Limits(idle_timeout=0.05))
    metrics = running_loop.call(serve_metrics, loop, "127.0.0.1", 0)
    _, first_response, first = raw_scrape(metrics.port)
    assert wait_on_loop(running_loop, lambda: loop.connection_count == 0)
    before = parse_strictly(first)

    # Two clients (the per-peer cap), three requests each; a third is refused.
    clients = [socket.create_connection(("127.0.0.1", app.port), timeout=10) for _ in range(2)]
    for sock in clients:
        sock.sendall(b"ping\n" * 3)
    for sock in clients:
        assert recv_all_of(sock, 15) == b"ping\n" * 3
    with socket.create_connection(("127.0.0.1", app.port), timeout=10) as refused:
        expect_eof(refused)
    for sock in clients:
        sock.close()
    assert wait_on_loop(running_loop, lambda: app.connections == 0)  # the cap is free again
    # A request over max_request_size, and a client that says nothing.
    with socket.create_connection(("127.0.0.1", app.port), timeout=10) as large:
        large.sendall(b"x" * 100)
        expect_eof(large)
    with socket.create_connection(("127.0.0.1", idle.port), timeout=10) as quiet:
        expect_eof(quiet)
    assert wait_on_loop(running_loop, lambda: loop.connection_count == 0)

    request, _, second = raw_scrape(metrics.port)
    after = parse_strictly(second)

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    # The second scrape's own connection is open and counted, its request
    # bytes read; the first scrape's request and reply are counted now.
    assert value(after, "evloop_connections_open") == 1
    assert moved("evloop_connections_accepted_total") == 2 + 1 + 1 + 1
    assert moved("evloop_requests_total") == 6 + 1
    assert moved("evloop_received_bytes_total") == 30 + 100 + len(request)
    assert moved("evloop_sent_bytes_total") == 30 + len(first_response)
    hits = {kind: moved("evloop_limit_hits_total", kind=kind) for kind in LIMIT_KINDS}
    assert hits == {
        **dict.fromkeys(LIMIT_KINDS, 0),
        "max_connections_per_peer": 1,
        "request_too_large": 1,
        "idle_timeout": 1,
    }
    assert value(after, "evloop_loop_lag_seconds") >= 0


def recv_all_of(sock, count):
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        assert chunk, "closed early"
        data += chunk
    return data


# -- the endpoint's HTTP ------------------------------------------------------------


@pytest.fixture
def endpoint(running_loop):
    return running_loop.call(serve_metrics, running_loop.loop, "127.0.0.1", 0)


def exchange(port, request):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        return recv_all(sock)


def test_http_clients_scrape_it_and_other_paths_and_methods_are_refused(endpoint):
    url = f"http://127.0.0.1:{endpoint.port}"
    with urllib.request.urlopen(f"{url}/metrics?name[]=x", timeout=10) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"] == CONTENT_TYPE
        parse_strictly(reply.read().decode())
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{url}/", timeout=10)
    assert missing.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as posted:
        urllib.request.urlopen(urllib.request.Request(f"{url}/metrics", data=b"x=1"), timeout=10)
    assert posted.value.code == 405 and posted.value.headers["Allow"] == "GET, HEAD"
    connection = http.client.HTTPConnection("127.0.0.1", endpoint.port, timeout=10)
    connection.request("HEAD", "/metrics")
    head = connection.getresponse()
    assert head.status == 200 and int(head.headers["Content-Length"]) > 0 and head.read() == b""
    connection.close()
    # HTTP/1.0 needs no Host; an absolute-form target is accepted (RFC 9112 3.2.2).
    assert exchange(endpoint.port, b"GET /metrics HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 200 OK\r\n")
    absolute = b"GET http://example.test:9100/metrics HTTP/1.1\r\nHost: example.test\r\n\r\n"
    assert exchange(endpoint.port, absolute).startswith(b"HTTP/1.1 200 OK\r\n")


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (b"GET /metrics\r\n\r\n", b"400"),  # HTTP/0.9
        (b"GET  /metrics HTTP/1.1\r\nHost: x\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/1.1\r\n\r\n", b"400"),  # no Host
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\nBad Name: y\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", b"400"),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", b"501"),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 9000 + b"\r\n\r\n", b"431"),
        (b"GET /" + b"m" * 9000, b"431"),  # no end of head in sight
    ],
)
def test_malformed_requests_get_an_error_and_a_close_and_are_counted(
    running_loop, endpoint, request_bytes, status
):
    reply = exchange(endpoint.port, request_bytes)
    assert reply.startswith(b"HTTP/1.1 " + status + b" "), reply[:80]
    assert b"Connection: close\r\n" in reply
    kind = "request_too_large" if status == b"431" else "protocol_error"
    assert running_loop.call(lambda: dict(running_loop.loop.limit_hits)) == {kind: 1}


def test_a_scraper_that_stalls_mid_request_is_cut_by_the_request_timeout(running_loop):
    loop = running_loop.loop
    limits = METRICS_LIMITS.replace(request_timeout=0.1)
    server = running_loop.call(lambda: serve_metrics(loop, "127.0.0.1", 0, limits=limits))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /metr")
        expect_eof(sock)
    assert running_loop.call(lambda: loop.limit_hits.get("request_timeout")) == 1


def test_a_metrics_port_in_use_is_named_in_the_error_from_python_and_the_command_line():
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    loop = EventLoop()
    try:
        with pytest.raises(MetricsAddressError) as raised:
            serve_metrics(loop, "127.0.0.1", port)
        assert raised.value.filename == f"127.0.0.1:{port}"
        for workers in ("1", "2"):
            serve = ["evloop.protocols:LengthSepEcho", "--port", "0", "--workers", workers]
            result = subprocess.run(
                [sys.executable, "-m", "evloop", "serve", *serve, "--metrics", f"127.0.0.1:{port}"],
                capture_output=True,
                text=True,
                timeout=30,
                env=dict(os.environ, PYTHONPATH=str(ROOT)),
                cwd=ROOT,
            )
            assert result.returncode == 2
            assert result.stderr.strip().endswith(
                f"evloop: error: --metrics 127.0.0.1:{port}: Address already in use"
            )
    finally:
        loop.close()
        holder.close()


def test_the_text_has_a_server_of_its_own_on_the_loop():
    loop = EventLoop()
    try:
        server = serve_metrics(loop, "127.0.0.1", 0, text=lambda: "x_total 1\n")
        assert isinstance(server, Server) and server in loop.servers
    finally:
        loop.close()


# -- the workers' board -------------------------------------------------------------


def stats(**changes):
    fields = dict(
        time=0.0,
        connections=2,
        requests=5,
        bytes_received=50,
        bytes_sent=70,
        requests_per_second=0.0,
        bytes_received_per_second=0.0,
        bytes_sent_per_second=0.0,
        lag=0.125,
        window=1.0,
        connections_accepted=9,
        limit_hits={"idle_timeout": 3, "made_up": 4},
    )
    fields.update(changes)
    return LoopStats(**fields)


def test_a_board_slot_reads_back_what_was_published_and_survives_a_writer_dying_mid_write():
    board = MetricsBoard(3)
    try:
        assert board.read(0) is None
        board.write(1, stats(), started=1234.5)
        reading = board.read(1)
        assert reading.started == 1234.5
        assert reading.stats.requests == 5 and reading.stats.connections_accepted == 9
        assert reading.stats.lag == 0.125
        assert reading.stats.limit_hits["idle_timeout"] == 3 and reading.stats.limit_hits["other"] == 4
        samples = parse_strictly(render_board(board))
        assert value(samples, "evloop_requests_total", worker="1") == 5
        assert ("evloop_requests_total", (("worker", "0"),)) not in samples  # never published
        # A writer killed between its two sequence stores leaves the slot odd:
        # readers skip it, and the next writer's publication is read whole.
        (sequence,) = struct.unpack_from("=Q", board._map, SLOT_SIZE)
        assert sequence == 2
        struct.pack_into("=Q", board._map, SLOT_SIZE, sequence + 1)
        assert board.read(1) is None
        board.write(1, stats(requests=7), started=1.0)
        assert board.read(1).stats.requests == 7
        assert struct.unpack_from("=Q", board._map, SLOT_SIZE)[0] % 2 == 0
    finally:
        board.close()


# -- from the command line, one process and two workers -----------------------------


class CommandLine:
    """``python -m evloop serve ...`` in a session of its own; finds where it
    listens and where its metrics are in its log."""

    def __init__(self, *args):
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "evloop", "serve", *args],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
        self.log = []
        self.port = self.metrics_port = None
        for line in self.process.stderr:
            self.log.append(line)
            found = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", line)
            if found:
                self.metrics_port = int(found.group(1))
            found = re.search(r"evloop: listening on 127\.0\.0\.1:(\d+)", line)
            if found:
                self.port = int(found.group(1))
                break
        assert self.port and self.metrics_port, "".join(self.log)
        self.drain = threading.Thread(target=self._drain, daemon=True)
        self.drain.start()

    def _drain(self):
        for line in self.process.stderr:
            self.log.append(line)

    def stop(self):
        with contextlib.suppress(ProcessLookupError):  # a group whose processes are all gone
            os.killpg(self.process.pid, 15)
        try:
            self.process.wait(20)
        finally:
            if self.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, 9)
                self.process.wait()
        self.drain.join(10)
        self.process.stderr.close()


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return parse_strictly(reply.read().decode())


def echo(port, payload):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"%d\n%s" % (len(payload), payload))
        sock.shutdown(socket.SHUT_WR)
        return recv_all(sock)


def test_the_command_line_serves_metrics():
    server = CommandLine("evloop.protocols:LengthSepEcho", "--port", "0", "--metrics", "127.0.0.1:0")
    try:
        before = scrape(server.metrics_port)
        for _ in range(3):
            assert echo(server.port, b"hello") == b"5\nhello"
        after = scrape(server.metrics_port)
        assert value(after, "evloop_requests_total") - value(before, "evloop_requests_total") == 3 + 1
        assert (
            value(after, "evloop_connections_accepted_total")
            - value(before, "evloop_connections_accepted_total")
            == 3 + 1
        )
    finally:
        server.stop()


WHO_AM_I = """
import os
from evloop import ClientHandler

class WhoAmI(ClientHandler):
    def request_complete(self):
        return self.find(b"\\n") + 1

    def make_response(self):
        return b"%d\\n" % os.getpid()
"""


def wait_for_scrape(port, predicate, timeout=15):
    """The first scrape for which ``predicate(samples)`` holds; the last one
    after ``timeout`` seconds. Workers publish every second, and another
    process's publication gives no event to wait on: this polls."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(port)
        if predicate(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


@pytest.mark.skipif(
    not hasattr(os, "fork") or not hasattr(socket, "SO_REUSEPORT"),
    reason="worker processes need fork() and SO_REUSEPORT",
)
def test_two_workers_one_scrape_shows_each_workers_exact_counts_and_a_replaced_one_restarts_at_zero(tmp_path):
    handler = tmp_path / "whoami.py"
    handler.write_text(WHO_AM_I)
    server = CommandLine(f"{handler}:WhoAmI", "--port", "0", "--workers", "2", "--metrics", "127.0.0.1:0")
    try:
        started = dict(re.findall(r"worker (\d) \(pid (\d+), generation 1\) listening", "".join(server.log)))
        worker_of = {int(pid): index for index, pid in started.items()}
        first = scrape(server.metrics_port)
        assert {labels[0][1] for (name, labels) in first if name == "evloop_requests_total"} == {"0", "1"}
        served = {"0": 0, "1": 0}
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                sock.sendall(b"who?\n")
                served[worker_of[int(recv_line(sock))]] += 1

        def counts(samples, name):
            return {worker: value(samples, name, worker=worker) for worker in served}

        now = wait_for_scrape(server.metrics_port, lambda s: counts(s, "evloop_requests_total") == served)
        assert counts(now, "evloop_requests_total") == served
        assert counts(now, "evloop_connections_accepted_total") == served
        assert counts(now, "evloop_received_bytes_total") == {w: 5 * n for w, n in served.items()}
        for worker in served:
            assert value(now, "evloop_worker_publish_age_seconds", worker=worker) < 5
            assert value(now, "evloop_limit_hits_total", worker=worker, kind="protocol_error") == 0

        # Worker 1 killed: its replacement starts its slot again from zero,
        # with a new start time; worker 0's numbers are untouched.
        os.kill(int(started["1"]), 9)
        again = wait_for_scrape(
            server.metrics_port,
            lambda s: (
                value(s, "evloop_worker_start_time_seconds", worker="1")
                > value(now, "evloop_worker_start_time_seconds", worker="1")
            ),
        )
        assert value(again, "evloop_requests_total", worker="1") == 0
        assert value(again, "evloop_requests_total", worker="0") == served["0"]

        # The supervisor killed outright: the exporter goes with it.
        exporter = int(re.search(r"exporter pid (\d+)", "".join(server.log)).group(1))
        os.kill(server.process.pid, 9)
        server.process.wait(10)
        deadline = time.monotonic() + 15
        while _alive(exporter) and time.monotonic() < deadline:
            time.sleep(0.05)  # not our child: no wait() to block in
        assert not _alive(exporter)
    finally:
        server.stop()
    assert not [line for line in server.log if "ERROR" in line and "exporter" in line]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="worker processes need fork()")
def test_a_reload_moves_the_workers_to_free_places_and_the_old_generations_totals_stay(tmp_path):
    handler = tmp_path / "whoami.py"
    handler.write_text(WHO_AM_I)
    server = CommandLine(f"{handler}:WhoAmI", "--port", "0", "--workers", "2", "--metrics", "127.0.0.1:0")
    try:

        def ask_all(count):
            pids = []
            for _ in range(count):
                with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                    sock.sendall(b"who?\n")
                    pids.append(int(recv_line(sock)))
            return pids

        def requests_by_place(samples):
            return {
                labels[0][1]: number
                for (name, labels), number in samples.items()
                if name == "evloop_requests_total"
            }

        before = ask_all(10)
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while not re.search(r"reload: generation 2 \(pids .*\) serving", "".join(server.log)):
            assert time.monotonic() < deadline, "".join(server.log)
            time.sleep(0.05)  # another process's log: nothing to wait on but the pipe's reader
        after = ask_all(6)
        generation = {
            int(pid): int(gen)
            for pid, gen in re.findall(
                r"worker \d \(pid (\d+), generation (\d)\) listening", "".join(server.log)
            )
        }
        first = sum(1 for pid in before + after if generation[pid] == 1)
        second = sum(1 for pid in before + after if generation[pid] == 2)
        assert first >= 10 and first + second == 16

        # Generation 2 took places 2 and 3: generation 1's were still in use.
        # Generation 1's last publication (at its loop's close) stays, so a
        # sum over the places still counts every request served.
        def settled(samples):
            places = requests_by_place(samples)
            old = places.get("0", 0) + places.get("1", 0)
            new = places.get("2", 0) + places.get("3", 0)
            return set(places) == {"0", "1", "2", "3"} and (old, new) == (first, second)

        now = wait_for_scrape(server.metrics_port, settled)
        places = requests_by_place(now)
        assert set(places) == {"0", "1", "2", "3"}
        assert places["0"] + places["1"] == first
        assert places["2"] + places["3"] == second
    finally:
        server.stop()


def recv_line(sock):
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(64)
        assert chunk, "closed early"
        data += chunk
    return data


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
