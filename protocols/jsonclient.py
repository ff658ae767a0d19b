"""A blocking client for JSON messages, with jsocket's API.

    with JsonClient("127.0.0.1", 5489, timeout=2.0) as client:
        client.send_obj({"message": "new connection"})
        reply = client.read_obj()

Theory of operation. One blocking socket with a timeout and one
:class:`~evloop.protocols.jsonmsg.JsonFramer`: ``send_obj`` encodes a whole message
and sends it in one ``sendall``; ``read_obj`` hands out the next message the
framer holds and only reads the socket when it holds none, so replies that
arrive together (pipelining) cost one ``recv``.

Errors say what happened, and whether the connection survives it:

- :class:`JsonTimeoutError` (a ``TimeoutError``): no byte came within ``timeout``
  seconds of one wait. After a read timeout the connection stays usable:
  bytes of a half-received message stay buffered, so the next ``read_obj``
  goes on where this one stopped (jsocket closes instead). A send that timed
  out may have sent part of a message, so it closes the connection.
- :class:`JsonConnectionError` (a ``ConnectionError``): ``connect()`` failed.
  :class:`JsonDisconnectedError`, its subclass: the server closed or reset the
  connection, or it was never opened.
- :class:`~evloop.RemoteProtocolError`: the server's bytes broke the framing
  (bad magic, oversize length, checksum, UTF-8, JSON); the connection closes.
- :class:`~evloop.LocalProtocolError`: ``send_obj`` was given something that
  is not JSON-serialisable or is over ``max_message_size``; nothing is sent
  and the connection stays open.
"""

import socket
from typing import Any, Optional

from evloop import RemoteProtocolError

from .framing import NEED_DATA
from .jsonmsg import DEFAULT_MAX_SIZE, JsonFramer

__all__ = ["JsonClient", "JsonConnectionError", "JsonDisconnectedError", "JsonTimeoutError"]

_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


class JsonTimeoutError(TimeoutError):
    """The server sent or took nothing within the timeout."""


class JsonConnectionError(ConnectionError):
    """The connection could not be made."""


class JsonDisconnectedError(JsonConnectionError):
    """The connection is gone (or was never opened)."""


