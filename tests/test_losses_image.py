"""HOC, d-Simplex, BT² and OCA losses: unit checks plus a toy old/new upgrade that must become compatible."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compatret.evaluation.compat_metrics import retrieval_scores
from compatret.models.heads.basis_transform import BasisTransform
from compatret.models.heads.orthogonal import OrthogonalProjection
from compatret.models.losses.bct import influence_weights
from compatret.models.losses.bt2 import BT2Loss
from compatret.models.losses.hoc import DSimplexLoss, HOCLoss
from compatret.models.losses.oca import OCALoss, class_means

IN_DIM, OLD_DIM, EXTRA_DIM, NUM_CLASSES, OLD_CLASSES = 8, 4, 2, 8, 6


def test_hoc_lower_for_aligned_than_random_features() -> None:
    torch.manual_seed(0)
    old = torch.randn(64, 16)
    labels = torch.arange(64) % 8
    hoc = HOCLoss()
    aligned = hoc(old + 0.05 * torch.randn_like(old), old, labels)
    random = hoc(torch.randn(64, 16), old, labels)
    assert aligned.ndim == 0 and aligned >= 0
    assert aligned < 0.1 < 2.0 < random


def test_hoc_masks_same_class_negatives() -> None:
    # Two images of one class with swapped old features: unmasked, each anchor's
    # other-image similarity would dominate; masked, only the positive remains.
    old = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    new = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    same = HOCLoss()(new, old, torch.tensor([0, 0]))
    diff = HOCLoss()(new, old, torch.tensor([0, 1]))
    assert same == pytest.approx(0.0, abs=1e-6)
    assert diff == pytest.approx(10.0, abs=1e-3)  # log(1 + e^10) - 0 ≈ 10


def test_hoc_gradient_reaches_new_features_only() -> None:
    new = torch.randn(8, 5, requires_grad=True)
    old = torch.randn(8, 5, requires_grad=True)
    HOCLoss()(new, old, torch.arange(8) % 3).backward()
    assert new.grad is not None and new.grad.abs().sum() > 0
    assert old.grad is None
    with pytest.raises(ValueError):
        HOCLoss()(torch.randn(8, 5), torch.randn(8, 4), torch.arange(8))


def test_dsimplex_loss_parts() -> None:
    torch.manual_seed(0)
    crit = DSimplexLoss(num_classes=10)
    assert list(crit.parameters()) == []
    feats, labels = torch.randn(16, 9), torch.arange(16) % 4
    first = crit(feats, labels)
    assert first["hoc"] == 0 and torch.equal(first["total"], first["ce"])
    parts = crit(feats, labels, old_feats=torch.randn(16, 9))
    torch.testing.assert_close(parts["total"], 0.1 * parts["ce"] + 0.9 * parts["hoc"])
    # Features sitting on their class vertex classify with low CE.
    on_vertex = 10 * crit.classifier.weight[labels]
    assert crit(on_vertex, labels)["ce"] < 1e-3 < first["ce"]


def test_bt2_loss_parts_and_gradients() -> None:
    torch.manual_seed(0)
    old_w = torch.randn(5, OLD_DIM)
    old = torch.randn(10, OLD_DIM, requires_grad=True)
    new = torch.cat([old.detach(), torch.randn(10, EXTRA_DIM)], dim=1).requires_grad_()
    labels = torch.arange(10) % 5
    crit = BT2Loss(old_w, cosine_weight=2.0, influence_weight=0.5)
    parts = crit(new, old, labels)
    assert parts["cosine"].item() == pytest.approx(0.0, abs=1e-6)
    expected = F.cross_entropy(16 * F.normalize(old.detach()) @ F.normalize(old_w).T, labels)
    torch.testing.assert_close(parts["influence"], expected)
    torch.testing.assert_close(parts["total"], 2.0 * parts["cosine"] + 0.5 * parts["influence"])
    parts["total"].backward()
    assert old.grad is None and new.grad[:, OLD_DIM:].abs().sum() == 0
    assert new.grad[:, :OLD_DIM].abs().sum() > 0
    with pytest.raises(ValueError):
        crit(new, torch.randn(10, OLD_DIM + 1), labels)


def test_oca_loss_ignores_new_classes() -> None:
    protos = torch.eye(3, 4)
    crit = OCALoss(protos)
    feats = torch.zeros(4, 6)
    feats[0, 0] = feats[1, 1] = 1.0
    labels = torch.tensor([0, 1, 5, 7])
    parts = crit(feats, labels)
    assert parts["l2"] == pytest.approx(0.0, abs=1e-6)
    expected = F.cross_entropy(16 * feats[:2, :4] @ protos.T, labels[:2])
    torch.testing.assert_close(parts["ce"], expected)
    only_new = crit(torch.randn(2, 6, requires_grad=True), torch.tensor([3, 4]))
    assert only_new["total"] == 0
    only_new["total"].backward()


# --- toy upgrade: Gaussian blobs, tiny MLPs, frozen old model -------------------------------


def _blobs(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    centres = torch.randn(NUM_CLASSES, IN_DIM, generator=torch.Generator().manual_seed(123)) * 2.0
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(n_per_class)
    return centres[labels] + torch.randn(len(labels), IN_DIM, generator=gen), labels


def _mlp(out_dim: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(IN_DIM, 64), nn.ReLU(), nn.Linear(64, out_dim))


def _fit(params, loss_fn, steps: int = 300) -> None:
    opt = torch.optim.Adam(params, lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()


@pytest.fixture(scope="module")
def toy() -> dict:
    x, y = _blobs(100, seed=1)
    x_test, y_test = _blobs(50, seed=2)
    old_backbone, old_clf = _mlp(OLD_DIM, seed=10), nn.Linear(OLD_DIM, OLD_CLASSES)
    seen = y < OLD_CLASSES
    _fit(
        [*old_backbone.parameters(), *old_clf.parameters()],
        lambda: F.cross_entropy(old_clf(old_backbone(x[seen])), y[seen]),
    )
    with torch.no_grad():
        old_train, old_test = old_backbone(x), old_backbone(x_test)
    return {
        "x": x, "y": y, "x_test": x_test, "y_test": y_test,
        "old_train": old_train, "old_test": old_test, "old_clf": old_clf.weight.detach(),
    }


def _cross_model_top1(new_test: torch.Tensor, toy: dict) -> float:
    """New-model queries against the old-model gallery: the index is never re-encoded."""
    return retrieval_scores(
        new_test[:, :OLD_DIM].numpy(), toy["old_train"].numpy(),
        toy["y_test"].numpy(), toy["y"].numpy(), leave_one_out=False,
    )["top1"]


def _train_new(toy: dict, head: nn.Module, compat_loss=None) -> float:
    backbone = _mlp(OLD_DIM + EXTRA_DIM, seed=20)
    clf = nn.Linear(OLD_DIM + EXTRA_DIM, NUM_CLASSES)

    def loss() -> torch.Tensor:
        feats = head(backbone(toy["x"]))
        total = F.cross_entropy(clf(feats), toy["y"])
        if compat_loss is not None:
            total = total + compat_loss(feats)["total"]
        return total

    _fit([*backbone.parameters(), *head.parameters(), *clf.parameters()], loss)
    with torch.no_grad():
        return _cross_model_top1(head(backbone(toy["x_test"])), toy)


@pytest.fixture(scope="module")
def independent_top1(toy: dict) -> float:
    return _train_new(toy, nn.Identity())


def test_toy_old_model_is_a_good_retriever(toy: dict) -> None:
    top1 = retrieval_scores(
        toy["old_test"].numpy(), toy["old_train"].numpy(),
        toy["y_test"].numpy(), toy["y"].numpy(), leave_one_out=False,
    )["top1"]
    assert top1 > 80.0


def test_bt2_training_makes_prefix_compatible(toy: dict, independent_top1: float) -> None:
    pseudo = influence_weights(toy["old_clf"], class_means(toy["old_train"], toy["y"], NUM_CLASSES), torch.bincount(toy["y"], minlength=NUM_CLASSES))
    crit = BT2Loss(pseudo)
    top1 = _train_new(
        toy, BasisTransform(OLD_DIM, EXTRA_DIM), lambda f: crit(f, toy["old_train"], toy["y"])
    )
    print(f"BT2 cross-model top1 {top1:.1f} vs independent {independent_top1:.1f}")
    assert top1 > 70.0 and top1 > independent_top1 + 25.0


def test_oca_training_makes_prefix_compatible(toy: dict, independent_top1: float) -> None:
    protos = class_means(toy["old_train"], toy["y"], NUM_CLASSES)[:OLD_CLASSES]
    crit = OCALoss(protos)
    top1 = _train_new(toy, OrthogonalProjection(OLD_DIM + EXTRA_DIM), lambda f: crit(f, toy["y"]))
    print(f"OCA cross-model top1 {top1:.1f} vs independent {independent_top1:.1f}")
    assert top1 > 60.0 and top1 > independent_top1 + 25.0
