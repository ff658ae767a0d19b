"""A chat room: the page over HTTP and its WebSocket on one port.

    python examples/websocket_chat.py --port 8080
    # open http://localhost:8080/ in several browsers and talk

``GET /`` serves the page; ``/chat`` is the WebSocket. A browser sends
``{"name": ..., "text": ...}`` as a text message; the server stamps it and
sends it to everyone in the room, the sender included, as
``{"kind": "message", "from": ..., "text": ...}``. Arrivals and departures
go out as ``{"kind": "presence", "online": N}``.
"""

import argparse
import json
import logging
import sys
from typing import List, Optional, Union

try:
    from evloop.protocols.http import HTTPHandler, Request, Response
    from evloop.protocols.websocket import WebSocketHandler
except ModuleNotFoundError as missing:  # h11 and wsproto come with the websocket extra
    print(
        f"websocket_chat.py: error: {missing.name} is missing: pip install 'evloop-server[websocket]'",
        file=sys.stderr,
    )
    sys.exit(2)

from evloop import Server, loop

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>evloop chat</title>
<style>
  body { font: 15px/1.4 system-ui, sans-serif; max-width: 40em; margin: 2em auto; }
  #log { list-style: none; padding: 0; border: 1px solid #ccc; height: 20em; overflow-y: auto; }
  #log li { padding: .2em .5em; }
  #log li.system { color: #777; font-style: italic; }
  form { display: flex; gap: .5em; margin-top: .5em; }
  #text { flex: 1; }
</style>
</head>
<body>
<h1>evloop chat</h1>
<p id="status">connecting...</p>
<ul id="log"></ul>
<form id="form">
  <input id="name" placeholder="your name" size="10">
  <input id="text" placeholder="say something" autocomplete="off">
  <button id="send" type="submit">Send</button>
</form>
<script>
"use strict";
const log = document.getElementById("log");
const status = document.getElementById("status");
const scheme = location.protocol === "https:" ? "wss://" : "ws://";
const socket = new WebSocket(scheme + location.host + "/chat");

function show(text, cls) {
  const item = document.createElement("li");
  item.textContent = text;
  if (cls) item.className = cls;
  log.appendChild(item);
  log.scrollTop = log.scrollHeight;
}

socket.onopen = () => { status.textContent = "connected"; };
socket.onclose = (event) => { status.textContent = "disconnected (" + event.code + ")"; };
socket.onmessage = (event) => {
  const message = JSON.parse(event.data);
  if (message.kind === "message") show(message.from + ": " + message.text);
  else if (message.kind === "presence") show(message.online + " online", "system");
  else if (message.kind === "error") show("error: " + message.text, "system");
};
document.getElementById("form").onsubmit = (event) => {
  event.preventDefault();
  const text = document.getElementById("text");
  if (!text.value || socket.readyState !== WebSocket.OPEN) return;
  const name = document.getElementById("name").value || "anonymous";
  socket.send(JSON.stringify({name: name, text: text.value}));
  text.value = "";
};
</script>
</body>
</html>
"""


def page(request: Request) -> Response:
    return Response(PAGE, content_type="text/html; charset=utf-8")


class ChatSocket(WebSocketHandler):
    """One person in the room."""

    max_message_size = 8 * 1024

    def opened(self) -> None:
        self.announce()

    def received_message(self, message: Union[str, bytes]) -> None:
        try:
            data = json.loads(message)
            name = str(data.get("name") or "anonymous")[:40]
            text = str(data["text"])[:2000]
        except (ValueError, TypeError, KeyError, AttributeError):
            self.send(json.dumps({"kind": "error", "text": 'send {"name": ..., "text": ...}'}))
            return
        self.broadcast(json.dumps({"kind": "message", "from": name, "text": text}))

    def closed(self, code: int, reason: str = "") -> None:
        self.announce()

    def announce(self) -> None:
        online = len(self.open_sockets(self.loop))
        self.broadcast(json.dumps({"kind": "presence", "online": online}))


class ChatServer(HTTPHandler):
    routes = {"/": page, "/chat": ChatSocket}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        server = Server(args.host, args.port)
    except OSError as exc:  # a port in use or not ours to bind: one line, not a traceback
        parser.exit(
            2, f"{parser.prog}: error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}\n"
        )
    print(f"listening on {server.host}:{server.port}", flush=True)
    loop(server, ChatServer)


if __name__ == "__main__":
    main()
