"""Waiting for a condition on a running loop without sleeping in the test:
the loop checks the condition on its own thread with a short timer and sets
an event; the test waits on that event."""

import threading

__all__ = ["wait_on_loop"]


def wait_on_loop(running, predicate, timeout=10.0, interval=0.01):
    """Return True once ``predicate()`` (run on ``running``'s loop thread)
    is true, False after ``timeout`` seconds."""
    loop = running.loop
    done = threading.Event()
    deadline = [None]

    def check():
        if deadline[0] is None:
            deadline[0] = loop.time() + timeout
        if predicate():
            done.set()
        elif loop.time() < deadline[0]:
            loop.call_later(interval, check)

    loop.call_soon_threadsafe(check)
    return done.wait(timeout + 5)
