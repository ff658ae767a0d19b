"""Static files under one root directory, which no request can leave.

Theory of operation. The request path is taken as the client sent it, split
on ``/`` *before* percent-decoding, and each segment is decoded on its own.
A segment that is ``.`` or ``..`` (however it was encoded: ``%2e%2e``), or
that decodes to something holding ``/``, ``\\`` or NUL (``%2F``, ``%5C``,
``%00``), refuses the request with 403 before the file system is asked
anything. The joined path is then resolved with ``realpath`` and must still
lie under the resolved root, so a symbolic link that points out of the root
is refused the same way; links that stay inside are followed.

A regular file is answered with the open file object, so the engine sends
it with ``os.sendfile`` and memory stays flat whatever its size. A directory
is answered with its ``index.html`` (a path to it without the trailing
slash is redirected, RFC 9110 section 15.4.2). Content-Type comes from the
file name (:mod:`mimetypes`; text types get ``charset=utf-8``).
Last-Modified, an ETag and ``Accept-Ranges: bytes`` go with every file; a
GET or HEAD whose ``If-None-Match`` matches, or, without ``If-None-Match``,
whose ``If-Modified-Since`` is not older than the file, gets 304 (RFC 9110
sections 13.1.2, 13.1.3 and 13.2.2).

Range requests (RFC 9110 section 14): a GET with one byte range gets 206
with ``Content-Range``; a range that starts past the end gets 416 with
``Content-Range: bytes */size``. Several ranges, another unit or a
malformed header are ignored (the whole file, 200), as section 14.2
allows. ``If-Range`` with the file's ETag (strong comparison) or its exact
Last-Modified date keeps the range; anything else sends the whole file.
A range is read in blocks with ``os.pread``, not ``sendfile`` (the engine
sends a file to its end).
"""

import email.utils
import logging
import mimetypes
import os
import stat
from typing import Any, Iterator, Optional
from urllib.parse import unquote_to_bytes

from .http import HTTPError, Request, Response, error_response, http_date

__all__ = ["StaticFiles", "content_type_for", "parse_range"]

logger = logging.getLogger("evloop.http")

_TEXT_TYPES = ("application/javascript", "application/json", "image/svg+xml", "application/xml")


def content_type_for(name: str, default: str = "application/octet-stream") -> str:
    """The Content-Type for a file name; text gets ``charset=utf-8``."""
    kind, encoding = mimetypes.guess_type(name, strict=False)
    if kind is None or encoding is not None:
        # A .gz or .bz2 file is sent as what it is, not as what it unpacks to.
        return default if encoding is None else "application/octet-stream"
    if kind.startswith("text/") or kind in _TEXT_TYPES:
        return f"{kind}; charset=utf-8"
    return kind


