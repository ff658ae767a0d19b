"""Reading HTTP/1.1 requests: the rules both parsers share, and the choice
between them.

Theory of operation. A parser is fed the bytes the loop reads and hands
back, through :meth:`RequestParser.next_event`, a :class:`RequestHead`, the
body's bytes, :data:`END` at the end of each request, :data:`NEED_DATA`, or
:data:`CLOSED` when the client ended the stream between requests. Whatever
the peer got wrong raises :class:`ParseError` with the status to answer.

Only the request head's grammar is parsed by the library behind a
subclass: h11 (:mod:`.http_parser_h11`, pure Python) or httptools
(:mod:`.http_parser_httptools`, llhttp in C). Everything where a front-end
proxy and this server must agree on where one request ends and the next
begins is done here, once, so the two parsers cannot differ on it:

- the head is found here (``CRLF CRLF``) and measured exactly against
  ``max_head_size`` (431), however the bytes were split;
- bare CR or LF, obs-fold and a version other than 1.0/1.1 are refused
  before either library sees the head;
- ``Content-Length`` and ``Transfer-Encoding`` are judged here on the raw
  header lines (RFC 9112 section 6), and the body, by length or chunked,
  is framed here.

The reader's states, and what moves it on::

    HEAD        -- a head with no body ----------------> HEAD (or IGNORE if last)
    HEAD        -- a head with Content-Length n > 0 ---> LENGTH
    HEAD        -- a head with chunked ----------------> CHUNK_SIZE
    LENGTH      -- n bytes given out -------------------> HEAD (END; IGNORE if last)
    CHUNK_SIZE  -- size > 0 ---> CHUNK_DATA -- data --> CHUNK_END -- CRLF --> CHUNK_SIZE
    CHUNK_SIZE  -- size 0 -----> TRAILERS -- blank line -> HEAD (END; IGNORE if last)
    HEAD        -- end of stream between requests -----> EOF
    any         -- stop() (refused, closing, upgraded) -> IGNORE

"last" is a request that ends the connection (``Connection: close``,
HTTP/1.0): nothing after it is read.

The smuggling rules (see docs/http.md, "Request smuggling"): both framing
headers together, ``Transfer-Encoding`` on an HTTP/1.0 request, a repeated
``Transfer-Encoding``, ``chunked`` not last or in another case, a
``Content-Length`` that is not plain digits, and several
``Content-Length`` values, even identical ones, are all refused and the
connection closed.
"""

import os
import re
from typing import Dict, List, NoReturn, Optional, Tuple, Type, Union

__all__ = [
    "CLOSED",
    "END",
    "KNOWN_METHODS",
    "NEED_DATA",
    "ParseError",
    "RequestHead",
    "RequestParser",
    "available_parsers",
    "parser_class",
]


