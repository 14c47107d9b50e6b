"""The BT² and d-Simplex paper protocols on a lent GPU (eval/gpu/run.sh calls this): the four
`training/tinyimagenet100_paper_*.toml` recipes (ResNet-18 full width, the papers' optimiser and
schedule, bf16, loader workers), then old/old, new/old and new/new top-1 and mAP with ECC, as
eval/compat_image scores them. Writes eval/gpu/paper_results.json.

    python eval/gpu/paper.py --epochs 4        # what fits a 15-minute device lease; the recipes say 100 / 70

The recipes' full schedules (100 and 70 epochs) take hours on one GPU: a lease runs them with
--epochs and the results say so. Not run on CPU machines.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from compatret.core.config import dataset
from compatret.data.images import load_parquet_split
from compatret.evaluation.compat_matrix import compat_matrix
from compatret.train.image.parallel import train_recipes
from compatret.train.image.recipe import load_recipe

HERE = Path(__file__).resolve().parent
RECIPES = HERE.parents[1] / "training"
PROTOCOLS = {"bt2": ("paper_bt2_old", "paper_bt2"), "dsimplex": ("paper_dsimplex_old", "paper_dsimplex")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, help="override the recipes' epochs (a lease is minutes, the recipes hours)")
    ap.add_argument("--work", type=Path, default=Path("runs/gpu_paper"))
    args = ap.parse_args()
    start = time.perf_counter()
    recipes = {}
    for old, new in PROTOCOLS.values():  # each new model's parent: its old model's folder under --work
        recipes[old] = load_recipe(RECIPES / f"tinyimagenet100_{old}.toml").with_overrides(out=str(args.work / old), epochs=args.epochs)
        loaded = load_recipe(RECIPES / f"tinyimagenet100_{new}.toml").with_overrides(out=str(args.work / new), epochs=args.epochs)
        recipes[new] = replace(loaded, parent=recipes[old].out)
    train_recipes(recipes, device="cuda", progress=False)
    test = load_parquet_split(dataset("tinyimagenet100"), "test")
    out: dict[str, object] = {"epochs": {n: r.train.epochs for n, r in recipes.items()}, "protocols": {}}
    for name, (old, new) in PROTOCOLS.items():
        m = compat_matrix([recipes[old].out, recipes[new].out], test, device="cuda")
        cells = {pair: {s: round(float(m.scores[s][i, j]), 2) for s in ("top1", "map")} for pair, (i, j) in
                 {"old_old": (0, 0), "new_old": (1, 0), "new_new": (1, 1)}.items()}  # fmt: skip
        out["protocols"][name] = {**cells, "ecc": {s: bool(m.summary(s)["ecc"][1, 0]) for s in ("top1", "map")}}  # type: ignore[index]
    out["seconds"] = round(time.perf_counter() - start)
    (HERE / "paper_results.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
