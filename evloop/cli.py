"""The command line: ``python -m evloop serve MODULE:HANDLER``.

It imports a handler class, builds the server the options ask for, serves it
on one loop until Ctrl-C or SIGTERM, and turns the errors a person makes
(a module that is not there, a port in use, a port they may not bind) into
one clear line instead of a traceback. The options themselves, and the
checks of what is typed, are in :mod:`evloop.cli_options`.
"""

import argparse
import errno
import functools
import importlib
import importlib.util
import logging
import os
import socket
import sys
from typing import Any, List, Optional

from .cli_options import build_parser
from .metrics import MetricsAddressError

__all__ = ["load_handler", "main"]

logger = logging.getLogger("evloop")


class CommandError(Exception):
    """A mistake on the command line or in the environment: one line, exit 2."""


def load_handler(spec: str) -> Any:
    """Import ``MODULE:NAME`` (a dotted module or a ``.py`` file) and return
    the named class. Raises CommandError with a one-line reason."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise CommandError(f"expected MODULE:HANDLER, got {spec!r}")
    if module_name.endswith(".py") or os.sep in module_name:
        if not os.path.isfile(module_name):
            raise CommandError(f"no such file: {module_name}")
        name = os.path.splitext(os.path.basename(module_name))[0]
        location = importlib.util.spec_from_file_location(name, module_name)
        if location is None or location.loader is None:
            raise CommandError(f"cannot import {module_name}")
        module = importlib.util.module_from_spec(location)
        sys.modules[name] = module
        location.loader.exec_module(module)
    else:
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # as `python -m` would, for local modules
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            raise CommandError(f"module not found: {exc.name}") from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise CommandError(f"module {module_name!r} has no attribute {attribute!r}") from None


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    _access_log(not args.no_access_log)
    if args.http_parser:
        os.environ["EVLOOP_HTTP_PARSER"] = args.http_parser
    try:
        return serve(args)
    except CommandError as exc:
        print(f"evloop: error: {exc}", file=sys.stderr)
        return 2
    except MetricsAddressError as exc:
        print(f"evloop: error: --metrics {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"evloop: error: {_describe_os_error(exc, args)}", file=sys.stderr)
        return 2


def _access_log(on: bool) -> None:
    """HTTP and WSGI handlers log each request to "evloop.access" (see
    evloop.protocols.http_access): on, its lines go to stderr as they are,
    whatever --log-level says; off, the logger is disabled."""
    access = logging.getLogger("evloop.access")
    if not on:
        access.disabled = True
        return
    output = logging.StreamHandler()
    output.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(output)
    access.setLevel(logging.INFO)
    access.propagate = False


def _describe_os_error(exc: OSError, args: argparse.Namespace) -> str:
    where = args.unix or f"{args.host}:{args.port}"
    if exc.errno == errno.EADDRINUSE:
        return f"{where} is already in use"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied binding {where}" + (
            " (ports below 1024 need privileges)" if not args.unix and 0 < args.port < 1024 else ""
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{args.host} is not an address of this machine"
    return f"{where}: {exc.strerror or exc}"


def _limits(args: argparse.Namespace) -> Any:
    from .limits import DEFAULT_LIMITS

    changes = {}
    if args.max_connections is not None:
        changes["max_connections"] = args.max_connections
    if args.max_connections_per_peer is not None:
        changes["max_connections_per_peer"] = args.max_connections_per_peer or None  # 0: no cap
    if args.max_request_size is not None:
        changes["max_request_size"] = args.max_request_size
    if args.max_clients_memory is not None:
        changes["max_clients_memory"] = args.max_clients_memory or None  # 0: no budget
    for name in ("idle_timeout", "request_timeout", "write_timeout", "handshake_timeout"):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value or None  # 0 switches it off
    if args.shutdown_timeout is not None:
        changes["shutdown_timeout"] = args.shutdown_timeout
    try:
        return DEFAULT_LIMITS.replace(**changes)
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def _proxy_protocol(args: argparse.Namespace) -> Any:
    """The ProxyProtocol --proxy-protocol asks for, or None."""
    if not args.proxy_protocol:
        return None
    if args.udp:
        raise CommandError("--proxy-protocol applies to stream servers, not --udp")
    from .proxy_protocol import ProxyProtocol

    try:
        return ProxyProtocol(trusted=args.proxy_protocol)
    except ValueError as exc:
        raise CommandError(f"--proxy-protocol: {exc}") from None


def _make_server(args: argparse.Namespace, ssl_context: Any, limits: Any, proxy: Any = None) -> Any:
    if args.udp:
        if ssl_context is not None:
            raise CommandError("--tls-cert/--tls-key do not apply to --udp")
        from .datagram import DatagramServer, UnixDatagramServer

        if args.unix:
            return UnixDatagramServer(args.unix)
        return DatagramServer(args.host, args.port)
    if args.unix:
        from .unix import UnixServer

        return UnixServer(args.unix, ssl=ssl_context, limits=limits, proxy_protocol=proxy)
    from .server import Server

    return Server(args.host, args.port, ssl=ssl_context, limits=limits, proxy_protocol=proxy)


def _ssl_context(args: argparse.Namespace) -> Any:
    if not args.tls_cert and not args.tls_key:
        return None
    if not (args.tls_cert and args.tls_key):
        raise CommandError("--tls-cert and --tls-key go together")
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise CommandError(f"cannot load the TLS certificate or key: {exc}") from None
    return context


def _serve_workers(
    args: argparse.Namespace, ssl_context: Any, limits: Any, proxy: Any = None, sock: Any = None
) -> int:
    """``--workers N``: a supervisor that never imports the handler itself;
    each worker does after fork, so SIGHUP reloads the code on disk."""
    from .handler import format_address
    from .workers import WorkerProcesses, WorkerStartError

    if args.unix or args.udp or ssl_context is not None:
        raise CommandError("--workers serves plain TCP; it does not combine with --unix, --udp or TLS")
    where = {"sock": sock} if sock is not None else {}
    supervisor = WorkerProcesses(
        args.wsgi or args.handler,
        args.host,
        args.port,
        workers=args.workers,
        selector=args.selector,
        shutdown_timeout=limits.shutdown_timeout,
        limits=limits,
        metrics=args.metrics,
        proxy_protocol=proxy,
        loader=functools.partial(_load_handler_class, args),
        **where,
    )

    def ready(processes: Any) -> None:
        logger.info(
            "listening on %s with %d workers (pid %d: SIGHUP reloads them)",
            format_address(processes.address),
            args.workers,
            os.getpid(),
        )

    try:
        supervisor.run(ready)
    except WorkerStartError as exc:
        raise CommandError(f"the workers did not start: {exc}") from None
    return 0


def _load_handler_class(args: argparse.Namespace) -> Any:
    """Import and check the handler (or the WSGI application) ``args`` name.
    Raises CommandError with a one-line reason."""
    if args.wsgi:
        return _wsgi_handler(args)
    handler_class = load_handler(args.handler)
    _check_handler(args, handler_class)
    return handler_class


def _wsgi_handler(args: argparse.Namespace) -> Any:
    """The handler class serving ``--wsgi MODULE:APP`` (evloop.protocols.wsgi)."""
    if args.handler:
        raise CommandError("give MODULE:HANDLER or --wsgi MODULE:APP, not both")
    if args.threads is not None and args.threads < 1:
        raise CommandError("--threads must be at least 1")
    application = load_handler(args.wsgi)
    if not callable(application):
        raise CommandError(f"{args.wsgi} is not a WSGI application (not callable)")
    routes = {}
    for route in args.websocket:
        path, _, spec = route.partition("=")
        if not path.startswith("/") or not spec:
            raise CommandError(f"expected --websocket PATH=MODULE:CLASS, got {route!r}")
        routes[path] = load_handler(spec)
    try:
        # By name: evloop.protocols is installed from protocols/ (see pyproject.toml).
        wsgi = importlib.import_module("evloop.protocols.wsgi")
    except ImportError as exc:
        raise CommandError(f"--wsgi needs h11 (pip install 'evloop-server[http]'): {exc}") from None
    return wsgi.wsgi_handler(
        application, websocket=routes, threads=args.threads or 8, multiprocess=args.workers > 1
    )


def _check_handler(args: argparse.Namespace, handler_class: object) -> None:
    """Refuse, before listening, a handler the server could not drive."""
    from .datagram import DatagramHandler
    from .handler import ClientHandler

    if not isinstance(handler_class, type):
        raise CommandError(f"{args.handler} is not a class")
    if args.udp and not issubclass(handler_class, DatagramHandler):
        kind = "a stream handler" if issubclass(handler_class, ClientHandler) else "not a handler"
        raise CommandError(f"--udp serves a DatagramHandler subclass; {args.handler} is {kind}")
    if not args.udp and not issubclass(handler_class, ClientHandler):
        hint = " (serve it with --udp)" if issubclass(handler_class, DatagramHandler) else ""
        raise CommandError(f"{args.handler} is not a ClientHandler subclass{hint}")


def serve(args: argparse.Namespace) -> int:
    from .multiplexer import make_selector

    if args.systemd_socket and not args.systemd:
        raise CommandError("--systemd-socket goes with --systemd")
    if not args.handler and not args.wsgi and not args.systemd_socket:
        raise CommandError("give MODULE:HANDLER, or --wsgi MODULE:APP")
    if args.wsgi and args.handler:
        raise CommandError("give MODULE:HANDLER or --wsgi MODULE:APP, not both")
    if args.workers < 1:
        raise CommandError("--workers must be at least 1")
    try:
        make_selector(args.selector).close()
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    ssl_context = _ssl_context(args)
    limits = _limits(args)
    proxy = _proxy_protocol(args)
    if args.systemd:
        return _serve_systemd(args, ssl_context, limits, proxy)
    if args.workers > 1:
        return _serve_workers(args, ssl_context, limits, proxy)
    handler_class = _load_handler_class(args)
    server = _make_server(args, ssl_context, limits, proxy)
    return _run_loop(args, [(server, handler_class)])


def _serve_systemd(args: argparse.Namespace, ssl_context: Any, limits: Any, proxy: Any) -> int:
    """``--systemd``: serve the sockets systemd passed (evloop.activation),
    each with its ``--systemd-socket NAME=...`` handler or MODULE:HANDLER."""
    from .activation import listen_sockets, systemd_servers

    if args.unix or args.udp:
        raise CommandError("--systemd serves the sockets systemd passed; drop --unix and --udp")
    try:
        sockets = listen_sockets()
    except (ValueError, OSError) as exc:
        raise CommandError(f"--systemd: {exc}") from None
    if not sockets:
        raise CommandError(
            "--systemd: no sockets were passed (LISTEN_FDS and LISTEN_PID name no socket for us)"
        )
    named = dict(route.partition("=")[::2] for route in args.systemd_socket)
    if args.workers > 1:
        if len(sockets) != 1 or sockets[0][1].type != socket.SOCK_STREAM or named:
            raise CommandError("--systemd with --workers serves exactly one stream socket")
        return _serve_workers(args, ssl_context, limits, proxy, sock=sockets[0][1])
    servers = systemd_servers(sockets, ssl=ssl_context, limits=limits, proxy_protocol=proxy)
    pairs = []
    for name, group in servers.items():
        spec = named.get(name)
        for server in group:
            datagram = server.socket.type == socket.SOCK_DGRAM
            if spec is None and not (args.handler or args.wsgi):
                raise CommandError(f"no handler for the socket named {name!r} (--systemd-socket {name}=...)")
            probe = argparse.Namespace(**{**vars(args), "udp": datagram, "handler": spec or args.handler})
            if spec is not None:
                probe.wsgi = None
            pairs.append((server, _load_handler_class(probe)))
    return _run_loop(args, pairs)


def _run_loop(args: argparse.Namespace, pairs: List[Any]) -> int:
    from .serve import run_servers

    names = [args.unix] if args.unix else None
    run_servers(pairs, selector=args.selector, stats=args.stats, metrics=args.metrics, names=names)
    return 0
