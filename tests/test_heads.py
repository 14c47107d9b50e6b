"""Geometry and gradient checks for the simplex, BT² and OCA heads."""
from __future__ import annotations

import pytest
import torch

from compatret.models.heads.basis_transform import BasisTransform
from compatret.models.heads.orthogonal import OrthogonalProjection
from compatret.models.heads.simplex import SimplexClassifier, simplex_vertices


@pytest.mark.parametrize("k", [2, 3, 10, 100])
def test_simplex_vertices_are_a_regular_simplex(k: int) -> None:
    v = simplex_vertices(k).double()
    assert v.shape == (k, k - 1)
    torch.testing.assert_close(v.norm(dim=1), torch.ones(k, dtype=torch.float64))
    gram = v @ v.T
    off = gram[~torch.eye(k, dtype=torch.bool)]
    torch.testing.assert_close(off, torch.full_like(off, -1.0 / (k - 1)), atol=1e-6, rtol=0)
    torch.testing.assert_close(v.sum(dim=0), torch.zeros(k - 1, dtype=torch.float64), atol=1e-6, rtol=0)


def test_simplex_vertices_deterministic_and_validated() -> None:
    assert torch.equal(simplex_vertices(7), simplex_vertices(7))
    with pytest.raises(ValueError):
        simplex_vertices(1)


def test_simplex_classifier_buffer_logits_and_shape_check() -> None:
    clf = SimplexClassifier(10)
    assert list(clf.parameters()) == []
    assert "weight" in dict(clf.named_buffers())
    feats = torch.randn(4, 9, requires_grad=True)
    logits = clf(feats)
    assert logits.shape == (4, 10)
    torch.testing.assert_close(logits, feats @ simplex_vertices(10).T)
    logits.sum().backward()
    assert feats.grad is not None and clf.weight.grad is None
    # A feature equal to a vertex is classified as that vertex's class.
    assert clf(clf.weight).argmax(dim=1).tolist() == list(range(10))
    with pytest.raises(ValueError):
        clf(torch.randn(4, 10))


def _train_steps(module: torch.nn.Module, dim: int, steps: int = 50) -> None:
    torch.manual_seed(0)
    opt = torch.optim.SGD(module.parameters(), lr=0.5)
    target = torch.randn(32, dim)
    x = torch.randn(32, dim)
    for _ in range(steps):
        opt.zero_grad()
        loss = (module(x) - target).pow(2).mean()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("make", [lambda: OrthogonalProjection(12), lambda: BasisTransform(8, 4)])
def test_orthogonal_heads_stay_orthogonal_and_preserve_norms(make) -> None:
    head = make()
    start = head.matrix.detach().clone()
    torch.testing.assert_close(start, torch.eye(12))
    _train_steps(head, 12)
    w = head.matrix.detach()
    assert not torch.allclose(w, start, atol=1e-3), "training did not move the transform"
    torch.testing.assert_close(w @ w.T, torch.eye(12), atol=1e-5, rtol=0)
    x = torch.randn(64, 12)
    torch.testing.assert_close(head(x).norm(dim=1), x.norm(dim=1), atol=1e-5, rtol=1e-5)


def test_orthogonal_projection_gradient_and_shape_check() -> None:
    head = OrthogonalProjection(6)
    params = list(head.parameters())
    assert params and all(p.requires_grad for p in params)
    x = torch.randn(5, 6, requires_grad=True)
    head(x).pow(2).sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in params)
    with pytest.raises(ValueError):
        head(torch.randn(5, 7))


def test_basis_transform_dims() -> None:
    head = BasisTransform(old_dim=5, extra_dim=3)
    assert (head.old_dim, head.extra_dim, head.out_dim) == (5, 3, 8)
    assert head(torch.randn(2, 8)).shape == (2, 8)
    with pytest.raises(ValueError):
        BasisTransform(0, 3)
