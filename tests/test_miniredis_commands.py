"""examples/miniredis.py's commands beyond the basics, each checked reply
for reply against a real redis-server (skipped where none is installed):
expiry, hashes, sorted sets, SCAN, INFO, CONFIG and maxmemory; KEYS and
CONFIG GET glob patterns, with Redis's quirks and without backtracking; and
redis-benchmark's whole default run."""

import random
import re
import shutil
import socket
import subprocess
import time

import pytest
from evloop.protocols import encode_command

from evloop.testing import FakeClock
from tests.examples import running_example
from tests.test_miniredis import Database, example, miniredis, read_replies, real_redis_server

__all__ = ["example"]  # the module-scoped server fixture, shared


@pytest.fixture(scope="module")
def real():
    with real_redis_server() as address:
        yield address


def replies_from(address, script):
    with socket.create_connection(address, timeout=30) as sock:
        sock.sendall(b"".join(encode_command(*argv) for argv in script))
        return read_replies(sock, len(script))


def assert_same_replies(real, ours, script, *, unordered=()):
    """Both servers give the same replies to ``script``; replies to the
    commands named in ``unordered`` are compared as sets (hash order)."""
    theirs, mine = replies_from(real, script), replies_from(ours, script)
    for argv, their, my in zip(script, theirs, mine, strict=True):
        if argv[0] in unordered and isinstance(their, list):
            their, my = sorted(map(repr, their)), sorted(map(repr, my))
        assert my == their, argv


