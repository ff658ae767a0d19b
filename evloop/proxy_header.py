"""The PROXY protocol header, parsed: what the load balancer says of the client.

:class:`ProxyHeader` is what :mod:`evloop.proxy_protocol`'s parser returns
and a handler reads as ``self.proxy_header``: the command, the addresses and
the version 2 TLVs (HAProxy's ``doc/proxy-protocol.txt`` section 2.2), the
registered ones decoded. :class:`ProxyHeaderError` is a bad header.
"""

import dataclasses
from typing import Mapping, Optional, Tuple, Union

from .errors import RemoteProtocolError

__all__ = [
    "PP2_CLIENT_CERT_CONN",
    "PP2_CLIENT_CERT_SESS",
    "PP2_CLIENT_SSL",
    "PP2_TYPE_ALPN",
    "PP2_TYPE_AUTHORITY",
    "PP2_TYPE_CRC32C",
    "PP2_TYPE_NETNS",
    "PP2_TYPE_NOOP",
    "PP2_TYPE_SSL",
    "PP2_TYPE_UNIQUE_ID",
    "Address",
    "ProxyHeader",
    "ProxyHeaderError",
]

#: An address a header names: (host, port), or a Unix path.
Address = Union[Tuple[str, int], str]

# Section 2.2: the registered TLV types and the SSL sub-types.
PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY, PP2_TYPE_CRC32C, PP2_TYPE_NOOP, PP2_TYPE_UNIQUE_ID = 1, 2, 3, 4, 5
PP2_TYPE_SSL, PP2_TYPE_NETNS = 0x20, 0x30
SSL_VERSION, SSL_CN, SSL_CIPHER, SSL_SIG_ALG, SSL_KEY_ALG = 0x21, 0x22, 0x23, 0x24, 0x25
SSL_GROUP, SSL_SIG_SCHEME, SSL_CLIENT_CERT = 0x26, 0x27, 0x28
PP2_CLIENT_SSL, PP2_CLIENT_CERT_CONN, PP2_CLIENT_CERT_SESS = 1, 2, 4


class ProxyHeaderError(RemoteProtocolError):
    """The bytes are not a valid PROXY protocol header."""


def _text(value: Optional[bytes]) -> Optional[str]:
    return None if value is None else value.decode("utf-8", "replace")


@dataclasses.dataclass(frozen=True)
class ProxyHeader:
    """One parsed PROXY protocol header.

    - ``version``: 1 or 2; ``command``: ``"PROXY"`` (relayed for a client)
      or ``"LOCAL"`` (the proxy's own connection, a health check: version
      2 only).
    - ``family``: ``"TCP4"``, ``"TCP6"``, ``"UDP4"``, ``"UDP6"``,
      ``"UNIX_STREAM"``, ``"UNIX_DGRAM"`` or ``"UNKNOWN"``.
    - ``source`` / ``destination``: ``(host, port)`` for the IP families, a
      path (str) for the Unix ones, None for LOCAL and UNKNOWN (then the
      socket's own addresses stand).
    - ``tlvs``: every TLV of a version 2 header, type -> value (the first
      of a type, if one repeats); ``ssl_client``, ``ssl_verify`` and
      ``ssl_tlvs`` are the SSL TLV's fields and sub-TLVs (section 2.2.6).

    The properties decode the registered TLVs; each is None when absent.
    """

    version: int
    command: str
    family: str
    source: Optional[Address] = None
    destination: Optional[Address] = None
    tlvs: Mapping[int, bytes] = dataclasses.field(default_factory=dict, hash=False)
    ssl_client: Optional[int] = None
    ssl_verify: Optional[int] = None
    ssl_tlvs: Mapping[int, bytes] = dataclasses.field(default_factory=dict, hash=False)

    @property
    def is_local(self) -> bool:
        """Whether the header names no client (LOCAL, or an UNKNOWN family):
        the connection's real addresses stand."""
        return self.source is None

    @property
    def alpn(self) -> Optional[bytes]:
        """The ALPN protocol the client negotiated with the proxy (2.2.1)."""
        return self.tlvs.get(PP2_TYPE_ALPN)

    @property
    def authority(self) -> Optional[str]:
        """The host name the client asked for, its TLS SNI (2.2.2)."""
        return _text(self.tlvs.get(PP2_TYPE_AUTHORITY))

    @property
    def unique_id(self) -> Optional[bytes]:
        """The proxy's opaque id of this connection, up to 128 bytes (2.2.5)."""
        return self.tlvs.get(PP2_TYPE_UNIQUE_ID)

    @property
    def netns(self) -> Optional[str]:
        """The network namespace the proxy accepted the client in (2.2.7)."""
        return _text(self.tlvs.get(PP2_TYPE_NETNS))

    @property
    def ssl(self) -> bool:
        """Whether the client spoke TLS to the proxy (PP2_CLIENT_SSL)."""
        return bool(self.ssl_client and self.ssl_client & PP2_CLIENT_SSL)

    @property
    def ssl_client_cert_presented(self) -> bool:
        """Whether the client presented a certificate, on this connection or
        earlier in its TLS session (PP2_CLIENT_CERT_CONN / _SESS)."""
        return bool(self.ssl_client and self.ssl_client & (PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS))

    @property
    def ssl_verified(self) -> bool:
        """Whether the client presented a certificate and the proxy verified it."""
        return self.ssl_client_cert_presented and self.ssl_verify == 0

    @property
    def ssl_version(self) -> Optional[str]:
        """The TLS version, e.g. ``"TLSv1.3"``."""
        return _text(self.ssl_tlvs.get(SSL_VERSION))

    @property
    def ssl_cn(self) -> Optional[str]:
        """The Common Name of the client certificate's subject."""
        return _text(self.ssl_tlvs.get(SSL_CN))

    @property
    def ssl_cipher(self) -> Optional[str]:
        """The cipher, e.g. ``"ECDHE-RSA-AES128-GCM-SHA256"``."""
        return _text(self.ssl_tlvs.get(SSL_CIPHER))

    @property
    def ssl_sig_alg(self) -> Optional[str]:
        """The algorithm that signed the proxy's certificate, e.g. ``"RSA-SHA256"``."""
        return _text(self.ssl_tlvs.get(SSL_SIG_ALG))

    @property
    def ssl_key_alg(self) -> Optional[str]:
        """The algorithm of the proxy certificate's key, e.g. ``"RSA2048"``."""
        return _text(self.ssl_tlvs.get(SSL_KEY_ALG))

    @property
    def ssl_group(self) -> Optional[str]:
        """The key exchange group, e.g. ``"secp256r1"``."""
        return _text(self.ssl_tlvs.get(SSL_GROUP))

    @property
    def ssl_sig_scheme(self) -> Optional[str]:
        """The signature scheme of the handshake, e.g. ``"rsa_pss_rsae_sha256"``."""
        return _text(self.ssl_tlvs.get(SSL_SIG_SCHEME))

    @property
    def ssl_client_cert(self) -> Optional[bytes]:
        """The client certificate, DER, if the proxy passes it on."""
        return self.ssl_tlvs.get(SSL_CLIENT_CERT)
