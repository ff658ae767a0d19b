"""The mini Redis on an asyncio ``Protocol``: the benchmark's yardstick.

    python benchmarks/miniredis_asyncio.py --port 6381

The same command code (``examples/miniredis.py``'s :class:`Database`) and
the same framer (``protocols/resp.py``) as the evloop server, with asyncio's
transport in place of evloop's loop, so that a benchmark of the two measures
the loops and nothing else. Like the evloop version, every command of one
read is parsed in one call and answered in one ``write``.
"""

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any, List, Optional

ROOT = Path(__file__).resolve().parent.parent
for path in (str(ROOT), str(ROOT / "examples")):
    if path not in sys.path:
        sys.path.insert(0, path)

from evloop.protocols.resp import RespFramer  # noqa: E402
from miniredis import Database, Session  # noqa: E402

from evloop import RemoteProtocolError, format_address  # noqa: E402

__all__ = ["MiniRedisProtocol", "main"]

logger = logging.getLogger("miniredis.asyncio")


class MiniRedisProtocol(asyncio.Protocol):
    """One client; the keyspace is shared by all of them."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.framer = RespFramer()
        self.session = Session()
        self.transport: Any = None
        self.peer = "<unknown>"

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.peer = format_address(transport.get_extra_info("peername"))

    def data_received(self, data: bytes) -> None:
        self.framer.feed(data)
        self._answer()

    def eof_received(self) -> Optional[bool]:
        self.framer.feed_eof()
        self._answer()
        return None  # close the transport once the replies are written

    def _answer(self) -> None:
        framer = self.framer
        try:
            requests = framer.maybe_requests()
        except RemoteProtocolError:
            requests = []
        if requests:
            self.transport.write(self.database.execute_many(requests, self.session))
        error = framer.error
        if error is not None and not self.transport.is_closing():
            logger.warning("%s: %s; closing the connection", self.peer, error.message)
            if error.reply:
                self.transport.write(error.reply)
            self.transport.close()


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    database = Database()
    server = await loop.create_server(lambda: MiniRedisProtocol(database), host, port)

    def expire_cycle() -> None:
        database.expire_due()
        loop.call_later(0.1, expire_cycle)

    loop.call_later(0.1, expire_cycle)
    address = server.sockets[0].getsockname()
    print(f"listening on {format_address(address)}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=6381)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        asyncio.run(serve(args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
