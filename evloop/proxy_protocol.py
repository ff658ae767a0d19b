"""HAProxy's PROXY protocol, versions 1 and 2: who the client really is.

Theory of operation. A load balancer that relays TCP connections (HAProxy's
``send-proxy`` / ``send-proxy-v2``, nginx's ``proxy_protocol on``, cloud
load balancers) starts each one with a header naming the original client
and the address it connected to. The server reads that header before
anything else, before the TLS handshake on a TLS server, and then serves
the connection as if that client had connected directly. The specification
is HAProxy's ``doc/proxy-protocol.txt``; its sections are cited at the
code that implements them.

This module is the wire format and the setting, with no I/O:

- :class:`ProxyProtocol` is what a server accepts (frozen configuration):
  the trusted source networks, the versions, the largest header;
- :class:`ProxyHeaderParser` is fed bytes in any split and returns None
  (need more), the :class:`ProxyHeader`, or raises
  :class:`ProxyHeaderError` (a ``RemoteProtocolError``). A byte that no
  header can have at its place is refused as soon as it arrives, so a
  client that speaks without a header is refused on its first bytes, and
  the bytes held while waiting are bounded: 107 for version 1 (section
  2.1), the header's own length field for version 2, both capped by
  ``ProxyProtocol.max_header_size``.

The engine side, reading the header off a socket before the handler's
``setup()``, is :mod:`evloop.proxy_reception`.
"""

import dataclasses
import ipaddress
import re
import socket
from typing import Any, Dict, Iterable, Optional, Tuple, Union

from .proxy_header import (
    PP2_TYPE_CRC32C,
    PP2_TYPE_SSL,
    PP2_TYPE_UNIQUE_ID,
    Address,
    ProxyHeader,
    ProxyHeaderError,
)

__all__ = [
    "DEFAULT_MAX_HEADER_SIZE",
    "V1_MAX_LENGTH",
    "V2_SIGNATURE",
    "ProxyHeader",
    "ProxyHeaderError",
    "ProxyHeaderParser",
    "ProxyProtocol",
    "crc32c",
    "parse_header",
]

#: Section 2.1: the longest version 1 line, CRLF included.
V1_MAX_LENGTH = 107
#: Section 2.2: the 12 bytes every version 2 header starts with.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: The largest header a server takes by default: a version 2 header with
#: TLVs (a client certificate among them) fits; the format allows 65551.
DEFAULT_MAX_HEADER_SIZE = 16 * 1024

_V1_PREFIX = b"PROXY "
_V2_FIXED = 16  # signature, version and command, family, length
# Section 2.2: the family and transport bytes a sender may use, and the
# size of their address block.
_V2_FAMILIES = {
    0x00: ("UNKNOWN", 0),
    0x11: ("TCP4", 12),
    0x12: ("UDP4", 12),
    0x21: ("TCP6", 36),
    0x22: ("UDP6", 36),
    0x31: ("UNIX_STREAM", 216),
    0x32: ("UNIX_DGRAM", 216),
}
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"  # no leading zero (section 2.1)
_IPV4 = re.compile(rf"(?:{_OCTET}\.){{3}}{_OCTET}")
_IPV6 = re.compile(r"[0-9A-Fa-f:.]{2,45}")
_PORT = re.compile(r"0|[1-9][0-9]{0,4}")


def _crc32c_table() -> Tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: Union[bytes, bytearray]) -> int:
    """The CRC32c (Castagnoli) of ``data``, as RFC 4960 appendix B
    computes it: the checksum of section 2.2.3."""
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


_Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


