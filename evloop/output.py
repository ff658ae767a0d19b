"""A connection's pending output, streamed as the socket accepts it.

A response is bytes, str (sent as UTF-8), a file object, an iterable or
generator of responses, a ``concurrent.futures.Future`` whose result is a
response, or None (nothing). Lists and tuples are taken apart at once; files,
iterators and futures are only pulled from when everything before them has
been sent, so a response is never read whole into memory.

Strategy (CPython's ``_SelectorSocketTransport.write``, Tornado's iostream):
consecutive byte pieces are joined into one ``send``; what the socket does
not take stays queued as a memoryview, not a copy. A regular file goes out
with ``os.sendfile`` on a plain socket and falls back to ``read(blocksize)``
where the kernel or the socket (TLS) cannot. Files are closed once sent or
when the connection closes.
"""

import collections
import errno
import io
import os
import socket
from concurrent.futures import Future
from typing import Any, Deque, Iterable, List

from .tls import WOULD_BLOCK

__all__ = ["EMPTY", "WAITING", "WANT_WRITE", "OutputQueue"]

# What send_to() reports.
EMPTY = 0  # everything was sent
WANT_WRITE = 1  # the socket is full; call again when it is writable
WAITING = 2  # the next piece is a future that has not finished

_BYTES_TYPES = (bytes, bytearray, memoryview)
# Joining many small pieces is cheaper than many sends, up to about this much.
_JOIN_LIMIT = 256 * 1024
_SENDFILE_CHUNK = 1 << 30
# sendfile errors that mean "this kind of file or socket can't": read instead.
_SENDFILE_UNSUPPORTED = {
    errno.EINVAL,
    errno.ENOSYS,
    errno.ENOTSOCK,
    errno.EOPNOTSUPP,
    errno.EOVERFLOW,
    errno.ESPIPE,
    errno.EBADF,
}


class _FileSource:
    """A file being streamed; ``offset`` is only used for sendfile."""

    __slots__ = ("file", "offset", "use_sendfile")

    def __init__(self, file: Any) -> None:
        self.file = file
        self.offset = -1
        self.use_sendfile = not isinstance(file, io.TextIOBase) and hasattr(os, "sendfile")

    def close(self) -> None:
        try:
            self.file.close()
        except Exception:
            pass


class _Pending:
    """A future in the output: the pieces after it wait for its result."""

    __slots__ = ("future", "hooked")

    def __init__(self, future: "Future[Any]") -> None:
        self.future = future
        self.hooked = False


def _succeeded(item: Any) -> bool:
    """Whether ``item`` is a future in the output whose result is ready; a
    failed one is left for send_to() to raise in its turn."""
    if type(item) is not _Pending:
        return False
    future = item.future
    return bool(future.done() and not future.cancelled() and future.exception() is None)


