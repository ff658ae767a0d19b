"""The PROXY protocol (HAProxy's doc/proxy-protocol.txt, versions 1 and 2):
the parser at every split point and on every field, then real servers on
127.0.0.1 (TCP, Unix, TLS behind the header, the command line) whose
handlers see the client the header names, and the bytes after the header
reach the handler or the TLS layer intact."""

import logging
import socket
import ssl
import struct
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evloop import ClientHandler, Limits, ProxyHeaderError, ProxyProtocol, UnixServer, format_address
from evloop.proxy_protocol import (
    DEFAULT_MAX_HEADER_SIZE,
    V1_MAX_LENGTH,
    ProxyHeaderParser,
    crc32c,
    parse_header,
)
from evloop.testing import every_split
from tests.certs import make_tls_files
from tests.conftest import RunningLoop, recv_exactly
from tests.proxy_headers import ssl_tlv, tlv, v1, v2
from tests.waiting import wait_on_loop

PAYLOAD = b"after the header\r\n"


def parse_in(chunks, **options):
    """Feed ``chunks`` to a fresh parser: (header, the bytes after it)."""
    parser = ProxyHeaderParser(**options)
    header = None
    after = b""
    for chunk in chunks:
        if header is None:
            header = parser.feed(chunk)
            if header is not None:
                after = parser.rest
        else:
            after += chunk
    return header, after


# -- the parser ---------------------------------------------------------------

SAMPLES = {
    "v1 TCP4": v1(),
    "v1 TCP6": v1("TCP6", ("2001:db8::1", 1), ("2001:db8::2", 65535)),
    "v1 UNKNOWN": b"PROXY UNKNOWN %s %s 65535 65535\r\n" % (b"ffff:" * 7 + b"ffff", b"ffff:" * 7 + b"ffff"),
    "v2 TCP4": v2(),
    "v2 TCP6 TLVs": v2(
        "TCP6", ("2001:db8::1", 4000), ("2001:db8::2", 443), tlvs=tlv(1, b"h2") + tlv(2, b"example.com")
    ),
    "v2 UNIX": v2("UNIX_STREAM", "/run/client.sock", "/run/server.sock"),
    "v2 LOCAL": v2("UNKNOWN", command="LOCAL"),
    "v2 CRC32c": v2(tlvs=ssl_tlv(cn=b"alice"), crc=True),
}


@pytest.mark.parametrize("name", list(SAMPLES))
def test_every_split_of_header_and_payload_gives_the_same_header_and_leaves_the_payload(name):
    data = SAMPLES[name] + PAYLOAD
    expected, after = parse_in([data])
    assert expected is not None and after == PAYLOAD
    for label, chunks in every_split(data):
        assert parse_in(chunks) == (expected, PAYLOAD), label


def test_v1_tcp4_and_tcp6():
    header, used = parse_header(v1() + b"GET")
    assert used == len(v1())
    assert (header.version, header.command, header.family) == (1, "PROXY", "TCP4")
    assert (header.source, header.destination) == (("192.0.2.1", 56324), ("198.51.100.7", 443))
    header, _ = parse_header(b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 ::1 0 65535\r\n")
    assert header.source == ("2001:db8::1", 0)  # canonical form
    assert header.destination == ("::1", 65535)
    assert header.tlvs == {} and header.alpn is None


def test_v1_unknown_keeps_the_real_addresses_and_the_longest_line_is_107_bytes():
    longest = SAMPLES["v1 UNKNOWN"]
    assert len(longest) == V1_MAX_LENGTH
    header, used = parse_header(longest)
    assert (header.family, header.source, header.is_local, used) == ("UNKNOWN", None, True, 107)
    assert parse_header(b"PROXY UNKNOWN\r\n")[0].family == "UNKNOWN"
    with pytest.raises(ProxyHeaderError, match="107"):
        parse_header(longest[:-2] + b"f\r\n")


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",  # a leading zero
        b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
        b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",  # two spaces
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 ::1 ::1 1 2\r\n",  # the wrong family
        b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
        b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",  # a lone LF
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX\n",  # a lone CR
        b"PROXY\r\n",
        b"PROXY TCP4 \xff.2.3.4 5.6.7.8 1 2\r\n",
    ],
)
def test_v1_bad_lines_are_refused_in_every_split(line):
    for label, chunks in every_split(line):
        with pytest.raises(ProxyHeaderError):
            parse_in(chunks)
            raise AssertionError(f"{line!r} accepted ({label})")


