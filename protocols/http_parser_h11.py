"""The request head parsed by h11 (pure Python, the default without httptools).

Strategy: :class:`~evloop.protocols.http_parser.RequestParser` finds and
checks the head and frames the body; h11 only parses the head's grammar.
A fresh ``h11.Connection`` per head (2 µs) is fed exactly the head, so
h11's state machine never sees a body and never needs our responses.
"""

import ast
import re

import h11

from .http_parser import ParseError, RequestHead, RequestParser, _show

__all__ = ["H11Parser"]


class H11Parser(RequestParser):
    """Request heads parsed by h11."""

    name = "h11"

    __slots__ = ()

    def parse_head(self, head: bytes, has_body: bool) -> RequestHead:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=len(head) + 1)
        conn.receive_data(head)
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise ParseError(exc.error_status_hint, _plain(str(exc))) from None
        if not isinstance(event, h11.Request):  # pragma: no cover - a whole head is given
            raise ParseError(400, "incomplete request head")
        return RequestHead(
            event.method.decode("ascii"),
            event.target.decode("latin-1"),
            event.http_version.decode("ascii"),
            [(name.decode("latin-1"), value.decode("latin-1")) for name, value in event.headers],
        )


def _plain(message: str) -> str:
    """h11's message with the peer's bytes shown as text (h11 writes
    ``illegal request line: bytearray(b'GARBAGE')``)."""
    found = re.fullmatch(r"(.*?)bytearray\((b.*)\)(.*)", message, re.S)
    if found is None:
        return message
    try:
        data = ast.literal_eval(found.group(2))
    except (ValueError, SyntaxError):
        return message
    return f"{found.group(1)}{_show(data)}{found.group(3)}"
