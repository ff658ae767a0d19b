"""The commands of each Redis type, as mixins over :class:`Keyspace`:
strings, lists, sets, hashes and sorted sets. Each answers as redis-server
7.0 does, errors included (tests/test_miniredis.py checks it against one)."""

import bisect
import collections
import itertools
from typing import Callable, Deque, List, Optional, Set, Tuple

from evloop.protocols.resp import OK, RespError

from .keyspace import Keyspace, ZSet
from .replies import (
    BULK_HEADS,
    EMPTY_ARRAY,
    INT64_MAX,
    INT64_MIN,
    SYNTAX,
    WRONGTYPE,
    Argv,
    arity_error,
    array,
    bulk,
    format_double,
    integer,
    parse_float,
    parse_int,
)

__all__ = ["HashCommands", "ListCommands", "SetCommands", "StringCommands", "ZSetCommands"]

POSITIVE = "ERR value is out of range, must be positive"


def _count_option(argv: Argv) -> Optional[int]:
    """The optional count of a pop (LPOP key [count]); None when absent."""
    if len(argv) < 3:
        return None
    count = parse_int(argv[2], POSITIVE)
    if count < 0:
        raise RespError(POSITIVE)
    return count


class StringCommands(Keyspace):
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
            return BULK_HEADS[len(value)] + value + b"\r\n"
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
            return arity_error(argv[0])
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
        return integer(number)


class ListCommands(Keyspace):
    def cmd_lpush(self, argv: Argv) -> bytes:
        items = self._list_for_push(argv[1])
        items.extendleft(argv[2:])
        return integer(len(items))

    def cmd_rpush(self, argv: Argv) -> bytes:
        items = self._list_for_push(argv[1])
        items.extend(argv[2:])
        return integer(len(items))

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
            return arity_error(argv[0])
        count = _count_option(argv)
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

    def cmd_llen(self, argv: Argv) -> bytes:
        items = self.lookup_typed(argv[1], collections.deque)
        return integer(0 if items is None else len(items))

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


class SetCommands(Keyspace):
    def cmd_sadd(self, argv: Argv) -> bytes:
        members = self.lookup_typed(argv[1], set)
        if members is None:
            members = self.data[argv[1]] = set()
        before = len(members)
        members.update(argv[2:])
        return integer(len(members) - before)

    def cmd_srem(self, argv: Argv) -> bytes:
        members = self.lookup_typed(argv[1], set)
        if members is None:
            return integer(0)
        before = len(members)
        members.difference_update(argv[2:])
        removed = before - len(members)
        if not members:
            self.delete(argv[1])
        return integer(removed)

    def cmd_smembers(self, argv: Argv) -> bytes:
        members = self.lookup_typed(argv[1], set)
        return array(() if members is None else members, self.nil, self.set_kind)

    def cmd_scard(self, argv: Argv) -> bytes:
        members = self.lookup_typed(argv[1], set)
        return integer(0 if members is None else len(members))

    def cmd_sismember(self, argv: Argv) -> bytes:
        members = self.lookup_typed(argv[1], set)
        return integer(members is not None and argv[2] in members)

    def cmd_spop(self, argv: Argv) -> bytes:
        # An arbitrary member (Python's set.pop), where Redis picks at random.
        if len(argv) > 3:
            raise RespError(SYNTAX)
        count = _count_option(argv)
        members = self.lookup_typed(argv[1], set)
        if members is None:
            return self.nil if count is None else array((), self.nil, self.set_kind)
        if count is None:
            reply = bulk(members.pop())
        else:
            taken = [members.pop() for _ in range(min(count, len(members)))]
            reply = array(taken, self.nil, self.set_kind)
        if not members:
            self.delete(argv[1])
        return reply


class HashCommands(Keyspace):
    def cmd_hset(self, argv: Argv) -> bytes:
        if len(argv) % 2:
            return arity_error(argv[0])
        fields = self.lookup_typed(argv[1], dict)
        if fields is None:
            fields = self.data[argv[1]] = {}
        before = len(fields)
        for i in range(2, len(argv), 2):
            fields[argv[i]] = argv[i + 1]
        return integer(len(fields) - before)

    def cmd_hget(self, argv: Argv) -> bytes:
        fields = self.lookup_typed(argv[1], dict)
        value = None if fields is None else fields.get(argv[2])
        return self.nil if value is None else bulk(value)

    def cmd_hgetall(self, argv: Argv) -> bytes:
        fields = self.lookup_typed(argv[1], dict)
        pairs = () if fields is None else itertools.chain.from_iterable(fields.items())
        return array(pairs, self.nil, self.map_kind)

    def cmd_hdel(self, argv: Argv) -> bytes:
        fields = self.lookup_typed(argv[1], dict)
        if fields is None:
            return integer(0)
        removed = sum(fields.pop(name, None) is not None for name in argv[2:])
        if not fields:
            self.delete(argv[1])
        return integer(removed)

    def cmd_hlen(self, argv: Argv) -> bytes:
        fields = self.lookup_typed(argv[1], dict)
        return integer(0 if fields is None else len(fields))

    def cmd_hexists(self, argv: Argv) -> bytes:
        fields = self.lookup_typed(argv[1], dict)
        return integer(fields is not None and argv[2] in fields)


