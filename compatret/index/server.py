"""HTTP service over one gallery (FastAPI): query, add, delete, upgrade, backfill, health.

Queries read a snapshot of the search index that is refreshed from the table at most every
`refresh_seconds`; a backfill or an upgrade running beside it (in this process or another)
never blocks them, and a stale snapshot still ranks correctly because old and new vectors
are compatible.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from compatret.errors import CompatretError
from compatret.index.backfill import backfill, pending_rows
from compatret.index.service import Service


class QueryRequest(BaseModel):
    texts: list[str] | None = None
    vectors: list[list[float]] | None = None
    k: int = Field(10, ge=1, le=10_000)
    model: str | None = None
    payload: bool = False


class Item(BaseModel):
    id: str | None = None
    title: str | None = None
    text: str | None = None
    image_path: str | None = None
    metadata: dict[str, Any] | None = None


class AddRequest(BaseModel):
    items: list[Item] = Field(min_length=1)


class DeleteRequest(BaseModel):
    ids: list[str] = Field(min_length=1)


class UpgradeRequest(BaseModel):
    model: str


class BackfillRequest(BaseModel):
    limit: int | None = Field(None, ge=0)
    fraction: float | None = Field(None, ge=0.0, le=1.0)
    order: Literal["random", "uncertainty"] = "random"
    batch_size: int = Field(64, ge=1)


def create_app(directory: str | Path, refresh_seconds: float = 1.0) -> FastAPI:
    """An app serving the gallery at `directory`."""
    service = Service.open(directory, refresh_seconds=refresh_seconds)
    lock = threading.Lock()  # one writer/reader of the service object at a time
    job: dict[str, Any] = {"thread": None, "report": None, "error": None}
    app = FastAPI(title="compatret", version="0.1.0", description="Retrieval with backward-compatible embeddings.")

    def guarded(fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            with lock:
                return fn(*args, **kwargs)
        except CompatretError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc

    @app.get("/health")
    def health() -> dict[str, Any]:
        gallery = service.gallery
        table_version = gallery.latest_version()
        return {"status": "ok", "serving": gallery.meta_at(table_version).serving.id, "rows": gallery.count(),
                "table_version": table_version, "snapshot_version": service.index.table_version}

    @app.post("/query")
    def query(req: QueryRequest) -> dict[str, Any]:
        if (req.texts is None) == (req.vectors is None):
            raise HTTPException(status_code=400, detail="give exactly one of texts or vectors")
        import numpy as np

        kwargs: dict[str, Any] = {"model": req.model, "k": req.k, "include_payload": req.payload}
        if req.vectors is not None:
            kwargs["vectors"] = np.asarray(req.vectors, dtype=np.float32)
        else:
            kwargs["texts"] = req.texts
        results = guarded(service.query, **kwargs)
        return {"results": [r.to_dict() for r in results]}

    @app.post("/items")
    def add(req: AddRequest) -> dict[str, Any]:
        items = [i.model_dump(exclude_none=True) for i in req.items]
        return {"added": guarded(service.add_items, items, progress=False)}

    @app.post("/items/delete")
    def delete(req: DeleteRequest) -> dict[str, Any]:
        return {"deleted": guarded(service.delete, req.ids)}

    @app.post("/upgrade")
    def upgrade(req: UpgradeRequest) -> dict[str, Any]:
        meta = guarded(service.upgrade, req.model)
        return {"serving": meta.serving.id}

    @app.get("/backfill")
    def backfill_status() -> dict[str, Any]:
        running = job["thread"] is not None and job["thread"].is_alive()
        with lock:
            by_version = service.rows_by_version()
            pending = pending_rows(service)
        return {"serving": service.meta.serving.id, "rows_by_version": by_version, "pending": len(pending.ids),
                "unembeddable": len(pending.unembeddable), "running": running, "last_report": job["report"],
                "last_error": job["error"]}

    @app.post("/backfill", status_code=202)
    def start_backfill(req: BackfillRequest) -> dict[str, Any]:
        if job["thread"] is not None and job["thread"].is_alive():
            raise HTTPException(status_code=409, detail="a backfill is already running")

        def run() -> None:
            worker = Service.open(directory)  # its own handle: queries keep the shared one
            try:
                job["report"] = backfill(worker, req.limit, req.fraction, req.order, req.batch_size, progress=False).to_dict()
                job["error"] = None
            except CompatretError as exc:
                job["error"] = str(exc)
            except Exception as exc:  # noqa: BLE001  a dead thread must still say why it died
                job["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"

        job["thread"] = threading.Thread(target=run, daemon=True)
        job["thread"].start()
        return {"started": True}

    return app
