"""Search throughput and upgrade cost: compatret's query path vs raw faiss vs LanceDB's own search.

    python eval/search_bench/run.py            # writes eval/search_bench/results.{json,md}

Synthetic: 100,000 x 384 clustered unit vectors. SciFact: its whole corpus (5,183 abstracts)
embedded with MiniLM-L6, queried by its first 1,000 claims. 1,000 queries, k = 10, best of 5
runs each (LanceDB: one run). Upgrade: `upgrade` on a 1,000,000-vector gallery, beside the time a full backfill
would take at this machine's measured MiniLM-L6 encoding rate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("LANCEDB_LOG", "error")

from compatret import Compat, ModelVersion  # noqa: E402
from compatret.core.config import dataset
from compatret.encoders import load_encoder  # noqa: E402
from compatret.engine.service import Service
from compatret.core.transforms import normalize

HERE = Path(__file__).parent
K = 10
N_QUERIES = 1000


def best_of(fn, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def clustered(n: int, d: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, d))
    x = centers[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, d))
    return normalize(x.astype(np.float32))


def compare(name: str, gallery: np.ndarray, queries: np.ndarray, work: Path) -> dict[str, float]:
    """Time the three search paths over the same vectors and queries."""
    import faiss

    print(f"[{name}] {len(gallery)} x {gallery.shape[1]}, {len(queries)} queries", flush=True)
    service = Service.create(work / name, dim=gallery.shape[1], version_id=f"{name}-v1")
    service.add_vectors(gallery, ids=[str(i) for i in range(len(gallery))])
    service = Service.open(work / name)
    service.query(vectors=queries[:1], k=K)  # load the search index once, as a server would

    raw = faiss.IndexFlatIP(gallery.shape[1])
    raw.add(gallery)
    compatret_s = best_of(lambda: service.query(vectors=queries, k=K))
    faiss_s = best_of(lambda: raw.search(queries, K))

    _, exact = raw.search(queries, K)
    ours = service.query(vectors=queries, k=K)
    recall = float(np.mean([len({int(i) for i in r.ids} & set(e)) / K for r, e in zip(ours, exact)]))

    table = service.gallery.table

    def lancedb_each() -> None:
        for q in queries:
            table.search(q).metric("dot").limit(K).select(["id"]).to_arrow()

    lancedb_s = best_of(lancedb_each, runs=1)
    print(f"[{name}] compatret {compatret_s:.3f}s faiss {faiss_s:.3f}s lancedb {lancedb_s:.3f}s recall {recall:.4f}", flush=True)
    return {"compatret_s": compatret_s, "faiss_s": faiss_s, "lancedb_s": lancedb_s, "recall_at_10": recall}


def scifact_vectors(cache: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """MiniLM-L6 vectors of the SciFact corpus and queries (cached), and the encoding rate (docs/s)."""
    root = dataset("scifact")
    docs = [json.loads(line) for line in (root / "corpus.jsonl").open()]
    queries = [json.loads(line)["text"] for line in (root / "queries.jsonl").open()][:N_QUERIES]
    enc = load_encoder("minilm-l6")
    sample = docs[:1000]
    t0 = time.perf_counter()
    enc.encode_items(sample, batch_size=64)
    rate = len(sample) / (time.perf_counter() - t0)
    if (cache / "scifact_docs.npy").exists():
        d = np.load(cache / "scifact_docs.npy")
    else:
        d = enc.encode_items(docs, batch_size=64, progress=True)
        np.save(cache / "scifact_docs.npy", d)
    q = enc.encode_queries(queries, batch_size=64)
    return d, q, rate


def upgrade_1m(work: Path) -> dict[str, float]:
    """Build a 1M-vector gallery, then time opening it and upgrading it (in process and via the CLI)."""
    n, d = 1_000_000, 384
    v1 = ModelVersion("big-v1", d, "vector")
    v2 = ModelVersion("big-v2", d + 64, "vector", parent=v1, compat=Compat.prefix(d), method="bt2")
    for v in (v1, v2):
        (work / v.id).mkdir()
        v.save(work / v.id)
    service = Service.create(work / "big", model=str(work / "big-v1"))
    rng = np.random.default_rng(1)
    for s in range(0, n, 200_000):
        service.add_vectors(normalize(rng.normal(size=(200_000, d)).astype(np.float32)))
    print(f"[upgrade] gallery of {service.gallery.count()} rows built", flush=True)
    t0 = time.perf_counter()
    Service.open(work / "big").upgrade(str(work / "big-v2"))
    in_process = time.perf_counter() - t0
    v3 = ModelVersion("big-v3", d + 64, "vector", parent=v2, compat=Compat.identity(), method="bct")
    (work / v3.id).mkdir()
    v3.save(work / v3.id)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "compatret", "index", "upgrade", str(work / "big"), "--model", str(work / "big-v3"), "--json"],
                   check=True, capture_output=True)
    cli = time.perf_counter() - t0
    return {"rows": float(n), "upgrade_s": in_process, "cli_wall_s": cli}


def main() -> None:
    cache = HERE.parents[1] / ".cache"
    cache.mkdir(exist_ok=True)
    results: dict = {}
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        work = Path(tmp)
        gal = clustered(100_000, 384, 1000, seed=0)
        qs = clustered(N_QUERIES, 384, 1000, seed=0)  # same centers, fresh noise
        qs = normalize(qs + 0.05 * np.random.default_rng(7).normal(size=qs.shape).astype(np.float32))
        results["synthetic"] = compare("synthetic", gal, qs, work)
        docs, queries, rate = scifact_vectors(cache)
        results["scifact"] = compare("scifact", docs, queries, work)
        up = upgrade_1m(work)
    results["upgrade_1m_s"] = up["upgrade_s"]
    results["upgrade_1m_cli_wall_s"] = up["cli_wall_s"]
    results["minilm_l6_docs_per_s"] = rate
    results["full_backfill_estimate_s"] = 1_000_000 / rate
    results["machine"] = {"cpus": os.cpu_count(), "faiss_threads": __import__("faiss").omp_get_max_threads(),
                          "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS")}
    (HERE / "results.json").write_text(json.dumps(results, indent=2))
    rows = ["| data | rows | compatret (s) | raw faiss (s) | ratio | LanceDB native (s) | speed-up vs LanceDB | recall@10 |",
            "|---|---|---|---|---|---|---|---|"]
    for name, n in (("synthetic", 100_000), ("scifact", len(docs))):
        r = results[name]
        rows.append(f"| {name} | {n:,} | {r['compatret_s']:.3f} | {r['faiss_s']:.3f} | {r['compatret_s'] / r['faiss_s']:.2f}x | "
                    f"{r['lancedb_s']:.2f} | {r['lancedb_s'] / r['compatret_s']:.0f}x | {r['recall_at_10']:.4f} |")
    rows += ["", f"Upgrade of a 1,000,000-vector gallery: {results['upgrade_1m_s'] * 1000:.1f} ms in process "
             f"({results['upgrade_1m_cli_wall_s']:.2f} s for the whole `compatret index upgrade` command, interpreter start included); "
             f"a full backfill with MiniLM-L6 at the measured {rate:.0f} docs/s would take {results['full_backfill_estimate_s'] / 3600:.1f} h."]
    (HERE / "results.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
