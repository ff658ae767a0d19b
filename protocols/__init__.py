"""Framers and ready-made handlers for evloop."""

from .framing import NEED_DATA, FramedHandler, Framer, StringReceiverHandler
from .int32 import Int32Echo, Int32Framer, Int32Handler
from .jsonclient import JsonClient
from .jsonmsg import JsonEcho, JsonFramer, JsonHandler
from .lengthsep import LengthSepBody, LengthSepEcho, LengthSepFramer
from .lines import LineEcho, LineFramer, LineHandler
from .netstring import NetstringEcho, NetstringFramer, NetstringHandler
from .request import RequestHandler, do_request, split_address
from .resp import RespError, RespFramer, encode_command, encode_reply

__all__ = [
    "NEED_DATA",
    "FramedHandler",
    "Framer",
    "Int32Echo",
    "Int32Framer",
    "Int32Handler",
    "JsonClient",
    "JsonEcho",
    "JsonFramer",
    "JsonHandler",
    "LengthSepBody",
    "LengthSepEcho",
    "LengthSepFramer",
    "LineEcho",
    "LineFramer",
    "LineHandler",
    "NetstringEcho",
    "NetstringFramer",
    "NetstringHandler",
    "RequestHandler",
    "RespError",
    "RespFramer",
    "StringReceiverHandler",
    "do_request",
    "encode_command",
    "encode_reply",
    "split_address",
]
