"""The keyspace of miniredis and the commands on keys of any type: lookup
with lazy expiry, active expiry from a heap of deadlines, DEL, EXISTS,
KEYS, SCAN, TYPE, DBSIZE, FLUSHDB/FLUSHALL and EXPIRE/PEXPIRE/TTL/PTTL/
PERSIST. No I/O; time comes only from the clock it is given."""

import collections
import heapq
import itertools
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from evloop.protocols.resp import NIL, OK, RespError

from .globmatch import glob_matcher
from .replies import NIL_ARRAY, SYNTAX, Argv, Session, array, integer, parse_int

__all__ = ["Keyspace", "ZSet", "type_name"]

# A deadline is kept as a float of seconds; Redis keeps milliseconds in a
# 64-bit integer and refuses what would overflow them.
_MAX_MILLISECONDS = (1 << 63) - 1


class ZSet:
    """A sorted set: member -> score, and the (score, member) pairs in order
    (Redis's order: by score, then by the member's bytes)."""

    __slots__ = ("order", "scores")

    def __init__(self) -> None:
        self.scores: Dict[bytes, float] = {}
        self.order: List[Tuple[float, bytes]] = []

    def __len__(self) -> int:
        return len(self.scores)


_TYPE_NAMES = {bytes: b"string", collections.deque: b"list", set: b"set", dict: b"hash", ZSet: b"zset"}


def type_name(value: Any) -> bytes:
    return _TYPE_NAMES[type(value)]


