"""evloop: a small, fast, dependable single-threaded event loop for servers."""

from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from .eventloop import EVENT_READ, EVENT_WRITE, EventLoop
from .handler import ClientHandler, format_address
from .multiplexer import make_selector
from .serve import loop
from .server import Server
from .timers import Handle, TimerHandle

__version__ = "0.1.0"

__all__ = [
    "ClientHandler",
    "EVENT_READ",
    "EVENT_WRITE",
    "EventLoop",
    "Handle",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "Server",
    "TimerHandle",
    "format_address",
    "loop",
    "make_selector",
]
