"""The client memory budget (Limits.max_clients_memory, evloop.budget): what
a server's connections hold is charged, and past the budget the biggest
holders are closed first, one log line each, while small ones are served.
Real sockets on 127.0.0.1; the loop is stepped from the test."""

import logging
import socket

import pytest
from evloop.protocols import LengthSepEcho

from evloop import EventLoop, Server
from evloop.budget import LOGGED_PER_ENFORCEMENT, ClientMemoryBudget, format_bytes
from evloop.cli import _limits, build_parser
from evloop.limits import DEFAULT_LIMITS, DEFAULT_MAX_CLIENTS_MEMORY, Limits
from tests.conftest import connect
from tests.hostile.targets import load_example

KIB = 1024
MIB = 1024 * KIB


def frame_head(size):
    return b"%d\n" % size


def step_until(loop, predicate, what, passes=2000):
    for _ in range(passes):
        if predicate():
            return
        loop.run_once(0.05)
    raise AssertionError(f"never happened: {what}")


def send_stepping(loop, sock, data):
    """Send all of ``data``, stepping the loop whenever the socket is full."""
    sock.setblocking(False)
    view = memoryview(data)
    for _ in range(20000):
        if not view:
            return
        try:
            view = view[sock.send(view) :]
        except BlockingIOError:
            loop.run_once(0.01)
    raise AssertionError("the server never took the data")


def recv_stepping(loop, sock, count):
    """Read ``count`` bytes (fewer if the server closes, None if it resets),
    stepping the loop while none are there."""
    sock.setblocking(False)
    data = bytearray()
    for _ in range(20000):
        if len(data) >= count:
            return bytes(data)
        try:
            chunk = sock.recv(count - len(data))
        except BlockingIOError:
            loop.run_once(0.01)
            continue
        except ConnectionResetError:
            return None
        if not chunk:
            return bytes(data)
        data += chunk
    raise AssertionError("the server never answered")


def recv_until(loop, sock, ending):
    """Read until what came ends with ``ending``, stepping the loop."""
    sock.setblocking(False)
    data = bytearray()
    for _ in range(20000):
        if data.endswith(ending):
            return bytes(data)
        try:
            chunk = sock.recv(1 << 16)
        except BlockingIOError:
            loop.run_once(0.01)
            continue
        assert chunk, f"the server closed after {bytes(data)!r}"
        data += chunk
    raise AssertionError("the server never answered")


def closed_by_server(loop, sock):
    """Read ``sock`` to its end: whether the server closed it (EOF or reset)."""
    while True:
        chunk = recv_stepping(loop, sock, 1 << 20)
        if not chunk:  # b"": the end; None: reset
            return True


def serve(loop, **limits):
    server = Server("127.0.0.1", 0, limits=Limits(max_request_size=8 * MIB, **limits))
    loop.add_server(server, LengthSepEcho)
    return server


def test_the_default_budget_and_its_validation():
    assert DEFAULT_LIMITS.max_clients_memory == DEFAULT_MAX_CLIENTS_MEMORY == 1024 * MIB
    for bad in (0, -1, 1.5, "1gb"):
        with pytest.raises(ValueError):
            Limits(max_clients_memory=bad)
    assert Limits(max_clients_memory=None).max_clients_memory is None


@pytest.mark.parametrize(
    "given, expected",
    [
        (None, DEFAULT_MAX_CLIENTS_MEMORY),
        ("0", None),
        ("1048576", MIB),
        ("512kb", 512 * KIB),
        ("64MB", 64 * MIB),
        ("2g", 2048 * MIB),
    ],
)
def test_the_command_line_option(given, expected):
    argv = ["serve", "evloop.protocols:LengthSepEcho"]
    if given is not None:
        argv += ["--max-clients-memory", given]
    assert _limits(build_parser().parse_args(argv)).max_clients_memory == expected


def test_a_bad_size_on_the_command_line_is_refused(capsys):
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["serve", "x:y", "--max-clients-memory", "lots"])
    assert stop.value.code == 2
    assert "not a size in bytes" in capsys.readouterr().err


