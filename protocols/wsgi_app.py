"""The worker-thread side of the WSGI server: one application call.

Theory of operation. For each request the loop makes an :class:`Exchange`
(the parsed head, the ``wsgi.input`` stream and a response channel) and
runs :func:`run_application` with it in the offload pool. That one call
builds the ``environ`` (PEP 3333 "environ Variables"), calls the
application, iterates its result and closes it, so a small response costs
the loop a single hand-off and a generator that sleeps sleeps in the worker.
When the response channel is full, the iteration is parked (the thread
returns to the pool) and :func:`_resume_iteration` carries it on in a
worker thread once the loop has taken what was handed over.

What the application produces goes into the :class:`~.wsgi_io.ResponseChannel`
in order: a :class:`Head` once the first non-empty body piece (or the end)
is ready, as PEP 3333 wants headers sent no earlier; then the pieces; a
:class:`SendFile` for ``wsgi.file_wrapper`` around a regular file; then
:data:`~.wsgi_io.END`. The loop frames them (:mod:`~.wsgi_framing`).

Errors. An exception before the head is out becomes a 500 with the
traceback logged; after it, :data:`FAILED` tells the loop to close the
connection (the response cannot be completed honestly). ``start_response``
follows PEP 3333 on ``exc_info``: it replaces the head not yet sent and
re-raises once the head is out.
"""

import logging
import os
import re
import stat
import sys
from functools import partial
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple
from urllib.parse import unquote

from .wsgi_io import END, ErrorStream, FileWrapper, InputStream, ResponseAbortedError, ResponseChannel

__all__ = ["FAILED", "Exchange", "Head", "SendFile", "build_environ", "fixed_environ", "run_application"]

logger = logging.getLogger("evloop.wsgi")
errors_logger = logging.getLogger("evloop.wsgi.errors")

#: Put on the channel when the application failed after its head was sent.
FAILED = object()

_ERROR_BODY = b"500 Internal Server Error\n"
_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\r\n\0]")


