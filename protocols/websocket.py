"""WebSocket (RFC 6455) on the loop: wsproto frames, this module is the glue.

Theory of operation. A :class:`WebSocketHandler` subclass is routed at a
path like any HTTP target (:mod:`evloop.protocols.routing`). When a request for that
path arrives, :meth:`WebSocketHandler.accept_upgrade` checks the opening
handshake (RFC 6455 section 4.2.1) and answers either an HTTP error or a
:class:`~evloop.protocols.http.SwitchProtocols`; after the ``101`` the HTTP handler
hands every byte it reads to one instance of the class, on the same
connection, port and loop. (As in ws4py, the class is chosen per path.)

The instance feeds those bytes to a ``wsproto`` connection and turns its
events into calls: :meth:`opened`, :meth:`received_message` (str for text,
bytes for binary, reassembled from fragments), :meth:`closed` once, with the
close code. wsproto checks framing, masking, control-frame rules, close
codes and UTF-8 (incrementally, so a bad text message fails at its first
bad byte); every violation fails the connection with the code it names
(1002 protocol error, 1007 invalid payload) and the message size limit
fails it with 1009. Failing means: a warning log line with the peer's
address, a Close frame with that code, then the TCP connection closes
(RFC 6455 section 7.1.7); other connections are not touched.

The close handshake (section 7): a peer's Close is answered with a Close
echoing its code, then the server closes TCP (section 7.1.1: the server
closes first). :meth:`close` sends ours and waits ``close_timeout`` seconds
for the answer. Keepalive: every ``ping_interval`` seconds a Ping goes out;
no Pong within ``ping_timeout`` closes the connection (closed() gets 1006).
Both use loop timers.

Bounded work. Each frame of a message counts at least ``min_frame_cost``
bytes against ``max_message_size``, however small its payload: a frame costs
wsproto as much CPU as kilobytes of payload in one frame, so a message in
tiny fragments meets its 1009 after a bounded number of frames (256 at the
defaults), and the list of parts stays short. At most ``events_per_pass``
wsproto events are handled per loop pass: past that, reading pauses and the
rest is handled on the next pass (``loop.call_soon``), so one busy
connection cannot hold the loop.

permessage-deflate (RFC 7692) is negotiated when the client offers it
(:mod:`evloop.protocols.ws_deflate`); its inflater never makes more than
``max_message_size`` bytes of one message.

Sending: :meth:`send` frames one message; :func:`broadcast` frames a message
once and queues the same bytes on many sockets (server frames are unmasked,
and a broadcast is sent uncompressed, so they are identical).
"""

import base64
import binascii
import hashlib
import itertools
import logging
import os
from typing import Any, Iterable, List, Optional, Sequence, Union

try:
    from wsproto.connection import Connection as WSConnection
    from wsproto.connection import ConnectionState, ConnectionType
    from wsproto.events import BytesMessage, CloseConnection, Message, Ping, Pong, TextMessage
    from wsproto.frame_protocol import CloseReason, FrameProtocol
except ModuleNotFoundError as exc:  # wsproto is the websocket extra, not a core dependency
    raise ModuleNotFoundError(
        f"evloop.protocols.websocket needs {exc.name}: pip install 'evloop-server[websocket]'",
        name=exc.name,
    ) from exc

from evloop import RemoteProtocolError
from evloop.logs import loop_warnings

from .http import HTTPError, Request, SwitchProtocols, error_response
from .ws_deflate import BoundedDeflate, negotiate

__all__ = ["CloseReason", "EchoWebSocket", "WebSocketHandler", "accept_key", "broadcast"]

logger = logging.getLogger("evloop.websocket")