class ParseError(Exception):
    """The peer broke HTTP: answer ``status`` and close. ``detail`` names
    the rule and shows the offending bytes, for the log only."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


END = _Sentinel("END")
NEED_DATA = _Sentinel("NEED_DATA")
CLOSED = _Sentinel("CLOSED")

Event = Union["RequestHead", bytes, _Sentinel]

# The methods llhttp knows; h11 accepts any token, so other methods are
# answered 501 here (RFC 9110 section 9.1) and both parsers behave alike.
KNOWN_METHODS = frozenset(
    "DELETE GET HEAD POST PUT CONNECT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND "
    "PROPPATCH SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE "
    "M-SEARCH NOTIFY SUBSCRIBE UNSUBSCRIBE PATCH PURGE MKCALENDAR LINK UNLINK SOURCE QUERY".split()
)

_KNOWN_METHOD_BYTES = frozenset(method.encode() for method in KNOWN_METHODS)
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A request line as it must be (RFC 9112 section 3), and what may not be
# anywhere in a head: a bare CR or LF, obs-fold, DEL. Both are one C-level
# pass; only a refused head goes through the checks one by one.
_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) [^ ]+ HTTP/1\.[01]\r\n")
_FRAMING_FIELD = re.compile(rb"\n[ \t]*(?:content-length|transfer-encoding)", re.IGNORECASE)
_BAD_HEAD_BYTES = re.compile(rb"\r(?!\n)|(?<!\r)\n|\n[ \t]|\x7f")


class RequestHead:
    """A parsed request line and header section. ``headers`` are
    ``[(name, value)]`` with lower-case names, latin-1 decoded. When
    ``body_length`` is 0 the request is whole: no END event follows."""

    __slots__ = (
        "body_length",
        "expects_continue",
        "headers",
        "http_version",
        "keep_alive",
        "method",
        "target",
        "upgrade",
    )

    def __init__(self, method: str, target: str, http_version: str, headers: List[Tuple[str, str]]) -> None:
        self.method = method
        self.target = target
        self.http_version = http_version
        self.headers = headers
        self.keep_alive = True
        self.expects_continue = False
        self.upgrade = False
        # 0: no body (the request is complete with its head); else its
        # Content-Length, or -1 for chunked.
        self.body_length = 0


# States of the body reader.
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _IGNORE, _EOF = range(8)

_HEAD_END = re.compile(rb"\n\r?\n")
_VERSION = re.compile(rb"\S+ \S+ HTTP/\d\.\d")
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[^\r\n]*)?\r\n")
_DIGITS = re.compile(rb"[0-9]{1,18}")
_LEADING_CRLF = b"\r\n"
_BLANK_LINES = re.compile(rb"(?:\r\n)+")


def _show(data: bytes, limit: int = 60) -> str:
    """Bytes from the peer for a log line: text, escaped, cut short."""
    text = data[:limit].decode("latin-1")
    return repr(text) + ("..." if len(data) > limit else "")


class RequestParser:
    """Reads requests from one connection; subclasses parse the head's
    grammar in :meth:`parse_head`. ``max_head_size`` bounds the request
    line and headers, and a chunk-size line or trailer section too."""

    name = "base"

    __slots__ = (
        "_blank",
        "_buffer",
        "_chunk_left",
        "_closed",
        "_last",
        "_left",
        "_scan",
        "_state",
        "max_head_size",
    )

    def __init__(self, max_head_size: int = 16 * 1024) -> None:
        self.max_head_size = max_head_size
        self._buffer = bytearray()
        self._state = _HEAD
        self._scan = 0  # where the search for the head's end resumes
        self._left = 0  # body bytes still owed (Content-Length)
        self._chunk_left = 0
        self._closed = False
        self._last = False
        self._blank = 0  # bytes of empty lines dropped before this head

    # -- what subclasses provide --------------------------------------------

    def parse_head(self, head: bytes, has_body: bool) -> RequestHead:
        """The request in ``head`` (request line to the blank line, CRLF
        endings, method and version checked; ``has_body`` says whether a
        body follows); raises ParseError."""
        raise NotImplementedError

    # -- input ----------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Take bytes read from the client."""
        if self._state != _IGNORE:
            self._buffer += data

    def feed_eof(self) -> None:
        """The client closed its side."""
        self._closed = True

    @property
    def buffered(self) -> int:
        """Bytes received and not yet handed out (a partial head, say)."""
        return len(self._buffer)

    def take_buffered(self) -> bytes:
        """Everything buffered, for the protocol the connection switches to."""
        data = bytes(self._buffer)
        self._buffer.clear()
        self._state = _IGNORE
        return data

    def stop(self) -> None:
        """Ignore everything from now on (the connection is closing)."""
        self._state = _IGNORE
        self._buffer.clear()

    # -- events ----------------------------------------------------------------

    def next_event(self) -> Event:
        """The next event, :data:`NEED_DATA` when more bytes are needed;
        raises ParseError."""
        state = self._state
        if state == _HEAD:
            return self._next_head()
        if state == _LENGTH:
            return self._next_length_data()
        if state == _IGNORE:
            return NEED_DATA
        if state == _EOF:
            return CLOSED
        return self._next_chunked()

    def _next_head(self) -> Event:
        buffer = self._buffer
        if not buffer and not self._closed:
            return NEED_DATA
        if buffer.startswith(_LEADING_CRLF):
            # RFC 9112 section 2.2: ignore empty lines before a request line
            # (dropped in one go: a flood of them costs O(n), not O(n^2)).
            blank = _BLANK_LINES.match(buffer)
            assert blank is not None
            self._blank += blank.end()
            if self._blank > self.max_head_size:
                # Bounded like a head, so empty lines cannot hold a connection.
                raise ParseError(400, f"over {self.max_head_size} bytes of empty lines before a request line")
            del buffer[: blank.end()]
            self._scan = 0
        found = _HEAD_END.search(buffer, self._scan)
        if found is None:
            if len(buffer) > self.max_head_size:
                raise ParseError(431, f"request head over {self.max_head_size} bytes and not finished")
            if self._closed:
                if buffer:
                    raise ParseError(400, f"stream ended inside a request head: {_show(bytes(buffer))}")
                self._state = _EOF
                return CLOSED
            self._scan = max(0, len(buffer) - 3)
            return NEED_DATA
        end = found.end()
        if end > self.max_head_size:
            raise ParseError(431, f"request head of {end} bytes over {self.max_head_size}")
        head = bytes(buffer[:end])
        del buffer[:end]
        self._scan = 0
        self._blank = 0
        line = _check_raw_head(head)
        framing = _framing(head, line)
        request = self.parse_head(head, framing != 0)
        _connection_facts(request)
        request.body_length = framing
        if not request.keep_alive:
            # The connection closes after this request: nothing after it
            # is read (h11's MUST_CLOSE).
            self._last = True
        if framing == 0:
            # Whole with its head: no END event, the next head comes next.
            if self._last:
                self.stop()
        elif framing < 0:
            self._state = _CHUNK_SIZE
        else:
            self._state = _LENGTH
            self._left = framing
        return request

    def _message_done(self) -> Event:
        if self._last:
            self.stop()
        else:
            self._state = _HEAD
        return END

    def _next_length_data(self) -> Event:
        left = self._left
        if left == 0:
            return self._message_done()
        buffer = self._buffer
        if not buffer:
            if self._closed:
                raise ParseError(400, f"stream ended with {left} body bytes still to come")
            return NEED_DATA
        if len(buffer) <= left:
            data = bytes(buffer)
            buffer.clear()
        else:
            data = bytes(buffer[:left])
            del buffer[:left]
        self._left = left - len(data)
        return data

    def _next_chunked(self) -> Event:
        """RFC 9112 section 7.1: chunk-size [chunk-ext] CRLF, data, CRLF;
        a zero size, then trailer fields (read and dropped), then CRLF."""
        buffer = self._buffer
        state = self._state
        if state == _CHUNK_DATA:
            if not buffer:
                return self._more_or_eof("inside a chunk")
            take = min(self._chunk_left, len(buffer))
            data = bytes(buffer[:take])
            del buffer[:take]
            self._chunk_left -= take
            if self._chunk_left == 0:
                self._state = _CHUNK_END
            return data
        if state == _CHUNK_END:
            if len(buffer) < 2:
                return self._more_or_eof("after a chunk")
            if buffer[:2] != b"\r\n":
                raise ParseError(400, f"chunk data not followed by CRLF: {_show(bytes(buffer[:2]))}")
            del buffer[:2]
            self._state = _CHUNK_SIZE
            return self._next_chunked()
        if state == _CHUNK_SIZE:
            return self._next_chunk_size()
        return self._next_trailers()

    def _next_chunk_size(self) -> Event:
        buffer = self._buffer
        line_end = buffer.find(b"\n")
        if line_end < 0:
            if len(buffer) > self.max_head_size:
                raise ParseError(431, f"chunk-size line over {self.max_head_size} bytes")
            return self._more_or_eof("in a chunk-size line")
        if line_end + 1 > self.max_head_size:
            raise ParseError(431, f"chunk-size line over {self.max_head_size} bytes")
        match = _CHUNK_LINE.fullmatch(buffer, 0, line_end + 1)
        if match is None:
            raise ParseError(400, f"malformed chunk-size line {_show(bytes(buffer[: line_end + 1]))}")
        size = int(match.group(1), 16)
        del buffer[: line_end + 1]
        if size == 0:
            self._state = _TRAILERS
            return self._next_trailers()
        self._chunk_left = size
        self._state = _CHUNK_DATA
        return self._next_chunked()

    def _next_trailers(self) -> Event:
        buffer = self._buffer
        if buffer.startswith(b"\r\n"):
            del buffer[:2]
            return self._message_done()
        found = buffer.find(b"\r\n\r\n")
        if found < 0:
            if len(buffer) > self.max_head_size:
                raise ParseError(431, f"trailer section over {self.max_head_size} bytes")
            return self._more_or_eof("in the trailer section")
        trailers = bytes(buffer[: found + 4])
        if found + 4 > self.max_head_size:
            raise ParseError(431, f"trailer section over {self.max_head_size} bytes")
        del buffer[: found + 4]
        _check_line_endings(trailers, "trailer section")
        return self._message_done()

    def _more_or_eof(self, where: str) -> Event:
        if self._closed:
            raise ParseError(400, f"stream ended {where}")
        return NEED_DATA