class Head:
    """A response's status line and headers, as ``start_response`` got them
    (names and values encoded as latin-1); ``length`` is the Content-Length
    the application declared, if it did."""

    __slots__ = ("headers", "length", "reason", "status")

    def __init__(
        self, status: int, reason: bytes, headers: List[Tuple[bytes, bytes]], length: Optional[int] = None
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.length = length


class SendFile:
    """A regular file to send as the body, ``length`` bytes from where it is."""

    __slots__ = ("file", "length")

    def __init__(self, file: Any, length: int) -> None:
        self.file = file
        self.length = length


class Exchange:
    """One request and its response, shared by the loop and a worker.

    ``fixed`` holds the environ entries that are the same for every request
    on the connection; ``method``, ``target``, ``headers`` (lower-case
    names) and ``http_version`` are the parser's, as latin-1 str."""

    __slots__ = (
        "app",
        "channel",
        "fixed",
        "headers",
        "http_version",
        "input",
        "method",
        "peer",
        "script_name",
        "target",
    )

    def __init__(
        self,
        app: Callable[..., Any],
        fixed: Dict[str, Any],
        script_name: str,
        peer: str,
        head: Any,
        body: InputStream,
        channel: ResponseChannel,
    ) -> None:
        self.app = app
        self.fixed = fixed
        self.script_name = script_name
        self.peer = peer
        self.method: str = head.method
        self.target: str = head.target
        self.headers: List[Tuple[str, str]] = head.headers
        self.http_version: str = head.http_version
        self.input = body
        self.channel = channel

    def header(self, name: str, default: str) -> str:
        """The first value of header ``name`` (lower case), for the access log."""
        for key, value in self.headers:
            if key == name:
                return value
        return default


def build_environ(exchange: Exchange) -> Dict[str, Any]:
    """The PEP 3333 environ for ``exchange``'s request."""
    target = exchange.target
    if target[:1] != "/" and "://" in target[:10]:
        # Absolute form (RFC 9112 section 3.2.2): the path starts after the authority.
        slash = target.find("/", target.find("://") + 3)
        target = target[slash:] if slash >= 0 else "/"
    path, _, query = target.partition("?")
    # PEP 3333: PATH_INFO is decoded bytes, as latin-1 ("bytes-as-unicode");
    # the target is latin-1 already, so only %XX escapes need decoding.
    path_info = unquote(path, "latin-1") if "%" in path else path
    script_name = exchange.script_name
    if script_name and (path_info == script_name or path_info.startswith(script_name + "/")):
        path_info = path_info[len(script_name) :]
    environ = exchange.fixed.copy()
    environ["REQUEST_METHOD"] = exchange.method
    environ["SCRIPT_NAME"] = script_name
    environ["PATH_INFO"] = path_info
    environ["QUERY_STRING"] = query
    environ["SERVER_PROTOCOL"] = "HTTP/" + exchange.http_version
    environ["wsgi.input"] = exchange.input
    keys = _ENVIRON_KEYS
    for name, value in exchange.headers:
        key = keys.get(name)
        if key is None:
            if "_" in name:
                # "X_User" and "X-User" would both be HTTP_X_USER: a proxy that
                # checked one could be fooled by the other (nginx drops them too).
                continue
            key = "HTTP_" + name.upper().replace("-", "_")
            if len(keys) < _ENVIRON_KEYS_MAX:
                keys[name] = key
        if key in environ:
            # RFC 9110 section 5.3: repeated fields join with commas.
            value = environ[key] + ", " + value
        environ[key] = value
    return environ


# Header name (lower case) to its environ key, learnt as names come;
# bounded, so a peer sending made-up names cannot grow it.
_ENVIRON_KEYS: Dict[str, str] = {"content-type": "CONTENT_TYPE", "content-length": "CONTENT_LENGTH"}
_ENVIRON_KEYS_MAX = 512


class _Responder:
    """``start_response`` and ``write`` for one request (PEP 3333)."""

    __slots__ = ("channel", "head", "head_only", "head_sent", "remaining")

    def __init__(self, channel: ResponseChannel, head_only: bool) -> None:
        self.channel = channel
        self.head: Optional[Head] = None
        self.head_sent = False
        self.head_only = head_only
        # Body bytes still owed to a declared Content-Length, once the head is out.
        self.remaining: Optional[int] = None

    def start_response(self, status: str, headers: List[Tuple[str, str]], exc_info: Any = None) -> Any:
        if exc_info is not None:
            try:
                if self.head_sent:
                    # PEP 3333: too late to change the head; the error goes on up.
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.head is not None:
            raise AssertionError("start_response() called a second time without exc_info")
        self.head = _make_head(status, headers)
        return self.write

    def write(self, data: bytes) -> None:
        """The legacy ``write()`` callable: ``data`` goes out before it returns
        (as far as the bounded channel goes). The head, held until the first
        piece (PEP 3333), goes over with it: one hand-off, one send."""
        items, size = self._pieces(data)
        if items:
            self.channel.put_all(items, size)

    def offer(self, data: bytes, continuation: Callable[[], None]) -> bool:
        """A piece of the iterated body, as :meth:`write` but without
        waiting: False when the channel is full and ``continuation`` was
        parked (see :meth:`ResponseChannel.offer`)."""
        items, size = self._pieces(data)
        return not items or self.channel.offer(items, size, continuation)

    def _pieces(self, data: bytes) -> Tuple[List[Any], int]:
        if self.head is None:
            raise AssertionError("write() before start_response()")
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"a WSGI body is bytes, not {type(data).__name__}")
        items: List[Any] = [] if self.head_sent else [self._take_head()]
        size = 0
        if data and not self.head_only:
            items.append(bytes(data))
            size = len(data)
            if self.remaining is not None:
                self.remaining -= size
        return items, size

    def completes(self, piece: Any) -> bool:
        """Whether ``piece`` is exactly what the declared Content-Length
        still lacks (the response is whole with it)."""
        if self.head_only or type(piece) is not bytes:
            return False
        if self.head_sent:
            return self.remaining == len(piece)
        return self.head is not None and self.head.length == len(piece)

    def finish(self, last: Optional[bytes]) -> None:
        """The end of the response, with the head if it is still here and
        ``last``, the final piece held back for it."""
        items: List[Any] = [] if self.head_sent else [self._take_head()]
        size = 0
        if last:
            items.append(last)
            size = len(last)
        items.append(END)
        self.channel.put_all(items, size)

    def send_head(self) -> None:
        self.channel.put(self._take_head())

    def _take_head(self) -> Head:
        if self.head is None:
            raise AssertionError("the application did not call start_response()")
        self.head_sent = True
        self.remaining = self.head.length
        return self.head


