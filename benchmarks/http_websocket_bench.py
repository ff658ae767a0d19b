"""Loopback measurements of evloop.protocols.http and evloop.protocols.websocket.

    python benchmarks/http_websocket_bench.py

Starts examples/websocket_echo.py and a small HTTP app (each a subprocess on
127.0.0.1, port 0) and measures, with bounded counts:

- WebSocket: sequential round trips of a 32-byte text message (the
  ``websockets`` sync client), one 16 MiB binary echo, and Autobahn case
  9.3.1's shape (a 4 MiB text message in 64-byte fragments);
- HTTP: sequential keep-alive GETs with http.client, and 100 pipelined GETs
  per write over a raw socket.

Numbers depend on the machine; they are for comparing changes on one machine.
"""

import http.client
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parent.parent

HTTP_APP = """
from evloop import Server, loop
from evloop.protocols.http import HTTPHandler

class App(HTTPHandler):
    routes = {"/": lambda request: b"hello world"}

server = Server("127.0.0.1", 0)
print(f"listening on {server.host}:{server.port}", flush=True)
loop(server, App)
"""


def start(command):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    line = process.stdout.readline()
    match = re.search(r"listening on (\S+):(\d+)", line)
    if not match:
        process.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return process, int(match.group(2))


def websocket_numbers(port):
    url = f"ws://127.0.0.1:{port}/"
    with connect(url, max_size=None) as ws:
        message = "x" * 32
        count = 5000
        began = time.perf_counter()
        for _ in range(count):
            ws.send(message)
            ws.recv()
        elapsed = time.perf_counter() - began
        print(
            f"websocket: {count} sequential 32-byte round trips: {count / elapsed:,.0f}/s "
            f"({elapsed / count * 1e6:.0f} us each)"
        )
        big = os.urandom(16 * 1024 * 1024)
        began = time.perf_counter()
        ws.send(big)
        assert ws.recv() == big
        print(f"websocket: 16 MiB binary echo: {time.perf_counter() - began:.3f} s")
        fragment = "y" * 64
        fragments = 4 * 1024 * 1024 // 64
        began = time.perf_counter()
        ws.send(fragment for _ in range(fragments))
        assert len(ws.recv()) == fragments * 64
        print(
            f"websocket: 4 MiB text in {fragments} fragments of 64 bytes (Autobahn 9.3.1 shape): "
            f"{time.perf_counter() - began:.3f} s"
        )


def http_numbers(port):
    client = http.client.HTTPConnection("127.0.0.1", port)
    count = 5000
    began = time.perf_counter()
    for _ in range(count):
        client.request("GET", "/")
        client.getresponse().read()
    elapsed = time.perf_counter() - began
    client.close()
    print(f"http: {count} sequential keep-alive GETs (http.client): {count / elapsed:,.0f}/s")
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    batch, rounds = 100, 100
    with socket.create_connection(("127.0.0.1", port)) as sock:
        began = time.perf_counter()
        for _ in range(rounds):
            sock.sendall(request * batch)
            seen = 0
            while seen < batch:
                seen += sock.recv(1 << 20).count(b"HTTP/1.1 200")
        elapsed = time.perf_counter() - began
    print(f"http: {batch * rounds} GETs pipelined {batch} per write: {batch * rounds / elapsed:,.0f}/s")


def main():
    echo, port = start(
        [sys.executable, str(ROOT / "examples" / "websocket_echo.py"), "--host", "127.0.0.1", "--port", "0"]
    )
    try:
        websocket_numbers(port)
    finally:
        echo.terminate()
        echo.wait()
    app, port = start([sys.executable, "-c", HTTP_APP])
    try:
        http_numbers(port)
    finally:
        app.terminate()
        app.wait()


if __name__ == "__main__":
    main()
