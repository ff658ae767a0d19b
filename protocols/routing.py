"""Routing by path and method: which function, class or static directory answers.

A route is a path, a target and, optionally, the methods it takes. Routes
are **exact** by default: ``"/"`` answers ``/`` and nothing else. A prefix
route is asked for explicitly, with a path ending in ``/*`` (or
``prefix=True``): ``"/static/*"`` answers ``/static/css/site.css``, and
``/static`` itself is redirected to ``/static/`` (301; 308 for methods
other than GET and HEAD, so the body is not lost). An exact route wins over
a prefix; among prefixes the longest wins. Paths are compared as the client
sent them, before percent-decoding, so ``%2F`` can never move a request
into another route.

A route given ``methods`` answers only those (GET brings HEAD with it);
another method gets 405 with ``Allow`` (RFC 9110 section 15.5.6). Several
routes may share a path with different methods.

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

from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from .http import HTTPError, Request, Response, error_response

__all__ = ["Router"]

_METHODS = ("get", "head", "post", "put", "delete", "patch", "options")


class _Route:
    """The targets of one path, by method (None: any method)."""

    __slots__ = ("by_method", "pattern")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.by_method: Dict[Optional[str], Any] = {}

    def target_for(self, method: str) -> Any:
        by_method = self.by_method
        target = by_method.get(method)
        if target is None and method == "HEAD":
            target = by_method.get("GET")
        if target is None:
            target = by_method.get(None)
        return target

    def allowed(self) -> List[str]:
        methods = [method for method in self.by_method if method is not None]
        if "GET" in methods and "HEAD" not in methods:
            methods.insert(methods.index("GET") + 1, "HEAD")
        return methods


class Router:
    """Paths to targets. ``Router({"/": index, "/static/*": StaticFiles("www")})``."""

    def __init__(self, routes: Optional[Mapping[str, Any]] = None) -> None:
        self._exact: Dict[str, _Route] = {}
        self._prefixes: Dict[str, _Route] = {}
        for path, target in (routes or {}).items():
            self.add(path, target)

    def add(
        self, path: str, target: Any, *, methods: Optional[Iterable[str]] = None, prefix: bool = False
    ) -> None:
        """Route ``path`` to ``target``: exact, or a prefix when ``path``
        ends with ``/*`` or ``prefix`` is true; for ``methods`` only
        (upper-case names), or for any method when None."""
        if not path.startswith("/"):
            raise ValueError(f"a route path must start with '/': {path!r}")
        pattern = path
        if path.endswith("/*"):
            path, prefix = path[:-1], True
        elif prefix and not path.endswith("/"):
            path += "/"
        table = self._prefixes if prefix else self._exact
        route = table.get(path)
        if route is None:
            route = table[path] = _Route(pattern)
        for method in [None] if methods is None else [method.upper() for method in methods]:
            route.by_method[method] = target

    def route(
        self, path: str, *, methods: Optional[Iterable[str]] = None, prefix: bool = False
    ) -> Callable[[Any], Any]:
        """Decorator form of :meth:`add`."""

        def register(target: Any) -> Any:
            self.add(path, target, methods=methods, prefix=prefix)
            return target

        return register

    def find(self, path: str) -> Tuple[Optional[str], Any]:
        """The pattern and target (for any method) for ``path``, or
        ``(None, None)``."""
        route, _ = self._match(path)
        if route is None:
            return None, None
        return route.pattern, route.target_for("GET")

    def _match(self, path: str) -> Tuple[Optional[_Route], str]:
        route = self._exact.get(path)
        if route is not None:
            return route, ""
        best = None
        for prefix in self._prefixes:
            if path.startswith(prefix) and (best is None or len(prefix) > len(best)):
                best = prefix
        if best is None:
            return None, ""
        return self._prefixes[best], path[len(best) :]

    def dispatch(self, request: Request) -> Any:
        """Answer ``request`` with its route's target; 404 when none, 405
        when the route does not take the method."""
        path = request.path
        if path not in self._exact and path + "/" in self._prefixes:
            # A directory route asked for without its slash (RFC 9110
            # sections 15.4.2 and 15.4.9).
            location = path + "/" + ("?" + request.query if request.query else "")
            return Response.redirect(location, 301 if request.method in ("GET", "HEAD") else 308)
        route, subpath = self._match(path)
        if route is None:
            return error_response(404)
        target = route.target_for(request.method)
        if target is None:
            allowed = ", ".join(route.allowed())
            raise HTTPError(405, f"{request.method} is not allowed here", [("Allow", allowed)])
        request.route = route.pattern
        request.subpath = subpath
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
