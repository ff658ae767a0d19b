"""Test a handler without a socket, in any chunking, on a clock you move.

- :class:`FakeClock`: a loop clock that only moves when told
  (Twisted's ``task.Clock``); pass it as ``EventLoop(clock=...)``.
- :class:`FakeSocket`: stands in for a client socket (Twisted's
  ``StringTransport``): bytes to hand to ``recv()``, what ``send()`` got,
  and an optional send window to force partial sends.
- :class:`HandlerHarness`: one handler on a real :class:`EventLoop` whose
  client socket is a :class:`FakeSocket`; ``feed()`` returns what the handler
  sent in answer.
- :func:`every_split` and :func:`run_in_chunks`: the same input whole, one
  byte at a time, in chunks of 2 to 9 bytes and split at every point.
"""

import collections
import socket
from types import SimpleNamespace
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Sequence, Tuple

from .eventloop import EVENT_READ, EVENT_WRITE, EventLoop

__all__ = ["FakeClock", "FakeSocket", "HandlerHarness", "ManualLoop", "every_split", "run_in_chunks"]


class FakeClock:
    """A clock for ``EventLoop(clock=...)`` that moves only with :meth:`advance`."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self.now += seconds


class FakeSocket:
    """What a handler needs of a connected socket, in memory.

    ``send_window`` limits how many bytes ``send()`` accepts until
    :meth:`open_window` is called (None: no limit)."""

    family = socket.AF_INET
    type = socket.SOCK_STREAM

    def __init__(self, peer: Any = ("127.0.0.1", 40000), send_window: Optional[int] = None) -> None:
        self.peer = peer
        self.to_receive: Deque[bytes] = collections.deque()
        self.eof = False
        self.sent = bytearray()
        self.send_calls = 0
        self.options_set: List[Tuple[int, int, Any]] = []
        self.closed = False
        self.write_shut = False
        self._window_size = send_window
        self._window = send_window

    def recv(self, size: int) -> bytes:
        if self.closed:
            raise OSError(9, "Bad file descriptor")
        if self.to_receive:
            chunk = self.to_receive.popleft()
            if len(chunk) > size:
                self.to_receive.appendleft(chunk[size:])
                chunk = chunk[:size]
            return chunk
        if self.eof:
            return b""
        raise BlockingIOError(11, "Resource temporarily unavailable")

    def send(self, data: Any) -> int:
        if self.closed or self.write_shut:
            raise BrokenPipeError(32, "Broken pipe")
        data = bytes(data)
        if self._window is not None:
            if self._window == 0:
                raise BlockingIOError(11, "Resource temporarily unavailable")
            data = data[: self._window]
            self._window -= len(data)
        self.send_calls += 1
        self.sent += data
        return len(data)

    def open_window(self) -> None:
        self._window = self._window_size

    def shutdown(self, how: int) -> None:
        if how in (socket.SHUT_WR, socket.SHUT_RDWR):
            self.write_shut = True

    def close(self) -> None:
        self.closed = True

    def fileno(self) -> int:
        return -1

    def getpeername(self) -> Any:
        return self.peer

    def setsockopt(self, level: int, option: int, value: Any) -> None:
        self.options_set.append((level, option, value))

    def setblocking(self, flag: bool) -> None:
        pass


class ManualLoop(EventLoop):
    """A real EventLoop that records, instead of selecting on, the interest
    of sockets that have no descriptor (FakeSocket)."""

    def __init__(self, clock: Optional[Callable[[], float]] = None) -> None:
        super().__init__("select", clock=clock if clock is not None else FakeClock())
        self.interest: Dict[Any, Tuple[int, Any]] = {}

    def set_events(self, fileobj: Any, old: int, new: int, target: Any) -> None:
        if isinstance(fileobj, FakeSocket):
            if new:
                self.interest[fileobj] = (new, target)
                if getattr(target, "is_connection", False):
                    # Not in the selector: findable the way parked ones are.
                    self.parked.add(target)
            else:
                self.interest.pop(fileobj, None)
            return
        super().set_events(fileobj, old, new, target)

    def unpark(self, connection: Any) -> None:
        if not isinstance(connection.sock, FakeSocket):
            super().unpark(connection)

    def events_of(self, fileobj: Any) -> int:
        return int(self.interest.get(fileobj, (0, None))[0])


class HandlerHarness:
    """One ``handler_class`` instance served over a :class:`FakeSocket`.

    >>> h = HandlerHarness(MyHandler)
    >>> h.feed(b"5\\nhello")     # what the handler sent back
    b'hello'
    >>> h.closed
    True
    """

    def __init__(
        self,
        handler_class: Any,
        *,
        peer: Any = ("127.0.0.1", 40000),
        send_window: Optional[int] = None,
        clock: Optional[FakeClock] = None,
        server: Any = None,
        limits: Any = None,
    ) -> None:
        self.clock = clock if clock is not None else FakeClock()
        self.loop = ManualLoop(self.clock)
        # ``limits``: an evloop.limits.Limits for the handler (timeouts run
        # on the fake clock: advance() fires them).
        self.server = (
            server
            if server is not None
            else SimpleNamespace(
                loop=self.loop, address=("127.0.0.1", 8000), handler_class=handler_class, limits=limits
            )
        )
        self.socket = FakeSocket(peer, send_window)
        self._taken = 0
        self.handler = handler_class(self.server, self.socket, peer)
        self._guard(self.handler.start)
        self._settle()

    @property
    def closed(self) -> bool:
        return bool(self.handler.closed)

    @property
    def output(self) -> bytes:
        """Everything the handler has sent so far."""
        return bytes(self.socket.sent)

    def feed(self, data: bytes) -> bytes:
        """Deliver ``data`` as one read; return what the handler sent."""
        if data:
            self.socket.to_receive.append(bytes(data))
            self._read_all()
        return self._settle()

    def feed_eof(self) -> bytes:
        """The peer shuts down its write side; return what was sent after."""
        self.socket.eof = True
        self._read_all()
        return self._settle()

    def drain(self) -> bytes:
        """The peer reads: the send window opens and the handler writes."""
        self.socket.open_window()
        while not self.handler.closed and self.loop.events_of(self.socket) & EVENT_WRITE:
            before = len(self.socket.sent)
            self._guard(self.handler.connection.handle_write)
            self.loop.run_once(0)
            if len(self.socket.sent) == before:
                break
        return self._settle()

    def advance(self, seconds: float) -> bytes:
        """Move the clock, run what fell due; return what was sent."""
        self.clock.advance(seconds)
        return self._settle()

    def _read_all(self) -> None:
        sock = self.socket
        while (
            not self.handler.closed
            and self.loop.events_of(sock) & EVENT_READ
            and (sock.to_receive or sock.eof)
        ):
            self._guard(self.handler.connection.handle_read)
            self.loop.run_once(0)
            if sock.eof and not sock.to_receive:
                break

    def _guard(self, method: Callable[[], None]) -> None:
        # The loop's own sorting of exceptions: KeyboardInterrupt and
        # SystemExit escape, anything else goes to handle_error(). The loop
        # notes its time once a pass; this call is outside one.
        self.loop.pass_time = self.loop.time()
        try:
            method()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            self.loop.report_error(self.handler.connection, exc)

    def _settle(self) -> bytes:
        for _ in range(10):
            self.loop.run_once(0)
            if not self.loop._ready and not self.loop.to_flush:
                break
        new = bytes(self.socket.sent[self._taken :])
        self._taken = len(self.socket.sent)
        return new

    def close(self) -> None:
        self.handler.close()
        self.loop.close()


def every_split(data: bytes) -> Iterator[Tuple[str, List[bytes]]]:
    """Ways to deliver ``data``: whole, one byte at a time, in chunks of 2 to 9
    bytes, and split in two at every point. Yields ``(label, chunks)``."""
    yield "whole", [data]
    if len(data) > 1:
        yield "bytewise", [data[i : i + 1] for i in range(len(data))]
    for size in range(2, 10):
        if size < len(data):
            yield f"chunks of {size}", [data[i : i + size] for i in range(0, len(data), size)]
    for cut in range(1, len(data)):
        yield f"split at {cut}", [data[:cut], data[cut:]]


def run_in_chunks(
    handler_class: Any, chunks: Sequence[bytes], *, eof: bool = False, **harness_options: Any
) -> Tuple[bytes, bool]:
    """Feed ``chunks`` one read each to a fresh handler (then end of stream if
    ``eof``); return everything it sent and whether it closed."""
    harness = HandlerHarness(handler_class, **harness_options)
    try:
        for chunk in chunks:
            harness.feed(chunk)
        if eof:
            harness.feed_eof()
        return harness.output, harness.closed
    finally:
        harness.close()