class StaticFiles:
    """Serve the files under ``root``; route it at a prefix path:
    ``Router({"/static/*": StaticFiles("www")})``, or at ``"/*"``.

    ``index`` is the file answered for a directory (None: 404).
    ``show_hidden`` allows segments that start with a dot (refused by
    default: ``.git``, ``.env``). Only GET and HEAD are answered (405).
    """

    def __init__(self, root: str, *, index: Optional[str] = "index.html", show_hidden: bool = False) -> None:
        self.root = os.path.realpath(root)
        if not os.path.isdir(self.root):
            raise ValueError(f"static root is not a directory: {root!r}")
        self.index = index
        self.show_hidden = show_hidden

    def __call__(self, request: Request) -> Any:
        if request.method not in ("GET", "HEAD"):
            raise HTTPError(405, f"{request.method} is not allowed here", [("Allow", "GET, HEAD")])
        rest = request.subpath if request.route else request.path
        relative = self._safe_relative(rest, request)
        path = os.path.realpath(os.path.join(self.root, relative)) if relative else self.root
        if path != self.root and not path.startswith(self.root + os.sep):
            # A symbolic link inside the root that leads out of it.
            logger.warning("%s: %r resolves outside the static root; refused", request.peer, request.path)
            return error_response(403, "outside the static root")
        try:
            info = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return error_response(404)
        except OSError as exc:
            logger.info("%s: cannot stat %r: %s", request.peer, path, exc)
            return error_response(404)
        if stat.S_ISDIR(info.st_mode):
            if not request.path.endswith("/"):
                location = request.path + "/" + ("?" + request.query if request.query else "")
                return Response.redirect(location, 301)
            if self.index is None:
                return error_response(404)
            path = os.path.join(path, self.index)
            try:
                info = os.stat(path)
            except OSError:
                return error_response(404)
        if not stat.S_ISREG(info.st_mode):
            return error_response(404)
        return self._file_response(request, path, info)

    def _safe_relative(self, rest: str, request: Request) -> str:
        """The path below the root, from the undecoded request path; raises
        HTTPError(403) for every way out of the root."""
        parts = []
        for raw in rest.split("/"):
            if not raw:
                continue
            segment = unquote_to_bytes(raw)
            try:
                name = segment.decode("utf-8")
            except UnicodeDecodeError:
                raise HTTPError(404) from None
            # Decoded separators and dot segments would climb out of the root
            # once joined, whatever the encoding trick (%2e%2e, %2F, %5C).
            if name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
                logger.warning(
                    "%s: path %r tries to leave the static root; refused", request.peer, request.path
                )
                raise HTTPError(403, "path leaves the static root")
            if name.startswith(".") and not self.show_hidden:
                raise HTTPError(404)
            parts.append(name)
        return os.path.join(*parts) if parts else ""

    def _file_response(self, request: Request, path: str, info: os.stat_result) -> Response:
        mtime = int(info.st_mtime)
        etag = f'"{info.st_size:x}-{info.st_mtime_ns:x}"'
        headers = [("Last-Modified", http_date(mtime)), ("ETag", etag), ("Accept-Ranges", "bytes")]
        if _not_modified(request, etag, mtime):
            return Response(None, 304, headers)
        size = info.st_size
        wanted = _wanted_range(request, etag, mtime, size)
        if wanted == "unsatisfiable":
            # RFC 9110 section 15.5.17.
            return Response("", 416, [*headers, ("Content-Range", f"bytes */{size}")])
        try:
            file = open(path, "rb")
        except OSError as exc:
            logger.info("%s: cannot open %r: %s", request.peer, path, exc)
            return error_response(403 if isinstance(exc, PermissionError) else 404)
        content_type = content_type_for(path)
        if isinstance(wanted, tuple):
            first, last = wanted
            headers.append(("Content-Range", f"bytes {first}-{last}/{size}"))
            body = _read_range(file, first, last - first + 1, 64 * 1024)
            return Response(body, 206, headers, content_type=content_type, length=last - first + 1)
        return Response(file, 200, headers, content_type=content_type)


def parse_range(value: str, size: int) -> Any:
    """The one byte range in a ``Range`` header value, as ``(first, last)``
    within a representation of ``size`` bytes; ``"unsatisfiable"``; or
    None when the header is to be ignored (another unit, several ranges,
    bad syntax). RFC 9110 section 14.1.2."""
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    start, dash, end = spec.strip().partition("-")
    if not dash or not (start.isdigit() or start == "") or not (end.isdigit() or end == ""):
        return None
    if start == "":
        if end == "":
            return None
        suffix = int(end)
        if suffix == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - suffix), size - 1
    first = int(start)
    if end != "" and int(end) < first:
        return None  # invalid: ignored (section 14.1.1)
    if first >= size:
        return "unsatisfiable"
    return first, size - 1 if end == "" else min(int(end), size - 1)


def _wanted_range(request: Request, etag: str, mtime: int, size: int) -> Any:
    value = request.header("range")
    if value is None or request.method != "GET":
        return None
    if_range = request.header("if-range")
    if if_range is not None:
        if_range = if_range.strip()
        # RFC 9110 section 13.1.5: an entity tag compares strongly; a date
        # must be the file's Last-Modified exactly.
        if if_range.startswith(("W/", '"')):
            if if_range != etag:
                return None
        elif if_range != http_date(mtime):
            return None
    return parse_range(value, size)


def _read_range(file: Any, offset: int, length: int, blocksize: int) -> Iterator[bytes]:
    try:
        fd = file.fileno()
        while length > 0:
            block = os.pread(fd, min(blocksize, length), offset)
            if not block:
                return  # the file shrank: the client sees a short body
            offset += len(block)
            length -= len(block)
            yield block
    finally:
        file.close()


def _not_modified(request: Request, etag: str, mtime: int) -> bool:
    if_none_match = request.header("if-none-match")
    if if_none_match is not None:
        # RFC 9110 section 13.1.2: weak comparison; "*" matches any file.
        opaque = _opaque_tag(etag)
        return any(
            tag == "*" or _opaque_tag(tag) == opaque
            for tag in (tag.strip() for tag in if_none_match.split(","))
        )
    if_modified_since = request.header("if-modified-since")
    if if_modified_since is None:
        return False
    # RFC 9110 section 13.1.3: an invalid date is ignored.
    try:
        since = email.utils.parsedate_to_datetime(if_modified_since)
    except (TypeError, ValueError, IndexError):
        return False
    if since is None or since.tzinfo is None:
        return False
    return mtime <= since.timestamp()


def _opaque_tag(tag: str) -> str:
    return tag[2:] if tag.startswith("W/") else tag