def test_v1_without_crlf_is_refused_at_107_bytes_not_later():
    parser = ProxyHeaderParser()
    assert parser.feed(b"PROXY UNKNOWN " + b"x" * 92) is None  # 106 bytes: may still end
    with pytest.raises(ProxyHeaderError, match="CRLF"):
        parser.feed(b"x")
    with pytest.raises(ProxyHeaderError):  # the error sticks
        parser.feed(b"\r\n")


def test_a_connection_without_a_header_is_refused_on_its_first_byte():
    with pytest.raises(ProxyHeaderError, match="began b'G'"):
        ProxyHeaderParser().feed(b"G")
    with pytest.raises(ProxyHeaderError, match=r"began b'GET / HTTP/1\.1"):
        parse_header(b"GET / HTTP/1.1\r\n")
    with pytest.raises(ProxyHeaderError, match="not a PROXY protocol version 2"):
        ProxyHeaderParser().feed(b"\r\n\r\n\x00\r\nQUIX")
    with pytest.raises(ProxyHeaderError, match="version 2"):  # only v2 accepted
        ProxyHeaderParser(versions=(2,)).feed(b"P")
    with pytest.raises(ProxyHeaderError, match="version 1"):
        ProxyHeaderParser(versions=(1,)).feed(b"\r")


def test_v2_addresses_of_every_family():
    header, _ = parse_header(v2())
    assert (header.version, header.command, header.family) == (2, "PROXY", "TCP4")
    assert (header.source, header.destination) == (("192.0.2.1", 56324), ("198.51.100.7", 443))
    header, _ = parse_header(v2("UDP6", ("2001:db8::5", 53), ("::1", 5353)))
    assert (header.family, header.source, header.destination) == ("UDP6", ("2001:db8::5", 53), ("::1", 5353))
    header, _ = parse_header(v2("UNIX_STREAM", "/run/a.sock", "/run/b.sock"))
    assert (header.family, header.source, header.destination) == ("UNIX_STREAM", "/run/a.sock", "/run/b.sock")
    abstract = b"\0abstract".ljust(108, b"\0") + b"/b".ljust(108, b"\0")
    header, _ = parse_header(v2("UNIX_DGRAM", addresses=abstract))
    assert header.source == "\0abstract" and header.destination == "/b"


def test_v2_local_and_unknown_name_no_client():
    for data in (v2("UNKNOWN", command="LOCAL"), v2("TCP4", command="LOCAL"), v2("UNKNOWN")):
        header, used = parse_header(data + b"rest")
        assert used == len(data)
        assert header.source is None and header.destination is None and header.is_local
    assert parse_header(v2("UNKNOWN", command="LOCAL"))[0].command == "LOCAL"
    # LOCAL with TLVs after the family's address block (the receiver skips
    # the length it is told, section 2.2).
    header, _ = parse_header(v2("TCP6", ("::1", 1), ("::2", 2), command="LOCAL", tlvs=tlv(5, b"id-1")))
    assert header.unique_id == b"id-1"


