"""Round trips per second over each transport, evloop beside socketserver,
and how long a background loop takes to stop.

    python -m benchmarks.transports_bench [--requests 20000]

One blocking client in this process sends a small request and waits for the
reply, ``--requests`` times, over UDP, Unix datagram, TCP and Unix stream.
The server is evloop (one loop in a LoopThread serving all four at once) or
the standard library's socketserver (one serve_forever thread per server,
the usual way to run it beside a client). Both run in this process, so the
numbers compare the servers' per-request cost under the same GIL, not the
machine's network stack. Also measured: LoopThread.stop() to join()
returning, with the loop idle in select() (median of 50).
"""

import argparse
import os
import socket
import socketserver
import statistics
import tempfile
import threading
import time

from evloop import (
    ClientHandler,
    DatagramHandler,
    DatagramServer,
    LoopThread,
    Server,
    UnixDatagramServer,
    UnixServer,
)

__all__ = ["main"]

REQUEST = b"ping 0123456789\n"


class EvEcho(ClientHandler):
    close_when_done = False

    def request_complete(self):
        end = self.incoming.find(b"\n")
        return end + 1 if end >= 0 else False

    def make_response(self):
        return bytes(self.incoming[: self.incoming.find(b"\n") + 1])


class EvDatagramEcho(DatagramHandler):
    def handle_datagram(self, data, address):
        return data


class SsStreamEcho(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(line)


class SsDatagramEcho(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        sock.sendto(data, self.client_address)


def stream_rate(family, address, requests):
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.connect(address)
        if family != socket.AF_UNIX:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.perf_counter()
        for _ in range(requests):
            client.sendall(REQUEST)
            got = b""
            while len(got) < len(REQUEST):
                got += client.recv(4096)
        return requests / (time.perf_counter() - started)


def datagram_rate(family, address, requests, bind=None):
    with socket.socket(family, socket.SOCK_DGRAM) as client:
        if bind:
            client.bind(bind)
        started = time.perf_counter()
        for _ in range(requests):
            client.sendto(REQUEST, address)
            client.recv(4096)
        return requests / (time.perf_counter() - started)


def measure(servers, workdir, requests, tag):
    tcp, udp, unix, unix_dgram = servers
    return {
        "udp": datagram_rate(socket.AF_INET, udp, requests),
        "unix-dgram": datagram_rate(
            socket.AF_UNIX, unix_dgram, requests, bind=os.path.join(workdir, f"client-{tag}.sock")
        ),
        "tcp": stream_rate(socket.AF_INET, tcp, requests),
        "unix-stream": stream_rate(socket.AF_UNIX, unix, requests),
    }


def run_evloop(workdir, requests):
    with LoopThread() as background:
        tcp = background.add_server(Server("127.0.0.1", 0), EvEcho)
        udp = background.add_server(DatagramServer("127.0.0.1", 0), EvDatagramEcho)
        unix = background.add_server(UnixServer(os.path.join(workdir, "ev.sock")), EvEcho)
        unix_dgram = background.add_server(
            UnixDatagramServer(os.path.join(workdir, "evd.sock")), EvDatagramEcho
        )
        return measure((tcp.address, udp.address, unix.path, unix_dgram.path), workdir, requests, "ev")


def run_socketserver(workdir, requests):
    class TCP(socketserver.ThreadingMixIn, socketserver.TCPServer):
        daemon_threads = True
        allow_reuse_address = True

    class UnixStream(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

    servers = [
        TCP(("127.0.0.1", 0), SsStreamEcho),
        socketserver.UDPServer(("127.0.0.1", 0), SsDatagramEcho),
        UnixStream(os.path.join(workdir, "ss.sock"), SsStreamEcho),
        socketserver.UnixDatagramServer(os.path.join(workdir, "ssd.sock"), SsDatagramEcho),
    ]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    try:
        return measure([s.server_address for s in servers], workdir, requests, "ss")
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def stop_latency(samples=50):
    times = []
    for _ in range(samples):
        background = LoopThread(max_wait=None).start()
        started = time.perf_counter()
        background.stop()
        background.join()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        results = {
            "evloop": run_evloop(workdir, args.requests),
            "socketserver": run_socketserver(workdir, args.requests),
        }
    print(f"round trips per second, one client, {args.requests} requests each")
    print(f"{'transport':<12} {'evloop':>10} {'socketserver':>13}")
    for transport in results["evloop"]:
        print(
            f"{transport:<12} {results['evloop'][transport]:>10.0f} "
            f"{results['socketserver'][transport]:>13.0f}"
        )
    print(f"LoopThread stop() -> join() returned: median {stop_latency() * 1e6:.0f} us")


if __name__ == "__main__":
    main()
