"""miniredis's :class:`Database`: the command table, running a batch of
commands (transactions included), and the commands about the connection
and the server (PING, ECHO, HELLO, CLIENT, CONFIG, INFO), with Redis's
``maxmemory``: past it, commands that may grow the data are answered with
Redis's OOM error and the rest run as usual (its ``noeviction`` policy)."""

import os
import sys
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from evloop.protocols.resp import OK, RespError

from .datatypes import HashCommands, ListCommands, SetCommands, StringCommands, ZSetCommands
from .globmatch import glob_matcher
from .replies import (
    EMPTY_ARRAY,
    NIL,
    NIL_ARRAY,
    OOM,
    PONG,
    RESP3_NIL,
    Argv,
    Session,
    arity_error,
    array,
    bulk,
    parse_int,
    parse_memory,
    unknown_command,
)

__all__ = ["COMMANDS", "Database", "process_memory"]

VERSION = b"7.0.0"

# Name, arity (Redis's: n means exactly n words, -n at least n) and whether
# it may grow the data (Redis's "denyoom" flag: refused past maxmemory).
COMMANDS: List[Tuple[str, int, bool]] = [
    ("PING", -1, False),
    ("ECHO", 2, False),
    ("HELLO", -1, False),
    ("CONFIG", -2, False),
    ("CLIENT", -2, False),
    ("INFO", -1, False),
    ("DBSIZE", 1, False),
    ("FLUSHDB", -1, False),
    ("FLUSHALL", -1, False),
    ("KEYS", 2, False),
    ("SCAN", -2, False),
    ("TYPE", 2, False),
    ("DEL", -2, False),
    ("EXISTS", -2, False),
    ("EXPIRE", -3, False),
    ("PEXPIRE", -3, False),
    ("TTL", 2, False),
    ("PTTL", 2, False),
    ("PERSIST", 2, False),
    ("GET", 2, False),
    ("SET", -3, True),
    ("MSET", -3, True),
    ("MGET", -2, False),
    ("INCR", 2, True),
    ("DECR", 2, True),
    ("INCRBY", 3, True),
    ("DECRBY", 3, True),
    ("LPUSH", -3, True),
    ("RPUSH", -3, True),
    ("LPOP", -2, False),
    ("RPOP", -2, False),
    ("LLEN", 2, False),
    ("LRANGE", 4, False),
    ("SADD", -3, True),
    ("SREM", -3, False),
    ("SMEMBERS", 2, False),
    ("SCARD", 2, False),
    ("SISMEMBER", 3, False),
    ("SPOP", -2, False),
    ("HSET", -4, True),
    ("HGET", 3, False),
    ("HGETALL", 2, False),
    ("HDEL", -3, False),
    ("HLEN", 2, False),
    ("HEXISTS", 3, False),
    ("ZADD", -4, True),
    ("ZPOPMIN", -2, False),
    ("ZSCORE", 3, False),
    ("ZCARD", 2, False),
    ("ZRANGE", -4, False),
    ("MULTI", 1, False),
    ("EXEC", 1, False),
    ("DISCARD", 1, False),
]

Entry = Tuple[Callable[[Argv], bytes], int, bool]


