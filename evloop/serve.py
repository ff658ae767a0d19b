"""``loop(server, Handler)``: the recipe's entry point, on an EventLoop.

It says where it listens, and a program that configured no logging still
gets readable log lines: while it runs, the ``evloop`` logger has a stderr
handler with time and level (as uvicorn gives its own loggers), unless the
program configured logging itself or passed ``default_logging=False``.
"""

import contextlib
import logging
import selectors
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Type, Union

from .datagram import DatagramHandler, DatagramServer
from .eventloop import EventLoop
from .handler import ClientHandler, format_address
from .server import Server
from .shutdown import handle_signals

__all__ = ["DEFAULT_LOG_FORMAT", "loop", "run_servers"]

logger = logging.getLogger("evloop")

#: The format of the handler :func:`loop` gives ``evloop`` when logging is not configured.
DEFAULT_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def loop(
    server: Union[Server, DatagramServer],
    handler_class: Union[Type[ClientHandler], Type[DatagramHandler]],
    timeout: Optional[float] = 30,
    *,
    selector: Union[str, selectors.BaseSelector, None] = None,
    default_logging: bool = True,
) -> None:
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

    It logs ``listening on HOST:PORT`` at start. If the program has
    configured no logging (no handler on the root logger nor on
    ``evloop``), the ``evloop`` logger gets a stderr handler at INFO for as
    long as the loop runs; ``default_logging=False`` leaves logging alone.
    """
    event_loop = EventLoop(selector)
    with _default_logging(default_logging):
        try:
            event_loop.add_server(server, handler_class)
            name = getattr(handler_class, "__name__", handler_class)
            logger.info("listening on %s (%s)", format_address(server.address), name)
            try:
                with handle_signals(event_loop):
                    event_loop.run(max_wait=timeout)
            except KeyboardInterrupt:
                logger.info("interrupted; closing %d connections", len(event_loop.handlers))
        finally:
            event_loop.close()


def run_servers(
    pairs: Sequence[Tuple[Any, Any]],
    *,
    selector: Union[str, selectors.BaseSelector, None] = None,
    stats: Optional[float] = None,
    metrics: Optional[Tuple[str, int]] = None,
    names: Optional[List[str]] = None,
) -> None:
    """Serve each ``(server, handler_class)`` of ``pairs`` on one new loop
    until SIGTERM or Ctrl-C (graceful: no new clients, in-flight responses
    finish within ``Limits.shutdown_timeout``, the rest are cut; a second
    signal stops at once), then close it. ``stats``: log a report this
    often (seconds). ``metrics=(host, port)``: serve Prometheus metrics at
    ``http://host:port/metrics`` (:mod:`evloop.metrics`). ``names``: how the log names the servers (default:
    their addresses). Used by ``python -m evloop serve``."""
    event_loop = EventLoop(selector)
    reporter = None
    try:
        for server, handler_class in pairs:
            event_loop.add_server(server, handler_class)
        if stats:
            from .stats import StatsReporter

            reporter = StatsReporter(event_loop, stats)
        if metrics:
            from .metrics import serve_metrics

            endpoint = serve_metrics(event_loop, *metrics)
            logger.info("metrics on http://%s:%d/metrics", endpoint.host, endpoint.port)
        with handle_signals(event_loop):
            for index, (server, _) in enumerate(pairs):
                name = names[index] if names else format_address(server.address)
                logger.info("listening on %s", name)
            event_loop.run()
        logger.info("stopped")
    finally:
        if reporter is not None:
            reporter.cancel()
        event_loop.close()


@contextlib.contextmanager
def _default_logging(enabled: bool) -> Iterator[None]:
    """While the block runs, give ``evloop`` a readable stderr handler if
    ``enabled`` and the program configured no logging."""
    evloop_logger = logging.getLogger("evloop")
    if not enabled or logging.getLogger().handlers or evloop_logger.handlers:
        yield
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(DEFAULT_LOG_FORMAT))
    level = evloop_logger.level
    evloop_logger.addHandler(handler)
    if level == logging.NOTSET:
        evloop_logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        evloop_logger.removeHandler(handler)
        evloop_logger.setLevel(level)