class JsonClient:
    """A blocking JSON message client, jsocket's ``JsonClient`` API.

    ``address`` is a host name or an IPv4/IPv6 address; ``timeout`` (seconds,
    None for none) bounds the connect and each wait for the socket.
    ``max_message_size`` bounds a message either way (jsocket's default,
    10 MiB). ``ssl`` is an ``ssl.SSLContext`` to speak TLS with (see
    :func:`evloop.tls.make_client_context`); the server's certificate is
    checked against ``address``. ``connect()`` opens the connection; as a
    context manager the client connects on entry (if not yet connected) and
    closes on exit.
    """

    #: Most bytes asked of one recv(): a pipelined batch of replies, or a
    #: large message in few calls.
    recv_size = 256 * 1024

    def __init__(
        self,
        address: str = "127.0.0.1",
        port: int = 5489,
        timeout: Optional[float] = 2.0,
        *,
        max_message_size: int = DEFAULT_MAX_SIZE,
        ssl: Any = None,
    ) -> None:
        self._address = address
        self._ssl = ssl
        self._port = port
        self._timeout = timeout
        self.max_message_size = max_message_size
        self.socket: Optional[socket.socket] = None
        self._framer = JsonFramer(max_message_size)

    # -- jsocket's API --------------------------------------------------------

    def connect(self) -> bool:
        """Connect to the server; return True (as jsocket does). Connecting
        an open client does nothing. Raises JsonTimeoutError or
        JsonConnectionError. Unlike jsocket, fails at once instead of
        retrying ten times three seconds apart."""
        if self.socket is not None:
            return True
        try:
            sock = self._open_socket()
        except TimeoutError as exc:
            raise JsonTimeoutError(
                f"cannot connect to {self._where()}: no answer within {self._timeout} seconds"
            ) from exc
        except OSError as exc:
            raise JsonConnectionError(f"cannot connect to {self._where()}: {exc.strerror or exc}") from exc
        self.socket = sock
        self._framer = JsonFramer(self.max_message_size)
        return True

    def send_obj(self, obj: Any) -> None:
        """Send ``obj`` as one message. Raises LocalProtocolError (not
        JSON-serialisable, too big: nothing sent), JsonTimeoutError or
        JsonDisconnectedError (the connection is then closed)."""
        data = self._framer.encode(obj)
        sock = self._connected_socket()
        try:
            sock.sendall(data)
        except TimeoutError as exc:
            self.close()
            raise JsonTimeoutError(
                f"{self._where()} took no data for {self._timeout} seconds; "
                f"the message may be half sent, so the connection is closed"
            ) from exc
        except OSError as exc:
            self.close()
            raise JsonDisconnectedError(
                f"connection to {self._where()} lost while sending: {exc.strerror or exc}"
            ) from exc

    def read_obj(self) -> Any:
        """Wait for the next message and return it decoded. Raises
        JsonTimeoutError (the connection stays usable), JsonDisconnectedError (the
        server closed the connection, between messages or inside one) or
        RemoteProtocolError (broken framing; the connection is closed)."""
        framer = self._framer
        try:
            obj = framer.next_request()
            while obj is NEED_DATA:
                framer.feed(self._recv())
                obj = framer.next_request()
                if obj is NEED_DATA and _TCP_QUICKACK is not None:
                    self._ack_now()
        except RemoteProtocolError:
            self.close()
            raise
        return obj

    def close(self) -> None:
        """Close the connection. Idempotent; ``connect()`` may open it again."""
        sock, self.socket = self.socket, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    # -- jsocket's properties -------------------------------------------------

    @property
    def address(self) -> str:
        return self._address

    @property
    def port(self) -> int:
        return self._port

    @property
    def timeout(self) -> Optional[float]:
        return self._timeout

    @timeout.setter
    def timeout(self, seconds: Optional[float]) -> None:
        self._timeout = seconds
        if self.socket is not None:
            self.socket.settimeout(seconds)

    @property
    def connected(self) -> bool:
        return self.socket is not None

    def __enter__(self) -> "JsonClient":
        self.connect()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "connected" if self.socket is not None else "not connected"
        return f"<JsonClient {self._where()} {state}>"

    # -- internals ------------------------------------------------------------

    def _open_socket(self) -> socket.socket:
        """The connected socket (TLS-wrapped, handshake done, with ``ssl``).
        The one place a transport is made."""
        sock = socket.create_connection((self._address, self._port), self._timeout)
        try:
            # One sendall per message, so Nagle would only delay it.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        if self._ssl is not None:
            try:
                sock = self._ssl.wrap_socket(sock, server_hostname=self._address)
            except BaseException:
                sock.close()
                raise
        return sock

    def _connected_socket(self) -> socket.socket:
        sock = self.socket
        if sock is None:
            raise JsonDisconnectedError(f"not connected to {self._where()}; call connect() first")
        return sock

    def _recv(self) -> bytes:
        sock = self._connected_socket()
        try:
            data = sock.recv(self.recv_size)
        except TimeoutError as exc:
            raise JsonTimeoutError(f"no message from {self._where()} within {self._timeout} seconds") from exc
        except OSError as exc:
            self.close()
            raise JsonDisconnectedError(f"connection to {self._where()} lost: {exc.strerror or exc}") from exc
        if not data:
            partial = self._framer.buffered
            self.close()
            if partial:
                raise JsonDisconnectedError(
                    f"{self._where()} closed the connection inside a message ({partial} bytes of it received)"
                )
            raise JsonDisconnectedError(f"{self._where()} closed the connection")
        return data

    def _ack_now(self) -> None:
        # Part of a message is in. A server that sends a header and its
        # payload in two send() calls with Nagle on (jsocket's does) holds
        # the payload until we acknowledge the header, and delayed ACK would
        # make that ~40 ms: acknowledge at once (Linux).
        sock = self.socket
        if sock is not None and _TCP_QUICKACK is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
            except OSError:
                pass

    def _where(self) -> str:
        host = self._address
        return f"[{host}]:{self._port}" if ":" in str(host) else f"{host}:{self._port}"