def test_v2_tlvs_decoded():
    cert = b"0\x82\x01\x0a fake DER"
    tlvs = (
        tlv(0x01, b"h2")
        + tlv(0x02, b"www.example.com")
        + tlv(0x04, b"\0\0\0")
        + tlv(0x05, b"u" * 128)
        + tlv(0x30, b"blue")
        + tlv(0xE0, b"custom")
        + ssl_tlv(
            client=0x07,
            verify=0,
            version=b"TLSv1.3",
            cn=b"alice \xc3\xa9",
            cipher=b"TLS_AES_128_GCM_SHA256",
            sig_alg=b"RSA-SHA256",
            key_alg=b"RSA2048",
            group=b"X25519",
            sig_scheme=b"rsa_pss_rsae_sha256",
            client_cert=cert,
        )
    )
    header, _ = parse_header(v2(tlvs=tlvs, crc=True))
    assert (header.alpn, header.authority, header.unique_id, header.netns) == (
        b"h2",
        "www.example.com",
        b"u" * 128,
        "blue",
    )
    assert header.tlvs[0xE0] == b"custom" and header.tlvs[0x04] == b"\0\0\0"
    assert set(header.tlvs) == {0x01, 0x02, 0x03, 0x04, 0x05, 0x20, 0x30, 0xE0}
    assert (header.ssl, header.ssl_client_cert_presented, header.ssl_verified) == (True, True, True)
    assert (header.ssl_version, header.ssl_cn, header.ssl_cipher) == (
        "TLSv1.3",
        "alice é",
        "TLS_AES_128_GCM_SHA256",
    )
    assert (header.ssl_sig_alg, header.ssl_key_alg) == ("RSA-SHA256", "RSA2048")
    assert (header.ssl_group, header.ssl_sig_scheme, header.ssl_client_cert) == (
        "X25519",
        "rsa_pss_rsae_sha256",
        cert,
    )
    unverified, _ = parse_header(v2(tlvs=ssl_tlv(client=0x03, verify=1)))
    assert (unverified.ssl, unverified.ssl_verify, unverified.ssl_verified, unverified.ssl_cn) == (
        True,
        1,
        False,
        None,
    )


def test_crc32c_is_checked():
    assert crc32c(b"123456789") == 0xE3069283  # RFC 3720's check value
    good = v2(tlvs=tlv(1, b"h2"), crc=True)
    assert parse_header(good)[0].alpn == b"h2"
    for flip in (5, 20, len(good) - 1):  # the signature, an address, the CRC itself
        bad = bytearray(good)
        bad[flip] ^= 0x01
        with pytest.raises(ProxyHeaderError):
            parse_header(bytes(bad))
    with pytest.raises(ProxyHeaderError, match="CRC32c TLV of 3 bytes"):
        parse_header(v2(tlvs=tlv(3, b"abc")))


@pytest.mark.parametrize(
    "data, message",
    [
        (v2()[:12] + b"\x11" + v2()[13:], "version/command"),
        (v2()[:12] + b"\x22" + v2()[13:], "version/command"),
        (v2()[:13] + b"\x13" + v2()[14:], "family"),
        (v2()[:13] + b"\x41" + v2()[14:], "family"),
        (v2(tlvs=b"\x01\x00"), "cut off"),
        (v2(tlvs=b"\x01\x00\x05ab"), "runs past"),
        (v2(tlvs=tlv(0x20, b"\x01\0\0")), "SSL TLV of 3 bytes"),
        (v2(tlvs=tlv(0x20, b"\x01\0\0\0\0\x21\x00\x09TLS")), "SSL sub-TLV"),
        (v2(tlvs=tlv(5, b"u" * 129)), "unique id"),
        (v2("TCP6", addresses=b"\0" * 35), "address block of 35"),
        (v2("UNIX_STREAM", addresses=b"\0" * 200), "address block of 200"),
    ],
)
def test_v2_bad_headers_are_refused(data, message):
    with pytest.raises(ProxyHeaderError, match=message):
        parse_header(data)
    for label, chunks in every_split(data):
        with pytest.raises(ProxyHeaderError):
            parse_in(chunks)
            raise AssertionError(label)


def test_v2_oversized_is_refused_from_its_length_field_alone():
    head = v2()[:14] + struct.pack("!H", DEFAULT_MAX_HEADER_SIZE)  # 16 + that: over
    with pytest.raises(ProxyHeaderError, match="over the limit"):
        ProxyHeaderParser().feed(head)
    fits = v2(tlvs=tlv(4, b"\0" * 1000))
    assert parse_header(fits, max_size=len(fits))[1] == len(fits)
    with pytest.raises(ProxyHeaderError, match="over the limit"):
        parse_header(fits, max_size=len(fits) - 1)


