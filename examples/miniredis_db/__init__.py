"""The command side of examples/miniredis.py: a Redis keyspace and its
commands, with no I/O, shared by the evloop example and the asyncio server
in benchmarks/. ``database`` has the command table and the server commands,
``keyspace`` the keys and their expiry, ``datatypes`` each type's commands,
``globmatch`` Redis's glob patterns, ``replies`` what they all share."""

from .database import COMMANDS, Database, process_memory
from .globmatch import glob_matcher
from .replies import Session

__all__ = ["COMMANDS", "Database", "Session", "glob_matcher", "process_memory"]