def test_without_a_budget_nothing_is_charged():
    with EventLoop() as loop:
        server = serve(loop, max_clients_memory=None)
        with connect(server) as client:
            client.sendall(frame_head(MIB) + b"x" * (MIB // 2))
            step_until(loop, lambda: server.connections == 1, "the client was accepted")
            loop.run_once(0.05)
            assert server.memory_budget is None


def test_the_biggest_holder_is_closed_first_and_the_small_ones_are_served(caplog):
    caplog.set_level(logging.WARNING, logger="evloop")
    with EventLoop() as loop:
        server = serve(loop, max_clients_memory=3 * MIB)
        budget = server.memory_budget
        assert isinstance(budget, ClientMemoryBudget) and budget.limit == 3 * MIB
        big, small, late, honest = (connect(server) for _ in range(4))
        big_address = f"127.0.0.1:{big.getsockname()[1]}"
        with big, small, late, honest:
            # Two incomplete requests: 2.5 MiB and 0.2 MiB held, 2.7 in all.
            send_stepping(loop, big, frame_head(4 * MIB) + b"b" * (5 * MIB // 2))
            send_stepping(loop, small, frame_head(MIB) + b"s" * (MIB // 5))
            step_until(loop, lambda: budget.held == 5 * MIB // 2 + MIB // 5, "both charged")
            assert budget.charged_connections == 2 and budget.cut == 0
            # An honest client's whole requests hold nothing between reads.
            send_stepping(loop, honest, frame_head(5) + b"hello")
            assert recv_stepping(loop, honest, 7) == b"5\nhello"
            assert budget.charged_connections == 2
            # A third holder takes the sum past 3 MiB: the biggest goes.
            send_stepping(loop, late, frame_head(MIB) + b"l" * (MIB - 1))
            step_until(loop, lambda: budget.held == MIB // 5 + MIB - 1, "the late one charged")
            assert budget.cut == 1
            assert closed_by_server(loop, big)
            # The others finish their requests and get their answers.
            send_stepping(loop, small, b"s" * (MIB - MIB // 5))
            send_stepping(loop, late, b"l")
            send_stepping(loop, honest, frame_head(3) + b"bye")
            for sock, body in ((small, b"s" * MIB), (late, b"l" * MIB), (honest, b"bye")):
                reply = frame_head(len(body)) + body
                assert recv_stepping(loop, sock, len(reply)) == reply
            step_until(loop, lambda: budget.held == 0, "nothing held once all is answered")
            assert budget.charged_connections == 0
    cuts = [r.getMessage() for r in caplog.records if "Limits.max_clients_memory" in r.getMessage()]
    assert len(cuts) == 1
    assert big_address in cuts[0] and "holding 2.5 MiB" in cuts[0]


def never_reading_client(server):
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * KIB)  # replies pile up in the server
    sock.connect((server.host, server.port))
    return sock


def pipeline_until(loop, sock, frames, done):
    """Send whole ``frames`` while the socket takes them, stepping the
    loop, until ``done()``; returns the frames sent."""
    sock.setblocking(False)
    sent = []
    pending = memoryview(b"")
    for _ in range(20000):
        if done():
            return sent
        if not pending and len(sent) < len(frames):
            sent.append(frames[len(sent)])
            pending = memoryview(sent[-1])
        try:
            pending = pending[sock.send(pending) :] if pending else pending
        except BlockingIOError:
            pass
        loop.run_once(0.01 if pending else 0)
    raise AssertionError("the server never held what was expected")


def test_queued_output_is_charged_too(caplog):
    caplog.set_level(logging.WARNING, logger="evloop")
    frames = [frame_head(64 * KIB) + bytes([65 + n % 26]) * (64 * KIB) for n in range(1024)]
    with EventLoop() as loop:
        server = serve(loop, max_clients_memory=MIB, write_high_water=512 * KIB, write_low_water=128 * KIB)
        budget = server.memory_budget
        first, second = never_reading_client(server), never_reading_client(server)
        first_address = f"127.0.0.1:{first.getsockname()[1]}"
        with first, second:
            # The first never reads: once the kernel's buffers are full, its
            # replies wait in the server, up to the high-water mark and one
            # reply (and its unread input), and are charged.
            pipeline_until(loop, first, frames, lambda: budget.held > 512 * KIB)
            for _ in range(5):
                loop.run_once(0.01)
            held_by_first = budget.held
            assert budget.cut == 0 and held_by_first <= MIB
            # The second does the same: past 1 MiB, the bigger one goes.
            sent = pipeline_until(loop, second, frames, lambda: budget.cut == 1)
            assert closed_by_server(loop, first)
            # The second gets every reply, in order, once it reads.
            sent_data = b"".join(sent)
            assert recv_stepping(loop, second, len(sent_data)) == sent_data
            step_until(loop, lambda: budget.held == 0, "nothing held once all is answered")
    cuts = [r.getMessage() for r in caplog.records if "Limits.max_clients_memory" in r.getMessage()]
    assert len(cuts) == 1 and first_address in cuts[0]
    assert f"holding {format_bytes(held_by_first)}" in cuts[0]


def test_one_enforcement_names_ten_and_counts_the_rest(caplog):
    caplog.set_level(logging.WARNING, logger="evloop")
    with EventLoop() as loop:
        server = serve(loop, max_clients_memory=16 * MIB)
        budget = server.memory_budget
        clients = [connect(server) for _ in range(14)]
        try:
            for number, sock in enumerate(clients):
                send_stepping(loop, sock, frame_head(MIB) + b"x" * (100 * KIB + number))
            step_until(loop, lambda: budget.charged_connections == 14, "all charged")
            # The budget is lowered under what one holds: every holder goes,
            # biggest first, in one enforcement.
            budget.limit = 50 * KIB
            budget.enforce()
            assert budget.cut == 14 and budget.held == 0 and budget.charged_connections == 0
            assert loop.limit_hits["max_clients_memory"] == 14  # the metrics endpoint's count
            assert all(closed_by_server(loop, sock) for sock in clients)
        finally:
            for sock in clients:
                sock.close()
    lines = [r.getMessage() for r in caplog.records if "memory" in r.getMessage()]
    assert len(lines) == LOGGED_PER_ENFORCEMENT + 1
    assert "holding 100.0 KiB" in lines[-2]  # the smallest named is the tenth biggest
    assert lines[-1].endswith("closed 4 more connections over the client memory budget")


def test_a_handler_that_says_its_pending_input_is_charged_by_it():
    # The mini Redis buffers commands in its own RespFramer and overrides
    # pending_input() only: held_memory() defaults to it.
    miniredis = load_example("miniredis")
    with EventLoop() as loop:
        server = Server("127.0.0.1", 0, limits=Limits(max_clients_memory=3 * MIB))
        server.database = miniredis.Database()
        loop.add_server(server, miniredis.MiniRedisHandler)
        budget = server.memory_budget
        big, small = connect(server), connect(server)
        with big, small:
            send_stepping(loop, small, b"*3\r\n$3\r\nSET\r\n$1\r\ns\r\n$%d\r\n" % MIB + b"s" * (MIB // 2))
            step_until(loop, lambda: budget.held >= MIB // 2, "the small one charged")
            send_stepping(loop, big, b"*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$%d\r\n" % (8 * MIB) + b"b" * (3 * MIB))
            step_until(loop, lambda: budget.cut == 1, "the budget was enforced")
            assert closed_by_server(loop, big)
            send_stepping(loop, small, b"s" * (MIB // 2) + b"\r\n")
            assert recv_stepping(loop, small, 5) == b"+OK\r\n"
            assert server.database.execute("GET", "s") == b"$%d\r\n%s\r\n" % (MIB, b"s" * MIB)


def test_discard_input_runs_once_the_connection_closed_after_finish():
    calls = []
    handlers = []

    class Recording(LengthSepEcho):
        def setup(self):
            handlers.append(self)

        def finish(self):
            calls.append(("finish", self.held_memory()))

        def discard_input(self):
            super().discard_input()
            calls.append(("discard_input", self.held_memory()))

    with EventLoop() as loop:
        server = Server("127.0.0.1", 0)
        loop.add_server(server, Recording)
        with connect(server) as client:
            send_stepping(loop, client, frame_head(100) + b"x" * 40)
            step_until(loop, lambda: server.memory_budget.held == 40, "charged")
            handlers[0].close()
            assert server.memory_budget.held == 0
    assert calls == [("finish", 40), ("discard_input", 0)]


def body_length(request):
    return str(len(request.body))


def wsgi_body_length(environ, start_response):
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(len(body)).encode()]


@pytest.mark.parametrize("kind", ["http", "wsgi"])
def test_http_and_wsgi_charge_their_parsers_buffer_and_the_body_held(kind):
    # A head still arriving sits in the shared request parser's buffer; a
    # body held for the handler (HTTP) or for the application (WSGI, whose
    # input buffer is made larger than the budget here) is charged too.
    if kind == "http":
        from evloop.protocols.http import HTTPHandler

        class Sizes(HTTPHandler):
            routes = {"/": body_length}
            max_body_size = 8 * MIB

        handler = Sizes
    else:
        pytest.importorskip("h11")
        from evloop.protocols.wsgi import wsgi_handler

        handler = wsgi_handler(wsgi_body_length, threads=2, input_buffer_size=8 * MIB, max_body_size=8 * MIB)
    with EventLoop() as loop:
        server = Server("127.0.0.1", 0, limits=Limits(max_clients_memory=MIB))
        loop.add_server(server, handler)
        budget = server.memory_budget
        big, small = connect(server), connect(server)
        with big, small:
            half_head = b"POST / HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"p" * (8 * KIB)
            send_stepping(loop, small, half_head)
            step_until(loop, lambda: budget.held >= 8 * KIB, "the half head charged")
            big_head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (4 * MIB)
            send_stepping(loop, big, big_head + b"b" * (3 * MIB // 2))
            step_until(loop, lambda: budget.cut == 1, "the budget was enforced")
            assert closed_by_server(loop, big)
            send_stepping(loop, small, b"\r\nContent-Length: 2\r\n\r\nok")
            reply = recv_until(loop, small, b"\r\n\r\n2")
            assert reply.startswith(b"HTTP/1.1 200")
            step_until(loop, lambda: budget.held == 0, "nothing held once all is answered")
