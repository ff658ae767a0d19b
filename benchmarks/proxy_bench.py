"""What the PROXY protocol costs: short connections with and without a header.

    python benchmarks/proxy_bench.py --connections 20000
    python benchmarks/proxy_bench.py --connections 50 --json   # the smoke test's run

For each mode (no header on a plain server; a version 1 line; a version 2
header with a CRC32c TLV) it starts ``python -m evloop serve
evloop.protocols:LengthSepEcho`` (with ``--proxy-protocol 127.0.0.1`` for the
header modes) and runs ``--connections`` short connections one after another
from this process: connect, send the header and one request, read the reply,
close. It reports connections per second and microseconds per connection,
and the parser's own cost per header (``timeit``). The header costs the
server one parse and two system calls (a peek, then taking the header's
bytes) per connection, and nothing per read after it. Run it on a quiet
machine: the figures are only as good as the machine is idle.
"""

import argparse
import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
import timeit
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evloop.proxy_protocol import V2_SIGNATURE, crc32c, parse_header  # noqa: E402

REQUEST = b"5\nhello"


def v1_header() -> bytes:
    return b"PROXY TCP4 198.51.100.20 10.0.0.5 51234 9000\r\n"


def v2_header() -> bytes:
    body = socket.inet_aton("198.51.100.20") + socket.inet_aton("10.0.0.5") + struct.pack("!HH", 51234, 9000)
    body += struct.pack("!BH", 3, 4) + b"\0\0\0\0"
    header = V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", len(body)) + body
    return header[:-4] + struct.pack("!I", crc32c(header))


MODES = {"none": b"", "v1": v1_header(), "v2": v2_header()}


def start_server(proxy: bool) -> "tuple[subprocess.Popen[str], int]":
    args = [sys.executable, "-m", "evloop", "serve", "evloop.protocols:LengthSepEcho", "--host", "127.0.0.1"]
    args += ["--port", "0", "--max-connections-per-peer", "0"]  # "listening on" is logged at info
    if proxy:
        args += ["--proxy-protocol", "127.0.0.1"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    process = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    assert process.stderr is not None
    for line in process.stderr:
        found = re.search(r"listening on \S+:(\d+)", line)
        if found:
            return process, int(found.group(1))
    raise RuntimeError("the server did not start")


def run_mode(header: bytes, connections: int) -> Dict[str, float]:
    process, port = start_server(bool(header))
    try:
        first = header + REQUEST
        started = time.perf_counter()
        for _ in range(connections):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(first)
                got = b""
                while len(got) < len(REQUEST):
                    chunk = sock.recv(64)
                    if not chunk:
                        raise RuntimeError(f"closed after {got!r}")
                    got += chunk
                if got != REQUEST:
                    raise RuntimeError(f"wrong reply {got!r}")
        elapsed = time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(10)
    return {"connections_per_second": connections / elapsed, "us_per_connection": elapsed / connections * 1e6}


def parse_cost(header: bytes) -> float:
    """Microseconds to parse ``header`` once."""
    number = 20000
    return min(timeit.repeat(lambda: parse_header(header), number=number, repeat=3)) / number * 1e6


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=5000, help="short connections per mode")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    results = {}
    for name, header in MODES.items():
        result = run_mode(header, args.connections)
        if header:
            result["parse_us"] = parse_cost(header)
        results[name] = result
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"{'mode':6} {'conn/s':>10} {'us/conn':>10} {'parse us':>10}")
        for name, result in results.items():
            parse = f"{result['parse_us']:10.1f}" if "parse_us" in result else f"{'-':>10}"
            rate, each = result["connections_per_second"], result["us_per_connection"]
            print(f"{name:6} {rate:10.0f} {each:10.1f} {parse}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