def test_the_setting_checks_its_arguments_and_trusts_networks():
    proxy = ProxyProtocol(trusted=["10.0.0.0/8", "127.0.0.1", "::1/128", "192.168.1.7/24"])
    assert proxy.versions == (1, 2)
    for host in ("10.2.3.4", "127.0.0.1", "::1", "::ffff:10.9.9.9", "192.168.1.200", "fe80::1%lo"):
        assert proxy.trusts(host) == (host != "fe80::1%lo"), host
    for host in ("127.0.0.2", "11.0.0.1", "::2", "nonsense", ""):
        assert not proxy.trusts(host), host
    assert ProxyProtocol(trusted="any").trusts("203.0.113.9")
    assert ProxyProtocol(trusted="10.0.0.0/8").trusts("10.1.1.1")
    with pytest.raises(ValueError, match="not a network"):
        ProxyProtocol(trusted=["10.0.0.0/33"])
    with pytest.raises(ValueError, match="no network"):
        ProxyProtocol(trusted=[])
    with pytest.raises(ValueError, match="versions"):
        ProxyProtocol(trusted="any", versions=(3,))
    with pytest.raises(ValueError, match="max_header_size"):
        ProxyProtocol(trusted="any", max_header_size=10)


# -- properties (hypothesis) ----------------------------------------------------

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(chunks, **options):
    try:
        return parse_in(chunks, **options)
    except ProxyHeaderError:
        return "error"


@SETTINGS
@given(
    st.one_of(
        st.binary(max_size=120),
        st.sampled_from(list(SAMPLES.values())).flatmap(
            lambda header: st.tuples(st.integers(0, len(header) - 1), st.binary(min_size=1, max_size=3)).map(
                lambda mutation: header[: mutation[0]] + mutation[1] + header[mutation[0] + 1 :]
            )
        ),
    ),
    st.data(),
)
def test_any_bytes_give_a_header_an_error_or_need_more_whatever_the_chunking(data, draw):
    """Only ProxyHeaderError escapes, and how the bytes are cut never
    changes the header, the error or the bytes after the header."""
    expected = outcome([data])
    cuts = sorted(draw.draw(st.lists(st.integers(0, len(data)), max_size=4)))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    assert outcome(chunks) == expected
    if expected != "error" and expected[0] is not None:
        assert data.endswith(expected[1])


@SETTINGS
@given(
    st.sampled_from(["TCP4", "TCP6"]),
    st.integers(0, 65535),
    st.integers(0, 65535),
    st.ip_addresses(v=4),
    st.ip_addresses(v=6),
    st.dictionaries(st.integers(0xE0, 0xEF), st.binary(max_size=40), max_size=4),
    st.booleans(),
)
def test_what_a_sender_builds_parses_back(family, sport, dport, ip4, ip6, custom, crc):
    host = str(ip4) if family == "TCP4" else socket.inet_ntop(socket.AF_INET6, ip6.packed)
    tlvs = b"".join(tlv(kind, value) for kind, value in custom.items())
    for data in (
        v1(family, (host, sport), (host, dport)),
        v2(family, (host, sport), (host, dport), tlvs=tlvs, crc=crc),
    ):
        header, used = parse_header(data + b"tail")
        assert used == len(data)
        assert (header.family, header.source, header.destination) == (family, (host, sport), (host, dport))
        if header.version == 2:
            assert {k: v for k, v in header.tlvs.items() if k != 3} == custom


# -- real servers ---------------------------------------------------------------


class WhoIsIt(ClientHandler):
    """Greets with the client it sees, then echoes every byte."""

    close_when_done = False
    seen = []

    def setup(self):
        header = self.proxy_header
        self.seen.append((self.client_address, self.peer, header))
        kind = f"v{header.version} {header.command}" if header is not None else "none"
        self.send(f"{format_address(self.client_address)} {kind}\n".encode())

    def data_received(self, data):
        self.send(data)


def greeting_of(sock):
    line = b""
    while not line.endswith(b"\n"):
        byte = sock.recv(1)
        assert byte, f"closed after {line!r}"
        line += byte
    return line.decode().rstrip("\n")


@pytest.fixture
def served(selector_name):
    running = RunningLoop(None if selector_name == "default" else selector_name).start()
    WhoIsIt.seen = []
    yield running
    running.stop()


def proxied(running, trusted=("127.0.0.1",), **options):
    return running.serve(WhoIsIt, proxy_protocol=ProxyProtocol(trusted=list(trusted)), **options)