@dataclasses.dataclass(frozen=True, init=False)
class ProxyProtocol:
    """A server's PROXY protocol setting: ``Server(..., proxy_protocol=
    ProxyProtocol(trusted=["10.0.0.0/8", "127.0.0.1"]))``.

    ``trusted``: the networks (CIDR, or single addresses) the load
    balancers connect from; a TCP client from anywhere else is refused at
    accept, since whoever may send the header may claim any address.
    ``"any"`` trusts every source: only for a port a firewall already
    keeps to the load balancers. On a Unix-domain server the peer is a
    local process and has no network address: ``trusted`` is not
    consulted, and who may connect (so who may send the header) is decided
    by the socket file's permissions (``UnixServer(mode=...)``).

    ``versions``: the header versions accepted, (1, 2) by default.
    ``max_header_size``: the largest header taken, in bytes (a version 1
    line is at most 107 in any case).

    Every connection of such a server must begin with a header (section 2:
    a receiver never guesses); one that does not is refused.
    """

    trusted: Tuple[_Network, ...]
    trust_any: bool
    versions: Tuple[int, ...]
    max_header_size: int

    def __init__(
        self,
        trusted: Union[str, Iterable[Any]],
        versions: Iterable[int] = (1, 2),
        max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
    ) -> None:
        items = [trusted] if isinstance(trusted, str) else list(trusted)
        trust_any = any(isinstance(item, str) and item.strip().lower() == "any" for item in items)
        networks = []
        for item in items:
            if isinstance(item, str) and item.strip().lower() == "any":
                continue
            try:
                network = item.strip() if isinstance(item, str) else item
                networks.append(ipaddress.ip_network(network, strict=False))
            except ValueError as exc:
                raise ValueError(f"not a network or address to trust: {item!r} ({exc})") from None
        if not networks and not trust_any:
            raise ValueError('trusted lists no network; give the load balancers\' networks, or "any"')
        chosen = tuple(sorted(set(versions)))
        if not chosen or not set(chosen) <= {1, 2}:
            raise ValueError(f"versions must be 1, 2 or both, not {tuple(versions)!r}")
        if not isinstance(max_header_size, int) or not _V2_FIXED <= max_header_size <= _V2_FIXED + 0xFFFF:
            raise ValueError(f"max_header_size must be from 16 to 65551 bytes, not {max_header_size!r}")
        object.__setattr__(self, "trusted", tuple(networks))
        object.__setattr__(self, "trust_any", trust_any)
        object.__setattr__(self, "versions", chosen)
        object.__setattr__(self, "max_header_size", max_header_size)

    def trusts(self, host: Any) -> bool:
        """Whether a TCP client at ``host`` (an IP address, as ``accept()``
        names it) may send a header. An IPv4 client seen through a
        dual-stack socket (``::ffff:10.0.0.1``) matches IPv4 networks."""
        if self.trust_any:
            return True
        try:
            address = ipaddress.ip_address(str(host).partition("%")[0])
        except ValueError:
            return False
        mapped = getattr(address, "ipv4_mapped", None)
        return any(address in net or (mapped is not None and mapped in net) for net in self.trusted)

    def parser(self) -> "ProxyHeaderParser":
        """A fresh parser for one connection's header."""
        return ProxyHeaderParser(self.versions, self.max_header_size)


