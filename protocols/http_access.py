"""The access log: one line per answered HTTP request, through `logging`.

Lines go to the logger ``evloop.access`` at INFO, so they appear where the
application's logging sends them, and cost one level check when that
logger is not enabled. ``python -m evloop serve`` turns them on
(``--no-access-log`` turns them off). The default format is the Common Log
Format (the one Apache and nginx write):

    127.0.0.1 - - [04/Dec/2026:17:02:03 +0000] "GET / HTTP/1.1" 200 13

A format is a :meth:`str.format` template over the fields ``host``,
``user`` (always ``-``), ``time`` (CLF time), ``request_line``, ``method``,
``target``, ``version``, ``status``, ``size`` (body bytes, ``-`` when not
known in advance), ``referer`` and ``user_agent``; ``AccessLog.COMBINED``
is the Combined Log Format. What came from the client is escaped
(quotes, backslashes and control characters), so a line cannot be forged.
"""

import logging
import time
from typing import Any, List, Optional

__all__ = ["AccessLog"]


def _escape(text: str) -> str:
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return text.encode("unicode_escape").decode("ascii").replace('"', '\\"')


_clf_time: List[Any] = [0, ""]


def _now() -> str:
    now = int(time.time())
    if now != _clf_time[0]:
        _clf_time[0] = now
        _clf_time[1] = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now))
    return str(_clf_time[1])


class _Unread:
    """Stands for a request whose head could not be read."""

    method = target = http_version = ""

    def header(self, name: str, default: str) -> str:
        return default


_UNREAD = _Unread()


class AccessLog:
    """Writes one line per request to ``logger`` (``evloop.access``) at INFO,
    in ``format`` (Common Log Format by default)."""

    COMMON = '{host} - {user} [{time}] "{request_line}" {status} {size}'
    COMBINED = COMMON + ' "{referer}" "{user_agent}"'

    def __init__(self, format: str = COMMON, logger: Optional[logging.Logger] = None) -> None:
        self.format = format
        self.logger = logger if logger is not None else logging.getLogger("evloop.access")
        self._plain = format == self.COMMON

    def enabled(self) -> bool:
        """Whether a line would be written (checked before any work)."""
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, handler: Any, request: Any, status: int, size: Optional[int]) -> None:
        """Write the line for ``request``, answered with ``status`` and a
        body of ``size`` bytes (None: not known in advance); ``request`` is
        None for one refused before its head could be read (``"-"``)."""
        address = handler.client_address
        host = address[0] if isinstance(address, tuple) and address else (str(address) or "-")
        if request is None:
            request = _UNREAD
        request_line = (
            _escape(f"{request.method} {request.target} HTTP/{request.http_version}")
            if request.method
            else "-"
        )
        length = "-" if size is None else str(size)
        if self._plain:
            line = f'{host} - - [{_now()}] "{request_line}" {status} {length}'
        else:
            line = self.format.format(
                host=host,
                user="-",
                time=_now(),
                request_line=request_line,
                method=_escape(request.method) or "-",
                target=_escape(request.target),
                version=request.http_version,
                status=status,
                size=length,
                referer=_escape(request.header("referer", "-")),
                user_agent=_escape(request.header("user-agent", "-")),
            )
        self.logger.info("%s", line)