def _make_head(status: str, headers: List[Tuple[str, str]]) -> Head:
    if type(status) is not str or len(status) < 4 or not status[:3].isdigit() or status[3] != " ":
        raise ValueError(f"a WSGI status is a str like '200 OK', not {status!r}")
    encoded = []
    length = None
    for name, value in headers:
        if type(name) is not str or type(value) is not str:
            raise TypeError(f"WSGI headers are (str, str) pairs, not ({name!r}, {value!r})")
        # RFC 9110 section 5.1 and 5.5: a token, and no CR, LF or NUL in the
        # value, or the application could split the response in two.
        if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
            raise ValueError(f"invalid response header {name!r}: {value!r}")
        if len(name) == 14 and name.lower() == "content-length" and value.isdigit():
            length = int(value)
        encoded.append((name.encode("latin-1"), value.encode("latin-1")))
    reason = status[4:]
    if _BAD_VALUE.search(reason):
        raise ValueError(f"invalid status {status!r}")
    return Head(int(status[:3]), reason.encode("latin-1"), encoded, length)


def run_application(exchange: Exchange) -> None:
    """Call the application for ``exchange`` and hand its response to the
    loop; runs in a worker thread. Returns when the response is all in the
    channel (or the connection closed); never raises."""
    head_only = exchange.method == "HEAD"
    responder = _Responder(exchange.channel, head_only)
    result: Any = None
    handed_over = parked = False
    try:
        result = exchange.app(build_environ(exchange), responder.start_response)
        if type(result) is FileWrapper:
            handed_over = _maybe_send_file(responder, result)
        elif type(result) in (list, tuple) and not responder.head_sent and responder.head is not None:
            # PEP 3333 lets a server use the length of a list: the whole
            # response goes over at once, and gets a Content-Length.
            _send_whole(responder, result)
            return
        if not handed_over:
            parked = _send_iterated(exchange, responder, result, iter(result))
    except ResponseAbortedError:
        pass
    except Exception:
        _failed(exchange, responder)
    finally:
        if not handed_over and not parked:
            _close_result(exchange, result)


def _resume_iteration(exchange: Exchange, responder: _Responder, result: Any, pieces: Iterator[Any]) -> None:
    """A parked iteration, resumed in a worker thread once the loop has
    taken what was handed over (or the connection closed: then only the
    result is closed)."""
    parked = False
    try:
        if not responder.channel.closed:
            parked = _send_iterated(exchange, responder, result, pieces)
    except ResponseAbortedError:
        pass
    except Exception:
        _failed(exchange, responder)
    finally:
        if not parked:
            _close_result(exchange, result)


