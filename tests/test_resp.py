"""RespFramer without sockets: every chunking, malformed input, limits, and
the property that any bytes give commands or the protocol's error."""

import pytest
from evloop.protocols import NEED_DATA, RespError, RespFramer, encode_command, encode_reply
from evloop.protocols.resp import split_inline
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evloop import LocalProtocolError, RemoteProtocolError
from evloop.testing import every_split
from tests.helpers import assert_framer_every_split, batched_results, framer_results

SET = encode_command("SET", "key", "value")
GET = encode_command("GET", "key")


def assert_batched_every_split(make_framer, data, expected, *, error=None, eof=False, leftover=None):
    """assert_framer_every_split's promise for maybe_requests()."""
    for label, chunks in every_split(data):
        requests, exc, framer = batched_results(make_framer, chunks, eof)
        assert requests == expected, label
        if error is None:
            assert exc is None, f"{label}: {exc}"
        else:
            assert exc is not None and error in exc.message, f"{label}: {exc}"
        if leftover is not None:
            assert framer.buffered == leftover, label


def assert_both_every_split(data, expected, **options):
    make = options.pop("make_framer", RespFramer)
    assert_framer_every_split(make, data, expected, **options)
    assert_batched_every_split(make, data, expected, **options)


def refusal(data, make_framer=RespFramer, eof=False):
    """The error ``data`` gets, having checked that chunking does not change it."""
    errors = set()
    for label, chunks in every_split(data):
        for results in (framer_results, batched_results):
            _, exc, _ = results(make_framer, chunks, eof)
            assert exc is not None, f"{label}: {data!r} was accepted"
            errors.add((exc.message, exc.reply))
    assert len(errors) == 1, errors
    return errors.pop()


# -- whole commands in every chunking ----------------------------------------


def test_multibulk_and_inline_in_every_split_with_trailing_bytes_untouched():
    data = (
        SET
        + GET
        + b"PING\r\n"
        + encode_command("ECHO", "a\r\nb")
        + b"\r\n"
        + encode_command("SET", "", "")
        + b"*0\r\n*-1\r\n"
        + b"get  key\n"
        + b"*2\r\n$3\r\nGET\r\n$3\r\nke"
    )
    expected = [
        [b"SET", b"key", b"value"],
        [b"GET", b"key"],
        [b"PING"],
        [b"ECHO", b"a\r\nb"],
        [b"SET", b"", b""],
        [b"get", b"key"],
    ]
    # The partial last command keeps its parsed GET plus two buffered bytes.
    assert_both_every_split(data, expected, leftover=5)


def test_values_holding_crlf_and_binary_bytes():
    value = bytes(range(256)) + b"\r\n\r\n*1\r\n$4\r\n"
    data = encode_command("SET", "k", value) * 3
    assert_both_every_split(data, [[b"SET", b"k", value]] * 3)


def test_a_run_of_alike_commands_and_what_breaks_it():
    # The fast path checks a run of same-shaped commands column by column;
    # a value holding CRLF, a column of unequal lengths, a command of another
    # shape or a cut-off command must each hand over to the walk exactly there.
    alike = [encode_command("SET", f"k{i}", "v" * i) for i in range(6)]
    crlf = encode_command("SET", "k", "a\r\nb")
    data = (
        b"".join(alike[:3])
        + crlf
        + b"".join(alike[3:])
        + encode_command("GET", "k")
        + b"".join(alike)
        + b"*3\r\n$3\r\nSET\r\n$2\r\nk0\r\n$3\r\nvv"
    )
    argv = [[b"SET", b"k%d" % i, b"v" * i] for i in range(6)]
    expected = [*argv[:3], [b"SET", b"k", b"a\r\nb"], *argv[3:], [b"GET", b"k"], *argv]
    # Left: the parsed SET and k0 (5 bytes) and the 2 bytes of the last value.
    assert_both_every_split(data, expected, leftover=7)


def test_long_values_and_many_arguments_leave_the_fast_tables():
    big = b"x" * 5000
    data = encode_command("SET", "k", big) + encode_command("MSET", *["k"] * 300)
    framer = RespFramer()
    framer.feed(data)
    assert framer.maybe_requests() == [[b"SET", b"k", big], [b"MSET"] + [b"k"] * 300]


