"""The request head parsed by httptools (llhttp, in C): the fast path.

Strategy: :class:`~evloop.protocols.http_parser.RequestParser` finds and
checks the head and frames the body; llhttp only parses the head's grammar.
One llhttp parser is reused while heads come without a body (a GET leaves
it between messages); a head that declares a body, an upgrade or an error
leaves it mid-message, so the next head gets a fresh one (1 µs).

Methods, versions and line endings are checked before llhttp sees the
head, so every error it raises here is a 400.
"""

from typing import Optional

import httptools

from .http_parser import ParseError, RequestHead, RequestParser, _show

__all__ = ["HttptoolsParser"]


class _Silent:
    """llhttp's protocol object with no callbacks: it only validates, so no
    Python code runs while it parses."""

    __slots__ = ()


_SILENT = _Silent()


class HttptoolsParser(RequestParser):
    """Request heads parsed by httptools."""

    name = "httptools"

    __slots__ = ("_llhttp",)

    def __init__(self, max_head_size: int = 16 * 1024) -> None:
        super().__init__(max_head_size)
        self._llhttp: Optional[httptools.HttpRequestParser] = None

    def parse_head(self, head: bytes, has_body: bool) -> RequestHead:
        llhttp = self._llhttp
        if llhttp is None:
            llhttp = self._llhttp = httptools.HttpRequestParser(_SILENT)
        try:
            llhttp.feed_data(head)
        except httptools.HttpParserUpgrade:
            has_body = True  # llhttp stays paused: not reused
        except httptools.HttpParserError as exc:
            self._llhttp = None
            raise _refusal(head, exc) from None
        if has_body:
            # llhttp waits for a body it will not be given: a fresh one next.
            self._llhttp = None
        # llhttp accepted the grammar; the fields are cut out here, with no
        # callback per header. The request line has exactly two spaces and
        # every line ends in CRLF (checked before), and no obs-fold.
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
        headers = []
        for line in lines[1:-2]:
            name, _, value = line.partition(":")
            # RFC 9110 section 5.5: whitespace around a value is not part of it.
            headers.append((name.lower(), value.strip(" \t")))
        return RequestHead(method, target, version[5:], headers)


def _refusal(head: bytes, exc: Exception) -> ParseError:
    return ParseError(400, f"{exc} in request head {_show(head)}")
