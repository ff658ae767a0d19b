"""One server's budget for the memory its clients hold, as Redis 7's
``maxmemory-clients``.

Theory of operation. Each limit of :class:`~evloop.limits.Limits` bounds one
connection: the input an incomplete request may buffer, the output that
waits for a client that does not read. N connections may still hold N times
that, and a few thousand hostile clients, each within its own bounds, can
take the machine. ``Limits.max_clients_memory`` bounds the sum.

A connection is charged what it holds: its handler's
:meth:`~evloop.ClientHandler.held_memory` (the input it buffers) plus its
queued output that is in memory (not files). The connection updates its
charge (:func:`charge_memory`) where those change: after a read that left
input buffered or output unsent, or while it was charged, and after a flush
that left output queued, or while it was charged. A connection that reads
whole requests and sends whole replies holds nothing between two reads and
is never charged; what it pays is one ``held_memory()`` call per read.

The budget keeps the charged connections and their sum. When the sum passes
the limit, an enforcement runs at the next turn of the loop (at once would
close a connection inside its own read): the connections holding the most
are closed first, biggest to smallest, until the sum is back under the
limit, each with one warning line naming the peer (rate-limited per kind,
see :mod:`evloop.logs`). Clients that hold little, as honest ones do, are
not touched. Closing frees what a connection held at once: its buffers go
with its handler.
"""

import logging
from typing import Any, Dict, Tuple

from .addresses import format_address
from .states import CHARGED

__all__ = ["LOGGED_PER_ENFORCEMENT", "ClientMemoryBudget", "charge_memory", "format_bytes"]

logger = logging.getLogger("evloop")

#: Connections one enforcement names in a line each; the rest get one line.
LOGGED_PER_ENFORCEMENT = 10


def format_bytes(size: float) -> str:
    """``1536`` -> ``"1.5 KiB"``: a size for a log line."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def charge_memory(connection: Any) -> None:
    """Tell ``connection``'s server budget what it holds now: its handler's
    buffered input and the output the socket did not take (not this pass's
    replies, which the flush at the pass's end sends)."""
    output = connection.output
    held = connection.handler.held_memory() + (output.buffered if output is not None else 0)
    if held or connection.flags & CHARGED:
        if connection.handler.server.memory_budget.charge(connection, held):
            connection.flags |= CHARGED
        else:
            connection.flags &= ~CHARGED


def _size(item: Tuple[Any, int]) -> int:
    return item[1]


class ClientMemoryBudget:
    """What one server's connections hold, against ``limit`` bytes.

    ``held`` is the sum of the charges now; ``cut`` counts the connections
    closed to keep to the limit. :meth:`charge` is the connection's call.
    """

    def __init__(self, server: Any, limit: int) -> None:
        self.server = server
        self.limit = limit
        self.held = 0
        self.cut = 0
        self._charges: Dict[Any, int] = {}  # connection -> bytes charged now
        self._enforcing = False  # an enforcement is scheduled

    @property
    def charged_connections(self) -> int:
        """Connections holding a charge now."""
        return len(self._charges)

    def charge(self, connection: Any, size: int) -> bool:
        """``connection`` holds ``size`` bytes now (0: nothing). Returns
        whether it still holds a charge."""
        charges = self._charges
        old = charges.get(connection, 0)
        if size > 0:
            charges[connection] = size
        elif old:
            del charges[connection]
        held = self.held = self.held + size - old
        if held > self.limit and not self._enforcing:
            self._enforcing = True
            self.server.loop.call_soon(self.enforce)
        return size > 0

    def release(self, connection: Any) -> None:
        """``connection`` closed: what it held is free."""
        size = self._charges.pop(connection, 0)
        self.held -= size

    def enforce(self) -> None:
        """Close the biggest holders until the sum is within the limit."""
        self._enforcing = False
        excess = self.held - self.limit
        if excess <= 0:
            return
        # The fewest biggest ones that bring the sum under the limit.
        victims = []
        freed = 0
        for connection, size in sorted(self._charges.items(), key=_size, reverse=True):
            if freed >= excess:
                break
            victims.append((connection, size))
            freed += size
        held = self.held
        logged = 0
        for connection, size in victims:
            if connection not in self._charges:
                continue  # closed meanwhile
            self.cut += 1
            self.server.loop.limit_hit("max_clients_memory")
            if logged < LOGGED_PER_ENFORCEMENT:
                logged += 1
                logger.warning(
                    "%s: closed %s holding %s: its clients held %s, "
                    "the budget (Limits.max_clients_memory) is %s",
                    self.server,
                    format_address(connection.handler.client_address),
                    format_bytes(size),
                    format_bytes(held),
                    format_bytes(self.limit),
                )
            connection.close()
        if len(victims) > logged:
            logger.warning(
                "%s: closed %d more connections over the client memory budget",
                self.server,
                len(victims) - logged,
            )

    def __repr__(self) -> str:
        return (
            f"<ClientMemoryBudget {format_bytes(self.held)} of {format_bytes(self.limit)} "
            f"held by {len(self._charges)} connections, {self.cut} cut>"
        )
