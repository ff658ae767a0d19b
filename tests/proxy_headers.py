"""PROXY protocol headers built by hand, byte by byte from HAProxy's
doc/proxy-protocol.txt, for the tests and the fuzzer's seeds: a sender of
our own, independent of the parser under test."""

import socket
import struct

from evloop.proxy_protocol import V2_SIGNATURE, crc32c

__all__ = ["ssl_tlv", "tlv", "v1", "v2"]

FAMILY = {
    "UNKNOWN": 0x00,
    "TCP4": 0x11,
    "UDP4": 0x12,
    "TCP6": 0x21,
    "UDP6": 0x22,
    "UNIX_STREAM": 0x31,
    "UNIX_DGRAM": 0x32,
}


def v1(family="TCP4", source=("192.0.2.1", 56324), destination=("198.51.100.7", 443)):
    """A version 1 line (section 2.1)."""
    if family == "UNKNOWN":
        return b"PROXY UNKNOWN\r\n"
    return b"PROXY %s %s %s %d %d\r\n" % (
        family.encode(),
        source[0].encode(),
        destination[0].encode(),
        source[1],
        destination[1],
    )


def tlv(kind, value):
    return struct.pack("!BH", kind, len(value)) + value


def ssl_tlv(client=0x01, verify=0, **subs):
    """The SSL TLV (section 2.2.6); ``subs``: version, cn, cipher, sig_alg,
    key_alg, group, sig_scheme, client_cert -> bytes."""
    codes = dict(
        version=0x21,
        cn=0x22,
        cipher=0x23,
        sig_alg=0x24,
        key_alg=0x25,
        group=0x26,
        sig_scheme=0x27,
        client_cert=0x28,
    )
    body = struct.pack("!BI", client, verify) + b"".join(
        tlv(codes[name], value) for name, value in subs.items()
    )
    return tlv(0x20, body)


def _addresses(family, source, destination):
    if family in ("TCP4", "UDP4"):
        return (
            socket.inet_aton(source[0])
            + socket.inet_aton(destination[0])
            + struct.pack("!HH", source[1], destination[1])
        )
    if family in ("TCP6", "UDP6"):
        pton = lambda host: socket.inet_pton(socket.AF_INET6, host)  # noqa: E731
        return pton(source[0]) + pton(destination[0]) + struct.pack("!HH", source[1], destination[1])
    if family.startswith("UNIX"):
        return source.encode().ljust(108, b"\0") + destination.encode().ljust(108, b"\0")
    return b""


def v2(
    family="TCP4",
    source=("192.0.2.1", 56324),
    destination=("198.51.100.7", 443),
    *,
    command="PROXY",
    tlvs=b"",
    crc=False,
    addresses=None,
):
    """A version 2 header (section 2.2); ``crc`` appends a CRC32c TLV with
    the right checksum (section 2.2.3); ``addresses`` overrides the block."""
    block = _addresses(family, source, destination) if addresses is None else addresses
    body = block + tlvs + (tlv(0x03, b"\0\0\0\0") if crc else b"")
    header = (
        V2_SIGNATURE
        + bytes([0x21 if command == "PROXY" else 0x20, FAMILY[family]])
        + struct.pack("!H", len(body))
        + body
    )
    if crc:
        header = header[:-4] + struct.pack("!I", crc32c(header))
    return header