def test_a_hundred_pipelined_commands_come_out_of_one_call():
    framer = RespFramer()
    framer.feed(b"".join(encode_command("INCR", f"k{i}") for i in range(100)))
    requests = framer.maybe_requests()
    assert requests == [[b"INCR", b"k%d" % i] for i in range(100)]
    assert framer.buffered == 0
    assert framer.maybe_requests() == []
    assert framer.next_request() is NEED_DATA


def test_a_bulk_waits_unscanned_until_all_its_bytes_are_in():
    framer = RespFramer()
    framer.feed(b"*2\r\n$3\r\nSET\r\n$100000\r\n")
    assert framer.maybe_requests() == []
    for _ in range(99):
        framer.feed(b"x" * 1000)
        assert framer.maybe_requests() == []
    framer.feed(b"x" * 1000 + b"\r\n")
    assert framer.maybe_requests() == [[b"SET", b"x" * 100000]]


def test_inline_words_follow_redis_quoting():
    cases = {
        b"set a b": [b"set", b"a", b"b"],
        b"  set\t a   b  ": [b"set", b"a", b"b"],
        b"set \"a b\" 'c d'": [b"set", b"a b", b"c d"],
        b'echo "\\x41\\n\\t\\"\\\\"': [b"echo", b'A\n\t"\\'],
        b"echo 'it\\'s'": [b"echo", b"it's"],
        b'echo ""': [b"echo", b""],
        b'echo ab"cd"': [b"echo", b"abcd"],
        b'echo "\\xZZ"': [b"echo", b"xZZ"],
        b"": [],
    }
    for line, words in cases.items():
        assert split_inline(line) == words, line
    for bad in (b'echo "abc', b"echo 'abc", b'echo "a"b', b"echo 'a'b", b'echo "abc\\'):
        assert split_inline(bad) is None, bad


def test_an_inline_command_with_unbalanced_quotes_is_a_protocol_error():
    message, reply = refusal(b'PING\r\nset "a b\r\n')
    assert reply == b"-ERR Protocol error: unbalanced quotes in request\r\n"
    assert "unbalanced quotes" in message


def test_empty_inline_lines_are_skipped():
    assert_both_every_split(b"\r\n\n  \r\nPING\r\n", [[b"PING"]])


# -- malformed input: Redis's own error replies ------------------------------


@pytest.mark.parametrize(
    "bad, reply",
    [
        (b"*x\r\n", b"invalid multibulk length"),
        (b"*01\r\n", b"invalid multibulk length"),
        (b"*+1\r\n", b"invalid multibulk length"),
        (b"* 1\r\n", b"invalid multibulk length"),
        (b"*\r\n", b"invalid multibulk length"),
        (b"*-0\r\n", b"invalid multibulk length"),  # string2ll refuses "-0"; so does Redis
        (b"*1\r\n:3\r\n", b"expected '$', got ':'"),
        (b"*1\r\n$-1\r\n", b"invalid bulk length"),
        (b"*1\r\n$-0\r\n\r\n", b"invalid bulk length"),
        (b"*1\r\n$x\r\n", b"invalid bulk length"),
        (b"*1\r\n$03\r\nabc\r\n", b"invalid bulk length"),
        (b"*1\r\n$99999999999999999999\r\n", b"invalid bulk length"),
        (b"*1\r\n$3\r\nabcd\r\n", b"expected CRLF after a bulk string"),
        (b"*1\r\n$3\r\nabc\n\r", b"expected CRLF after a bulk string"),
    ],
)
def test_malformed_multibulk_gets_redis_error_after_earlier_commands(bad, reply):
    data = SET + bad
    assert_both_every_split(data, [[b"SET", b"key", b"value"]], error="")
    _, got = refusal(bad)
    assert got == b"-ERR Protocol error: " + reply + b"\r\n"


def test_the_error_sticks_and_the_buffer_is_dropped():
    framer = RespFramer()
    framer.feed(b"*x\r\n" + SET)
    for call in (framer.next_request, framer.maybe_requests, framer.next_request):
        with pytest.raises(RemoteProtocolError):
            call()
    assert framer.error is not None and framer.buffered == 0