SCRIPT = [
    ["FLUSHALL"],
    ["FLUSHALL", "X"],
    ["DBSIZE"],
    ["DBSIZE", "x"],
    # expiry
    ["SET", "k", "v"],
    ["TTL", "k"],
    ["PTTL", "k"],
    ["TTL", "none"],
    ["PTTL", "none"],
    ["EXPIRE", "none", "10"],
    ["EXPIRE", "k", "x"],
    ["EXPIRE", "k", "10", "FOO"],
    ["EXPIRE", "k", "10", "NX", "XX"],
    ["EXPIRE", "k", "10", "GT", "LT"],
    ["EXPIRE", "k", "99999999999999999"],
    ["EXPIRE", "k", "100", "XX"],
    ["EXPIRE", "k", "100", "GT"],
    ["EXPIRE", "k", "100", "LT"],
    ["EXPIRE", "k", "100", "NX"],
    ["TTL", "k"],
    ["EXPIRE", "k", "1000", "NX"],
    ["EXPIRE", "k", "1000", "XX", "GT"],
    ["TTL", "k"],
    ["EXPIRE", "k", "50", "GT"],
    ["EXPIRE", "k", "50", "LT"],
    ["TTL", "k"],
    ["PERSIST", "k"],
    ["PERSIST", "k"],
    ["PERSIST", "none"],
    ["TTL", "k"],
    ["PEXPIRE", "k", "100000"],
    ["TTL", "k"],
    ["EXPIRE", "k", "-1"],
    ["EXISTS", "k"],
    ["TTL", "k", "x"],
    # types
    ["SET", "s", "v"],
    ["RPUSH", "l", "a"],
    ["SADD", "set", "m"],
    ["HSET", "h", "f", "v"],
    ["ZADD", "z", "1", "m"],
    ["TYPE", "s"],
    ["TYPE", "l"],
    ["TYPE", "set"],
    ["TYPE", "h"],
    ["TYPE", "z"],
    ["TYPE", "none"],
    ["DBSIZE"],
    # hashes
    ["HSET", "h", "g", "w"],
    ["HLEN", "h"],
    ["HLEN", "none"],
    ["HLEN", "s"],
    ["HEXISTS", "h", "f"],
    ["HEXISTS", "h", "x"],
    ["HEXISTS", "none", "f"],
    ["HDEL", "h", "f", "x", "f"],
    ["HGETALL", "h"],
    ["HGETALL", "none"],
    ["HGETALL", "s"],
    ["HDEL", "h", "g"],
    ["EXISTS", "h"],
    ["HDEL", "none", "f"],
    ["HDEL", "h"],
    # sets
    ["SPOP", "set"],
    ["SPOP", "set"],
    ["SPOP", "set", "2"],
    ["SPOP", "set", "-1"],
    ["SPOP", "set", "x"],
    ["SPOP", "set", "1", "2"],
    ["SPOP", "s"],
    ["SADD", "set", "a"],
    ["SPOP", "set", "5"],
    ["SADD", "set", "a", "b"],
    ["SCARD", "set"],
    ["SISMEMBER", "set", "a"],
    ["SISMEMBER", "set", "z"],
    ["SREM", "set", "a", "z"],
    ["SREM", "set", "b"],
    ["EXISTS", "set"],
    # sorted sets
    ["ZADD", "z", "x", "a"],
    ["ZADD", "z", "nan", "a"],
    ["ZADD", "z", "NX", "XX", "1", "a"],
    ["ZADD", "z", "GT", "LT", "1", "a"],
    ["ZADD", "z", "NX", "GT", "1", "a"],
    ["ZADD", "z", "NX", "1"],
    ["ZADD", "z", "1"],
    ["ZADD", "z", "INCR", "1", "a", "2", "b"],
    ["ZADD", "z", "INCR", "1.5", "a"],
    ["ZADD", "z", "INCR", "1.5", "a"],
    ["ZADD", "z", "inf", "c", "-inf", "d", "0.1", "e", "1e3", "f", "2", "m"],
    ["ZADD", "z", "CH", "3", "m", "4", "new"],
    ["ZADD", "z", "XX", "9", "m", "9", "nope"],
    ["ZADD", "z", "NX", "0", "m", "0", "nx"],
    ["ZADD", "z", "GT", "1", "m", "99", "f"],
    ["ZADD", "z", "LT", "1", "m", "99", "e"],
    ["ZADD", "z", "XX", "INCR", "1", "nope"],
    ["ZADD", "nz", "XX", "1", "a"],
    ["EXISTS", "nz"],
    ["ZCARD", "z"],
    ["ZSCORE", "z", "e"],
    ["ZSCORE", "z", "nope"],
    ["ZRANGE", "z", "0", "-1"],
    ["ZRANGE", "z", "1", "3", "WITHSCORES"],
    ["ZRANGE", "z", "5", "1"],
    ["ZPOPMIN", "z"],
    ["ZPOPMIN", "z", "2"],
    ["ZPOPMIN", "z", "0"],
    ["ZPOPMIN", "z", "-1"],
    ["ZPOPMIN", "z", "x"],
    ["ZPOPMIN", "z", "1", "2"],
    ["ZPOPMIN", "none"],
    ["ZPOPMIN", "none", "2"],
    ["ZPOPMIN", "s"],
    ["ZPOPMIN", "z", "100"],
    ["EXISTS", "z"],
    ["ZADD", "s", "1", "a"],
    # SCAN over one key, so that the order cannot differ
    ["FLUSHDB"],
    ["SET", "only", "1"],
    ["SCAN", "0"],
    ["SCAN", "0", "MATCH", "on*", "COUNT", "100"],
    ["SCAN", "0", "MATCH", "x*"],
    ["SCAN", "0", "TYPE", "string"],
    ["SCAN", "0", "TYPE", "list"],
    ["SCAN", "0", "TYPE", "nosuch"],
    ["SCAN", "x"],
    ["SCAN", "0", "COUNT", "0"],
    ["SCAN", "0", "COUNT", "x"],
    ["SCAN", "0", "FOO"],
    ["SCAN", "0", "MATCH"],
    # CONFIG
    ["CONFIG"],
    ["CONFIG", "FOO"],
    ["CONFIG", "GET"],
    ["CONFIG", "GET", "save"],
    ["CONFIG", "GET", "SAVE"],
    ["CONFIG", "GET", "appendonl?"],
    ["CONFIG", "GET", "[s]ave"],
    ["CONFIG", "GET", "maxmemory"],
    ["CONFIG", "GET", "maxmemory-policy"],
    ["CONFIG", "GET", "nosuch"],
    ["CONFIG", "SET", "foo", "1"],
    ["CONFIG", "SET", "maxmemory"],
    ["CONFIG", "SET", "maxmemory", "x"],
    ["CONFIG", "SET", "maxmemory", "10mb"],
    ["CONFIG", "GET", "maxmemory"],
    ["CONFIG", "SET", "maxmemory", "1G"],
    ["CONFIG", "GET", "maxmemory"],
    # maxmemory: past it, writes get the OOM error; reads and deletes run
    ["RPUSH", "list", "a", "b"],
    ["CONFIG", "SET", "maxmemory", "1"],
    ["SET", "a", "b"],
    ["MSET", "a", "b"],
    ["INCR", "n"],
    ["LPUSH", "list", "x"],
    ["SADD", "set", "x"],
    ["HSET", "h", "f", "v"],
    ["ZADD", "z", "1", "m"],
    ["GET", "a"],
    ["LPOP", "list"],
    ["DEL", "list"],
    ["EXPIRE", "only", "100"],
    ["MULTI"],
    ["SET", "x", "1"],
    ["GET", "x"],
    ["EXEC"],
    ["MULTI"],
    ["GET", "x"],
    ["EXEC"],
    ["CONFIG", "SET", "maxmemory", "0"],
    ["SET", "a", "b"],
    ["INFO", "nosuch"],
    ["FLUSHALL"],
    ["INFO", "keyspace"],
    ["SET", "a", "b"],
    ["INFO", "keyspace"],
]


