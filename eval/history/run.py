"""`index history` on a gallery with many versions: worked out afresh vs read through its cache.

    python eval/history/run.py                   # 2,000 backfill-batch commits -> eval/history/results.{json,md}
    python eval/history/run.py --versions 500

A backfill writes one table version per batch (a 10M-row gallery at batch 64: 156,000), and
`index history` / `GET /history` describe every version. A 1,000-row vector gallery gets
`--versions` commits of the Lance operation a backfill batch commits (an Update; here of one
row's metadata, so that no model is needed), then `history()` is timed with no cache file (every version checked out)
and with the cache the first call leaves, three times each; LanceDB's `list_versions` alone is
timed too, as the floor a cache cannot go below. The cached and fresh results must be equal.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

os.environ.setdefault("LANCEDB_LOG", "error")

from compatret.core.config import index_home
from compatret.store.history import HistoryCache, grouped, history
from compatret.engine.service import Service
from compatret.core.transforms import normalize

HERE = Path(__file__).resolve().parent
ROWS, DIM = 1000, 32


def build(path: Path, versions: int) -> Service:
    """A vector gallery with `versions` Update commits, the operation of a backfill batch."""
    shutil.rmtree(path, ignore_errors=True)
    rng = np.random.default_rng(0)
    s = Service.create(path, dim=DIM, version_id="v1")
    ids = [str(i) for i in range(ROWS)]
    s.add_vectors(normalize(rng.normal(size=(ROWS, DIM))).astype(np.float32), ids=ids)
    with s.gallery.writing("benchmark: Update commits"):
        for k in tqdm(range(versions), desc="commits"):
            s.gallery.table.update(where=f"id = '{ids[k % ROWS]}'", values={"metadata": json.dumps({"touched": k})})
    return Service.open(path)


def timed(fn: Any, repeats: int = 3) -> tuple[float, Any]:
    """Median seconds of `repeats` calls, and the last call's result."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--versions", type=int, default=2000)
    args = ap.parse_args()
    path = index_home() / "history_bench" / "g"
    s = build(path, args.versions)
    cache = HistoryCache(path).file

    def fresh() -> list[dict[str, Any]]:
        cache.unlink(missing_ok=True)
        return history(Service.open(path).gallery)

    fresh_s, fresh_out = timed(fresh)
    history(Service.open(path).gallery)  # leaves the cache
    cached_s, cached_out = timed(lambda: history(Service.open(path).gallery))
    list_s, listed = timed(lambda: s.gallery.table.list_versions())
    results = {
        "command": f"python eval/history/run.py --versions {args.versions}",
        "table_versions": len(listed), "rows": ROWS, "commit": "Lance Update of one row's metadata",
        "fresh_seconds": round(fresh_s, 3), "cached_seconds": round(cached_s, 3), "list_versions_seconds": round(list_s, 3),
        "speedup": round(fresh_s / cached_s, 1), "cached_equals_fresh": cached_out == fresh_out,
        "grouped_entries": len(grouped(cached_out)), "cache_bytes": cache.stat().st_size,
        "machine": {"cpus": os.cpu_count()},
    }
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    md = (f"| table versions | history, no cache | history, cached | list_versions alone | speedup | cached = fresh |\n|---|---|---|---|---|---|\n"
          f"| {results['table_versions']:,} | {fresh_s:.2f} s | {cached_s:.2f} s | {list_s:.2f} s | {results['speedup']}x | "
          f"{results['cached_equals_fresh']} |\n")
    (HERE / "results.md").write_text(md)
    print(md)
    shutil.rmtree(path.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
