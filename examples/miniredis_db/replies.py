"""What every command module of miniredis shares: reply builders, Redis's
error texts, number parsing as Redis parses, and the per-connection
:class:`Session`."""

import math
from typing import Iterable, List, Optional

from evloop.protocols.resp import NIL, RespError

__all__ = [
    "BULK_HEADS",
    "EMPTY_ARRAY",
    "INT64_MAX",
    "INT64_MIN",
    "NIL",
    "NIL_ARRAY",
    "NOT_INTEGER",
    "OOM",
    "PONG",
    "RESP3_NIL",
    "SYNTAX",
    "WRONGTYPE",
    "Argv",
    "Session",
    "arity_error",
    "array",
    "bulk",
    "format_double",
    "integer",
    "parse_float",
    "parse_int",
    "parse_memory",
    "unknown_command",
]

WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"
NOT_INTEGER = "ERR value is not an integer or out of range"
NOT_FLOAT = "ERR value is not a valid float"
SYNTAX = "ERR syntax error"
OOM = "OOM command not allowed when used memory > 'maxmemory'."
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
EMPTY_ARRAY = b"*0\r\n"
NIL_ARRAY = b"*-1\r\n"
PONG = b"+PONG\r\n"
RESP3_NIL = b"_\r\n"

Argv = List[bytes]

# "$<length>\r\n" for short values: indexing beats formatting on the hot path.
BULK_HEADS = [b"$%d\r\n" % length for length in range(1024)]


def bulk(value: bytes) -> bytes:
    if len(value) < 1024:
        return BULK_HEADS[len(value)] + value + b"\r\n"
    return b"$%d\r\n%s\r\n" % (len(value), value)


def integer(number: int) -> bytes:
    return b":%d\r\n" % number


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


def parse_float(text: bytes) -> float:
    """A score as Redis reads one (``strtod``: ``inf``, ``-inf``, decimals,
    exponents; no NaN, no spaces), else RespError."""
    try:
        number = float(text)
    except ValueError:
        raise RespError(NOT_FLOAT) from None
    if math.isnan(number) or text[:1].isspace() or text[-1:].isspace() or b"_" in text:
        raise RespError(NOT_FLOAT)
    return number


def format_double(number: float) -> bytes:
    """A double as Redis 7.0 writes one in a reply (``%.17g``)."""
    if math.isinf(number):
        return b"inf" if number > 0 else b"-inf"
    return b"%.17g" % number


_UNITS = {
    b"": 1,
    b"b": 1,
    b"k": 1000,
    b"kb": 1024,
    b"m": 1000**2,
    b"mb": 1024**2,
    b"g": 1000**3,
    b"gb": 1024**3,
}


def parse_memory(text: bytes) -> Optional[int]:
    """A memory amount as Redis's ``memtoll`` reads one (``100mb``, ``1gb``,
    ``5k``, case-insensitive), or None if it is not one."""
    lowered = text.lower()
    digits = lowered.rstrip(b"kmgb")
    unit = lowered[len(digits) :]
    if unit not in _UNITS or not digits.isdigit():
        return None
    return int(digits) * _UNITS[unit]


def unknown_command(argv: Argv) -> bytes:
    # Redis's wording, byte for byte: arguments are quoted until 128 bytes of
    # them have been shown.
    shown = b""
    for arg in argv[1:]:
        if len(shown) >= 128:
            break
        shown += b"'%s' " % arg[: 128 - len(shown)]
    line = b"-ERR unknown command '%s', with args beginning with: %s" % (argv[0][:128], shown)
    return line.replace(b"\r", b" ").replace(b"\n", b" ") + b"\r\n"


def arity_error(name: bytes) -> bytes:
    return RespError(
        f"ERR wrong number of arguments for '{name.decode('utf-8', 'replace').lower()}' command"
    ).reply
