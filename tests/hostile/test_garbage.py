"""Hypothesis-driven garbage at every server, over real sockets: random
bytes, and well-formed requests with bytes flipped, spliced in or cut off.
Whatever arrives, the server answers or refuses that one connection (a
warning at most, never a logged traceback) and goes on serving everyone."""

import errno
import logging
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.certs import make_tls_files
from tests.conftest import RunningLoop
from tests.hostile.targets import server_cases

CASES = {case.name: case for case in server_cases()}


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """One loop serving every case (and a TLS server), for the whole module."""
    from evloop.tls import make_server_context

    errors = Collect()
    logging.getLogger().addHandler(errors)
    running = RunningLoop()
    running.start()
    try:
        addresses = {}
        for name, case in CASES.items():
            server = case.make_server("127.0.0.1", 0)
            running.call(running.loop.add_server, server, case.handler)
            addresses[name] = server.address
        files = make_tls_files(tmp_path_factory.mktemp("garbage-tls"))
        context = make_server_context(str(files.server_cert), str(files.server_key))
        tls = CASES["lengthsep-echo"].make_server("127.0.0.1", 0, ssl=context)
        running.call(running.loop.add_server, tls, CASES["lengthsep-echo"].handler)
        addresses["tls"] = tls.address
        yield addresses, errors
    finally:
        running.stop()
        logging.getLogger().removeHandler(errors)


def spliced(sample):
    """A well-formed request with something done to it."""
    return st.one_of(
        st.tuples(st.integers(0, len(sample)), st.binary(min_size=1, max_size=50)).map(
            lambda t: sample[: t[0]] + t[1] + sample[t[0] :]
        ),
        st.tuples(st.integers(0, len(sample) - 1), st.integers(1, 255)).map(
            lambda t: sample[: t[0]] + bytes([sample[t[0]] ^ t[1]]) + sample[t[0] + 1 :]
        ),
        st.integers(0, len(sample) - 1).map(lambda cut: sample[:cut]),
        st.tuples(st.integers(1, 5), st.binary(max_size=100)).map(lambda t: sample * t[0] + t[1]),
    )


def garbage_for(name):
    sample = CASES["lengthsep-echo" if name == "tls" else name].request
    return st.one_of(st.binary(max_size=4000), spliced(sample))


def throw(address, data):
    """Send ``data``, end the stream, and read until the server closes."""
    with socket.create_connection(address, timeout=15) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
        except (ConnectionResetError, BrokenPipeError):
            pass  # refused before it had read it all: a RST is a close too
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:  # shutdown() after the server's RST
                raise


def still_serving(name, address):
    if name == "tls":
        return True  # the TLS server's health is checked over TLS by test_tls.py
    case = CASES[name]
    with socket.create_connection(address, timeout=15) as sock:
        sock.sendall(case.request)
        got = b""
        while len(got) < len(case.answer):
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
    return got.startswith(case.answer)


@pytest.mark.parametrize("name", [*sorted(CASES), "tls"])
def test_garbage_at_every_server(servers, name):
    addresses, errors = servers
    address = addresses[name]

    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(data=garbage_for(name))
    def attack(data):
        before = len(errors.records)
        throw(address, data)
        assert still_serving(name, address)
        new = [r.getMessage() for r in errors.records[before:]]
        assert not new, f"{name}: {data[:100]!r} made the server log: {new}"

    attack()
