"""The jsocket seed's server and client, on evloop: JSON messages over TCP.

    python examples/json_server.py --port 5489              # the server
    python examples/json_server.py --client --port 5489     # a client talks to it

The wire is jsocket 2.x's, so jsocket's own ``JsonClient`` can talk to this
server and this client to a jsocket server. Where jsocket's ``ThreadedServer``
serves one client at a time and ``ServerFactory`` starts a thread per
client, here one thread serves them all: the loop makes one ``MyServer``
handler per connection.

Messages the server understands (anything else is echoed back):

- ``{"message": "new connection"}`` -> ``{"message": "welcome", "peer": "host:port"}``
- ``{"message": "stats"}`` -> ``{"connected_clients": n, "connections_total": n,
  "messages_total": n}``: counters kept as clients come and go, so the reply
  costs the same with ten clients or ten thousand (jsocket's
  ``get_client_stats()``, which lists every client, grows with them)
- ``{"message": "quiet"}`` -> no reply (handle_message returned None)
"""

import argparse
import json
import logging
from typing import Any, Dict, List, Optional, Type

from evloop.protocols import JsonClient, JsonHandler

from evloop import Server, loop

logger = logging.getLogger("json_server")


class ClientCounts:
    """One server's counters, updated as clients come and go: reading them
    walks nothing."""

    __slots__ = ("connected", "connections", "messages")

    def __init__(self) -> None:
        self.connected = self.connections = self.messages = 0

    def as_reply(self) -> Dict[str, int]:
        return {
            "connected_clients": self.connected,
            "connections_total": self.connections,
            "messages_total": self.messages,
        }


def counts_of(server: Any) -> ClientCounts:
    """The ClientCounts of ``server`` (made with its first client)."""
    counts = getattr(server, "client_counts", None)
    if counts is None:
        counts = server.client_counts = ClientCounts()
    return counts


class MyServer(JsonHandler):
    """jsocket's ``MyServer(ThreadedServer)``: ``_process_message`` became
    ``handle_message``; what it returns goes back to the client."""

    counted = False

    def setup(self) -> None:
        counts = counts_of(self.server)
        counts.connected += 1
        counts.connections += 1
        self.counted = True

    def finish(self) -> None:
        if self.counted:  # a connection closed before it was served was never counted
            counts_of(self.server).connected -= 1

    def handle_message(self, obj: Any) -> Any:
        counts = counts_of(self.server)
        counts.messages += 1
        message = obj.get("message") if isinstance(obj, dict) else None
        if message == "new connection":
            logger.info("new connection from %s", self.peer)
            return {"message": "welcome", "peer": self.peer}
        if message == "stats":
            return counts.as_reply()
        if message == "quiet":
            return None
        return {"message": "echo", "data": obj}


def run_client(host: str, port: int, timeout: float = 5.0) -> None:
    """jsocket's client example: connect, say hello, ask for the statistics,
    pipeline a few messages, print every reply as one JSON line."""
    with JsonClient(host, port, timeout) as client:
        client.send_obj({"message": "new connection"})
        print(json.dumps(client.read_obj()), flush=True)
        client.send_obj({"message": "stats"})
        print(json.dumps(client.read_obj()), flush=True)
        # Pipelining: send them all, then read the replies, in order.
        for number in range(3):
            client.send_obj({"message": "quiet"})
            client.send_obj({"n": number, "text": "héllo"})
        for _ in range(3):
            print(json.dumps(client.read_obj()), flush=True)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=5489)
    parser.add_argument("--client", action="store_true", help="talk to a running server instead of serving")
    parser.add_argument(
        "--max-size", type=int, default=None, help="largest message payload in bytes (default 10 MiB)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.client:
        run_client(args.host, args.port)
        return
    handler_class: Type[MyServer] = MyServer
    if args.max_size is not None:

        class Limited(MyServer):
            max_size = args.max_size

        handler_class = Limited
    try:
        server = Server(args.host, args.port)
    except OSError as exc:  # a port in use or not ours to bind: one line, not a traceback
        parser.exit(
            2, f"{parser.prog}: error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}\n"
        )
    print(f"listening on {server.host}:{server.port}", flush=True)
    loop(server, handler_class)


if __name__ == "__main__":
    main()