class OutputQueue:
    """Pieces of output waiting to be sent on one socket, in order.

    ``on_future_done`` is called (from any thread) when a future that is
    holding up the queue finishes, so the owner can call :meth:`send_to`
    again. ``buffered`` counts the bytes held in memory (not files or
    generators not yet read).
    """

    __slots__ = ("_items", "blocksize", "buffered", "_on_future_done", "_sent", "write_since")

    def __init__(self, blocksize: int, on_future_done: Any) -> None:
        self._items: Deque[Any] = collections.deque()
        self.blocksize = blocksize
        self.buffered = 0
        self._on_future_done = on_future_done
        self._sent = 0
        # Loop time output began to wait for the client (evloop.limits).
        self.write_since = 0.0

    def __bool__(self) -> bool:
        return bool(self._items)

    def add(self, response: Any) -> None:
        """Queue ``response`` after everything already queued. Raises
        TypeError for something that is not a response."""
        self._items.extend(self._pieces(response))

    def _pieces(self, response: Any) -> List[Any]:
        pieces: List[Any] = []
        self._collect(response, pieces)
        return pieces

    def _collect(self, response: Any, pieces: List[Any]) -> None:
        kind = type(response)
        if kind is bytes or kind is bytearray or kind is memoryview:
            if len(response):
                pieces.append(response)
                self.buffered += len(response)
        elif kind is str:
            if response:
                data = response.encode("utf-8")
                pieces.append(data)
                self.buffered += len(data)
        elif response is None:
            pass
        elif kind is list or kind is tuple:
            for item in response:
                self._collect(item, pieces)
        elif hasattr(response, "read"):
            pieces.append(_FileSource(response))
        elif isinstance(response, Future):
            pieces.append(_Pending(response))
        elif isinstance(response, Iterable):
            pieces.append(iter(response))
        else:
            raise TypeError(
                f"a response must be bytes, str, a file, an iterable of those, a Future "
                f"or None, not {kind.__name__}"
            )

    def send_to(self, sock: socket.socket) -> int:
        """Send as much as ``sock`` takes without blocking. Returns EMPTY,
        WANT_WRITE or WAITING. Raises OSError for a broken connection and
        whatever a generator or a future raised."""
        items = self._items
        while items:
            head = items[0]
            kind = type(head)
            if kind is bytes or kind is memoryview or kind is bytearray:
                if (
                    len(items) > 1
                    and len(head) < _JOIN_LIMIT
                    and (type(items[1]) in _BYTES_TYPES or _succeeded(items[1]))
                ):
                    head = self._join_head()
                try:
                    sent = sock.send(head)
                except WOULD_BLOCK:
                    # On TLS the retry must start with the same bytes, and
                    # it does: the unsent data stays at the head.
                    return WANT_WRITE
                self.buffered -= sent
                self._sent += sent
                if sent == len(head):
                    items.popleft()
                    continue
                items[0] = memoryview(head)[sent:]
                return WANT_WRITE
            if kind is _FileSource:
                if not self._send_file(head, sock):
                    return WANT_WRITE
            elif kind is _Pending:
                future = head.future
                if not future.done():
                    if not head.hooked:
                        head.hooked = True
                        future.add_done_callback(self._on_future_done)
                    return WAITING
                items.popleft()
                items.extendleft(reversed(self._pieces(future.result())))
            else:
                try:
                    chunk = next(head)
                except StopIteration:
                    items.popleft()
                    continue
                items.extendleft(reversed(self._pieces(chunk)))
        return EMPTY

    def take_sent_count(self) -> int:
        """Bytes sent since the last call (for the loop's statistics)."""
        sent, self._sent = self._sent, 0
        return sent

    def _join_head(self) -> bytes:
        items = self._items
        chunks = []
        size = 0
        while items and size < _JOIN_LIMIT:
            piece = items[0]
            kind = type(piece)
            if kind is _Pending and _succeeded(piece):
                # Replies that finished since the last send (offloaded calls
                # finish one by one) join the bytes before them: one send for
                # all, not one each, which under thread contention cost ~65 us.
                items.popleft()
                items.extendleft(reversed(self._pieces(piece.future.result())))
                continue
            if kind not in _BYTES_TYPES:
                break
            items.popleft()
            chunks.append(piece)
            size += len(piece)
        data = b"".join(chunks)
        items.appendleft(data)
        return data

    def _send_file(self, source: _FileSource, sock: socket.socket) -> bool:
        """Move the file forward; False when the socket is full. A chunk read
        by the fallback path is put at the head of the queue."""
        if source.use_sendfile and type(sock) is socket.socket:
            try:
                fd = source.file.fileno()
                if source.offset < 0:
                    source.offset = source.file.tell()
                sent = os.sendfile(sock.fileno(), fd, source.offset, _SENDFILE_CHUNK)
            except (BlockingIOError, InterruptedError):
                return False
            except (OSError, ValueError, AttributeError) as exc:
                unsupported = (
                    not isinstance(exc, OSError)
                    or isinstance(exc, io.UnsupportedOperation)
                    or exc.errno in _SENDFILE_UNSUPPORTED
                )
                if not unsupported:
                    raise
                source.use_sendfile = False
                if source.offset >= 0:
                    source.file.seek(source.offset)
                return True
            if sent:
                source.offset += sent
                self._sent += sent
                return True
            self._items.popleft()
            source.close()
            return True
        chunk = source.file.read(self.blocksize)
        if not chunk:
            self._items.popleft()
            source.close()
            return True
        if isinstance(chunk, str):
            chunk = chunk.encode("utf-8")
        self._items.appendleft(chunk)
        self.buffered += len(chunk)
        return True

    def close(self) -> None:
        """Drop what is left, closing files and generators."""
        for item in self._items:
            if type(item) is _FileSource:
                item.close()
            elif hasattr(item, "close") and not isinstance(item, _BYTES_TYPES):
                try:
                    item.close()
                except Exception:
                    pass
        self._items.clear()
        self.buffered = 0
