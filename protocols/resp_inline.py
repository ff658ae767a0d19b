"""Redis's inline commands (what a person types into telnet): one line of
words split as Redis's ``sdssplitargs`` splits them, quotes and escapes
included. :class:`~evloop.protocols.resp.RespFramer` finds the line; this
module only splits it."""

from typing import List, Optional

__all__ = ["split_inline"]

_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}
_HEX = b"0123456789abcdefABCDEF"
_SPACE = b" \n\r\t\v\f"  # C isspace(), as bytes.split() uses


def split_inline(line: bytes) -> Optional[List[bytes]]:
    """Split an inline command into words as Redis's ``sdssplitargs`` does:
    spaces separate words; ``"..."`` may hold ``\\n``, ``\\r``, ``\\t``,
    ``\\b``, ``\\a``, ``\\\\``, ``\\"`` and ``\\xHH``; ``'...'`` only ``\\'``;
    a closing quote must end the word. Returns None for unbalanced quotes."""
    if b'"' not in line and b"'" not in line:
        return line.split()
    words: List[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in _SPACE:
            i += 1
        if i >= n:
            return words
        word = bytearray()
        quote = 0
        while True:
            if i >= n:
                if quote:
                    return None
                break
            c = line[i]
            if quote == 34:  # inside "..."
                if (
                    c == 92
                    and i + 3 < n
                    and line[i + 1] == 120
                    and line[i + 2] in _HEX
                    and line[i + 3] in _HEX
                ):
                    word.append(int(line[i + 2 : i + 4], 16))
                    i += 4
                    continue
                if c == 92 and i + 1 < n:
                    word.append(_ESCAPES.get(line[i + 1], line[i + 1]))
                    i += 2
                    continue
                if c == 34:
                    if i + 1 < n and line[i + 1] not in _SPACE:
                        return None
                    i += 1
                    break
                word.append(c)
            elif quote == 39:  # inside '...'
                if c == 92 and i + 1 < n and line[i + 1] == 39:
                    word.append(39)
                    i += 2
                    continue
                if c == 39:
                    if i + 1 < n and line[i + 1] not in _SPACE:
                        return None
                    i += 1
                    break
                word.append(c)
            else:
                if c in _SPACE:
                    break
                if c == 34 or c == 39:
                    quote = c
                else:
                    word.append(c)
            i += 1
        words.append(bytes(word))
