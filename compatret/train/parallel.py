"""Train many recipes, each after its parent, up to N at a time in spawned processes.

A benchmark or a model family is a small tree of recipes (old -> new, chains). On a machine
with several cores, independent branches train side by side; each worker gets its share of
the cores for torch. Workers are spawned, never forked (forked torch/lancedb state hangs).
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Callable, Iterable

import torch

from compatret.errors import CompatretError
from compatret.train.recipe import ImageRecipe, TrainOutcome, is_trained, train_recipe


def _train_in_worker(recipe: ImageRecipe, device: str | None, threads: int) -> TrainOutcome:
    torch.set_num_threads(threads)
    return train_recipe(recipe, device=device, progress=False)


def _order_check(recipes: dict[str, ImageRecipe]) -> None:
    """Outputs are distinct; every parent is one of them or a trained model folder."""
    outs = {Path(r.out) for r in recipes.values()}
    if len(outs) < len(recipes):
        raise CompatretError("two recipes write the same model folder (out): give each its own")
    for name, r in recipes.items():
        if r.parent is not None and Path(r.parent) not in outs and not is_trained(r.parent):
            raise CompatretError(
                f"recipe {name!r}: parent model {r.parent} is not trained and no recipe given makes it: train it first"
            )


def train_recipes(
    recipes: dict[str, ImageRecipe],
    jobs: int = 1,
    device: str | None = None,
    on_done: Callable[[str, TrainOutcome], None] | None = None,
    progress: bool = True,
) -> dict[str, TrainOutcome]:
    """Train every recipe (finished ones are skipped), a parent before its children.

    jobs=1 trains in this process, in the given order (parents moved first), with a progress
    bar unless progress=False; jobs>1 runs up to `jobs` recipes at once, each in a spawned process with
    cpu_count // jobs torch threads, the recipes that head the most training (their own and
    their descendants') first.
    """
    if jobs < 1:
        raise CompatretError(f"jobs must be >= 1, got {jobs}")
    _order_check(recipes)
    done: dict[str, TrainOutcome] = {}
    made_by = {Path(r.out): name for name, r in recipes.items()}
    parent_of = {n: made_by.get(Path(r.parent)) if r.parent else None for n, r in recipes.items()}

    def ready(name: str) -> bool:
        return parent_of[name] is None or parent_of[name] in done

    def work(name: str) -> int:
        """Epochs x classes of a recipe and all its descendants: the training that waits on it."""
        r = recipes[name]
        own = r.train.epochs * (r.classes[1] - r.classes[0] + 1)
        return own + sum(work(child) for child, p in parent_of.items() if p == name)

    def finish(name: str, outcome: TrainOutcome) -> None:
        done[name] = outcome
        if on_done:
            on_done(name, outcome)

    def cycle(names: Iterable[str]) -> CompatretError:
        return CompatretError(f"recipes {sorted(names)} wait on each other's outputs (a parent cycle)")

    pending = dict(recipes)
    if jobs == 1:
        while pending:
            name = next((n for n in pending if ready(n)), None)
            if name is None:
                raise cycle(pending)
            finish(name, train_recipe(pending.pop(name), device=device, progress=progress))
        return done
    threads = max(1, (os.cpu_count() or 1) // jobs)
    running: dict[Future[TrainOutcome], str] = {}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        while pending or running:
            # free slots go to the ready recipes heading the most work, so long chains start early
            free = jobs - len(running)
            for name in sorted((n for n in pending if ready(n)), key=work, reverse=True)[:free]:
                running[pool.submit(_train_in_worker, pending.pop(name), device, threads)] = name
            if not running:
                raise cycle(pending)
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                finish(running.pop(future), future.result())
    return done
