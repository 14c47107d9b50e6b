"""The upgrade gate (issue 17) on SciFact test queries: which candidates does it let through?

    bash eval/compat_text/reproduce.sh          # first: the gallery and the ADORE and BT² models (25 min)
    python eval/compat_text/run.py              # and the benchmark's models, for their flip rates (1.5 h)
    python eval/regression_gate/stsb_overtrain.py   # and the model over-trained on another domain (20 min)
    python eval/regression_gate/run.py          # -> eval/regression_gate/results.{json,md} (about 15 min on 2 cores)

Gallery: all-MiniLM-L6-v2 vectors of SciFact (indexes/reproduce/scifact-l6). Candidates, each
checked by `index upgrade --gate queries.jsonl --qrels qrels/test.tsv` (defaults: --max-drop
0.005, --max-flips 0.05) on a copy of the gallery, whose serving model and table version are
read before and after:
- adore, bt2: the models of training/scifact_{adore,bt2}.toml (the README's commands);
- damaged: the ADORE model with Gaussian noise added to every weight of its query tower, the
  noise doubled from 0.002 until SciFact test nDCG@10 falls at least 0.02 below the serving
  model's, then bisected (4 steps) towards the least noise that still does (the damage is
  measured on the queries the gate sees: that is the point);
- overtrained: ADORE trained from the same recipe with --lr 3e-4 --epochs 20 (15x the rate,
  twice the epochs), when indexes/regression_gate/overtrained exists:
  `compatret train retriever --recipe training/scifact_adore.toml --gallery indexes/reproduce/scifact-l6
  --out indexes/regression_gate/overtrained --lr 3e-4 --epochs 20` (on SciFact's own training
  queries this kept improving SciFact test);
- overtrained_stsb: ADORE over-trained on another domain, STS-B paraphrase pairs, at 15x the
  rate until SciFact test fell below the old model's (`stsb_overtrain.py`: 3 epochs sufficed).

Then the flip rate of every model of eval/compat_text against its old model on the benchmark's
gallery (`flip_rates`), and a gated backfill (`index backfill --gate`) of a copy of the gallery
upgraded to the BT² model, checked at 10 %, 50 % and 100 % (`backfill_gate`).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def damage(model: Path, out: Path, sigma: float) -> Path:
    """A copy of `model` with N(0, sigma) noise added to every weight of its query tower."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(model, out)
    weights = load_file(out / "model.safetensors")
    gen = torch.Generator().manual_seed(0)
    noisy = {k: v + sigma * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v for k, v in weights.items()}
    save_file(noisy, out / "model.safetensors")
    record = json.loads((out / "compatret_version.json").read_text())
    record.pop("digest", None)  # other weights: the record no longer names them
    record["id"] = f"{record['id']}-damaged-{sigma:g}"
    (out / "compatret_version.json").write_text(json.dumps(record, indent=2))
    return out


def gate(gallery: Path, candidate: str, queries: Path, qrels: Path, work: Path) -> dict[str, Any]:
    """`index upgrade --gate` on a copy of the gallery: passed or refused, and what it changed."""
    from compatret.engine.gate import gate_check
    from compatret.core.errors import CompatretError
    from compatret.engine.service import Service

    copy = work / "gate-gallery"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(gallery, copy)
    s = Service.open(copy)
    before = (s.meta.serving.id, s.gallery.latest_version())
    try:
        numbers = gate_check(copy, candidate, queries, qrels, 0.005, 0.05)
        s.upgrade(candidate, gate=numbers)
        verdict, reason = "passed", ""
    except CompatretError as exc:
        verdict, reason = "refused", str(exc)
    s = Service.open(copy)
    after = (s.meta.serving.id, s.gallery.latest_version())
    return {"verdict": verdict, "reason": reason, "serving_before": before[0], "serving_after": after[0],
            "table_version_before": before[1], "table_version_after": after[1]}