class ZSetCommands(Keyspace):
    def cmd_zadd(self, argv: Argv) -> bytes:
        flags, pairs = self._zadd_options(argv)
        scored = [(parse_float(pairs[i]), pairs[i + 1]) for i in range(0, len(pairs), 2)]
        zset = self.lookup_typed(argv[1], ZSet)
        if zset is None:
            if b"XX" in flags:
                return self.nil if b"INCR" in flags else integer(0)
            zset = self.data[argv[1]] = ZSet()
        changed = added = 0
        result: Optional[float] = None
        # Many pairs at once are put in order by one sort at the end, not
        # one insertion each (O(n) apiece: quadratic for a big ZADD).
        resort = len(scored) > 64
        for score, member in scored:
            old = zset.scores.get(member)
            if b"INCR" in flags and old is not None:
                score += old
                if score != score:  # inf + -inf
                    raise RespError("ERR resulting score is not a number (NaN)")
            if (
                (old is None and b"XX" in flags)
                or (old is not None and b"NX" in flags)
                or (old is not None and b"GT" in flags and score <= old)
                or (old is not None and b"LT" in flags and score >= old)
            ):
                continue
            result = score
            if old == score:
                continue
            if old is None:
                added += 1
            elif not resort:
                del zset.order[bisect.bisect_left(zset.order, (old, member))]
            changed += 1
            zset.scores[member] = score
            if not resort:
                bisect.insort(zset.order, (score, member))
        if resort and changed:
            zset.order = sorted((score, member) for member, score in zset.scores.items())
        if not zset:
            self.delete(argv[1])
        if b"INCR" in flags:
            return self.nil if result is None else self._double(result)
        return integer(changed if b"CH" in flags else added)

    def _zadd_options(self, argv: Argv) -> Tuple[Set[bytes], Argv]:
        flags: Set[bytes] = set()
        i = 2
        while i < len(argv) and argv[i].upper() in (b"NX", b"XX", b"GT", b"LT", b"CH", b"INCR"):
            flags.add(argv[i].upper())
            i += 1
        pairs = argv[i:]
        if not pairs or len(pairs) % 2:
            raise RespError(SYNTAX)
        if b"NX" in flags and b"XX" in flags:
            raise RespError("ERR XX and NX options at the same time are not compatible")
        if (b"GT" in flags) + (b"LT" in flags) + (b"NX" in flags) > 1:
            raise RespError("ERR GT, LT, and/or NX options at the same time are not compatible")
        if b"INCR" in flags and len(pairs) > 2:
            raise RespError("ERR INCR option supports a single increment-element pair")
        return flags, pairs

    def cmd_zpopmin(self, argv: Argv) -> bytes:
        if len(argv) > 3:
            raise RespError(SYNTAX)
        count = _count_option(argv)
        zset = self.lookup_typed(argv[1], ZSet)
        if zset is None:
            return EMPTY_ARRAY
        taken = zset.order[: 1 if count is None else count]
        del zset.order[: len(taken)]
        for _, member in taken:
            del zset.scores[member]
        if not zset:
            self.delete(argv[1])
        # RESP3 gives one pair flat when no count was asked for, as Redis does.
        return self._scored(taken, flat=count is None)

    def _double(self, score: float) -> bytes:
        text = format_double(score)
        return b",%s\r\n" % text if self.resp3 else bulk(text)

    def _scored(self, pairs: List[Tuple[float, bytes]], flat: bool = False) -> bytes:
        """Members with their scores: a flat array in RESP2; in RESP3 an
        array of [member, double] pairs (one pair alone when ``flat``)."""
        if not self.resp3:
            return array([item for score, member in pairs for item in (member, format_double(score))])
        items = [b"*2\r\n" + bulk(member) + self._double(score) for score, member in pairs]
        if flat and items:
            return items[0]
        return b"*%d\r\n" % len(items) + b"".join(items)

    def cmd_zscore(self, argv: Argv) -> bytes:
        zset = self.lookup_typed(argv[1], ZSet)
        score = None if zset is None else zset.scores.get(argv[2])
        return self.nil if score is None else self._double(score)

    def cmd_zcard(self, argv: Argv) -> bytes:
        zset = self.lookup_typed(argv[1], ZSet)
        return integer(0 if zset is None else len(zset))

    def cmd_zrange(self, argv: Argv) -> bytes:
        # ZRANGE key start stop [WITHSCORES]: by rank only.
        if len(argv) > 5 or (len(argv) == 5 and argv[4].upper() != b"WITHSCORES"):
            raise RespError(SYNTAX)
        start, stop = parse_int(argv[2]), parse_int(argv[3])
        zset = self.lookup_typed(argv[1], ZSet)
        if zset is None:
            return EMPTY_ARRAY
        size = len(zset)
        start = max(0, size + start) if start < 0 else start
        stop = min(stop + size if stop < 0 else stop, size - 1)
        if start > stop:
            return EMPTY_ARRAY
        chosen = zset.order[start : stop + 1]
        if len(argv) == 5:
            return self._scored(chosen)
        return array([member for _, member in chosen])