# RFC 6455 section 1.3: the GUID appended to the key for Sec-WebSocket-Accept.
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# RFC 6455 section 7.4.1 codes used here.
NORMAL = 1000
GOING_AWAY = 1001
INVALID_PAYLOAD = 1007
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011
ABNORMAL = 1006


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 section 4.2.2)."""
    digest = hashlib.sha1(key.encode("ascii") + _GUID).digest()
    return base64.b64encode(digest).decode("ascii")


class WebSocketHandler:
    """One open WebSocket. Subclass it and override the hooks:

    - :meth:`opened`: the handshake is done; :meth:`send` may be used;
    - :meth:`received_message`: a whole message, str (text) or bytes;
    - :meth:`closed`: once, when the connection is gone, with the close code
      (the peer's, ours, or 1006 if it was dropped without a Close frame).

    Class attributes: ``subprotocols`` (accepted ``Sec-WebSocket-Protocol``
    values, preferred first), ``allowed_origins`` (None: any ``Origin``),
    ``max_message_size`` (bytes; 1009 beyond), ``ping_interval`` and
    ``ping_timeout`` (seconds; None turns keepalive off), ``close_timeout``,
    ``max_backlog`` (bytes queued for a client that does not read; past it
    the connection is dropped before more is queued), ``min_frame_cost``
    (the least each frame of a message counts against ``max_message_size``),
    ``events_per_pass`` (wsproto events handled per loop pass),
    ``compression`` (negotiate permessage-deflate when offered) and
    ``compress_min_size`` (smaller messages are sent uncompressed).

    Attributes: ``request`` (the upgrade :class:`~evloop.protocols.http.Request`),
    ``connection`` (its HTTP handler), ``loop``, ``peer``, ``subprotocol``,
    ``deflate`` (the negotiated permessage-deflate, or None),
    ``close_code`` and ``close_reason`` (once closing).
    """

    subprotocols: Sequence[str] = ()
    allowed_origins: Optional[Iterable[str]] = None
    max_message_size = 1024 * 1024
    ping_interval: Optional[float] = 20.0
    ping_timeout: Optional[float] = 20.0
    close_timeout = 5.0
    max_backlog: Optional[int] = 16 * 1024 * 1024
    # A frame costs wsproto about 9 us, what some 2 KB of payload cost in
    # one frame, end to end: counted as at least 4 KiB, a message in tiny
    # frames costs at most about twice its budget in CPU, and a 1 MiB limit
    # stops one after 256 frames. Larger frames count their size. (The cost
    # is capped at max_message_size / 64, so any limit allows 64 frames.)
    min_frame_cost = 4096
    events_per_pass = 128
    compression = True
    compress_min_size = 64

    def __init__(
        self,
        connection: Any,
        request: Request,
        subprotocol: Optional[str] = None,
        deflate: Optional[BoundedDeflate] = None,
    ) -> None:
        self.connection = connection
        self.request = request
        self.loop = connection.loop
        self.subprotocol = subprotocol
        self.deflate = deflate
        self.close_code: Optional[int] = None
        self.close_reason = ""
        self._ws = WSConnection(ConnectionType.SERVER, extensions=[deflate] if deflate else None)
        self._parts: List[Any] = []
        self._size = 0
        self._draining = False  # events are left over for the next pass
        # A small limit still lets a message have 64 frames.
        self._frame_cost = min(self.min_frame_cost, self.max_message_size // 64)
        self._frame_size = 0  # payload bytes of the frame being received
        self._ended = False  # closed() has run
        self._failed = False  # no more input is looked at
        self._ping_payload: Optional[bytes] = None
        self._ping_timer: Any = None
        self._pong_timer: Any = None
        self._close_timer: Any = None

    # -- hooks --------------------------------------------------------------

    def opened(self) -> None:
        """The WebSocket is open."""

    def received_message(self, message: Union[str, bytes]) -> None:
        """A whole message arrived: str for a text message, bytes for binary."""

    def closed(self, code: int, reason: str = "") -> None:
        """The connection is gone; called once."""

    # -- what a handler calls -------------------------------------------------

    @property
    def peer(self) -> str:
        return str(self.connection.peer)

    @property
    def is_open(self) -> bool:
        """True while messages can be sent (no Close sent or received)."""
        return self._ws.state is ConnectionState.OPEN and not self.connection.closed

    def send(self, message: Union[str, bytes, bytearray, memoryview], binary: Optional[bool] = None) -> bool:
        """Send one message: str as text, bytes as binary (``binary`` forces
        either). Returns False, sending nothing, once the socket is closing."""
        if not self.is_open or self._backlog_too_long():
            return False
        if binary is True and isinstance(message, str):
            message = message.encode("utf-8")
        elif binary is False and not isinstance(message, str):
            message = bytes(message).decode("utf-8")
        event: Message[Any] = (
            TextMessage(data=message) if isinstance(message, str) else BytesMessage(data=bytes(message))
        )
        frame = self._ws.send(event)
        self.connection.send(frame)
        return True

    def _backlog_too_long(self) -> bool:
        """A client that reads slower than we send (a broadcast it cannot
        keep up with) is dropped once ``max_backlog`` bytes wait for it,
        before more are queued: memory stays bounded for everyone else."""
        limit = self.max_backlog
        queued = self.connection.buffered_output  # O(1): the engine keeps the count
        if limit is None or queued <= limit:
            return False
        loop_warnings(self.connection.loop).warn(
            "websocket-send-backlog",
            "%s: %d bytes queued and not read (over %d); dropping the connection",
            self.peer,
            queued,
            limit,
            log=logger,
        )
        self.close_code, self.close_reason = ABNORMAL, "send backlog over the limit"
        self._failed = True
        self._stop_keepalive()
        self.connection.close()
        return True

    def ping(self, payload: bytes = b"") -> bool:
        """Send a Ping (at most 125 bytes of payload, RFC 6455 section 5.5)."""
        if not self.is_open:
            return False
        self.connection.send(self._ws.send(Ping(payload=payload)))
        return True

    def close(self, code: int = NORMAL, reason: str = "") -> None:
        """Start the close handshake (RFC 6455 section 7.1.2); the connection
        closes when the peer answers, or after ``close_timeout`` seconds."""
        if not self.is_open:
            return
        self.close_code, self.close_reason = code, reason
        self.connection.send(self._ws.send(CloseConnection(code=code, reason=reason or None)))
        self._stop_keepalive()
        self._close_timer = self.loop.call_later(self.close_timeout, self._close_timed_out)

    def broadcast(self, message: Union[str, bytes], *, include_self: bool = True) -> int:
        """Send ``message`` to every open socket of this class on this loop.
        Returns how many it was queued for."""
        targets = self.open_sockets(self.loop)
        if not include_self:
            targets = [socket for socket in targets if socket is not self]
        return broadcast(targets, message)

    @classmethod
    def open_sockets(cls, loop: Any) -> List["WebSocketHandler"]:
        """The open sockets of this class (and its subclasses) on ``loop``."""
        sockets = []
        for handler in loop.handlers:
            upgraded = getattr(handler, "upgraded", None)
            if isinstance(upgraded, cls) and upgraded.is_open:
                sockets.append(upgraded)
        return sockets

    # -- the opening handshake ------------------------------------------------

    @classmethod
    def accept_upgrade(cls, request: Request) -> Any:
        """Check the client's opening handshake (RFC 6455 section 4.2.1) and
        answer a SwitchProtocols to this class, or an HTTP error response."""
        if request.method != "GET":
            raise HTTPError(405, "a WebSocket handshake is a GET", [("Allow", "GET")])
        upgrade = request.header_tokens("upgrade")
        if "websocket" not in upgrade or "upgrade" not in request.header_tokens("connection"):
            # RFC 9110 section 15.5.22: 426 says which protocol to upgrade to.
            return error_response(
                426, "this path speaks WebSocket", [("Upgrade", "websocket"), ("Connection", "Upgrade")]
            )
        if request.http_version < "1.1":
            return error_response(400, "a WebSocket handshake needs HTTP/1.1")
        version = request.header("sec-websocket-version", "")
        if version != "13":
            # RFC 6455 section 4.4: say which versions we speak.
            return error_response(
                426, f"unsupported WebSocket version {version!r}", [("Sec-WebSocket-Version", "13")]
            )
        key = request.header("sec-websocket-key", "") or ""
        try:
            # Section 4.1: the key is 16 random bytes, base64-encoded.
            valid_key = len(base64.b64decode(key.encode("ascii"), validate=True)) == 16
        except (binascii.Error, UnicodeEncodeError):
            valid_key = False
        if not valid_key:
            return error_response(400, f"bad Sec-WebSocket-Key {key!r}")
        if cls.allowed_origins is not None:
            origin = request.header("origin")
            if origin not in set(cls.allowed_origins):
                # Section 4.2.2 step 4: refuse an origin we do not serve.
                logger.warning("%s: WebSocket from origin %r refused", request.peer, origin)
                return error_response(403, "origin not allowed")
        offered = request.header_tokens("sec-websocket-protocol")
        subprotocol = next((name for name in cls.subprotocols if name.lower() in offered), None)
        headers = [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", accept_key(key)),
        ]
        if subprotocol is not None:
            headers.append(("Sec-WebSocket-Protocol", subprotocol))
        deflate = None
        offers = request.header("sec-websocket-extensions")
        if cls.compression and offers:
            # RFC 7692 section 5: accept the first permessage-deflate offer
            # we can honour; otherwise answer with no extension at all.
            accepted = negotiate([offers], cls.max_message_size, cls.compress_min_size)
            if accepted is not None:
                headers.append(("Sec-WebSocket-Extensions", accepted[0]))
                deflate = accepted[1]

        return SwitchProtocols(headers, lambda connection: cls(connection, request, subprotocol, deflate))

    # -- what the HTTP handler calls -------------------------------------------

    def switched(self, trailing: bytes) -> None:
        self._start_keepalive()
        self._call(self.opened)
        if trailing:
            self.data_received(trailing)

    def data_received(self, data: bytes) -> None:
        if self._failed or self._ws.state is ConnectionState.CLOSED:
            return
        self._ws.receive_data(data)
        self._handle_events()

    def _handle_events(self) -> None:
        """Handle at most ``events_per_pass`` events; if that many came, more
        may wait in wsproto's buffer: stop reading (TCP holds the rest) and
        come back on the next pass, after the other connections' turns."""
        ws = self._ws
        handled = 0
        for event in itertools.islice(ws.events(), self.events_per_pass):
            handled += 1
            if isinstance(event, Message):
                self._message_part(event)
            elif isinstance(event, Ping):
                # RFC 6455 section 5.5.3: a Pong carries the Ping's data.
                if ws.state is ConnectionState.OPEN:
                    self.connection.send(ws.send(event.response()))
            elif isinstance(event, Pong):
                self._pong_received(event.payload)
            elif isinstance(event, CloseConnection):
                self._close_received(event)
            if self._failed or self.connection.closed:
                return
        more = handled >= self.events_per_pass
        if more and not self._draining:
            self.connection.pause_reading()
        elif not more and self._draining:
            self.connection.resume_reading()
        self._draining = more
        if more:
            self.loop.call_soon(self._next_pass)

    def _next_pass(self) -> None:
        # Outside an I/O callback the engine does not sort our exceptions:
        # hand them to the connection's handler, as a read would.
        if self._failed or self.connection.closed or self._ws.state is ConnectionState.CLOSED:
            return
        try:
            self._handle_events()
        except Exception as exc:
            self.connection.handle_error(exc)

    def held_memory(self) -> int:
        """Bytes of the message being received (each frame counted at least
        ``min_frame_cost``), for the server's client memory budget."""
        return self._size

    def eof_received(self) -> None:
        # The TCP stream ended; without a Close frame that is 1006 (RFC 6455
        # section 7.1.5). The engine closes the connection after this.
        if self.close_code is None:
            self.close_code = ABNORMAL
        self._failed = True

    def connection_lost(self) -> None:
        self._parts, self._size = [], 0  # a message cut short: its parts go now
        self._stop_keepalive()
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if not self._ended:
            self._ended = True
            code = self.close_code if self.close_code is not None else ABNORMAL
            self._call(self.closed, code, self.close_reason)

    # -- incoming events --------------------------------------------------------

    def _message_part(self, event: "Message[Any]") -> None:
        data = event.data
        if isinstance(data, str):
            size = len(data) if data.isascii() else len(data.encode("utf-8"))
        else:
            size = len(data)
        self._size += size
        self._frame_size += size
        if event.frame_finished:
            if not event.message_finished and self._frame_size < self._frame_cost:
                # A frame counts at least _frame_cost bytes, however many
                # reads it came in (the last one is not charged: nothing
                # follows it, and a message that fits is not refused).
                self._size += self._frame_cost - self._frame_size
            self._frame_size = 0
        if self._size > self.max_message_size:
            # RFC 6455 section 7.4.1: 1009, a message too big to process.
            self._fail(MESSAGE_TOO_BIG, f"message over {self.max_message_size} bytes")
        self._parts.append(data)
        if event.message_finished:
            parts, self._parts, self._size = self._parts, [], 0
            if len(parts) == 1:
                message = parts[0]
            else:
                message = "".join(parts) if isinstance(data, str) else b"".join(parts)
            if isinstance(message, bytearray):
                message = bytes(message)
            self._call(self.received_message, message)

    def _close_received(self, event: CloseConnection) -> None:
        ws = self._ws
        if ws.state is ConnectionState.REMOTE_CLOSING:
            # RFC 6455 section 5.5.1: answer a Close with a Close, echoing its
            # code; section 7.1.1: then the server closes the TCP connection.
            self.close_code, self.close_reason = event.code, event.reason or ""
            self.connection.send(ws.send(event.response()))
            self._finish_closing()
        elif ws.state is ConnectionState.CLOSED:
            # The answer to our Close (section 7.1.2): the handshake is done.
            self._finish_closing()
        else:
            # wsproto reports a violation as a CloseConnection while the state
            # stays as it was: fail the connection with the code it names
            # (section 7.1.7; 1002 protocol error, 1007 bad payload, 1009
            # from the inflater: RFC 7692 with a bound, see ws_deflate).
            reason = event.reason or "protocol error"
            if event.code == MESSAGE_TOO_BIG:
                reason = f"compressed message inflates past {self.max_message_size} bytes"
            elif event.code == INVALID_PAYLOAD:
                # wsproto's reason is the decoder's message, whose byte
                # position depends on how the frame was cut into reads: the
                # Close must not (found by fuzz/fuzz.py websocket).
                reason = "invalid UTF-8"
            self._fail(event.code, reason)

    def _finish_closing(self) -> None:
        self._failed = True
        self._stop_keepalive()
        self.connection.close_when_sent()

    def _fail(self, code: int, reason: str) -> None:
        """_Fail the WebSocket Connection_ (RFC 6455 section 7.1.7): a Close
        with ``code`` if none was sent yet, then close TCP. Raised as the
        peer's protocol error, so the engine logs it and closes."""
        self._failed = True
        self._stop_keepalive()
        reply = None
        if self._ws.state is ConnectionState.OPEN:
            self.close_code, self.close_reason = code, reason
            reply = bytes(self._ws.send(CloseConnection(code=code, reason=reason[:100])))
        raise RemoteProtocolError(f"WebSocket {code}: {reason}", reply=reply)

    def _call(self, hook: Any, *args: Any) -> None:
        """Run an application hook; an exception there is our bug, not the
        peer's: log it and close with 1011 (RFC 6455 section 7.4.1)."""
        try:
            hook(*args)
        except Exception:
            logger.exception("%s: error in %s.%s", self.peer, type(self).__name__, hook.__name__)
            if self.is_open:
                self.close(INTERNAL_ERROR, "internal error")

    # -- timers -----------------------------------------------------------------

    def _start_keepalive(self) -> None:
        if self.ping_interval is not None and self.is_open:
            self._ping_timer = self.loop.call_later(self.ping_interval, self._send_keepalive_ping)

    def _stop_keepalive(self) -> None:
        for timer in (self._ping_timer, self._pong_timer):
            if timer is not None:
                timer.cancel()
        self._ping_timer = self._pong_timer = None

    def _send_keepalive_ping(self) -> None:
        self._ping_timer = None
        if not self.is_open:
            return
        self._ping_payload = os.urandom(4)
        self.ping(self._ping_payload)
        if self.ping_timeout is not None:
            self._pong_timer = self.loop.call_later(self.ping_timeout, self._ping_timed_out)

    def _pong_received(self, payload: bytes) -> None:
        # Section 5.5.3: an unsolicited Pong is a heartbeat and needs no answer.
        if self._ping_payload is not None and payload == self._ping_payload:
            self._ping_payload = None
            if self._pong_timer is not None:
                self._pong_timer.cancel()
                self._pong_timer = None
            self._start_keepalive()

    def _ping_timed_out(self) -> None:
        self._pong_timer = None
        if self.connection.closed:
            return
        logger.info("%s: no Pong within %ss; closing", self.peer, self.ping_timeout)
        # The peer is not answering: a Close handshake would only wait too.
        self.close_code, self.close_reason = ABNORMAL, "keepalive ping timeout"
        self._failed = True
        if self._ws.state is ConnectionState.OPEN:
            self.connection.send(
                self._ws.send(CloseConnection(code=GOING_AWAY, reason="keepalive ping timeout"))
            )
        self.connection.close_when_sent()

    def idle_timed_out(self, seconds: float) -> None:
        """The engine's idle timeout fired (no byte either way for that long;
        keepalive pings prevent it): say goodbye with 1001 and close."""
        logger.info("%s: WebSocket idle for %gs; closing", self.peer, seconds)
        self.going_away("idle")

    def going_away(self, reason: str) -> None:
        """Close with 1001 Going Away (RFC 6455 section 7.4.1) without
        waiting for the peer's answer: the server is leaving, or the
        connection has been idle too long."""
        if self.is_open:
            self.close_code, self.close_reason = GOING_AWAY, reason
            self.connection.send(self._ws.send(CloseConnection(code=GOING_AWAY, reason=reason)))
        self._failed = True
        self._stop_keepalive()
        self.connection.close_when_sent()

    def _close_timed_out(self) -> None:
        self._close_timer = None
        if not self.connection.closed:
            logger.info("%s: no answer to our Close within %ss", self.peer, self.close_timeout)
            self.connection.close()

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"<{type(self).__name__} {self.peer} {self.request.path!r} {state}>"


class EchoWebSocket(WebSocketHandler):
    """Sends every message back as it came: text as text, binary as binary."""

    def received_message(self, message: Union[str, bytes]) -> None:
        self.send(message)


# Server frames carry no mask, so a message's frame is the same bytes for
# every socket: frame it once.
_encoder = FrameProtocol(client=False, extensions=[])


def broadcast(sockets: Iterable[WebSocketHandler], message: Union[str, bytes]) -> int:
    """Queue ``message`` on each open socket in ``sockets``, framed once.
    Returns how many sockets it was queued for."""
    frame = bytes(_encoder.send_data(message, fin=True))
    count = 0
    for socket in sockets:
        if socket.is_open and not socket._backlog_too_long():
            socket.connection.send(frame)
            count += 1
    return count
