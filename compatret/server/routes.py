"""The HTTP routes: read (query, status) and write (items, upgrade, backfill, rollback)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from compatret.core.errors import CompatretError
from compatret.core.lineage import VERSION_FILE
from compatret.core.paths import confined
from compatret.encoders import ALIASES
from compatret.engine.backfill import backfill
from compatret.engine.gate import gate_check, stored_gate
from compatret.engine.overview import overview
from compatret.engine.service import Service
from compatret.search.fragments import cache_problem
from compatret.server.auth import Scope
from compatret.server.fingerprint import FingerprintWatch
from compatret.server.jobs import PROBE_WAIT_S, BackfillJob
from compatret.server.schemas import (
    ERRORS,
    AddRequest,
    BackfillRequest,
    BackfillStatus,
    DeleteRequest,
    GalleryView,
    Health,
    HistoryEntry,
    QueryRequest,
    QueryResponse,
    RollbackRequest,
    UpgradeRequest,
    _image_bytes,
)
from compatret.store.history import grouped, history, rollback
from compatret.store.pending import pending_counts


def _refused(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """fn(...), with a CompatretError answered as 400 and its one line."""
    try:
        return fn(*args, **kwargs)
    except CompatretError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from exc


@dataclass(frozen=True)
class _Routes:
    """What the route functions share: the gallery's service, its backfill job, where models may come from."""

    service: Service
    directory: Path
    job: BackfillJob
    models_dir: str | Path | None
    bearer: HTTPBearer
    watch: FingerprintWatch

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


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        """422 naming each bad field and why; the input is not echoed (it may be huge, or NaN)."""
        detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))} for e in exc.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(CompatretError)
    async def _compatret_error(_: Request, exc: CompatretError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)


def _read_routes(app: FastAPI, r: _Routes) -> None:
    service = r.service

    @app.get("/health", response_model=Health)
    def health() -> dict[str, Any]:
        gallery = service.gallery
        table_version = gallery.latest_version()
        snapshot = service.index.table_version
        problems = [p for p in (cache_problem(gallery.path), r.watch.drift) if p]
        return {
            "status": "degraded" if problems else "ok",
            "serving": gallery.meta_at(table_version).serving.id,
            "rows": gallery.count(),
            "table_version": table_version,
            "snapshot_version": snapshot,
            "problems": problems,
        }

    @app.post("/query", response_model=QueryResponse, responses=ERRORS, dependencies=[r.access("read")])
    def query(req: QueryRequest) -> JSONResponse:
        import numpy as np

        kwargs: dict[str, Any] = {"model": r.model_spec(req.model) if req.model else None, "k": req.k, "include_payload": req.payload}
        if req.vectors is not None:
            kwargs["vectors"] = np.asarray(req.vectors, dtype=np.float32)
        elif req.images_base64 is not None:
            kwargs["images"] = [_image_bytes(s) for s in req.images_base64]
        else:
            kwargs["texts"] = req.texts
        if (
            req.vectors is None and req.model in (None, service.meta.serving.id) and r.watch.drift
        ):  # the endpoint's model changed: its queries would be wrong
            raise HTTPException(status_code=503, detail=r.watch.drift)
        results = _refused(service.query, **kwargs)
        return JSONResponse({"results": [res.to_dict() for res in results]})  # already the documented shape: no re-validation

    @app.get("/backfill", response_model=BackfillStatus, responses=ERRORS, dependencies=[r.access("read")])
    def backfill_status() -> dict[str, Any]:
        running = r.job.running()  # read before the last report: a job that ends in between is reported finished, with its result
        counts = service.rows_by_version()
        pending, bare = pending_counts(service.gallery, counts)  # from the same counts: a poll never disagrees with itself
        last = r.job.last()
        return {
            "serving": service.meta.serving.id,
            "rows_by_version": counts,
            "pending": pending,
            "unembeddable": bare,
            "running": running,
            "last_report": last.get("report"),
            "last_error": last.get("error"),
        }

    @app.get("/gallery", response_model=GalleryView, responses=ERRORS, dependencies=[r.access("read")])
    def gallery(request: Request) -> dict[str, Any]:
        return {**overview(service), "can_write": getattr(request.state, "key_scope", None) == "write"}

    @app.get("/history", response_model=list[HistoryEntry], responses=ERRORS, dependencies=[r.access("read")])
    def table_history(limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[dict[str, Any]]:
        """The newest `limit` entries, newest first; a backfill's batches are one entry."""
        return grouped(history(service.gallery))[::-1][:limit]


def _write_routes(app: FastAPI, r: _Routes) -> None:
    service = r.service

    @app.post("/items", responses=ERRORS, dependencies=[r.access("write")])
    def add(req: AddRequest) -> dict[str, int]:
        items = []
        for it in req.items:
            d = it.model_dump(exclude_none=True, exclude={"image_base64"})
            if it.image_base64 is not None:
                d["image"] = _image_bytes(it.image_base64)
            items.append(d)
        if r.watch.drift:  # rows embedded by a model other than the registered one would sit in another space
            raise HTTPException(status_code=503, detail=r.watch.drift)
        return {"added": _refused(service.add_items, items, progress=False)}

    @app.post("/items/delete", responses=ERRORS, dependencies=[r.access("write")])
    def delete(req: DeleteRequest) -> dict[str, int]:
        return {"deleted": _refused(service.delete, req.ids)}

    @app.post("/upgrade", responses=ERRORS, dependencies=[r.access("write")])
    def upgrade(req: UpgradeRequest) -> dict[str, Any]:
        spec = r.model_spec(req.model, for_upgrade=True)
        gate = None
        if req.gate:
            queries, qrels = _refused(stored_gate, r.directory)
            gate = _refused(gate_check, r.directory, spec, queries, qrels, req.max_drop, req.max_flips)
        meta = _refused(service.upgrade, spec, gate=gate)
        r.watch.ensure()
        return {"serving": meta.serving.id, "gate": gate}

    @app.post("/backfill", status_code=202, responses=ERRORS, dependencies=[r.access("write")])
    def start_backfill(req: BackfillRequest | None = None) -> dict[str, bool]:
        req = req or BackfillRequest.model_validate({})
        if req.limit is not None and req.fraction is not None:
            raise HTTPException(400, "give limit or fraction, not both")

        def run() -> dict[str, Any]:
            worker = Service.open(r.directory)  # its own handle: queries keep the shared one
            return backfill(
                worker, req.limit, req.fraction, req.order, req.batch_size, progress=False, should_stop=r.job.stop_requested
            ).to_dict()

        if not r.job.start(run):
            raise HTTPException(status_code=409, detail="a backfill is already running")
        return {"started": True}

    @app.post("/backfill/stop", status_code=202, responses=ERRORS, dependencies=[r.access("write")])
    def stop_backfill() -> dict[str, bool]:
        """Ask the running backfill to stop after the batch in hand (what it committed stays; a new start resumes)."""
        if not r.job.request_stop():
            raise HTTPException(status_code=409, detail="no backfill is running")
        return {"stopping": True}

    @app.post("/rollback", responses=ERRORS, dependencies=[r.access("write")])
    def restore(req: RollbackRequest) -> dict[str, Any]:
        """Restore the rows, vectors and serving model of an earlier table version, as a new version."""
        if r.job.running(wait=PROBE_WAIT_S):
            raise HTTPException(status_code=409, detail="a backfill is running: stop it before rolling back")
        meta = _refused(rollback, service.gallery, req.version)
        return {"restored": req.version, "serving": meta.serving.id, "table_version": service.gallery.version}
