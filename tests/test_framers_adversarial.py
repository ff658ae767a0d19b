"""Properties every framer must keep, attacked harder than each framer's own
property test: valid streams mutated byte by byte, fed whole, a byte at a
time and cut at random, against limits small enough that the input sits on
them.

- Only RemoteProtocolError ever escapes, and it sticks with the buffer dropped.
- The chunking never changes the requests, whether an error comes, or the
  error reply (RESP's batch call and its one-at-a-time call agree too).
- No request is over the framer's limit, end of stream included.
- What ``encode`` makes parses back, in any chunking, leaving nothing behind.
"""

import struct
import zlib

import pytest
from evloop.protocols import (
    NEED_DATA,
    Int32Framer,
    JsonFramer,
    LengthSepFramer,
    LineFramer,
    NetstringFramer,
    RespFramer,
    encode_command,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evloop import LocalProtocolError, RemoteProtocolError
from tests.helpers import batched_results, framer_results

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


def json_message(payload):
    return struct.pack("!4sII", b"JSN1", len(payload), zlib.crc32(payload)) + payload


small = st.binary(max_size=12)
# name -> (framer with a small limit, a valid stream, the size of a request
# that must not be over ``limit``, limit, bytes mutations draw from)
FRAMERS = {
    # Limits 9 and 10: the length prefix may have one digit or two.
    "lengthsep": (
        lambda: LengthSepFramer(10),
        st.lists(small, max_size=4).map(lambda ms: b"".join(b"%d\n%s" % (len(m), m) for m in ms)),
        len,
        10,
        b"0123456789\nx",
    ),
    "netstring": (
        lambda: NetstringFramer(9),
        st.lists(small, max_size=4).map(lambda ms: b"".join(b"%d:%s," % (len(m), m) for m in ms)),
        len,
        9,
        b"0123456789:,x",
    ),
    "int32": (
        lambda: Int32Framer(5),
        st.lists(st.binary(max_size=6), max_size=4).map(
            lambda ms: b"".join(struct.pack("!I", len(m)) + m for m in ms)
        ),
        len,
        5,
        b"\x00\x01\x05\x06x",
    ),
    "json": (
        lambda: JsonFramer(8),
        st.lists(
            st.sampled_from([b"1", b"[]", b'"abc"', b'{"a":1}', b"[[[1]]]", b"\xff", b"{", b"12345678"]),
            max_size=3,
        ).map(lambda ps: b"".join(map(json_message, ps))),
        None,
        8,
        b"JSN1\x00\x08x{",
    ),
    "lines-crlf": (
        lambda: LineFramer(3),
        st.lists(st.binary(max_size=5) | st.just(b"abc"), max_size=4).map(
            lambda ls: b"".join(line + b"\r\n" for line in ls)
        ),
        len,
        3,
        b"\r\nab",
    ),
    # A terminator that overlaps itself ("a" + "aab"): partial matches restart.
    "lines-aab": (
        lambda: LineFramer(3, b"aab", eof_ends_line=False),
        st.lists(st.binary(max_size=5), max_size=4).map(lambda ls: b"".join(line + b"aab" for line in ls)),
        len,
        3,
        b"ab",
    ),
    # "*1", "$3": every header line is exactly max_line bytes long.
    "resp": (
        lambda: RespFramer(4, max_line=2, max_elements=2),
        st.lists(
            st.one_of(
                st.lists(st.binary(max_size=3), min_size=1, max_size=3).map(
                    lambda argv: encode_command(*argv)
                ),
                st.sampled_from([b"PING\r\n", b"a 'b'\n", b"\r\n", b"*0\r\n", b"*10\r\n"]),
            ),
            max_size=4,
        ).map(b"".join),
        None,
        None,
        b"*$\r\n0123-'\" x",
    ),
    # Limits that leave the batch call's fast path open (max_line >= 8).
    "resp-fast": (
        lambda: RespFramer(40, max_line=8, max_elements=3, argument_cost=0),
        st.lists(
            st.lists(st.binary(max_size=4) | st.just(b"a\r\nb"), min_size=1, max_size=3).map(
                lambda argv: encode_command(*argv)
            ),
            max_size=5,
        ).map(b"".join),
        None,
        None,
        b"*$\r\n0123-x",
    ),
}


@st.composite
def mutated(draw, valid, alphabet):
    """A valid stream with a few bytes replaced, inserted, deleted or cut."""
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        where = draw(st.integers(min_value=0, max_value=len(data)))
        op = draw(st.sampled_from(["replace", "insert", "delete", "cut"]))
        byte = draw(st.sampled_from(alphabet))
        if op == "replace" and where < len(data):
            data[where] = byte
        elif op == "insert":
            data.insert(where, byte)
        elif op == "delete" and where < len(data):
            del data[where]
        elif op == "cut":
            del data[where:]
    return bytes(data)


def cut(data, cuts):
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def outcome(results, make_framer, chunks, eof):
    """(requests, error reply or None if no error) after checking that an
    error sticks and drops the buffer."""
    requests, error, framer = results(make_framer, chunks, eof)
    if error is None:
        return requests, None
    assert framer.buffered == 0
    for _ in range(2):
        try:
            framer.next_request()
        except RemoteProtocolError as again:
            assert again is error
        else:
            raise AssertionError("the error did not stick")
    return requests, ("error", error.reply)


def check_framer(name, data, cuts, eof):
    make, _, size, limit, _ = FRAMERS[name]
    expected = outcome(framer_results, make, [data], eof)
    ways = [[data[i : i + 1] for i in range(len(data))], cut(data, cuts)]
    for chunks in ways:
        assert outcome(framer_results, make, chunks, eof) == expected, chunks
        if name.startswith("resp"):
            assert outcome(batched_results, make, chunks, eof) == expected, chunks
    if size is not None:
        assert all(size(request) <= limit for request in expected[0])
    if name.startswith("resp"):
        framer = make()
        assert all(
            len(argv) <= framer.max_elements and sum(map(len, argv)) <= framer.max_size
            for argv in expected[0]
        )


def _property(name):
    _, valid, _, _, alphabet = FRAMERS[name]
    data = st.one_of(mutated(valid, alphabet), st.binary(max_size=30))

    @SETTINGS
    @given(data=data, cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=5), eof=st.booleans())
    def test(data, cuts, eof):
        check_framer(name, data, cuts, eof)

    test.__name__ = f"test_{name.replace('-', '_')}_mutated_streams_in_any_chunking"
    return test


