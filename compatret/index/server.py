"""HTTP service over one gallery (FastAPI): query, add, delete, upgrade, backfill, history,
rollback, health, and the web console at `/` (see `console`).

Safe to expose: API keys with read and write scopes (see `auth`), no server paths from
clients (images arrive as base64 bytes, models are named by id, alias or a folder name in the
operator's `models_dir`), validated requests with a body limit, and every refusal a 4xx with
a `detail` that says what was wrong.

Queries read a snapshot of the search index refreshed from the table at most every
`refresh_seconds`, in parallel with each other and with writes; model inference runs in a
bounded number of slots. Writes keep the gallery's one-writer discipline (its writer lock).
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from compatret.encoders import ALIASES
from compatret.errors import CompatretError
from compatret.evaluation.regression import gate_check, stored_gate
from compatret.index.auth import ApiKeys, Scope
from compatret.index.backfill import backfill, pending_counts
from compatret.index.backfill_job import PROBE_WAIT_S, BackfillJob
from compatret.index.console import CONSOLE_PREFIX, mount_console
from compatret.index.history import grouped, history, rollback
from compatret.index.overview import overview
from compatret.index.search_index import cache_problem
from compatret.index.service import Service
from compatret.versions import VERSION_FILE, confined

log = logging.getLogger("compatret.server")

MAX_BODY_BYTES = 16 * 2**20
MAX_QUERIES = 256
MAX_ITEMS = 1024
MAX_TEXT = 20_000  # characters
MAX_IMAGE_BASE64 = 8 * 2**20  # characters
MAX_K = 1000
MAX_DIM = 65_536

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
    model: ModelName | None = Field(None, description="A model id of the gallery's lineage, an alias, or a folder name in the server's models dir.")
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
    payloads: list[dict[str, Any]] | None = None


class QueryResponse(BaseModel):
    results: list[Hits]


class Health(BaseModel):
    status: str = Field(description="ok, or degraded: answering, with `problems` saying what is wrong (e.g. a cache that cannot be written)")
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
    for code, text in ((400, "refused: the detail says why"), (401, "no or unknown API key"), (403, "the key's scope does not allow this"),
                       (409, "conflicting state (e.g. a backfill already running)"), (413, "request body too large"),
                       (415, "a POST body that is not JSON"),
                       (503, "the serving model's endpoint no longer returns the registered model's vectors"))
}


OPEN_PATHS = ("/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/")
READ_ROUTES = {("POST", "/query"), ("GET", "/backfill"), ("GET", "/gallery"), ("GET", "/history")}


def needed_scope(method: str, path: str) -> Scope | None:
    """The scope a request needs: none for health, the API docs and the console's static files
    (they hold no data), read for queries and status, write for everything else (unknown routes included)."""
    method = "GET" if method == "HEAD" else method
    path = path.rstrip("/") or "/"
    if method == "GET" and (path in OPEN_PATHS or path.startswith(CONSOLE_PREFIX.rstrip("/"))):
        return None
    return "read" if (method, path) in READ_ROUTES else "write"


class KeyCheck:
    """ASGI middleware: the API key is checked before the body is read, so a request without a
    valid key costs no parsing; 401 (no or unknown key), 403 (read key, write route)."""

    def __init__(self, app: Any, keys: ApiKeys) -> None:
        self.app, self.keys = app, keys

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("method") == "POST" and not _json_body(scope):
            # a browser sends a cross-site form or text/plain POST without asking first; a JSON one it must ask for (CORS)
            await JSONResponse({"detail": "a POST must say Content-Type: application/json (send {} when there is nothing to say)"}, status_code=415)(scope, receive, send)
            return
        needed = needed_scope(scope.get("method", ""), scope.get("path", "")) if scope["type"] == "http" else None
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


SERVE_CONFIG_ENV = "COMPATRET_SERVE_CONFIG"


def app_from_env() -> FastAPI:
    """The app of one worker process of `compatret serve --workers N` (settings from the environment)."""
    import json
    import os

    cfg = json.loads(os.environ[SERVE_CONFIG_ENV])
    keys = ApiKeys.load(cfg.pop("api_key_file"))
    _exit_with_parent()
    return create_app(keys=keys, **cfg)


PARENT_GONE_GRACE_S = 5.0


def _exit_with_parent() -> None:
    """In a worker of `serve --workers N`: end when the parent ends, however it ends (SIGKILL too),
    or the orphan keeps answering on the port and a restart finds it taken.

    A thread waits on multiprocessing's sentinel of the parent, a pipe whose far end only the
    parent holds: the kernel closes it when the parent process dies, so this wakes at once, with no
    polling and on any POSIX system. prctl(PR_SET_PDEATHSIG) would be Linux only, fire when the
    parent *thread* that started the worker ends, and miss a parent that died before the call.
    The worker then gets SIGTERM (uvicorn's graceful stop: the socket closed, requests in hand
    answered) and, should that hang, exits PARENT_GONE_GRACE_S later. A single-process server
    (no multiprocessing parent) is left alone: its parent is the shell that started it."""
    import multiprocessing
    import multiprocessing.connection
    import os
    import signal
    import time

    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None:
        return

    def watch(sentinel: int) -> None:
        multiprocessing.connection.wait([sentinel])
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(PARENT_GONE_GRACE_S)
        os._exit(1)

    threading.Thread(target=watch, args=(parent.sentinel,), name="exit-with-parent", daemon=True).start()


def create_app(directory: str | Path, refresh_seconds: float = 1.0, keys: ApiKeys | None = None,
               models_dir: str | Path | None = None, max_body_bytes: int = MAX_BODY_BYTES, inference_slots: int = 2,
               fingerprint_minutes: float = 10.0) -> FastAPI:
    """An app serving the gallery at `directory`; with `keys`, every endpoint but /health needs one.
    A serving model behind an endpoint has its fingerprint checked every `fingerprint_minutes`."""
    service = Service.open(directory, refresh_seconds=refresh_seconds)
    service.inference = threading.BoundedSemaphore(max(1, inference_slots))
    watch = FingerprintWatch(service, fingerprint_minutes)
    app = FastAPI(title="compatret", version="0.1.0", description="Retrieval with backward-compatible embeddings.")
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    app.add_middleware(KeyCheck, keys=keys or ApiKeys())  # added last: runs first, before the body limit and any parsing
    _error_handlers(app)
    routes = _Routes(service, Path(directory), BackfillJob(directory), models_dir,
                     HTTPBearer(auto_error=False, description="An API key: `read` scope for queries and status, `write` for everything."), watch)
    _read_routes(app, routes)
    _write_routes(app, routes)
    mount_console(app)
    app.router.on_shutdown.append(watch.stop)
    return app


class FingerprintWatch:
    """For a serving model behind an endpoint: its fingerprint checked every `minutes` in a daemon
    thread; `drift` is the refusal line while the endpoint serves another model (None while it
    serves the registered one, or for local models)."""

    def __init__(self, service: Service, minutes: float) -> None:
        self.service = service
        self.minutes = minutes
        self.drift: str | None = None
        self.stopped = threading.Event()
        self.started = False
        self.ensure()

    def ensure(self) -> None:
        """Start the watch once the serving model is behind an endpoint (at start, or after an upgrade)."""
        from compatret.encoders.registry import is_endpoint_model

        source = self.service.meta.serving_source
        if self.started or self.minutes <= 0 or source is None or not is_endpoint_model(source):
            return
        self.started = True
        threading.Thread(target=self._run, args=(self.minutes * 60,), daemon=True, name="fingerprint-watch").start()

    def _run(self, every: float) -> None:
        while not self.stopped.wait(every):
            self.check()

    def stop(self) -> None:
        self.stopped.set()

    def check(self) -> None:
        from compatret.encoders.registry import check_endpoint

        try:
            check_endpoint(self.service.meta.serving_source, "serve queries embedded by it")
            self.drift = None
        except Exception as exc:  # noqa: BLE001  any failure (drift, an unreadable fingerprint, the endpoint down) is reported, and the watch goes on
            line = str(exc) if isinstance(exc, CompatretError) else f"fingerprint check failed: {exc.__class__.__name__}: {exc}"
            if line != self.drift:
                log.warning("%s", line, exc_info=not isinstance(exc, CompatretError))
            self.drift = line


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
        """Documents the key a route needs in the OpenAPI schema; KeyCheck enforces it (see needed_scope)."""
        bearer = self.bearer

        async def documented(_: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
            return None

        documented.__doc__ = f"needs a {needed} key"
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
        return {"status": "degraded" if problems else "ok", "serving": gallery.meta_at(table_version).serving.id, "rows": gallery.count(),
                "table_version": table_version, "snapshot_version": snapshot, "problems": problems}

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
        if req.vectors is None and req.model in (None, service.meta.serving.id) and r.watch.drift:  # the endpoint's model changed: its queries would be wrong
            raise HTTPException(status_code=503, detail=r.watch.drift)
        results = _refused(service.query, **kwargs)
        return JSONResponse({"results": [res.to_dict() for res in results]})  # already the documented shape: no re-validation

    @app.get("/backfill", response_model=BackfillStatus, responses=ERRORS, dependencies=[r.access("read")])
    def backfill_status() -> dict[str, Any]:
        running = r.job.running()  # read before the last report: a job that ends in between is reported finished, with its result
        counts = service.rows_by_version()
        pending, bare = pending_counts(service, counts)  # from the same counts: a poll never disagrees with itself
        last = r.job.last()
        return {"serving": service.meta.serving.id, "rows_by_version": counts, "pending": pending,
                "unembeddable": bare, "running": running, "last_report": last.get("report"), "last_error": last.get("error")}

    @app.get("/gallery", response_model=GalleryView, responses=ERRORS, dependencies=[r.access("read")])
    def gallery(request: Request) -> dict[str, Any]:
        return {**overview(service), "can_write": getattr(request.state, "key_scope", None) == "write"}

    @app.get("/history", response_model=list[HistoryEntry], responses=ERRORS, dependencies=[r.access("read")])
    def table_history(limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[dict[str, Any]]:
        """The newest `limit` entries, newest first; a backfill's batches are one entry."""
        return grouped(history(service))[::-1][:limit]


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
        req = req or BackfillRequest()
        if req.limit is not None and req.fraction is not None:
            raise HTTPException(400, "give limit or fraction, not both")

        def run() -> dict[str, Any]:
            worker = Service.open(r.directory)  # its own handle: queries keep the shared one
            return backfill(worker, req.limit, req.fraction, req.order, req.batch_size, progress=False,
                            should_stop=r.job.stop_requested).to_dict()

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
        meta = _refused(rollback, service, req.version)
        return {"restored": req.version, "serving": meta.serving.id, "table_version": service.gallery.version}
