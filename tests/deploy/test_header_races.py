"""Two races the HAProxy deployment test (test_haproxy.py) once ran into now
and then, each made certain here on one loop. A connection whose PROXY
header has not been read yet (state PROXY_HEADER) was

1. closed by the timeout sweep as "idle timeout (300s) fired" as soon as
   the sweep ran (another connection keeping it running), because its idle
   clock (``Connection.active``) started at 0.0: ``start_proxy_header``
   did not set it;
2. closed at once by a graceful stop (a reload) as "idle", although a
   client's request was on its way behind the header
   (``ClientHandler.shutdown_gracefully`` closed every state but OPEN and
   CLOSING).

Behind HAProxy the header and the request arrive together, so the window
is the time between accept and the first read, which a loaded host widens.
"""

import socket
import threading

import pytest
from evloop.protocols import LengthSepEcho

from evloop import Server
from evloop.limits import DEFAULT_LIMITS
from tests.conftest import recv_exactly
from tests.waiting import wait_on_loop

try:
    from evloop.proxy_protocol import ProxyProtocol
except ImportError:  # a build without the PROXY protocol
    ProxyProtocol = None

pytestmark = pytest.mark.skipif(ProxyProtocol is None, reason="this build has no evloop.proxy_protocol")

HEADER = b"PROXY TCP4 192.0.2.7 192.0.2.1 41000 9000\r\n"


def serve(running_loop, limits=DEFAULT_LIMITS):
    server = Server("127.0.0.1", 0, limits=limits, proxy_protocol=ProxyProtocol(trusted=["127.0.0.1/32"]))
    running_loop.call(running_loop.loop.add_server, server, LengthSepEcho)
    return server


def test_a_header_under_way_is_not_closed_by_the_idle_sweep(running_loop):
    # A one-second idle timeout: the sweep looks every 0.1 s.
    server = serve(running_loop, DEFAULT_LIMITS.replace(idle_timeout=1.0))
    with socket.create_connection((server.host, server.port), timeout=5) as served:
        served.sendall(HEADER + b"5\nhello")  # an open connection keeps the sweep running
        assert recv_exactly(served, 7) == b"5\nhello"
        with socket.create_connection((server.host, server.port), timeout=5) as waiting:
            waiting.sendall(HEADER[:10])
            # Well within the idle timeout, it must still be open.
            waiting.settimeout(0.5)
            with pytest.raises(socket.timeout):
                waiting.recv(1)
            waiting.settimeout(5)
            waiting.sendall(HEADER[10:] + b"5\nworld")
            assert recv_exactly(waiting, 7) == b"5\nworld"


def test_a_graceful_stop_serves_a_request_whose_header_is_under_way(running_loop):
    loop = running_loop.loop
    server = serve(running_loop)
    with socket.create_connection((server.host, server.port), timeout=5) as client:
        client.sendall(HEADER[:10])
        assert wait_on_loop(running_loop, lambda: loop.connection_count == 1)
        stopping = threading.Event()

        def stop():  # on the loop's thread: the graceful stop begins here
            loop.stop(graceful=True)
            stopping.set()

        loop.call_soon_threadsafe(stop)
        assert stopping.wait(5)
        client.sendall(HEADER[10:] + b"5\nhello")
        assert recv_exactly(client, 7) == b"5\nhello"
