"""The Flask application benchmarks/wsgi_bench.py serves with every server.

- ``/``: "Hello, World!" (Flask's own hello world);
- ``/stream``: 1 MiB streamed as 16 pieces of 64 KiB, with no
  Content-Length (chunked), produced by a generator.
"""

from flask import Flask, Response

__all__ = ["app"]

app = Flask(__name__)

_PIECE = b"x" * (64 * 1024)


@app.route("/")
def hello() -> str:
    return "Hello, World!"


@app.route("/stream")
def stream() -> Response:
    return Response((_PIECE for _ in range(16)), mimetype="application/octet-stream")
