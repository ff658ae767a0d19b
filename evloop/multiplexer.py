"""Choosing the I/O multiplexer.

The loop never names a system call; it is handed a :mod:`selectors` selector,
either an instance or a name. What the loop calls for a ready file object is
stored in ``SelectorKey.data`` (CPython's ``selectors``, curio's
``Kernel(selector=)``), so any ``BaseSelector`` works.
"""

import selectors
from typing import Optional, Union

__all__ = ["SELECTOR_NAMES", "make_selector"]

SELECTOR_NAMES = {
    "select": "SelectSelector",
    "poll": "PollSelector",
    "epoll": "EpollSelector",
    "devpoll": "DevpollSelector",
    "kqueue": "KqueueSelector",
}


def make_selector(choice: Optional[Union[str, selectors.BaseSelector]] = None) -> selectors.BaseSelector:
    """Return a selector: ``choice`` itself if it is one, the named kind, or
    the best the platform has (``selectors.DefaultSelector``) for None or
    ``"default"``. Raises ValueError for a name this platform lacks."""
    if isinstance(choice, selectors.BaseSelector):
        return choice
    if choice is None or choice == "default":
        return selectors.DefaultSelector()
    class_name = SELECTOR_NAMES.get(choice)
    cls = getattr(selectors, class_name, None) if class_name else None
    if cls is None:
        available = sorted(n for n, c in SELECTOR_NAMES.items() if hasattr(selectors, c))
        raise ValueError(f"selector {choice!r} is not available here; choose one of {available}")
    selector: selectors.BaseSelector = cls()
    return selector