def test_commands_before_an_error_come_first_and_the_error_next():
    framer = RespFramer()
    framer.feed(SET + GET + b"*1\r\n$-5\r\n")
    assert framer.maybe_requests() == [[b"SET", b"key", b"value"], [b"GET", b"key"]]
    assert framer.error is not None
    with pytest.raises(RemoteProtocolError):
        framer.maybe_requests()


def test_end_of_stream_inside_a_command_is_an_error():
    for partial in (b"*2\r\n$3\r\nGET\r\n", b"*2\r\n$3\r\nGE", b"*2", b"PIN"):
        assert_both_every_split(
            SET + partial, [[b"SET", b"key", b"value"]], error="ended inside a command", eof=True
        )
    assert_both_every_split(SET + GET, [[b"SET", b"key", b"value"], [b"GET", b"key"]], eof=True)


# -- limits, checked before the number is trusted ----------------------------


def test_a_bulk_length_over_the_limit_is_refused_before_its_bytes():
    framer = RespFramer(max_size=100)
    framer.feed(b"*1\r\n$101\r\n")
    with pytest.raises(RemoteProtocolError) as caught:
        framer.maybe_requests()
    assert "over the limit of 100 bytes" in caught.value.message
    assert caught.value.reply == b"-ERR Protocol error: invalid bulk length\r\n"


def test_the_size_limit_counts_the_whole_command():
    make = lambda: RespFramer(max_size=100, argument_cost=0)  # noqa: E731
    fits = encode_command("MSET", "a" * 46, "b" * 50)  # 4 + 46 + 50 = 100 bytes
    assert_both_every_split(fits, [[b"MSET", b"a" * 46, b"b" * 50]], make_framer=make)
    message, _ = refusal(encode_command("MSET", "a" * 47, "b" * 50), make)
    assert "over the limit of 100 bytes" in message


def test_each_argument_is_charged_its_cost_as_well_as_its_bytes():
    # 3 arguments of 4 + 46 + 50 bytes, charged 10 each: 130.
    make = lambda: RespFramer(max_size=130, argument_cost=10)  # noqa: E731
    fits = encode_command("MSET", "a" * 46, "b" * 50)
    assert_both_every_split(fits, [[b"MSET", b"a" * 46, b"b" * 50]], make_framer=make)
    message, reply = refusal(encode_command("MSET", "a" * 47, "b" * 50), make)
    assert "over the limit of 130 bytes (10 charged for each argument)" in message
    assert reply == b"-ERR Protocol error: invalid bulk length\r\n"
    # Empty arguments fill the limit with no bytes of their own: 3 + 13 x 10.
    message, _ = refusal(encode_command("DEL", *[""] * 12), make)
    assert "a 0-byte argument would take the command over the limit" in message


def test_a_count_whose_arguments_alone_would_cost_too_much_is_refused_at_once():
    framer = RespFramer(max_size=1024 * 1024)
    framer.feed(b"*16385\r\n")  # 16,385 x 64 bytes > 1 MiB, however short each is
    with pytest.raises(RemoteProtocolError) as caught:
        framer.maybe_requests()
    assert "16385 arguments would cost 1048640 bytes" in caught.value.message
    assert caught.value.reply == b"-ERR Protocol error: invalid multibulk length\r\n"
    framer = RespFramer(max_size=1024 * 1024)
    framer.feed(b"*16384\r\n")
    assert framer.maybe_requests() == [] and framer.error is None


def test_a_million_tiny_arguments_are_charged_what_they_hold():
    # The default limit (64 MiB) takes a million 2-byte arguments, charged
    # 66 MB; a 1 MiB limit refuses them at their count.
    data = b"*1000000\r\n" + b"$2\r\nab\r\n" * 20_000
    framer = RespFramer(max_size=1024 * 1024)
    framer.feed(data)
    with pytest.raises(RemoteProtocolError):
        framer.maybe_requests()
    framer = RespFramer()
    framer.feed(data)
    assert framer.maybe_requests() == [] and framer.error is None
    assert framer.buffered == 20_000 * 2


