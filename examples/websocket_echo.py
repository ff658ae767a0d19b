"""A WebSocket echo endpoint at path ``/``, for conformance testing.

    python examples/websocket_echo.py --port 9001
    python -m websockets ws://localhost:9001/      # type a line, get it back

Every text message comes back as text, every binary message as binary.
Messages up to ``--max-size`` bytes (default 32 MiB) are accepted; a larger
one closes the connection with 1009. Each frame of a message counts at least
``--min-frame-cost`` bytes (default 4096) against that size, so a message in
tiny fragments is refused early; Autobahn's 9.3.1/9.4.1 (4 MiB in 64-byte
frames) pass with ``--min-frame-cost 64``. permessage-deflate is negotiated
when the client offers it (``--no-compression``: never). A plain HTTP GET of
``/`` is answered with 426 Upgrade Required.
"""

import argparse
import logging
import sys
from typing import List, Optional, Type

try:
    from evloop.protocols.http import HTTPHandler
    from evloop.protocols.websocket import EchoWebSocket
except ModuleNotFoundError as missing:  # h11 and wsproto come with the websocket extra
    print(
        f"websocket_echo.py: error: {missing.name} is missing: pip install 'evloop-server[websocket]'",
        file=sys.stderr,
    )
    sys.exit(2)

from evloop import Server, loop


def make_handler(
    max_size: int, min_frame_cost: int = EchoWebSocket.min_frame_cost, compression: bool = True
) -> Type[HTTPHandler]:
    class Echo(EchoWebSocket):
        max_message_size = max_size

    Echo.min_frame_cost = min_frame_cost
    Echo.compression = compression

    class EchoServer(HTTPHandler):
        routes = {"/": Echo}

    return EchoServer


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument(
        "--max-size", type=int, default=32 * 1024 * 1024, help="largest message accepted, in bytes"
    )
    parser.add_argument(
        "--min-frame-cost",
        type=int,
        default=EchoWebSocket.min_frame_cost,
        help="bytes each frame of a message counts at least against --max-size",
    )
    parser.add_argument("--no-compression", action="store_true", help="never negotiate permessage-deflate")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        server = Server(args.host, args.port)
    except OSError as exc:  # a port in use or not ours to bind: one line, not a traceback
        parser.exit(
            2, f"{parser.prog}: error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}\n"
        )
    print(f"listening on {server.host}:{server.port}", flush=True)
    loop(server, make_handler(args.max_size, args.min_frame_cost, not args.no_compression))


if __name__ == "__main__":
    main()