class ProxyHeaderParser:
    """Reads one header from bytes fed in any split.

    :meth:`feed` returns None while the header is not complete, then the
    :class:`ProxyHeader`; :attr:`rest` is what followed the header in the
    bytes fed. A bad header raises :class:`ProxyHeaderError`, and every
    later feed raises the same error.
    """

    __slots__ = ("versions", "max_size", "_buffer", "header", "rest", "error")

    def __init__(self, versions: Iterable[int] = (1, 2), max_size: int = DEFAULT_MAX_HEADER_SIZE) -> None:
        self.versions = tuple(versions)
        self.max_size = max_size
        self._buffer = bytearray()
        self.header: Optional[ProxyHeader] = None
        self.rest = b""
        self.error: Optional[ProxyHeaderError] = None

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete header held now."""
        return len(self._buffer)

    def feed(self, data: bytes) -> Optional[ProxyHeader]:
        """Take ``data``; return the header once it is complete (None until
        then). Raises ProxyHeaderError; RuntimeError once a header was read."""
        if self.error is not None:
            raise self.error
        if self.header is not None:
            raise RuntimeError("this parser has read its header already")
        buffer = self._buffer
        buffer += data
        try:
            parsed = parse_header(buffer, self.versions, self.max_size)
        except ProxyHeaderError as exc:
            self.error = exc
            self._buffer = bytearray()
            raise
        if parsed is None:
            return None
        self.header, used = parsed
        self.rest = bytes(buffer[used:])
        self._buffer = bytearray()
        return self.header


def parse_header(
    data: Union[bytes, bytearray], versions: Iterable[int] = (1, 2), max_size: int = DEFAULT_MAX_HEADER_SIZE
) -> Optional[Tuple[ProxyHeader, int]]:
    """Parse the header at the start of ``data``: (header, bytes it used),
    or None when ``data`` is the beginning of a header and more is needed.
    Raises ProxyHeaderError as soon as ``data`` cannot begin a header."""
    if not data:
        return None
    if data[0] == 0x50 and 1 in versions:  # "P", section 2.1
        return _parse_v1(data, min(V1_MAX_LENGTH, max_size))
    if data[0] == 0x0D and 2 in versions:  # CR, section 2.2
        return _parse_v2(data, max_size)
    names = " or ".join(f"version {v}" for v in versions)
    raise ProxyHeaderError(f"no PROXY protocol header ({names}): the connection began {bytes(data[:32])!r}")


def _parse_v1(data: Union[bytes, bytearray], limit: int) -> Optional[Tuple[ProxyHeader, int]]:
    """Section 2.1: ``PROXY TCP4|TCP6|UNKNOWN src dst sport dport\\r\\n``,
    at most ``limit`` (107) bytes."""
    head = bytes(data[:limit])
    if not head.startswith(_V1_PREFIX[: len(head)]):
        raise ProxyHeaderError(f"not a PROXY protocol version 1 header: {head[:16]!r}")
    ends = [i for i in (head.find(b"\r"), head.find(b"\n")) if i >= 0]
    if not ends:
        if len(head) >= limit:
            raise ProxyHeaderError(f"version 1 header without CRLF in its first {limit} bytes")
        return None
    end = min(ends)
    if head[end] == 0x0A or (end + 1 < len(head) and head[end + 1] != 0x0A):
        raise ProxyHeaderError(f"version 1 header with a lone CR or LF: {head[: end + 2]!r}")
    if end + 1 == len(head):
        if len(head) >= limit:
            raise ProxyHeaderError(f"version 1 header longer than {limit} bytes")
        return None  # the LF may come next
    line = head[:end]
    fields = line[len(_V1_PREFIX) :].split(b" ")
    if fields[0] == b"UNKNOWN":
        # The rest of the line is ignored (section 2.1).
        return ProxyHeader(1, "PROXY", "UNKNOWN"), end + 2
    if fields[0] not in (b"TCP4", b"TCP6") or len(fields) != 5:
        raise ProxyHeaderError(f"not a valid version 1 header: {line!r}")
    try:
        texts = [field.decode("ascii") for field in fields[1:]]
    except UnicodeDecodeError:
        raise ProxyHeaderError(f"not a valid version 1 header: {line!r}") from None
    family = fields[0].decode()
    hosts = [_v1_host(family, text, line) for text in texts[:2]]
    ports = [_v1_port(text, line) for text in texts[2:]]
    return ProxyHeader(1, "PROXY", family, (hosts[0], ports[0]), (hosts[1], ports[1])), end + 2


def _v1_host(family: str, text: str, line: bytes) -> str:
    if family == "TCP4":
        if _IPV4.fullmatch(text):
            return text
    elif _IPV6.fullmatch(text):
        try:
            return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, text))
        except (OSError, ValueError):
            pass
    raise ProxyHeaderError(f"version 1 header with a bad {family} address {text!r}: {line!r}")


def _v1_port(text: str, line: bytes) -> int:
    if not _PORT.fullmatch(text) or int(text) > 65535:
        raise ProxyHeaderError(f"version 1 header with a bad port {text!r}: {line!r}")
    return int(text)


def _parse_v2(data: Union[bytes, bytearray], max_size: int) -> Optional[Tuple[ProxyHeader, int]]:
    """Section 2.2: the signature, version and command, family, length,
    then the addresses and the TLVs."""
    have = len(data)
    if bytes(data[:12]) != V2_SIGNATURE[: min(have, 12)]:
        raise ProxyHeaderError(f"not a PROXY protocol version 2 header: {bytes(data[:16])!r}")
    if have > 12 and data[12] not in (0x20, 0x21):
        # High nibble: the version, 2; low: LOCAL (0) or PROXY (1).
        raise ProxyHeaderError(f"version 2 header with version/command byte {data[12]:#04x}")
    if have > 13 and data[13] not in _V2_FAMILIES:
        raise ProxyHeaderError(f"version 2 header with an unknown family/transport byte {data[13]:#04x}")
    if have < _V2_FIXED:
        return None
    total = _V2_FIXED + (data[14] << 8 | data[15])
    if total > max_size:
        raise ProxyHeaderError(f"version 2 header of {total} bytes, over the limit of {max_size}")
    if have < total:
        return None
    block = bytes(data[:total])
    family, address_size = _V2_FAMILIES[block[13]]
    if total - _V2_FIXED < address_size:
        size = total - _V2_FIXED
        raise ProxyHeaderError(f"version 2 {family} header with an address block of {size} bytes")
    tlvs, crc_at = _tlvs(block, _V2_FIXED + address_size, total)
    if crc_at is not None:
        _check_crc(block, crc_at)
    ssl_client = ssl_verify = None
    ssl_tlvs: Dict[int, bytes] = {}
    ssl = tlvs.get(PP2_TYPE_SSL)
    if ssl is not None:
        if len(ssl) < 5:
            raise ProxyHeaderError(f"version 2 SSL TLV of {len(ssl)} bytes, under the 5 of its fixed part")
        ssl_client, ssl_verify = ssl[0], int.from_bytes(ssl[1:5], "big")
        ssl_tlvs, _ = _tlvs(ssl, 5, len(ssl), nested=True)
    unique_id = tlvs.get(PP2_TYPE_UNIQUE_ID)
    if unique_id is not None and len(unique_id) > 128:
        raise ProxyHeaderError(f"version 2 unique id of {len(unique_id)} bytes, over the 128 allowed")
    if block[12] == 0x20:  # LOCAL: the proxy's own connection; addresses ignored
        return ProxyHeader(2, "LOCAL", family, None, None, tlvs, ssl_client, ssl_verify, ssl_tlvs), total
    source, destination = _v2_addresses(family, block)
    header = ProxyHeader(2, "PROXY", family, source, destination, tlvs, ssl_client, ssl_verify, ssl_tlvs)
    return header, total


def _v2_addresses(family: str, block: bytes) -> Tuple[Optional[Address], Optional[Address]]:
    if family in ("TCP4", "UDP4", "TCP6", "UDP6"):
        size, af = (4, socket.AF_INET) if family[-1] == "4" else (16, socket.AF_INET6)
        hosts = [socket.inet_ntop(af, block[16 + i * size : 16 + (i + 1) * size]) for i in range(2)]
        ports = 16 + 2 * size
        return (
            (hosts[0], int.from_bytes(block[ports : ports + 2], "big")),
            (hosts[1], int.from_bytes(block[ports + 2 : ports + 4], "big")),
        )
    if family.startswith("UNIX"):
        return _unix_path(block[16:124]), _unix_path(block[124:232])
    return None, None  # UNKNOWN: the receiver ignores any address (section 2.2)


def _unix_path(raw: bytes) -> str:
    """A 108-byte ``sun_path``: up to the first NUL, or, for an abstract
    name (a leading NUL), the NUL and the name without its padding."""
    if raw[:1] == b"\0":
        return "\0" + raw[1:].rstrip(b"\0").decode("utf-8", "surrogateescape")
    return raw.partition(b"\0")[0].decode("utf-8", "surrogateescape")


def _tlvs(data: bytes, start: int, end: int, nested: bool = False) -> Tuple[Dict[int, bytes], Optional[int]]:
    """The TLVs in ``data[start:end]`` (section 2.2: type, 2-byte length,
    value), which must end exactly at ``end``; and where a CRC32c value
    sits, if there is one."""
    tlvs: Dict[int, bytes] = {}
    crc_at = None
    where = "SSL sub-TLV" if nested else "TLV"
    while start < end:
        if start + 3 > end:
            raise ProxyHeaderError(f"version 2 header with a {where} cut off after {end - start} bytes")
        kind, size = data[start], data[start + 1] << 8 | data[start + 2]
        start += 3
        if start + size > end:
            raise ProxyHeaderError(f"version 2 {where} {kind:#04x} of {size} bytes runs past the end")
        if kind == PP2_TYPE_CRC32C and not nested:
            if size != 4:
                raise ProxyHeaderError(f"version 2 CRC32c TLV of {size} bytes, not 4")
            if crc_at is None:
                crc_at = start
        tlvs.setdefault(kind, data[start : start + size])
        start += size
    return tlvs, crc_at


def _check_crc(block: bytes, at: int) -> None:
    """Section 2.2.3: the CRC32c of the header with the checksum zeroed."""
    sent = int.from_bytes(block[at : at + 4], "big")
    computed = crc32c(block[:at] + b"\0\0\0\0" + block[at + 4 :])
    if sent != computed:
        raise ProxyHeaderError(f"version 2 header's CRC32c is {sent:#010x}, its bytes give {computed:#010x}")
