"""Compatibility benchmark on Tiny-ImageNet-100: the BT²/OCA protocol for five methods, plus a 3-step chain.

    .venv/bin/python eval/compat_image/run.py --jobs 2   # the benchmark as measured (2 CPU cores)
    .venv/bin/python eval/compat_image/run.py --smoke    # plumbing check in under a minute
    .venv/bin/python eval/compat_image/run.py --jobs 2 --only methods   # the five-method table alone (about half the time)

Trains every model from its recipe in training/ (models go under --work, and a rerun skips
finished models and resumes an interrupted one), scores every (query, gallery) pair through
the compatret lineage (leave-one-out on the test split, cosine) and writes results.json,
results.md and heatmaps next to this file (smoke: into the work folder).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from compatret.core.config import dataset
from compatret.data.images import ImageSplit, load_parquet_split
from compatret.evaluation.compat_matrix import CompatMatrix, compat_matrix, write_compat_report
from compatret.evaluation.compat_metrics import plot_compat_matrix
from compatret.train.image.parallel import train_recipes
from compatret.train.image.recipe import ImageRecipe, TrainOutcome, load_recipe

HERE = Path(__file__).resolve().parent
RECIPES = HERE.parents[1] / "training"
DATA = "tinyimagenet100"
# method -> (old model recipe, new model recipe); old is trained on classes 0-49, new on 0-99
METHODS = {
    "independent": ("old", "independent"),
    "bct": ("old", "bct"),
    "dsimplex": ("dsimplex_old", "dsimplex"),
    "bt2": ("old", "bt2"),
    "oca": ("old", "oca"),
}
CHAINS = {m: [f"chain_{m}_{i}" for i in (1, 2, 3)] for m in ("dsimplex", "bt2")}


def _recipes(args: argparse.Namespace, work: Path) -> dict[str, ImageRecipe]:
    """The recipes in training order, relocated under the work folder, with the run's overrides."""
    methods = [n for pair in METHODS.values() for n in pair] if args.only != "chain" else []
    chains = [n for c in CHAINS.values() for n in c] if args.only != "methods" else []
    names = list(dict.fromkeys(methods + chains))
    out: dict[str, ImageRecipe] = {}
    for name in names:
        r = load_recipe(RECIPES / f"{DATA}_{name}.toml")
        model = replace(r.model, width=args.width or r.model.width, image_size=args.image_size or r.model.image_size)
        r = replace(
            r,
            model=model,
            out=str(work / Path(r.out).name),
            parent=str(work / Path(r.parent).name) if r.parent else None,
            per_class=args.train_per_class or r.per_class,
        )
        out[name] = r.with_overrides(epochs=args.epochs)
    return out


def _cell(m: CompatMatrix, i: int, j: int) -> dict[str, float]:
    return {s: round(float(m.scores[s][i, j]), 2) for s in ("top1", "map")}


def _epochs_text(epochs: dict[str, int]) -> str:
    """'6 epochs (chain_dsimplex_1, ...: 12)': the common schedule and the recipes that differ."""
    common = Counter(epochs.values()).most_common(1)[0][0]
    others = {e: [n for n, x in epochs.items() if x == e] for e in sorted(set(epochs.values()) - {common})}
    return f"{common} epochs" + "".join(f" ({', '.join(names)}: {e})" for e, names in others.items())


