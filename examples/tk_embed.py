"""Embedding evloop in a tkinter program: one thread, Tk's main loop in charge.

    python examples/tk_embed.py --port 8000
    printf '5\\nhello' | nc -q1 localhost 8000  # the window counts the request

Tk owns the main loop; every few milliseconds it lets evloop do one
non-blocking pass with ``run_once(0)``. Handlers and widgets live on the same
thread, so a handler may update the window directly: no locks, no queues.
"""

import argparse
import tkinter
from typing import List, Optional

from evloop.protocols import LengthSepEcho

from evloop import EventLoop, Server

POLL_MS = 10  # how often Tk hands the loop a pass; 10 ms keeps replies prompt


class CountingEcho(LengthSepEcho):
    """LengthSepEcho that shows each request in the window."""

    window: "Window"  # set by main() before the loop serves anyone

    def make_response(self) -> bytes:
        self.window.note_request(self.peer, self.request)
        reply: bytes = super().make_response()
        return reply


class Window:
    def __init__(self, root: tkinter.Tk, event_loop: EventLoop, server: Server) -> None:
        self.root = root
        self.event_loop = event_loop
        self.requests = 0
        root.title("evloop inside tkinter")
        tkinter.Label(root, text=f"serving LengthSepEcho on {server.host}:{server.port}").pack()
        self.status = tkinter.Label(root, text="no requests yet")
        self.status.pack()
        tkinter.Button(root, text="Quit", command=root.destroy).pack()
        root.after(POLL_MS, self.tick)

    def tick(self) -> None:
        self.event_loop.run_once(0)  # one pass, never blocks Tk
        self.root.after(POLL_MS, self.tick)

    def note_request(self, peer: str, body: bytes) -> None:
        self.requests += 1
        self.status.config(text=f"{self.requests} requests; last from {peer}: {body[:30]!r}")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    try:
        root = tkinter.Tk()
    except tkinter.TclError as exc:  # no display: say so in one line
        parser.exit(2, f"{parser.prog}: error: cannot open a window: {exc}\n")
    try:
        server = Server(args.host, args.port)
    except OSError as exc:  # a port in use or not ours to bind: one line, not a traceback
        parser.exit(
            2, f"{parser.prog}: error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}\n"
        )
    event_loop = EventLoop()
    event_loop.add_server(server, CountingEcho)
    CountingEcho.window = Window(root, event_loop, server)
    print(f"listening on {server.host}:{server.port}", flush=True)
    try:
        root.mainloop()
    finally:
        event_loop.close()


if __name__ == "__main__":
    main()
