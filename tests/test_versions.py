from __future__ import annotations

import numpy as np
import pytest

from compatret import Compat, CompatretError, ModelVersion
from compatret.core.contract import apply_plan, resolve


def chain() -> tuple[ModelVersion, ModelVersion, ModelVersion]:
    v1 = ModelVersion("v1", 8)
    v2 = ModelVersion("v2", 8, parent=v1, compat=Compat.identity(), method="bct")
    v3 = ModelVersion("v3", 12, parent=v2, compat=Compat.prefix(8), method="bt2")
    return v1, v2, v3


def test_lineage_and_roundtrip(tmp_path):
    v1, v2, v3 = chain()
    assert [v.id for v in v3.lineage()] == ["v3", "v2", "v1"]
    v3.save(tmp_path)
    again = ModelVersion.load(tmp_path)
    assert again == v3 and again.parent.parent == v1


def test_rules_compose_along_lineage():
    v1, v2, v3 = chain()
    assert resolve(v3, v1).dims == 8
    assert resolve(v3, v2).dims == 8
    assert resolve(v3, v3).dims == 12
    assert resolve(v2, v1).dims == 8
    v4 = ModelVersion("v4", 16, parent=v3, compat=Compat.prefix(12))
    assert resolve(v4, v3).dims == 12 and resolve(v4, v1).dims == 8


def test_unrelated_model_is_refused():
    v1, _, v3 = chain()
    other = ModelVersion("other", 8)
    with pytest.raises(CompatretError, match="not compatible"):
        resolve(other, v1)
    sibling = ModelVersion("sibling", 8, parent=v1)
    with pytest.raises(CompatretError, match="not compatible"):
        resolve(sibling, v3)  # another branch of the lineage


def test_older_models_query_newer_vectors_where_rules_allow():
    """A client not yet upgraded: identity and prefix rules read both ways, a transform does not."""
    v1, v2, v3 = chain()
    assert resolve(v1, v2).dims == 8 and resolve(v1, v3).dims == 8 and resolve(v2, v3).dims == 8
    assert resolve(v1, v3).gallery_transforms == ()
    v4 = ModelVersion("v4", 6, parent=v3, compat=Compat.transform("transforms/v4.npy"))
    with pytest.raises(CompatretError, match="no inverse"):
        resolve(v1, v4)
    narrow = ModelVersion("v5", 8, parent=v1, compat=Compat.prefix(4))  # only its first 4 dims live in v1's space
    plan = resolve(v1, narrow)
    assert plan.dims == 4 and (plan.query_model, plan.gallery_model) == ("v1", "v5")
    assert resolve(v1, ModelVersion("v6", 8, parent=narrow, compat=Compat.identity())).dims == 4  # narrowed once, stays narrow


def test_invalid_records_are_rejected():
    v1 = ModelVersion("v1", 8)
    with pytest.raises(CompatretError):
        ModelVersion("v2", 10, parent=v1, compat=Compat.identity())
    with pytest.raises(CompatretError):
        ModelVersion("v2", 10, parent=v1, compat=Compat.prefix(9))
    with pytest.raises(CompatretError):
        ModelVersion("v2", 10, compat=Compat.prefix(4))
    with pytest.raises(CompatretError):
        ModelVersion.from_dict({"id": "x"})


def test_prefix_plan_truncates_and_renormalises():
    v1, _, v3 = chain()
    plan = resolve(v3, v1)
    q = np.arange(24, dtype=np.float32).reshape(2, 12) + 1
    mq, _ = apply_plan(plan, q, None)
    assert mq.shape == (2, 8)
    np.testing.assert_allclose(np.linalg.norm(mq, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(mq[0], q[0, :8] / np.linalg.norm(q[0, :8]), rtol=1e-6)


def test_transform_plan_maps_gallery(tmp_path):
    v1 = ModelVersion("v1", 4)
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(4, 6)).astype(np.float32), rng.normal(size=6).astype(np.float32)
    (tmp_path / "transforms").mkdir()
    np.save(tmp_path / "transforms" / "v2.npy", np.vstack([w, b]))
    v2 = ModelVersion("v2", 6, parent=v1, compat=Compat.transform("transforms/v2.npy"))
    plan = resolve(v2, v1, tmp_path)
    assert plan.dims == 6 and len(plan.gallery_transforms) == 1
    g = rng.normal(size=(3, 4)).astype(np.float32)
    _, mg = apply_plan(plan, None, g)
    expect = g @ w + b
    np.testing.assert_allclose(mg, expect / np.linalg.norm(expect, axis=1, keepdims=True), rtol=1e-5)
    # a transform after a narrowing prefix cannot be applied: refused, not guessed
    v3 = ModelVersion("v3", 8, parent=v2, compat=Compat.prefix(4))
    v4 = ModelVersion("v4", 8, parent=v3, compat=Compat.transform("transforms/v4.npy"))
    with pytest.raises(CompatretError, match="transform"):
        resolve(v4, v1, tmp_path)


def test_apply_plan_gives_float32_on_the_sides_asked_and_names_a_bad_transform_by_its_gallery_path(tmp_path):
    v1 = ModelVersion("v1", 4)
    v2 = ModelVersion("v2", 4, parent=v1, compat=Compat.transform("transforms/v2.npy"))
    (tmp_path / "transforms").mkdir()
    np.save(tmp_path / "transforms" / "v2.npy", np.vstack([np.eye(4), np.zeros((1, 4))]))  # float64 on disk
    plan = resolve(v2, v1, tmp_path)
    rows = np.random.default_rng(0).normal(size=(3, 4))  # float64 in: what a caller may hand over
    q, none = apply_plan(plan, rows, None)
    assert q.dtype == np.float32 and none is None
    none, g = apply_plan(plan, None, rows)
    assert g.dtype == np.float32 and none is None
    (tmp_path / "transforms" / "v2.npy").write_bytes(b"not a numpy file")
    with pytest.raises(CompatretError, match=r"cannot read transform transforms/v2\.npy"):
        apply_plan(resolve(v2, v1, tmp_path), None, rows)


def test_the_same_id_with_other_weights_is_refused_naming_both_digests_shortly():
    from compatret.core.lineage import check_same_weights

    stored = ModelVersion("v1", 8, digest="sha256:" + "a" * 64)
    other = ModelVersion("v1", 8, digest="sha256:" + "b" * 64)
    child = ModelVersion("v2", 8, parent=other, compat=Compat.prefix(4), method="bt2")
    with pytest.raises(CompatretError) as refused:
        check_same_weights([stored], child)
    assert str(refused.value) == (
        "model 'v2': same id 'v1' as this gallery's model, different weights (sha256:bbbbbbbbbbbb vs sha256:aaaaaaaaaaaa)"
    )
    check_same_weights([stored], ModelVersion("v2", 8, parent=ModelVersion("v1", 8), compat=Compat.prefix(4), method="bt2"))  # no digest: passes