def test_replies_match_a_real_redis_server_byte_for_byte(real, example):
    assert_same_replies(real, example, SCRIPT)


RESP3_SCRIPT = [
    ["HELLO", "3"],
    ["FLUSHALL"],
    ["ZADD", "z", "1", "a", "2.5", "b", "inf", "c"],
    ["ZADD", "z", "INCR", "0.5", "a"],
    ["ZSCORE", "z", "a"],
    ["ZSCORE", "z", "none"],
    ["ZRANGE", "z", "0", "-1"],
    ["ZRANGE", "z", "0", "-1", "WITHSCORES"],
    ["ZPOPMIN", "z"],
    ["ZPOPMIN", "z", "1"],
    ["ZPOPMIN", "z", "5"],
    ["ZPOPMIN", "z"],
    ["ZPOPMIN", "z", "2"],
    ["HSET", "h", "f", "v"],
    ["HGETALL", "h"],
    ["HGETALL", "none"],
    ["SADD", "s", "x"],
    ["SPOP", "s", "3"],
    ["SPOP", "s", "3"],
    ["SPOP", "s"],
    ["CONFIG", "GET", "maxmemory"],
    ["SCAN", "0"],
    ["TTL", "none"],
]


def test_resp3_replies_match_a_real_redis_server(real, example):
    # After HELLO 3 (whose reply names the server, so it differs), doubles
    # are "," replies, scored members come in pairs, maps and sets have
    # their own types.
    theirs, mine = replies_from(real, RESP3_SCRIPT), replies_from(example, RESP3_SCRIPT)
    for argv, their, my in zip(RESP3_SCRIPT[1:], theirs[1:], mine[1:], strict=True):
        assert my == their, argv


def test_info_has_redis_sections_and_field_names(real, example):
    theirs, mine = (replies_from(address, [["INFO"]])[0].decode() for address in (real, example))

    def sections(text):
        found, current = {}, None
        for line in text.split("\r\n"):
            if line.startswith("# "):
                current = found.setdefault(line[2:], set())
            elif line:
                current.add(line.split(":", 1)[0])
        return found

    assert re.fullmatch(r"(# \w+\r\n([\w-]+:[^\r\n]*\r\n)*)(\r\n# \w+\r\n([\w-]+:[^\r\n]*\r\n)*)*", mine)
    real_sections, our_sections = sections(theirs), sections(mine)
    assert list(our_sections) == ["Server", "Clients", "Memory", "Stats", "Keyspace"]
    for name, fields in our_sections.items():
        assert fields <= real_sections[name], name
    clients = replies_from(example, [["INFO", "clients"]])[0]
    assert re.search(rb"connected_clients:[1-9]", clients)


