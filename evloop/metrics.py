"""A loop's counters for Prometheus: the text format, served at ``GET /metrics``.

Theory of operation. Nothing is counted here: the loop keeps its running
totals (:mod:`evloop.stats`: requests, bytes in and out, connections open
and accepted, the lag its sampler measures) and counts each limit or
timeout where the engine decides it (``EventLoop.limit_hit``, the kinds in
:data:`evloop.stats.LIMIT_KINDS`). A scrape takes one
:class:`~evloop.stats.LoopStats` snapshot and writes it in Prometheus'
text exposition format 0.0.4: for each family a ``# HELP`` and a
``# TYPE`` line, then its samples; counters end in ``_total``; label
values escape backslash, double quote and line feed. Every limit kind is
written, 0 until it fires, so a series exists before its first hit.

- :func:`render` gives the text for one loop; :func:`format_families` the
  text for any families (the workers' board, :mod:`evloop.metrics_board`,
  writes one series per worker with a ``worker`` label).
- :func:`serve_metrics` serves it from an evloop server on the same loop.
  The endpoint reads requests with its own small, strict HTTP/1.0-1.1
  reader (evloop's engine is standard library only, and one route needs
  no general HTTP stack): a request head of at most
  :data:`MAX_HEAD` bytes ending in CRLF CRLF, an exact request line, token
  header names, ``Host`` on HTTP/1.1, no body. ``GET`` or ``HEAD``
  ``/metrics`` gets the text; another path, 404; another method, 405; a
  malformed request, 400 (431 for an oversized head, 501 for a
  ``Transfer-Encoding``), then the connection closes. Every reply closes
  the connection (``Connection: close``): a scrape every few seconds costs
  one connection each. :data:`METRICS_LIMITS` bounds the endpoint's
  clients with the ordinary :class:`~evloop.limits.Limits` machinery
  (request and idle timeouts, connection caps).

The endpoint's own traffic is the loop's traffic: each scrape counts one
connection accepted, one request, and its bytes.
"""

import math
import re
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

from .errors import RemoteProtocolError, RequestTooLargeError
from .handler import ClientHandler
from .limits import Limits
from .server import Server
from .stats import LIMIT_KINDS, LoopStats, loop_stats

__all__ = [
    "CONTENT_TYPE",
    "MAX_HEAD",
    "METRICS_LIMITS",
    "Family",
    "MetricsAddressError",
    "MetricsHandler",
    "MetricsServer",
    "bind_error",
    "format_families",
    "loop_families",
    "render",
    "serve_metrics",
]

#: The media type of the text exposition format this module writes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Most bytes a request head may take (request line, headers, final CRLF).
#: A scraper sends a few hundred; Prometheus' own is under 300.
MAX_HEAD = 8192
#: The endpoint's bounds: a scraper that stalls mid-request or holds an idle
#: connection is closed after 10 s, and 64 connections are plenty.
METRICS_LIMITS = Limits(
    max_request_size=MAX_HEAD,
    max_connections=64,
    max_connections_per_peer=16,
    idle_timeout=10.0,
    request_timeout=10.0,
    write_timeout=10.0,
)

Number = Union[int, float]
Labels = Dict[str, str]


class Family(NamedTuple):
    """One metric family: ``name`` (with ``_total`` for a counter), its
    ``kind`` (``"counter"`` or ``"gauge"``), the ``help`` text, and its
    samples as (labels, value) pairs."""

    name: str
    kind: str
    help: str
    samples: Sequence[Tuple[Labels, Number]]


# name, type, help, and how a LoopStats gives the value.
_LOOP_FAMILIES: Tuple[Tuple[str, str, str, Callable[[LoopStats], Number]], ...] = (
    ("evloop_connections_open", "gauge", "Client connections open now.", lambda s: s.connections),
    (
        "evloop_connections_accepted_total",
        "counter",
        "Client connections accepted (refused ones are limit hits).",
        lambda s: s.connections_accepted,
    ),
    ("evloop_requests_total", "counter", "Requests answered.", lambda s: s.requests),
    ("evloop_received_bytes_total", "counter", "Bytes read from client sockets.", lambda s: s.bytes_received),
    ("evloop_sent_bytes_total", "counter", "Bytes written to client sockets.", lambda s: s.bytes_sent),
    (
        "evloop_loop_lag_seconds",
        "gauge",
        "How late the loop's sampling timer fired at the end of the last window "
        "(near 0 on a loop that keeps up; the slowest handler call on one that does not).",
        lambda s: s.lag,
    ),
)


