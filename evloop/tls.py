"""TLS on evloop servers: a non-blocking handshake, then the same handlers.

Theory of operation. ``Server(..., ssl=context)`` (TCP or Unix stream) wraps
each accepted socket with ``context.wrap_socket(server_side=True,
do_handshake_on_connect=False)``, and its connection starts in the
HANDSHAKING state (:mod:`evloop.connection`): :func:`handshake_step` is
retried whenever the socket is ready for what OpenSSL last asked for
(``SSLWantReadError``: readable; ``SSLWantWriteError``: writable), so one
slow or silent client never blocks the loop. A timer ends the handshake
after ``Limits.handshake_timeout`` seconds. Once the handshake is done the
connection is OPEN and the handler's ``setup()`` runs, exactly as for plain
TCP, with the ``ssl.SSLSocket`` as its ``client_socket``; the handler does
not know the difference.

What the engine does differently for a TLS socket, all through this module:

- ``SSLWantReadError`` and ``SSLWantWriteError`` from ``recv``/``send`` mean
  "not now", like ``BlockingIOError`` (:data:`WOULD_BLOCK`). With TLS 1.3 and
  renegotiation off (:func:`make_server_context` turns it off) they only
  come at record boundaries, and the loop retries on the next readiness.
- A large ``send`` that blocks part-way must be retried with the same bytes
  at the front: OpenSSL remembers what it already encrypted. The output
  queue keeps the unsent data at its head, so it always is.
- Plaintext OpenSSL has decrypted but ``recv`` has not returned yet
  (``pending()``) is read at once, since the selector cannot see it.
- On close the server sends ``close_notify`` before the TCP FIN
  (:func:`send_close_notify`) so the client can tell a complete reply from
  a truncation.
- Files go out through ``read()`` and ``send``, not ``os.sendfile``.

Client certificates: a context with ``verify_mode`` ``CERT_REQUIRED`` (or
``CERT_OPTIONAL``) and the CA to check against verifies them during the
handshake; a client that fails is logged with the reason and closed before
any handler exists. The handler reads the verified certificate with
:func:`peer_certificate`.
"""

import logging
import selectors
from typing import Any, Dict, Optional

try:
    import ssl
except ImportError:  # a Python built without OpenSSL: plain TCP still works
    ssl = None  # type: ignore[assignment]


__all__ = [
    "WOULD_BLOCK",
    "SSLWantReadError",
    "SSLWantWriteError",
    "handshake_step",
    "is_tls",
    "make_client_context",
    "make_server_context",
    "peer_certificate",
    "send_close_notify",
]

logger = logging.getLogger("evloop")

if ssl is not None:
    SSLWantReadError: Any = ssl.SSLWantReadError
    SSLWantWriteError: Any = ssl.SSLWantWriteError
    _SSLError: Any = ssl.SSLError
    _SSLSocket: Any = ssl.SSLSocket
else:  # nothing can raise these, and no socket is one

    class SSLWantReadError(OSError):  # type: ignore[no-redef]
        pass

    class SSLWantWriteError(OSError):  # type: ignore[no-redef]
        pass

    _SSLError = OSError
    _SSLSocket = ()

#: What a non-blocking ``recv``/``send`` raises when it must be retried later,
#: on a plain socket or a TLS one.
WOULD_BLOCK = (BlockingIOError, InterruptedError, SSLWantReadError, SSLWantWriteError)

# Handshake failures that only mean the client went away (a port scanner, a
# health check): a debug line, not a warning.
_GONE: Any = (ConnectionError, EOFError)
if ssl is not None:
    _GONE += (ssl.SSLEOFError, ssl.SSLZeroReturnError)


