"""permessage-deflate (RFC 7692) for the WebSocket glue, with a bounded inflater.

Theory of operation. :func:`negotiate` reads the client's
``Sec-WebSocket-Extensions`` offers (RFC 7692 section 5), takes the first
permessage-deflate offer whose parameters are valid (section 7.1) and returns
the response value and a :class:`BoundedDeflate`, a wsproto ``Extension``
that wsproto's frame parser calls for every data frame.

Inflating is where a peer can make us work: deflate packs up to about
1,000 times, so 1 MB on the wire can stand for 1 GiB. wsproto's own
``PerMessageDeflate`` inflates each received chunk whole, so the message
size limit is checked only after the memory is taken.
Here every call to ``decompress`` passes ``max_length``: the bytes the
message may still grow by, plus one. Getting that one byte more means the
message is over ``max_size``, and the frame is refused with 1009 (RFC 6455
section 7.4.1) having inflated at most ``max_size + 1`` bytes.

Sending: a message of ``min_size`` bytes or more is compressed (RSV1 set,
section 7.2.1); a smaller one goes out plain, which section 6 allows per
message (so a broadcast may send one plain frame to every socket). The
deflater uses a 4 KiB window (12 bits) and memLevel 5, as the ``websockets``
library does: 38 KiB per connection instead of zlib's default 262 KiB, for
a little less compression. A smaller window than negotiated is always
allowed: the client's inflater reads it with its larger one.
"""

import zlib
from typing import Dict, List, Optional, Tuple, Union

from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits

__all__ = ["BoundedDeflate", "negotiate", "parse_offers"]

NAME = "permessage-deflate"

# The deflater's settings (see the header): at most a 12-bit window, memLevel 5.
SEND_WINDOW_BITS = 12
SEND_MEM_LEVEL = 5

# Section 7.2.1: a message ends with an empty stored block, whose last four
# bytes (00 00 ff ff) the sender drops and the receiver puts back.
_TAIL = b"\x00\x00\xff\xff"

Offer = Dict[str, Optional[str]]


def parse_offers(values: List[str]) -> List[Tuple[str, Offer]]:
    """The extension offers in ``Sec-WebSocket-Extensions`` header values
    (RFC 6455 section 9.1 grammar; quoted values unquoted), in order:
    ``[(name, {param: value or None})]``. A repeated or empty parameter
    name adds the key ``""``, which makes :func:`negotiate` decline the
    offer (section 7.1)."""
    offers: List[Tuple[str, Offer]] = []
    for value in values:
        for item in value.split(","):
            parts = [part.strip() for part in item.split(";")]
            if not parts[0]:
                continue
            params: Offer = {}
            for part in parts[1:]:
                key, eq, raw = part.partition("=")
                key = key.strip().lower()
                if key in params or not key:
                    params[""] = None  # section 7.1: a repeated parameter voids the offer
                params[key] = raw.strip().strip('"') if eq else None
            offers.append((parts[0].lower(), params))
    return offers


def _window_bits(value: Optional[str]) -> Optional[int]:
    """A ``*_max_window_bits`` value: 8 to 15, digits only (section 7.1.2)."""
    if value is None or not value.isdigit() or len(value) > 2:
        return None
    bits = int(value)
    return bits if 8 <= bits <= 15 else None


def negotiate(values: List[str], max_size: int, min_size: int = 64) -> Optional[Tuple[str, "BoundedDeflate"]]:
    """Accept the first valid permessage-deflate offer among ``values``:
    returns the ``Sec-WebSocket-Extensions`` response value and the
    extension, or None (no offer, or none acceptable: section 5 lets the
    server decline, and the connection then runs uncompressed)."""
    for name, params in parse_offers(values):
        if name != NAME or "" in params:
            continue
        response = [NAME]
        server_bits: Optional[int] = 15
        valid = True
        for key, value in params.items():
            if key in ("server_no_context_takeover", "client_no_context_takeover"):
                # Section 7.1.1: no value allowed; both are echoed (7.1.1.1
                # binds us to the first; echoing the second is allowed).
                valid = valid and value is None
                response.append(key)
            elif key == "server_max_window_bits":
                # Section 7.1.2.1: we must compress with at most this window.
                bits = _window_bits(value)
                valid = valid and bits is not None
                response.append(f"{key}={bits}")
                server_bits = bits
            elif key == "client_max_window_bits":
                # Section 7.1.2.2: a hint we may ignore; inflating with a
                # 15-bit window reads a stream made with any smaller one.
                valid = valid and (value is None or _window_bits(value) is not None)
            else:
                valid = False  # section 7.1: an unknown parameter declines the offer
        if not valid:
            continue
        extension = BoundedDeflate(
            max_size,
            min_size=min_size,
            server_bits=server_bits,
            server_no_context_takeover="server_no_context_takeover" in params,
            client_no_context_takeover="client_no_context_takeover" in params,
        )
        return "; ".join(response), extension
    return None