def _check_line_endings(head: bytes, what: str) -> None:
    # RFC 9112 section 2.2: a bare CR is refused; we refuse a bare LF as
    # well (allowed, not required), so no front end can see other lines.
    crlf = head.count(b"\r\n")
    if head.count(b"\n") != crlf or head.count(b"\r") != crlf:
        raise ParseError(400, f"bare CR or LF in the {what}")
    # RFC 9112 section 5.2: obs-fold is refused with 400, never unfolded.
    if b"\n " in head or b"\n\t" in head:
        raise ParseError(400, f"obsolete line folding in the {what}")


def _check_raw_head(head: bytes) -> bytes:
    """The request line, once its shape, method and version and the head's
    line endings are checked; raises ParseError saying what is wrong."""
    found = _REQUEST_LINE.match(head)
    if found is None or found.group(1) not in _KNOWN_METHOD_BYTES or _BAD_HEAD_BYTES.search(head):
        _refuse_head(head)
    return head[: found.end() - 2]


def _refuse_head(head: bytes) -> NoReturn:
    """Why ``head`` is refused (the slow path of _check_raw_head)."""
    line = head[: head.find(b"\n")].rstrip(b"\r")
    if not (line.endswith(b" HTTP/1.1") or line.endswith(b" HTTP/1.0")):
        if _VERSION.fullmatch(line):
            # RFC 9110 section 15.6.6.
            raise ParseError(505, f"HTTP version not supported in request line {_show(line)}")
        raise ParseError(400, f"malformed request line {_show(line)}")
    if line.count(b" ") != 2:
        # RFC 9112 section 3: method SP request-target SP HTTP-version.
        raise ParseError(400, f"malformed request line {_show(line)}")
    method = line[: line.find(b" ")]
    if method not in _KNOWN_METHOD_BYTES:
        if _TOKEN.fullmatch(method):
            # RFC 9110 section 9.1: a method we do not implement is a 501.
            raise ParseError(501, f"method {_show(method)} not implemented")
        raise ParseError(400, f"malformed method in request line {_show(line)}")
    if b"\x7f" in head:
        # DEL is no VCHAR (RFC 5234 B.1): llhttp refuses it, h11 would not.
        raise ParseError(400, "DEL character in the request head")
    _check_line_endings(head, "request head")
    raise ParseError(400, f"malformed request line {_show(line)}")


