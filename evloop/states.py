"""The states of a connection and the bits of its flags.

A connection (:class:`evloop.connection.Connection`) is in one state at a
time; :data:`TRANSITIONS` lists the legal moves, and the connection makes
every move through one method that checks it (the table of what each state
means is at the top of :mod:`evloop.connection`). The state and the
connection's flags share one int: the state in the low three bits, the
flags above it, then the two selector event bits.
"""

from typing import Dict, Tuple

__all__ = [
    "BACKLOGGED",
    "CLOSED",
    "CLOSING",
    "CONNECTING",
    "DIRTY",
    "DRAINING",
    "EOF_HELD",
    "EVENTS_MASK",
    "EVENTS_SHIFT",
    "EVENT_READ",
    "EVENT_WRITE",
    "HANDSHAKING",
    "LINGER",
    "LINGERING",
    "NEW",
    "OPEN",
    "PROXY_HEADER",
    "READING",
    "READ_PAUSED",
    "STATE_MASK",
    "STATE_NAMES",
    "TIMED",
    "TRANSITIONS",
]

EVENT_READ, EVENT_WRITE = 1, 2  # the selectors module's values

# Before OPEN: every state a connection is in before it serves (send()
# only queues, and close_when_sent() closes at once) compares below OPEN.
NEW, CONNECTING, PROXY_HEADER, HANDSHAKING, OPEN, CLOSING, LINGERING, CLOSED = range(8)
STATE_NAMES = ("NEW", "CONNECTING", "PROXY_HEADER", "HANDSHAKING", "OPEN", "CLOSING", "LINGERING", "CLOSED")

#: The legal transitions: state -> the states it may move to.
TRANSITIONS: Dict[int, Tuple[int, ...]] = {
    NEW: (CONNECTING, PROXY_HEADER, HANDSHAKING, OPEN, CLOSED),
    CONNECTING: (OPEN, CLOSED),
    PROXY_HEADER: (HANDSHAKING, OPEN, CLOSED),
    HANDSHAKING: (OPEN, CLOSED),
    OPEN: (CLOSING, CLOSED),
    CLOSING: (LINGERING, CLOSED),
    LINGERING: (CLOSED,),
    CLOSED: (),
}

# The bits of Connection.flags above the state.
STATE_MASK = 7
READING = 8  # the peer has not ended its stream
DIRTY = 16  # in the loop's list of connections to flush at the end of the pass
READ_PAUSED = 32  # the handler called pause_reading()
BACKLOGGED = 64  # requests held back: output passed the high-water mark
DRAINING = 128  # a graceful shutdown waits for the request under way
LINGER = 256  # close with a lingering read (a refused connection)
TIMED = 512  # under the timeout sweep: keep the activity clocks
EOF_HELD = 1024  # the peer ended its stream while requests were held back
EVENTS_SHIFT = 11  # then the two selector event bits
EVENTS_MASK = EVENT_READ | EVENT_WRITE
