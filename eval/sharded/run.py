"""A sharded gallery on Ray Serve against one gallery of the same rows, over HTTP.

    python eval/sharded/run.py --rows 20000000 --shards 4          # the bar: 20M x 128, IVF-PQ with re-rank
    python eval/sharded/run.py --rows 400000 --out /tmp/sharded    # a quick look at the same checks

Data: eval/scale's clustered float32 vectors (L2-normalised, a memory-mapped .npy under --work)
and its test queries. Keys of results.json, per shard count:
- recall_at_10: the sharded gallery's answers (IVF-PQ, re-ranked on the stored vectors: the
  kernel `--index ivfpq` builds on every shard) against exact search over all rows;
- qps_ratio: queries/s of the Ray Serve fan-out (`serve --engine ray`) over one gallery of the
  same rows with the same kernel served by `compatret serve`, both over HTTP, one client, in one
  run (on 2 cores the fan-out competes with the shards for them);
- upgrade_seconds, rollback_seconds: every shard's commit plus the snapshot;
- fanout: what each shard adds to a query (Serve RPC + merge), measured on small exact shards at
  1, 2, 4 and 8 shards on one node: the slope of the query time over the shard count.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("LANCEDB_LOG", "error")
HERE = Path(__file__).resolve().parent
K = 10


def _scale() -> Any:
    """eval/scale/run.py's data and helpers (one generator for both benchmarks)."""
    spec = importlib.util.spec_from_file_location("scale_run", HERE.parent / "scale" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build(work: Path, x_path: Path, rows: int, shards: int | None, ann: str, batch: int = 1_000_000) -> Path:
    """One gallery (shards None) or a sharded one of the first `rows` vectors, ids r<position> (built once)."""
    from compatret.engine.service import Service
    from compatret.engine.sharded import ShardedService

    name = f"one-{rows}" if shards is None else f"sharded-{shards}-{rows}"
    g = work / name
    if g.exists():
        return g
    x = np.load(x_path, mmap_mode="r")[:rows]
    made: Any = Service.create(g, dim=x.shape[1], version_id="v1", ann=ann) if shards is None else None
    if shards is not None:
        made = ShardedService.create(g, shards, dim=x.shape[1], version_id="v1", ann=ann)
    for s in range(0, rows, batch):
        made.add_vectors(np.ascontiguousarray(x[s : s + batch]), ids=np.char.add("r", np.arange(s, min(s + batch, rows)).astype(str)))
        log(f"{name}: {min(s + batch, rows)} rows")
    return g


def http_qps(url: str, queries: np.ndarray, seconds: float = 20.0) -> tuple[float, list[list[str]]]:
    """Queries/s of one client sending one query at a time, and the ids of the first pass."""
    import httpx

    c = httpx.Client(base_url=url, timeout=120)
    first = []
    for q in queries:  # the first pass: its answers, and a warm server
        r = c.post("/query", json={"vectors": [q.tolist()], "k": K})
        assert r.status_code == 200, r.text
        first.append(r.json()["results"][0]["ids"])
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        r = c.post("/query", json={"vectors": [queries[n % len(queries)].tolist()], "k": K})
        assert r.status_code == 200, r.text
        n += 1
    return n / (time.perf_counter() - t0), first


def serve_one(gallery: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "compatret", "serve", str(gallery), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    import httpx

    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    raise RuntimeError("compatret serve did not start")


def fanout(work: Path, counts: tuple[int, ...] = (1, 2, 4, 8), rows_per_shard: int = 2000) -> dict[str, Any]:
    """Per-query time through the Ray Serve fan-out at each shard count (small exact shards, so
    the search itself costs next to nothing); the slope is what one more shard costs."""
    from ray import serve

    from compatret.engine.sharded import ShardedService
    from compatret.server.ray_serve import ServeOptions, start
    from compatret.testing.ports import free_port

    rng = np.random.default_rng(1)
    q = rng.normal(size=(1, 16)).astype(np.float32)
    out: dict[str, Any] = {}
    for n in counts:
        g = work / f"fanout-{n}"
        if not g.exists():
            s = ShardedService.create(g, n, dim=16, version_id="v1", ann="flat")
            s.add_vectors(rng.normal(size=(rows_per_shard * n, 16)).astype(np.float32), ids=[f"f{i}" for i in range(rows_per_shard * n)])
        url = start(str(g), "127.0.0.1", free_port(), ServeOptions(cpus_per_replica=0.1), {})
        qps, _ = http_qps(url, q, seconds=10.0)
        out[str(n)] = {"ms_per_query": 1000 / qps}
        log(f"fan-out over {n} shards: {1000 / qps:.2f} ms per query")
        serve.shutdown()
    xs = np.array([int(n) for n in out], float)
    ys = np.array([v["ms_per_query"] for v in out.values()])
    slope, intercept = np.polyfit(xs, ys, 1)
    return {"by_shards": out, "ms_per_shard": float(slope), "ms_fixed": float(intercept), "rows_per_shard": rows_per_shard}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=20_000_000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--work", type=Path, default=Path("/tmp/compatret-sharded"))
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args()
    from ray import serve

    from compatret.engine.ray_cluster import RayOptions, connect
    from compatret.engine.sharded import ShardedService
    from compatret.server.ray_serve import ServeOptions, start
    from compatret.testing.ports import free_port

    scale = _scale()
    args.work.mkdir(parents=True, exist_ok=True)
    x_path, q_all, _ = scale.make_data(args.work, args.rows, args.dim)
    q = q_all[: args.queries]
    models = scale.model_folders(args.work, args.dim)
    one = build(args.work, x_path, args.rows, None, "ivfpq")
    sharded = build(args.work, x_path, args.rows, args.shards, "ivfpq")
    exact, _ = scale.exact_topk(np.load(x_path, mmap_mode="r")[: args.rows], q)

    connect(RayOptions())
    url = start(str(sharded), "127.0.0.1", free_port(), ServeOptions(cpus_per_replica=0.5), {})
    sharded_qps, found = http_qps(url, q)
    serve.shutdown()
    positions = [[int(i[1:]) for i in ids] for ids in found]
    recall = scale.recall(positions, exact)
    port = free_port()
    proc = serve_one(one, port)
    try:
        one_qps, _ = http_qps(f"http://127.0.0.1:{port}", q)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    log(f"recall@10 {recall:.4f}; {sharded_qps:.1f} q/s sharded vs {one_qps:.1f} q/s one gallery")

    s = ShardedService.open(sharded)
    before = s.snapshot.snapshot
    t0 = time.perf_counter()
    s.upgrade(str(models["v2-id"]))
    upgrade_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    s.rollback(before)
    rollback_s = time.perf_counter() - t0
    log(f"upgrade {upgrade_s:.3f} s, rollback {rollback_s:.3f} s over {args.shards} shards")

    result = {
        "rows": args.rows,
        "shards": args.shards,
        "dim": args.dim,
        "kernel": "ivfpq",
        "queries": len(q),
        "recall_at_10": recall,
        "qps_sharded": sharded_qps,
        "qps_one": one_qps,
        "qps_ratio": sharded_qps / one_qps,
        "upgrade_seconds": upgrade_s,
        "rollback_seconds": rollback_s,
        "fanout": fanout(args.work),
        "machine": f"{os.cpu_count()} cores",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "results.md").write_text(table(result))
    print(table(result))


def table(r: dict[str, Any]) -> str:
    f = r["fanout"]
    return "\n".join(
        [
            f"# Sharded gallery on Ray Serve (`python eval/sharded/run.py --rows {r['rows']} --shards {r['shards']} --queries {r['queries']}`)",
            "",
            f"{r['rows']:,} x {r['dim']} rows in {r['shards']} shards, {r['kernel']} with re-rank, {r['queries']} test queries, "
            f"{r['machine']}.",
            "",
            "| check | value | bar |",
            "|---|---:|---|",
            f"| recall@10 vs exact | {r['recall_at_10']:.4f} | >= 0.95 |",
            f"| queries/s, Ray Serve fan-out vs one gallery over HTTP | {r['qps_sharded']:.1f} vs {r['qps_one']:.1f} "
            f"= {r['qps_ratio']:.2f}x | >= 0.5x |",
            f"| upgrade of every shard + snapshot | {r['upgrade_seconds']:.3f} s | < 1 s |",
            f"| rollback of every shard + snapshot | {r['rollback_seconds']:.3f} s | < 1 s |",
            f"| fan-out cost per shard (Serve RPC + merge) | {f['ms_per_shard']:.2f} ms (+ {f['ms_fixed']:.2f} ms fixed) | measured |",
            "",
            "Fan-out, ms per query by shard count: "
            + ", ".join(f"{n}: {v['ms_per_query']:.2f}" for n, v in f["by_shards"].items()),
            "",
        ]
    )


if __name__ == "__main__":
    main()
