"""The compatibility contract: model versions, their Compat rules and lineage resolution."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from compatret.core.digests import weights_digest
from compatret.core.errors import CompatretError

VERSION_FILE = "compatret_version.json"
CompatKind = Literal["identity", "prefix", "transform"]


@dataclass(frozen=True)
class Compat:
    """How a model's vectors compare with its parent's.

    identity: same space (BCT, d-Simplex, ADORE).
    prefix(d): the first d dims live in the parent's space (BT², OCA).
    transform: parent vectors mapped into this model's space by a learned affine map
    (FCT-style); the map is stored as an .npy file of shape [parent_dim + 1, dim]
    (weights, then bias row).
    """

    kind: CompatKind = "identity"
    dims: int | None = None
    transform_path: str | None = None  # relative to the gallery (or model) folder, never outside it

    def __post_init__(self) -> None:
        if self.transform_path is not None:
            rel = PurePosixPath(self.transform_path)
            if not self.transform_path or rel.is_absolute() or Path(self.transform_path).is_absolute() or ".." in rel.parts:
                raise CompatretError(f"transform_path {self.transform_path!r} must be a relative path inside the model folder")

    @staticmethod
    def identity() -> Compat:
        return Compat("identity")

    @staticmethod
    def prefix(dims: int) -> Compat:
        if dims < 1:
            raise CompatretError(f"prefix dims must be >= 1, got {dims}")
        return Compat("prefix", dims=dims)

    @staticmethod
    def transform(path: str | Path) -> Compat:
        return Compat("transform", transform_path=str(path))

    def __str__(self) -> str:
        """The rule as people read it: identity, prefix(384), transform."""
        return self.kind + (f"({self.dims})" if self.dims is not None else "")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.dims is not None:
            out["dims"] = self.dims
        if self.transform_path is not None:
            out["transform_path"] = self.transform_path
        return out

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Compat:
        kind = d.get("kind")
        if kind not in ("identity", "prefix", "transform"):
            raise CompatretError(f"unknown compat rule {kind!r}")
        return Compat(kind, dims=d.get("dims"), transform_path=d.get("transform_path"))


class IncompatibleLineage(CompatretError):
    """A model whose lineage does not reach the gallery's model: its vectors are never compared."""


@dataclass(frozen=True)
class ModelVersion:
    """An immutable record of one model: its space (dim), parent and how it compares to it.

    The whole ancestry is held inline (parent is a ModelVersion), so a record saved next
    to the weights or in a gallery is enough to compare with any ancestor years later.
    """

    id: str
    dim: int
    modality: str = "text"
    parent: ModelVersion | None = None
    compat: Compat = field(default_factory=Compat.identity)
    method: str = "pretrained"
    metric: str = "cosine"
    digest: str | None = field(
        default=None, compare=False
    )  # weights_digest of its folder when saved; None for aliases and older records (checked by check_same_weights, not by ==)

    def __post_init__(self) -> None:
        if not self.id:
            raise CompatretError("model version id must not be empty")
        if self.dim < 1:
            raise CompatretError(f"model dim must be >= 1, got {self.dim}")
        if self.parent is None and self.compat.kind != "identity":
            raise CompatretError(f"model {self.id!r} has a {self.compat.kind} rule but no parent")
        if self.parent is not None:
            if self.compat.kind == "identity" and self.parent.dim != self.dim:
                raise CompatretError(
                    f"identity rule needs equal dims: {self.id} has {self.dim}, parent {self.parent.id} has {self.parent.dim}"
                )
            if self.compat.kind == "prefix" and not (self.compat.dims and self.compat.dims <= min(self.dim, self.parent.dim)):
                raise CompatretError(f"prefix({self.compat.dims}) does not fit dims {self.dim} / {self.parent.dim}")

    def lineage(self) -> list[ModelVersion]:
        """This version then its ancestors, newest first."""
        out: list[ModelVersion] = []
        node: ModelVersion | None = self
        while node is not None:
            if any(n.id == node.id for n in out):
                raise CompatretError(f"lineage of {self.id!r} has a cycle at {node.id!r}")
            out.append(node)
            node = node.parent
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "dim": self.dim,
            "modality": self.modality,
            "method": self.method,
            "metric": self.metric,
            "compat": self.compat.to_dict(),
            "parent": self.parent.to_dict() if self.parent is not None else None,
            **({"digest": self.digest} if self.digest else {}),
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> ModelVersion:
        try:
            parent = ModelVersion.from_dict(d["parent"]) if d.get("parent") else None
            return ModelVersion(
                id=str(d["id"]),
                dim=int(d["dim"]),
                modality=str(d.get("modality", "text")),
                parent=parent,
                compat=Compat.from_dict(d.get("compat", {"kind": "identity"})),
                method=str(d.get("method", "pretrained")),
                metric=str(d.get("metric", "cosine")),
                digest=str(d["digest"]) if d.get("digest") else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CompatretError(f"malformed model version record: {exc}") from exc

    def save(self, model_dir: str | Path) -> Path:
        """Write the record, with the digest of the weights already in the folder (write them first)."""
        path = Path(model_dir) / VERSION_FILE
        record = replace(self, digest=self.digest or weights_digest(model_dir))
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(record.to_dict(), indent=2))
        os.replace(tmp, path)
        return path

    @staticmethod
    def load(model_dir: str | Path) -> ModelVersion:
        """The record of a model folder, carrying the digest of the weights actually there.

        A record whose digest differs from its folder's weights is refused (the weights were
        replaced); a record written before digests existed gets the folder's digest."""
        path = Path(model_dir) / VERSION_FILE
        if not path.exists():
            raise CompatretError(f"{model_dir} has no {VERSION_FILE}: not a compatret model folder")
        try:
            version = ModelVersion.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise CompatretError(f"{path} is not valid JSON: {exc.msg}") from exc
        found = weights_digest(model_dir)
        if version.digest and found and version.digest != found:
            raise CompatretError(f"model folder {model_dir}: its weights differ from the ones its record {version.id!r} was saved with")
        return replace(version, digest=found or version.digest)


def check_same_weights(known: Iterable[ModelVersion], candidate: ModelVersion) -> None:
    """Refuse `candidate` when a version of its lineage has the id of a known version but other
    weights: an id names a model only together with its content (records without a digest pass)."""
    digests: dict[str, str] = {}
    for version in known:
        for node in version.lineage():
            if node.digest:
                digests.setdefault(node.id, node.digest)
    for node in candidate.lineage():
        if node.digest and digests.get(node.id, node.digest) != node.digest:
            raise CompatretError(
                f"model {candidate.id!r}: same id {node.id!r} as this gallery's model, different weights "
                f"({node.digest[:19]} vs {digests[node.id][:19]})"
            )
