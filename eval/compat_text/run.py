"""Compatible text retrievers on SciFact (issue 4): STAR, ADORE, BCT, BT², OCA and cross-architecture.

    python eval/compat_text/run.py            # full protocol -> eval/compat_text/results.{json,md}
    python eval/compat_text/run.py --smoke    # tiny subset, 2 steps per method, timing-based estimate

Old model all-MiniLM-L6-v2 (minilm-l6): its gallery holds the old item vectors. Training uses
qrels/train.tsv, scores use qrels/test.tsv. Resumable: finished models, galleries and scores
are kept in the work folder and skipped on a rerun.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from compatret.core.config import dataset, index_home
from compatret.data.beir import BeirData, load_beir
from compatret.engine.runs import build_gallery, evaluate_pair
from compatret.train.text.config import config_from, read_recipe
from compatret.train.text.trainer import LOG_FILE, train_retriever

HERE = Path(__file__).resolve().parent
TRAINING = HERE.parents[1] / "training"
# one recipe per method: the README's `compatret train retriever --recipe` commands read the same files
RECIPES = {m: TRAINING / f"scifact_{m}.toml" for m in ("star", "adore", "bct", "bt2", "oca")}
CROSS = TRAINING / "scifact_cross_l6_into_l3.toml"  # minilm-l6 into the frozen minilm-l3 gallery's space


def subset(data: BeirData, n_docs: int, n_test: int, seed: int = 0) -> BeirData:
    """A small corpus that still holds the positives of the kept train and test queries."""
    rng = random.Random(seed)
    test = dict(list(data.split("test").items())[:n_test])
    train = data.split("train")
    keep = {d for docs in test.values() for d in docs}
    for q in rng.sample(sorted(train), len(train)):
        if len(keep) >= n_docs * 2 // 3:
            break
        keep |= set(train[q])
    for d in data.corpus:
        if len(keep) >= n_docs:
            break
        keep.add(d)
    train = {q: docs for q, docs in train.items() if set(docs) <= keep}
    return BeirData({d: data.corpus[d] for d in keep}, data.queries, {"train": train, "test": test})


def write_beir(data: BeirData, root: Path) -> Path:
    """The training data as a BEIR folder (what `compatret train retriever` reads)."""
    if (root / "qrels" / "test.tsv").exists():
        return root
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, **d}) + "\n" for i, d in data.corpus.items()))
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in data.queries.items()))
    for split, qrels in data.qrels.items():
        rows = "".join(f"{q}\t{d}\t{s}\n" for q, docs in qrels.items() for d, s in docs.items())
        (root / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows)
    return root


class Bench:
    """Work folder with cached scores and timings: every finished piece is skipped on a rerun."""

    def __init__(self, work: Path, data: BeirData, data_dir: Path, max_steps: int | None) -> None:
        self.work, self.data, self.data_dir, self.max_steps = work, data, data_dir, max_steps
        self.cache_file = work / "scores.json"
        self.cache: dict = json.loads(self.cache_file.read_text()) if self.cache_file.exists() else {}

    def _remember(self, key: str, fn):  # noqa: ANN001, ANN202
        if key not in self.cache:
            t0 = time.perf_counter()
            value = fn()
            self.cache[key] = value
            self.cache[f"{key}:seconds"] = time.perf_counter() - t0
            self.cache_file.write_text(json.dumps(self.cache, indent=2))
        return self.cache[key]

    def gallery(self, model: str, name: str) -> Path:
        path = self.work / "galleries" / name
        self._remember(f"gallery:{name}", lambda: str(build_gallery(model, path, self.data, progress=True)))
        return path

    def score(self, key: str, query_model: str, gallery: Path, unchecked: bool = False) -> dict[str, float]:
        print(f"[compat_text] scoring {key}", flush=True)
        return self._remember(f"score:{key}", lambda: evaluate_pair(query_model, gallery, self.data, "test", unchecked=unchecked))

    def train(self, name: str, recipe: Path, gallery: Path) -> tuple[str, float]:
        out = self.work / "models" / name
        print(f"[compat_text] training {name} from {recipe.name}", flush=True)
        cfg = config_from(recipe, {"gallery": str(gallery), "out": str(out), "train_data": str(self.data_dir), "max_steps": self.max_steps})
        folder = train_retriever(cfg)
        log = json.loads((folder / LOG_FILE).read_text())
        self.cache[f"train:{name}"] = {"steps": log["steps"], "seconds": log["train_seconds"]}
        return str(folder), log["train_seconds"] / 60


def run(work: Path, data: BeirData, data_dir: Path, max_steps: int | None, only: list[str] | None = None) -> dict:
    """The whole protocol, or (only=...) some methods; "cross" names the cross-architecture run."""
    only = only or [*RECIPES, "cross"]
    bench = Bench(work, data, data_dir, max_steps)
    g_old = bench.gallery("minilm-l6", "minilm-l6")
    old_old = bench.score("old_old", "minilm-l6", g_old)
    methods = {}
    for method, recipe in RECIPES.items():
        if method not in only:
            continue
        model, minutes = bench.train(method, recipe, g_old)
        new_old = bench.score(f"{method}:new_old", model, g_old, unchecked=method == "star")
        # ADORE embeds items with the frozen old encoder: its own gallery is the old one
        new_new = new_old if method == "adore" else bench.score(f"{method}:new_new", model, bench.gallery(model, method))
        methods[method] = {"new_old": new_old, "new_new": new_new, "train_minutes": round(minutes, 2)}
    cross, cross_minutes = None, 0.0
    if "cross" in only:
        g_l3 = bench.gallery("minilm-l3", "minilm-l3")
        model, cross_minutes = bench.train("cross_arch", CROSS, g_l3)
        cross = {
            "old_old": bench.score("cross:old_old", "minilm-l3", g_l3),
            # the problem: the untrained new model on the old gallery (compatret refuses this pair; scored raw)
            "untrained_new_old": bench.score("cross:untrained_new_old", "minilm-l6", g_l3, unchecked=True),
            "new_old": bench.score("cross:new_old", model, g_l3),
            "new_new": bench.score("cross:new_new", model, bench.gallery(model, "cross_arch")),
        }
    config = {
        "data": "BEIR SciFact (train on qrels/train.tsv, report qrels/test.tsv)",
        "corpus_docs": len(data.corpus), "test_queries": len(data.split("test")), "train_queries": len(data.split("train")),
        "old_model": "minilm-l6 (sentence-transformers/all-MiniLM-L6-v2)",
        "methods": {m: {"recipe": f"training/{r.name}", **_settings(r), "max_steps": max_steps} for m, r in RECIPES.items()},
        "cross_arch": {"recipe": f"training/{CROSS.name}", "old_model": "minilm-l3 (paraphrase-MiniLM-L3-v2, ONNX, frozen)",
                       **_settings(CROSS), "train_minutes": round(cross_minutes, 2)},
        "eval_max_seq_length": 256, "metric": "cosine, exact search (compatret Service.query)",
        "star_new_old": "searched with --ignore-lineage: STAR has no parent, the contract refuses it",
        "seconds": {k.removesuffix(":seconds"): round(v, 1) for k, v in bench.cache.items() if k.endswith(":seconds")},
        "not_run": [m for m in [*RECIPES, "cross"] if m not in only],
    }
    return {"old_old": old_old, "methods": methods, "cross_arch": cross, "config": config}


def _settings(recipe: Path) -> dict:
    """A recipe's training settings, without the machine-specific data path."""
    return {k: v for k, v in read_recipe(recipe).items() if k != "train_data"}


