"""evloop: a small, fast, dependable single-threaded event loop for servers."""

from .connect import Connector, open_connection, shutdown_write_when_sent
from .datagram import DatagramHandler, DatagramServer, UnixDatagramServer
from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from .eventloop import EVENT_READ, EVENT_WRITE, EventLoop
from .handler import ClientHandler, format_address
from .lifecycle import ServerLifecycle
from .limits import DEFAULT_LIMITS, Limits
from .multiplexer import make_selector
from .offload import offload_executor, set_offload_executor
from .proxy_protocol import ProxyHeader, ProxyHeaderError, ProxyProtocol
from .serve import loop
from .server import Server
from .stats import LoopStats
from .threaded import LoopThread
from .timers import Handle, TimerHandle
from .tls import make_client_context, make_server_context
from .unix import UnixServer
from .workers import WorkerProcesses, serve_workers

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_LIMITS",
    "EVENT_READ",
    "EVENT_WRITE",
    "ClientHandler",
    "Connector",
    "DatagramHandler",
    "DatagramServer",
    "EventLoop",
    "Handle",
    "Limits",
    "LocalProtocolError",
    "LoopStats",
    "LoopThread",
    "ProtocolError",
    "ProxyHeader",
    "ProxyHeaderError",
    "ProxyProtocol",
    "RemoteProtocolError",
    "Server",
    "ServerLifecycle",
    "TimerHandle",
    "UnixDatagramServer",
    "UnixServer",
    "WorkerProcesses",
    "format_address",
    "loop",
    "make_client_context",
    "make_selector",
    "make_server_context",
    "offload_executor",
    "open_connection",
    "serve_workers",
    "set_offload_executor",
    "shutdown_write_when_sent",
]
