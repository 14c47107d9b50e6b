"""The compatibility contract: model versions, their Compat rules and lineage resolution."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from compatret.errors import CompatretError

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
    transform_path: str | None = None

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
                    f"identity rule needs equal dims: {self.id} has {self.dim}, "
                    f"parent {self.parent.id} has {self.parent.dim}"
                )
            if self.compat.kind == "prefix" and not (
                self.compat.dims and self.compat.dims <= min(self.dim, self.parent.dim)
            ):
                raise CompatretError(
                    f"prefix({self.compat.dims}) does not fit dims {self.dim} / {self.parent.dim}"
                )

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
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CompatretError(f"malformed model version record: {exc}") from exc

    def save(self, model_dir: str | Path) -> Path:
        path = Path(model_dir) / VERSION_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @staticmethod
    def load(model_dir: str | Path) -> ModelVersion:
        path = Path(model_dir) / VERSION_FILE
        if not path.exists():
            raise CompatretError(f"{model_dir} has no {VERSION_FILE}: not a compatret model folder")
        return ModelVersion.from_dict(json.loads(path.read_text()))


@dataclass(frozen=True)
class Affine:
    """y = x @ weight + bias: one learned transform step, parent space -> child space."""

    weight: np.ndarray
    bias: np.ndarray

    @staticmethod
    def load(path: str | Path) -> Affine:
        m = np.load(path).astype(np.float32)
        return Affine(weight=m[:-1], bias=m[-1])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x @ self.weight + self.bias


@dataclass(frozen=True)
class CompatPlan:
    """How to score query vectors of one model against stored vectors of an ancestor.

    Score = cosine(query[:, :dims], map(gallery)[:, :dims]), where map applies the
    learned transforms of the path in order.
    """

    query_model: str
    gallery_model: str
    dims: int
    gallery_transforms: tuple[str, ...] = ()


def resolve(query: ModelVersion, gallery: ModelVersion, base_dir: str | Path | None = None) -> CompatPlan:
    """Compose the Compat rules from `gallery` down to `query` into one CompatPlan.

    identity keeps the shared dims, prefix(d) narrows them to d, transform maps the
    gallery vectors into the child space (it needs the full parent space). A query model
    whose lineage does not reach the gallery's version is refused.
    """
    chain = query.lineage()
    ids = [m.id for m in chain]
    if gallery.id not in ids:
        raise CompatretError(
            f"model {query.id!r} is not compatible with gallery model {gallery.id!r}: "
            f"its lineage is {' -> '.join(ids)}"
        )
    path = list(reversed(chain[: ids.index(gallery.id) + 1]))  # gallery ... query
    if path[0].dim != gallery.dim:
        raise CompatretError(f"gallery model {gallery.id!r} dim differs from lineage record")
    shared = gallery.dim
    transforms: list[str] = []
    for child in path[1:]:
        parent = child.parent
        assert parent is not None
        rule = child.compat
        if rule.kind == "prefix":
            assert rule.dims is not None
            shared = min(shared, rule.dims)
        elif rule.kind == "transform":
            if shared != parent.dim:
                raise CompatretError(
                    f"cannot apply transform of {child.id!r} after a prefix rule narrowed "
                    f"the shared space to {shared} dims"
                )
            assert rule.transform_path is not None
            tp = Path(rule.transform_path)
            if base_dir is not None and not tp.is_absolute():
                tp = Path(base_dir) / tp
            transforms.append(str(tp))
            shared = child.dim
    return CompatPlan(query.id, gallery.id, shared, tuple(transforms))


def apply_plan(plan: CompatPlan, queries: np.ndarray | None, gallery: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Map query and/or gallery vectors into the plan's shared space, L2-normalised."""
    q = g = None
    if queries is not None:
        q = normalize(np.ascontiguousarray(queries[:, : plan.dims], dtype=np.float32))
    if gallery is not None:
        g = gallery.astype(np.float32, copy=False)
        for tp in plan.gallery_transforms:
            g = Affine.load(tp)(g)
        g = normalize(np.ascontiguousarray(g[:, : plan.dims], dtype=np.float32))
    return q, g


def normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)