def test_an_element_count_over_the_limit_is_refused_before_any_element():
    framer = RespFramer(max_elements=10)
    framer.feed(b"*11\r\n")
    with pytest.raises(RemoteProtocolError) as caught:
        framer.maybe_requests()
    assert "11 arguments are over the limit of 10" in caught.value.message
    assert caught.value.reply == b"-ERR Protocol error: invalid multibulk length\r\n"
    ten = [bytes([c]) for c in b"abcdefghij"]
    assert_both_every_split(encode_command(*ten), [ten], make_framer=lambda: RespFramer(max_elements=10))


@pytest.mark.parametrize(
    "data, reply",
    [
        (b"*" + b"1" * 70, b"too big mbulk count string"),
        (b"*1\r\n$" + b"1" * 70, b"too big bulk count string"),
        (b"GET " + b"k" * 70, b"too big inline request"),
    ],
)
def test_a_line_without_end_is_refused_at_the_line_limit(data, reply):
    make = lambda: RespFramer(max_line=64)  # noqa: E731
    _, got = refusal(data, make)
    assert got == b"-ERR Protocol error: " + reply + b"\r\n"
    # One byte short of the limit is only a partial line.
    framer = make()
    framer.feed(data[:64])
    assert framer.maybe_requests() == [] and framer.error is None


def test_a_header_line_of_exactly_max_line_bytes_is_taken_in_every_split():
    # "*10" and "$12" are 3 bytes: at max_line=3 they are allowed, also when
    # a read ends between their CR and LF.
    ten = [b"%d" % i for i in range(10)]
    assert_both_every_split(
        encode_command(*ten) + encode_command(b"hello world!"),
        [ten, [b"hello world!"]],
        make_framer=lambda: RespFramer(max_line=3),
    )


@pytest.mark.parametrize(
    "data, reply",
    [
        (b"*" + b"1" * 70 + b"\r\n", b"too big mbulk count string"),
        (b"*1\r\n$" + b"1" * 70 + b"\r\n", b"too big bulk count string"),
    ],
)
def test_an_overlong_header_line_gets_one_refusal_whether_or_not_its_crlf_came(data, reply):
    _, got = refusal(data, lambda: RespFramer(max_line=64))
    assert got == b"-ERR Protocol error: " + reply + b"\r\n"


def test_a_long_inline_command_ending_after_the_limit_is_refused():
    framer = RespFramer(max_line=64)
    framer.feed(b"GET " + b"k" * 70 + b"\r\n")
    with pytest.raises(RemoteProtocolError) as caught:
        framer.next_request()
    assert caught.value.reply == b"-ERR Protocol error: too big inline request\r\n"


def test_a_slow_peers_partial_line_is_not_rescanned():
    # Feed a line near the limit a byte at a time: the scan resumes where it
    # stopped, so no byte of it is searched more than about twice.
    framer = RespFramer()
    searched = []
    original = bytearray.find

    class CountingBuffer(bytearray):
        def find(self, sub, start=0, *rest):
            searched.append(len(self) - start)
            return original(self, sub, start, *rest)

    framer._buffer = CountingBuffer()
    line = b"*1\r\n$60000\r\n"
    for i in range(len(line)):
        framer.feed(line[i : i + 1])
        framer.maybe_requests()
    inline = b"ECHO " + b"x" * 20000 + b"\n"
    for i in range(0, len(inline), 7):
        framer.feed(inline[i : i + 7])
        framer.maybe_requests()
    assert sum(searched) < 3 * (len(line) + len(inline))


# -- encoding -----------------------------------------------------------------


def test_replies_encode_as_resp2():
    assert encode_reply(b"hi") == b"$2\r\nhi\r\n"
    assert encode_reply(None) == b"$-1\r\n"
    assert encode_reply("OK") == b"+OK\r\n"
    assert encode_reply(-7) == b":-7\r\n"
    assert encode_reply(True) == b":1\r\n"
    assert encode_reply([b"a", 1, None, [b""]]) == b"*4\r\n$1\r\na\r\n:1\r\n$-1\r\n*1\r\n$0\r\n\r\n"
    assert encode_reply(RespError("ERR bad\r\nthing")) == b"-ERR bad  thing\r\n"
    assert RespFramer().encode(()) == b"*0\r\n"
    for bad in ("two\nlines", 1.5, {b"a": 1}):
        with pytest.raises(LocalProtocolError):
            encode_reply(bad)


