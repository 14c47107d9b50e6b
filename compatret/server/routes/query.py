"""POST /query: top-k for texts, images or vectors, in any model the gallery's lineage allows."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse

from compatret.server.context import RouteContext, refused
from compatret.server.schemas import (
    ERRORS,
    QueryRequest,
    QueryResponse,
    _image_bytes,
)


def add_routes(app: FastAPI, r: RouteContext) -> None:
    service = r.service

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
        results = refused(r.gallery.query, **kwargs)
        return JSONResponse({"results": [res.to_dict() for res in results]})  # already the documented shape: no re-validation
