"""yoton-style request/reply: one request, one reply, one connection.

The wire (yoton's ``clientserver``): the client connects, sends its request
as UTF-8 text ending in ``\\r\\n`` (appended if missing) and shuts down its
write side. The server reads up to the first ``\\r\\n`` or to end of stream,
whichever comes first, sends the reply as UTF-8 ending in ``\\r\\n`` and
closes. Any line-oriented request/reply service can be spoken to this way,
and any such client can speak to a :class:`RequestHandler`.

- :class:`RequestHandler`: subclass it and implement
  ``handle_request(text) -> text``. The text has no line ending; the reply
  gets one. Set ``executor`` (a ``concurrent.futures`` executor) to run slow
  requests off the loop's thread, as yoton's ``async`` option did.
- :func:`do_request`: the blocking client. Returns the reply, or None when
  ``timeout`` seconds pass first.
- :func:`split_address`: ``"host:port"`` to a ``(host, port)`` pair, with
  yoton's host names ``localhost`` and ``publichost``.
"""

import socket
import time
from typing import Any, Optional, Tuple

from evloop import LocalProtocolError, RemoteProtocolError

from .framing import NEED_DATA
from .lines import LineFramer, LineHandler

__all__ = ["RequestHandler", "do_request", "split_address"]

CRLF = b"\r\n"


def split_address(address: str, *, server: bool = False) -> Tuple[str, int]:
    """Split ``"host:port"`` into ``(host, port)`` for ``socket`` calls.

    The host may be an IP address (IPv6 in brackets: ``"[::1]:8000"``), a
    host name, or one of yoton's two names:

    - ``localhost``: the loopback interface, visible from this machine only;
    - ``publichost``: visible from the network. A client connects to this
      machine's public name (``socket.gethostname()``); a server
      (``server=True``) binds every interface (``""``), which is how the
      machine's public addresses come to accept connections.

    Raises ValueError if the host is missing or the port is not a number
    in 0-65535 (yoton's port words, hashed into numbers, are not taken).
    """
    host, _, port_text = address.rpartition(":")
    if not (host and port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ValueError(f"an address must look like 'host:port', not {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.lower() == "publichost":
        host = "" if server else socket.gethostname()
    elif host.lower() == "localhost":
        host = "localhost"
    return host, int(port_text)


class RequestHandler(LineHandler):
    """One request and one reply per connection (yoton's ``RequestServer``).

    Implement :meth:`handle_request`. A request longer than ``max_size``
    bytes (default 64 KiB) or not valid UTF-8 gets an ``ERROR ...`` reply, a
    warning naming the peer, and the close.

    ``executor``: None runs ``handle_request`` on the loop's thread (keep it
    quick); a ``concurrent.futures`` executor runs it there instead, and the
    loop goes on serving other clients meanwhile.
    """

    close_when_done = True
    terminator = CRLF
    too_long_reply: Optional[bytes] = b"ERROR request too long"
    eof_ends_line = True
    executor: Any = None

    __slots__ = ()

    def handle_request(self, request: str) -> str:
        """Return the reply to ``request`` (both str, without line ending).
        The default echoes as yoton's did: ``"Requested: " + request``."""
        return "Requested: " + request

    def make_response(self) -> Any:
        try:
            text = self.request.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RemoteProtocolError(
                f"the request is not UTF-8: {exc}", reply=b"ERROR request is not UTF-8\r\n"
            ) from None
        if self.executor is None:
            return self._reply_to(text)
        return self.executor.submit(self._reply_to, text)

    def _reply_to(self, text: str) -> bytes:
        reply = self.handle_request(text)
        if not isinstance(reply, str):
            raise LocalProtocolError(f"handle_request() must return str, not {type(reply).__name__}")
        # A CRLF inside the reply would end it early at the client.
        return self.framer.encode(reply)


def do_request(
    address: str, request: str, timeout: Optional[float] = -1, *, max_size: int = 1024 * 1024, ssl: Any = None
) -> Optional[str]:
    """Send ``request`` to the server at ``address`` (``"host:port"``, see
    :func:`split_address`) and return its reply.

    The request gets ``\\r\\n`` appended if it does not end with it, goes out
    as UTF-8, and the write side is shut down. The reply is what the server
    sends up to its first ``\\r\\n`` (not included) or up to end of stream (a
    final ``\\n`` removed), decoded as UTF-8 (undecodable bytes become
    U+FFFD); a server that closes without a word gives ``""``.

    ``timeout`` bounds the whole exchange, connecting included, in seconds;
    zero, a negative number or None waits as long as it takes. Returns None
    if the time runs out first. Raises OSError if the server cannot be
    reached (``ConnectionRefusedError`` when nobody listens), and
    RemoteProtocolError for a reply longer than ``max_size`` bytes.

    ``ssl`` is an ``ssl.SSLContext`` to speak TLS with (see
    :func:`evloop.tls.make_client_context`); the server's certificate is
    checked against the host. A TLS stream cannot be half-closed without
    ending the session, so over TLS the request is ended by its ``\\r\\n``
    alone; ``ssl.SSLError`` (an OSError) reports a failed handshake.
    """
    if not isinstance(request, str):
        raise TypeError(f"the request must be str, not {type(request).__name__}")
    host, port = split_address(address)
    data = request.encode("utf-8")
    if not data.endswith(CRLF):
        data += CRLF
    deadline = None if timeout is None or timeout <= 0 else time.monotonic() + timeout
    try:
        sock = _open_connection(host, port, _remaining(deadline), ssl)
    except TimeoutError:
        return None
    with sock:
        try:
            sock.sendall(data)
            if ssl is None:
                # The half-close is the request's end of stream: a server
                # that reads to the end of stream stops there.
                sock.shutdown(socket.SHUT_WR)
            reply = _read_reply(sock, deadline, max_size)
        except TimeoutError:
            return None
    return reply


def _remaining(deadline: Optional[float]) -> Optional[float]:
    """Seconds left before ``deadline`` (None: no limit). Raises TimeoutError
    once it has passed."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("do_request timed out")
    return left


def _open_connection(host: str, port: int, timeout: Optional[float], context: Any = None) -> socket.socket:
    # The one place a transport is made; with TLS the handshake is done
    # here, within the same timeout.
    sock = socket.create_connection((host, port), timeout=timeout)
    if context is not None:
        try:
            sock = context.wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
    return sock


def _read_reply(sock: socket.socket, deadline: Optional[float], max_size: int) -> str:
    """The reply's first line, or everything to end of stream."""
    framer = LineFramer(max_size, CRLF, eof_ends_line=True)
    while True:
        sock.settimeout(_remaining(deadline))
        chunk = sock.recv(65536)
        if chunk:
            framer.feed(chunk)
        else:
            framer.feed_eof()
        line = framer.next_request()
        if line is not NEED_DATA:
            if not chunk and line.endswith(b"\n"):
                line = line[:-1]
            return str(line.decode("utf-8", "replace"))
        if not chunk:
            return ""
