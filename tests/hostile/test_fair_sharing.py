"""One client address tries to take every connection slot of a server
process (RLIMIT_NOFILE=512: max_connections 448); another address then
connects. With the per-peer cap off (as before it existed) the first holds
every slot and the second is refused; with the default cap (256) the first
holds 256, the rest of its connections are refused at once with one log
line, and the second is served."""

import socket

import pytest

from tests.hostile.tools import descriptor_limit, linux_only, server_process

NOFILE = 512
SLOTS = NOFILE - NOFILE // 8  # max_connections derived from it (the reserve: an eighth)


def frame(body):
    return b"%d\n" % len(body) + body


def connect_from(source, address):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.bind((source, 0))
    sock.connect(address)
    return sock


def served(sock, body):
    """Whether the server answers ``body`` (False: refused and closed)."""
    sock.sendall(frame(body))
    return sock.recv(100) == frame(body)


@linux_only
@pytest.mark.parametrize("cap", ["off", "default"])
def test_one_address_cannot_take_every_slot(cap):
    options = ["--nofile", str(NOFILE)] + (["--max-connections-per-peer", "0"] if cap == "off" else [])
    with descriptor_limit(SLOTS + 200), server_process(*options) as server:
        attacker = []
        try:
            held = 0
            for n in range(SLOTS):
                sock = connect_from("127.0.0.2", server.address)
                attacker.append(sock)
                try:
                    held += served(sock, b"%03d" % n)
                except ConnectionError:  # refused and closed (reset) before our send
                    pass
            with connect_from("127.0.0.3", server.address) as honest:
                try:
                    honest_served = served(honest, b"honest")
                except ConnectionError:
                    honest_served = False
        finally:
            for sock in attacker:
                sock.close()
        refusals = server.count("refused")
    print(
        f"\nper-peer cap {cap}: one address held {held} of {SLOTS} slots, "
        f"{SLOTS - held} refused ({refusals} log line); another address served: {honest_served}"
    )
    if cap == "off":
        assert held == SLOTS and not honest_served
    else:
        assert held == 256 and honest_served
        assert refusals == 1  # rate-limited: one line per 10 s, then a count