class Keyspace:
    """One keyspace. ``clock`` returns seconds (``time.monotonic`` by
    default; tests pass a clock they move). A key with a deadline is gone
    once the clock reaches it: every command that touches a key checks
    (Redis's lazy expiry), and :meth:`expire_due` reclaims the ones nobody
    touches (its active expiry)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.data: Dict[bytes, Any] = {}
        self.expires: Dict[bytes, float] = {}
        self._deadlines: List[Tuple[float, bytes]] = []
        self.expired_keys = 0
        # The connection whose commands are running (a session of the
        # database's own when none is given), and what nil, an empty reply
        # to a counted pop, a set and a map look like on it.
        self.default_session = self.session = Session()
        self.nil = NIL
        self.nil_array = NIL_ARRAY
        self.set_kind = self.map_kind = b"*"
        self.resp3 = False  # doubles and scored pairs differ in RESP3

    # -- lookup and expiry --------------------------------------------------

    def lookup(self, key: bytes) -> Any:
        """The live value of ``key``, or None (expiring it if it is due)."""
        value = self.data.get(key)
        if value is not None and self.expires:
            deadline = self.expires.get(key)
            if deadline is not None and deadline <= self.clock():
                self.delete(key)
                self.expired_keys += 1
                return None
        return value

    def lookup_typed(self, key: bytes, kind: type) -> Any:
        value = self.lookup(key)
        if value is not None and type(value) is not kind:
            raise RespError("WRONGTYPE Operation against a key holding the wrong kind of value")
        return value

    def delete(self, key: bytes) -> bool:
        self.expires.pop(key, None)
        return self.data.pop(key, None) is not None

    def set_deadline(self, key: bytes, deadline: float) -> None:
        self.expires[key] = deadline
        heapq.heappush(self._deadlines, (deadline, key))
        # An entry goes stale when its key gets another deadline or none
        # (SET again, DEL, lazy expiry). Rebuild the heap once stale ones
        # outnumber the live, so a key refreshed with a long EX on every
        # request cannot grow it without bound; amortised O(1) a push.
        if len(self._deadlines) > 2 * len(self.expires) + 64:
            self._deadlines = [(when, name) for name, when in self.expires.items()]
            heapq.heapify(self._deadlines)

    def expire_due(self, limit: int = 1000) -> int:
        """Delete up to ``limit`` keys whose deadline has passed; return how
        many. A heap entry whose key has since been given another deadline
        (or none) is stale and just dropped."""
        now = self.clock()
        heap = self._deadlines
        removed = 0
        while heap and heap[0][0] <= now and removed < limit:
            deadline, key = heapq.heappop(heap)
            if self.expires.get(key) == deadline:
                self.delete(key)
                removed += 1
        self.expired_keys += removed
        return removed

    def flush(self) -> None:
        self.data.clear()
        self.expires.clear()
        self._deadlines.clear()

    # -- any type -----------------------------------------------------------

    def cmd_del(self, argv: Argv) -> bytes:
        removed = 0
        for key in argv[1:]:
            if self.lookup(key) is not None:
                self.delete(key)
                removed += 1
        return integer(removed)

    def cmd_exists(self, argv: Argv) -> bytes:
        lookup = self.lookup
        return integer(sum(lookup(key) is not None for key in argv[1:]))

    def cmd_type(self, argv: Argv) -> bytes:
        value = self.lookup(argv[1])
        return b"+none\r\n" if value is None else b"+%s\r\n" % type_name(value)

    def cmd_dbsize(self, argv: Argv) -> bytes:
        return integer(len(self.data))

    def cmd_flushdb(self, argv: Argv) -> bytes:
        if len(argv) > 2 or (len(argv) == 2 and argv[1].upper() not in (b"ASYNC", b"SYNC")):
            raise RespError(SYNTAX)
        self.flush()
        return OK

    cmd_flushall = cmd_flushdb  # one keyspace: FLUSHALL is FLUSHDB

    def cmd_keys(self, argv: Argv) -> bytes:
        match = glob_matcher(argv[1])
        lookup = self.lookup
        return array([key for key in list(self.data) if match(key) and lookup(key) is not None])

    def cmd_scan(self, argv: Argv) -> bytes:
        """SCAN cursor [MATCH pattern] [COUNT n] [TYPE type]. The cursor is a
        position in an order of the keys that does not change while they
        live (by hash), so a key present for the whole scan is returned at
        least once, as Redis promises. Each call costs O(keys)."""
        cursor = parse_int(argv[1], "ERR invalid cursor")
        if cursor < 0:
            raise RespError("ERR invalid cursor")
        count, pattern, kind = self._scan_options(argv[2:])
        taken, following = self._scan_batch(cursor, count)
        match = glob_matcher(pattern) if pattern is not None else None
        keys = []
        for key in taken:
            value = self.lookup(key)
            if value is None or (match is not None and not match(key)):
                continue
            if kind is None or type_name(value) == kind:
                keys.append(key)
        return b"*2\r\n$%d\r\n%s\r\n%s" % (len(following), following, array(keys))

    def _scan_batch(self, cursor: int, count: int) -> Tuple[List[bytes], bytes]:
        """The ``count`` keys of lowest rank from ``cursor`` on, and the next
        cursor (``0``: none left). One pass over the keys, keeping the
        ``count + 1`` lowest (a heap), rather than a sort of them all."""
        lowest = heapq.nsmallest(
            count + 1, ((rank, key) for key in self.data if (rank := _scan_rank(key)) >= cursor)
        )
        if len(lowest) <= count:
            return [key for _, key in lowest], b"0"
        following = lowest[count][0]
        # A batch ends between ranks, never inside one, so no key is skipped;
        # keys sharing the first rank left out all come now (a hash clash).
        taken = [key for rank, key in lowest[:count] if rank < following]
        if not taken:
            taken = [key for key in self.data if _scan_rank(key) == following]
            later = [rank for rank, _ in lowest if rank > following]
            return taken, b"%d" % later[0] if later else self._after(following)
        return taken, b"%d" % following

    def _after(self, rank: int) -> bytes:
        """The next cursor after every key of ``rank``."""
        higher = [r for key in self.data if (r := _scan_rank(key)) > rank]
        return b"%d" % min(higher) if higher else b"0"

    def _scan_options(self, options: Argv) -> Tuple[int, Optional[bytes], Optional[bytes]]:
        count, pattern, kind = 10, None, None
        for name, value in itertools.zip_longest(options[::2], options[1::2]):
            name = name.upper()
            if value is None:
                raise RespError(SYNTAX)
            if name == b"COUNT":
                count = parse_int(value)
                if count < 1:
                    raise RespError(SYNTAX)
            elif name == b"MATCH":
                pattern = value
            elif name == b"TYPE":
                kind = value.lower()
            else:
                raise RespError(SYNTAX)
        return count, pattern, kind

    # -- expiry -------------------------------------------------------------

    def cmd_expire(self, argv: Argv) -> bytes:
        return self._expire(argv, 1000)

    def cmd_pexpire(self, argv: Argv) -> bytes:
        return self._expire(argv, 1)

    def _expire(self, argv: Argv, unit: int) -> bytes:
        amount = parse_int(argv[2])
        conditions = self._expire_conditions(argv[3:])
        milliseconds = amount * unit
        if not -_MAX_MILLISECONDS <= milliseconds <= _MAX_MILLISECONDS:
            name = argv[0].decode("utf-8", "replace").lower()
            raise RespError(f"ERR invalid expire time in '{name}' command")
        key = argv[1]
        if self.lookup(key) is None:
            return integer(0)
        deadline = self.clock() + milliseconds / 1000
        current = self.expires.get(key)
        # No deadline counts as an infinite one for GT and LT, as in Redis.
        if (
            (b"NX" in conditions and current is not None)
            or (b"XX" in conditions and current is None)
            or (b"GT" in conditions and (current is None or deadline <= current))
            or (b"LT" in conditions and current is not None and deadline >= current)
        ):
            return integer(0)
        if milliseconds <= 0:
            self.delete(key)
        else:
            self.set_deadline(key, deadline)
        return integer(1)

    def _expire_conditions(self, options: Argv) -> Set[bytes]:
        chosen = set()
        for option in options:
            name = option.upper()
            if name not in (b"NX", b"XX", b"GT", b"LT"):
                raise RespError(f"ERR Unsupported option {option.decode('utf-8', 'replace')}")
            chosen.add(name)
        if b"NX" in chosen and len(chosen) > 1:
            raise RespError("ERR NX and XX, GT or LT options at the same time are not compatible")
        if b"GT" in chosen and b"LT" in chosen:
            raise RespError("ERR GT and LT options at the same time are not compatible")
        return chosen

    def cmd_ttl(self, argv: Argv) -> bytes:
        remaining = self._remaining_ms(argv[1])
        return integer(remaining if remaining < 0 else (remaining + 500) // 1000)

    def cmd_pttl(self, argv: Argv) -> bytes:
        return integer(self._remaining_ms(argv[1]))

    def _remaining_ms(self, key: bytes) -> int:
        """Milliseconds ``key`` has left; -2 if it does not exist, -1 if it
        has no deadline."""
        if self.lookup(key) is None:
            return -2
        deadline = self.expires.get(key)
        if deadline is None:
            return -1
        return max(0, round((deadline - self.clock()) * 1000))

    def cmd_persist(self, argv: Argv) -> bytes:
        key = argv[1]
        if self.lookup(key) is None or key not in self.expires:
            return integer(0)
        del self.expires[key]
        return integer(1)


def _scan_rank(key: bytes) -> int:
    # 1 and up: cursor 0 starts (and ends) a scan.
    return (hash(key) & 0xFFFFFFFFFFFF) + 1
