"""Training recipes: one TOML file per method x data set, read into a typed, validated ImageRecipe.

A recipe names everything a run needs except where it runs (device) and whether to show
progress, so the same file trains on a laptop CPU or a GPU and a rerun can check that it
resumes the same job.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, get_type_hints

import numpy as np
from pydantic import TypeAdapter, ValidationError

from compatret.core.config import dataset, read_toml
from compatret.core.device import torch_device
from compatret.core.errors import CompatretError
from compatret.core.lineage import VERSION_FILE, ModelVersion
from compatret.encoders.image import ImageModelSpec
from compatret.train.image import distributed
from compatret.train.image.data import FolderImages, ParquetImages
from compatret.train.image.methods import METHODS, MethodSpec, fit_image_version
from compatret.train.image.trainer import TrainConfig

RECIPE_RECORD = "recipe.json"
CHECKPOINT_DIR = "checkpoint"
_RUNTIME_FIELDS = ("seed", "device", "checkpoint_dir", "progress")
_NOT_IN_RECORD = ("device", "checkpoint_dir", "progress", "workers")  # how a run reads, not what it trains


@dataclass(frozen=True)
class ImageRecipe:
    """One image training job: data, classes, method, parent, architecture, optimiser, output.

    data is a folder name under COMPATRET_DATA (or an absolute path); classes is the inclusive
    label range trained on; per_class keeps the first N training images of each class (quick
    runs); parent and out are model folders, relative to the working directory.
    """

    id: str
    data: str
    classes: tuple[int, int]
    method: MethodSpec
    model: ImageModelSpec
    train: TrainConfig
    out: str
    parent: str | None = None
    per_class: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The job as plain JSON (runtime-only settings left out), to recognise a resumed run."""
        d = asdict(self)
        d["classes"] = list(self.classes)
        d["model"] = {**d["model"], "mean": list(self.model.mean), "std": list(self.model.std)}
        for key in _NOT_IN_RECORD:
            d["train"].pop(key)
        return d

    def with_overrides(self, out: str | None = None, epochs: int | None = None) -> ImageRecipe:
        recipe = self
        if out is not None:
            recipe = replace(recipe, out=out)
        if epochs is not None:
            if epochs < 1:
                raise CompatretError(f"epochs must be >= 1, got {epochs}")
            warmup = min(recipe.train.warmup_epochs, epochs - 1)  # a short run keeps a warm-up that fits it
            recipe = replace(recipe, train=replace(recipe.train, epochs=epochs, warmup_epochs=warmup))
        return recipe


def _check(value: Any, kind: Any, where: str) -> Any:
    """`value` as `kind` (a type hint), validated by pydantic in strict mode: no "2" for 2, no
    true for 1; TOML arrays stand for tuples."""
    if isinstance(value, list):
        value = tuple(value)
    try:
        return TypeAdapter(kind).validate_python(value, strict=True)
    except ValidationError as exc:
        err = exc.errors()[0]
        at = "".join(f".{part}" for part in err["loc"])  # the position within a list
        raise CompatretError(f"{where}{at}: {err['msg']}, got {value!r}") from None


def _build(cls: type, table: Any, where: str, skip: tuple[str, ...] = ()) -> Any:
    """A dataclass from a TOML table: unknown keys and wrong types are errors, not surprises."""
    if not isinstance(table, dict):
        raise CompatretError(f"[{where}] must be a table")
    hints = get_type_hints(cls)
    known = sorted(f.name for f in fields(cls) if f.name not in skip and f.name != "extra")
    for key in table:
        if key not in known:
            raise CompatretError(f"[{where}]: unknown key {key!r} (known: {', '.join(known)})")
    return cls(**{k: _check(v, hints[k], f"{where}.{k}") for k, v in table.items()})


