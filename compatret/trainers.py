"""Training as functions, for notebooks and pipelines: the same jobs `compatret train` runs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compatret.train.image.recipe import TrainOutcome


def train_image(
    recipes: str | Path | Sequence[str | Path],
    out: str | Path | None = None,
    epochs: int | None = None,
    device: str | None = None,
    jobs: int = 1,
    progress: bool = False,
) -> list[TrainOutcome]:
    """Train image models from TOML recipes (a family: parents first), resuming any that an
    interruption cut short (finished ones are `skipped`); returns each model's version and folder."""
    import torch

    from compatret.core.errors import CompatretError
    from compatret.train.image.parallel import train_recipes
    from compatret.train.image.recipe import load_recipe

    files = [recipes] if isinstance(recipes, str | Path) else list(recipes)
    if out is not None and len(files) > 1:
        raise CompatretError("out names one model folder: give it with a single recipe")
    loaded = {str(f): load_recipe(f).with_overrides(out=None if out is None else str(out), epochs=epochs) for f in files}
    if device == "cuda" and not torch.cuda.is_available():
        raise CompatretError("device cuda, but no CUDA device is available")
    from compatret.train.image import distributed

    try:
        return list(train_recipes(loaded, jobs=jobs, device=device, progress=progress).values())
    finally:
        distributed.leave()


def train_text(recipe: str | Path | None = None, progress: bool = False, **settings: Any) -> Path:
    """Train a dense retriever (STAR, ADORE, BCT, ...) from a TOML recipe and/or settings (the keys
    `compatret train text` takes); returns the model folder."""
    from compatret.train.text.config import config_from
    from compatret.train.text.trainer import train_retriever

    return train_retriever(config_from(recipe, settings), progress=progress)