class BoundedDeflate(Extension):
    """The server's side of permessage-deflate, negotiated already. No
    message inflates past ``max_size`` bytes: the frame that would is
    refused with 1009 before the bytes exist."""

    name = NAME

    def __init__(
        self,
        max_size: int,
        *,
        min_size: int = 64,
        server_bits: Optional[int] = 15,
        server_no_context_takeover: bool = False,
        client_no_context_takeover: bool = False,
    ) -> None:
        self.max_size = max_size
        self.min_size = min_size
        # zlib cannot make a raw stream with an 8-bit window (it uses 9), so
        # a peer that asks for 8 gets every message uncompressed: allowed.
        self.server_bits = server_bits if server_bits is not None and server_bits >= 9 else None
        self.server_no_context_takeover = server_no_context_takeover
        self.client_no_context_takeover = client_no_context_takeover
        self._inflater: Optional[zlib._Decompress] = None
        self._deflater: Optional[zlib._Compress] = None
        self._compressed = False  # the message being received is
        self._frame_is_data = False
        self._inflated = 0  # bytes this message has inflated to so far

    def enabled(self) -> bool:
        return True

    def offer(self) -> Union[bool, str]:
        return NAME  # the client side's; a server never offers

    # -- receiving ---------------------------------------------------------------

    def frame_inbound_header(
        self, proto: Union[FrameDecoder, FrameProtocol], opcode: Opcode, rsv: RsvBits, payload_length: int
    ) -> Union[CloseReason, RsvBits]:
        # wsproto calls this again for the same frame when its mask key had
        # not arrived yet: what it sets must not change on a second call.
        if opcode.iscontrol():
            # Section 6.1: control frames are never compressed; RSV1 there is
            # a protocol error.
            self._frame_is_data = False
            return CloseReason.PROTOCOL_ERROR if rsv.rsv1 else RsvBits(False, False, False)
        self._frame_is_data = True
        if opcode is Opcode.CONTINUATION:
            # Section 6.1: only a message's first frame carries RSV1.
            if rsv.rsv1:
                return CloseReason.PROTOCOL_ERROR
        else:
            self._compressed = rsv.rsv1
            self._inflated = 0
        return RsvBits(True, False, False)

    def frame_inbound_payload_data(
        self, proto: Union[FrameDecoder, FrameProtocol], data: bytes
    ) -> Union[bytes, CloseReason]:
        if not (self._frame_is_data and self._compressed):
            return data
        return self._inflate(data)

    def frame_inbound_complete(
        self, proto: Union[FrameDecoder, FrameProtocol], fin: bool
    ) -> Union[bytes, CloseReason, None]:
        if not (self._frame_is_data and self._compressed and fin):
            return None
        # Section 7.2.2: put back the tail the sender removed, then inflate.
        result = self._inflate(_TAIL)
        self._compressed = False
        inflater = self._inflater
        if inflater is not None and (self.client_no_context_takeover or inflater.eof):
            # The peer starts each message afresh (or ended its stream with
            # BFINAL): the 32 KiB window need not be kept between messages.
            self._inflater = None
        return result

    def _inflate(self, data: bytes) -> Union[bytes, CloseReason]:
        inflater = self._inflater
        if inflater is None:
            inflater = self._inflater = zlib.decompressobj(-15)
        if inflater.eof:
            # Section 7.2.3.4: a block with BFINAL set ends the stream; only
            # the tail we append may follow it.
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA if data != _TAIL else b""
        room = self.max_size - self._inflated
        try:
            # One byte more than the room: getting it proves the message too
            # big, having made at most max_size + 1 bytes.
            out = inflater.decompress(data, room + 1)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._inflated += len(out)
        if self._inflated > self.max_size:
            self._inflater = None
            return CloseReason.MESSAGE_TOO_BIG
        return out

    # -- sending -----------------------------------------------------------------

    def frame_outbound(
        self, proto: Union[FrameDecoder, FrameProtocol], opcode: Opcode, rsv: RsvBits, data: bytes, fin: bool
    ) -> Tuple[RsvBits, bytes]:
        # Only whole messages in one frame are compressed (the glue sends no
        # other kind); the rest go out plain, section 6.
        if opcode.iscontrol() or opcode is Opcode.CONTINUATION or not fin:
            return rsv, data
        if self.server_bits is None or len(data) < self.min_size:
            return rsv, data
        deflater = self._deflater
        if deflater is None:
            bits = min(self.server_bits, SEND_WINDOW_BITS)
            deflater = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -bits, SEND_MEM_LEVEL)
        # Section 7.2.1: compress, sync-flush, drop the 00 00 ff ff tail.
        payload = deflater.compress(data) + deflater.flush(zlib.Z_SYNC_FLUSH)
        self._deflater = None if self.server_no_context_takeover else deflater
        return RsvBits(True, rsv.rsv2, rsv.rsv3), payload[:-4]

    def __repr__(self) -> str:
        return f"<BoundedDeflate max_size={self.max_size} server_bits={self.server_bits}>"