def process_memory() -> int:
    """Bytes of memory this process uses: its resident set on Linux (Redis's
    ``used_memory`` counts everything its allocator holds, clients
    included), else its peak resident set."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


class _TransactionStartedSignal(Exception):  # noqa: N818 (a signal, not an error)
    """MULTI ran: the commands after it are queued, not run."""


class Database(StringCommands, ListCommands, SetCommands, HashCommands, ZSetCommands):
    """One keyspace and the commands on it. No I/O.

    ``clock`` returns seconds (``time.monotonic`` by default; tests pass a
    clock they move). ``memory`` returns the bytes in use, compared with
    ``maxmemory`` (0: no limit) before a command that may grow the data;
    the default reads the process's resident size at most ten times a
    second. ``clients`` is kept by the server: connections open now.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        maxmemory: int = 0,
        memory: Optional[Callable[[], int]] = None,
    ) -> None:
        super().__init__(clock)
        self.maxmemory = maxmemory
        self.memory = memory if memory is not None else _sampled(process_memory, 0.1)
        self.clients = 0
        self.commands_processed = 0
        self.started = time.monotonic()
        # Command names as clients usually send them (upper and lower case)
        # map straight to their entry.
        self.commands: Dict[bytes, Entry] = {}
        for name, arity, grows in COMMANDS:
            entry = (getattr(self, "cmd_" + name.lower()), arity, grows)
            self.commands[name.encode()] = entry
            self.commands[name.lower().encode()] = entry

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
                entry = self.commands.get(argv[0].upper())
                if entry is None:
                    append(unknown_command(argv))
                    continue
            method, arity, grows = entry
            count = len(argv)
            if count != arity and (arity > 0 or count < -arity):
                append(arity_error(argv[0]))
                continue
            if grows and self.maxmemory and self.memory() > self.maxmemory:
                append(b"-" + OOM.encode() + b"\r\n")
                continue
            try:
                append(method(argv))
            except RespError as exc:
                append(exc.reply)
            except _TransactionStartedSignal:
                append(OK)
                append(self._transaction(commands))
        # Counted once a batch: a transaction's commands count as one.
        self.commands_processed += len(replies)
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
        resp3 = self.resp3 = protocol == 3
        self.nil = RESP3_NIL if resp3 else NIL
        self.nil_array = RESP3_NIL if resp3 else NIL_ARRAY
        self.set_kind = b"~" if resp3 else b"*"
        self.map_kind = b"%" if resp3 else b"*"

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
                replies.append(self._finish_transaction(argv, queue))
                return b"".join(replies)
            if name == b"MULTI":
                replies.append(RespError("ERR MULTI calls can not be nested").reply)
                continue
            entry = self.commands.get(name)
            count = len(argv)
            if entry is None:
                error = unknown_command(argv)
            elif count != entry[1] and (entry[1] > 0 or count < -entry[1]):
                error = arity_error(argv[0])
            elif self.maxmemory and self.memory() > self.maxmemory:
                # Past maxmemory Redis queues nothing, reads included.
                error = b"-" + OOM.encode() + b"\r\n"
            else:
                queue.append(argv)
                replies.append(b"+QUEUED\r\n")
                continue
            # Redis refuses to EXEC a transaction with a command it could not queue.
            session.queue_failed = True
            replies.append(error)
        return b"".join(replies)

    def _finish_transaction(self, argv: Argv, queue: List[Argv]) -> bytes:
        if len(argv) != 1:
            return arity_error(argv[0])
        if argv[0].upper() == b"DISCARD":
            return OK
        if self.session.queue_failed:
            return RespError("EXECABORT Transaction discarded because of previous errors.").reply
        results = [self.execute_many([queued], self.session) for queued in queue]
        return b"*%d\r\n" % len(results) + b"".join(results)

    # -- connection ---------------------------------------------------------

    def cmd_ping(self, argv: Argv) -> bytes:
        if len(argv) > 2:
            return arity_error(argv[0])
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
            bulk(VERSION),
            bulk(b"proto"),
            b":%d\r\n" % protocol,
            bulk(b"mode"),
            bulk(b"standalone"),
            bulk(b"role"),
            bulk(b"master"),
            bulk(b"modules"),
            EMPTY_ARRAY,
        ]
        kind = b"%" if protocol == 3 else b"*"
        count = len(fields) // 2 if protocol == 3 else len(fields)
        return b"%s%d\r\n" % (kind, count) + b"".join(fields)

    def cmd_client(self, argv: Argv) -> bytes:
        # redis-py names itself with CLIENT SETINFO on connect.
        subcommand = argv[1].upper()
        if subcommand == b"SETNAME" and len(argv) == 3:
            self.session.name = argv[2]
            return OK
        if subcommand == b"SETINFO" and len(argv) == 4:
            return OK
        raise RespError("ERR only CLIENT SETNAME and CLIENT SETINFO are supported")

    # -- server -------------------------------------------------------------

    def config(self) -> Dict[bytes, bytes]:
        """The parameters CONFIG GET knows: miniredis never persists, so
        ``save`` is empty and ``appendonly`` is ``no``."""
        return {
            b"save": b"",
            b"appendonly": b"no",
            b"maxmemory": b"%d" % self.maxmemory,
            b"maxmemory-policy": b"noeviction",
        }

    def cmd_config(self, argv: Argv) -> bytes:
        subcommand = argv[1].upper()
        if subcommand == b"GET":
            if len(argv) < 3:
                return arity_error(b"config|get")
            return self._config_get(argv[2:])
        if subcommand == b"SET":
            if len(argv) < 4 or len(argv) % 2:
                return arity_error(b"config|set")
            return self._config_set(argv[2:])
        name = argv[1].decode("utf-8", "replace")
        raise RespError(f"ERR unknown subcommand '{name}'. Try CONFIG HELP.")

    def _config_get(self, patterns: Argv) -> bytes:
        known = self.config()
        found: Dict[bytes, bytes] = {}
        for pattern in patterns:
            if not any(c in pattern for c in b"*?["):
                # An exact name: Redis answers with the name as it was asked.
                value = known.get(pattern.lower())
                if value is not None:
                    found.setdefault(pattern, value)
                continue
            match = glob_matcher(pattern.lower())  # names match case-insensitively
            for name, value in known.items():
                if match(name):
                    found.setdefault(name, value)
        return array([item for pair in found.items() for item in pair], self.nil, self.map_kind)

    def _config_set(self, pairs: Argv) -> bytes:
        for i in range(0, len(pairs), 2):
            name, value = pairs[i].lower(), pairs[i + 1]
            if name != b"maxmemory":
                shown = pairs[i].decode("utf-8", "replace")
                raise RespError(f"ERR Unknown option or number of arguments for CONFIG SET - '{shown}'")
            amount = parse_memory(value)
            if amount is None:
                raise RespError(
                    "ERR CONFIG SET failed (possibly related to argument 'maxmemory') "
                    "- argument must be a memory value"
                )
            self.maxmemory = amount
        return OK

    def cmd_info(self, argv: Argv) -> bytes:
        """INFO [section ...]: server, clients, memory, stats and keyspace,
        a few fields each, named and laid out as Redis's."""
        sections = self._info_sections()
        wanted = [name.lower() for name in argv[1:]] or [b"default"]
        if any(name in (b"default", b"all", b"everything") for name in wanted):
            wanted = list(sections)
        text = b"\r\n".join(
            b"# %s\r\n" % name.capitalize() + b"".join(b"%s:%s\r\n" % field for field in sections[name])
            for name in sections
            if name in wanted
        )
        return bulk(text)

    def _info_sections(self) -> Dict[bytes, List[Tuple[bytes, bytes]]]:
        used = self.memory()
        keyspace = []
        if self.data:
            keyspace.append((b"db0", b"keys=%d,expires=%d,avg_ttl=0" % (len(self.data), len(self.expires))))
        return {
            b"server": [
                (b"redis_version", VERSION),
                (b"redis_mode", b"standalone"),
                (b"process_id", b"%d" % os.getpid()),
                (b"uptime_in_seconds", b"%d" % (time.monotonic() - self.started)),
            ],
            b"clients": [(b"connected_clients", b"%d" % self.clients)],
            b"memory": [
                (b"used_memory", b"%d" % used),
                (b"maxmemory", b"%d" % self.maxmemory),
                (b"maxmemory_policy", b"noeviction"),
            ],
            b"stats": [
                (b"total_commands_processed", b"%d" % self.commands_processed),
                (b"expired_keys", b"%d" % self.expired_keys),
            ],
            b"keyspace": keyspace,
        }


def _sampled(read: Callable[[], int], interval: float) -> Callable[[], int]:
    """``read``, called at most once per ``interval`` seconds."""
    last: List[Any] = [0.0, 0]

    def sample() -> int:
        now = time.monotonic()
        if now - last[0] >= interval:
            last[0], last[1] = now, read()
        return int(last[1])

    return sample
