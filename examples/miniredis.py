"""A mini Redis on evloop: RESP2 and RESP3, strings, lists, sets, hashes, sorted sets, expiry.

    python examples/miniredis.py --port 6380
    redis-cli -p 6380 set greeting hello ex 60     # OK
    redis-cli -p 6380 get greeting                 # "hello"

    python examples/miniredis.py --port 6380 --maxmemory 100mb

Strings, lists, sets, hashes and sorted sets, key expiry, SCAN, INFO,
MULTI/EXEC, CONFIG GET/SET and ``maxmemory``: every command that
``redis-benchmark`` runs by default, and those docs/miniredis.md lists.

The command code (``miniredis_db/``, beside this file: :class:`Database`)
does no I/O and reads time only from the clock it is given, so the asyncio
server in ``benchmarks/`` shares it and tests move expiry forward by hand.
:class:`MiniRedisHandler` is the evloop side: all commands of one read are
parsed in one call to the framer and run a slice at a time, each slice in
one call to the database, until the queued replies pass the connection's
high-water mark (the rest wait for ``resume_writing()``); the replies of
one read leave in one ``send``.

A wrong command, arity or type is an ordinary ``-ERR``/``-WRONGTYPE`` reply
and the connection stays open, as in Redis; only bytes that break the
protocol itself get ``-ERR Protocol error: ...`` and a close.
"""

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, List, Optional

from evloop.protocols.resp import RespFramer

from evloop import ClientHandler, EventLoop, Server

# The command code sits beside this file, in miniredis_db/: importable
# however this file is run (as a script, or loaded by path by a test).
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from miniredis_db import COMMANDS, Database, Session, glob_matcher  # noqa: E402
from miniredis_db.replies import parse_memory  # noqa: E402

__all__ = ["COMMANDS", "Database", "MiniRedisHandler", "Session", "glob_matcher", "main", "serve"]


# Commands answered before the size of their replies is known.
_FIRST_SLICE = 16


class MiniRedisHandler(ClientHandler):
    """One client of a mini Redis; the keyspace is ``server.database``."""

    close_when_done = False

    def __init__(self, server: Any, client_socket: Any, client_address: Any) -> None:
        super().__init__(server, client_socket, client_address)
        # The server's Limits.max_request_size, if set, bounds one command.
        self.framer = RespFramer(self.limits.max_request_size)
        self.database: Database = server.database
        self.session = Session()
        self.held: List[List[bytes]] = []  # commands parsed and not yet answered

    counted = False

    def setup(self) -> None:
        self.database.clients += 1  # INFO's connected_clients
        self.counted = True

    def finish(self) -> None:
        if self.counted:  # a connection closed before it was served was never counted
            self.database.clients -= 1

    def data_received(self, data: bytes) -> None:
        framer = self.framer
        framer.feed(data)
        self._answer()

    def eof_received(self) -> None:
        self.framer.feed_eof()
        self._answer()

    def pending_input(self) -> int:
        # A command begun and not finished: the request (slowloris) timeout runs.
        return self.framer.buffered

    def discard_input(self) -> None:
        # Closed: the buffered command goes now, not when the garbage
        # collector gets to this handler (it and its connection refer to
        # each other), so a server that cuts big holders frees their memory.
        super().discard_input()
        self.framer = RespFramer(self.limits.max_request_size)
        self.held = []

    def resume_writing(self) -> None:
        # The replies are down to the low-water mark: answer the commands held.
        self._answer()

    def _answer(self) -> None:
        """Answer the buffered commands, a slice at a time, until the queued
        replies pass the high-water mark; the commands not yet answered wait
        (parsed, from at most one read) for resume_writing()."""
        framer = self.framer
        held = self.held
        if not held:
            held = self.held = framer.maybe_requests()
        start = 0
        size = _FIRST_SLICE
        while start < len(held) and self.takes_requests:
            batch = held[start : start + size]
            start += len(batch)
            self.loop.requests += len(batch)
            replies = self.database.execute_many(batch, self.session)
            if not self.send(replies):
                break
            # As many commands next as the last ones' replies say will fit
            # under the mark, so that it is passed by about one reply.
            room = self.connection.high_water - self.buffered_output
            size = max(1, room * len(batch) // max(1, len(replies)))
        del held[:start]
        if not held and framer.error is not None:
            # The replies above go first; then the -ERR Protocol error and the close.
            raise framer.error


def serve(host: str = "localhost", port: int = 6379, database: Optional[Database] = None) -> Server:
    """A listening Server whose clients share ``database``."""
    server = Server(host, port)
    server.database = database if database is not None else Database()  # type: ignore[attr-defined]
    return server


def _memory(text: str) -> int:
    amount = parse_memory(text.encode())
    if amount is None:
        raise argparse.ArgumentTypeError(f"not a memory amount: {text!r} (try 100mb or 1gb)")
    return amount


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=6379)
    parser.add_argument("--selector", default=None, help="select, poll, epoll...")
    parser.add_argument(
        "--maxmemory",
        type=_memory,
        default=0,
        help="refuse writes with Redis's OOM error once the process uses this much (100mb, 1gb; 0: no limit)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        server = serve(args.host, args.port, Database(maxmemory=args.maxmemory))
    except OSError as exc:  # a port in use or not ours to bind: one line, not a traceback
        parser.exit(
            2, f"{parser.prog}: error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}\n"
        )
    event_loop = EventLoop(args.selector)
    database = server.database  # type: ignore[attr-defined]

    def expire_cycle() -> None:
        # Redis's active expiry runs 10 times a second.
        database.expire_due()
        event_loop.call_later(0.1, expire_cycle)

    event_loop.add_server(server, MiniRedisHandler)
    event_loop.call_later(0.1, expire_cycle)
    print(f"listening on {server.host}:{server.port}", flush=True)
    try:
        event_loop.run()
    except KeyboardInterrupt:
        pass
    finally:
        event_loop.close()


if __name__ == "__main__":
    main()
