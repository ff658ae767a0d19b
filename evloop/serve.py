"""``loop(server, Handler)``: the recipe's entry point, on an EventLoop."""

import logging
from typing import Any, Optional

from .eventloop import EventLoop
from .shutdown import handle_signals

__all__ = ["loop"]

logger = logging.getLogger("evloop")


def loop(server: Any, handler_class: Any, timeout: Optional[float] = 30, *, selector: Any = None) -> None:
    """Serve ``server`` with one ``handler_class`` per client until
    interrupted (Ctrl-C) or a handler calls ``self.loop.stop()``; then close
    the server and every connection, and return.

    SIGINT (Ctrl-C) and SIGTERM shut down gracefully: no new clients, the
    responses in flight finish (up to ``Limits.shutdown_timeout``), then the
    rest are cut; a second signal stops at once (see :mod:`evloop.shutdown`).

    ``timeout`` is the recipe's select() timeout: the longest one wait for
    I/O may last. The loop wakes for timers and stop() on its own, so it only
    bounds how long a pass can sleep. ``selector`` picks the multiplexer
    (a name like ``"epoll"`` or a ``selectors`` selector).
    """
    event_loop = EventLoop(selector)
    try:
        event_loop.add_server(server, handler_class)
        logger.info("serving %s on %s", getattr(handler_class, "__name__", handler_class), server)
        try:
            with handle_signals(event_loop):
                event_loop.run(max_wait=timeout)
        except KeyboardInterrupt:
            logger.info("interrupted; closing %d connections", len(event_loop.handlers))
    finally:
        event_loop.close()
