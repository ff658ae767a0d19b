"""A mini Redis on evloop: RESP2, strings, lists, sets, hashes and expiry.

    python examples/miniredis.py --port 6380
    redis-cli -p 6380 set greeting hello ex 60     # OK
    redis-cli -p 6380 get greeting                 # "hello"

Commands: PING, ECHO, SET (EX, PX, NX, XX, KEEPTTL), GET, DEL, EXISTS, INCR,
DECR, INCRBY, DECRBY, MSET, MGET, LPUSH, RPUSH, LPOP, RPOP (with a count), LRANGE, SADD,
SMEMBERS, HSET, HGET, KEYS, FLUSHDB, and MULTI/EXEC/DISCARD (redis-py's
``pipeline()`` wraps its commands in them). For the clients' handshakes: HELLO
(redis-py 8 opens every connection with ``HELLO 3``; after it the
connection gets RESP3 replies: ``_`` for nil, ``~`` for a set, ``%`` for a
map), CONFIG GET (redis-benchmark asks for ``save`` and ``appendonly``) and
CLIENT SETNAME/SETINFO.

The command code (:class:`Database`) does no I/O and reads time only from
the clock it is given, so the asyncio server in ``benchmarks/`` shares it and
tests move expiry forward by hand. :class:`MiniRedisHandler` is the evloop
side: all commands of one read are parsed in one call to the framer, run in
one call to the database, and their replies leave in one ``send``.

A wrong command, arity or type is an ordinary ``-ERR``/``-WRONGTYPE`` reply
and the connection stays open, as in Redis; only bytes that break the
protocol itself get ``-ERR Protocol error: ...`` and a close.
"""

import argparse
import collections
import heapq
import itertools
import logging
import re
import time
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Tuple

from evloop.protocols.resp import NIL, OK, RespError, RespFramer

from evloop import ClientHandler, EventLoop, Server

__all__ = ["Database", "MiniRedisHandler", "Session", "main", "serve"]

WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"
NOT_INTEGER = "ERR value is not an integer or out of range"
SYNTAX = "ERR syntax error"
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
EMPTY_ARRAY = b"*0\r\n"
NIL_ARRAY = b"*-1\r\n"
PONG = b"+PONG\r\n"
RESP3_NIL = b"_\r\n"

Argv = List[bytes]


# "$<length>\r\n" for short values: indexing beats formatting on the hot path.
_BULK_HEADS = [b"$%d\r\n" % length for length in range(1024)]


def bulk(value: bytes) -> bytes:
    if len(value) < 1024:
        return _BULK_HEADS[len(value)] + value + b"\r\n"
    return b"$%d\r\n%s\r\n" % (len(value), value)


def array(values: Iterable[Optional[bytes]], nil: bytes = NIL, kind: bytes = b"*") -> bytes:
    """An aggregate of bulk strings (None: ``nil``); ``kind`` is ``*`` for an
    array, RESP3's ``~`` for a set or ``%`` for a map of flat pairs."""
    items = [nil if value is None else b"$%d\r\n%s\r\n" % (len(value), value) for value in values]
    count = len(items) // 2 if kind == b"%" else len(items)
    return b"%s%d\r\n%s" % (kind, count, b"".join(items))


class Session:
    """What the server knows of one connection: the protocol version its
    replies use (2, or 3 after HELLO 3), the name it gave itself, and the
    commands queued since MULTI (None outside a transaction)."""

    __slots__ = ("name", "protocol", "queue", "queue_failed")

    def __init__(self) -> None:
        self.protocol = 2
        self.name = b""
        self.queue: Optional[List[Argv]] = None
        self.queue_failed = False


class _TransactionStartedSignal(Exception):  # noqa: N818 (a signal, not an error)
    """MULTI ran: the commands after it are queued, not run."""


def parse_int(text: bytes, error: str = NOT_INTEGER) -> int:
    """A 64-bit integer written as Redis writes them (its ``string2ll``: an
    optional minus, digits, no leading zero, no spaces), else RespError."""
    digits = text[1:] if text[:1] == b"-" else text
    if not digits.isdigit() or (digits[:1] == b"0" and len(text) > 1) or len(digits) > 19:
        raise RespError(error)
    number = int(text)
    if not INT64_MIN <= number <= INT64_MAX:
        raise RespError(error)
    return number


