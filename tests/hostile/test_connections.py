"""Clients that misbehave at the connection level: resets in the middle of a
response, a half-close with pipelined requests still pending, a flood of
connect-then-close. Only that connection is affected, nothing is logged as
an error, nothing leaks, everyone else is served."""

import logging
import socket
import struct
import threading

import pytest
from evloop.protocols import LengthSepEcho

from evloop import ClientHandler
from tests.conftest import connect, recv_all, recv_exactly
from tests.hostile.targets import server_cases
from tests.hostile.tools import source_addresses
from tests.waiting import wait_on_loop

SERVERS = {case.name: case for case in server_cases()}


def frame(body):
    return b"%d\n" % len(body) + body


def reset(sock):
    """Close with a RST instead of a FIN (SO_LINGER 0)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def errors_logged(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def serve_case(running, case):
    server = case.make_server("127.0.0.1", 0)
    running.call(running.loop.add_server, server, case.handler)
    return server


# -- resets in the middle of a response ---------------------------------------------


class Streaming(ClientHandler):
    """Answers any bytes with 200 chunks of 64 KiB from a generator, and
    counts generators that were closed before they finished."""

    close_when_done = False
    abandoned = 0
    lock = threading.Lock()

    def make_response(self):
        def chunks():
            try:
                for _ in range(200):
                    yield b"z" * 65536
            except GeneratorExit:
                with Streaming.lock:
                    Streaming.abandoned += 1
                raise

        return chunks()


@pytest.mark.parametrize("handler", [LengthSepEcho, Streaming])
def test_resets_in_the_middle_of_a_response(running_loop, caplog, handler):
    Streaming.abandoned = 0
    server = running_loop.serve(handler)
    other = running_loop.serve(LengthSepEcho)  # someone else on the same loop
    if handler is LengthSepEcho:
        request = b"".join(frame(b"r" * 1000000) for _ in range(4))
    else:
        request = b"go"
    with connect(other) as bystander:
        for n in range(30):
            sock = connect(server)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            sock.sendall(request)
            assert sock.recv(1000)  # the response has begun...
            reset(sock)  # ...and the client is gone
            bystander.sendall(frame(b"%02d" % n))
            assert recv_exactly(bystander, 4) == frame(b"%02d" % n)
    assert wait_on_loop(running_loop, lambda: not running_loop.loop.handlers)
    assert not errors_logged(caplog)
    if handler is Streaming:
        assert Streaming.abandoned == 30  # every generator was closed, none left running


# -- half-close with pipelined requests pending ---------------------------------------


def pipelined_cases():
    return [name for name, case in SERVERS.items() if case.persistent]


@pytest.mark.parametrize("name", pipelined_cases())
def test_half_close_with_pipelined_requests_delivers_every_reply(running_loop, name, caplog):
    case = SERVERS[name]
    server = serve_case(running_loop, case)
    count = 300
    with connect(server) as sock:
        sock.sendall(case.request * count)
        sock.shutdown(socket.SHUT_WR)  # no more requests; replies still wanted
        replies = recv_all(sock)
    assert replies.count(case.answer) == count, (name, replies[:200])
    assert not errors_logged(caplog)


def test_half_close_after_megabytes_of_pipelined_requests(running_loop):
    # More replies than the output high-water mark: reading pauses and
    # resumes while the end of the stream waits behind the unread requests.
    server = running_loop.serve(LengthSepEcho)
    data = b"".join(frame(b"%06d" % i * 5000) for i in range(200))  # 6 MB
    with connect(server) as sock:
        sender = threading.Thread(target=lambda: (sock.sendall(data), sock.shutdown(socket.SHUT_WR)))
        sender.start()
        replies = recv_all(sock)
        sender.join(10)
    assert replies == data


# -- a flood of connect-then-close ------------------------------------------------------


class Counting(LengthSepEcho):
    opened = 0
    closed = 0
    lock = threading.Lock()

    def setup(self):
        with Counting.lock:
            Counting.opened += 1

    def finish(self):
        with Counting.lock:
            Counting.closed += 1


def test_a_flood_of_connect_then_close(running_loop, caplog):
    Counting.opened = Counting.closed = 0
    server = running_loop.serve(Counting)
    sources = source_addresses(4)
    for i in range(1500):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if len(sources) > 1:
            sock.bind((sources[i % len(sources)], 0))
        sock.connect(server.address)
        kind = i % 3
        if kind == 0:
            sock.close()  # FIN at once
        elif kind == 1:
            reset(sock)  # RST at once
        else:
            sock.sendall(b"5\nhel")  # half a request, then RST
            reset(sock)
    with connect(server) as normal:  # accepted after every one of them
        normal.sendall(frame(b"alive"))
        assert recv_exactly(normal, 7) == frame(b"alive")
    assert wait_on_loop(running_loop, lambda: not running_loop.loop.handlers and server.connections == 0)
    assert Counting.opened == Counting.closed
    assert Counting.opened >= 1000  # the kernel may drop a few reset before accept()
    assert not errors_logged(caplog)
