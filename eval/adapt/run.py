"""Upgrading to a model you did not train (issue 14): fitted adapters on SciFact, both ways.

    python eval/adapt/run.py            # -> eval/adapt/results.{json,md} and backfill_curve.png (about 20 min on 2 cores)

Models: paraphrase-MiniLM-L3-v2 (`minilm-l3`, ONNX) and all-MiniLM-L6-v2 (`minilm-l6`), both
384-d and offline. For each direction (a gallery of L3 vectors moving to L6, and the reverse):
- old_old: the gallery's model on its own vectors; new_new: the new model on a gallery it embedded;
- kinds: `fit_adapters` (what `compatret adapt` runs) with --direction auto --kind auto and its
  default sample (every row, within 150 s of embedding by NEW: about 3,000 of the 5,183 rows for
  MiniLM-L6, all of them for the ONNX L3): every kind x direction, chosen on a fifth of the
  gallery's own documents held aside (never on queries) and fitted again on all pairs; each
  scored here on the SciFact test queries (new_old);
- chosen: what `compatret adapt DIR --model NEW --out M` picks by default (direction gallery,
  --kind auto), written as a model folder, accepted by `index upgrade` and evaluated through
  the gallery (the real query path: transform plan, kernels);
- L3 -> L6 only: the backfill curve from that adapter (0 %) to native L6 (100 %), with
  `index backfill --order uncertainty` (and `random` for contrast).
Then adapter + training where labels exist (`adapter_adore`): MiniLM-L6 into the frozen L3
gallery through a query-direction affine adapter, then ADORE from it with the
training/scifact_adore.toml recipe, against eval/compat_text's cross-architecture BCT row.
Then the O(1) checks at 1M rows (random 384-d vectors under the L3 record, exact kernels so both
plans do the same search work): `index upgrade` to the adapter model, the one-time mapping of
the 1M x 384 group (the map alone, and the first query that maps it and builds its kernel), and
transform-plan queries against identity-plan queries (best of 5 x 100 queries).
All scores: nDCG@10, MRR@10, Recall@100 by ranx on qrels/test.tsv (300 queries).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from compatret.config import dataset
from compatret.data.beir import BeirData, load_beir
from compatret.evaluation.retrieval import build_gallery, evaluate_pair, score_run

HERE = Path(__file__).resolve().parent
ADORE_RECIPE = HERE.parents[1] / "training" / "scifact_adore.toml"
FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def ranked(qvecs: np.ndarray, dvecs: np.ndarray, qids: list[str], dids: list[str], k: int = 100) -> dict[str, dict[str, float]]:
    from compatret.versions import normalize

    scores = normalize(qvecs) @ normalize(dvecs).T
    top = np.argsort(-scores, axis=1)[:, :k]
    return {q: {dids[j]: float(scores[i, j]) for j in top[i]} for i, q in enumerate(qids)}


def score_kinds(gallery: Path, new: str, data: BeirData, fitted: Any) -> list[dict[str, Any]]:
    """Each candidate map on the test queries: gallery direction maps the stored vectors into the
    new space (queries by the new model); query direction maps the new model's queries into the
    stored space."""
    from compatret.encoders import load_encoder
    from compatret.index.gallery import Gallery

    qrels = data.split("test")
    qids = list(qrels)
    stored = Gallery.open(gallery).vectors_by_id()
    dids = list(stored)
    dvecs = np.stack([stored[d][1] for d in dids])
    qvecs = load_encoder(new).encode_queries([data.queries[q] for q in qids])
    out = []
    for direction, cands in fitted.found.items():
        for c in cands:
            run = ranked(qvecs, c.fitted(dvecs), qids, dids) if direction == "gallery" else ranked(c.fitted(qvecs), dvecs, qids, dids)
            out.append({"direction": direction, "kind": c.kind, "new_old": score_run(qrels, run), "fit_seconds": c.fit_seconds,
                        "sample": len(fitted.pairs.ids), "held_out_recall": c.held_out_recall})
            log(f"  {direction:7s} {c.kind:10s} new/old nDCG@10 {out[-1]['new_old']['ndcg_at_10']:.4f} "
                f"(held-aside neighbour recall@10 {c.held_out_recall:.3f}, fit {c.fit_seconds:.1f} s)")
    return out


def one_way(work: Path, old: str, new: str, data: BeirData, curve: bool) -> dict[str, Any]:
    from compatret.adapt.build import AdaptSettings, choose, fit_adapters, write_model
    from compatret.index.service import Service

    gallery = build_gallery(old, work / f"gallery-{old}", data, progress=False)
    native = build_gallery(new, work / f"gallery-{new}", data, progress=False)
    res: dict[str, Any] = {"old_old": evaluate_pair(old, gallery, data), "new_new": evaluate_pair(new, native, data)}
    log(f"{old} -> {new}: old/old {res['old_old']['ndcg_at_10']:.4f}, new/new {res['new_new']['ndcg_at_10']:.4f}")
    t0 = time.perf_counter()
    fitted = fit_adapters(gallery, new, AdaptSettings(direction="auto"), progress=False)
    res["fit_all_seconds"] = time.perf_counter() - t0
    res["kinds"] = score_kinds(gallery, new, data, fitted)
    # what `compatret adapt DIR --model NEW --out M` writes: direction gallery, kind auto
    direction, chosen = choose(replace(fitted, found={"gallery": fitted.found["gallery"]}))
    model_dir = work / f"adapter-{old}-to-{new}"
    shutil.rmtree(model_dir, ignore_errors=True)
    write_model(model_dir, new, fitted.old, fitted.new, direction, chosen, len(fitted.pairs.ids))
    upgraded = work / f"upgraded-{old}-to-{new}"
    shutil.rmtree(upgraded, ignore_errors=True)
    shutil.copytree(gallery, upgraded)
    t0 = time.perf_counter()
    Service.open(upgraded).upgrade(str(model_dir))
    upgrade_s = time.perf_counter() - t0
    first = evaluate_pair(None, upgraded, data)
    default_s = fitted.embed_seconds + sum(c.fit_seconds for c in fitted.found["gallery"])  # `compatret adapt` with its defaults
    res["chosen"] = {"kind": chosen.kind, "direction": direction, "new_old": first, "fit_seconds": chosen.fit_seconds,
                     "embed_seconds": fitted.embed_seconds, "adapt_seconds": default_s, "upgrade_s": upgrade_s}
    log(f"  chosen ({direction}, {chosen.kind}) through the gallery: nDCG@10 {first['ndcg_at_10']:.4f}")
    if curve:
        res["backfill_curve"] = backfill_curve(upgraded, data, "uncertainty")
        again = work / f"upgraded-random-{old}-to-{new}"
        shutil.rmtree(again, ignore_errors=True)
        shutil.copytree(gallery, again)
        Service.open(again).upgrade(str(model_dir))
        res["backfill_curve_random"] = backfill_curve(again, data, "random")
    return res


def adapter_adore(work: Path, data: BeirData) -> dict[str, Any]:
    """MiniLM-L6 queries into the frozen L3 gallery: first a query-direction linear adapter (what
    `compatret adapt DIR --model minilm-l6 --direction query --kind affine` writes), then ADORE
    from it (`compatret train retriever --recipe training/scifact_adore.toml --old minilm-l3
    --init ADAPTER`: the recipe's settings, trained on qrels/train.tsv). Compared with the
    cross-architecture BCT row of eval/compat_text, which trains L6 into the same gallery."""
    from compatret.adapt.build import AdaptSettings, adapt
    from compatret.train.text.config import config_from
    from compatret.train.text.trainer import LOG_FILE, train_retriever

    gallery = build_gallery("minilm-l3", work / "gallery-minilm-l3", data, progress=False)
    adapter = work / "query-adapter-minilm-l6-into-minilm-l3"
    if not (adapter / "version.json").exists():
        shutil.rmtree(adapter, ignore_errors=True)
        report = adapt(gallery, "minilm-l6", adapter, AdaptSettings(direction="query", kind="affine"), progress=False)
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


def backfill_curve(gallery: Path, data: BeirData, order: str) -> list[list[float]]:
    from compatret.index.backfill import backfill
    from compatret.index.service import Service

    points = []
    for f in FRACTIONS:
        if f > 0:
            backfill(Service.open(gallery), fraction=f, order=order, progress=False)
        s = evaluate_pair(None, gallery, data)
        points.append([f, s["ndcg_at_10"]])
        log(f"  backfill ({order}) {f:.0%}: nDCG@10 {s['ndcg_at_10']:.4f}")
    return points


def o1_checks(work: Path, model_dir: Path, rows: int = 1_000_000) -> dict[str, float]:
    """Upgrade a 1M-row gallery of L3-space vectors to the adapter; time the first query (which maps
    the group once) and transform-plan queries against identity-plan queries."""
    from compatret.index.service import Service
    from compatret.versions import normalize

    from compatret.versions import LearnedMap

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


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = results["l3_to_l6"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("backfill_curve", "--order uncertainty"), ("backfill_curve_random", "--order random")):
        if key in r:
            xs, ys = zip(*r[key])
            ax.plot([100 * x for x in xs], ys, marker="o", label=label)
    ax.axhline(r["new_new"]["ndcg_at_10"], ls="--", c="gray", label="native L6 (new/new)")
    ax.axhline(r["old_old"]["ndcg_at_10"], ls=":", c="gray", label="L3 on its own gallery (old/old)")
    ax.set_xlabel("rows backfilled to native L6 vectors (%)")
    ax.set_ylabel("SciFact test nDCG@10")
    ax.set_title("L3 gallery upgraded to MiniLM-L6 through an adapter")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table(r: dict[str, Any]) -> str:
    lines = ["| gallery -> new model | direction | kind | new/old nDCG@10 | vs old/old | vs new/new | fit s |", "|---|---|---|---|---|---|---|"]
    for key, name in (("l3_to_l6", "L3 -> L6"), ("l6_to_l3", "L6 -> L3")):
        e = r[key]
        oo, nn = e["old_old"]["ndcg_at_10"], e["new_new"]["ndcg_at_10"]
        lines.append(f"| {name} | (old model on its own gallery: old/old) | | {oo:.4f} | | | |")
        lines.append(f"| {name} | (new model on its own gallery: new/new) | | {nn:.4f} | | | |")
        for k in e["kinds"]:
            v = k["new_old"]["ndcg_at_10"]
            lines.append(f"| {name} | {k['direction']} | {k['kind']} | {v:.4f} | {v - oo:+.4f} | {v - nn:+.4f} | {k['fit_seconds']:.1f} |")
        c = e["chosen"]
        v = c["new_old"]["ndcg_at_10"]
        bar = min(oo, nn) - 0.01
        lines.append(f"| {name} | **chosen: {c['direction']}** | **{c['kind']}** | **{v:.4f}** (bar >= {bar:.4f}) | {v - oo:+.4f} | {v - nn:+.4f} | "
                     f"{c['adapt_seconds']:.0f} (whole adapt: embedding {c['embed_seconds']:.0f}, {e['kinds'][0]['sample']} pairs) |")
    if "backfill_curve" in r["l3_to_l6"]:
        curve = ", ".join(f"{100 * f:.0f} %: {v:.4f}" for f, v in r["l3_to_l6"]["backfill_curve"])
        lines.append(f"\nL3 -> L6 backfill from the adapter (`--order uncertainty`): {curve}")
    if "adapter_adore" in r:
        a = r["adapter_adore"]
        lines.append(f"\nMiniLM-L6 queries into the frozen L3 gallery: query-direction affine adapter ({a['adapter_sample']} pairs) "
                     f"{a['adapter']['ndcg_at_10']:.4f}; then ADORE from it ({a['recipe']}, {a['train_seconds'] / 60:.1f} min) "
                     f"{a['adapter_adore']['ndcg_at_10']:.4f}; cross-architecture BCT (eval/compat_text) {a['cross_arch_bct']['ndcg_at_10']:.4f}")
    if "o1_1m" in r:
        o = r["o1_1m"]
        lines.append(f"\n1M x 384 rows: upgrade {1000 * o['upgrade_s']:.0f} ms; mapping the group {o.get('map_group_s', float('nan')):.1f} s "
                     f"(first query, mapping and building the kernel: {o['first_query_maps_group_s']:.1f} s); 100 queries through the "
                     f"transform plan {1000 * o['transform_100q_s']:.0f} ms vs identity plan {1000 * o['identity_100q_s']:.0f} ms ({o['ratio']:.2f}x)")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=HERE.parents[1] / "runs" / "adapt")
    ap.add_argument("--out", type=Path, default=HERE)
    parts = ["l3_to_l6", "l6_to_l3", "o1_1m", "adapter_adore"]
    ap.add_argument("--parts", nargs="*", default=parts, choices=parts)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    data = load_beir(dataset("scifact"), splits=("test",))
    path = args.out / "results.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    results.update(command="python eval/adapt/run.py")
    results.pop("sample", None)
    if "l3_to_l6" in args.parts:
        results["l3_to_l6"] = one_way(args.work, "minilm-l3", "minilm-l6", data, curve=True)
    if "l6_to_l3" in args.parts:
        results["l6_to_l3"] = one_way(args.work, "minilm-l6", "minilm-l3", data, curve=False)
    if "adapter_adore" in args.parts:
        results["adapter_adore"] = adapter_adore(args.work, data)
    if "o1_1m" in args.parts:
        results["o1_1m"] = o1_checks(args.work, args.work / "adapter-minilm-l3-to-minilm-l6")
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.out / "backfill_curve.png")
    (args.out / "results.md").write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