def main() -> None:
    from compatret.cli.regression import run_regression
    from compatret.core.config import dataset

    work = ROOT / "indexes" / "regression_gate"
    work.mkdir(parents=True, exist_ok=True)
    gallery = ROOT / "indexes" / "reproduce" / "scifact-l6"
    models = ROOT / "indexes" / "reproduce" / "models"
    queries, qrels = dataset("scifact") / "queries.jsonl", dataset("scifact") / "qrels" / "test.tsv"
    results: dict[str, Any] = {"command": "python eval/regression_gate/run.py", "gallery": "SciFact, all-MiniLM-L6-v2 vectors",
                               "queries": "SciFact test (300 judged)", "max_drop": 0.005, "max_flips": 0.05, "candidates": {}}
    candidates = {"adore": str(models / "adore"), "bt2": str(models / "bt2")}
    for name in ("overtrained", "overtrained_stsb"):
        if (work / name / "compatret_version.json").exists():
            candidates[name] = str(work / name)
    sigma, serving_ndcg = 0.002, None
    while True:  # the damaged model: the least noise (doubling) that costs >= 0.02 nDCG@10
        path = damage(models / "adore", work / "damaged", sigma)
        report = run_regression(str(gallery), str(path), str(queries), str(qrels), None)
        serving_ndcg = report["serving_scores"]["ndcg_at_10"]
        drop = serving_ndcg - report["candidate_scores"]["ndcg_at_10"]
        log(f"damaged ADORE, noise {sigma:g}: nDCG@10 {report['candidate_scores']['ndcg_at_10']:.4f} (drop {drop:+.4f})")
        if drop >= 0.02 or sigma > 1:
            break
        sigma *= 2
    low, high = sigma / 2, sigma  # then closer to the threshold: bisect between the last two noise levels
    for _ in range(4):
        mid = (low + high) / 2
        report = run_regression(str(gallery), str(damage(models / "adore", work / "damaged", mid)), str(queries), str(qrels), None)
        drop = report["serving_scores"]["ndcg_at_10"] - report["candidate_scores"]["ndcg_at_10"]
        log(f"damaged ADORE, noise {mid:g}: drop {drop:+.4f}")
        low, high = (low, mid) if drop >= 0.02 else (mid, high)
    sigma = high
    path = damage(models / "adore", work / "damaged", sigma)
    candidates["damaged"] = str(path)
    for name, model in candidates.items():
        report = run_regression(str(gallery), model, str(queries), str(qrels), HERE / name)
        verdict = gate(gallery, model, queries, qrels, work)
        results["candidates"][name] = {**report, "gate": verdict, **({"noise_sigma": sigma} if name == "damaged" else {})}
        d = report["differences"]["ndcg_at_10"]
        log(f"{name}: nDCG@10 {report['serving_scores']['ndcg_at_10']:.4f} -> {report['candidate_scores']['ndcg_at_10']:.4f} "
            f"[{d['low']:+.4f}, {d['high']:+.4f}], flips {100 * report['negative_flip_rate']:.1f}%: {verdict['verdict']}")
    results["flip_rates"] = flip_rates(queries, qrels)
    results["backfill_gate"] = backfill_gate(gallery, str(models / "bt2"), queries, qrels, work)
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (HERE / "results.md").write_text(table(results))
    print(table(results))


COMPAT_TEXT = ROOT / "indexes" / "compat_text"


def flip_rates(queries: Path, qrels: Path) -> dict[str, Any]:
    """Each eval/compat_text model against its old model on the benchmark's old gallery: nDCG@10 change and flips."""
    from compatret.cli.regression import run_regression
    from compatret.data.beir import read_qrels, read_queries
    from compatret.core.errors import CompatretError
    from compatret.engine.gate import compare

    out: dict[str, Any] = {}
    pairs = {m: ("minilm-l6", m) for m in ("star", "adore", "bct", "bt2", "oca")} | {"cross_arch": ("minilm-l3", "cross_arch")}
    for name, (gallery, model) in pairs.items():
        if not (COMPAT_TEXT / "models" / model / "compatret_version.json").exists():
            out[name] = {"missing": f"not trained in {COMPAT_TEXT} (python eval/compat_text/run.py)"}
            continue
        g, m = str(COMPAT_TEXT / "galleries" / gallery), str(COMPAT_TEXT / "models" / model)
        refused = None
        try:
            r = run_regression(g, m, str(queries), str(qrels), None)
        except CompatretError as exc:  # STAR has no lineage: the contract refuses it; scored raw, as eval/compat_text does
            if "not compatible" not in str(exc):
                raise
            refused = str(exc)
            r = compare(g, m, read_queries(str(queries)), read_qrels(str(qrels)), unchecked=True).to_dict()
        out[name] = {"old": r["serving"], "ndcg_at_10_old": r["serving_scores"]["ndcg_at_10"], "ndcg_at_10_new": r["candidate_scores"]["ndcg_at_10"],
                     "change": r["differences"]["ndcg_at_10"], "negative_flips": r["negative_flips"], "negative_flip_rate": r["negative_flip_rate"],
                     **({"refused": refused, "scored": "raw stored vectors, past the lineage check"} if refused else {})}
        log(f"flips {name}: {r['negative_flips']} ({100 * r['negative_flip_rate']:.1f}%)")
    return out