# -- glob patterns ------------------------------------------------------------

KEYS = [
    "",
    "a",
    "ab",
    "abc",
    "b",
    "hello",
    "hallo",
    "hxllo",
    "hllo",
    "heeeello",
    "h]llo",
    "h-llo",
    "h^llo",
    "h\\llo",
    "*",
    "?",
    "[",
    "]",
    "a*b",
    "a?b",
    "x" * 40,
    "user:1000:name",
    "user:1001:mail",
]
FIXED_PATTERNS = [
    "*",
    "**",
    "?*",
    "*?",
    "",
    "h?llo",
    "h*llo",
    "h[ae]llo",
    "h[^e]llo",
    "h[a-b]llo",
    "h[b-a]llo",
    "h[a-]llo",
    "h[]llo",
    "h[^]llo",
    "h[",
    "h[^",
    "hello[",
    "a[^",
    "h[\\]]llo",
    "h\\*llo",
    "\\*",
    "\\?",
    "\\",
    "a\\",
    "[\\",
    "[*]",
    "[[]",
    "[]]",
    "user:*:name",
    "user:100?:*",
    "*:*",
    "x*x*x*x*x*x*x*x*x*x*y",
    "[a-z]*[0-9]",
    "h[a-e-]llo",
    "a*" * 1001,
    "a*" * 1002,
    "*a" * 1001,
]


def random_patterns(count, seed=12):
    rng = random.Random(seed)
    alphabet = "ah*?[]^-\\l"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8))) for _ in range(count)]


def test_keys_patterns_match_as_a_real_redis_server_does(real, example):
    setup = [["FLUSHALL"], *(["SET", key, "1"] for key in KEYS), ["SET", "a" * 1200, "1"]]
    patterns = FIXED_PATTERNS + random_patterns(400)
    script = setup + [["KEYS", pattern] for pattern in patterns]
    assert_same_replies(real, example, script, unordered={"KEYS"})


def test_config_get_patterns_match_as_a_real_redis_server_does(real, example):
    # Only patterns that match nothing beyond the names miniredis knows.
    patterns = ["sav?", "SAV*", "[Ss]ave", "appendonl[xy]", "maxmemory-p*", "s[^x]ve", "nothing*", "?"]
    assert_same_replies(real, example, [["CONFIG", "GET", p] for p in patterns])


def cpu_seconds(database, *argv):
    started = time.process_time()
    database.execute(*argv)
    return time.process_time() - started


def test_patterns_of_a_kilobyte_answer_in_milliseconds():
    # Each of these kept a loop busy for seconds when a glob became a
    # backtracking regular expression (Redis's CVE-2022-36021).
    database = Database(FakeClock())
    database.execute("SET", "a" * 200, "1")
    hostile = [
        "*a*a*a*a*ab",
        "*a" * 512,
        ("*" + "?" * 20) * 48,
        "*" + "[a-z]*" * 170,
        ("a*" * 500) + "b",
        "*" * 1024,
    ]
    worst = max(cpu_seconds(database, "KEYS", pattern) for pattern in hostile)
    config = cpu_seconds(database, "CONFIG", "GET", "*" * 22 + "x")
    print(
        f"\nglob: worst KEYS over a 200-byte key {worst * 1000:.2f} ms; "
        f"CONFIG GET with 22 stars {config * 1000:.2f} ms"
    )
    assert worst < 0.05 and config < 0.05