def table(results: dict) -> str:
    """The Markdown table for results.md and the README."""
    f = lambda s: f"{s['ndcg_at_10']:.3f} / {s['mrr_at_10']:.3f} / {s['recall_at_100']:.3f}"  # noqa: E731
    lines = ["| model pair | nDCG@10 / MRR@10 / R@100 new→old | new→new | train min |", "|---|---|---|---|",
             f"| old/old (all-MiniLM-L6-v2) | {f(results['old_old'])} | | |"]
    mark = lambda r: " †" if r.get("carried_over") else ""  # noqa: E731
    for m, r in results["methods"].items():
        lines.append(f"| {m}{mark(r)} | {f(r['new_old'])} | {f(r['new_new'])} | {r['train_minutes']:.1f} |")
    c = results["cross_arch"]
    note = f"\n† {CARRIED}.\n" if c and c.get("carried_over") or any(r.get("carried_over") for r in results["methods"].values()) else ""
    if c is None:
        return "\n".join(lines) + "\n" + note
    lines += [f"| cross-arch old/old (MiniLM-L3 ONNX) | {f(c['old_old'])} | | |",
              f"| cross-arch untrained MiniLM-L6 → L3 gallery (raw, incompatible) | {f(c['untrained_new_old'])} | | |",
              f"| cross-arch L6 → L3 gallery ({results['config']['cross_arch']['method']}){mark(c)} | {f(c['new_old'])} | {f(c['new_new'])} | "
              f"{results['config']['cross_arch']['train_minutes']:.1f} |"]
    return "\n".join(lines) + "\n" + note