def test_encode_command_round_trips():
    assert encode_command("SET", 12, b"\x00") == b"*3\r\n$3\r\nSET\r\n$2\r\n12\r\n$1\r\n\x00\r\n"


# -- properties ---------------------------------------------------------------


def chunked(data, cuts):
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


resp_tokens = st.sampled_from(
    [
        b"*",
        b"$",
        b"\r\n",
        b"\r",
        b"\n",
        b"0",
        b"1",
        b"2",
        b"3",
        b"-",
        b" ",
        b'"',
        b"'",
        b"\\",
        b"x",
        b"SET",
        b"*2\r\n",
        b"$3\r\n",
        b"$1\r\n",
    ]
)
noisy = st.one_of(st.binary(max_size=80), st.lists(resp_tokens, max_size=40).map(b"".join))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=noisy, cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=6), eof=st.booleans())
def test_any_bytes_give_commands_or_the_protocol_error_whatever_the_chunking(data, cuts, eof):
    make = lambda: RespFramer(max_line=32, max_size=64, max_elements=8)  # noqa: E731
    whole = batched_results(make, [data], eof)
    for results in (batched_results, framer_results):
        got = results(make, chunked(data, cuts), eof)
        assert got[0] == whole[0]
        assert (got[1] is None) == (whole[1] is None)
        if got[1] is not None:
            assert got[1].reply == whole[1].reply
    for request in whole[0]:
        assert request and all(type(arg) is bytes for arg in request)


commands = st.lists(st.lists(st.binary(max_size=12), min_size=1, max_size=5), max_size=8)


@settings(max_examples=200, deadline=None)
@given(commands=commands, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6))
def test_encoded_commands_parse_back_whatever_the_chunking(commands, cuts):
    data = b"".join(encode_command(*argv) for argv in commands)
    for results in (batched_results, framer_results):
        requests, error, framer = results(RespFramer, chunked(data, cuts))
        assert error is None
        assert requests == commands
        assert framer.buffered == 0


# Commands of many arguments: the careful path takes them in runs (one split
# for many arguments), which must take exactly what it would one by one.
many_args = st.lists(
    st.one_of(
        st.binary(max_size=10),
        st.just(b"a\r\nb"),
        st.just(b"x" * 5000),
        st.just(b"$3\r\nabc"),
    ),
    min_size=8,
    max_size=60,
)
damage = st.sampled_from([b"", b"$4\r\nabc\r\n", b"$x\r\n", b"$04\r\nabcd\r\n", b":1\r\n", b"$-1\r\n"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    commands=st.lists(many_args, min_size=1, max_size=3),
    cut_at=st.integers(min_value=0, max_value=60),
    bad=damage,
    max_size=st.sampled_from([None, 2000, 6000]),
    cuts=st.lists(st.integers(min_value=0, max_value=30_000), max_size=8),
)
def test_runs_of_arguments_take_what_one_by_one_would_whatever_the_chunking(
    commands, cut_at, bad, max_size, cuts
):
    data = b"".join(encode_command(*argv) for argv in commands)
    if bad:  # a broken argument line partway through the last command
        last = encode_command(*commands[-1])
        head = last.split(b"\r\n")
        position = min(1 + 2 * cut_at, len(head) - 1)
        data = data[: len(data) - len(last)] + b"\r\n".join(head[:position]) + b"\r\n" + bad
    make = lambda: RespFramer(max_size)  # noqa: E731
    whole = batched_results(make, [data])
    one_by_one = framer_results(make, chunked(data, range(1, len(data))))
    for got in (
        one_by_one,
        batched_results(make, chunked(data, cuts)),
        framer_results(make, chunked(data, cuts)),
    ):
        assert got[0] == whole[0]
        assert (got[1] is None) == (whole[1] is None)
        if got[1] is not None:
            assert (got[1].message, got[1].reply) == (whole[1].message, whole[1].reply)
    if not bad and max_size is None:
        assert whole[0] == commands and whole[1] is None
