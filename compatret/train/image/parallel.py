"""Train many recipes, each after its parent, up to N at a time in spawned processes.

A benchmark or a model family is a small tree of recipes (old -> new, chains). On a machine
with several cores, independent branches train side by side; each worker gets its share of
the cores for torch. Workers are spawned, never forked (forked torch/lancedb state hangs).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

import torch
from tqdm.auto import tqdm

from compatret.core.errors import CompatretError
from compatret.train.image import distributed
from compatret.train.image.recipe import ImageRecipe, TrainOutcome, is_trained, train_recipe


def _train_in_worker(recipe: ImageRecipe, device: str | None, threads: int) -> TrainOutcome:
    torch.set_num_threads(threads)
    return train_recipe(recipe, device=device, progress=False)


def _producers(recipes: dict[str, ImageRecipe]) -> dict[str, str | None]:
    """Each recipe's parent recipe (None: no parent, or a parent folder already trained).

    Refuses two recipes writing one folder, a parent that is neither trained nor made here,
    and recipes whose parents lead back to themselves.
    """
    made_by = {Path(r.out): name for name, r in recipes.items()}
    if len(made_by) < len(recipes):
        raise CompatretError("two recipes write the same model folder (out): give each its own")
    parent_of: dict[str, str | None] = {}
    for name, r in recipes.items():
        parent_of[name] = made_by.get(Path(r.parent)) if r.parent else None
        if r.parent is not None and parent_of[name] is None and not is_trained(r.parent):
            raise CompatretError(f"recipe {name!r}: parent model {r.parent} is not trained and no recipe given makes it: train it first")
    for name in recipes:
        seen, step = {name}, parent_of[name]
        while step is not None:
            if step in seen:
                raise CompatretError(f"recipes {sorted(seen)} wait on each other's outputs (a parent cycle)")
            seen.add(step)
            step = parent_of[step]
    return parent_of


def _work(recipes: dict[str, ImageRecipe], parent_of: dict[str, str | None]) -> dict[str, int]:
    """Epochs x classes of each recipe plus all its descendants: the training that waits on it."""

    def total(name: str) -> int:
        r = recipes[name]
        return r.train.epochs * (r.classes[1] - r.classes[0] + 1) + sum(total(c) for c, p in parent_of.items() if p == name)

    return {name: total(name) for name in recipes}


def train_recipes(
    recipes: dict[str, ImageRecipe],
    jobs: int = 1,
    device: str | None = None,
    on_done: Callable[[str, TrainOutcome], None] | None = None,
    progress: bool = True,
) -> dict[str, TrainOutcome]:
    """Train every recipe (finished ones are skipped), a parent before its children.

    jobs=1 trains in this process, in the given order (parents moved first), with a per-step
    bar; jobs>1 runs up to `jobs` recipes at once, each in a spawned process with
    cpu_count // jobs torch threads, the recipes that head the most training (their own and
    their descendants') first, and the bar counts finished models. progress=False: no bars.
    """
    if jobs < 1:
        raise CompatretError(f"jobs must be >= 1, got {jobs}")
    if jobs > 1 and distributed.ranks().world > 1:
        raise CompatretError("under torchrun every process trains the same recipe: leave --jobs at 1")
    parent_of = _producers(recipes)
    done: dict[str, TrainOutcome] = {}

    def ready(name: str) -> bool:
        return parent_of[name] is None or parent_of[name] in done

    def finish(name: str, outcome: TrainOutcome) -> None:
        done[name] = outcome
        if on_done:
            on_done(name, outcome)

    pending = dict(recipes)
    if jobs == 1:
        while pending:
            name = next(n for n in pending if ready(n))  # one exists: _producers refused cycles
            finish(name, train_recipe(pending.pop(name), device=device, progress=progress))
        return done
    work = _work(recipes, parent_of)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    running: dict[Future[TrainOutcome], str] = {}
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))
    with pool, tqdm(total=len(recipes), desc="models", unit="model", disable=not progress) as bar:
        while pending or running:
            # free slots go to the ready recipes heading the most work, so long chains start early
            free = jobs - len(running)
            for name in sorted((n for n in pending if ready(n)), key=work.__getitem__, reverse=True)[:free]:
                running[pool.submit(_train_in_worker, pending.pop(name), device, threads)] = name
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                finish(running.pop(future), future.result())
                bar.update()
    return done
