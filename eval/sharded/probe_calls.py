"""Where a fanned-out query's time goes: one shard's handle call, every shard's calls in flight
at once, and the HTTP hops, on a small sharded gallery (search costs about nothing there).

    python eval/sharded/probe_calls.py --rows 40000 --shards 4    # prints ms per query of each part
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("LANCEDB_LOG", "error")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=40_000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--work", type=Path, default=Path("/tmp/compatret-probe-calls"))
    args = ap.parse_args()

    import httpx
    from ray import serve

    from compatret.core.transforms import normalize
    from compatret.engine.ray_cluster import RayOptions, connect
    from compatret.engine.sharded import ShardedService
    from compatret.server.ray_serve import ServeOptions, shard_app, start
    from compatret.testing.ports import free_port

    root = args.work / f"sharded-{args.shards}-{args.rows}"
    if not root.exists():
        x = normalize(np.random.default_rng(0).normal(size=(args.rows, 128)).astype(np.float32))
        ShardedService.create(root, args.shards, dim=128, version_id="v1").add_vectors(x, ids=[f"r{i}" for i in range(args.rows)])
    q = normalize(np.random.default_rng(1).normal(size=(50, 128)).astype(np.float32))
    connect(RayOptions())
    url = start(str(root), "127.0.0.1", free_port(), ServeOptions(replicas=1, cpus_per_replica=0.25), {"refresh_seconds": 1.0})
    snap = ShardedService.open(root).snapshot
    handles = [serve.get_deployment_handle("shard", app_name=shard_app(i)) for i in range(args.shards)]
    for h, v in zip(handles, snap.versions):
        h.search.remote(q[:1], None, 10, False, v).result()
    for n in sorted({1, args.shards}):
        t = time.perf_counter()
        for i in range(len(q)):
            calls = [h.search.remote(q[i : i + 1], None, 10, False, v) for h, v in list(zip(handles, snap.versions))[:n]]
            [c.result() for c in calls]
        print(f"{n} shard call(s) in flight: {(time.perf_counter() - t) / len(q) * 1000:.2f} ms per query", flush=True)
    c = httpx.Client(base_url=url, timeout=60)
    c.get("/health").raise_for_status()
    t = time.perf_counter()
    for _ in range(len(q)):
        c.get("/health").raise_for_status()
    print(f"GET /health through the proxy and ingress: {(time.perf_counter() - t) / len(q) * 1000:.2f} ms", flush=True)
    t = time.perf_counter()
    for i in range(len(q)):
        c.post("/query", json={"vectors": q[i : i + 1].tolist(), "k": 10}).raise_for_status()
    print(f"POST /query, fanned out: {(time.perf_counter() - t) / len(q) * 1000:.2f} ms", flush=True)
    serve.shutdown()


if __name__ == "__main__":
    main()