def test_a_pattern_over_16_kib_is_refused_and_one_of_16_kib_is_quick():
    database = Database(FakeClock())
    database.execute("SET", "a" * 200, "1")
    longest = ("[a-z]" * 4000 + "?" * 400)[: 16 * 1024]
    assert cpu_seconds(database, "KEYS", longest) < 0.5
    for command in (["KEYS"], ["SCAN", "0", "MATCH"], ["CONFIG", "GET"]):
        reply = database.execute(*command, "*" + "a" * (16 * 1024))
        assert reply == b"-ERR glob pattern longer than 16384 bytes\r\n", command


def test_the_glob_matcher_agrees_with_redis_algorithm_on_random_input():
    # Redis's own recursive algorithm (util.c stringmatchlen), written out
    # here as the reference, against the one without backtracking.
    glob_matcher = miniredis.glob_matcher

    rng = random.Random(7)
    for _ in range(20_000):
        pattern = bytes(rng.choice(b"ab*?[]^-\\") for _ in range(rng.randint(0, 8)))
        string = bytes(rng.choice(b"ab]-^\\*") for _ in range(rng.randint(0, 6)))
        expected = True if pattern == b"*" else redis_stringmatch(pattern, string)
        assert glob_matcher(pattern)(string) == expected, (pattern, string)


def redis_stringmatch(p, s, nesting=0):
    if nesting > 1000:
        return False
    pi = si = 0
    while pi < len(p) and si < len(s):
        c = p[pi]
        if c == 42:  # *
            while pi + 1 < len(p) and p[pi + 1] == 42:
                pi += 1
            if pi == len(p) - 1:
                return True
            return any(redis_stringmatch(p[pi + 1 :], s[i:], nesting + 1) for i in range(si, len(s)))
        if c == 63:  # ?
            si += 1
        elif c == 91:  # [
            pi, matched = redis_class(p, pi + 1, s[si])
            if not matched:
                return False
            si += 1
        else:
            if c == 92 and len(p) - pi >= 2:
                pi += 1
            if p[pi] != s[si]:
                return False
            si += 1
        pi += 1
        if si == len(s):
            while pi < len(p) and p[pi] == 42:
                pi += 1
            break
    return pi >= len(p) and si == len(s)


def redis_class(p, pi, char):
    negate = pi < len(p) and p[pi] == 94
    pi += negate
    matched = False
    while True:
        if pi < len(p) and p[pi] == 92 and len(p) - pi >= 2:
            pi += 1
            matched |= p[pi] == char
        elif pi < len(p) and p[pi] == 93:
            break
        elif pi >= len(p):
            pi -= 1
            break
        elif len(p) - pi >= 3 and p[pi + 1] == 45:
            low, high = sorted((p[pi], p[pi + 2]))
            matched |= low <= char <= high
            pi += 2
        else:
            matched |= p[pi] == char
        pi += 1
    return pi, matched != negate


# -- expiry on a clock the test moves, SCAN's promise ---------------------------


def test_expire_ttl_and_persist_follow_the_clock():
    clock = FakeClock(1000.0)
    database = Database(clock)
    database.execute("SET", "k", "v")
    assert database.execute("EXPIRE", "k", "10") == b":1\r\n"
    clock.advance(2.4)
    assert database.execute("TTL", "k") == b":8\r\n"  # 7.6 s, rounded as Redis rounds
    assert database.execute("PTTL", "k") == b":7600\r\n"
    assert database.execute("PEXPIRE", "k", "1500") == b":1\r\n"
    clock.advance(1.499)
    assert database.execute("GET", "k") == b"$1\r\nv\r\n"
    assert database.execute("PERSIST", "k") == b":1\r\n"
    clock.advance(100)
    assert database.execute("TTL", "k") == b":-1\r\n"
    database.execute("EXPIRE", "k", "1")
    clock.advance(1)
    assert database.execute("TTL", "k") == b":-2\r\n"
    assert b"expired_keys:1" in database.execute("INFO", "stats")