def parse_recipe(doc: dict[str, Any], source: str = "recipe") -> ImageRecipe:
    """Validate a parsed TOML document; every problem is one CompatretError naming the key."""
    top = {"id", "out", "seed", "data", "method", "model", "train"}
    for key in doc:
        if key not in top:
            raise CompatretError(f"{source}: unknown key {key!r} (known: {', '.join(sorted(top))})")
    for key in ("id", "out", "data", "method"):
        if key not in doc:
            raise CompatretError(f"{source}: missing {key!r}")
    data = doc["data"] if isinstance(doc["data"], dict) else {}
    if set(data) - {"folder", "classes", "per_class"} or "folder" not in data or "classes" not in data:
        raise CompatretError(f"{source}: [data] needs folder and classes = [first, last] (and optionally per_class)")
    classes = data["classes"]
    if not (isinstance(classes, list) and len(classes) == 2 and all(type(c) is int for c in classes) and 0 <= classes[0] <= classes[1]):
        raise CompatretError(f"{source}: data.classes must be [first, last] with 0 <= first <= last, got {classes!r}")
    per_class = data.get("per_class")
    if per_class is not None and (type(per_class) is not int or per_class < 1):
        raise CompatretError(f"{source}: data.per_class must be a positive integer")
    if not isinstance(doc["method"], dict):
        raise CompatretError(f"{source}: [method] must be a table")
    method_table = dict(doc["method"])
    parent = method_table.pop("parent", None)
    method = _build(MethodSpec, method_table, "method")
    if method.name not in METHODS:
        raise CompatretError(f"{source}: method.name {method.name!r} is not one of {', '.join(METHODS)}")
    seed = _check(doc.get("seed", 0), int, "seed")
    train = replace(_build(TrainConfig, doc.get("train", {}), "train", skip=_RUNTIME_FIELDS), seed=seed)
    try:
        train.check("cuda")  # every setting but where it runs (half precision on a CPU is refused before the run starts)
    except CompatretError as exc:
        raise CompatretError(f"{source}: {exc}") from None
    if train.epochs < 1 or train.batch_size < 1 or train.lr <= 0:
        raise CompatretError(f"{source}: train.epochs, train.batch_size and train.lr must be positive")
    model = _build(ImageModelSpec, doc.get("model", {}), "model")
    if not model.mean or len(model.mean) != len(model.std):
        raise CompatretError(f"{source}: model.mean and model.std must be lists of numbers of one length")
    if model.width <= 0 or model.image_size < 4 or model.embed_dim < 1:
        raise CompatretError(f"{source}: model.width, model.image_size and model.embed_dim must be positive")
    return ImageRecipe(
        id=_check(doc["id"], str, "id"),
        data=_check(data["folder"], str, "data.folder"),
        classes=(classes[0], classes[1]),
        method=method,
        model=model,
        train=train,
        out=_check(doc["out"], str, "out"),
        parent=None if parent is None else _check(parent, str, "method.parent"),
        per_class=per_class,
    )


def load_recipe(path: str | Path) -> ImageRecipe:
    """Read and validate a TOML recipe."""
    return parse_recipe(read_toml(path), str(path))


def load_train_source(recipe: ImageRecipe) -> ParquetImages | FolderImages:
    """The recipe's training images, streamed: `train.parquet` (image bytes + label) or a folder of
    class folders (`train/<class>/...`, or the data folder itself); its class range, optionally
    the first N images of each class."""
    folder = Path(recipe.data) if Path(recipe.data).is_absolute() else dataset(recipe.data)
    if (folder / "train.parquet").is_file():
        source: ParquetImages | FolderImages = ParquetImages(folder / "train.parquet")
    elif folder.is_dir():
        source = FolderImages(folder / "train" if (folder / "train").is_dir() else folder)
    else:
        raise CompatretError(f"no training images at {folder}: expected train.parquet or class folders")
    first, last = recipe.classes
    keep = (source.labels >= first) & (source.labels <= last)
    if recipe.per_class:
        rank = np.zeros(len(keep), dtype=np.int64)
        for c in np.unique(source.labels[keep]):
            where = np.flatnonzero(keep & (source.labels == c))
            rank[where] = np.arange(len(where))
        keep &= rank < recipe.per_class
    if not keep.any():
        raise CompatretError(f"no training images of classes {first}-{last} in {folder}")
    return source.subset(keep)


def is_trained(folder: str | Path) -> bool:
    """A finished model folder: the version record is written last."""
    return (Path(folder) / VERSION_FILE).exists()


@dataclass(frozen=True)
class TrainOutcome:
    version: ModelVersion
    out: Path
    skipped: bool


def train_recipe(recipe: ImageRecipe, device: str | None = None, progress: bool = True) -> TrainOutcome:
    """Run a recipe into recipe.out, resuming its checkpoint; a finished folder is left as it is.
    Under torchrun the first process checks and writes the folder, and every process learns its verdict."""
    out = Path(recipe.out)
    r = distributed.ranks()
    recipe.train.check(distributed.join(torch_device(device), r))  # before anything is written: bf16 on a CPU, say
    if distributed.agreed(lambda: is_trained(out)):
        return TrainOutcome(ModelVersion.load(out), out, skipped=True)
    distributed.agreed(lambda: _prepare(recipe, out))
    cfg = replace(recipe.train, device=device, checkpoint_dir=str(out / CHECKPOINT_DIR), progress=progress)
    version = fit_image_version(recipe.id, recipe.method, load_train_source(recipe), recipe.model, cfg, out, recipe.parent)
    if r.main:
        shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
    return TrainOutcome(version, out, skipped=False)


def _prepare(recipe: ImageRecipe, out: Path) -> None:
    """Check the parent and the output folder (a rerun of the same recipe resumes), then record the job."""
    if recipe.parent is not None and not is_trained(recipe.parent):
        raise CompatretError(f"parent model {recipe.parent} is not a trained model folder: train it first")
    record = recipe.to_dict()
    record_path = out / RECIPE_RECORD
    if record_path.exists():
        if json.loads(record_path.read_text()) != record:
            raise CompatretError(f"{out} holds an unfinished run of a different recipe: remove it or choose another --out")
    elif out.exists() and any(out.iterdir()):
        raise CompatretError(f"{out} is not empty and holds no compatret training run")
    out.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps(record, indent=2))
