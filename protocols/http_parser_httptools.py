"""The request head parsed by httptools (llhttp, in C): the fast path.

Strategy: :class:`~evloop.protocols.http_parser.RequestParser` finds and
checks the head and frames the body; llhttp only parses the head's grammar.
One llhttp parser is reused while heads come without a body (a GET leaves
it between messages); a head that declares a body, an upgrade or an error
leaves it mid-message, so the next head gets a fresh one (1 µs).

Where llhttp is stricter than h11 (methods it does not know) the error is
mapped to the status h11's parser gives: see :func:`_refusal`.
"""

import re
from typing import List, Optional, Tuple

import httptools

from .http_parser import KNOWN_METHODS, ParseError, RequestHead, RequestParser, _show

__all__ = ["HttptoolsParser"]

_TOKEN_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ [^\x00-\x20\x7f]+ HTTP/1\.[01]")


class HttptoolsParser(RequestParser):
    """Request heads parsed by httptools."""

    name = "httptools"

    __slots__ = ("_complete", "_fields", "_llhttp", "_url")

    def __init__(self, max_head_size: int = 16 * 1024) -> None:
        super().__init__(max_head_size)
        self._llhttp: Optional[httptools.HttpRequestParser] = None
        self._fields: List[Tuple[bytes, bytes]] = []
        self._url = b""
        self._complete = False

    # llhttp's callbacks
    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields.append((name, value))

    def on_message_complete(self) -> None:
        self._complete = True

    def parse_head(self, head: bytes) -> RequestHead:
        llhttp = self._llhttp
        if llhttp is None:
            llhttp = self._llhttp = httptools.HttpRequestParser(self)
        fields = self._fields = []
        self._url = b""
        self._complete = False
        try:
            llhttp.feed_data(head)
        except httptools.HttpParserUpgrade:
            self._complete = False
        except httptools.HttpParserError as exc:
            self._llhttp = None
            raise _refusal(head, exc) from None
        method = llhttp.get_method().decode("ascii")
        request = RequestHead(
            method,
            self._url.decode("latin-1"),
            llhttp.get_http_version(),
            [(name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in fields],
        )
        if not self._complete:
            self._llhttp = None
        if method not in KNOWN_METHODS:  # pragma: no cover - llhttp refuses them
            raise ParseError(501, f"method {method!r} not implemented")
        return request


def _refusal(head: bytes, exc: Exception) -> ParseError:
    line = head[: head.find(b"\r\n")]
    if isinstance(exc, httptools.HttpParserInvalidMethodError) and _TOKEN_LINE.fullmatch(line):
        # A well-formed request line with a method llhttp does not know:
        # RFC 9110 section 9.1, as the h11 parser answers.
        method = line.split(b" ", 1)[0].decode("latin-1")
        return ParseError(501, f"method {method!r} not implemented")
    return ParseError(400, f"{exc} in request head {_show(head)}")