def loop_families(series: Iterable[Tuple[Labels, LoopStats]]) -> List[Family]:
    """The evloop families for one or more loops' snapshots: each (labels,
    stats) pair gives one sample per family, with those labels (``{}`` for
    a single loop, ``{"worker": "0"}`` ...)."""
    series = list(series)
    families = [
        Family(name, kind, text, [(labels, value(stats)) for labels, stats in series])
        for name, kind, text, value in _LOOP_FAMILIES
    ]
    hits: List[Tuple[Labels, Number]] = []
    for labels, stats in series:
        counted = stats.limit_hits
        kinds = list(LIMIT_KINDS) + sorted(set(counted) - set(LIMIT_KINDS))
        hits.extend(({**labels, "kind": kind}, counted.get(kind, 0)) for kind in kinds)
    families.append(
        Family(
            "evloop_limit_hits_total",
            "counter",
            "Limits and timeouts that fired, by kind (evloop.stats.LIMIT_KINDS).",
            hits,
        )
    )
    return families


def format_families(families: Iterable[Family]) -> str:
    """The text exposition format (0.0.4) of ``families``: each family's
    HELP and TYPE lines, then its samples; the text ends with a line feed."""
    lines: List[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for labels, value in family.samples:
            lines.append(f"{family.name}{_format_labels(labels)} {_format_value(value)}")
    return "\n".join(lines) + "\n"


def render(loop: Any) -> str:
    """The metrics of ``loop`` in the text format (call on the loop's
    thread; the first call starts the one-second sampler that measures
    the lag, see :func:`evloop.stats.loop_stats`)."""
    return format_families(loop_families([({}, loop_stats(loop))]))


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _format_labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{name}="{_escape_label(value)}"' for name, value in labels.items()) + "}"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_value(value: Number) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


# -- the endpoint ---------------------------------------------------------------

# RFC 9110 section 5.6.2: a token; RFC 9112 section 3: the request line.
_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([^ \x00-\x1f\x7f]+) HTTP/1\.([01])")
# RFC 9112 section 5: field-name ":" OWS field-value OWS; a line starting
# with white space (obs-fold) does not match, and gets a 400 (section 5.2).
_HEADER = re.compile(rb"(" + _TOKEN + rb"):[ \t]*([^\x00\r\n]*?)[ \t]*")
_ABSOLUTE = re.compile(rb"https?://[^/?#]+", re.IGNORECASE)
_STATUS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
}


