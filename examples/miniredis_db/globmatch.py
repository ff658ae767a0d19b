"""Redis's glob patterns (``stringmatchlen`` in util.c), matched without
backtracking.

A pattern is read once, as Redis reads it, into single-byte tokens (a
literal, ``?``, a ``[...]`` class) and ``*``. The stars cut it into
segments of fixed width. A string matches when the first segment matches at
its start, the last at its end, and the middle ones, in order, somewhere
between: taking each middle segment at its leftmost place is always right,
because the star after it can take whatever a later place would have
skipped. Each segment becomes a regular expression of single-byte atoms
with no repetition, which ``re`` can only try position by position: the
whole match costs at most (string length x pattern length) steps, in C,
whatever the pattern. (Redis's own matcher backtracks, bounded since its
CVE-2022-36021 fix; a regular expression made of the whole glob, ``.*``
for each star, backtracks without bound.)

A pattern may be 16 KiB long (``MAX_PATTERN``; Redis has no limit, but it
reads patterns in C): a longer one is refused with an error.

Redis's quirks are kept, so the answers are the same as redis-server's:
an empty string matches only an empty pattern (``*`` included); ``\\``
escapes the next byte, also inside a class; ``[a-]`` is a range from ``a``
to ``]``; a class left open runs to the end of the pattern; ``[^`` at the
very end matches any byte; and a pattern with more than 1000 stars that
must each match something (Redis's nesting limit) matches nothing.
"""

import functools
import re
from typing import Callable, List, Optional, Tuple

from evloop.protocols.resp import RespError

__all__ = ["MAX_NESTING", "MAX_PATTERN", "glob_matcher"]

# Redis gives up (no match) past this many nested star matches.
MAX_NESTING = 1000
# Reading a pattern and compiling its segments costs about 3 us a byte in
# Python (Redis, in C, takes any length): past this, a pattern is refused,
# so that no KEYS holds the loop for more than about 50 ms.
MAX_PATTERN = 16 * 1024
# Patterns up to this long are kept, 256 of them, for the next KEYS or SCAN.
_CACHED = 1024
_ANY = b"."
_STAR = None

Token = Optional[bytes]  # a regex atom for one byte, or _STAR


def _class(pattern: bytes, i: int) -> Tuple[bytes, int]:
    """The regex atom for the class whose ``[`` is at ``i - 1``; the index
    after it. Follows Redis's loop: ``\\x`` escapes, ``]`` ends, ``a-z``
    (ends swapped if reversed) when three bytes remain, else a literal."""
    n = len(pattern)
    negate = i < n and pattern[i] == 94  # ^
    if negate:
        i += 1
    members: List[bytes] = []
    while True:
        if i < n and pattern[i] == 92 and n - i >= 2:  # \x
            i += 1
            members.append(b"\\x%02x" % pattern[i])
        elif i < n and pattern[i] == 93:  # ]
            break
        elif i >= n:
            # Redis steps back one and breaks; its step after the class
            # then ends the pattern.
            i = n - 1
            break
        elif n - i >= 3 and pattern[i + 1] == 45:  # a-z
            low, high = sorted((pattern[i], pattern[i + 2]))
            members.append(b"\\x%02x-\\x%02x" % (low, high))
            i += 2
        else:
            members.append(b"\\x%02x" % pattern[i])
        i += 1
    if not members:
        return (_ANY if negate else b"(?!)"), i + 1
    return b"[%s%s]" % (b"^" if negate else b"", b"".join(members)), i + 1


def _tokens(pattern: bytes) -> List[Token]:
    tokens: List[Token] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == 42:  # *: a run of them is one star
            if not tokens or tokens[-1] is not _STAR:
                tokens.append(_STAR)
            i += 1
        elif c == 63:  # ?
            tokens.append(_ANY)
            i += 1
        elif c == 91:  # [
            atom, i = _class(pattern, i + 1)
            tokens.append(atom)
        else:
            if c == 92 and n - i >= 2:  # \x (a lone \ at the end is itself)
                i += 1
            tokens.append(b"\\x%02x" % pattern[i])
            i += 1
    return tokens


def glob_matcher(pattern: bytes) -> Callable[[bytes], bool]:
    """A function telling whether a byte string matches ``pattern`` as
    Redis's ``stringmatchlen`` (case-sensitive) would. Raises RespError
    for a pattern over MAX_PATTERN bytes."""
    if len(pattern) > MAX_PATTERN:
        raise RespError(f"ERR glob pattern longer than {MAX_PATTERN} bytes")
    return _cached_matcher(pattern) if len(pattern) <= _CACHED else _matcher(pattern)


@functools.lru_cache(maxsize=256)
def _cached_matcher(pattern: bytes) -> Callable[[bytes], bool]:
    return _matcher(pattern)


def _matcher(pattern: bytes) -> Callable[[bytes], bool]:
    if pattern == b"*":
        return lambda string: True  # what KEYS * does: even the empty key
    tokens = _tokens(pattern)
    segments: List[List[bytes]] = [[]]
    for token in tokens:
        if token is _STAR:
            segments.append([])
        else:
            segments[-1].append(token)
    # Each star but a trailing one must match at least one more byte.
    if len(segments) - 1 - (not segments[-1]) > MAX_NESTING:
        return lambda string: False
    compiled = [re.compile(b"".join(atoms), re.DOTALL) for atoms in segments]
    widths = [len(atoms) for atoms in segments]
    if len(segments) == 1:
        whole = compiled[0]
        return lambda string: whole.fullmatch(string) is not None if string else not pattern
    first, last = compiled[0], compiled[-1]
    first_width, last_width = widths[0], widths[-1]
    middle = compiled[1:-1]

    def match(string: bytes) -> bool:
        if not string:
            return not pattern
        end = len(string) - last_width
        if end < first_width or first.match(string) is None:
            return False
        position = first_width
        for segment in middle:
            found = segment.search(string, position, end)
            if found is None:
                return False
            position = found.end()
        return last.match(string, end) is not None

    return match
