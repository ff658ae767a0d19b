"""The one exception family for broken protocol rules.

Split by who broke the rule, as h11 does: the peer (:class:`RemoteProtocolError`:
log it, answer with an error reply where the protocol has one, close that one
connection) or our own code (:class:`LocalProtocolError`: a handler produced
something the protocol cannot carry).
"""

__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError", "RequestTooLargeError"]


class ProtocolError(Exception):
    """A rule of a wire protocol was broken.

    ``reply`` is what the peer should be sent before the connection closes
    (bytes), or None where the protocol has no error reply.
    """

    def __init__(self, message: str, *, reply: "bytes | None" = None) -> None:
        super().__init__(message)
        self.message = message
        self.reply = reply


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the protocol."""


class RequestTooLargeError(RemoteProtocolError):
    """The peer's request passed a size limit before it was complete
    (counted apart from other protocol errors by :mod:`evloop.metrics`)."""


class LocalProtocolError(ProtocolError):
    """Our side tried to send something the protocol cannot carry."""