def _framing(head: bytes, line: bytes) -> int:
    """The body's framing from the raw header lines: its length (0: none),
    or -1 for chunked. RFC 9112 section 6."""
    if _FRAMING_FIELD.search(head) is None:
        return 0
    lengths: List[bytes] = []
    codings: List[bytes] = []
    for field in head.split(b"\r\n")[1:]:
        name, _, value = field.partition(b":")
        key = name.lower()
        if key.strip(b" \t") in (b"content-length", b"transfer-encoding") and key != key.strip(b" \t"):
            # RFC 9112 section 5.1: whitespace around a field name is a 400.
            raise ParseError(400, f"whitespace around the field name in {_show(field)}")
        if key == b"content-length":
            lengths.append(value.strip(b" \t"))
        elif key == b"transfer-encoding":
            codings.append(value.strip(b" \t"))
    if codings:
        return _chunked_framing(line, codings, bool(lengths))
    if not lengths:
        return 0  # a field that only starts like one (Content-Lengthy)
    if len(lengths) > 1 or b"," in lengths[0]:
        # RFC 9110 section 8.6 lets a recipient take identical values as one;
        # we refuse them all: no client needs to send two, and a proxy in
        # front that reads them differently would frame another body.
        raise ParseError(400, f"several Content-Length values: {_show(b', '.join(lengths))}")
    if not _DIGITS.fullmatch(lengths[0]):
        raise ParseError(400, f"Content-Length is not a plain decimal number: {_show(lengths[0])}")
    return int(lengths[0])