def _reply(
    status: int, body: bytes, content_type: str = "text/plain; charset=utf-8", extra: str = ""
) -> bytes:
    head = (
        f"HTTP/1.1 {status} {_STATUS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"{extra}Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def _refuse(status: int, why: str) -> RemoteProtocolError:
    # An oversized head counts as request_too_large, the rest as protocol errors.
    error = RequestTooLargeError if status == 431 else RemoteProtocolError
    return error(f"metrics endpoint: HTTP {status}: {why}", reply=_reply(status, f"{why}\n".encode()))


class MetricsHandler(ClientHandler):
    """One scraper's connection: one request, one reply, then the close."""

    close_when_done = True
    server: "MetricsServer"

    def request_complete(self) -> Union[bool, int]:
        end = self.find(b"\r\n\r\n")
        if end < 0:
            if len(self.incoming) > MAX_HEAD:
                raise _refuse(431, f"request head over {MAX_HEAD} bytes")
            return 0
        if end + 4 > MAX_HEAD:
            raise _refuse(431, f"request head over {MAX_HEAD} bytes")
        return end + 4

    def make_response(self) -> bytes:
        head = bytes(self.incoming[: self.find(b"\r\n\r\n")])
        method, target, headers = _parse_head(head)
        if method not in (b"GET", b"HEAD"):
            return _reply(405, b"only GET and HEAD\n", extra="Allow: GET, HEAD\r\n")
        if _path_of(target) != b"/metrics":
            return _reply(404, b"not found: the metrics are at /metrics\n")
        if headers.get(b"content-length", b"0") != b"0":
            raise _refuse(400, "a GET /metrics request has no body")
        body = self.server.text().encode("utf-8")
        reply = _reply(200, body, CONTENT_TYPE)
        return reply[: len(reply) - len(body)] if method == b"HEAD" else reply


def _parse_head(head: bytes) -> Tuple[bytes, bytes, Dict[bytes, bytes]]:
    """(method, target, headers by lower-case name) of a request head
    without its final CRLF CRLF; raises RemoteProtocolError (400, 501)."""
    lines = head.split(b"\r\n")
    matched = _REQUEST_LINE.fullmatch(lines[0])
    if matched is None:
        raise _refuse(400, f"not an HTTP/1.x request line: {lines[0][:100]!r}")
    method, target, minor = matched.groups()
    headers: Dict[bytes, bytes] = {}
    for line in lines[1:]:
        field = _HEADER.fullmatch(line)
        if field is None:
            raise _refuse(400, f"malformed header line: {line[:100]!r}")
        name, value = field.group(1).lower(), field.group(2)
        if name in headers and name in (b"host", b"content-length") and headers[name] != value:
            raise _refuse(400, f"conflicting {name.decode()} headers")
        headers[name] = value
    if minor == b"1" and b"host" not in headers:
        raise _refuse(400, "an HTTP/1.1 request without Host")  # RFC 9112 section 3.2
    if b"transfer-encoding" in headers:
        raise _refuse(501, "Transfer-Encoding is not taken here")  # RFC 9112 section 6.1
    length = headers.get(b"content-length", b"0")
    if not length.isdigit():
        raise _refuse(400, f"invalid Content-Length {length[:20]!r}")  # RFC 9112 section 6.3
    headers[b"content-length"] = str(int(length)).encode()
    return method, target, headers


def _path_of(target: bytes) -> bytes:
    """The path of an origin-form or absolute-form target (RFC 9112 section 3.2)."""
    absolute = _ABSOLUTE.match(target)
    if absolute is not None:
        target = target[absolute.end() :] or b"/"
    return target.split(b"?", 1)[0]


class MetricsAddressError(OSError):
    """The endpoint's address would not bind: ``errno`` and ``strerror`` say
    why, ``filename`` is the ``HOST:PORT`` asked for."""


def bind_error(exc: OSError, host: str, port: int) -> MetricsAddressError:
    """``exc``, raised binding the endpoint to ``host:port``, as a
    :class:`MetricsAddressError` (so a caller tells it from its own port's)."""
    return MetricsAddressError(exc.errno, exc.strerror or str(exc), f"{host}:{port}")


class MetricsServer(Server):
    """The endpoint's listener; ``text()`` gives what a scrape returns."""

    def __init__(self, text: Callable[[], str], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.text = text


def serve_metrics(
    loop: Any,
    host: str = "127.0.0.1",
    port: int = 9100,
    *,
    sock: Any = None,
    text: Optional[Callable[[], str]] = None,
    limits: Optional[Limits] = None,
) -> MetricsServer:
    """Serve ``GET /metrics`` on ``host:port`` (port 0: a free one; the
    returned server's :attr:`~evloop.Server.port` says which), or on the
    listening socket ``sock``, from ``loop``. Returns the
    :class:`MetricsServer`, already added to the loop; ``server.close()``
    stops it. ``text()`` gives the body (default: :func:`render` of
    ``loop``); ``limits`` bounds the scrapers (default
    :data:`METRICS_LIMITS`). Raises :class:`MetricsAddressError` when the
    address will not bind. Call on the loop's thread, or before it runs."""
    try:
        server = MetricsServer(
            text if text is not None else (lambda: render(loop)),
            host,
            port,
            sock=sock,
            limits=limits if limits is not None else METRICS_LIMITS,
        )
    except OSError as exc:
        raise bind_error(exc, host, port) from exc
    loop.add_server(server, MetricsHandler)
    loop_stats(loop)  # start measuring the lag now, not at the first scrape
    return server
