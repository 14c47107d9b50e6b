"""The gallery as a whole: /health, /gallery (its overview), /history and /rollback."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query, Request

from compatret.engine.overview import overview, sharded_overview
from compatret.engine.sharded import ShardedService
from compatret.search.fragments import cache_problem
from compatret.server.context import RouteContext, refused
from compatret.server.jobs import PROBE_WAIT_S
from compatret.server.schemas import (
    ERRORS,
    GalleryView,
    Health,
    HistoryEntry,
    RollbackRequest,
)


def add_routes(app: FastAPI, r: RouteContext) -> None:
    service = r.service

    @app.get("/health", response_model=Health)
    def health() -> dict[str, Any]:
        if isinstance(service, ShardedService):  # what is published: the snapshot every query reads
            snap = service.snapshot
            problems = [p for p in (r.watch.drift,) if p]
            return {"status": "degraded" if problems else "ok", "serving": snap.serving, "rows": service.count(),
                    "table_version": snap.snapshot, "snapshot_version": snap.snapshot, "problems": problems}  # fmt: skip
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

    @app.get("/gallery", response_model=GalleryView, responses=ERRORS, dependencies=[r.access("read")])
    def gallery(request: Request) -> dict[str, Any]:
        seen = sharded_overview(service) if isinstance(service, ShardedService) else overview(service)
        return {**seen, "can_write": getattr(request.state, "key_scope", None) == "write"}

    @app.get("/history", response_model=list[HistoryEntry], responses=ERRORS, dependencies=[r.access("read")])
    def table_history(limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[dict[str, Any]]:
        """The newest `limit` entries, newest first; a backfill's batches are one entry (a sharded
        gallery: its snapshots, `version` being the snapshot)."""
        entries = r.gallery.history()[::-1][:limit]
        if isinstance(service, ShardedService):
            return [
                {"version": s["snapshot"], "time": s["time"], "rows": s["rows"], "serving": s["serving"], "change": s["event"]}
                for s in entries
            ]
        return entries

    @app.post("/rollback", responses=ERRORS, dependencies=[r.access("write")])
    def restore(req: RollbackRequest) -> dict[str, Any]:
        """Restore the rows, vectors and serving model of an earlier table version, as a new version."""
        if r.job.running(wait=PROBE_WAIT_S):
            raise HTTPException(status_code=409, detail="a backfill is running: stop it before rolling back")
        out = refused(r.gallery.rollback, req.version)
        return {"restored": req.version, "serving": out["serving"], "table_version": out.get("table_version", out.get("snapshot"))}