def test_scan_returns_every_key_that_lives_through_it():
    database = Database(FakeClock())
    for n in range(500):
        database.execute("SET", f"key:{n}", "v")
    seen, cursor, calls = set(), b"0", 0
    while True:
        reply = database.execute("SCAN", cursor, "COUNT", "7")
        cursor = reply.split(b"\r\n")[2]
        seen.update(re.findall(rb"(key:\d+|new:\d+)", reply))
        # Keys come and go meanwhile; the 400 that stay must all be seen.
        database.execute("DEL", f"key:{400 + calls % 100}")
        database.execute("SET", f"new:{calls}", "v")
        calls += 1
        if cursor == b"0":
            break
    assert {b"key:%d" % n for n in range(400)} <= seen
    assert calls < 200


def test_maxmemory_is_a_command_line_option():
    with running_example("miniredis.py", "--maxmemory", "1") as (host, port, _):
        script = [["SET", "a", "b"], ["GET", "a"], ["CONFIG", "GET", "maxmemory"]]
        replies = replies_from((host, port), script)
    assert replies == ["OOM command not allowed when used memory > 'maxmemory'.", None, [b"maxmemory", b"1"]]


# -- redis-benchmark, as it comes ------------------------------------------------------

DEFAULT_TESTS = [
    "PING_INLINE",
    "PING_MBULK",
    "SET",
    "GET",
    "INCR",
    "LPUSH",
    "RPUSH",
    "LPOP",
    "RPOP",
    "SADD",
    "HSET",
    "SPOP",
    "ZADD",
    "ZPOPMIN",
    "LRANGE_100",
    "LRANGE_300",
    "LRANGE_500",
    "LRANGE_600",
    "MSET",
]


def test_redis_benchmark_default_run_completes(example):
    if shutil.which("redis-benchmark") is None:
        pytest.skip("redis-benchmark is not installed (Debian: apt-get install redis-tools)")
    port = example[1]
    done = subprocess.run(
        ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-n", "2000"],
        capture_output=True,
        text=True,
        timeout=100,
    )
    output = done.stdout.replace("\r", "\n")
    assert done.returncode == 0, done.stderr + output[-2000:]
    assert "error" not in (done.stderr + output).lower(), done.stderr + output[-2000:]
    finished = re.findall(r"^====== (.+?) ======$", output, re.MULTILINE)
    names = [name.split(" ")[0] for name in finished]
    for name in DEFAULT_TESTS:
        assert name in names, f"{name} did not run: {names}"
    assert all("2000 requests completed" in line for line in re.findall(r".*requests completed.*", output))


def test_a_zadd_of_many_pairs_orders_them_as_one_by_one_would():
    rng = random.Random(3)
    pairs = [(rng.choice(["1", "2.5", "-inf", "7"]), f"m{rng.randrange(300)}") for _ in range(500)]
    many, one_by_one = Database(FakeClock()), Database(FakeClock())
    many.execute("ZADD", "z", *[word for pair in pairs for word in pair])
    for score, member in pairs:
        one_by_one.execute("ZADD", "z", score, member)
    everything = ("ZRANGE", "z", "0", "-1", "WITHSCORES")
    assert many.execute(*everything) == one_by_one.execute(*everything)
    started = time.process_time()
    many.execute("ZADD", "big", *[word for n in range(100_000) for word in (str(n % 97), f"m{n}")])
    assert time.process_time() - started < 5  # one sort, not 100,000 insertions into a list


def test_scan_returns_keys_whose_ranks_clash_and_ends(monkeypatch):
    import miniredis_db.keyspace as keyspace

    rank = keyspace._scan_rank
    monkeypatch.setattr(keyspace, "_scan_rank", lambda key: rank(key) % 3 + 1)  # 20 keys, 3 ranks
    database = Database(FakeClock())
    for n in range(20):
        database.execute("SET", f"k{n}", "v")
    seen, cursor = [], b"0"
    for _ in range(10):
        reply = database.execute("SCAN", cursor, "COUNT", "2")
        cursor = reply.split(b"\r\n")[2]
        seen += re.findall(rb"k\d+", reply)
        if cursor == b"0":
            break
    assert cursor == b"0"
    assert sorted(seen) == sorted(b"k%d" % n for n in range(20))
