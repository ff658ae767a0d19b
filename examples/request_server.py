"""yoton's request server, on evloop: one request, one reply, one connection.

    python examples/request_server.py --port 8000
    python -c "from evloop.protocols import do_request; print(do_request('localhost:8000', 'time'))"
    printf 'hello\\r\\n' | nc localhost 8000       # prints: Requested: hello

``--host publichost`` serves every interface (yoton's "visible on the
network"); the default, ``localhost``, this machine only. ``--threads N``
answers requests on N worker threads, as yoton's ``async`` option did.
"""

import argparse
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Type

from evloop.protocols import RequestHandler, split_address

from evloop import Server, loop


class TimeServer(RequestHandler):
    """yoton's example server: the time on request, an echo otherwise."""

    def handle_request(self, request: str) -> str:
        if request == "time":
            return f"The current time is {int(time.time())}"
        return "Requested: " + request


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="localhost", help="a name, an IP, localhost or publichost")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=0, help="worker threads for requests")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    host, port = split_address(f"{args.host}:{args.port}", server=True)
    handler: Type[TimeServer] = TimeServer
    if args.threads:

        class ThreadedTimeServer(TimeServer):
            executor = ThreadPoolExecutor(args.threads)

        handler = ThreadedTimeServer
    try:
        server = Server(host, port)
    except OSError as exc:  # a port in use or not ours to bind: one line, not a traceback
        parser.exit(
            2, f"{parser.prog}: error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}\n"
        )
    print(f"listening on {server.host}:{server.port}", flush=True)
    loop(server, handler)


if __name__ == "__main__":
    main()
