"""What the HTTP and WSGI handlers share in their request cycle.

Both handlers parse with :mod:`evloop.protocols.http_parser` and go on
parsing outside the engine's I/O callbacks (a response finished, a body
reader caught up). There the engine does not sort a handler's exceptions,
so :func:`run_guarded` does what it would: a bad pipelined request still
gets its 400 and only that connection closes. :func:`closing_error_reply`
is the plain error response both send before they close.
"""

from typing import Any, Callable

from .http_message import http_date, reason_phrase

__all__ = ["closing_error_reply", "run_guarded"]


def run_guarded(handler: Any, step: Callable[[], None]) -> None:
    """Call ``step()`` for ``handler`` unless it is closed, and hand what it
    raises to ``handler.handle_error`` (the engine's way inside a callback:
    a RemoteProtocolError is logged, its reply sent, the connection closed)."""
    if handler.closed:
        return
    try:
        step()
    except Exception as exc:
        handler.handle_error(exc)


def closing_error_reply(status: int, server_name: str) -> bytes:
    """A whole ``status`` response that says the connection closes. The
    body names the status only: the peer's bytes are never echoed."""
    text = f"{status} {reason_phrase(status)}\n"
    return (
        f"HTTP/1.1 {status} {reason_phrase(status)}\r\nDate: {http_date()}\r\nServer: {server_name}\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(text)}\r\n"
        f"Connection: close\r\n\r\n{text}"
    ).encode("latin-1")