def _chunked_framing(line: bytes, codings: List[bytes], has_length: bool) -> int:
    if has_length:
        # RFC 9112 section 6.1: both headers are how requests are smuggled.
        raise ParseError(400, "both Content-Length and Transfer-Encoding")
    if line.endswith(b" HTTP/1.0"):
        # RFC 9112 section 6.1: Transfer-Encoding in HTTP/1.0 is faulty framing.
        raise ParseError(400, "Transfer-Encoding in an HTTP/1.0 request")
    if len(codings) > 1:
        raise ParseError(400, f"Transfer-Encoding repeated: {_show(b' / '.join(codings))}")
    value = codings[0]
    if value == b"chunked":
        return -1
    tokens = [token.strip(b" \t").lower() for token in value.split(b",")]
    if b"chunked" in tokens:
        # RFC 9112 section 6.3: chunked must be the final coding (else 400);
        # and only the exact lower-case name, so no front end can disagree.
        raise ParseError(400, f"Transfer-Encoding {_show(value)} is not exactly 'chunked'")
    # RFC 9112 section 6.1: a coding we do not implement is a 501.
    raise ParseError(501, f"Transfer-Encoding {_show(value)} not implemented (only chunked)")


def _connection_facts(request: RequestHead) -> None:
    """Checks Host; sets keep-alive, Expect: 100-continue and Upgrade."""
    connection = expect = ""
    upgrade = False
    hosts = 0
    for name, value in request.headers:
        if name == "host":
            hosts += 1
        elif name == "connection":
            connection += "," + value.lower()
        elif name == "expect":
            expect += "," + value.lower()
        elif name == "upgrade":
            upgrade = True
    if hosts != 1 and (hosts or request.http_version == "1.1"):
        # RFC 9112 section 3.2: HTTP/1.1 requests carry exactly one Host.
        raise ParseError(400, f"{hosts} Host headers in an HTTP/{request.http_version} request")
    if request.http_version == "1.0":
        # HTTP/1.0 keep-alive is not offered (h11 does not either).
        request.keep_alive = False
    else:
        if connection and "close" in [token.strip() for token in connection.split(",")]:
            request.keep_alive = False
        # RFC 9110 section 10.1.1 (an HTTP/1.0 client does not wait for it).
        request.expects_continue = "100-continue" in expect
    request.upgrade = upgrade or request.method == "CONNECT"


_resolved: Dict[str, Type[RequestParser]] = {}


def available_parsers() -> List[str]:
    """The parser names that can be used here, fastest first."""
    names = []
    for name in ("httptools", "h11"):
        try:
            parser_class(name)
        except ImportError:
            continue
        names.append(name)
    return names


def parser_class(name: Optional[str] = None) -> Type[RequestParser]:
    """The parser class for ``name`` ("httptools", "h11"); for None or
    "auto", the ``EVLOOP_HTTP_PARSER`` environment variable if set, else
    httptools when it is installed, else h11. Raises ImportError when the
    library named is not installed, ValueError for an unknown name."""
    if name in (None, "", "auto"):
        name = os.environ.get("EVLOOP_HTTP_PARSER", "") or "auto"
    cached = _resolved.get(name)
    if cached is not None:
        return cached
    found: Type[RequestParser]
    if name == "auto":
        try:
            found = parser_class("httptools")
        except ImportError:
            try:
                found = parser_class("h11")
            except ModuleNotFoundError as exc:
                raise ModuleNotFoundError(
                    f"HTTP needs h11 or httptools: pip install 'evloop-server[http]' ({exc})", name=exc.name
                ) from None
    elif name == "httptools":
        from .http_parser_httptools import HttptoolsParser

        found = HttptoolsParser
    elif name == "h11":
        from .http_parser_h11 import H11Parser

        found = H11Parser
    else:
        raise ValueError(f"unknown HTTP parser {name!r}: use 'httptools', 'h11' or 'auto'")
    _resolved[name] = found
    return found