def make_server_context(
    certfile: str,
    keyfile: Optional[str] = None,
    *,
    cafile: Optional[str] = None,
    client_certs: str = "none",
    password: Any = None,
) -> "ssl.SSLContext":
    """A server-side ``ssl.SSLContext`` with safe settings: TLS 1.2 or newer,
    renegotiation off, the certificate chain from ``certfile`` (and
    ``keyfile``). ``client_certs`` is ``"none"``, ``"optional"`` or
    ``"required"``; for the last two ``cafile`` names the CA(s) that client
    certificates must chain to. Raises ``ssl.SSLError`` / ``OSError`` for a
    bad file, ValueError for a bad ``client_certs``."""
    if ssl is None:
        raise RuntimeError("this Python has no ssl module")
    modes = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
    if client_certs not in modes:
        raise ValueError(f"client_certs must be one of {sorted(modes)}, not {client_certs!r}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # A client-initiated TLS 1.2 renegotiation costs the server a handshake
    # for each one the client asks for; nothing here needs it.
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    context.load_cert_chain(certfile, keyfile, password)
    if client_certs != "none":
        if cafile is None:
            raise ValueError("client certificates need a cafile to verify them against")
        context.load_verify_locations(cafile)
    context.verify_mode = modes[client_certs]
    return context


def make_client_context(
    cafile: Optional[str] = None, *, certfile: Optional[str] = None, keyfile: Optional[str] = None
) -> "ssl.SSLContext":
    """A client-side context that verifies the server against ``cafile`` (the
    system's CAs when None) and its host name, presenting ``certfile`` /
    ``keyfile`` when the server asks for a client certificate."""
    if ssl is None:
        raise RuntimeError("this Python has no ssl module")
    context = ssl.create_default_context(cafile=cafile)
    if certfile is not None:
        context.load_cert_chain(certfile, keyfile)
    return context


def peer_certificate(handler: Any) -> Optional[Dict[str, Any]]:
    """The client certificate the handshake verified, as
    ``SSLSocket.getpeercert()`` gives it, or None (no TLS, or none was asked
    for or given)."""
    sock = handler.client_socket
    if not isinstance(sock, _SSLSocket):
        return None
    try:
        cert = sock.getpeercert()
    except (ValueError, OSError):
        return None
    return cert or None


def is_tls(sock: Any) -> bool:
    """Whether ``sock`` is a TLS socket."""
    return isinstance(sock, _SSLSocket)


def send_close_notify(sock: Any) -> None:
    """Tell a TLS peer the stream ends here (RFC 8446 section 6.1), without
    waiting for its answer; nothing for a plain socket."""
    if not isinstance(sock, _SSLSocket):
        return
    try:
        # unwrap() sends close_notify, then would wait for the peer's: on a
        # non-blocking socket that wait is an SSLWantReadError, and ours is
        # already out.
        sock.unwrap()
    except (_SSLError, OSError, ValueError):
        pass


def read_pending(sock: Any, data: bytes, limit: int) -> bytes:
    """``data`` plus whatever plaintext OpenSSL already holds decrypted for
    ``sock``, up to ``limit`` bytes in all; the selector cannot see it."""
    try:
        pending = sock.pending()
    except (AttributeError, ValueError):
        return data
    if not pending:
        return data
    chunks = [data]
    size = len(data)
    while pending and size < limit:
        try:
            chunk = sock.recv(min(pending, limit - size))
        except WOULD_BLOCK:
            break
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        pending = sock.pending()
    return b"".join(chunks)


def handshake_step(sock: Any, peer: str, warn: Any = None) -> Optional[int]:
    """Take one step of a non-blocking server handshake on ``sock``.
    Returns 0 when it is done, the selector event to wait for
    (``EVENT_READ``/``EVENT_WRITE``) when OpenSSL needs the socket again,
    or None when it failed, logged here naming ``peer``: a debug line for a
    client that just left, else a warning through ``warn(kind, message,
    *args)`` (a rate-limited facility, :mod:`evloop.logs`) or the logger."""
    try:
        sock.do_handshake()
    except SSLWantReadError:
        return selectors.EVENT_READ
    except SSLWantWriteError:
        return selectors.EVENT_WRITE
    except _GONE as exc:
        logger.debug("%s: client left during the TLS handshake: %s", peer, exc)
        return None
    except (_SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        message = "%s: TLS handshake failed (%s); closing the connection"
        if warn is not None:
            warn("tls-handshake-failed", message, peer, reason)
        else:
            logger.warning(message, peer, reason)
        return None
    return 0
