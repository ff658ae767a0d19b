"""examples/asyncio_bridge.py: an evloop loop inside an asyncio program. The
handler's replies come from asyncio coroutines, in order; evloop's own
timers fire though no socket is ready; SIGTERM stops it cleanly."""

import signal
import socket

from tests.conftest import recv_exactly
from tests.examples import running_example


def test_replies_come_from_asyncio_in_order_and_timers_fire():
    with running_example("asyncio_bridge.py") as (host, port, process):
        with socket.create_connection((host, port), timeout=10) as first:
            # Pipelined: the slow coroutine finishes last but answers first.
            first.sendall(b"0.3 slow\n0 fast\n")
            with socket.create_connection((host, port), timeout=10) as second:
                # Meanwhile another client is served at once: nothing blocks.
                second.sendall(b"0 other\n")
                assert recv_exactly(second, 6) == b"OTHER\n"
                second.sendall(b"timer 0.1\n")  # only the bridge's wake-up fires it
                assert recv_exactly(second, 5) == b"tick\n"
            assert recv_exactly(first, 10) == b"SLOW\nFAST\n"
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        assert "stopped" in process.stdout.read()
