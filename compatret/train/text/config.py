"""What a retriever training run is: one typed spec, fingerprinted so a resumed run is the same run."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from compatret.errors import CompatretError

METHODS = ("star", "adore", "bct", "bt2", "oca")


@dataclass(frozen=True)
class RetrieverConfig:
    """method: star|adore|bct|bt2|oca; old: the gallery's model; init: start weights (default: old).

    align_docs: before training, fit a linear map from the start model's space into the old
    space by least squares on this many gallery documents (0 = none). For a start model of
    another architecture than the old one, whose space is unrelated to the gallery's.
    """

    method: str
    old: str
    gallery: str
    train_data: str
    out: str
    init: str | None = None
    split: str = "train"
    epochs: int = 1
    batch_size: int = 16
    lr: float = 2e-5
    extra_dims: int = 64
    seed: int = 0
    max_steps: int | None = None
    hard_negatives: int = 1
    depth: int = 200
    max_seq_length: int = 256
    compat_weight: float = 1.0
    align_docs: int = 0
    checkpoint_every: int = 25

    def check(self) -> None:
        """Refuse a bad spec before any model is loaded."""
        if self.method not in METHODS:
            raise CompatretError(f"unknown method {self.method!r}: choose from {', '.join(METHODS)}")
        for name in ("epochs", "batch_size", "depth", "max_seq_length", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise CompatretError(f"{name.replace('_', '-')} must be >= 1")
        if self.batch_size < 2:
            raise CompatretError("batch-size must be >= 2 (in-batch negatives)")
        if self.max_steps is not None and self.max_steps < 1:
            raise CompatretError("max-steps must be >= 1")
        if self.lr <= 0:
            raise CompatretError("lr must be > 0")
        if self.hard_negatives < 0 or self.compat_weight < 0 or self.align_docs < 0:
            raise CompatretError("hard-negatives, compat-weight and align-docs must be >= 0")
        if self.align_docs and self.method == "star":
            raise CompatretError("star trains an independent space: align-docs applies to the compatible methods")
        if self.method in ("bt2", "oca") and self.extra_dims < 1:
            raise CompatretError(f"{self.method} needs extra-dims >= 1")
        if not Path(self.gallery).exists():
            raise CompatretError(f"no gallery at {self.gallery}")
        if not Path(self.train_data).is_dir():
            raise CompatretError(f"no training data folder at {self.train_data}")

    def fingerprint(self) -> str:
        """Hash of everything that changes the trained weights (not where it is written)."""
        d = asdict(self)
        for key in ("out", "checkpoint_every"):
            d.pop(key)
        if not d["align_docs"]:
            d.pop("align_docs")  # added later: unset, it keeps the fingerprints of runs that predate it
        for key in ("gallery", "train_data"):
            d[key] = str(Path(d[key]).resolve())
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]
