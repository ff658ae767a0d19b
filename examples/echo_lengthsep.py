"""The recipe's usage: a LengthSepBody server, one request per connection.

    python examples/echo_lengthsep.py --port 8000
    printf '5\\nhello' | nc localhost 8000        # prints: hello

``--persistent`` serves LengthSepEcho instead: many requests per
connection, each answered in the same framing.
"""

import argparse
import logging

from evloop.protocols import LengthSepBody, LengthSepEcho

from evloop import Server, loop


class UpperBody(LengthSepBody):
    """The recipe's way to write a protocol: override make_response()."""

    def make_response(self):
        return [self.msg_body.upper()]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--persistent", action="store_true", help="serve LengthSepEcho")
    parser.add_argument("--upper", action="store_true", help="answer in upper case")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    server = Server(args.host, args.port)
    print(f"listening on {server.host}:{server.port}", flush=True)
    if args.persistent:
        handler = LengthSepEcho
    else:
        handler = UpperBody if args.upper else LengthSepBody
    loop(server, handler)


if __name__ == "__main__":
    main()