CARRIED = "carried over from the previous results.json (not rerun this time: its settings or code may predate this run)"


def carry_over(results: dict, previous_file: Path) -> None:
    """Rows not run this time (--only) keep the previous run's numbers, marked as such in the file and the table."""
    if not previous_file.exists():
        return
    previous = json.loads(previous_file.read_text())
    for m in results["config"]["not_run"]:
        if m == "cross" and previous.get("cross_arch"):
            results["cross_arch"] = {**previous["cross_arch"], "carried_over": CARRIED}
            results["config"]["cross_arch"] = previous["config"]["cross_arch"]
        elif m in previous.get("methods", {}):
            results["methods"][m] = {**previous["methods"][m], "carried_over": CARRIED}


def estimate(results: dict, full: BeirData) -> dict:
    """Full-run minutes from the smoke timings: per-step training time and per-document embedding time."""
    secs = results["config"]["seconds"]
    docs = results["config"]["corpus_docs"]
    pairs = sum(len(d) for d in full.split("train").values())
    out = {}
    for name, recipe in {**RECIPES, "cross_arch": CROSS}.items():
        cfg = config_from(recipe, {"gallery": "-", "out": "-"})
        log = json.loads((WORK_SMOKE / "models" / name / LOG_FILE).read_text())
        per_step = log["train_seconds"] / log["steps"]
        steps = (pairs // cfg.batch_size) * cfg.epochs
        out[name] = {"seconds_per_step": round(per_step, 2), "full_steps": steps, "full_train_minutes": round(per_step * steps / 60, 1)}
    per_doc = max(secs[f"gallery:{g}"] for g in ("minilm-l6", "star")) / docs
    n_galleries = 7  # l6, l3, star, bct, bt2, oca, cross_arch
    out["gallery_minutes_each"] = round(per_doc * len(full.corpus) / 60, 1)
    total = sum(v["full_train_minutes"] for v in out.values() if isinstance(v, dict)) + n_galleries * out["gallery_minutes_each"]
    out["full_run_minutes"] = round(total + 10, 0)  # + query encoding and scoring
    return out


WORK_SMOKE = index_home() / "compat_text_smoke"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="~150 documents, 30 test queries, 2 steps per method")
    ap.add_argument("--work", type=Path, help="work folder (default: indexes/compat_text[_smoke])")
    ap.add_argument("--only", nargs="*", choices=[*RECIPES, "cross"], help="run only these methods (default: all + cross)")
    args = ap.parse_args()
    full = load_beir(dataset("scifact"))
    t0 = time.perf_counter()
    if args.smoke:
        work = args.work or WORK_SMOKE
        data = subset(full, n_docs=150, n_test=30)
        results = run(work, data, write_beir(data, work / "data"), max_steps=2)
        results["estimate"] = estimate(results, full)
        out_json, out_md = work / "results.json", work / "results.md"
    else:
        work = args.work or index_home() / "compat_text"
        results = run(work, full, dataset("scifact"), max_steps=None, only=args.only)
        out_json, out_md = HERE / "results.json", HERE / "results.md"
        carry_over(results, out_json)
    results["config"]["total_minutes"] = round((time.perf_counter() - t0) / 60, 1)
    out_json.write_text(json.dumps(results, indent=2) + "\n")
    out_md.write_text("# Compatible text retrievers on SciFact\n\n" + table(results))
    print(table(results))
    if "estimate" in results:
        print(json.dumps(results["estimate"], indent=2))
    print(f"wrote {out_json} and {out_md}")


if __name__ == "__main__":
    main()