def talk(address, data, family=socket.AF_INET):
    with socket.socket(family) as sock:
        sock.settimeout(10)
        sock.connect(address)
        sock.sendall(data)
        greeting = greeting_of(sock)
        return greeting, recv_exactly(sock, len(PAYLOAD))


@pytest.mark.parametrize("name", list(SAMPLES))
def test_the_handler_sees_the_client_of_the_header(served, name):
    server = proxied(served)
    greeting, echoed = talk(server.address, SAMPLES[name] + PAYLOAD)
    assert echoed == PAYLOAD
    header = parse_header(SAMPLES[name])[0]
    client_address, peer, seen = WhoIsIt.seen[-1]
    assert seen == header
    if header.source is None:  # LOCAL, UNKNOWN: the socket's own peer
        assert client_address[0] == "127.0.0.1" and greeting.startswith("127.0.0.1:")
    else:
        assert client_address == header.source and peer == format_address(header.source)
        assert greeting == f"{format_address(header.source)} v{header.version} PROXY"


def test_a_server_without_the_option_has_no_header(served):
    server = served.serve(WhoIsIt)
    with socket.create_connection(server.address, timeout=10) as sock:
        assert greeting_of(sock).endswith(" none")
    assert WhoIsIt.seen[-1][2] is None


def feed_at(running, server, data, cut, header_length):
    """Send ``data`` in two writes cut at ``cut``, waiting in between until
    the server has taken the first part (the header's bytes held, or the
    greeting and the echo once the header is whole)."""
    reception = server.proxy_reception
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(data[:cut])
        if cut < header_length:
            assert wait_on_loop(running, lambda: reception.buffered == cut), f"cut {cut}"
            sock.sendall(data[cut:])
            greeting = greeting_of(sock)
            echoed = recv_exactly(sock, len(PAYLOAD))
        else:
            greeting = greeting_of(sock)
            echoed = recv_exactly(sock, cut - header_length)
            sock.sendall(data[cut:])
            echoed += recv_exactly(sock, len(data) - cut)
    return greeting, echoed


@pytest.mark.parametrize("name", ["v1 TCP6", "v2 CRC32c"])
def test_every_split_point_over_a_real_socket(served, name):
    server = proxied(served)
    header = SAMPLES[name]
    data = header + PAYLOAD
    expected = format_address(parse_header(header)[0].source)
    for cut in range(1, len(data)):
        greeting, echoed = feed_at(served, server, data, cut, len(header))
        assert (greeting.split()[0], echoed) == (expected, PAYLOAD), cut


def test_an_untrusted_source_is_refused_before_any_handler(served, caplog):
    server = proxied(served, trusted=("10.0.0.0/8", "::1"))
    with caplog.at_level(logging.WARNING, logger="evloop"):
        with socket.create_connection(server.address, timeout=10) as sock:
            sock.sendall(v1() + PAYLOAD)
            try:
                assert sock.recv(100) == b""
            except ConnectionResetError:
                pass
    assert WhoIsIt.seen == []
    assert any("refused 127.0.0.1:" in r.getMessage() and "trusted" in r.getMessage() for r in caplog.records)
    assert server.refused == 1


def test_the_per_peer_cap_counts_the_clients_of_the_headers(served, caplog):
    server = proxied(served, limits=Limits(max_connections_per_peer=2))
    alice = v2("TCP4", ("203.0.113.5", 1000), ("10.0.0.1", 80))
    bob = v2("TCP4", ("203.0.113.6", 1000), ("10.0.0.1", 80))
    open_ = [socket.create_connection(server.address, timeout=10) for _ in range(3)]
    try:
        for sock in open_:  # three from one balancer address: fine
            sock.sendall(bob if sock is open_[0] else alice)
            greeting_of(sock)
        assert served.call(server.peer_connections, "203.0.113.5") == 2
        with caplog.at_level(logging.WARNING, logger="evloop"):
            with socket.create_connection(server.address, timeout=10) as third:
                third.sendall(alice)
                assert third.recv(100) == b""
        assert any("refused 203.0.113.5:1000" in r.getMessage() for r in caplog.records)
        assert server.proxy_reception.refusals == {"max-connections-per-peer": 1}
        open_.pop().close()
        assert wait_on_loop(served, lambda: server.peer_connections("203.0.113.5") == 1)
        with socket.create_connection(server.address, timeout=10) as again:
            again.sendall(alice)
            assert greeting_of(again) == "203.0.113.5:1000 v2 PROXY"
    finally:
        for sock in open_:
            sock.close()
    assert wait_on_loop(
        served, lambda: server.connections == 0 and server.peer_connections("203.0.113.5") == 0
    )


