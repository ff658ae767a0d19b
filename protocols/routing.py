"""Routing by path: which function, class or static directory answers.

A route is a path and a target. A path ending in ``/`` is a prefix route
(``"/static/"`` answers ``/static/css/site.css``); any other path matches
only itself. An exact route wins over a prefix; among prefixes the longest
wins. Paths are compared as the client sent them, before percent-decoding,
so ``%2F`` can never move a request into another route.

A target is one of:

- a function ``f(request)`` returning a response (see :mod:`evloop.protocols.http`);
- a class with methods named after HTTP methods in lower case (``get``,
  ``post``...): one instance per request, ``instance.get(request)``; HEAD
  uses ``head`` or else ``get``; a method it lacks gets 405 with ``Allow``;
- a WebSocket handler class (:class:`evloop.protocols.websocket.WebSocketHandler`):
  the request is a WebSocket upgrade and the class serves the socket;
- any callable object, e.g. :class:`evloop.protocols.static.StaticFiles`.

The request finds the pattern that matched in ``request.route`` and the rest
of the path after a prefix route in ``request.subpath``.
"""

from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from .http import HTTPError, Request, error_response

__all__ = ["Router"]

_METHODS = ("get", "head", "post", "put", "delete", "patch", "options")


class Router:
    """Paths to targets. ``Router({"/": index, "/static/": StaticFiles("www")})``."""

    def __init__(self, routes: Optional[Mapping[str, Any]] = None) -> None:
        self._exact: Dict[str, Any] = {}
        self._prefixes: Dict[str, Any] = {}
        for path, target in (routes or {}).items():
            self.add(path, target)

    def add(self, path: str, target: Any) -> None:
        """Route ``path`` (a prefix when it ends with ``/``) to ``target``."""
        if not path.startswith("/"):
            raise ValueError(f"a route path must start with '/': {path!r}")
        self._exact[path] = target
        if path.endswith("/"):
            self._prefixes[path] = target

    def route(self, path: str) -> Callable[[Any], Any]:
        """Decorator form of :meth:`add`."""

        def register(target: Any) -> Any:
            self.add(path, target)
            return target

        return register

    def find(self, path: str) -> Tuple[Optional[str], Any]:
        """The pattern and target for ``path``, or ``(None, None)``."""
        target = self._exact.get(path)
        if target is not None:
            return path, target
        best = None
        for prefix in self._prefixes:
            if path.startswith(prefix) and (best is None or len(prefix) > len(best)):
                best = prefix
        if best is None:
            return None, None
        return best, self._prefixes[best]

    def dispatch(self, request: Request) -> Any:
        """Answer ``request`` with its route's target; 404 when none."""
        pattern, target = self.find(request.path)
        if pattern is None:
            return error_response(404)
        request.route = pattern
        request.subpath = request.path[len(pattern) :] if pattern.endswith("/") else ""
        upgrade = getattr(target, "accept_upgrade", None)
        if upgrade is not None and isinstance(target, type):
            return upgrade(request)
        if isinstance(target, type):
            return _call_method(target(), request)
        return target(request)


def _call_method(view: Any, request: Request) -> Any:
    name = request.method.lower()
    method = getattr(view, name, None) if name in _METHODS else None
    if method is None and name == "head":
        method = getattr(view, "get", None)
    if method is None:
        allowed = [m.upper() for m in _METHODS if callable(getattr(view, m, None))]
        if "GET" in allowed and "HEAD" not in allowed:
            allowed.insert(allowed.index("GET") + 1, "HEAD")
        # RFC 9110 section 15.5.6: a 405 lists the methods that are allowed.
        raise HTTPError(405, f"{request.method} is not allowed here", [("Allow", ", ".join(allowed))])
    return method(request)
