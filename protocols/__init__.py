"""Framers and ready-made handlers for evloop."""

from .framing import NEED_DATA, FramedHandler, Framer
from .lengthsep import LengthSepBody, LengthSepEcho, LengthSepFramer

__all__ = [
    "NEED_DATA",
    "FramedHandler",
    "Framer",
    "LengthSepBody",
    "LengthSepEcho",
    "LengthSepFramer",
]
