"""The thread hand-offs of the WSGI server: request body in, response out.

Theory of operation. A WSGI application runs in a worker thread of the
loop's offload pool while the loop goes on serving other clients, so bytes
cross between two threads twice, each time through a bounded buffer:

- :class:`InputStream` (``wsgi.input``): the loop feeds it the request body
  as it arrives; the application reads it, blocking until bytes come. When
  more than ``limit`` bytes wait unread, :meth:`InputStream.feed` says so
  and the loop stops reading the socket (TCP pushes back on the client);
  once the reader has taken enough, ``on_drained`` (called in the reader's
  thread, at most once per pause) tells the loop to read again.
- :class:`ResponseChannel`: the worker puts the response (its head, body
  pieces, a file to send, the end) and blocks while more than ``limit``
  bytes wait untaken; the loop takes everything there is at once, or gets a
  ``Future`` that the next put completes. The engine pulls the loop side
  only when the socket has taken what came before, so a slow client slows
  the application down instead of filling memory.

Either side may give up: :meth:`InputStream.fail` makes reads raise (the
client went away mid-body); :meth:`ResponseChannel.close` makes the
worker's next put raise :class:`ResponseAbortedError` (the connection closed).

Also here: :class:`ErrorStream` (``wsgi.errors``, lines to ``logging``) and
:class:`FileWrapper` (``wsgi.file_wrapper``, PEP 3333 "Optional
Platform-Specific File Handling").
"""

import collections
import logging
import threading
from concurrent.futures import Future
from typing import Any, Callable, Deque, Iterator, List, Optional, Union

__all__ = [
    "EMPTY_INPUT",
    "END",
    "ErrorStream",
    "FileWrapper",
    "InputStream",
    "ResponseAbortedError",
    "ResponseChannel",
    "TaskDispatcher",
    "run_continuation",
]


class ResponseAbortedError(Exception):
    """The connection closed while the application was still answering."""


class InputStream:
    """``wsgi.input``: the request body as it arrives, read from any thread.

    ``read(size)``, ``readline(size)``, ``readlines(hint)`` and iteration
    behave like a binary file's; they block until enough bytes came or the
    body ended, and return short (``b""`` at the end) after that. A body
    cut short by the client raises ``OSError`` in the reader."""

    __slots__ = ("_chunks", "_cond", "_ended", "_error", "_paused", "buffered", "limit", "on_drained")

    def __init__(self, limit: int, on_drained: Optional[Callable[[], None]] = None) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._chunks: Deque[bytes] = collections.deque()
        self.buffered = 0
        self.limit = limit
        self.on_drained = on_drained
        self._ended = False
        self._error: Optional[BaseException] = None
        self._paused = False

    # -- the loop's side ------------------------------------------------------

    def feed(self, data: bytes) -> bool:
        """Add body bytes; returns True when the reader is behind by more
        than ``limit`` (stop reading the socket until ``on_drained``)."""
        with self._cond:
            if data:
                self._chunks.append(data)
                self.buffered += len(data)
                self._cond.notify()
            full = self.buffered > self.limit
            self._paused = self._paused or full
            return full

    def finish(self) -> None:
        """The body is complete: reads return what is left, then ``b""``."""
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def fail(self, error: BaseException) -> None:
        """The body will never be complete: waiting reads raise ``error``."""
        with self._cond:
            if not self._ended:
                self._error = error
                self._ended = True
            self._cond.notify_all()

    # -- the application's side -----------------------------------------------

    def read(self, size: Optional[int] = -1) -> bytes:
        """Up to ``size`` bytes (all that is left if ``size`` is None or
        negative); fewer only at the end of the body."""
        with self._cond:
            want = -1 if size is None or size < 0 else size
            # A full buffer returns short: the loop reads no more until
            # this reader takes some, so waiting for more would never end.
            while not self._ended and (want < 0 or self.buffered < want) and self.buffered <= self.limit:
                self._cond.wait()
            if want < 0 and not self._ended:
                # read() of everything: the body may be bigger than the buffer.
                parts = [self._take(-1)]
                while not self._ended or self._chunks:
                    while not self._ended and not self._chunks:
                        self._cond.wait()
                    parts.append(self._take(-1))
                return b"".join(parts)
            return self._take(want)

    def readline(self, size: Optional[int] = -1) -> bytes:
        """One line, its ``\\n`` included, at most ``size`` bytes."""
        with self._cond:
            limit = -1 if size is None or size < 0 else size
            while True:
                joined = b"".join(self._chunks)
                if len(self._chunks) > 1:
                    self._chunks.clear()
                    self._chunks.append(joined)
                end = joined.find(b"\n")
                if end >= 0 and (limit < 0 or end < limit):
                    return self._take(end + 1)
                if limit >= 0 and len(joined) >= limit:
                    return self._take(limit)
                if self._ended or len(joined) > self.limit:
                    return self._take(-1)
                self._cond.wait()

    def readlines(self, hint: int = -1) -> List[bytes]:
        lines = []
        total = 0
        for line in self:
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line

    def _take(self, size: int) -> bytes:
        """Remove and return up to ``size`` bytes (all if negative); the
        condition's lock is held. Raises the failure once nothing is left."""
        chunks = self._chunks
        if not chunks and self._error is not None:
            raise self._error
        if size < 0 or size >= self.buffered:
            data = b"".join(chunks)
            chunks.clear()
        else:
            pieces = []
            need = size
            while need:
                chunk = chunks.popleft()
                if len(chunk) > need:
                    chunks.appendleft(chunk[need:])
                    chunk = chunk[:need]
                pieces.append(chunk)
                need -= len(chunk)
            data = b"".join(pieces)
        self.buffered -= len(data)
        if self._paused and self.buffered <= self.limit // 2:
            # Hysteresis: the loop reads again only once half is free.
            self._paused = False
            if self.on_drained is not None:
                self.on_drained()
        return data


