"""Framers and ready-made handlers for evloop."""

from .framing import NEED_DATA, FramedHandler, Framer
from .jsonclient import JsonClient
from .jsonmsg import JsonEcho, JsonFramer, JsonHandler
from .lengthsep import LengthSepBody, LengthSepEcho, LengthSepFramer

__all__ = [
    "NEED_DATA",
    "FramedHandler",
    "Framer",
    "JsonClient",
    "JsonEcho",
    "JsonFramer",
    "JsonHandler",
    "LengthSepBody",
    "LengthSepEcho",
    "LengthSepFramer",
]
