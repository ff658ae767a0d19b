"""The framer contract, and the handler that plugs any framer into the loop.

A framer is sans-I/O (h11's ``receive_data`` / ``next_event``): it is fed
bytes and hands back whole requests, and knows nothing of sockets or
selectors, so it can be tested on its own, in any chunking.

- ``feed(data)`` appends bytes; ``feed_eof()`` says no more will come.
- ``next_request()`` returns the next whole request, or :data:`NEED_DATA`
  when more bytes are needed. It raises
  :class:`~evloop.RemoteProtocolError` when the bytes break the protocol
  (including a stream that ended inside a request), and keeps raising it.
- ``encode(message)`` returns the bytes that carry ``message`` the other way.
- ``max_size`` bounds the bytes one request may buffer; a length prefix is
  checked against it before it is trusted.

:class:`FramedHandler` is the glue: it feeds what the loop reads to its
framer and answers each request with ``make_response()``, the same hook the
recipe's handlers override.
"""

from typing import Any, Optional

from evloop import ClientHandler, RemoteProtocolError, RequestTooLargeError
from evloop.states import BACKLOGGED, OPEN, STATE_MASK

__all__ = ["NEED_DATA", "FramedHandler", "Framer", "StringReceiverHandler"]


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"

    def __reduce__(self) -> str:
        return "NEED_DATA"


# The connection's state bits a request loop looks at: OPEN and nothing
# held back is the one state in which it takes the next request.
_HOLDS_REQUESTS = STATE_MASK | BACKLOGGED

#: What ``next_request()`` returns while no whole request is buffered.
NEED_DATA: Any = _NeedData()


class Framer:
    """Base of the framers: a receive buffer, the end-of-stream flag and the
    size limit. Subclasses implement :meth:`next_request` and :meth:`encode`."""

    #: Default bound on the bytes of one request.
    default_max_size = 1024 * 1024

    __slots__ = ("_buffer", "_eof", "max_size", "_error")

    def __init__(self, max_size: Optional[int] = None) -> None:
        self._buffer = bytearray()
        self._eof = False
        self.max_size = self.default_max_size if max_size is None else max_size
        self._error: Optional[RemoteProtocolError] = None

    def feed(self, data: bytes) -> None:
        """Append bytes received from the peer (dropped once the stream has
        broken the protocol: they will never be parsed)."""
        if self._eof:
            raise RuntimeError("feed() after feed_eof()")
        if self._error is None:
            self._buffer += data

    def feed_eof(self) -> None:
        """The peer will send nothing more."""
        self._eof = True

    @property
    def buffered(self) -> int:
        """Bytes received and not yet handed out as a request."""
        return len(self._buffer)

    def next_request(self) -> Any:
        """The next whole request, or NEED_DATA. Raises RemoteProtocolError."""
        raise NotImplementedError

    def encode(self, message: Any) -> bytes:
        """The bytes that carry ``message`` to the peer."""
        raise NotImplementedError

    def _fail(
        self, message: str, reply: Optional[bytes] = None, *, too_large: bool = False
    ) -> RemoteProtocolError:
        """Remember the first violation so the framer keeps refusing.
        ``too_large``: a request over the size limit
        (:class:`~evloop.RequestTooLargeError`, counted apart by the metrics)."""
        error = (RequestTooLargeError if too_large else RemoteProtocolError)(message, reply=reply)
        self._error = error
        self._buffer.clear()
        return error

    def _truncated(self) -> RemoteProtocolError:
        return self._fail(f"the stream ended inside a request ({len(self._buffer)} bytes buffered)")


class FramedHandler(ClientHandler):
    """A handler whose requests come from a framer.

    Set ``framer_class`` (or override :meth:`make_framer`); override
    :meth:`make_response`, which finds the current request in
    ``self.request``. (socketserver users: the socket is
    ``self.client_socket``.) ``max_size`` is handed to the framer (None: the
    server's ``Limits.max_request_size``, else the framer's own default).
    Persistent by default: ``close_when_done = False``.
    """

    close_when_done = False
    framer_class: Any = None
    max_size: Optional[int] = None

    __slots__ = ("_framer", "request")

    def __init__(self, server: Any, client_socket: Any, client_address: Any) -> None:
        super().__init__(server, client_socket, client_address)
        # Made with the first bytes (or first use), so an idle connection
        # carries no framer and no buffer.
        self._framer: Optional[Framer] = None
        self.request: Any = None

    @property
    def framer(self) -> Framer:
        """This connection's framer."""
        framer = self._framer
        if framer is None:
            framer = self._framer = self.make_framer()
        return framer

    def discard_input(self) -> None:
        """The connection closed: the framer and its buffer go now."""
        super().discard_input()
        self._framer = None

    def make_framer(self) -> Framer:
        """The framer for this connection."""
        framer: Framer = self.framer_class(self.request_size_limit())
        return framer

    def request_size_limit(self) -> Optional[int]:
        """The bound handed to the framer: the class's ``max_size``, else the
        server's ``Limits.max_request_size``; None leaves the framer's own
        default."""
        return self.max_size if self.max_size is not None else self.limits.max_request_size

    def pending_input(self) -> int:
        """Bytes of an incomplete request the framer holds (for the request timeout)."""
        framer = self._framer
        return framer.buffered if framer is not None else 0

    def held_memory(self) -> int:
        """Bytes the framer holds (for the server's client memory budget)."""
        framer = self._framer
        return framer.buffered if framer is not None else 0

    def data_received(self, data: bytes) -> None:
        framer = self._framer
        if framer is None:
            framer = self.framer
        framer.feed(data)
        self.answer_requests()

    def eof_received(self) -> None:
        self.framer.feed_eof()
        self.answer_requests()

    def answer_requests(self) -> None:
        """Answer every whole request the framer holds, in order, until the
        connection closes or its queued output passes the high-water mark
        (then :meth:`resume_writing` goes on)."""
        connection = self.connection
        if connection.flags & _HOLDS_REQUESTS != OPEN:
            return  # closing, or requests held back (the output is over the mark)
        next_request = self.framer.next_request
        send = self.send
        make_response = self.make_response
        answered = 0
        try:
            while True:
                request = next_request()
                if request is NEED_DATA:
                    return
                self.request = request
                answered += 1
                if not send(make_response()):
                    return  # closing, or the output is over the high-water mark
                if self.close_when_done:
                    self.close_when_sent()
                    return
        finally:
            connection.loop.requests += answered  # once per read, not per request

    def resume_writing(self) -> None:
        """The output is down to the low-water mark: answer what is held."""
        if self._framer is not None:
            self.answer_requests()


class StringReceiverHandler(FramedHandler):
    """A framed handler in Twisted's ``*StringReceiver`` shape: each request
    is a byte string handed to :meth:`string_received`, and a reply is one
    message in the same framing (the netstring and int32 handlers)."""

    __slots__ = ()

    def string_received(self, string: bytes) -> Optional[bytes]:
        """Handle one message. A return value other than None is sent back
        as one message."""
        raise NotImplementedError(f"{type(self).__name__} must override string_received()")

    def send_string(self, string: bytes) -> None:
        """Send ``string`` as one message, after anything already queued."""
        self.send(self.framer.encode(string))

    def make_response(self) -> Any:
        reply = self.string_received(self.request)
        return None if reply is None else self.framer.encode(reply)