def glob_to_regex(pattern: bytes) -> "re.Pattern[bytes]":
    """Redis's glob (``stringmatchlen``): ``*``, ``?``, ``[abc]``, ``[^a]``,
    ``[a-z]`` and ``\\`` to escape. Every byte is escaped in the regex, so
    no pattern a client sends can fail to compile."""
    out = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == 42:  # *
            out.append(b".*")
        elif c == 63:  # ?
            out.append(b".")
        elif c == 92 and i + 1 < n:  # \x
            i += 1
            out.append(b"\\x%02x" % pattern[i])
        elif c == 91:  # [
            i += 1
            negate = i < n and pattern[i] == 94
            if negate:
                i += 1
            members = []
            while i < n and pattern[i] != 93:
                if pattern[i] == 92 and i + 1 < n:
                    i += 1
                    members.append(b"\\x%02x" % pattern[i])
                elif i + 2 < n and pattern[i + 1] == 45 and pattern[i + 2] != 93:
                    low, high = sorted((pattern[i], pattern[i + 2]))
                    members.append(b"\\x%02x-\\x%02x" % (low, high))
                    i += 2
                else:
                    members.append(b"\\x%02x" % pattern[i])
                i += 1
            if members:
                out.append(b"[%s%s]" % (b"^" if negate else b"", b"".join(members)))
            else:
                out.append(b"." if negate else b"(?!)")
        else:
            out.append(b"\\x%02x" % c)
        i += 1
    return re.compile(b"".join(out), re.DOTALL)