def backfill_gate(gallery: Path, model: str, queries: Path, qrels: Path, work: Path) -> dict[str, Any]:
    """`index backfill --gate` after an upgrade to `model` on a copy of the gallery, as a user types it."""
    import subprocess
    import sys

    from compatret.engine.service import Service

    copy = work / "backfill-gate-gallery"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(gallery, copy)
    Service.open(copy).upgrade(model)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "compatret", "index", "backfill", str(copy), "--gate", str(queries), "--qrels", str(qrels),
                           "--json"], capture_output=True, text=True)
    steps = json.loads(done.stdout)["steps"] if done.stdout.strip() else []
    return {"command": f"compatret index backfill GALLERY --gate {queries.name} --qrels qrels/test.tsv", "model": Path(model).name,
            "exit_code": done.returncode, "error": done.stderr.strip().splitlines()[-1] if done.returncode else "",
            "seconds": round(time.perf_counter() - t0, 1), "steps": steps,
            "rows_by_version_after": Service.open(copy).rows_by_version()}


def table(results: dict[str, Any]) -> str:
    lines = ["| candidate | nDCG@10 serving -> candidate | change (95% CI) | negative flips | gate | serving model / table version after |",
             "|---|---|---|---|---|---|"]
    for name, r in results["candidates"].items():
        d, g = r["differences"]["ndcg_at_10"], r["gate"]
        kept = "unchanged" if (g["serving_after"], g["table_version_after"]) == (g["serving_before"], g["table_version_before"]) else \
            f"{g['serving_after']}, v{g['table_version_before']} -> v{g['table_version_after']}"
        label = f"{name} (noise {r['noise_sigma']:g})" if "noise_sigma" in r else name
        lines.append(f"| {label} | {r['serving_scores']['ndcg_at_10']:.4f} -> {r['candidate_scores']['ndcg_at_10']:.4f} | "
                     f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}] | {r['negative_flips']} ({100 * r['negative_flip_rate']:.1f}%) | "
                     f"{g['verdict']} | {kept} |")
    lines += ["", "Negative flips of the eval/compat_text models against their old model (SciFact test, 300 queries):", "",
              "| model | old model | nDCG@10 old -> new (95% CI of the change) | negative flips |", "|---|---|---|---|"]
    for name, r in results.get("flip_rates", {}).items():
        if "missing" in r:
            lines.append(f"| {name} | | {r['missing']} | |")
            continue
        c, raw = r["change"], " (raw: the contract refuses this pair)" if "refused" in r else ""
        lines.append(f"| {name} | {r['old']} | {r['ndcg_at_10_old']:.4f} -> {r['ndcg_at_10_new']:.4f} ([{c['low']:+.4f}, {c['high']:+.4f}]){raw} | "
                     f"{r['negative_flips']} ({100 * r['negative_flip_rate']:.1f}%) |")
    b = results.get("backfill_gate")
    if b:
        lines += ["", f"Gated backfill to {b['model']} (`{b['command']}`, exit {b['exit_code']}, {b['seconds']:.0f} s):", "",
                  "| rows backfilled | re-embedded | nDCG@10 at start -> now (95% CI of the change) | negative flips | gate |",
                  "|---|---|---|---|---|"]
        for st in b["steps"]:
            g = st.get("gate")
            if g is None:
                lines.append(f"| {100 * st['fraction']:.0f} % | {st['report']['done']} | not checked (stopped) | | |")
                continue
            c = g["change"]
            lines.append(f"| {100 * st['fraction']:.0f} % | {st['report']['done']} | {g['ndcg_at_10_before']:.4f} -> {g['ndcg_at_10_now']:.4f} "
                         f"([{c['low']:+.4f}, {c['high']:+.4f}]) | {100 * g['negative_flip_rate']:.1f}% | {'pass' if g['passed'] else 'FAIL'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
