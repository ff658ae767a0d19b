"""Peer addresses and disconnections, as log lines and error handling see them."""

import errno
from typing import Any

__all__ = ["format_address", "is_disconnect"]


def format_address(address: Any) -> str:
    """A peer address for a log line: ``host:port``, ``[v6]:port`` or a path."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    if isinstance(address, bytes):
        address = address.decode("utf-8", "replace")
    return str(address) if address else "<unnamed>"


def is_disconnect(exc: BaseException) -> bool:
    """Whether ``exc`` only says the peer went away."""
    return isinstance(exc, (ConnectionError, TimeoutError)) or (
        isinstance(exc, OSError)
        and exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.ECONNABORTED, errno.ENOTCONN, errno.ESHUTDOWN)
    )
