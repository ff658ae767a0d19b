"""evloop inside an asyncio program: one thread, asyncio's loop in charge.

    python examples/asyncio_bridge.py --port 8000
    printf '0.5 slow\\n0 fast\\n' | nc -q1 localhost 8000    # prints: SLOW, then FAST
    printf 'timer 0.2\\n' | nc -q1 localhost 8000            # prints: tick (an evloop timer)

asyncio watches the descriptor of evloop's selector (an epoll or kqueue
object is itself readable when any socket in it is ready) and runs one
non-blocking evloop pass, ``run_once(0)``, whenever it is. Nothing there
would wake asyncio for evloop's timers, so after every pass the bridge also
asks ``next_wait()`` and sets an asyncio timer for then.

Each request line is ``SECONDS TEXT``: the handler hands it to an asyncio
coroutine (standing for a database driver or an HTTP client) with
``asyncio.run_coroutine_threadsafe``, whose ``concurrent.futures.Future``
evloop accepts as a response: the reply goes out when the coroutine is done,
and pipelined replies keep their order even when a later one finishes
first. ``timer SECONDS`` is answered by an evloop ``call_later`` instead.
"""

import argparse
import asyncio
import signal
from concurrent.futures import Future
from typing import List, Optional

from evloop.protocols import LineHandler

from evloop import EventLoop, Server


async def shout_later(seconds: float, text: bytes) -> bytes:
    """The asyncio side's work: wait (as a query would), then answer."""
    await asyncio.sleep(seconds)
    return text.upper() + b"\n"


class AsyncLines(LineHandler):
    """Answers ``SECONDS TEXT`` through asyncio, ``timer SECONDS`` through evloop."""

    terminator = b"\n"

    def make_response(self) -> "Future[bytes]":
        word, _, rest = self.request.partition(b" ")
        if word == b"timer":
            tick: Future[bytes] = Future()
            self.loop.call_later(float(rest), tick.set_result, b"tick\n")
            return tick
        # On the bridge's pass, so asyncio's loop is the running one here.
        return asyncio.run_coroutine_threadsafe(shout_later(float(word), rest), asyncio.get_running_loop())


class EvloopInAsyncio:
    """Drives ``event_loop`` from the running asyncio loop, on its thread."""

    def __init__(self, event_loop: EventLoop) -> None:
        self.event_loop = event_loop
        self.aio_loop = asyncio.get_running_loop()
        self.fd = event_loop.selector.fileno()  # type: ignore[attr-defined]  # epoll, kqueue, devpoll
        self.wakeup: Optional[asyncio.TimerHandle] = None
        self.aio_loop.add_reader(self.fd, self.run_pass)
        self.schedule()

    def run_pass(self) -> None:
        self.event_loop.run_once(0)  # never blocks asyncio
        self.schedule()

    def schedule(self) -> None:
        """An asyncio timer for evloop's next due timer (or ready callback)."""
        if self.wakeup is not None:
            self.wakeup.cancel()
        wait = self.event_loop.next_wait()
        self.wakeup = None if wait is None else self.aio_loop.call_later(wait, self.run_pass)

    def close(self) -> None:
        self.aio_loop.remove_reader(self.fd)
        if self.wakeup is not None:
            self.wakeup.cancel()


async def serve(server: Server) -> None:
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    with EventLoop() as event_loop:
        event_loop.add_server(server, AsyncLines)
        bridge = EvloopInAsyncio(event_loop)
        print(f"listening on {server.host}:{server.port}", flush=True)
        try:
            await stop.wait()
        finally:
            bridge.close()
    print("stopped", flush=True)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    try:
        server = Server(args.host, args.port)
    except OSError as exc:  # a port in use or not ours to bind: one line, not a traceback
        parser.exit(
            2, f"{parser.prog}: error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}\n"
        )
    asyncio.run(serve(server))


if __name__ == "__main__":
    main()
