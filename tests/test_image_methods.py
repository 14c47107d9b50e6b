"""Every image method trains on real digits, saves a folder that reloads exactly, and upgrades a gallery."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from compatret.data.images import ImageSplit, load_digits_splits
from compatret.encoders import load_encoder
from compatret.encoders.image import ImageModelSpec, load_image_model, to_batch
from compatret.core.errors import CompatretError
from compatret.models.heads.basis_transform import BasisTransform
from compatret.models.heads.orthogonal import OrthogonalProjection
from compatret.engine.service import Service
from compatret.train.image.methods import MethodSpec, fit_image_version
from compatret.train.image.trainer import TrainConfig
from compatret.core.lineage import ModelVersion
from compatret.core.transforms import normalize

SPEC = ImageModelSpec(width=0.125, in_channels=1, image_size=8, embed_dim=16, mean=(0.3,), std=(0.4,))
CFG = TrainConfig(epochs=2, batch_size=32, lr=0.05, crop_padding=1, flip=False, progress=False)
OLD_CLASSES = 7


@pytest.fixture(scope="module")
def digits() -> tuple[ImageSplit, ImageSplit]:
    train, test = load_digits_splits()
    return train.head_per_class(20), test.head_per_class(5)


@pytest.fixture(scope="module")
def parents(digits, tmp_path_factory) -> dict[str, Path]:
    """The two kinds of old model: cosine-classifier (for bct/bt2/oca) and d-Simplex."""
    train = digits[0].subset(digits[0].labels < OLD_CLASSES)
    root = tmp_path_factory.mktemp("parents")
    fit_image_version("v1", MethodSpec("independent"), train, SPEC, CFG, root / "v1")
    fit_image_version("v1-simplex", MethodSpec("dsimplex", max_classes=12), train, SPEC, CFG, root / "v1-simplex")
    return {"v1": root / "v1", "v1-simplex": root / "v1-simplex"}


CASES = {
    "independent": (MethodSpec("independent"), None, 16, "identity", None),
    "bct": (MethodSpec("bct"), "v1", 16, "identity", None),
    "dsimplex": (MethodSpec("dsimplex", max_classes=12), "v1-simplex", 11, "identity", None),
    "bt2": (MethodSpec("bt2", extra_dims=8), "v1", 24, "prefix", BasisTransform),
    "oca": (MethodSpec("oca", extra_dims=4), "v1", 20, "prefix", OrthogonalProjection),
}


@pytest.mark.parametrize("name", list(CASES))
def test_method_trains_saves_reloads_and_upgrades(name, digits, parents, tmp_path):
    method, parent, dim, rule, neck = CASES[name]
    train, test = digits
    out = tmp_path / name
    version = fit_image_version(f"v2-{name}", method, train, SPEC, CFG, out, parent_dir=parents.get(parent))
    assert (version.dim, version.compat.kind) == (dim, rule)
    assert ModelVersion.load(out) == version
    if rule == "prefix":
        assert version.compat.dims == 16

    model, state = load_image_model(out)
    if neck is not None:
        assert isinstance(model.neck, neck)
        w = model.neck.matrix.detach()
        torch.testing.assert_close(w @ w.T, torch.eye(dim), atol=1e-5, rtol=0)
        assert not torch.allclose(w, torch.eye(dim), atol=1e-4), "the orthogonal neck was not trained"
    assert ("classifier" in state) == (name != "dsimplex")
    x = to_batch(test.images[:6], SPEC)
    enc = load_encoder(str(out))
    torch.testing.assert_close(torch.from_numpy(enc.encode_items(test.images[:6])),
                               torch.nn.functional.normalize(model.eval()(x), dim=1), atol=1e-5, rtol=0)

    if parent is None:
        return
    items = [{"id": f"t{i}", "image": img} for i, img in enumerate(test.images)]
    gallery = Service.create(tmp_path / "g", model=str(parents[parent]))
    gallery.add_items(items, progress=False)
    gallery.upgrade(str(out))
    assert gallery.meta.serving.id == f"v2-{name}"
    assert gallery.plan().dims == (16 if rule == "prefix" else dim)
    hits = gallery.query(images=test.images[:3], k=2)
    # what the plan promises: the new model's queries, cut to the shared dims, scored by cosine on the old rows
    dims = gallery.plan().dims
    stored = gallery.gallery.vectors_by_id()
    ids = list(stored)
    g = normalize(np.stack([stored[i][1][:dims] for i in ids]))
    expect = normalize(enc.encode_queries(test.images[:3])[:, :dims]) @ g.T
    top = np.argsort(-expect, axis=1)[:, :2]
    assert [h.ids for h in hits] == [[ids[j] for j in row] for row in top]
    np.testing.assert_allclose([h.scores for h in hits], np.take_along_axis(expect, top, 1), atol=1e-5)


def test_method_errors(digits, parents, tmp_path):
    train = digits[0]
    with pytest.raises(CompatretError, match="needs the old model"):
        fit_image_version("x", MethodSpec("bt2"), train, SPEC, CFG, tmp_path / "x")
    with pytest.raises(CompatretError, match="unknown method"):
        fit_image_version("x", MethodSpec("lwf"), train, SPEC, CFG, tmp_path / "x")
    with pytest.raises(CompatretError, match="needs 11"):  # a cosine-classifier parent is no simplex
        fit_image_version("x", MethodSpec("dsimplex", max_classes=12), train, SPEC, CFG, tmp_path / "x", parent_dir=parents["v1"])
    with pytest.raises(CompatretError, match="saved no classifier"):
        fit_image_version("x", MethodSpec("bt2"), train, SPEC, CFG, tmp_path / "x", parent_dir=parents["v1-simplex"])
    with pytest.raises(CompatretError, match="preprocesses images differently"):
        fit_image_version("x", MethodSpec("bct"), train, ImageModelSpec(**{**SPEC.__dict__, "image_size": 16}), CFG,
                          tmp_path / "x", parent_dir=parents["v1"])
    assert not (tmp_path / "x").exists()