#: ``wsgi.input`` of every request without a body: always at its end, so
#: nothing ever changes in it and threads may share it.
EMPTY_INPUT = InputStream(0)
EMPTY_INPUT.finish()


class ErrorStream:
    """``wsgi.errors``: what the application writes goes to ``logger``,
    a record per line, at ERROR level."""

    __slots__ = ("_partial", "logger", "prefix")

    def __init__(self, logger: logging.Logger, prefix: str = "") -> None:
        self.logger = logger
        self.prefix = prefix
        self._partial = ""

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self.logger.error("%s%s", self.prefix, line)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._partial:
            partial, self._partial = self._partial, ""
            self.logger.error("%s%s", self.prefix, partial)


class FileWrapper:
    """``wsgi.file_wrapper``: an iterable over ``filelike`` in blocks of
    ``block_size``. When the application returns one around a regular file,
    the server sends the file itself with ``os.sendfile`` instead of
    iterating it."""

    def __init__(self, filelike: Any, block_size: int = 64 * 1024) -> None:
        self.filelike = filelike
        self.block_size = block_size
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        while True:
            block = read(self.block_size)
            if not block:
                return
            yield block


#: Put last on a :class:`ResponseChannel`: the response is complete.
END = object()


def run_continuation(continuation: Callable[[], None]) -> None:
    """What a worker thread runs for a parked response (see :meth:`ResponseChannel.offer`)."""
    continuation()


class ResponseChannel:
    """The response's pieces from the worker thread to the loop, bounded.

    Items are whatever the two sides agree on (the head, bytes, a file,
    :data:`END`); ``put`` counts ``size`` bytes for each.

    Past ``limit`` bytes not yet taken, :meth:`put_all` makes its thread
    wait (the ``write()`` callable's case), while :meth:`offer` parks the
    rest of the work instead: the worker's thread goes back to the pool,
    and the loop hands the parked continuation to ``resume`` once it has
    taken what is here (or the connection has closed). A response that
    waits on a slow client then holds no thread."""

    __slots__ = ("_closed", "_items", "_lock", "_parked", "_size", "_space", "_waiter", "limit", "resume")

    def __init__(self, limit: int, resume: Callable[[Callable[[], None]], Any]) -> None:
        self._lock = threading.Lock()
        # Made by the worker the first time it must wait: most responses never do.
        self._space: Optional[threading.Condition] = None
        self._items: List[Any] = []
        self._size = 0
        self._waiter: Optional[Future[None]] = None
        self._closed = False
        self._parked: Optional[Callable[[], None]] = None
        self.limit = limit
        # Runs a parked continuation (the handler's dispatcher: submit).
        self.resume = resume

    def put(self, item: Any, size: int = 0) -> None:
        """Hand ``item`` to the loop, waiting while the loop is more than
        ``limit`` bytes behind. Raises :class:`ResponseAbortedError` once the
        loop side has closed."""
        self.put_all([item], size)

    def put_all(self, items: List[Any], size: int) -> None:
        """Hand several items over at once (one wake-up of the loop, and it
        sees them together: a whole small response)."""
        with self._lock:
            while self._size > self.limit and not self._closed:
                if self._space is None:
                    self._space = threading.Condition(self._lock)
                self._space.wait()
            if self._closed:
                raise ResponseAbortedError("the connection closed")
            self._items.extend(items)
            self._size += size
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.set_result(None)  # wakes the loop (its output waits on it)

    def offer(self, items: List[Any], size: int, continuation: Callable[[], None]) -> bool:
        """Hand items over without waiting. Returns False if that took the
        channel past ``limit``: ``continuation`` is then parked, to be
        resumed by the loop, and the caller returns. Raises
        :class:`ResponseAbortedError` once the loop side has closed."""
        with self._lock:
            if self._closed:
                raise ResponseAbortedError("the connection closed")
            self._items.extend(items)
            size = self._size = self._size + size
            parked = size > self.limit
            if parked:
                self._parked = continuation
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.set_result(None)
        return not parked

    @property
    def closed(self) -> bool:
        """Whether the loop side has closed (the worker should stop)."""
        return self._closed

    def take(self) -> Union[List[Any], "Future[None]"]:
        """On the loop: every item put so far, or, when there is none, a
        Future that the next put completes. Resumes a parked continuation."""
        with self._lock:
            items = self._items
            if not items:
                waiter = self._waiter = Future()
                return waiter
            self._items = []
            if self._space is not None:
                self._space.notify()
            self._size = 0
            parked, self._parked = self._parked, None
        if parked is not None:
            self._resume(parked)
        return items

    def close(self) -> List[Any]:
        """The loop side is gone: the worker's next put raises. Returns the
        items never taken (files among them still need closing)."""
        with self._lock:
            self._closed = True
            items, self._items = self._items, []
            if self._space is not None:
                self._space.notify_all()
            parked, self._parked = self._parked, None
        if parked is not None:
            self._resume(parked)  # it sees the channel closed and closes the result
        return items

    def _resume(self, continuation: Callable[[], None]) -> None:
        try:
            self.resume(continuation)
        except RuntimeError:
            # The pool is shut down: the response cannot go on. Run it here
            # to close the application's result (it sees the channel closed).
            self._closed = True
            continuation()


