"""The fuzzers' corpus as a regression suite: every input kept in
fuzz/corpus/<target>/ (seeds, and each crash the fuzzers found) still keeps
its target's invariant (fuzz/targets.py: requests or the protocol's own
error, never another exception; the chunking never changes the result).
Runs without atheris; fuzzing itself is ``python fuzz/fuzz.py`` (see
docs/security.md)."""

from pathlib import Path

import pytest

from fuzz.targets import TARGETS, check, split_input

CORPUS = Path(__file__).resolve().parent.parent / "fuzz" / "corpus"

INPUTS = [(target, path) for target in TARGETS for path in sorted((CORPUS / target).iterdir())]


def test_every_target_has_seeds():
    assert {target for target, _ in INPUTS} == set(TARGETS)


@pytest.mark.parametrize("target, path", INPUTS, ids=[f"{t}/{p.name}" for t, p in INPUTS])
def test_corpus_input_keeps_the_invariant(target, path):
    check(target, path.read_bytes())


def test_the_control_byte_chooses_eof_limits_and_cuts():
    chunkings, eof, small, stream = split_input(bytes([0b1011]) + b"abcdefgh")
    assert (eof, small, stream) == (True, True, b"abcdefgh")
    bytewise = [bytes([byte]) for byte in b"abcdefgh"]
    cut = 1 + (0b1011 * 37) % 7
    assert chunkings == [[b"abcdefgh"], bytewise, [b"abcd", b"efgh"], [b"abcdefgh"[:cut], b"abcdefgh"[cut:]]]


def test_an_unknown_target_is_refused():
    with pytest.raises(ValueError, match="no fuzz target"):
        check("nonsense", b"")


def test_regression_invalid_utf8_close_reason_does_not_depend_on_the_chunking():
    """Found by ``fuzz/fuzz.py websocket``: the 1007 Close carried the UTF-8
    decoder's message, whose byte position changed with how the frame was
    cut into reads ("position 2" whole, "position 0" a byte at a time)."""
    payload = b"h?\xe4\xf8\xf2"  # invalid UTF-8 from its third byte
    key = b"\x37\xfa\x21\x3d"
    frame = bytes([0x81, 0x80 | len(payload)]) + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    for control in (0, 1, 4, 40):
        check("websocket", bytes([control]) + frame)


def test_regression_a_v1_proxy_line_is_bounded_by_a_smaller_max_header_size():
    """Found by ``fuzz/fuzz.py proxy``: a version 1 line was held up to its
    own 107 bytes, past a ``max_header_size`` below that."""
    from evloop.proxy_protocol import ProxyHeaderError, ProxyHeaderParser

    parser = ProxyHeaderParser(max_size=40)
    with pytest.raises(ProxyHeaderError, match="first 40 bytes"):
        parser.feed(b"PROXY TCP4 192.0.2.1 198.5.51.101.1]0.7 56324")
    check("proxy", bytes([2]) + b"PROXY TCP4 192.0.2.1 198.5.51.101.1]0.7 56324 192.0.2.1 198")