def _send_iterated(exchange: Exchange, responder: _Responder, result: Any, pieces: Iterator[Any]) -> bool:
    """Each piece goes over as the application yields it (PEP 3333: no
    block is delayed), but for the one that completes a declared
    Content-Length: that one waits for the end of the iteration, which
    comes at once in the common case (an iterator over a list), so the
    loop is woken once for the whole response, not twice.

    When a piece fills the channel, the rest of the iteration is parked
    (:meth:`ResponseChannel.offer`) and this returns True: the thread goes
    back to the pool instead of waiting for a slow client."""
    held = None
    for piece in pieces:
        if not piece:
            continue
        if held is not None:
            responder.write(held)  # more than declared: the loop will refuse it
            held = None
        if responder.completes(piece):
            held = piece
        elif not responder.offer(piece, partial(_resume_iteration, exchange, responder, result, pieces)):
            return True
    responder.finish(held)
    return False


def _send_whole(responder: _Responder, pieces: Any) -> None:
    head = responder.head
    assert head is not None
    for piece in pieces:
        if not isinstance(piece, (bytes, bytearray)):
            raise TypeError(f"a WSGI body is bytes, not {type(piece).__name__}")
    body = [bytes(piece) for piece in pieces if piece] if not responder.head_only else []
    responder.head_sent = True
    responder.channel.put_all([head, *body, END], sum(len(piece) for piece in body))


def _maybe_send_file(responder: _Responder, wrapper: FileWrapper) -> bool:
    """Hand a regular file over to be sent with ``os.sendfile``; False
    (iterate it instead) for anything else."""
    file = wrapper.filelike
    head = responder.head
    if head is None or responder.head_only:
        return False
    try:
        info = os.fstat(file.fileno())
        position = file.tell()
    except (AttributeError, OSError, ValueError):
        return False
    if not stat.S_ISREG(info.st_mode):
        return False
    length = max(0, info.st_size - position)
    declared = [value for name, value in head.headers if name.lower() == b"content-length"]
    if declared and declared[0] != b"%d" % length:
        return False  # the application sends part of the file: let it iterate
    if not declared:
        head.headers.append((b"Content-Length", b"%d" % length))
    responder.send_head()
    responder.channel.put(SendFile(file, length))
    responder.channel.put(END)
    return True


def _failed(exchange: Exchange, responder: _Responder) -> None:
    logger.error(
        "%s: error in the WSGI application answering %s %r",
        exchange.peer,
        exchange.method,
        exchange.target,
        exc_info=sys.exc_info(),
    )
    channel = exchange.channel
    try:
        if responder.head_sent:
            channel.put(FAILED)
            return
        headers = [
            (b"Content-Type", b"text/plain; charset=utf-8"),
            (b"Content-Length", b"%d" % len(_ERROR_BODY)),
        ]
        channel.put(Head(500, b"Internal Server Error", headers))
        if not responder.head_only:
            channel.put(_ERROR_BODY, len(_ERROR_BODY))
        channel.put(END)
    except ResponseAbortedError:
        pass


def _close_result(exchange: Exchange, result: Any) -> None:
    # PEP 3333: the server calls close() whatever happened.
    close = getattr(result, "close", None)
    if close is None:
        return
    try:
        close()
    except Exception:
        logger.exception("%s: error closing the WSGI application's result", exchange.peer)


def fixed_environ(
    server_name: str,
    server_port: str,
    remote: Any,
    url_scheme: str,
    multiprocess: bool,
    errors: ErrorStream,
) -> Dict[str, Any]:
    """The environ entries shared by every request of one connection."""
    if isinstance(remote, tuple) and len(remote) >= 2:
        remote_addr, remote_port = str(remote[0]), str(remote[1])
    else:
        remote_addr, remote_port = str(remote or ""), ""
    return {
        "SERVER_NAME": server_name,
        "SERVER_PORT": server_port,
        "REMOTE_ADDR": remote_addr,
        "REMOTE_PORT": remote_port,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": url_scheme,
        "wsgi.errors": errors,
        "wsgi.multithread": True,
        "wsgi.multiprocess": multiprocess,
        "wsgi.run_once": False,
        "wsgi.file_wrapper": FileWrapper,
        # Reading wsgi.input to its end is safe: it ends with the body
        # (gunicorn, mod_wsgi and werkzeug know this key).
        "wsgi.input_terminated": True,
    }
