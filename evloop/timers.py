"""Callbacks to run soon or at a time: handles and the timer heap.

Strategy: a binary heap of :class:`TimerHandle` ordered by (when, sequence).
Cancelling only marks a handle; the heap drops cancelled heads lazily and is
rebuilt when cancelled entries outnumber live ones (CPython's asyncio does the
same), so cancel is O(1) and the heap never fills with dead timers.
"""

import heapq
from typing import Any, Callable, List, Optional, Tuple

__all__ = ["Handle", "TimerHandle", "TimerQueue"]


class Handle:
    """A callback queued on the loop. ``cancel()`` stops it from running."""

    __slots__ = ("callback", "args", "cancelled")

    def __init__(self, callback: Callable[..., Any], args: Tuple[Any, ...]) -> None:
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __repr__(self) -> str:
        state = " cancelled" if self.cancelled else ""
        return f"<{type(self).__name__} {self.callback!r}{state}>"


class TimerHandle(Handle):
    """A callback due at loop time ``when``."""

    __slots__ = ("when", "_seq", "_queue")

    def __init__(
        self, when: float, seq: int, callback: Callable[..., Any], args: Tuple[Any, ...], queue: "TimerQueue"
    ) -> None:
        super().__init__(callback, args)
        self.when = when
        self._seq = seq
        self._queue: Optional[TimerQueue] = queue

    def __lt__(self, other: "TimerHandle") -> bool:
        return (self.when, self._seq) < (other.when, other._seq)

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            if self._queue is not None:
                self._queue._note_cancelled()


class TimerQueue:
    """The loop's pending timers, earliest first."""

    # Below this many entries a rebuild is not worth its cost.
    _MIN_REBUILD = 100

    def __init__(self) -> None:
        self._heap: List[TimerHandle] = []
        self._seq = 0
        self._cancelled = 0

    def __len__(self) -> int:
        return len(self._heap) - self._cancelled

    def push(self, when: float, callback: Callable[..., Any], args: Tuple[Any, ...]) -> TimerHandle:
        self._seq += 1
        handle = TimerHandle(when, self._seq, callback, args, self)
        heapq.heappush(self._heap, handle)
        return handle

    def next_deadline(self) -> Optional[float]:
        """The time of the earliest live timer, or None when there is none."""
        heap = self._heap
        while heap and heap[0].cancelled:
            heapq.heappop(heap)._queue = None
            self._cancelled -= 1
        return heap[0].when if heap else None

    def pop_due(self, now: float) -> List[TimerHandle]:
        """Remove and return, in order, the live timers due at or before ``now``."""
        heap = self._heap
        due = []
        while heap and heap[0].when <= now:
            handle = heapq.heappop(heap)
            handle._queue = None
            if handle.cancelled:
                self._cancelled -= 1
            else:
                due.append(handle)
        return due

    def _note_cancelled(self) -> None:
        self._cancelled += 1
        if self._cancelled > self._MIN_REBUILD and self._cancelled * 2 > len(self._heap):
            live = []
            for handle in self._heap:
                if handle.cancelled:
                    handle._queue = None
                else:
                    live.append(handle)
            heapq.heapify(live)
            self._heap = live
            self._cancelled = 0
