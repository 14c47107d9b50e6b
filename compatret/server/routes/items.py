"""POST /items and /items/delete: rows in and out, through the engine's checks."""

from __future__ import annotations

from fastapi import FastAPI, HTTPException

from compatret.server.context import RouteContext, refused
from compatret.server.schemas import (
    ERRORS,
    AddRequest,
    DeleteRequest,
    _image_bytes,
)


def add_routes(app: FastAPI, r: RouteContext) -> None:
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
        return {"added": refused(r.gallery.add, items=items)}

    @app.post("/items/delete", responses=ERRORS, dependencies=[r.access("write")])
    def delete(req: DeleteRequest) -> dict[str, int]:
        return {"deleted": refused(r.gallery.delete, req.ids)}