def _markdown(results: dict[str, Any], ecc: dict[str, dict[str, bool]]) -> str:
    c = results.get("methods_config", results["config"])  # the five-method table's own run (`--only chain` keeps it)
    chain_epochs = {k: v for k, v in results.get("chain_config", results["config"])["epochs"].items() if k.startswith("chain")}
    lines = [
        "# Compatibility benchmark: Tiny-ImageNet-100",
        "",
        f"Old model: classes 0-49; new models: classes 0-99. CIFAR-style ResNet-18, width {c['width']}, "
        f"{c['image_size']}x{c['image_size']} input, {_epochs_text(c['epochs'])}, {c['train_images_per_class']} train images per class, "
        f"augmentation drawn {'per image' if c.get('augmentation') else 'once per batch (one crop offset)'}; "
        f"leave-one-out retrieval over {c['test_queries']} test images (cosine). Pairs are query/gallery model.",
        "",
        "| method | old/old top-1 | new/old top-1 | new/new top-1 | old/old mAP | new/old mAP | new/new mAP | ECC top-1 | ECC mAP |",
        "|---|---:|---:|---:|---:|---:|---:|:-:|:-:|",
    ]
    for name, r in results["methods"].items():
        cells = [f"{r[p][s]:.1f}" for s in ("top1", "map") for p in ("old_old", "new_old", "new_new")]
        marks = ["yes" if ecc[name][s] else "no" for s in ("top1", "map")]
        lines.append(f"| {name} | " + " | ".join(cells + marks) + " |")
    if "augmentation" not in results.get("chain_config", {"augmentation": 1}):  # `--only methods` kept a chain from before
        cc = results["chain_config"]
        lines += ["", f"The chain below was measured before augmentation was drawn per image (one crop offset per batch), "
                  f"{_epochs_text({k: v for k, v in cc['epochs'].items() if k.startswith('chain')})}; not rerun since."]  # fmt: skip
    lines += ["", f"3-step chain (classes 0-32 -> 0-65 -> 0-99), {_epochs_text(chain_epochs)}, top-1 matrix (rows: query model, "
              "columns: gallery model):", ""]  # fmt: skip
    for name, r in results["chain"].items():
        rows = ["/".join("-" if x is None else f"{x:.1f}" for x in row[: i + 1]) for i, row in enumerate(r["matrix"])]
        lines.append(f"- {name}: AC {r['ac']:.2f}, AM {r['am']:.1f}; rows {'; '.join(rows)} (![{name}](heatmap_chain_{name}.png))")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="20 train images per class, 1 epoch, tiny backbone: a plumbing check")
    ap.add_argument("--work", type=Path, help="models folder (default runs/compat_image, smoke: runs/compat_image_smoke)")
    ap.add_argument("--epochs", type=int, help="override the recipes' epochs")
    ap.add_argument("--width", type=float, help="override the recipes' backbone width")
    ap.add_argument("--image-size", type=int, help="override the recipes' input resolution")
    ap.add_argument("--train-per-class", type=int, help="first N train images per class (default: all 500)")
    ap.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    ap.add_argument("--jobs", type=int, default=1, help="models trained at once, each in its own process (default 1)")
    ap.add_argument("--only", choices=["methods", "chain"], help="train and score one part; the other keeps its committed results")
    args = ap.parse_args()
    if args.smoke:
        args.epochs, args.width, args.image_size, args.train_per_class = 1, 0.125, 16, 20
    work = args.work or Path("runs") / ("compat_image_smoke" if args.smoke else "compat_image")
    results_dir = work / "results" if args.smoke else HERE
    start = time.perf_counter()
    recipes = _recipes(args, work)
    print(f"training {len(recipes)} models, {args.jobs} at a time (finished ones are skipped)", flush=True)

    def report(name: str, outcome: TrainOutcome) -> None:
        state = "already trained" if outcome.skipped else "trained"
        print(f"    {name}: {state} ({time.perf_counter() - start:.0f} s elapsed): {outcome.out}", flush=True)

    train_recipes(recipes, jobs=args.jobs, device=args.device, on_done=report)

    test: ImageSplit = load_parquet_split(dataset(DATA), "test")
    if args.smoke:
        test = test.head_per_class(5)
    if args.only and not (results_dir / "results.json").exists():
        raise SystemExit(f"--only {args.only} keeps the other part from {results_dir / 'results.json'}: run the whole benchmark once first")
    kept = json.loads((results_dir / "results.json").read_text()) if args.only else {}
    results: dict[str, Any] = {"methods": {}, "chain": {}}
    if args.only == "chain":
        results["methods"], results["methods_config"] = kept["methods"], kept.get("methods_config", kept["config"])
    if args.only == "methods":
        results["chain"], results["chain_config"] = kept["chain"], kept.get("chain_config", kept["config"])
    ecc: dict[str, dict[str, bool]] = {n: kept["ecc"][n] for n in results["methods"]} if args.only == "chain" else {}
    for name, (old, new) in METHODS.items() if args.only != "chain" else ():
        print(f"evaluating {name} ({time.perf_counter() - start:.0f} s elapsed)", flush=True)
        m = compat_matrix([recipes[old].out, recipes[new].out], test, raw_unrelated=name == "independent", device=args.device)
        write_compat_report(m, work / "eval" / name, title=name)
        plot_compat_matrix(m.scores["top1"], ["old", "new"], results_dir / f"heatmap_{name}.png", f"{name}: top-1 (%)")
        results["methods"][name] = {"old_old": _cell(m, 0, 0), "new_old": _cell(m, 1, 0), "new_new": _cell(m, 1, 1)}
        ecc[name] = {s: bool(m.summary(s)["ecc"][1, 0]) for s in ("top1", "map")}
    for name, chain in CHAINS.items() if args.only != "methods" else ():
        print(f"evaluating the {name} chain ({time.perf_counter() - start:.0f} s elapsed)", flush=True)
        m = compat_matrix([recipes[n].out for n in chain], test, device=args.device)
        write_compat_report(m, work / "eval" / f"chain_{name}", title=f"{name} chain")
        steps = ["0-32", "0-65", "0-99"]
        plot_compat_matrix(m.scores["top1"], steps, results_dir / f"heatmap_chain_{name}.png", f"{name} chain: top-1 (%)")
        top1 = m.to_dict()["top1"]
        summary = m.summary("top1")
        results["chain"][name] = {"matrix": top1, "ac": summary["ac"], "am": summary["am"]}
    ref = recipes["old" if args.only != "chain" else "chain_bt2_1"]
    results["config"] = {
        "data": DATA,
        "backbone": "CIFAR-style ResNet-18",
        "width": ref.model.width,
        "image_size": ref.model.image_size,
        "embed_dim": ref.model.embed_dim,
        "epochs": {n: r.train.epochs for n, r in recipes.items()},
        "batch_size": ref.train.batch_size,
        "lr": ref.train.lr,
        "train_images_per_class": ref.per_class or 500,
        "test_queries": len(test.labels),
        "old_classes": [0, 49],
        "new_classes": [0, 99],
        "chain_classes": [[0, 32], [0, 65], [0, 99]],
        "bct_align_weight": recipes["bct"].method.align() if "bct" in recipes else None,
        "extra_dims": recipes["bt2" if "bt2" in recipes else "chain_bt2_2"].method.extra_dims,
        "simplex_classes": recipes["dsimplex" if "dsimplex" in recipes else "chain_dsimplex_1"].method.max_classes,
        "smoke": args.smoke,
        "only": args.only,
        "augmentation": "per image (streaming pipeline)",
        "device": args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
        "torch_threads": torch.get_num_threads(),
        "seconds_this_invocation": round(time.perf_counter() - start),
    }
    results["ecc"] = ecc
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "results.json").write_text(json.dumps(results, indent=2))
    (results_dir / "results.md").write_text(_markdown(results, ecc))
    print((results_dir / "results.md").read_text())
    print(f"wrote {results_dir / 'results.json'} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