def test_unix_server_takes_headers_without_a_network_check(served, tmp_path):
    path = str(tmp_path / "proxied.sock")
    server = UnixServer(path, proxy_protocol=ProxyProtocol(trusted=["10.0.0.0/8"]))
    served.call(served.loop.add_server, server, WhoIsIt)
    greeting, echoed = talk(path, v1() + PAYLOAD, socket.AF_UNIX)
    assert (greeting, echoed) == ("192.0.2.1:56324 v1 PROXY", PAYLOAD)
    greeting, _ = talk(path, v2("UNIX_STREAM", "/run/front.sock", "/run/back.sock") + PAYLOAD, socket.AF_UNIX)
    assert greeting == "/run/front.sock v2 PROXY"
    greeting, _ = talk(path, v2("UNKNOWN", command="LOCAL") + PAYLOAD, socket.AF_UNIX)
    assert greeting.startswith("unix:") and greeting.endswith(" v2 LOCAL")


class TLSClient:
    """A TLS client on memory BIOs, so the test decides which bytes go out
    in which write: the PROXY header and the ClientHello in one."""

    def __init__(self, sock, context):
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")

    def hello(self):
        with pytest.raises(ssl.SSLWantReadError):
            self.tls.do_handshake()
        return self.outgoing.read()

    def finish_handshake(self):
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(self.outgoing.read())
                data = self.sock.recv(65536)
                assert data, "closed during the handshake"
                self.incoming.write(data)
        self.sock.sendall(self.outgoing.read())

    def send(self, data):
        self.tls.write(data)
        self.sock.sendall(self.outgoing.read())

    def recv_exactly(self, count):
        got = b""
        while len(got) < count:
            try:
                got += self.tls.read(count - len(got))
            except ssl.SSLWantReadError:
                data = self.sock.recv(65536)
                assert data, f"closed after {got!r}"
                self.incoming.write(data)
        return got


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    return make_tls_files(tmp_path_factory.mktemp("proxy-tls"))


@pytest.mark.parametrize("header", [v1(), v2(tlvs=tlv(1, b"h2"), crc=True)], ids=["v1", "v2"])
def test_tls_behind_the_header_with_the_hello_in_the_same_write(served, tls_files, header):
    from evloop.tls import make_server_context

    server = proxied(served, ssl=make_server_context(str(tls_files.server_cert), str(tls_files.server_key)))
    context = ssl.create_default_context(cafile=str(tls_files.ca))
    for cut in (0, 1, 5, None):  # how much of the ClientHello rides with the header
        with socket.create_connection(server.address, timeout=10) as sock:
            client = TLSClient(sock, context)
            hello = client.hello()
            first = hello if cut is None else hello[:cut]
            sock.sendall(header + first)
            if cut is not None:
                assert wait_on_loop(served, lambda: server.proxy_reception.headers_under_way == 0)
                sock.sendall(hello[cut:])
            client.finish_handshake()
            client.send(PAYLOAD)
            expected = b"192.0.2.1:56324 v%d PROXY\n" % (1 if header.startswith(b"P") else 2)
            assert client.recv_exactly(len(expected) + len(PAYLOAD)) == expected + PAYLOAD


