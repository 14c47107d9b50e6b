"""Turn a plain sentence-transformers folder into a compatret model folder (weights + record)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from compatret.core.errors import CompatretError
from compatret.core.lineage import VERSION_FILE, ModelVersion
from compatret.encoders.base import write_encoder_config
from compatret.encoders.folders import built_beside

ST_MARKERS = ("modules.json", "config_sentence_transformers.json")


def is_sentence_transformers_dir(path: Path) -> bool:
    """True for a folder that SentenceTransformer(path) reads (what the hub and `model.save` write)."""
    return path.is_dir() and any((path / m).exists() for m in ST_MARKERS) and not (path / VERSION_FILE).exists()


def import_sentence_transformers(source: str | Path, out: str | Path, model_id: str | None = None) -> ModelVersion:
    """Copy `source` into `out` with an encoder.json and a root ModelVersion (no parent): the model
    can then create galleries, be adapted to, or be trained from. Loads it once to learn its dim
    and to prove it runs; a failed import leaves nothing at `out`."""
    src, dst = Path(source), Path(out)
    if not is_sentence_transformers_dir(src):
        raise CompatretError(
            f"{src} is not a sentence-transformers folder (no {' or '.join(ST_MARKERS)})"
            + (" (it is a compatret model folder already)" if (src / VERSION_FILE).exists() else "")
        )
    if dst.exists() and any(dst.iterdir()):
        raise CompatretError(f"{dst} exists and is not empty")
    if model_id is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", model_id):
        raise CompatretError(f"--id {model_id!r}: use letters, digits, '.', '_' and '-' (it names files in galleries)")
    vid = model_id or re.sub(r"[^A-Za-z0-9_.-]+", "-", src.resolve().name).strip("-.").lower() or "model"
    try:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(src), device="cpu")
        dim = (getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension)()
    except (OSError, ValueError, KeyError, RuntimeError, ImportError, AttributeError) as exc:  # what a broken folder raises
        raise CompatretError(f"{src} could not be loaded by sentence-transformers: {str(exc).splitlines()[0]}") from exc
    if not dim:
        raise CompatretError(f"{src}: sentence-transformers reports no embedding dimension")
    with built_beside(dst) as tmp:
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("desktop.ini", ".git"))
        write_encoder_config(tmp, "sentence-transformers")
        ModelVersion(vid, int(dim), "text", method=f"pretrained:sentence-transformers folder {src.resolve().name}").save(tmp)
    return ModelVersion.load(dst)
