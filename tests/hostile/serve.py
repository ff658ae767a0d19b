"""A server for the hostile suite to attack from another process, so its
memory, descriptors and CPU can be measured on their own:

    python -m tests.hostile.serve --case lengthsep-echo --nofile 256 --port 0

prints ``listening on HOST:PORT`` once bound, logs to stderr, and stops
gracefully on SIGTERM. ``--case`` is a name from tests/hostile/targets.py.
"""

import argparse
import logging
import resource

from evloop import loop
from evloop.limits import Limits
from tests.hostile.targets import amplification_cases, server_cases


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="lengthsep-echo")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--nofile", type=int, help="soft RLIMIT_NOFILE to run under")
    parser.add_argument("--selector", default=None)
    parser.add_argument("--max-connections", type=int)
    parser.add_argument("--max-connections-per-peer", type=int, help="0: no per-address cap")
    parser.add_argument("--request-timeout", type=float)
    parser.add_argument("--idle-timeout", type=float)
    parser.add_argument("--backlog", type=int, default=1024)
    parser.add_argument("--max-request-size", type=int)
    parser.add_argument("--max-clients-memory", type=int, help="0: no client memory budget")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.nofile:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, hard))
    changes = {}
    if args.max_connections:
        changes["max_connections"] = args.max_connections
    if args.max_connections_per_peer is not None:
        changes["max_connections_per_peer"] = args.max_connections_per_peer or None
    if args.request_timeout:
        changes["request_timeout"] = args.request_timeout
    if args.idle_timeout:
        changes["idle_timeout"] = args.idle_timeout
    if args.max_request_size:
        changes["max_request_size"] = args.max_request_size
    if args.max_clients_memory is not None:
        changes["max_clients_memory"] = args.max_clients_memory or None
    case = {case.name: case for case in server_cases() + amplification_cases()}[args.case]
    server = case.make_server(args.host, args.port, backlog=args.backlog, limits=Limits(**changes))
    print(f"listening on {server.host}:{server.port}", flush=True)
    loop(server, case.handler, selector=args.selector)


if __name__ == "__main__":
    main()
