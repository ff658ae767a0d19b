"""RESP2, the Redis serialization protocol: requests in, replies out.

Theory of operation. A client sends commands in one of two forms
(https://redis.io/docs/reference/protocol-spec/):

- multibulk: ``*<count>\\r\\n`` then ``count`` bulk strings, each
  ``$<length>\\r\\n<length bytes>\\r\\n``; this is what every client
  library and ``redis-benchmark`` send;
- inline: one line of space-separated words ending in ``\\n`` (a ``\\r``
  before it is dropped), with Redis's quoting rules; what a person types
  into telnet.

A request is the command's argument vector, a list of bytes:
``[b"SET", b"key", b"value"]``.

:meth:`RespFramer.maybe_requests` returns every whole command buffered,
in order, in one list: a client that pipelines sixteen commands gets all
sixteen parsed in one call and answered in one ``send``. It has two paths:

- the fast path, taken when no command is half-parsed: one C-level
  ``split(b"\\r\\n")`` of the whole buffer, then a walk over the pieces that
  accepts a command only if every ``$<length>`` line names exactly the length
  of the piece after it. Anything else (a value holding ``\\r\\n``, an
  inline command, a length outside the precomputed table, a command cut off
  by the end of the read) stops it, and the careful path takes over exactly
  where it stopped;
- the careful path, which follows Redis's own ``processMultibulkBuffer``: it
  consumes one line or one bulk at a time and keeps a half-received command's
  arguments in the framer, so no byte is parsed twice however the stream is
  chunked; a partial line's scan resumes where it stopped; a bulk whose
  length is known waits, without scanning, until all its bytes are there.
  A command with many arguments still to come is taken in runs: one split
  of a window of the buffer for many arguments, checked as the fast path
  checks, with the window and the runs' frequency bounded so that bytes a
  run cannot take cost little more than the line-at-a-time walk would.
  Inline commands are split by :mod:`.resp_inline`.

Limits, each checked before the number is trusted: a line (an inline command
or a ``*``/``$`` header) may hold ``max_line`` bytes (64 KiB, Redis's
``PROTO_INLINE_MAX_SIZE``), a command ``max_elements`` arguments (Redis's
1024*1024) and ``max_size`` bytes in all, where each argument counts its
length plus ``argument_cost`` (64 bytes: what CPython spends to hold a short
argument, a bytes object and its slot in the list), so a command of a
million tiny arguments is charged for the memory it really takes, as Redis
charges a client for its argument vector. Breaking any of them,
or the syntax, raises :class:`~evloop.RemoteProtocolError` whose ``reply`` is
Redis's ``-ERR Protocol error: ...`` line; the connection then closes, as
Redis does, because the stream can no longer be trusted. The commands that
came before the violation are still returned first. A stream that ends
inside a command is an error too.

:meth:`RespFramer.encode` and :func:`encode_reply` turn Python values into
replies; :func:`encode_command` builds a request, for clients and tests.
"""

import bisect
import itertools
from typing import Any, Dict, List, Optional

from evloop import LocalProtocolError, RemoteProtocolError

from .framing import NEED_DATA, Framer
from .resp_inline import split_inline

__all__ = ["RespError", "RespFramer", "encode_command", "encode_reply"]

# Headers the fast path recognises without int(); anything else goes to the
# careful path, which parses and checks it properly.
_FAST_COUNTS: Dict[bytes, int] = {b"*%d" % n: n for n in range(1, 257)}
_FAST_LENGTHS: Dict[bytes, int] = {b"$%d" % n: n for n in range(0, 4097)}

# Redis's PROTO_INLINE_MAX_SIZE: the longest line it buffers.
MAX_LINE = 64 * 1024
# The bytes a run of arguments may look at (see RespFramer._take_run).
_MIN_RUN_WINDOW = 256
_MAX_RUN_WINDOW = 1024 * 1024
# Redis refuses a multibulk count above this from a client (networking.c).
MAX_ELEMENTS = 1024 * 1024
# What one argument costs to hold beyond its bytes, on 64-bit CPython: a
# bytes object's header (33 bytes, rounded up to 40 by the allocator for a
# short one) and its slot in the argument list (8, plus the list's spare
# slots); tracemalloc measures 43 bytes per 2-byte argument. Rounded up so
# the charge stays an upper bound.
ARGUMENT_COST = 64


