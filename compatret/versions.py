"""The compatibility contract: model versions, their Compat rules and lineage resolution."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Literal

import numpy as np

from compatret.errors import CompatretError

VERSION_FILE = "compatret_version.json"
CompatKind = Literal["identity", "prefix", "transform"]
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".npy", ".npz")
NOT_WEIGHTS = ("checkpoint", "checkpoints")  # training state, deleted or rewritten after the record


def confined(base: str | Path, relative: str, what: str) -> Path:
    """`base / relative`, refusing a path that leaves `base`: absolute, `..`, or a symlink out.

    Records (encoder.json, version records) come from folders a user may not have written;
    a path in them must never name a file elsewhere on the machine.
    """
    rel = PurePosixPath(str(relative))
    if not str(relative) or rel.is_absolute() or Path(str(relative)).is_absolute() or ".." in rel.parts:
        raise CompatretError(f"{what} {relative!r} must be a relative path inside its folder")
    root = Path(base).resolve()
    target = (root / rel).resolve()
    if target != root and root not in target.parents:
        raise CompatretError(f"{what} {relative!r} leads out of its folder")
    return target


def weights_digest(model_dir: str | Path) -> str | None:
    """sha256 over a model folder's weight files (names and bytes), or None when it has none.

    Identity by content: two folders whose records share an id are the same model only if this
    matches. Training checkpoints are left out (they are rewritten, then deleted).
    """
    root = Path(model_dir)
    files = sorted(p for p in root.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file()
                   and not set(p.relative_to(root).parts[:-1]) & set(NOT_WEIGHTS))
    if not files:
        return None
    key = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        for p in files:
            h.update(p.relative_to(root).as_posix().encode() + b"\0")
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        _DIGESTS[key] = "sha256:" + h.hexdigest()
    return _DIGESTS[key]


_DIGESTS: dict[tuple[tuple[str, int, int], ...], str] = {}


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
    digest: str | None = field(default=None, compare=False)  # weights_digest of its folder when saved; None for aliases and older records (checked by check_same_weights, not by ==)

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
            raise CompatretError(f"model {candidate.id!r}: same id {node.id!r} as this gallery's model, different weights "
                                 f"({node.digest[:19]} vs {digests[node.id][:19]})")


@dataclass(frozen=True)
class LearnedMap:
    """y = x @ weight + bias [+ relu(x @ w1 + b1) @ w2]: one learned transform step, parent space
    -> child space. Stored as .npy (the weight rows, then the bias row) or as .npz (weight, bias,
    and w1, b1, w2 when it has a residual layer); read with numpy only."""

    weight: np.ndarray
    bias: np.ndarray
    w1: np.ndarray | None = None
    b1: np.ndarray | None = None
    w2: np.ndarray | None = None

    @staticmethod
    def load(path: str | Path, name: str | None = None) -> LearnedMap:
        """The map in `path`. An error names it as `name` (say, relative to its gallery), else by its
        file name: the message may reach an HTTP client, which must not learn the server's folders."""
        try:
            if str(path).endswith(".npz"):
                with np.load(path, allow_pickle=False) as z:
                    parts = {k: z[k].astype(np.float32) for k in ("weight", "bias", "w1", "b1", "w2") if k in z}
                return LearnedMap(**parts)
            m = np.load(path, allow_pickle=False).astype(np.float32)
            return LearnedMap(weight=m[:-1], bias=m[-1])
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)  # an OSError's own text repeats the path
            raise CompatretError(f"cannot read transform {name or Path(path).name}: {why}") from exc

    def save(self, path: str | Path) -> None:
        """As .npz, written whole or not at all."""
        arrays = {k: v for k, v in (("weight", self.weight), ("bias", self.bias), ("w1", self.w1), ("b1", self.b1), ("w2", self.w2))
                  if v is not None}
        tmp = Path(path).with_name(f".{Path(path).name}.tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, **{k: np.asarray(v, np.float32) for k, v in arrays.items()})
        os.replace(tmp, path)

    @property
    def dims(self) -> tuple[int, int]:
        """(input dim, output dim)."""
        return int(self.weight.shape[0]), int(self.weight.shape[1])

    def __call__(self, x: np.ndarray, block: int = 8192) -> np.ndarray:
        """Mapped in blocks of rows: temporaries stay small (a 1M-row group needs no 2 GB hidden layer)."""
        x = np.asarray(x, dtype=np.float32)
        y = np.empty((len(x), self.weight.shape[1]), np.float32)
        for s in range(0, len(x), block):
            part = x[s : s + block]
            out = part @ self.weight
            out += self.bias
            if self.w1 is not None and self.b1 is not None and self.w2 is not None:
                hidden = part @ self.w1
                hidden += self.b1
                np.maximum(hidden, 0, out=hidden)
                out += hidden @ self.w2
            y[s : s + block] = out
        return y


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
    base_dir: str | None = None  # the folder gallery_transforms lie in: errors name them relative to it


def resolve(query: ModelVersion, gallery: ModelVersion, base_dir: str | Path | None = None) -> CompatPlan:
    """Compose the Compat rules from `gallery` down to `query` into one CompatPlan.

    identity keeps the shared dims, prefix(d) narrows them to d, transform maps the
    gallery vectors into the child space (it needs the full parent space). An ancestor's
    queries against a descendant's vectors work through identity and prefix rules (see
    `_ancestor_plan`); models on other branches are refused.
    """
    chain = query.lineage()
    ids = [m.id for m in chain]
    if gallery.id not in ids:
        if query.id in [m.id for m in gallery.lineage()]:
            return _ancestor_plan(query, gallery)
        raise IncompatibleLineage(
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
            tp = confined(base_dir, rule.transform_path, "transform_path") if base_dir is not None else Path(rule.transform_path)
            transforms.append(str(tp))
            shared = child.dim
    return CompatPlan(query.id, gallery.id, shared, tuple(transforms), str(Path(base_dir).resolve()) if base_dir is not None else None)


def _ancestor_plan(query: ModelVersion, gallery: ModelVersion) -> CompatPlan:
    """An older model's queries against a descendant's vectors (a client not yet upgraded).

    Walking down from the query's model: identity keeps the space, prefix(d) keeps d dims of
    it (the descendant's first d dims live in its parent's space); a transform has no inverse,
    so the older model cannot read those vectors and is refused, naming the rule."""
    path = list(reversed(gallery.lineage()))
    path = path[[m.id for m in path].index(query.id):]  # query ... gallery
    shared = query.dim
    for child in path[1:]:
        if child.compat.kind == "transform":
            raise CompatretError(f"model {query.id!r} cannot query vectors of {gallery.id!r}: {child.id!r} maps its parent's "
                                 "space with a transform, which has no inverse (upgrade the client to a newer model)")
        if child.compat.kind == "prefix":
            assert child.compat.dims is not None
            shared = min(shared, child.compat.dims)
    return CompatPlan(query.id, gallery.id, shared)


def apply_plan(plan: CompatPlan, queries: np.ndarray | None, gallery: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Map query and/or gallery vectors into the plan's shared space, L2-normalised."""
    q = g = None
    if queries is not None:
        q = normalize(np.ascontiguousarray(queries[:, : plan.dims], dtype=np.float32))
    if gallery is not None:
        g = gallery.astype(np.float32, copy=False)
        for tp in plan.gallery_transforms:
            g = LearnedMap.load(tp, os.path.relpath(tp, plan.base_dir) if plan.base_dir else None)(g)
        g = normalize(np.ascontiguousarray(g[:, : plan.dims], dtype=np.float32))
    return q, g


def normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation (zero rows stay zero); rows are first scaled by their largest
    magnitude, so 1e20 or 1e-30 components neither overflow nor vanish when squared."""
    x = np.asarray(x, dtype=np.float32)
    peak = np.abs(x).max(axis=1, keepdims=True) if x.size else np.ones((len(x), 1), np.float32)
    x = x / np.where(peak > 0, peak, 1).astype(np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)
