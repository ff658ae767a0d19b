"""A Flask application and a WebSocket route on one port, served by evloop.

    pip install flask 'evloop-server[websocket]'
    python examples/wsgi_app.py --port 8000
    curl http://localhost:8000/                      # Flask answers
    python -m websockets ws://localhost:8000/echo    # a WebSocket, same port

serve_wsgi() logs "listening on HOST:PORT" once bound. The application
runs in worker threads (``--threads``), the loop keeps
serving everyone meanwhile; ``/echo`` never reaches Flask. The same from
the command line: ``python -m evloop serve --wsgi examples/wsgi_app.py:app
--websocket /echo=evloop.protocols.websocket:EchoWebSocket``.
"""

import argparse
import logging
from typing import Any, Dict, List, Optional

from evloop.protocols.websocket import EchoWebSocket
from evloop.protocols.wsgi import serve_wsgi
from flask import Flask, Response, request

app = Flask(__name__)


@app.route("/")
def index() -> str:
    return "Hello from Flask on evloop!\n"


@app.route("/count")
def count() -> Response:
    # A streamed response: each line is produced (and may block) in a worker thread.
    upto = int(request.args.get("upto", "10"))
    return Response((f"{number}\n" for number in range(1, upto + 1)), mimetype="text/plain")


@app.route("/upload", methods=["POST"])
def upload() -> Dict[str, Any]:
    sizes = {name: len(file.read()) for name, file in request.files.items()}
    return {"files": sizes, "fields": dict(request.form)}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    serve_wsgi(app, args.host, args.port, threads=args.threads, websocket={"/echo": EchoWebSocket})


if __name__ == "__main__":
    main()
