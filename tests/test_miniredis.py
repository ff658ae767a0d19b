"""examples/miniredis.py: run as a user runs it and spoken to by redis-py,
redis-cli and raw sockets; checked reply for reply against a real
redis-server where one is installed; expiry on a clock the test moves."""

import contextlib
import importlib.util
import logging
import shutil
import socket
import subprocess

import pytest
from evloop.protocols import encode_command
from hypothesis import given, settings
from hypothesis import strategies as st

from evloop.testing import FakeClock, HandlerHarness
from tests.conftest import recv_all
from tests.examples import ROOT, running_example
from tests.helpers import assert_handler_every_split

redis = pytest.importorskip("redis", reason="redis-py is in the test extra")


def load_example():
    spec = importlib.util.spec_from_file_location("miniredis_example", ROOT / "examples" / "miniredis.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


miniredis = load_example()
Database = miniredis.Database


# -- a small RESP2/RESP3 reply reader, independent of the server's code -------


class Error(str):
    """An error reply."""


def parse_reply(data, pos=0):
    """(value, position after it) for the reply at ``pos``; IndexError or
    ValueError if it is incomplete or malformed."""
    end = data.index(b"\r\n", pos)
    kind, line, pos = data[pos : pos + 1], data[pos + 1 : end], end + 2
    if kind == b"+":
        return line.decode("utf-8", "surrogateescape"), pos
    if kind == b"-":
        return Error(line.decode("utf-8", "surrogateescape")), pos
    if kind == b":":
        return int(line), pos
    if kind == b"_":
        return None, pos
    if kind == b",":  # a RESP3 double
        return float(line), pos
    if kind == b"$":
        length = int(line)
        if length < 0:
            return None, pos
        if data[pos + length : pos + length + 2] != b"\r\n":
            raise ValueError("bulk not followed by CRLF")
        return data[pos : pos + length], pos + length + 2
    if kind in (b"*", b"~", b"%"):
        count = int(line)
        if count < 0:
            return None, pos
        items = []
        for _ in range(count * (2 if kind == b"%" else 1)):
            item, pos = parse_reply(data, pos)
            items.append(item)
        if kind == b"%":
            return dict(zip(items[::2], items[1::2], strict=True)), pos
        return (set(items) if kind == b"~" else items), pos
    raise ValueError(f"unknown reply type {kind!r}")


def parse_all(data):
    replies, pos = [], 0
    while pos < len(data):
        reply, pos = parse_reply(data, pos)
        replies.append(reply)
    return replies


def read_replies(sock, count):
    """Exactly ``count`` replies from ``sock``."""
    data = b""
    while True:
        try:
            replies = parse_all(data)
        except (IndexError, ValueError):
            replies = None
        if replies is not None and len(replies) >= count:
            assert len(replies) == count, replies
            return replies
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError(f"closed after {data!r}")
        data += chunk


# -- servers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def example():
    """The example as a subprocess: (host, port)."""
    with running_example("miniredis.py") as (host, port, _):
        yield host, port


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
def client(example, request):
    connection = redis.Redis(host=example[0], port=example[1], protocol=request.param, socket_timeout=10)
    connection.flushdb()
    yield connection
    connection.close()


@pytest.fixture
def clocked(running_loop):
    """miniredis in this process, on the loop under test, with a FakeClock."""
    clock = FakeClock(1000.0)
    database = Database(clock)
    server = running_loop.serve(miniredis.MiniRedisHandler)
    server.database = database
    connection = redis.Redis(host=server.host, port=server.port, socket_timeout=10)
    yield clock, database, connection, server
    connection.close()


@contextlib.contextmanager
def real_redis_server():
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        seen = []
        for line in process.stdout:
            seen.append(line)
            if "Ready to accept connections" in line:
                break
        else:
            raise AssertionError("redis-server did not start:\n" + "".join(seen))
        yield "127.0.0.1", port
    finally:
        process.terminate()
        process.wait(10)
        process.stdout.close()


# -- every command through redis-py ---------------------------------------------


def test_strings_and_keys(client):
    assert client.ping() is True
    assert client.echo("héllo") == "héllo".encode()
    assert client.set("a", "1") is True
    assert client.get("a") == b"1"
    assert client.get("missing") is None
    assert client.set("a", "2", nx=True) is None
    assert client.set("new", "x", nx=True) is True
    assert client.set("a", "3", xx=True) is True
    assert client.set("nope", "3", xx=True) is None
    assert client.set("ttl", "v", ex=100) is True
    assert client.set("pttl", "v", px=100000) is True
    assert client.incr("counter") == 1
    assert client.incr("counter", 10) == 11
    assert client.decr("counter") == 10
    assert client.execute_command("INCR", "counter") == 11
    assert client.execute_command("DECR", "counter") == 10
    assert client.mset({"m1": "one", "m2": "two"}) is True
    assert client.mget("m1", "missing", "m2") == [b"one", None, b"two"]
    assert client.exists("m1", "m2", "m1", "missing") == 3
    assert client.delete("m1", "missing") == 1
    assert sorted(client.keys("m*")) == [b"m2"]
    assert sorted(client.keys()) == sorted([b"a", b"new", b"ttl", b"pttl", b"counter", b"m2"])
    assert client.flushdb() is True
    assert client.keys() == []


def test_lists_sets_and_hashes(client):
    assert client.rpush("list", "b", "c") == 2
    assert client.lpush("list", "a", "z") == 4
    assert client.lrange("list", 0, -1) == [b"z", b"a", b"b", b"c"]
    assert client.lrange("list", -2, 100) == [b"b", b"c"]
    assert client.lrange("list", 3, 1) == []
    assert client.lpop("list") == b"z"
    assert client.rpop("list") == b"c"
    assert client.lpop("list", 5) == [b"a", b"b"]
    assert client.exists("list") == 0  # an emptied list is gone
    assert client.lpop("list") is None
    assert client.rpop("list", 2) is None
    assert client.sadd("set", "x", "y", "x") == 2
    assert client.sadd("set", "y", "z") == 1
    assert client.smembers("set") == {b"x", b"y", b"z"}
    assert client.smembers("no-set") == set()
    assert client.hset("hash", mapping={"f": "1", "g": "2"}) == 2
    assert client.hset("hash", "f", "3") == 0
    assert client.hget("hash", "f") == b"3"
    assert client.hget("hash", "nope") is None
    assert client.hget("no-hash", "f") is None


def test_command_errors_are_replies_and_the_connection_stays(client):
    client.set("string", "abc")
    client.rpush("list", "x")
    errors = [
        (lambda: client.lpush("string", "x"), "WRONGTYPE Operation against a key holding"),
        (lambda: client.get("list"), "WRONGTYPE"),
        (lambda: client.hget("list", "f"), "WRONGTYPE"),
        (lambda: client.incr("string"), "value is not an integer or out of range"),
        (lambda: client.set("k", "v", ex=0), "invalid expire time in 'set' command"),
        (lambda: client.execute_command("SET", "k", "v", "EX"), "syntax error"),
        (lambda: client.execute_command("SET", "k", "v", "NX", "XX"), "syntax error"),
        (lambda: client.execute_command("GET"), "wrong number of arguments for 'get' command"),
        (lambda: client.execute_command("MSET", "a"), "wrong number of arguments for 'mset'"),
        (lambda: client.execute_command("HSET", "h", "f"), "wrong number of arguments"),
        (lambda: client.execute_command("LRANGE", "list", "a", "1"), "not an integer"),
        (
            lambda: client.execute_command("NOSUCH", "x"),
            "unknown command 'NOSUCH', with args beginning with: 'x'",
        ),
    ]
    for call, message in errors:
        with pytest.raises(redis.ResponseError, match=message):
            call()
    client.set("big", str(2**63 - 1))
    with pytest.raises(redis.ResponseError, match="would overflow"):
        client.incr("big")
    assert client.get("string") == b"abc"  # the same connection, still serving


def test_commands_are_case_insensitive(client):
    assert client.execute_command("sEt", "k", "v") in (True, b"OK", "OK")
    assert client.execute_command("get", "k") == b"v"


def test_redis_py_pipelines_with_and_without_a_transaction(client):
    pipe = client.pipeline(transaction=False)
    for _ in range(200):
        pipe.incr("n")
    pipe.get("n")
    assert pipe.execute() == [*range(1, 201), b"200"]
    with client.pipeline() as pipe:  # MULTI ... EXEC
        pipe.set("t", "1").incr("t").lpush("l", "a").get("t")
        assert pipe.execute() == [True, 2, 1, b"2"]


def test_transactions_refuse_what_they_cannot_queue(example):
    with socket.create_connection(example, timeout=10) as sock:
        sock.sendall(b"MULTI\r\nSET a 1\r\nNOSUCH\r\nEXEC\r\nEXEC\r\nMULTI\r\nMULTI\r\nDISCARD\r\nGET a\r\n")
        assert read_replies(sock, 9) == [
            "OK",
            "QUEUED",
            Error("ERR unknown command 'NOSUCH', with args beginning with: "),
            Error("EXECABORT Transaction discarded because of previous errors."),
            Error("ERR EXEC without MULTI"),
            "OK",
            Error("ERR MULTI calls can not be nested"),
            "OK",
            None,
        ]


# -- redis-cli, inline commands, raw pipelining ---------------------------------


def test_redis_cli_uses_it_unchanged(example):
    if shutil.which("redis-cli") is None:
        pytest.skip("redis-cli is not installed (Debian: apt-get install redis-tools)")
    host, port = example

    def cli(*args):
        done = subprocess.run(
            ["redis-cli", "-h", host, "-p", str(port), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return done.stdout

    assert cli("FLUSHDB") == "OK\n"
    assert cli("PING") == "PONG\n"
    assert cli("SET", "greeting", "hello world", "EX", "60") == "OK\n"
    assert cli("GET", "greeting") == "hello world\n"
    assert cli("RPUSH", "l", "a", "b") == "2\n"
    assert cli("LRANGE", "l", "0", "-1") == "a\nb\n"
    assert cli("LPUSH", "greeting", "x").startswith("WRONGTYPE Operation against a key")
    assert cli("HSET", "h", "f", "v") == "1\n"
    assert cli("--no-raw", "HGET", "h", "f") == '"v"\n'
    assert cli("--no-raw", "GET", "missing") == "(nil)\n"
    # redis-cli's own pipe mode: a stream of commands, one summary.
    commands = "".join(f"SET k{i} {i}\r\n" for i in range(100)).encode()
    done = subprocess.run(
        ["redis-cli", "-h", host, "-p", str(port), "--pipe"],
        input=commands,
        capture_output=True,
        timeout=20,
        check=True,
    )
    assert b"errors: 0, replies: 100" in done.stdout
    assert cli("GET", "k99") == "99\n"


def test_inline_commands_as_typed_into_telnet(example):
    with socket.create_connection(example, timeout=10) as sock:
        sock.sendall(b'PING\r\nSET "two words" \'it\\\'s\'\r\nGET "two words"\n\r\nECHO "\\x41\\tB"\r\n')
        assert read_replies(sock, 4) == ["PONG", "OK", b"it's", b"A\tB"]


def test_a_thousand_pipelined_commands_in_one_write(example):
    with socket.create_connection(example, timeout=10) as sock:
        sock.sendall(
            encode_command("DEL", "pipe")
            + b"".join(encode_command("RPUSH", "pipe", str(i)) for i in range(1000))
        )
        assert read_replies(sock, 1001) == [0, *range(1, 1001)]


def test_a_protocol_error_gets_redis_reply_then_the_close_and_others_go_on(example):
    with socket.create_connection(example, timeout=10) as bystander:
        with socket.create_connection(example, timeout=10) as sock:
            sock.sendall(
                encode_command("SET", "before", "1") + b"*1\r\n$x\r\n" + encode_command("SET", "after", "1")
            )
            assert recv_all(sock) == b"+OK\r\n-ERR Protocol error: invalid bulk length\r\n"
        bystander.sendall(encode_command("EXISTS", "before", "after"))
        assert read_replies(bystander, 1) == [1]


def test_a_protocol_error_is_logged_with_the_peer_address(clocked, caplog):
    _, _, _, server = clocked
    with caplog.at_level(logging.WARNING, logger="evloop"):
        with socket.create_connection((server.host, server.port), timeout=10) as sock:
            sock.sendall(b"*1\r\n$3\r\nabcd\r\n")
            assert recv_all(sock) == b"-ERR Protocol error: expected CRLF after a bulk string\r\n"
            peer = "{}:{}".format(*sock.getsockname()[:2])
    assert any(
        peer in record.getMessage() and "not followed by CRLF" in record.getMessage()
        for record in caplog.records
    )


# -- the same bytes, the same replies as a real redis-server --------------------

SCRIPT = [
    ["PING"],
    ["PING", "hi"],
    ["ECHO", "x"],
    ["ECHO"],
    ["FLUSHDB"],
    ["SET", "s", "v"],
    ["GET", "s"],
    ["GET", "none"],
    ["SET", "s", "w", "NX"],
    ["SET", "s2", "w", "XX"],
    ["SET", "s", "v2", "XX", "EX", "100"],
    ["SET", "s", "v", "PX", "0"],
    ["SET", "s", "v", "EX", "x"],
    ["SET", "s", "v", "EX", "10", "PX", "10"],
    ["SET", "s", "v", "ZZ"],
    ["SET", "s"],
    ["SET", "s", "v", "KEEPTTL", "EX", "1"],
    ["get", "s"],
    ["GeT", "s", "x"],
    ["DEL", "s", "none", "s"],
    ["EXISTS", "s"],
    ["DEL"],
    ["INCR", "n"],
    ["INCR", "n"],
    ["DECR", "n"],
    ["DECR", "m"],
    ["SET", "n", "01"],
    ["INCR", "n"],
    ["SET", "n", " 1"],
    ["INCR", "n"],
    ["SET", "n", "9223372036854775807"],
    ["INCR", "n"],
    ["SET", "n", "-9223372036854775808"],
    ["DECR", "n"],
    ["INCR", "n", "1"],
    ["INCRBY", "n", "5"],
    ["DECRBY", "n", "x"],
    ["MSET", "a", "1", "b", "2"],
    ["MSET", "a"],
    ["MGET", "a", "none", "b"],
    ["RPUSH", "l", "1", "2", "3"],
    ["LPUSH", "l", "0"],
    ["LRANGE", "l", "0", "-1"],
    ["LRANGE", "l", "-100", "100"],
    ["LRANGE", "l", "2", "1"],
    ["LRANGE", "l", "x", "1"],
    ["LRANGE", "none", "0", "-1"],
    ["LPOP", "l"],
    ["RPOP", "l"],
    ["LPOP", "l", "0"],
    ["LPOP", "l", "-1"],
    ["RPOP", "l", "5"],
    ["LPOP", "l"],
    ["LPOP", "l", "2"],
    ["LPOP", "a"],
    ["GET", "l"],
    ["RPUSH", "a", "x"],
    ["LPOP", "l", "1", "2"],
    ["SADD", "set", "m"],
    ["SADD", "set", "m", "m"],
    ["SMEMBERS", "set"],
    ["SMEMBERS", "none"],
    ["SMEMBERS", "a"],
    ["SADD", "a", "x"],
    ["HSET", "h", "f", "v", "g", "w"],
    ["HSET", "h", "f", "v2"],
    ["HSET", "h", "f"],
    ["HGET", "h", "f"],
    ["HGET", "h", "x"],
    ["HGET", "a", "f"],
    ["HSET", "a", "f", "v"],
    ["KEYS", "se?"],
    ["KEYS", "[s]*"],
    ["KEYS", "h"],
    ["KEYS", "nothing*"],
    ["KEYS", "\\h"],
    ["KEYS", "[^a-r]et"],
    ["FLUSHDB", "ASYNC"],
    ["FLUSHDB", "NOW"],
    ["KEYS", "*"],
    ["NOSUCH", "a", "b", "c", "d"],
    ["MULTI"],
    ["SET", "t", "1"],
    ["INCR", "t"],
    ["EXEC"],
    ["EXEC"],
    ["DISCARD"],
]


def test_replies_match_a_real_redis_server_byte_for_byte(example):
    request = b"".join(encode_command(*argv) for argv in SCRIPT)
    answers = []
    with real_redis_server() as real:
        for address in (real, example):
            with socket.create_connection(address, timeout=10) as sock:
                sock.sendall(request)
                answers.append(read_replies(sock, len(SCRIPT)))
    real_replies, our_replies = answers
    for argv, ours, theirs in zip(SCRIPT, our_replies, real_replies, strict=True):
        assert ours == theirs, argv


@pytest.mark.parametrize(
    "bad",
    [
        b"*1\r\n$x\r\n",
        b"*x\r\n",
        b"*1\r\n:1\r\n",
        b"*1\r\n$-1\r\n",
        b'SET "a b\r\n',
        b"*1\r\n$" + b"9" * 20 + b"\r\n",
    ],
)
def test_protocol_errors_match_a_real_redis_server(example, bad):
    answers = []
    with real_redis_server() as real:
        for address in (real, example):
            with socket.create_connection(address, timeout=10) as sock:
                sock.sendall(b"PING\r\n" + bad)
                answers.append(recv_all(sock))
    assert answers[1] == answers[0]


# -- expiry, on a clock the test moves --------------------------------------------


def test_keys_expire_when_the_clock_says(clocked):
    clock, _, connection, _ = clocked
    connection.set("ex", "v", ex=10)
    connection.set("px", "v", px=1500)
    connection.set("keep", "v", ex=10)
    connection.set("keep", "w", keepttl=True)
    connection.set("cleared", "v", ex=10)
    connection.set("cleared", "w")  # SET without options drops the deadline
    connection.set("counter", "5", ex=10)
    connection.incr("counter")  # INCR keeps it
    clock.advance(1.499)
    assert connection.get("px") == b"v"
    clock.advance(0.001)
    assert connection.get("px") is None
    assert connection.exists("ex", "keep", "cleared", "counter") == 4
    clock.advance(8.499)
    assert connection.get("ex") == b"v"
    clock.advance(0.001)
    assert connection.get("ex") is None
    assert sorted(connection.keys()) == [b"cleared"]
    assert connection.mget("keep", "counter", "cleared") == [None, None, b"w"]


def test_active_expiry_reclaims_keys_nobody_reads():
    clock = FakeClock()
    database = Database(clock)
    for i in range(10):
        database.execute("SET", f"k{i}", "v", "PX", str(100 * (i + 1)))
    database.execute("SET", "k0", "again", "EX", "100")  # k0's first deadline is stale now
    database.execute("SET", "plain", "v")
    clock.advance(0.5)
    assert database.expire_due() == 4  # k1..k4
    assert sorted(database.data) == sorted([b"k0", b"plain"] + [b"k%d" % i for i in range(5, 10)])
    clock.advance(1000)
    assert database.expire_due(limit=3) == 3
    assert database.expire_due() == 3
    assert sorted(database.data) == [b"plain"]


def test_refreshing_a_deadline_does_not_grow_the_expiry_heap():
    database = Database(FakeClock())
    for _ in range(10_000):
        database.execute("SET", "session", "token", "EX", "86400")
    assert len(database._deadlines) <= 2 * len(database.expires) + 65
    assert database.execute("GET", "session") == b"$5\r\ntoken\r\n"


# -- the handler on its own: chunking, one send per read, RESP3 -----------------


class FreshMiniRedis(miniredis.MiniRedisHandler):
    """A handler with a keyspace of its own, for one run of the harness."""

    def __init__(self, server, client_socket, client_address):
        server.database = Database(FakeClock())
        super().__init__(server, client_socket, client_address)


def test_replies_are_the_same_in_every_split():
    data = (
        encode_command("SET", "k", "v")
        + encode_command("GET", "k")
        + b"INCR n\r\n"
        + encode_command("LPUSH", "k", "x")
        + encode_command("GET", "k")
    )
    assert_handler_every_split(
        FreshMiniRedis,
        data,
        b"+OK\r\n$1\r\nv\r\n:1\r\n-WRONGTYPE Operation against a key "
        b"holding the wrong kind of value\r\n$1\r\nv\r\n",
        closed=False,
    )


def test_all_replies_to_one_read_leave_in_one_send():
    harness = HandlerHarness(FreshMiniRedis)
    data = b"".join(encode_command("INCR", "n") for _ in range(100))
    assert harness.feed(data) == b"".join(b":%d\r\n" % i for i in range(1, 101))
    assert harness.socket.send_calls == 1


def test_hello_switches_a_connection_to_resp3_and_back():
    harness = HandlerHarness(FreshMiniRedis)
    hello = parse_all(harness.feed(encode_command("HELLO", "3")))[0]
    assert hello[b"proto"] == 3 and hello[b"server"] == b"redis"
    data = harness.feed(
        encode_command("GET", "x")
        + encode_command("SADD", "s", "a")
        + encode_command("SMEMBERS", "s")
        + encode_command("LPOP", "l", "2")
    )
    assert data == b"_\r\n:1\r\n~1\r\n$1\r\na\r\n_\r\n"
    assert parse_all(harness.feed(encode_command("HELLO", "2")))[0][4:6] == [b"proto", 2]
    assert harness.feed(encode_command("GET", "x")) == b"$-1\r\n"
    assert harness.feed(encode_command("HELLO", "4")) == b"-NOPROTO unsupported protocol version\r\n"


# -- any command, any arguments: a reply, never an exception ---------------------

NAMES = [name for name, _, _ in miniredis.COMMANDS] + ["get", "Set", "NOSUCH"]
words = st.one_of(
    st.sampled_from(
        [
            b"k",
            b"l",
            b"s",
            b"h",
            b"0",
            b"-1",
            b"2",
            b"EX",
            b"PX",
            b"NX",
            b"XX",
            b"KEEPTTL",
            b"*",
            b"[",
            b"\\",
            b"3",
            b"GET",
            b"9223372036854775807",
            b"SETNAME",
            b"ASYNC",
        ]
    ),
    st.binary(max_size=6),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(NAMES), st.lists(words, max_size=5)), max_size=12))
def test_any_command_gets_exactly_one_well_formed_reply(script):
    clock = FakeClock()
    database = Database(clock)
    commands = [[name.encode(), *args] for name, args in script]
    # Outside a transaction every command gets one reply; inside, EXEC's array
    # stands for the queued ones, so count only that far.
    replies = parse_all(database.execute_many(commands))
    transaction_free = not any(name.upper() in ("MULTI", "EXEC", "DISCARD") for name, _ in script)
    if transaction_free:
        assert len(replies) == len(commands)


# -- the asyncio yardstick serves the same protocol --------------------------------


def test_the_asyncio_version_serves_the_same_commands():
    # running_example finds scripts under examples/; this one lives in benchmarks/.
    with running_example("../benchmarks/miniredis_asyncio.py") as (host, port, _):
        connection = redis.Redis(host=host, port=port, socket_timeout=10)
        assert connection.set("k", "v") is True
        assert connection.get("k") == b"v"
        pipe = connection.pipeline(transaction=False)
        for _ in range(50):
            pipe.incr("n")
        assert pipe.execute() == list(range(1, 51))
        connection.close()
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(b"PING\r\n*1\r\n$x\r\n")
            assert recv_all(sock) == b"+PONG\r\n-ERR Protocol error: invalid bulk length\r\n"