def test_access_log_and_wsgi_name_the_client_of_the_header(served, caplog):
    pytest.importorskip("h11")
    import http.client

    from evloop.protocols.http import HTTPHandler
    from evloop.protocols.wsgi import wsgi_handler

    class Hello(HTTPHandler):
        routes = {"/": lambda request: "hello"}

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["REMOTE_ADDR"].encode()]

    for handler, check in ((Hello, b"hello"), (wsgi_handler(app, threads=1), b"203.0.113.77")):
        server = served.serve(handler, proxy_protocol=ProxyProtocol(trusted=["127.0.0.1"]))
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="evloop.access"):
            connection = http.client.HTTPConnection(*server.address, timeout=10)
            connection.connect()
            connection.sock.sendall(v1(source=("203.0.113.77", 5555)))
            connection.request("GET", "/")
            response = connection.getresponse()
            assert (response.status, response.read()) == (200, check)
            connection.close()
        if handler is Hello:  # the HTTP handler's access log (WSGI writes none)
            assert any(r.getMessage().startswith("203.0.113.77 - - [") for r in caplog.records)


# -- the command line ---------------------------------------------------------------


def test_the_command_line_option(tmp_path):
    from tests.test_cli import cli_server, run_cli

    with cli_server(
        "tests.test_proxy_protocol:WhoIsIt", "--port", "0", "--proxy-protocol", "127.0.0.0/8"
    ) as (
        _,
        host,
        port,
    ):
        assert talk((host, port), v2() + PAYLOAD) == ("192.0.2.1:56324 v2 PROXY", PAYLOAD)
    path = str(tmp_path / "cli.sock")
    with cli_server(
        "tests.test_proxy_protocol:WhoIsIt",
        "--unix",
        path,
        "--proxy-protocol",
        "any",
        listening="listening on",
    ):
        assert talk(path, v1() + PAYLOAD, socket.AF_UNIX)[0] == "192.0.2.1:56324 v1 PROXY"
    with cli_server(
        "tests.test_proxy_protocol:WhoIsIt", "--port", "0", "--workers", "2", "--proxy-protocol", "127.0.0.1"
    ) as (_, host, port):
        for _ in range(4):  # whichever worker takes it
            assert talk((host, port), v1() + PAYLOAD) == ("192.0.2.1:56324 v1 PROXY", PAYLOAD)
    with cli_server("tests.test_proxy_protocol:WhoIsIt", "--port", "0", "--proxy-protocol", "10.0.0.0/8") as (
        process,
        host,
        port,
    ):
        with socket.create_connection((host, port), timeout=10) as sock:  # untrusted: refused
            sock.sendall(v1())
            try:
                assert sock.recv(100) == b""
            except ConnectionResetError:
                pass
        for line in process.stderr:
            if "not a trusted source of PROXY protocol headers" in line:
                break
    result = run_cli("serve", "tests.test_proxy_protocol:WhoIsIt", "--proxy-protocol", "10.0.0.0/33")
    assert result.returncode == 2 and "--proxy-protocol: not a network" in result.stderr
    result = run_cli("serve", "tests.test_cli:Shout", "--udp", "--proxy-protocol", "any")
    assert result.returncode == 2 and "--proxy-protocol applies to stream servers" in result.stderr