for _name in FRAMERS:
    _test = _property(_name)
    globals()[_test.__name__] = _test
del _name, _test


# -- encode, then parse back ---------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


def parse_all(framer, chunks):
    got = []
    for chunk in chunks:
        framer.feed(chunk)
        while (request := framer.next_request()) is not NEED_DATA:
            got.append(request)
    return got


@SETTINGS
@given(
    messages=st.lists(st.binary(max_size=20), max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=6),
)
def test_bytes_framers_parse_back_what_they_encode_in_any_chunking(messages, cuts):
    for make in (LengthSepFramer, NetstringFramer, Int32Framer):
        data = b"".join(make().encode(m) for m in messages)
        framer = make()
        assert parse_all(framer, cut(data, cuts)) == messages
        assert framer.buffered == 0


@SETTINGS
@given(
    lines=st.lists(st.binary(max_size=20), max_size=6),
    terminator=st.sampled_from([b"\r\n", b"\n", b"aab", b"\r\n\r\n"]),
    cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=6),
)
def test_line_framer_parses_back_what_it_encodes_in_any_chunking(lines, terminator, cuts):
    encoder = LineFramer(terminator=terminator)
    encoded = []
    for line in lines:
        body = line[: -len(terminator)] if line.endswith(terminator) else line
        try:
            encoded.append((body, encoder.encode(line)))
        except LocalProtocolError:
            # Refused only if it would really be read as two lines.
            assert (body + terminator).find(terminator) < len(body)
    data = b"".join(wire for _, wire in encoded)
    framer = LineFramer(terminator=terminator)
    got = parse_all(framer, cut(data, cuts))
    assert got == [body for body, _ in encoded]
    assert framer.buffered == 0


@SETTINGS
@given(
    values=st.lists(json_values, max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=6),
)
def test_json_framer_parses_back_what_it_encodes_in_any_chunking(values, cuts):
    data = b"".join(JsonFramer().encode(v) for v in values)
    framer = JsonFramer()
    assert parse_all(framer, cut(data, cuts)) == values
    assert framer.buffered == 0


@SETTINGS
@given(
    commands=st.lists(
        st.lists(
            st.binary(max_size=6).filter(lambda b: b != b"")
            | st.sampled_from([b"", b"\r\n", b"*1\r\n", b"$1\r\n"]),
            min_size=1,
            max_size=4,
        ),
        max_size=6,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=6),
)
def test_resp_parses_back_encoded_commands_in_any_chunking_both_ways(commands, cuts):
    data = b"".join(encode_command(*argv) for argv in commands)
    chunks = cut(data, cuts)
    assert parse_all(RespFramer(), chunks) == commands
    requests, error, framer = batched_results(RespFramer, chunks, False)
    assert error is None and requests == commands and framer.buffered == 0


# -- after an error ----------------------------------------------------------------

BROKEN = {
    "lengthsep": (LengthSepFramer, b"x\n"),
    "netstring": (NetstringFramer, b"x:"),
    "int32": (lambda: Int32Framer(5), b"\x00\x00\x00\x06"),
    "json": (JsonFramer, b"JSNX"),
    "lines": (lambda: LineFramer(3), b"abcd"),
    "resp": (RespFramer, b"*x\r\n"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_bytes_fed_after_an_error_are_dropped_not_kept(name):
    # A caller that goes on feeding a refused stream (a handler still
    # reading while its last replies go out) must not make the framer hold
    # what it will never parse.
    make, bad = BROKEN[name]
    framer = make()
    framer.feed(bad)
    with pytest.raises(RemoteProtocolError) as first:
        framer.next_request()
    for _ in range(100):
        framer.feed(b"x" * 1000)
        with pytest.raises(RemoteProtocolError) as again:
            framer.next_request()
        assert again.value is first.value
    assert framer.buffered == 0
