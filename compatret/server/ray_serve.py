"""`compatret serve DIR --engine ray`: a sharded gallery on Ray Serve.

One Serve application per shard (deployment `shard-NNN`, R replicas, each holding that shard's
search kernels) and one ingress application: the same FastAPI app as `compatret serve` (keys
and scopes, validation, console, OpenAPI), whose gallery object embeds each query once and
fans it out to every shard at the versions of one published snapshot, then merges the top-k
by score. A shard that fails (a replica killed under it) is asked again, up to `retries`
times, while Serve replaces the replica; a shard that cannot answer within the deadline makes
the query a 503 naming it: an answer is never silently partial.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from compatret.core.errors import CompatretError, Unavailable
from compatret.engine.results import QueryResult
from compatret.engine.service import Service
from compatret.engine.sharded import ShardedService, shard_dir
from compatret.store.snapshots import Snapshot

INGRESS = "compatret"
log = logging.getLogger(__name__)


def shard_app(i: int) -> str:
    return f"compatret-shard-{i:03d}"


@dataclass(frozen=True)
class ServeOptions:
    replicas: int = 1
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0
    deadline_s: float = 10.0  # a shard that has not answered by then makes the query a 503
    retries: int = 3  # asks of a shard whose replica failed, while Serve replaces it
    kernel: str = "auto"


class ShardSearcher:
    """A replica of one shard: its gallery and kernels, searched at the version a snapshot names."""

    def __init__(self, path: str, kernel: str) -> None:
        os.environ.setdefault("LANCEDB_LOG", "error")
        self.service = Service.open(path, kernel)
        if self.service.count():  # ready means searchable: the kernel is built (or loaded) before Serve sends queries
            self.service.query(vectors=np.ones((1, self.service.meta.serving.dim), np.float32), k=1)

    def search(self, q: np.ndarray, model: str | None, k: int, include_payload: bool, version: int) -> list[QueryResult]:
        return self.service.query(vectors=q, model=model, k=k, include_payload=include_payload, at_version=version)

    def pid(self) -> int:
        """This replica's process (tests kill it)."""
        return os.getpid()


class FannedOut(ShardedService):
    """The ingress's gallery: writes as a ShardedService makes them; each shard searched by its deployment."""

    def __init__(self, base: ShardedService, handles: list[Any], options: ServeOptions) -> None:
        super().__init__(base.root, base.shards, base.log)
        self.handles = handles
        self.options = options

    def search_shards(self, q: np.ndarray, model: str | None, k: int, include_payload: bool, snap: Snapshot) -> list[list[QueryResult]]:
        asks = [(q, model, k, include_payload, v) for v in snap.versions]
        deadline = time.monotonic() + self.options.deadline_s  # one for the whole query, every shard within it
        calls = [h.search.remote(*a) for h, a in zip(self.handles, asks)]  # all in flight at once
        return [self._answer(i, call, asks[i], deadline) for i, call in enumerate(calls)]

    def _answer(self, i: int, call: Any, ask: tuple[Any, ...], deadline: float) -> list[QueryResult]:
        from ray.exceptions import ActorUnavailableError, RayActorError

        for attempt in range(self.options.retries + 1):
            try:
                return list(call.result(timeout_s=max(deadline - time.monotonic(), 0.001)))
            except CompatretError:
                raise
            except TimeoutError as exc:
                raise Unavailable(f"shard {i} did not answer within {self.options.deadline_s:g} s: no partial answer is given") from exc
            except (RayActorError, ActorUnavailableError) as exc:  # its replica died: Serve replaces it, ask again
                if attempt == self.options.retries or time.monotonic() >= deadline:
                    raise Unavailable(
                        f"shard {i} failed {attempt + 1} times ({exc.__class__.__name__}): no partial answer is given"
                    ) from exc
                log.info("shard %d: %s; asking again", i, exc.__class__.__name__)
                time.sleep(min(0.2 * (attempt + 1), max(deadline - time.monotonic(), 0)))
                call = self.handles[i].search.remote(*ask)
        raise AssertionError("unreachable")


def ingress_builder(directory: str, app_settings: dict[str, Any], options: ServeOptions, shards: int) -> Callable[[], Any]:
    """What the ingress replica runs to build its app (in its own process, where the handles live)."""

    def build() -> Any:
        from ray import serve

        from compatret.server.app import create_app

        os.environ.setdefault("LANCEDB_LOG", "error")
        handles = [serve.get_deployment_handle("shard", app_name=shard_app(i)) for i in range(shards)]
        service = FannedOut(ShardedService.open(directory), handles, options)
        return create_app(directory, service=service, **app_settings)

    return build


def start(directory: str, host: str, port: int, options: ServeOptions, app_settings: dict[str, Any]) -> str:
    """Deploy the shard applications, then the ingress on host:port; the URL it answers on."""
    from ray import serve

    base = ShardedService.open(directory)
    n = base.snapshot.shards
    serve.start(http_options={"host": host, "port": port})
    actor = {"num_cpus": options.cpus_per_replica, "num_gpus": options.gpus_per_replica}
    for i in range(n):
        shard = serve.deployment(
            ShardSearcher,
            name="shard",
            num_replicas=options.replicas,
            ray_actor_options=actor,
            health_check_period_s=1.0,  # a dead replica is noticed and replaced in seconds
            health_check_timeout_s=10.0,
        )
        serve.run(shard.bind(str(shard_dir(base.root, i)), options.kernel), name=shard_app(i), route_prefix=None)  # type: ignore[attr-defined]  # serve.deployment(cls, ...) is typed as a decorator factory; called on a class it returns the Deployment
    ingress = serve.deployment(serve.ingress(ingress_builder(str(base.root), app_settings, options, n))(), name="ingress")
    serve.run(ingress.options(ray_actor_options={"num_cpus": 0}).bind(), name=INGRESS, route_prefix="/")  # type: ignore[attr-defined]  # as above
    return f"http://{host}:{port}"
