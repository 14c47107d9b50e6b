"""ASGI middleware: the API key before anything is parsed, then the body size limit."""

from __future__ import annotations

from typing import Any, cast

from fastapi.responses import JSONResponse
from starlette.routing import BaseRoute, Match, Router

from compatret.server.auth import ApiKeys, Scope


def route_scope(route: BaseRoute) -> Scope | None:
    """The scope a route declares through its `access(scope)` dependency; None: it declares none
    (health, the API docs, the console's page and files hold no data)."""
    for dep in getattr(route, "dependencies", ()):
        scope = getattr(dep.dependency, "scope", None)
        if scope is not None:
            return cast(Scope, scope)
    return None


def needed_scope(router: Router, request: dict[str, Any]) -> Scope | None:
    """The scope a request needs, read from the route it reaches (one table: the routes themselves).
    A request that reaches no route needs a write key: it says nothing about itself."""
    path = request["path"]  # every HTTP scope has one (ASGI)
    probe = {**request, "method": "GET" if request.get("method") == "HEAD" else request.get("method"), "path": path.rstrip("/") or "/"}
    for route in router.routes:
        match, _ = route.matches(probe)
        if match == Match.FULL:
            return route_scope(route)
    return "write"


class KeyCheck:
    """ASGI middleware: the API key is checked before the body is read, so a request without a
    valid key costs no parsing; 401 (no or unknown key), 403 (read key, write route)."""

    def __init__(self, app: Any, keys: ApiKeys, router: Router) -> None:
        self.app, self.keys, self.router = app, keys, router

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("method") == "POST" and not _json_body(scope):
            # a browser sends a cross-site form or text/plain POST without asking first; a JSON one it must ask for (CORS)
            await JSONResponse(
                {"detail": "a POST must say Content-Type: application/json (send {} when there is nothing to say)"}, status_code=415
            )(scope, receive, send)
            return
        needed = needed_scope(self.router, scope) if scope["type"] == "http" else None
        if needed is None or not self.keys.enabled:
            scope.setdefault("state", {})["key_scope"] = "write" if not self.keys.enabled else None
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        kind, _, key = header.partition(" ")
        granted = self.keys.scope_of(key.strip()) if kind.lower() == "bearer" and key.strip() else None
        if granted is None:
            detail = "unknown API key" if header else "missing API key: send `Authorization: Bearer KEY`"
            response = JSONResponse({"detail": detail}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        elif needed == "write" and granted != "write":
            response = JSONResponse({"detail": "this key may read only: writes need a write key"}, status_code=403)
        else:
            scope.setdefault("state", {})["key_scope"] = granted  # the console shows write actions to write keys only
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)


def _json_body(scope: dict[str, Any]) -> bool:
    content_type = dict(scope.get("headers") or []).get(b"content-type", b"").decode("latin-1")
    return content_type.split(";")[0].strip().lower() == "application/json"


class BodyLimit:
    """ASGI middleware: refuse a request body over `limit` bytes with 413, declared (before any of it
    is read) or streamed (chunked, no Content-Length). The body is read here, up to the limit, and
    handed on whole: a limit raised inside the app's own read would come back as its 400."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await _too_large(self.limit)(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left: nobody to answer
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await _too_large(self.limit)(scope, receive, send)
                return
            more = message.get("more_body", False)
        whole: dict[str, Any] | None = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def replay() -> dict[str, Any]:
            nonlocal whole
            if whole is None:
                return await receive()  # after the body: what the server says next (a disconnect)
            message, whole = whole, None
            return message

        await self.app(scope, replay, send)


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse({"detail": f"request body over {limit} bytes"}, status_code=413)
