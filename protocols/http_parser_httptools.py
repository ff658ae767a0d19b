"""The request head parsed by httptools (llhttp, in C): the fast path.

Strategy: :class:`~evloop.protocols.http_parser.RequestParser` finds and
checks the head and frames the body; llhttp only parses the head's grammar.
One llhttp parser is reused while heads come without a body (a GET leaves
it between messages); a head that declares a body, an upgrade or an error
leaves it mid-message, so the next head gets a fresh one (1 µs).

Methods, versions and line endings are checked before llhttp sees the
head, so every error it raises here is a 400.
"""

from typing import List, Optional, Tuple

import httptools

from .http_parser import ParseError, RequestHead, RequestParser, _show

__all__ = ["HttptoolsParser"]


class HttptoolsParser(RequestParser):
    """Request heads parsed by httptools."""

    name = "httptools"

    __slots__ = ("_fields", "_llhttp", "_url")

    def __init__(self, max_head_size: int = 16 * 1024) -> None:
        super().__init__(max_head_size)
        self._llhttp: Optional[httptools.HttpRequestParser] = None
        self._fields: List[Tuple[bytes, bytes]] = []
        self._url = b""

    # llhttp's callbacks
    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields.append((name, value))

    def parse_head(self, head: bytes, has_body: bool) -> RequestHead:
        llhttp = self._llhttp
        if llhttp is None:
            llhttp = self._llhttp = httptools.HttpRequestParser(self)
        fields = self._fields = []
        self._url = b""
        try:
            llhttp.feed_data(head)
        except httptools.HttpParserUpgrade:
            has_body = True  # llhttp stays paused: not reused
        except httptools.HttpParserError as exc:
            self._llhttp = None
            raise _refusal(head, exc) from None
        method = llhttp.get_method().decode("ascii")
        request = RequestHead(
            method,
            self._url.decode("latin-1"),
            llhttp.get_http_version(),
            # llhttp keeps whitespace at the end of a value; h11 (RFC 9110 5.5) strips it.
            [
                (name.decode("latin-1").lower(), value.decode("latin-1").rstrip(" \t"))
                for name, value in fields
            ],
        )
        if has_body:
            # llhttp waits for a body it will not be given: a fresh one next.
            self._llhttp = None
        return request


def _refusal(head: bytes, exc: Exception) -> ParseError:
    return ParseError(400, f"{exc} in request head {_show(head)}")
