"""Which model a name means in a gallery: an id of its lineage, an alias, or a model folder."""

from __future__ import annotations

from pathlib import Path

from compatret.core.lineage import ModelVersion, check_same_weights
from compatret.encoders import load_version
from compatret.store.meta import GalleryMeta


def source_of(spec: str) -> str:
    """What to store so the model can be loaded later: an alias, or an absolute folder path."""
    path = Path(spec)
    return str(path.resolve()) if path.exists() else spec


def known_versions(meta: GalleryMeta) -> list[ModelVersion]:
    """Every model version this gallery has recorded: serving, first, and the writers of rows."""
    return [meta.serving, meta.vector_model, *meta.versions.values()]


def lineage(meta: GalleryMeta) -> dict[str, ModelVersion]:
    """id -> version of every model a query may name by id: the recorded ones and their ancestors."""
    return {v.id: v for known in known_versions(meta) for v in known.lineage()}


def named_version(model: str | None, meta: GalleryMeta) -> ModelVersion:
    """The version `model` names (None: the serving one): an id of the gallery's lineage, else an
    alias or a model folder, refused when it reuses a known id with other weights."""
    if model is None:
        return meta.serving
    named = lineage(meta).get(model)
    if named is not None:
        return named
    version = load_version(model)
    check_same_weights(known_versions(meta), version)
    return version
