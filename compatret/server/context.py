"""What the routers share: the gallery's service, its backfill job, the key a route needs
(`access`), what a model name may mean, and the one-line 400 of a refusal."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from compatret.api import Index
from compatret.core.errors import CompatretError, Unavailable
from compatret.core.lineage import VERSION_FILE
from compatret.core.paths import confined
from compatret.encoders import ALIASES
from compatret.engine.service import Service
from compatret.engine.sharded import ShardedService
from compatret.server.auth import Scope
from compatret.server.fingerprint import FingerprintWatch
from compatret.server.jobs import BackfillJob


def refused(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """fn(...), with a CompatretError answered as 400 and its one line (503 when a part that must
    answer did not: the request may be retried)."""
    try:
        return fn(*args, **kwargs)
    except Unavailable as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from exc
    except CompatretError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from exc


@dataclass(frozen=True)
class RouteContext:
    """What the route functions share: the gallery's service, its backfill job, where models may come from."""

    service: Service | ShardedService
    directory: Path
    job: BackfillJob
    models_dir: str | Path | None
    bearer: HTTPBearer
    watch: FingerprintWatch

    @property
    def gallery(self) -> Index:
        """The same gallery through the public API, the one path the CLI and Python users take too."""
        return Index(self.service)

    def access(self, needed: Scope) -> Any:
        """The key a route needs: KeyCheck reads it from this dependency (`scope`), and the
        OpenAPI schema documents it (the bearer scheme)."""
        bearer = self.bearer

        async def documented(_: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
            return None

        documented.__doc__ = f"needs a {needed} key"
        documented.scope = needed  # type: ignore[attr-defined]  # read by middleware.route_scope
        return Depends(documented)

    def model_spec(self, name: str, for_upgrade: bool = False) -> str:
        """What an HTTP model name may mean: a model this gallery knows, an alias, or a folder in models_dir."""
        meta = self.service.meta
        known = self.service.lineage(meta)
        if name in known:
            return meta.sources.get(name, name) if for_upgrade else name
        if name in ALIASES:
            return name
        if self.models_dir is not None:
            try:
                folder = confined(self.models_dir, name, "model")
            except CompatretError:
                folder = None
            if folder is not None and (folder / VERSION_FILE).is_file():
                return str(folder)
        where = " or a folder in the server's models dir" if self.models_dir is not None else ""
        raise HTTPException(400, f"unknown model {name!r}: name one of the gallery's models ({', '.join(sorted(known))}), an alias{where}")


def error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        """422 naming each bad field and why; the input is not echoed (it may be huge, or NaN)."""
        detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))} for e in exc.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(CompatretError)
    async def _compatret_error(_: Request, exc: CompatretError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)