def remote_addr(environ, start_response):
    """A WSGI application: answers with REMOTE_ADDR and REMOTE_PORT."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{environ['REMOTE_ADDR']} {environ.get('REMOTE_PORT')}".encode()]


def test_the_command_line_option_with_wsgi():
    pytest.importorskip("h11")
    import http.client

    from tests.test_cli import cli_server

    with cli_server(
        "--wsgi", "tests.test_proxy_protocol:remote_addr", "--port", "0", "--proxy-protocol", "127.0.0.1"
    ) as (_, host, port):
        connection = http.client.HTTPConnection(host, port, timeout=10)
        connection.connect()
        connection.sock.sendall(v2("TCP6", ("2001:db8::42", 6000), ("::1", 80)))
        connection.request("GET", "/")
        assert connection.getresponse().read() == b"2001:db8::42 6000"
        connection.close()


def test_the_command_line_option_with_tls(tls_files):
    from tests.test_cli import cli_server

    options = ["--tls-cert", str(tls_files.server_cert), "--tls-key", str(tls_files.server_key)]
    with cli_server(
        "tests.test_proxy_protocol:WhoIsIt", "--port", "0", "--proxy-protocol", "127.0.0.1", *options
    ) as (_, host, port):
        context = ssl.create_default_context(cafile=str(tls_files.ca))
        with socket.create_connection((host, port), timeout=10) as raw:
            raw.sendall(v1("TCP6", ("2001:db8::7", 9), ("2001:db8::8", 443)))
            with context.wrap_socket(raw, server_hostname="localhost") as sock:
                assert greeting_of(sock) == "[2001:db8::7]:9 v1 PROXY"


def test_many_clients_at_once_each_see_their_own_address(served):
    server = proxied(served)
    results = {}

    def client(index):
        header = v1(source=(f"198.18.0.{index}", 1000 + index))
        results[index] = talk(server.address, header + PAYLOAD)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(1, 21)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert results == {i: (f"198.18.0.{i}:{1000 + i} v1 PROXY", PAYLOAD) for i in range(1, 21)}


def test_a_graceful_stop_closes_connections_still_sending_their_header():
    running = RunningLoop().start()
    WhoIsIt.seen = []
    try:
        server = proxied(running)
        with socket.create_connection(server.address, timeout=10) as sock:
            sock.sendall(v2()[:10])
            assert wait_on_loop(running, lambda: server.proxy_reception.buffered == 10)
            running.loop.call_soon_threadsafe(lambda: running.loop.stop(graceful=True, timeout=5))
            running.thread.join(10)
            assert not running.thread.is_alive()
            sock.settimeout(10)
            try:
                assert sock.recv(10) == b""
            except ConnectionResetError:
                pass
        assert server.proxy_reception.headers_under_way == 0 and WhoIsIt.seen == []
    finally:
        running.thread = None
        running.loop.close()


def test_tls_on_a_unix_server_behind_the_header(served, tls_files, tmp_path):
    from evloop.tls import make_server_context

    path = str(tmp_path / "tls.sock")
    context = make_server_context(str(tls_files.server_cert), str(tls_files.server_key))
    server = UnixServer(path, ssl=context, proxy_protocol=ProxyProtocol(trusted="any"))
    served.call(served.loop.add_server, server, WhoIsIt)
    client_context = ssl.create_default_context(cafile=str(tls_files.ca))
    with socket.socket(socket.AF_UNIX) as raw:
        raw.settimeout(10)
        raw.connect(path)
        raw.sendall(v2("TCP6", ("2001:db8::9", 7), ("2001:db8::1", 443)))
        with client_context.wrap_socket(raw, server_hostname="localhost") as sock:
            assert greeting_of(sock) == "[2001:db8::9]:7 v2 PROXY"
            sock.sendall(PAYLOAD)
            assert recv_exactly(sock, len(PAYLOAD)) == PAYLOAD


def test_the_benchmark_runs(tmp_path):
    """benchmarks/proxy_bench.py in its smallest run (no speed asserted)."""
    import json
    import subprocess
    import sys

    from tests.examples import ROOT

    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "proxy_bench.py"), "--connections", "30", "--json"],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert set(figures) == {"none", "v1", "v2"}
    assert all(mode["connections_per_second"] > 0 for mode in figures.values())
    assert figures["v1"]["parse_us"] > 0 and figures["v2"]["parse_us"] > 0


def test_a_closed_connection_is_not_kept_alive_by_its_header_deadline(served):
    """The header's timer (Limits.handshake_timeout, 10 s) is cancelled once
    the header is read, or when the connection closes first: a timer left to
    fire would hold every short connection's handler for 10 s."""
    import gc
    import weakref

    refs = []

    class Tracked(WhoIsIt):
        def __init__(self, *args):
            super().__init__(*args)
            refs.append(weakref.ref(self))

    server = served.serve(Tracked, proxy_protocol=ProxyProtocol(trusted=["127.0.0.1"]))
    with socket.create_connection(server.address, timeout=10) as sock:  # a header read
        sock.sendall(v1() + PAYLOAD)
        greeting_of(sock)
    with socket.create_connection(server.address, timeout=10) as sock:  # one cut short
        sock.sendall(v2()[:5])
        assert wait_on_loop(served, lambda: server.proxy_reception.buffered == 5)
    assert wait_on_loop(served, lambda: server.connections == 0)
    assert len(refs) == 2

    def gone():
        gc.collect()
        return all(ref() is None for ref in refs)

    assert wait_on_loop(served, gone, timeout=3)  # well before the 10 s timers would fire
