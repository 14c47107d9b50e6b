"""What a retriever training run is: one typed, validated spec, shared by the CLI, the TOML
recipes in `training/` and the benchmarks, and fingerprinted so a resumed run is the same run."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from compatret.core.config import dataset, index_home, read_toml
from compatret.core.errors import CompatretError

METHODS = ("star", "adore", "bct", "bt2", "oca")
Method = Literal["star", "adore", "bct", "bt2", "oca"]


class RetrieverConfig(BaseModel):
    """method: star|adore|bct|bt2|oca; old: the gallery's model; init: start weights (default: old).

    align_docs: before training, fit a linear map from the start model's space into the old
    space by least squares on this many gallery documents (0 = none). For a start model of
    another architecture than the old one, whose space is unrelated to the gallery's.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    method: Method
    old: str
    gallery: str
    train_data: str
    out: str
    init: str | None = None
    split: str = "train"
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(16, ge=2, description="at least 2: the other positives of a batch are its negatives")
    lr: float = Field(2e-5, gt=0)
    extra_dims: int = Field(64, ge=1)
    seed: int = 0
    max_steps: int | None = Field(None, ge=1)
    hard_negatives: int = Field(1, ge=0)
    depth: int = Field(200, ge=1)
    max_seq_length: int = Field(256, ge=1)
    compat_weight: float = Field(1.0, ge=0)
    align_docs: int = Field(0, ge=0)
    checkpoint_every: int = Field(25, ge=1)

    @model_validator(mode="after")
    def _align_needs_a_compatible_method(self) -> RetrieverConfig:
        if self.align_docs and self.method == "star":
            raise ValueError("star trains an independent space: align-docs applies to the compatible methods")
        return self

    @classmethod
    def build(cls, values: dict[str, Any], origin: dict[str, str] | None = None) -> RetrieverConfig:
        """Validate `values`; the first problem becomes one error line naming the setting (and,
        from `origin`, where it was set)."""
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            err = exc.errors()[0]
            key = str(err["loc"][0]) if err["loc"] else ""
            where = (origin or {}).get(key, "") + (key.replace("_", "-") + ": " if key else "")
            raise CompatretError(where + err["msg"].removeprefix("Value error, ")) from None

    def check(self) -> None:
        """Refuse a spec whose inputs are missing, before any model is loaded."""
        if not Path(self.gallery).exists():
            raise CompatretError(f"no gallery at {self.gallery}")
        if not Path(self.train_data).is_dir():
            raise CompatretError(f"no training data folder at {self.train_data}")

    def fingerprint(self) -> str:
        """Hash of everything that changes the trained weights (not where it is written)."""
        d = self.model_dump()
        for key in ("out", "checkpoint_every"):
            d.pop(key)
        if not d["align_docs"]:
            d.pop("align_docs")  # added later: unset, it keeps the fingerprints of runs that predate it
        for key in ("gallery", "train_data"):
            d[key] = str(Path(d[key]).resolve())
        if self.method != "adore":
            d["batches"] = "clean"  # batches without in-batch false negatives: weights differ from earlier runs
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def read_recipe(path: str | Path) -> dict[str, Any]:
    """A TOML recipe's settings: RetrieverConfig's keys, flat. `train_data`, when relative, names a
    folder under COMPATRET_DATA (as image recipes' `data.folder` does), so one recipe serves
    every checkout."""
    doc = read_toml(path)
    unknown = sorted(set(doc) - set(RetrieverConfig.model_fields))
    if unknown:
        raise CompatretError(f"recipe {path}: unknown key {unknown[0]!r} (known: {', '.join(RetrieverConfig.model_fields)})")
    data = doc.get("train_data")
    if isinstance(data, str) and not Path(data).is_absolute():
        doc["train_data"] = str(dataset(data))
    return doc


def config_from(recipe: str | Path | None, overrides: dict[str, Any]) -> RetrieverConfig:
    """The recipe's settings (if any) with `overrides` (settings given explicitly, None = not given)
    on top; without an `out`, the model goes to indexes/models/<method>."""
    values = read_recipe(recipe) if recipe else {}
    origin = {k: f"recipe {recipe}: " for k in values}
    given = {k: v for k, v in overrides.items() if v is not None}
    values.update(given)
    for key in given:
        origin.pop(key, None)
    missing = [k for k in ("method", "old", "gallery", "train_data") if k not in values]
    if missing:
        raise CompatretError(f"missing --{missing[0].replace('_', '-')} (give it, or a --recipe that sets it)")
    values.setdefault("out", str(index_home() / "models" / str(values["method"])))
    return RetrieverConfig.build(values, origin)