class TaskDispatcher:
    """Runs calls in an executor's threads, at most ``limit`` at once, and
    wakes a thread only when the running ones cannot take the call.

    Each thread the executor lends runs a loop that takes calls from one
    shared queue until it is empty. Under load a few threads go from call
    to call without sleeping, instead of one executor hand-off (a futex
    wake and a context switch on a busy core) per call. ``submit`` raises
    what the executor's does once it is shut down.

    Without ``call_later`` a call that finds every running thread busy
    wakes another one (up to ``limit``). With it (the loop's
    ``call_later``; ``submit`` then runs on the loop's thread), the call
    waits for a busy thread to finish its own, and a check ``stall``
    seconds later wakes one more thread only if no call was taken in
    between: the running threads are blocked (a generator that sleeps, a
    slow database), not merely busy. Waking threads that would only take
    turns at the GIL costs a hand-off per call and gains nothing; a
    blocked call still gets another thread for the calls behind it."""

    __slots__ = (
        "_busy",
        "_call_later",
        "_checking",
        "_lock",
        "_running",
        "_taken",
        "_tasks",
        "executor",
        "limit",
        "stall",
    )

    def __init__(
        self, executor: Any, limit: int, call_later: Optional[Callable[..., Any]] = None, stall: float = 0.002
    ) -> None:
        self.executor = executor
        self.limit = limit
        self.stall = stall
        self._call_later = call_later
        self._lock = threading.Lock()
        self._tasks: Deque[Any] = collections.deque()
        self._running = 0  # threads in _drain
        self._busy = 0  # of those, running a call
        self._taken = 0  # calls taken so far: progress, for the stall check
        self._checking = False  # a stall check is scheduled

    def submit(self, func: Callable[[Any], None], argument: Any) -> None:
        call_later = self._call_later
        check = False
        with self._lock:
            self._tasks.append((func, argument))
            if self._running - self._busy >= len(self._tasks) or self._running >= self.limit:
                return  # a free thread will take it, or one will be free soon
            if self._running and call_later is not None:
                # Busy threads take it next, unless they are blocked: check.
                if self._checking:
                    return
                self._checking = check = True
            else:
                self._running += 1
            taken = self._taken
        if call_later is not None and check:
            call_later(self.stall, self._check_stall, taken)
            return
        try:
            self.executor.submit(self._drain)
        except BaseException:
            with self._lock:
                self._running -= 1
                self._tasks.pop()
            raise

    def _check_stall(self, taken_before: int) -> None:
        """On the loop: one more thread if calls wait and none was taken
        since ``taken_before``; looks again while calls wait."""
        with self._lock:
            self._checking = False
            if not self._tasks:
                return
            stalled = self._taken == taken_before and self._running < self.limit
            if stalled:
                self._running += 1
            self._checking = True
            taken = self._taken
        assert self._call_later is not None
        self._call_later(self.stall, self._check_stall, taken)
        if stalled:
            try:
                self.executor.submit(self._drain)
            except RuntimeError:  # the pool is shut down: the loop is stopping
                with self._lock:
                    self._running -= 1

    def _drain(self) -> None:
        lock = self._lock
        tasks = self._tasks
        while True:
            with lock:
                if not tasks:
                    self._running -= 1
                    return
                func, argument = tasks.popleft()
                self._busy += 1
                self._taken += 1
            try:
                func(argument)
            finally:
                with lock:
                    self._busy -= 1
