"""Adapters beyond the pairs of run.py: adapter + ADORE training where labels exist, and the O(1) checks at 1M rows.

    python eval/adapt/extras.py [--parts adapter_adore o1_1m]   # -> eval/adapt/extras.json (about 10 min on 2 cores)

- adapter_adore: MiniLM-L6 queries into the frozen L3 SciFact gallery through a query-direction
  affine adapter (`compatret adapt --direction query --kind affine --force`: a training start, not
  a serving choice), then ADORE from it with training/scifact_adore.toml, against the
  cross-architecture BCT row of eval/compat_text;
- o1_1m: `index upgrade` of a 1M-row gallery (random 384-d vectors under the L3 record, exact
  kernels) to that adapter's gallery-direction sibling, the one-time mapping of the group, and
  transform-plan queries against identity-plan queries (best of 5 x 100).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from compatret.core.config import dataset
from compatret.data.beir import BeirData, load_beir

HERE = Path(__file__).resolve().parent
ADORE_RECIPE = HERE.parents[1] / "training" / "scifact_adore.toml"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def adapter_adore(work: Path, data: BeirData) -> dict[str, Any]:
    """MiniLM-L6 queries into the frozen L3 gallery: first a query-direction linear adapter (what
    `compatret adapt DIR --model minilm-l6 --direction query --kind affine` writes), then ADORE
    from it (`compatret train retriever --recipe training/scifact_adore.toml --old minilm-l3
    --init ADAPTER`: the recipe's settings, trained on qrels/train.tsv). Compared with the
    cross-architecture BCT row of eval/compat_text, which trains L6 into the same gallery."""
    from compatret.adapt.build import AdaptSettings, adapt
    from compatret.engine.runs import build_gallery, evaluate_pair
    from compatret.train.text.config import config_from
    from compatret.train.text.trainer import LOG_FILE, train_retriever

    gallery = build_gallery("minilm-l3", work / "gallery-minilm-l3", data, progress=False)
    adapter = work / "query-adapter-minilm-l6-into-minilm-l3"
    if not (adapter / "version.json").exists():
        shutil.rmtree(adapter, ignore_errors=True)
        report = adapt(gallery, "minilm-l6", adapter, AdaptSettings(direction="query", kind="affine", force=True), progress=False)
        (work / "query-adapter.json").write_text(json.dumps(report, indent=2))
    report = json.loads((work / "query-adapter.json").read_text())
    start = evaluate_pair(str(adapter), gallery, data)
    log(f"adapter (query, affine, {report['sample']} pairs): new/old nDCG@10 {start['ndcg_at_10']:.4f}")
    cfg = config_from(ADORE_RECIPE, {"old": "minilm-l3", "init": str(adapter), "gallery": str(gallery),
                                     "out": str(work / "adore-from-query-adapter")})
    folder = train_retriever(cfg, progress=False)
    trained = evaluate_pair(str(folder), gallery, data)
    seconds = json.loads((folder / LOG_FILE).read_text())["train_seconds"]
    cross = json.loads((HERE.parent / "compat_text" / "results.json").read_text())["cross_arch"]["new_old"]
    log(f"adapter + ADORE: new/old nDCG@10 {trained['ndcg_at_10']:.4f} ({seconds / 60:.1f} min) vs cross-arch BCT {cross['ndcg_at_10']:.4f}")
    return {"adapter": start, "adapter_sample": report["sample"], "adapter_adore": trained, "train_seconds": seconds,
            "recipe": "training/scifact_adore.toml", "cross_arch_bct": cross}


def o1_checks(work: Path, model_dir: Path, rows: int = 1_000_000) -> dict[str, float]:
    """Upgrade a 1M-row gallery of L3-space vectors to the adapter; time the first query (which maps
    the group once) and transform-plan queries against identity-plan queries."""
    from compatret.engine.service import Service
    from compatret.core.transforms import LearnedMap, normalize

    g = work / "g1m"
    shutil.rmtree(g, ignore_errors=True)
    s = Service.create(g, model="minilm-l3", ann="flat")  # exact kernels: both plans do the same search work
    rng = np.random.default_rng(0)
    for start in range(0, rows, 250_000):
        s.add_vectors(normalize(rng.normal(size=(250_000, 384)).astype(np.float32)), batch_size=250_000)
    q = normalize(rng.normal(size=(100, 384)).astype(np.float32))
    s = Service.open(g)
    s.query(vectors=q[:1], k=10, model="minilm-l3")  # identity plan's kernel built outside the timing
    t0 = time.perf_counter()
    s.upgrade(str(model_dir))
    upgrade_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    s.query(vectors=q[:1], k=10)
    first_s = time.perf_counter() - t0
    transform = LearnedMap.load(next((model_dir / "transforms").glob("*.npz")))
    block = normalize(rng.normal(size=(rows, 384)).astype(np.float32))
    t0 = time.perf_counter()
    transform(block)
    map_s = time.perf_counter() - t0
    del block

    def best(model: str | None) -> float:
        times = []
        for _ in range(5):
            t = time.perf_counter()
            s.query(vectors=q, k=10, model=model)
            times.append(time.perf_counter() - t)
        return min(times)

    identity_s, transform_s = best("minilm-l3"), best(None)
    out = {"rows": float(rows), "upgrade_s": upgrade_s, "map_group_s": map_s, "first_query_maps_group_s": first_s,
           "identity_100q_s": identity_s, "transform_100q_s": transform_s, "ratio": transform_s / identity_s}
    log(f"1M rows: upgrade {upgrade_s * 1000:.0f} ms, mapping the group {map_s:.1f} s, first query (maps it, builds the kernel) {first_s:.1f} s, "
        f"transform vs identity plan {transform_s * 1000:.1f} vs {identity_s * 1000:.1f} ms ({out['ratio']:.2f}x)")
    shutil.rmtree(g, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=HERE.parents[1] / "runs" / "adapt-extras")
    parts = ["adapter_adore", "o1_1m"]
    ap.add_argument("--parts", nargs="*", default=parts, choices=parts)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    path = HERE / "extras.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    results["command"] = "python eval/adapt/extras.py"
    if "adapter_adore" in args.parts:
        results["adapter_adore"] = adapter_adore(args.work, load_beir(dataset("scifact"), splits=("test",)))
    if "o1_1m" in args.parts:
        from compatret.adapt.build import AdaptSettings, adapt
        from compatret.engine.runs import build_gallery

        model_dir = args.work / "adapter-minilm-l3-to-minilm-l6"
        if not (model_dir / "encoder.json").exists():
            shutil.rmtree(model_dir, ignore_errors=True)
            gallery = build_gallery("minilm-l3", args.work / "gallery-minilm-l3", load_beir(dataset("scifact"), splits=("test",)), progress=False)
            adapt(gallery, "minilm-l6", model_dir, AdaptSettings(force=True), progress=False)
        results["o1_1m"] = o1_checks(args.work, model_dir)
    path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