class RespError(Exception):
    """A command failed: the reply is ``-<message>\\r\\n`` and the connection
    stays open. ``message`` starts with the error code, as Redis's do:
    ``"ERR syntax error"``, ``"WRONGTYPE Operation against ..."``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def reply(self) -> bytes:
        return _error_line(self.message)


def _error_line(message: str) -> bytes:
    # An error is one line: a CR or LF inside would end it early.
    text = message.replace("\r", " ").replace("\n", " ")
    return b"-" + text.encode("utf-8", "replace") + b"\r\n"


def _protocol_error(what: str) -> bytes:
    return _error_line("ERR Protocol error: " + what)


class RespFramer(Framer):
    """Sans-I/O RESP2 request parser; requests are argument lists of bytes.

    ``max_size`` bounds the memory one command may hold (default 64 MiB;
    Redis allows 512 MiB per argument): each argument is charged its length
    plus ``argument_cost`` bytes. ``max_line`` bounds the bytes of one line,
    ``max_elements`` the arguments of one command.
    """

    default_max_size = 64 * 1024 * 1024

    __slots__ = (
        "_args",
        "_bulk",
        "_fast_counts",
        "_fast_limit",
        "_remaining",
        "_run_backoff",
        "_run_pause",
        "_run_window",
        "_runs",
        "_scanned",
        "_size",
        "argument_cost",
        "error",
        "max_elements",
        "max_line",
    )

    def __init__(
        self,
        max_size: Optional[int] = None,
        *,
        max_line: int = MAX_LINE,
        max_elements: int = MAX_ELEMENTS,
        argument_cost: int = ARGUMENT_COST,
    ) -> None:
        super().__init__(max_size)
        self.argument_cost = argument_cost
        #: The violation found, if any; every later call raises it. (A plain
        #: attribute: a handler checks it after every read.)
        self.error: Optional[RemoteProtocolError] = None
        self.max_line = max_line
        self.max_elements = max_elements
        # The command being received by the careful path: its arguments so
        # far (None: between commands), how many more are due, the length of
        # the bulk now expected (-1: its $ line comes first) and its size in
        # bytes (the charge against max_size adds argument_cost per argument).
        self._args: Optional[List[bytes]] = None
        self._remaining = 0
        self._bulk = -1
        self._size = 0
        # Bytes at the start of the buffer already searched for a line end.
        self._scanned = 0
        # The fast path must refuse what the limits refuse: its counts stop
        # at max_elements, and its headers ("$4096") are far shorter than
        # any sane max_line; max_size is checked against the whole buffer.
        self._fast_counts = (
            _FAST_COUNTS
            if max_elements >= len(_FAST_COUNTS)
            else {line: count for line, count in _FAST_COUNTS.items() if count <= max_elements}
        )
        if max_line < 8:
            self._fast_counts = {}
        # A command the fast path takes has at most len(_FAST_COUNTS)
        # arguments and no more bytes than the buffer, so it is within
        # max_size when the buffer is within this.
        self._fast_limit = self.max_size - len(_FAST_COUNTS) * argument_cost
        # Runs of arguments (see _take_run) need the same sane max_line, and
        # start with a small window that doubles while runs take all of it;
        # after a short run, the next waits for a number of arguments taken
        # one by one that doubles with each short run.
        self._runs = max_line >= 8
        self._run_window = _MIN_RUN_WINDOW
        self._run_pause = self._run_backoff = 0

    @property
    def buffered(self) -> int:
        return len(self._buffer) + self._size

    # -- the framer contract ------------------------------------------------

    def next_request(self) -> Any:
        """The next whole command, or NEED_DATA. Raises RemoteProtocolError.
        (A handler that answers in batches calls :meth:`maybe_requests`.)"""
        if self._error is not None:
            raise self._error
        request = self._careful_one()
        if request is None:
            if self._eof and (self._buffer or self._args is not None):
                raise self._truncated()
            return NEED_DATA
        return request

    def maybe_requests(self) -> List[List[bytes]]:
        """Every whole command buffered, in order; an empty list if none is.

        Raises RemoteProtocolError if the bytes break the protocol (or the
        stream ended inside a command) and no whole command precedes the
        violation; if some do, they are returned and the next call raises.
        """
        if self._error is not None:
            raise self._error
        requests: List[List[bytes]] = []
        buffer = self._buffer
        # No command can hold more argument bytes than the whole buffer, nor
        # more arguments than the fast path's largest count, so when the
        # buffer is within _fast_limit the fast path need not count them.
        if (
            self._args is None
            and not self._scanned
            and buffer
            and buffer[0] == 42  # "*"
            and len(buffer) <= self._fast_limit
        ):
            self._fast(requests)
            if not buffer and not self._eof:
                return requests
        careful = self._careful_one
        try:
            while True:
                request = careful()
                if request is None:
                    break
                requests.append(request)
            if self._eof and (buffer or self._args is not None):
                raise self._truncated()
        except RemoteProtocolError:
            if not requests:
                raise
        return requests

    def encode(self, message: Any) -> bytes:
        """The RESP2 reply for ``message``; see :func:`encode_reply`."""
        return encode_reply(message)

    def _truncated(self) -> RemoteProtocolError:
        return self._fail(f"the stream ended inside a command ({self.buffered} bytes buffered)")

    def _fail(
        self, message: str, reply: Optional[bytes] = None, *, too_large: bool = False
    ) -> RemoteProtocolError:
        error = self.error = super()._fail(message, reply, too_large=too_large)
        self._args = None
        self._size = 0
        self._scanned = 0
        return error

    # -- the fast path ------------------------------------------------------

    def _fast(self, requests: List[List[bytes]]) -> None:
        """Take the whole, plain multibulk commands at the start of the
        buffer; stop at the first piece that is anything else."""
        buffer = self._buffer
        pieces = bytes(buffer).split(b"\r\n")
        # The last piece has no CRLF after it: never part of a whole command.
        last = len(pieces) - 1
        counts = self._fast_counts
        lengths = _FAST_LENGTHS.get
        start = 0
        # A pipeline is mostly a run of commands of one shape ("*3", then
        # three bulks), so the pieces repeat with a fixed stride. Then each
        # column of $<length> lines is checked against the column of values
        # after it in one C-level map, instead of command by command. It
        # accepts exactly what the walk below would: every command starts
        # with the same *<count>, and every $<length> names the length of
        # the piece after it.
        count = counts.get(pieces[0])
        if count is not None:
            stride = 2 * count + 1
            whole = last // stride
            span = whole * stride
            if whole > 1 and pieces[0:span:stride].count(pieces[0]) == whole:
                for column in range(1, stride, 2):
                    heads = pieces[column:span:stride]
                    sizes = list(map(len, pieces[column + 1 : span : stride]))
                    # Most often one $<length> line repeats down the column.
                    if heads.count(heads[0]) == whole:
                        length = lengths(heads[0])
                        if length is None or sizes.count(length) != whole:
                            break
                    elif list(map(lengths, heads)) != sizes:
                        break
                else:
                    requests += [pieces[head + 2 : head + stride : 2] for head in range(0, span, stride)]
                    start = span
        # Command by command, for mixed pipelines and what the run left.
        append = requests.append
        while start < last:
            count = counts.get(pieces[start])
            if count is None:
                break
            end = start + 1 + 2 * count
            if end > last:
                break
            args = pieces[start + 2 : end : 2]
            # Each $<length> line must name the length of the piece after
            # it; a value holding CRLF was split short and fails this.
            if list(map(lengths, pieces[start + 1 : end : 2])) != list(map(len, args)):
                break
            append(args)
            start = end
        if start:
            if start == last and not pieces[last]:
                buffer.clear()  # the usual case: the read ended with a command
            else:
                # The pieces taken, plus the CRLF that followed each.
                del buffer[: sum(map(len, pieces[:start])) + 2 * start]

    # -- the careful path ---------------------------------------------------

    def _line(self) -> Optional[bytes]:
        """The next CRLF-terminated line (consumed, CRLF dropped), or None."""
        buffer = self._buffer
        end = buffer.find(b"\r\n", self._scanned)
        # The line is at least this long: a CR at the very end may be the
        # start of its CRLF. Judged the same whether or not the CRLF has come,
        # so the chunking cannot change the verdict or the reply.
        length = end if end >= 0 else len(buffer) - buffer.endswith(b"\r")
        if length > self.max_line:
            raise self._fail(
                f"a line longer than {self.max_line} bytes: {bytes(buffer[:40])!r}...",
                _protocol_error(
                    "too big mbulk count string" if self._args is None else "too big bulk count string"
                ),
                too_large=True,
            )
        if end < 0:
            self._scanned = max(0, len(buffer) - 1)
            return None
        line = bytes(buffer[:end])
        del buffer[: end + 2]
        self._scanned = 0
        return line

    def _careful_one(self) -> Optional[List[bytes]]:
        """Parse on from where the last call stopped; return the next whole
        command, or None if the buffer holds no more of one."""
        buffer = self._buffer
        while True:
            args = self._args
            if args is None:
                if not buffer:
                    return None
                if buffer[0] != 42:  # not "*": an inline command
                    request = self._inline()
                    if request is None or request:
                        return request
                    continue  # an empty line: Redis ignores it
                line = self._line()
                if line is None:
                    return None
                count = self._checked_count(line)
                if count <= 0:
                    continue  # "*0" and "*-1" carry no command; Redis skips them
                self._args = args = []
                self._remaining = count
                self._bulk = -1
                self._size = 0
            while self._remaining:
                if self._remaining >= 8 and self._bulk < 0 and not self._scanned and self._runs:
                    if self._run_pause:
                        self._run_pause -= 1
                    else:
                        self._take_run(args)
                        if not self._remaining:
                            break
                length = self._bulk
                if length < 0:
                    line = self._line()
                    if line is None:
                        return None
                    length = self._bulk = self._checked_length(line, len(args))
                # Wait, without scanning, until the bulk and its CRLF are in.
                if len(buffer) < length + 2:
                    return None
                if buffer[length : length + 2] != b"\r\n":
                    raise self._fail(
                        f"a {length}-byte bulk is not followed by CRLF: "
                        f"{bytes(buffer[length : length + 2])!r}",
                        _protocol_error("expected CRLF after a bulk string"),
                    )
                args.append(bytes(buffer[:length]))
                del buffer[: length + 2]
                self._size += length
                self._bulk = -1
                self._remaining -= 1
            self._args = None
            self._size = 0
            return args

    def _checked_count(self, line: bytes) -> int:
        """The count of a ``*<count>`` line, checked against the limits."""
        count = _parse_number(line)
        if count is None:
            raise self._fail(
                f"bad multibulk count line {line!r}", _protocol_error("invalid multibulk length")
            )
        if count > self.max_elements:
            raise self._fail(
                f"{count} arguments are over the limit of {self.max_elements}",
                _protocol_error("invalid multibulk length"),
            )
        if count * self.argument_cost > self.max_size:
            # Refused before any argument is read: even empty ones would
            # cost more than the limit.
            raise self._fail(
                f"{count} arguments would cost {count * self.argument_cost} bytes, "
                f"over the limit of {self.max_size}",
                _protocol_error("invalid multibulk length"),
                too_large=True,
            )
        return count

    def _checked_length(self, line: bytes, taken: int) -> int:
        """The length of a ``$<length>`` line, checked against what the
        command (``taken`` arguments so far) may still hold."""
        if line[:1] != b"$":
            raise self._fail(
                f"expected a $<length> line, got {line[:40]!r}",
                _protocol_error(f"expected '$', got '{line[:1].decode('latin-1')}'"),
            )
        length = _parse_number(line)
        if length is None or length < 0:
            raise self._fail(f"bad bulk length line {line[:40]!r}", _protocol_error("invalid bulk length"))
        cost = self.argument_cost
        if length + cost > self.max_size - self._size - taken * cost:
            raise self._fail(
                f"a {length}-byte argument would take the command over the limit of "
                f"{self.max_size} bytes ({cost} charged for each argument)",
                _protocol_error("invalid bulk length"),
                too_large=True,
            )
        return length

    def _take_run(self, args: List[bytes]) -> None:
        """Take the plain arguments at the start of the buffer in one C-level
        split: for a command of many arguments, which the loop below would
        take a line at a time. Takes only what that loop would take the same
        way (a ``$<length>`` line naming exactly the length of the piece
        after it, within the limit), and leaves it anything else to judge.

        It looks at a window of the buffer that doubles while runs take all
        of it and drops back to its minimum when one stops short, and a
        short run (fewer than 8 arguments) puts off the next one for
        1, 3, 7 ... up to 255 arguments, so what it costs stays within a small
        multiple of what the loop below would spend, whatever a peer sends."""
        buffer = self._buffer
        window = self._run_window
        pieces = bytes(buffer[:window]).split(b"\r\n", 2 * self._remaining)
        whole = (len(pieces) - 1) // 2  # pairs whose both pieces end in CRLF
        heads = pieces[0 : 2 * whole : 2]
        values = pieces[1 : 2 * whole : 2]
        sizes = list(map(len, values))
        expected = list(map(_FAST_LENGTHS.get, heads))
        good = whole
        if expected != sizes:
            pairs = enumerate(zip(sizes, expected, strict=True))
            good = next(i for i, (size, length) in pairs if size != length)
        # As many as fit: argument bytes plus argument_cost each.
        cost = self.argument_cost
        room = self.max_size - self._size - len(args) * cost
        charges = list(itertools.accumulate(size + cost for size in sizes[:good]))
        good = bisect.bisect_right(charges, room)
        if good:
            args += values[:good]
            taken = sum(sizes[:good])
            del buffer[: sum(map(len, heads[:good])) + taken + 4 * good]
            self._size += taken
            self._remaining -= good
        if good and good == whole:
            self._run_window = min(2 * window, _MAX_RUN_WINDOW)
        else:
            self._run_window = _MIN_RUN_WINDOW
        self._run_backoff = 0 if good >= 8 else min(2 * self._run_backoff + 1, 255)
        self._run_pause = self._run_backoff

    def _inline(self) -> Optional[List[bytes]]:
        """An inline command (possibly empty), or None if its line is not
        all here."""
        buffer = self._buffer
        end = buffer.find(b"\n", self._scanned)
        if end < 0:
            if len(buffer) > self.max_line:
                raise self._fail(
                    f"an inline command longer than {self.max_line} bytes: {bytes(buffer[:40])!r}...",
                    _protocol_error("too big inline request"),
                    too_large=True,
                )
            self._scanned = len(buffer)
            return None
        if end > self.max_line:
            raise self._fail(
                f"a {end}-byte inline command is over the limit of {self.max_line}",
                _protocol_error("too big inline request"),
                too_large=True,
            )
        line = bytes(buffer[:end])
        del buffer[: end + 1]
        self._scanned = 0
        if line.endswith(b"\r"):
            line = line[:-1]
        words = split_inline(line)
        if words is None:
            raise self._fail(
                f"unbalanced quotes in inline command {line[:60]!r}",
                _protocol_error("unbalanced quotes in request"),
            )
        return words


def _parse_number(line: bytes) -> Optional[int]:
    """The integer after the type byte of a ``*`` or ``$`` line, or None.
    Like Redis's ``string2ll``: an optional minus, then digits with no
    leading zero; no spaces, no plus, no "-0"."""
    digits = line[1:]
    if digits[:1] == b"-":
        digits = digits[1:]
        if digits == b"0":
            return None
    if not digits.isdigit() or (digits[:1] == b"0" and len(digits) > 1) or len(digits) > 18:
        return None
    return int(line[1:])


# -- encoding -------------------------------------------------------------

NIL = b"$-1\r\n"
OK = b"+OK\r\n"


def encode_reply(value: Any) -> bytes:
    """The RESP2 bytes for ``value``:

    - ``bytes``-like: a bulk string; ``None``: the null bulk ``$-1``;
    - ``str``: a simple string (``+OK``); it must not hold CR or LF;
    - ``int`` (and ``bool``): an integer reply;
    - ``list`` or ``tuple``: an array of the encodings of its items;
    - :class:`RespError`: an error reply.

    Raises LocalProtocolError for anything else.
    """
    kind = type(value)
    if kind is bytes or kind is bytearray or kind is memoryview:
        return b"$%d\r\n%s\r\n" % (len(value), value)
    if value is None:
        return NIL
    if kind is str:
        if "\r" in value or "\n" in value:
            raise LocalProtocolError(f"a simple string cannot hold CR or LF: {value!r}")
        text: str = value
        return b"+" + text.encode("utf-8") + b"\r\n"
    if kind is int or kind is bool:
        number: int = value
        return b":%d\r\n" % number
    if kind is list or kind is tuple:
        return b"*%d\r\n" % len(value) + b"".join(map(encode_reply, value))
    if isinstance(value, RespError):
        return value.reply
    raise LocalProtocolError(f"RESP2 has no encoding for {kind.__name__}: {value!r}")


def encode_command(*args: Any) -> bytes:
    """A multibulk request: ``encode_command("SET", "k", b"v")``. str
    arguments are UTF-8 encoded, ints written in decimal."""
    pieces = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode("utf-8")
        elif isinstance(arg, int):
            arg = b"%d" % arg
        pieces.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(pieces)
