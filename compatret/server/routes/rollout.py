"""The rollout of a new model: /upgrade (gated or not) and the background /backfill job."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException

import compatret
from compatret.engine.gate import gate_check, stored_gate
from compatret.engine.sharded import ShardedService
from compatret.server.context import RouteContext, refused
from compatret.server.schemas import (
    ERRORS,
    BackfillRequest,
    BackfillStatus,
    UpgradeRequest,
)
from compatret.store.pending import pending_counts


def add_routes(app: FastAPI, r: RouteContext) -> None:
    service = r.service

    @app.post("/upgrade", responses=ERRORS, dependencies=[r.access("write")])
    def upgrade(req: UpgradeRequest) -> dict[str, Any]:
        spec = r.model_spec(req.model, for_upgrade=True)
        gate = None
        if req.gate:
            queries, qrels = refused(stored_gate, r.directory)
            gate = refused(gate_check, r.directory, spec, queries, qrels, req.max_drop, req.max_flips)
        meta = refused(r.gallery.upgrade, spec, gate=gate)
        r.watch.ensure()
        return {"serving": meta.serving.id, "gate": gate}

    @app.get("/backfill", response_model=BackfillStatus, responses=ERRORS, dependencies=[r.access("read")])
    def backfill_status() -> dict[str, Any]:
        running = r.job.running()  # read before the last report: a job that ends in between is reported finished, with its result
        counts = service.rows_by_version()
        if isinstance(service, ShardedService):
            each = [pending_counts(s.gallery, s.rows_by_version()) for s in service.shards]
            pending, bare = sum(p for p, _ in each), sum(b for _, b in each)
        else:
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

    @app.post("/backfill", status_code=202, responses=ERRORS, dependencies=[r.access("write")])
    def start_backfill(req: BackfillRequest | None = None) -> dict[str, bool]:
        req = req or BackfillRequest.model_validate({})
        if req.limit is not None and req.fraction is not None:
            raise HTTPException(400, "give limit or fraction, not both")

        def run() -> dict[str, Any]:
            worker = compatret.open(r.directory)  # its own handle: queries keep the shared one
            return worker.backfill(req.limit, req.fraction, req.order, req.batch_size, should_stop=r.job.stop_requested).to_dict()

        if not r.job.start(run):
            raise HTTPException(status_code=409, detail="a backfill is already running")
        return {"started": True}

    @app.post("/backfill/stop", status_code=202, responses=ERRORS, dependencies=[r.access("write")])
    def stop_backfill() -> dict[str, bool]:
        """Ask the running backfill to stop after the batch in hand (what it committed stays; a new start resumes)."""
        if not r.job.request_stop():
            raise HTTPException(status_code=409, detail="no backfill is running")
        return {"stopping": True}
