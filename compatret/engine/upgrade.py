"""Upgrading a gallery's serving model in O(1): every check first (it must read every stored
row, its transform files must be where the lineage says), then one metadata commit."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

from compatret.core.contract import resolve
from compatret.core.errors import CompatretError
from compatret.core.lineage import IncompatibleLineage, check_same_weights
from compatret.core.paths import confined
from compatret.encoders import ALIASES, load_version
from compatret.encoders.registry import check_endpoint
from compatret.engine.models import known_versions, source_of
from compatret.engine.results import NeedsAdapter
from compatret.store.gallery import Gallery
from compatret.store.meta import GalleryMeta

TRANSFORMS_DIR = "transforms"


def upgrade_gallery(gallery: Gallery, model: str, gate: dict[str, Any] | None = None, check_only: bool = False) -> GalleryMeta:
    """Make a compatible model the serving model: one metadata commit, nothing re-embedded.

    `gate`: the numbers of a passed upgrade gate, recorded in the history; it was measured
    against `gate["serving"]`, so the upgrade is refused if another writer changed the
    serving model since. `check_only`: every check, nothing written (a sharded gallery checks
    all its shards before it upgrades any)."""
    version = load_version(model)
    check_endpoint(model, "upgrade to it")  # a model behind an endpoint must still be the one registered
    with gallery.writing("upgrade"):
        meta = gallery.meta
        if gate is not None and gate.get("serving") != meta.serving.id:
            raise CompatretError(
                f"the gate compared against {gate.get('serving')!r}, but the gallery now serves {meta.serving.id!r}: run it again"
            )
        check_same_weights(known_versions(meta), version)
        if version.modality != meta.modality and meta.modality != "vector":
            raise CompatretError(f"model {version.id!r} is for {version.modality}, this gallery holds {meta.modality}")
        for writer in (meta.vector_model, *meta.versions.values()):
            try:
                resolve(version, writer, gallery.path)  # refuses a model that cannot read every row
            except IncompatibleLineage as exc:
                serving = f", serving {meta.serving.id!r}" if meta.serving.id != writer.id else ""
                raise NeedsAdapter(
                    f"model {version.id!r} cannot read this gallery's rows ({writer.id!r} vectors{serving}): its "
                    f"lineage {' -> '.join(v.id for v in version.lineage())} does not reach {writer.id!r}"
                ) from exc
            except CompatretError as exc:  # the lineage reaches the writer, but its rules cannot be composed
                raise CompatretError(f"model {version.id!r} cannot read this gallery's {writer.id!r} rows: {exc}") from exc
        model_dir = Path(model)
        names = [str(n.compat.transform_path) for n in version.lineage() if n.compat.kind == "transform"]
        stray = [name for name in names if PurePosixPath(name).parent != PurePosixPath(TRANSFORMS_DIR)]
        if stray:
            raise CompatretError(f"model {version.id!r}: transform files live in {TRANSFORMS_DIR}/, not {stray[0]!r}")
        transforms = [confined(model_dir, name, "transform file") for name in names]
        targets = [confined(gallery.path, name, "transform file") for name in names]
        missing = [t for t in transforms if not t.exists()]
        if missing:
            raise CompatretError(f"model {version.id!r} lacks its transform file {missing[0]}")
        if check_only:
            return meta
        if transforms:  # only once the upgrade is known to be valid: a refusal changes nothing
            (gallery.path / TRANSFORMS_DIR).mkdir(exist_ok=True)
        for src, target in zip(transforms, targets):
            shutil.copyfile(src, target)
        sources = dict(meta.sources)
        if (model_dir / "encoder.json").exists() or model in ALIASES:
            sources[version.id] = source_of(model)
        new_meta = replace(
            gallery.with_event("upgrade", model=version.id, previous=meta.serving.id, **({"gate": gate} if gate else {})),
            serving=version,
            sources=sources,
        )
        gallery.set_meta(new_meta)
    return new_meta