class Database:
    """One keyspace and the commands on it. No I/O.

    ``clock`` returns seconds (``time.monotonic`` by default; tests pass a
    clock they move). A key with a deadline is gone once the clock reaches
    it: every command that touches a key checks (Redis's lazy expiry), and
    :meth:`expire_due` reclaims the ones nobody touches (its active expiry).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.data: Dict[bytes, Any] = {}
        self.expires: Dict[bytes, float] = {}
        self._deadlines: List[Tuple[float, bytes]] = []
        # The connection whose commands are running (a session of the
        # database's own when none is given), and what nil, an empty reply
        # to a counted pop, a set and a map look like on it.
        self.default_session = self.session = Session()
        self.nil = NIL
        self.nil_array = NIL_ARRAY
        self.set_kind = self.map_kind = b"*"
        # Command names as clients usually send them (upper and lower case)
        # map straight to (method, arity); arity as in Redis's command
        # table: n means exactly n words, -n at least n.
        self.commands: Dict[bytes, Tuple[Callable[[Argv], bytes], int]] = {}
        for name, arity in _COMMANDS:
            method = getattr(self, "cmd_" + name.lower())
            self.commands[name.encode()] = (method, arity)
            self.commands[name.lower().encode()] = (method, arity)

    # -- running commands -------------------------------------------------

    def execute_many(self, commands: Iterable[Argv], session: Optional[Session] = None) -> bytes:
        """The replies to ``commands`` (argument lists), concatenated, for
        the connection ``session`` (None: the database's own session)."""
        if session is None:
            session = self.default_session
        if session is not self.session:
            self.session = session
            self.use_protocol(session.protocol)
        table = self.commands
        replies: List[bytes] = []
        append = replies.append
        # One iterator, so that a transaction can take the commands after
        # MULTI from it and this loop go on after EXEC.
        commands = iter(commands)
        if self.session.queue is not None:
            append(self._transaction(commands))
        for argv in commands:
            entry = table.get(argv[0])
            if entry is None:
                entry = self._mixed_case(argv)
                if entry is None:
                    append(_unknown_command(argv))
                    continue
            method, arity = entry
            count = len(argv)
            if count != arity and (arity > 0 or count < -arity):
                append(_arity_error(argv[0]))
                continue
            try:
                append(method(argv))
            except RespError as exc:
                append(exc.reply)
            except _TransactionStartedSignal:
                append(OK)
                append(self._transaction(commands))
        return b"".join(replies)

    def execute(self, *argv: Any, session: Optional[Session] = None) -> bytes:
        """The reply to one command: ``execute("SET", "k", "v")``."""
        words = [
            arg.encode() if isinstance(arg, str) else b"%d" % arg if isinstance(arg, int) else bytes(arg)
            for arg in argv
        ]
        return self.execute_many([words], session)

    def use_protocol(self, protocol: int) -> None:
        """Make replies RESP2 or RESP3 from now on."""
        self.session.protocol = protocol
        resp3 = protocol == 3
        self.nil = RESP3_NIL if resp3 else NIL
        self.nil_array = RESP3_NIL if resp3 else NIL_ARRAY
        self.set_kind = b"~" if resp3 else b"*"
        self.map_kind = b"%" if resp3 else b"*"

    def _mixed_case(self, argv: Argv) -> Optional[Tuple[Callable[[Argv], bytes], int]]:
        return self.commands.get(argv[0].upper())

    # -- transactions -------------------------------------------------------

    def cmd_multi(self, argv: Argv) -> bytes:
        self.session.queue = []
        self.session.queue_failed = False
        raise _TransactionStartedSignal

    def cmd_exec(self, argv: Argv) -> bytes:
        raise RespError("ERR EXEC without MULTI")

    def cmd_discard(self, argv: Argv) -> bytes:
        raise RespError("ERR DISCARD without MULTI")

    def _transaction(self, commands: Iterator[Argv]) -> bytes:
        """Queue commands from ``commands`` until EXEC or DISCARD (then run
        or drop them) or until there are no more (the transaction stays
        open for the next read). Returns the replies meanwhile."""
        session = self.session
        queue = session.queue
        assert queue is not None
        replies = []
        for argv in commands:
            name = argv[0].upper()
            if name == b"EXEC" or name == b"DISCARD":
                session.queue = None
                if len(argv) != 1:
                    replies.append(_arity_error(argv[0]))
                elif name == b"DISCARD":
                    replies.append(OK)
                elif session.queue_failed:
                    replies.append(
                        RespError("EXECABORT Transaction discarded because of previous errors.").reply
                    )
                else:
                    results = [self.execute_many([queued], session) for queued in queue]
                    replies.append(b"*%d\r\n" % len(results) + b"".join(results))
                return b"".join(replies)
            if name == b"MULTI":
                replies.append(RespError("ERR MULTI calls can not be nested").reply)
                continue
            entry = self.commands.get(name)
            count = len(argv)
            if entry is None:
                error = _unknown_command(argv)
            elif count != entry[1] and (entry[1] > 0 or count < -entry[1]):
                error = _arity_error(argv[0])
            else:
                queue.append(argv)
                replies.append(b"+QUEUED\r\n")
                continue
            # Redis refuses to EXEC a transaction with a command it could not queue.
            session.queue_failed = True
            replies.append(error)
        return b"".join(replies)

    # -- the keyspace -----------------------------------------------------

    def lookup(self, key: bytes) -> Any:
        """The live value of ``key``, or None (expiring it if it is due)."""
        value = self.data.get(key)
        if value is not None and self.expires:
            deadline = self.expires.get(key)
            if deadline is not None and deadline <= self.clock():
                self.delete(key)
                return None
        return value

    def lookup_typed(self, key: bytes, kind: type) -> Any:
        value = self.lookup(key)
        if value is not None and type(value) is not kind:
            raise RespError(WRONGTYPE)
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
        return removed

    # -- connection and server --------------------------------------------

    def cmd_ping(self, argv: Argv) -> bytes:
        if len(argv) > 2:
            return _arity_error(argv[0])
        return bulk(argv[1]) if len(argv) == 2 else PONG

    def cmd_echo(self, argv: Argv) -> bytes:
        return bulk(argv[1])

    def cmd_hello(self, argv: Argv) -> bytes:
        # HELLO [protover [AUTH user pass] [SETNAME name]]: miniredis has no
        # users, so AUTH is refused rather than silently accepted.
        if len(argv) >= 2:
            protocol = parse_int(argv[1], "ERR Protocol version is not an integer or out of range")
            if protocol not in (2, 3):
                raise RespError("NOPROTO unsupported protocol version")
            options = argv[2:]
            name = None
            while options:
                option = options[0].upper()
                if option == b"SETNAME" and len(options) >= 2:
                    name, options = options[1], options[2:]
                elif option == b"AUTH":
                    raise RespError("ERR AUTH is not supported by miniredis")
                else:
                    raise RespError(
                        f"ERR Syntax error in HELLO option '{options[0].decode('utf-8', 'replace')}'"
                    )
            if name is not None:
                self.session.name = name
            self.use_protocol(protocol)
        protocol = self.session.protocol
        fields = [
            bulk(b"server"),
            bulk(b"redis"),
            bulk(b"version"),
            bulk(b"7.0.0"),
            bulk(b"proto"),
            b":%d\r\n" % protocol,
            bulk(b"mode"),
            bulk(b"standalone"),
            bulk(b"role"),
            bulk(b"master"),
            bulk(b"modules"),
            EMPTY_ARRAY,
        ]
        if protocol == 3:
            return b"%%%d\r\n" % (len(fields) // 2) + b"".join(fields)
        return b"*%d\r\n" % len(fields) + b"".join(fields)

    def cmd_config(self, argv: Argv) -> bytes:
        # Only CONFIG GET, for the tools that ask on connect: miniredis
        # never persists, so "save" is empty and "appendonly" is "no".
        if argv[1].upper() != b"GET" or len(argv) != 3:
            raise RespError("ERR only CONFIG GET <parameter> is supported")
        known = {b"save": b"", b"appendonly": b"no"}
        pattern = glob_to_regex(argv[2].lower())
        found = [(name, value) for name, value in known.items() if pattern.fullmatch(name)]
        return array([item for pair in found for item in pair], self.nil, self.map_kind)

    def cmd_client(self, argv: Argv) -> bytes:
        # redis-py names itself with CLIENT SETINFO on connect.
        subcommand = argv[1].upper()
        if subcommand == b"SETNAME" and len(argv) == 3:
            self.session.name = argv[2]
            return OK
        if subcommand == b"SETINFO" and len(argv) == 4:
            return OK
        raise RespError("ERR only CLIENT SETNAME and CLIENT SETINFO are supported")

    def cmd_flushdb(self, argv: Argv) -> bytes:
        if len(argv) > 2 or (len(argv) == 2 and argv[1].upper() not in (b"ASYNC", b"SYNC")):
            raise RespError(SYNTAX)
        self.data.clear()
        self.expires.clear()
        self._deadlines.clear()
        return OK

    def cmd_keys(self, argv: Argv) -> bytes:
        pattern = argv[1]
        if pattern == b"*":
            keys = [key for key in list(self.data) if self.lookup(key) is not None]
        else:
            match = glob_to_regex(pattern).fullmatch
            keys = [key for key in list(self.data) if match(key) and self.lookup(key) is not None]
        return array(keys)

    # -- any type -----------------------------------------------------------

    def cmd_del(self, argv: Argv) -> bytes:
        removed = 0
        for key in argv[1:]:
            if self.lookup(key) is not None:
                self.delete(key)
                removed += 1
        return b":%d\r\n" % removed

    def cmd_exists(self, argv: Argv) -> bytes:
        lookup = self.lookup
        return b":%d\r\n" % sum(lookup(key) is not None for key in argv[1:])

    # -- strings ------------------------------------------------------------

    def cmd_get(self, argv: Argv) -> bytes:
        # The hottest command, so lookup() is written out here.
        key = argv[1]
        value = self.data.get(key)
        if value is None:
            return self.nil
        if self.expires:
            deadline = self.expires.get(key)
            if deadline is not None and deadline <= self.clock():
                self.delete(key)
                return self.nil
        if type(value) is not bytes:
            raise RespError(WRONGTYPE)
        if len(value) < 1024:
            return _BULK_HEADS[len(value)] + value + b"\r\n"
        return b"$%d\r\n%s\r\n" % (len(value), value)

    def cmd_set(self, argv: Argv) -> bytes:
        key = argv[1]
        if len(argv) == 3:
            self.data[key] = argv[2]
            if self.expires:
                self.expires.pop(key, None)
            return OK
        deadline, condition, keep_ttl = self._set_options(argv)
        if condition is not None:
            exists = self.lookup(key) is not None
            if exists != (condition == b"XX"):
                return self.nil
        self.data[key] = argv[2]
        if deadline is not None:
            self.set_deadline(key, deadline)
        elif not keep_ttl:
            self.expires.pop(key, None)
        return OK

    def _set_options(self, argv: Argv) -> Tuple[Optional[float], Optional[bytes], bool]:
        deadline: Optional[float] = None
        condition: Optional[bytes] = None
        keep_ttl = False
        i = 3
        while i < len(argv):
            option = argv[i].upper()
            if option in (b"EX", b"PX") and deadline is None and not keep_ttl and i + 1 < len(argv):
                amount = parse_int(argv[i + 1])
                if amount <= 0:
                    raise RespError("ERR invalid expire time in 'set' command")
                deadline = self.clock() + (amount if option == b"EX" else amount / 1000)
                i += 2
                continue
            if option in (b"NX", b"XX") and condition is None:
                condition = option
            elif option == b"KEEPTTL" and deadline is None:
                keep_ttl = True
            else:
                raise RespError(SYNTAX)
            i += 1
        return deadline, condition, keep_ttl

    def cmd_mset(self, argv: Argv) -> bytes:
        if len(argv) % 2 == 0:
            return _arity_error(argv[0])
        data, expires = self.data, self.expires
        for i in range(1, len(argv), 2):
            data[argv[i]] = argv[i + 1]
            if expires:
                expires.pop(argv[i], None)
        return OK

    def cmd_mget(self, argv: Argv) -> bytes:
        lookup = self.lookup
        values = [lookup(key) for key in argv[1:]]
        return array((value if type(value) is bytes else None for value in values), self.nil)

    def cmd_incr(self, argv: Argv) -> bytes:
        return self._add(argv[1], 1)

    def cmd_decr(self, argv: Argv) -> bytes:
        return self._add(argv[1], -1)

    def cmd_incrby(self, argv: Argv) -> bytes:
        # redis-py's incr() and decr() send INCRBY and DECRBY.
        return self._add(argv[1], parse_int(argv[2]))

    def cmd_decrby(self, argv: Argv) -> bytes:
        amount = parse_int(argv[2])
        if amount == INT64_MIN:  # its negation is no 64-bit integer
            raise RespError("ERR decrement would overflow")
        return self._add(argv[1], -amount)

    def _add(self, key: bytes, amount: int) -> bytes:
        value = self.lookup_typed(key, bytes)
        number = 0 if value is None else parse_int(value)
        number += amount
        if not INT64_MIN <= number <= INT64_MAX:
            raise RespError("ERR increment or decrement would overflow")
        # The key keeps its deadline, as in Redis.
        self.data[key] = b"%d" % number
        return b":%d\r\n" % number

    # -- lists --------------------------------------------------------------

    def cmd_lpush(self, argv: Argv) -> bytes:
        items = self._list_for_push(argv[1])
        items.extendleft(argv[2:])
        return b":%d\r\n" % len(items)

    def cmd_rpush(self, argv: Argv) -> bytes:
        items = self._list_for_push(argv[1])
        items.extend(argv[2:])
        return b":%d\r\n" % len(items)

    def _list_for_push(self, key: bytes) -> Deque[bytes]:
        items: Optional[Deque[bytes]] = self.lookup_typed(key, collections.deque)
        if items is None:
            items = self.data[key] = collections.deque()
        return items

    def cmd_lpop(self, argv: Argv) -> bytes:
        return self._pop(argv, collections.deque.popleft)

    def cmd_rpop(self, argv: Argv) -> bytes:
        return self._pop(argv, collections.deque.pop)

    def _pop(self, argv: Argv, pop: Callable[[Deque[bytes]], bytes]) -> bytes:
        if len(argv) > 3:
            return _arity_error(argv[0])
        count = None
        if len(argv) == 3:
            count = parse_int(argv[2], "ERR value is out of range, must be positive")
            if count < 0:
                raise RespError("ERR value is out of range, must be positive")
        items = self.lookup_typed(argv[1], collections.deque)
        if items is None:
            return self.nil if count is None else self.nil_array
        if count is None:
            reply = bulk(pop(items))
        else:
            reply = array([pop(items) for _ in range(min(count, len(items)))])
        if not items:  # Redis deletes a list once it is empty
            self.delete(argv[1])
        return reply

    def cmd_lrange(self, argv: Argv) -> bytes:
        start, stop = parse_int(argv[2]), parse_int(argv[3])
        items = self.lookup_typed(argv[1], collections.deque)
        if items is None:
            return EMPTY_ARRAY
        size = len(items)
        if start < 0:
            start = max(0, size + start)
        if stop < 0:
            stop += size
        stop = min(stop, size - 1)
        if start > stop:
            return EMPTY_ARRAY
        return array(itertools.islice(items, start, stop + 1))

    # -- sets and hashes ----------------------------------------------------

    def cmd_sadd(self, argv: Argv) -> bytes:
        members = self.lookup_typed(argv[1], set)
        if members is None:
            members = self.data[argv[1]] = set()
        before = len(members)
        members.update(argv[2:])
        return b":%d\r\n" % (len(members) - before)

    def cmd_smembers(self, argv: Argv) -> bytes:
        members = self.lookup_typed(argv[1], set)
        return array(() if members is None else members, self.nil, self.set_kind)

    def cmd_hset(self, argv: Argv) -> bytes:
        if len(argv) % 2:
            return _arity_error(argv[0])
        fields = self.lookup_typed(argv[1], dict)
        if fields is None:
            fields = self.data[argv[1]] = {}
        before = len(fields)
        for i in range(2, len(argv), 2):
            fields[argv[i]] = argv[i + 1]
        return b":%d\r\n" % (len(fields) - before)

    def cmd_hget(self, argv: Argv) -> bytes:
        fields = self.lookup_typed(argv[1], dict)
        value = None if fields is None else fields.get(argv[2])
        return self.nil if value is None else bulk(value)


# Name and arity of every command (Redis's command table values).
_COMMANDS = [
    ("PING", -1),
    ("ECHO", 2),
    ("HELLO", -1),
    ("CONFIG", -2),
    ("CLIENT", -2),
    ("FLUSHDB", -1),
    ("KEYS", 2),
    ("DEL", -2),
    ("EXISTS", -2),
    ("GET", 2),
    ("SET", -3),
    ("MSET", -3),
    ("MGET", -2),
    ("INCR", 2),
    ("DECR", 2),
    ("INCRBY", 3),
    ("DECRBY", 3),
    ("LPUSH", -3),
    ("RPUSH", -3),
    ("LPOP", -2),
    ("RPOP", -2),
    ("LRANGE", 4),
    ("SADD", -3),
    ("SMEMBERS", 2),
    ("HSET", -4),
    ("HGET", 3),
    ("MULTI", 1),
    ("EXEC", 1),
    ("DISCARD", 1),
]


def _unknown_command(argv: Argv) -> bytes:
    # Redis's wording, byte for byte: arguments are quoted until 128 bytes of
    # them have been shown.
    shown = b""
    for arg in argv[1:]:
        if len(shown) >= 128:
            break
        shown += b"'%s' " % arg[: 128 - len(shown)]
    line = b"-ERR unknown command '%s', with args beginning with: %s" % (argv[0][:128], shown)
    return line.replace(b"\r", b" ").replace(b"\n", b" ") + b"\r\n"


def _arity_error(name: bytes) -> bytes:
    return RespError(
        f"ERR wrong number of arguments for '{name.decode('utf-8', 'replace').lower()}' command"
    ).reply


class MiniRedisHandler(ClientHandler):
    """One client of a mini Redis; the keyspace is ``server.database``."""

    close_when_done = False

    def __init__(self, server: Any, client_socket: Any, client_address: Any) -> None:
        super().__init__(server, client_socket, client_address)
        self.framer = RespFramer()
        self.database: Database = server.database
        self.session = Session()

    def data_received(self, data: bytes) -> None:
        framer = self.framer
        framer.feed(data)
        self._answer()

    def eof_received(self) -> None:
        self.framer.feed_eof()
        self._answer()

    def pending_input(self) -> int:
        # A command begun and not finished: the request (slowloris) timeout runs.
        return self.framer.buffered

    def _answer(self) -> None:
        framer = self.framer
        requests = framer.maybe_requests()
        if requests:
            self.loop.requests += len(requests)
            self.send(self.database.execute_many(requests, self.session))
        if framer.error is not None:
            # The replies above go first; then the -ERR Protocol error and the close.
            raise framer.error


def serve(host: str = "localhost", port: int = 6379, database: Optional[Database] = None) -> Server:
    """A listening Server whose clients share ``database``."""
    server = Server(host, port)
    server.database = database if database is not None else Database()  # type: ignore[attr-defined]
    return server


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=6379)
    parser.add_argument("--selector", default=None, help="select, poll, epoll...")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        server = serve(args.host, args.port)
    except OSError as exc:  # a port in use or not ours to bind: one line, not a traceback
        parser.exit(
            2, f"{parser.prog}: error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}\n"
        )
    event_loop = EventLoop(args.selector)
    database = server.database  # type: ignore[attr-defined]

    def expire_cycle() -> None:
        # Redis's active expiry runs 10 times a second.
        database.expire_due()
        event_loop.call_later(0.1, expire_cycle)

    event_loop.add_server(server, MiniRedisHandler)
    event_loop.call_later(0.1, expire_cycle)
    print(f"listening on {server.host}:{server.port}", flush=True)
    try:
        event_loop.run()
    except KeyboardInterrupt:
        pass
    finally:
        event_loop.close()


if __name__ == "__main__":
    main()
