"""The recipe's usage: a LengthSepBody server, one request per connection.

    python examples/echo_lengthsep.py --port 8000
    printf '5\\nhello' | nc localhost 8000        # prints: hello

``--persistent`` serves LengthSepEcho instead: many requests per
connection, each answered in the same framing; the connection stays open,
so tell nc to quit a second after its input ends:

    python examples/echo_lengthsep.py --persistent --upper --port 8000
    printf '5\\nhello' | nc -q1 localhost 8000    # prints: 5 HELLO

``--upper`` answers in upper case, in either mode.
"""

import argparse
import logging
from typing import List, Optional, Type

from evloop.protocols import LengthSepBody, LengthSepEcho

from evloop import ClientHandler, Server, loop


class UpperBody(LengthSepBody):
    """The recipe's way to write a protocol: override make_response()."""

    def make_response(self) -> List[bytes]:
        return [self.msg_body.upper()]


class UpperEcho(LengthSepEcho):
    """The persistent echo, in upper case: ``5\\nhello`` gets ``5\\nHELLO``."""

    def make_response(self) -> bytes:
        reply: bytes = super().make_response()
        return reply.upper()


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--persistent", action="store_true", help="serve LengthSepEcho: many requests per connection"
    )
    parser.add_argument("--upper", action="store_true", help="answer in upper case")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        server = Server(args.host, args.port)
    except OSError as exc:  # a port in use or not ours to bind: one line, not a traceback
        parser.exit(
            2, f"{parser.prog}: error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}\n"
        )
    print(f"listening on {server.host}:{server.port}", flush=True)
    handler: Type[ClientHandler]
    if args.persistent:
        handler = UpperEcho if args.upper else LengthSepEcho
    else:
        handler = UpperBody if args.upper else LengthSepBody
    loop(server, handler)


if __name__ == "__main__":
    main()
