"""examples/echo_lengthsep.py, run as a user would run it."""

import socket

from tests.conftest import recv_all, recv_exactly
from tests.examples import running_example


def test_recipe_example_answers_like_the_recipe():
    with running_example("echo_lengthsep.py") as (host, port, _):
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(b"5\nhello")
            assert recv_all(sock) == b"hello"


def test_recipe_example_upper_and_persistent_modes():
    with running_example("echo_lengthsep.py", "--upper") as (host, port, _):
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(b"5\nhello")
            assert recv_all(sock) == b"HELLO"
    with running_example("echo_lengthsep.py", "--persistent") as (host, port, _):
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(b"2\nhi3\nyou")
            assert recv_exactly(sock, 9) == b"2\nhi3\nyou"
