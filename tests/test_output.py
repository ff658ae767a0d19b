"""Streaming responses: partial sends, files, generators, futures, order."""

import os
import socket
from concurrent.futures import Future

from evloop import ClientHandler
from evloop.testing import HandlerHarness
from tests.conftest import connect, recv_exactly


class LineCommands(ClientHandler):
    """Each line is a command; the response is whatever `responses` maps it to."""

    close_when_done = False
    responses: dict = {}

    def request_complete(self):
        end = self.incoming.find(b"\n")
        return end + 1 if end >= 0 else False

    def make_response(self):
        command = bytes(self.incoming[: self.incoming.find(b"\n")])
        factory = self.responses[command]
        return factory(self) if callable(factory) else factory


def test_partial_sends_keep_order_and_bytes(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"F" * 5000)
    LineCommands.responses = {
        b"a": b"A" * 3000,
        b"f": lambda h: open(path, "rb"),
        b"g": lambda h: (b"G" * 100 for _ in range(30)),
    }
    harness = HandlerHarness(LineCommands, send_window=700)
    harness.feed(b"a\nf\ng\na\n")
    while harness.drain():
        pass
    assert harness.output == b"A" * 3000 + b"F" * 5000 + b"G" * 3000 + b"A" * 3000


def test_replies_of_one_read_leave_in_one_send():
    LineCommands.responses = {b"x": b"1", b"y": "2", b"z": [b"3", b"4"]}
    harness = HandlerHarness(LineCommands)
    assert harness.feed(b"x\ny\nz\nx\n") == b"12341"
    assert harness.socket.send_calls == 1


def test_a_future_holds_later_replies_back_until_it_resolves():
    future = Future()
    LineCommands.responses = {b"slow": future, b"fast": b"fast;"}
    harness = HandlerHarness(LineCommands)
    assert harness.feed(b"fast\nslow\nfast\n") == b"fast;"
    future.set_result([b"slow;", "done;"])
    assert harness.advance(0) == b"slow;done;fast;"


def test_a_failed_future_reaches_handle_error(caplog):
    future = Future()
    LineCommands.responses = {b"slow": future}
    harness = HandlerHarness(LineCommands)
    harness.feed(b"slow\n")
    future.set_exception(RuntimeError("worker failed"))
    harness.advance(0)
    assert harness.closed
    assert "RuntimeError: worker failed" in caplog.text


def test_an_unsendable_response_is_an_error_for_that_client(caplog):
    LineCommands.responses = {b"bad": 42}
    harness = HandlerHarness(LineCommands)
    harness.feed(b"bad\n")
    assert harness.closed
    assert "a response must be bytes" in caplog.text


def test_files_are_closed_once_sent_and_on_close(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    opened = []

    def open_file(handler):
        f = open(path, "rb")
        opened.append(f)
        return f

    LineCommands.responses = {b"f": open_file}
    harness = HandlerHarness(LineCommands)
    harness.feed(b"f\n")
    assert opened[0].closed
    harness = HandlerHarness(LineCommands, send_window=10)
    harness.feed(b"f\n")
    assert not opened[1].closed
    harness.handler.close()
    assert opened[1].closed


def test_large_file_goes_out_with_sendfile_over_a_real_socket(running_loop, tmp_path, monkeypatch):
    path = tmp_path / "big"
    blob = os.urandom(8 * 1024 * 1024)
    path.write_bytes(blob)
    calls = []
    real_sendfile = os.sendfile

    def counting_sendfile(*args):
        calls.append(args[3])
        return real_sendfile(*args)

    monkeypatch.setattr(os, "sendfile", counting_sendfile)
    LineCommands.responses = {b"f": lambda h: open(path, "rb")}
    server = running_loop.serve(LineCommands)
    with connect(server) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"f\n")
        assert recv_exactly(sock, len(blob)) == blob
    assert calls, "os.sendfile was not used for a regular file"
