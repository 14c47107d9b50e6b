"""Load a trainable SentenceTransformer from a model spec; save a trained one as a compatret model folder."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from compatret.core.errors import CompatretError
from compatret.core.lineage import VERSION_FILE, ModelVersion
from compatret.encoders.base import ENCODER_FILE, write_encoder_config
from compatret.encoders.registry import ALIASES, _minilm_l6_dir, adapter_parts, read_encoder_config
from compatret.train.text.heads import ExtensionHead

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

ITEM_ENCODER_DIR = "item_encoder"
TRAINABLE_ALIASES = {"minilm-l6": _minilm_l6_dir}


def load_trainable(spec: str, device: str = "cpu") -> SentenceTransformer:
    """A SentenceTransformer to fine-tune: the minilm-l6 alias, a sentence-transformers folder, or
    a query-direction adapter folder over one of those.

    Frozen ONNX models (minilm-l3) have no trainable weights: start from another model
    with --init and train it towards their gallery.
    """
    from sentence_transformers import SentenceTransformer

    if spec in TRAINABLE_ALIASES:
        return SentenceTransformer(str(TRAINABLE_ALIASES[spec]()), device=device)
    if spec in ALIASES:
        raise CompatretError(f"{spec} is a frozen model and cannot be trained; start from minilm-l6 (--init)")
    path = Path(spec)
    cfg = path / ENCODER_FILE
    settings = read_encoder_config(path) if cfg.exists() else {}
    if settings.get("kind") == "adapted":
        return _trainable_adapter(path, settings, device)
    if settings.get("kind") != "sentence-transformers":
        raise CompatretError(f"{spec} is not a sentence-transformers model folder written by compatret")
    return SentenceTransformer(str(path), device=device)


def _trainable_adapter(path: Path, settings: dict, device: str) -> SentenceTransformer:
    """A `compatret adapt --direction query` folder as start weights: its base model with the
    fitted head appended as a Dense layer (and a Normalize), so training starts exactly where
    the adapter serves: inside the gallery's space."""
    import torch
    from sentence_transformers.base.modules.dense import Dense
    from sentence_transformers.base.modules.normalize import Normalize

    base, head = adapter_parts(path, settings)
    if head.w1 is not None:
        raise CompatretError(f"{path}'s head is an MLP: --init takes a linear adapter (compatret adapt --direction query --kind affine)")
    model = load_trainable(base, device)
    weight, bias = torch.from_numpy(head.weight.T.copy()), torch.from_numpy(head.bias.copy())
    model.append(
        Dense(
            weight.shape[1],
            weight.shape[0],
            bias=True,
            activation_function=nn.Identity(),
            init_weight=weight,
            init_bias=bias,
        ).to(device)
    )
    model.append(Normalize())
    return model


def export_modules(model: nn.Module) -> SentenceTransformer:
    """The model with training-only structure folded away (ExtensionHead -> Dense)."""
    from sentence_transformers import SentenceTransformer

    modules = [m.to_dense() if isinstance(m, ExtensionHead) else m for m in model.children()]
    out = SentenceTransformer(modules=modules, device="cpu")
    out.max_seq_length = model.max_seq_length
    return out


def save_retriever(model: nn.Module, out: str | Path, version: ModelVersion, item_encoder: str | None = None) -> Path:
    """Write a folder `load_encoder` and `Service.upgrade` accept: weights, version, encoder.json.

    item_encoder (query-only models): the frozen encoder spec for items. An alias is
    recorded as is; a folder is copied into the model so the model folder stands alone.
    """
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    export_modules(model).save(str(d))
    settings: dict[str, str] = {}
    if item_encoder is not None:
        if item_encoder in ALIASES:
            settings["item_encoder"] = item_encoder
        else:
            shutil.copytree(item_encoder, d / ITEM_ENCODER_DIR, dirs_exist_ok=True)
            settings["item_encoder"] = ITEM_ENCODER_DIR
    write_encoder_config(d, "sentence-transformers", **settings)
    version.save(d)  # written last: its presence marks a finished model
    return d / VERSION_FILE
