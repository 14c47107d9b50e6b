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

import logging
import threading
from pathlib import Path

from fastapi import FastAPI
from fastapi.security import HTTPBearer

from compatret.core.logs import configure_logging
from compatret.engine.service import Service
from compatret.engine.sharded import ShardedService, open_gallery
from compatret.server.auth import ApiKeys
from compatret.server.console import mount_console
from compatret.server.context import RouteContext, error_handlers
from compatret.server.fingerprint import FingerprintWatch
from compatret.server.jobs import BackfillJob
from compatret.server.middleware import BodyLimit, KeyCheck
from compatret.server.routes import gallery, items, query, rollout
from compatret.server.schemas import MAX_BODY_BYTES

log = logging.getLogger(__name__)


SERVE_CONFIG_ENV = "COMPATRET_SERVE_CONFIG"


def app_from_env() -> FastAPI:
    """The app of one worker process of `compatret serve --workers N` (settings from the environment)."""
    import json
    import os

    configure_logging()  # the level the `serve` command was given, through $COMPATRET_LOG
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


def create_app(
    directory: str | Path,
    refresh_seconds: float = 1.0,
    keys: ApiKeys | None = None,
    models_dir: str | Path | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    inference_slots: int = 2,
    fingerprint_minutes: float = 10.0,
    service: Service | ShardedService | None = None,
) -> FastAPI:
    """An app serving the gallery at `directory`; with `keys`, every endpoint but /health needs one.
    A serving model behind an endpoint has its fingerprint checked every `fingerprint_minutes`.
    `service`: the gallery object to serve, when not the one opened here (Ray Serve's fan-out)."""
    service = service if service is not None else open_gallery(directory, refresh_seconds=refresh_seconds)
    encoding = service.shards[0] if isinstance(service, ShardedService) else service  # a sharded gallery embeds queries once
    encoding.inference = threading.BoundedSemaphore(max(1, inference_slots))
    watch = FingerprintWatch(service, fingerprint_minutes)
    app = FastAPI(title="compatret", version="0.1.0", description="Retrieval with backward-compatible embeddings.")
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    app.add_middleware(KeyCheck, keys=keys or ApiKeys(), router=app.router)  # added last: runs first, before the body limit and any parsing
    error_handlers(app)
    routes = RouteContext(
        service,
        Path(directory),
        BackfillJob(directory),
        models_dir,
        HTTPBearer(auto_error=False, description="An API key: `read` scope for queries and status, `write` for everything."),
        watch,
    )
    for resource in (gallery, query, items, rollout):
        resource.add_routes(app, routes)
    mount_console(app)
    app.router.on_shutdown.append(watch.stop)
    return app
