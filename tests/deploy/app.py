"""The application the deployment tests run on each "host": HTTP, answering
with the host's name, the code's version, the client address it sees, the
worker's pid and the X-Forwarded-For header (nginx's test).

    GET /who?delay=SECONDS  ->  "host=a version=1 client=10.200.7.1:43512 pid=812 forwarded=-\n"
    GET /health             ->  "ok\n" (HAProxy's health check)

The host's name comes from ``EVLOOP_DEPLOY_HOST``; the version is read, at
import, from the file ``EVLOOP_DEPLOY_VERSION_FILE`` names, so a reload that
imports the code afresh answers with the version written before it. The
delay (a loop timer, not a sleep) keeps a request in flight long enough for
a kill or a reload to land on it.
"""

import os
from concurrent.futures import Future
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from evloop.protocols.http import HTTPHandler
from evloop.protocols.routing import Router

__all__ = ["App"]

HOST = os.environ.get("EVLOOP_DEPLOY_HOST", "?")
_version_file = os.environ.get("EVLOOP_DEPLOY_VERSION_FILE")
VERSION = Path(_version_file).read_text().strip() if _version_file else "0"

router = Router()


@router.route("/health")
def health(request: Any) -> str:
    return "ok\n"


@router.route("/who")
def who(request: Any) -> Any:
    handler = request.connection
    host, port = handler.client_address[:2]
    forwarded = request.header("x-forwarded-for", "-").replace(" ", "")
    answer = f"host={HOST} version={VERSION} client={host}:{port} pid={os.getpid()} forwarded={forwarded}\n"
    delay = float(parse_qs(request.query).get("delay", ["0"])[0])
    if delay <= 0:
        return answer
    reply: Future[str] = Future()
    handler.loop.call_later(delay, reply.set_result, answer)
    return reply


class App(HTTPHandler):
    routes = router
