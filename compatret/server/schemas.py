"""The HTTP API's request and response bodies, with their limits."""

from __future__ import annotations

import base64
import binascii
import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

MAX_BODY_BYTES = 16 * 2**20
MAX_QUERIES = 256
MAX_ITEMS = 1024
MAX_TEXT = 20_000  # characters
MAX_K = 1000
MAX_DIM = 65_536
MAX_IMAGE_BASE64 = 8 * 2**20  # characters

ModelName = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")]
Text = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT)]
ImageBase64 = Annotated[str, StringConstraints(min_length=1, max_length=MAX_IMAGE_BASE64)]
RowId = Annotated[str, StringConstraints(min_length=1, max_length=512)]


def _image_bytes(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not valid base64") from exc


class Strict(BaseModel):
    """Unknown fields refused; no lax coercion (`"0"` or `true` is not an integer)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class QueryRequest(Strict):
    """Exactly one of texts, images_base64 or vectors (rows of the query model's dim)."""

    texts: list[Text] | None = Field(None, min_length=1, max_length=MAX_QUERIES)
    images_base64: list[ImageBase64] | None = Field(None, min_length=1, max_length=MAX_QUERIES)
    vectors: list[list[float]] | None = Field(None, min_length=1, max_length=MAX_QUERIES)
    k: int = Field(10, ge=1, le=MAX_K)
    model: ModelName | None = Field(
        None, description="A model id of the gallery's lineage, an alias, or a folder name in the server's models dir."
    )
    payload: bool = False

    @field_validator("images_base64")
    @classmethod
    def _decodable(cls, v: list[str] | None) -> list[str] | None:
        for s in v or []:
            _image_bytes(s)
        return v

    @field_validator("vectors")
    @classmethod
    def _finite_rectangular(cls, v: list[list[float]] | None) -> list[list[float]] | None:
        if v is None:
            return v
        dim = len(v[0])
        if not 1 <= dim <= MAX_DIM:
            raise ValueError(f"each vector needs 1..{MAX_DIM} numbers")
        for n, row in enumerate(v):
            if len(row) != dim:
                raise ValueError(f"vector {n} has {len(row)} numbers, vector 0 has {dim}")
            if not all(math.isfinite(x) for x in row):
                raise ValueError(f"vector {n} contains NaN or infinity")
            if not any(row):
                raise ValueError(f"vector {n} is all zeros")
        return v

    @model_validator(mode="after")
    def _one_kind(self) -> QueryRequest:
        if sum(x is not None for x in (self.texts, self.images_base64, self.vectors)) != 1:
            raise ValueError("give exactly one of texts, images_base64 or vectors")
        return self


class Item(Strict):
    id: RowId | None = None
    title: Annotated[str, StringConstraints(max_length=MAX_TEXT)] | None = None
    text: Annotated[str, StringConstraints(max_length=MAX_TEXT)] | None = None
    image_base64: ImageBase64 | None = Field(None, description="The image file's bytes, base64-encoded (image galleries).")
    metadata: dict[str, Any] | None = None

    @field_validator("image_base64")
    @classmethod
    def _decodable(cls, v: str | None) -> str | None:
        if v is not None:
            _image_bytes(v)
        return v


class AddRequest(Strict):
    items: list[Item] = Field(min_length=1, max_length=MAX_ITEMS)


class DeleteRequest(Strict):
    ids: list[RowId] = Field(min_length=1, max_length=10_000)


class UpgradeRequest(Strict):
    model: ModelName
    gate: bool = False  # check first on the queries `compatret index gate` stored beside the gallery
    max_drop: float = Field(0.005, ge=0.0, le=1.0)
    max_flips: float = Field(0.05, ge=0.0, le=1.0)


class RollbackRequest(Strict):
    version: int = Field(ge=1, description="The table version to restore (see GET /history).")


class BackfillRequest(Strict):
    limit: int | None = Field(None, ge=0)
    fraction: float | None = Field(None, ge=0.0, le=1.0)
    order: Literal["auto", "random", "uncertainty"] = "auto"
    batch_size: int = Field(64, ge=1, le=4096)


class Hits(BaseModel):
    ids: list[str]
    scores: list[float]
    table_version: int
    snapshot: int | None = Field(None, description="a sharded gallery's: the published snapshot every shard answered from")
    payloads: list[dict[str, Any]] | None = None


class QueryResponse(BaseModel):
    results: list[Hits]


class Health(BaseModel):
    status: str = Field(
        description="ok, or degraded: answering, with `problems` saying what is wrong (e.g. a cache that cannot be written)"
    )
    serving: str
    rows: int
    table_version: int
    snapshot_version: int
    problems: list[str] = []


class BackfillStatus(BaseModel):
    serving: str
    rows_by_version: dict[str, int]
    pending: int
    unembeddable: int
    running: bool
    last_report: dict[str, Any] | None
    last_error: str | None


class LineageEntry(BaseModel):
    id: str
    dim: int
    rule: str
    method: str | None
    rows: int
    serving: bool


class GalleryView(BaseModel):
    rows: int
    rows_by_version: dict[str, int]
    dim: int
    metric: str
    modality: str
    serving: str
    lineage: list[LineageEntry]
    query_models: list[str]
    kernel: str
    ann: str
    table_version: int
    disk_bytes: int
    can_write: bool


class HistoryEntry(BaseModel):
    version: int
    to_version: int | None = None
    batches: int | None = None
    time: str
    rows: int
    serving: str | None
    change: str


class ErrorBody(BaseModel):
    detail: Any


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (400, "refused: the detail says why"),
        (401, "no or unknown API key"),
        (403, "the key's scope does not allow this"),
        (409, "conflicting state (e.g. a backfill already running)"),
        (413, "request body too large"),
        (415, "a POST body that is not JSON"),
        (503, "the serving model's endpoint no longer returns the registered model's vectors"),
    )
}
