"""Miners and ranking/compat losses on real SciFact documents and a real MiniLM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from text_env import text_env  # noqa: F401

from compatret.engine.service import Service
from compatret.models.losses.ranking import AdoreLoss, StarLoss, delta_ndcg
from compatret.models.losses.retrieval_compat import CompatRetrievalLoss
from compatret.train.text.heads import ExtensionHead
from compatret.train.text.setup import gallery_vectors
from compatret.train.text.mining import dynamic_candidates, gallery_kernel, static_hard_negatives


@pytest.fixture(scope="module")
def mined(text_env):  # noqa: F811
    from compatret.encoders import load_encoder

    ids, vectors = gallery_vectors(Service.open(text_env.gallery), "minilm-l6")
    row_of = {d: r for r, d in enumerate(ids)}
    qids = list(text_env.qrels)
    positives = [{row_of[d] for d in text_env.qrels[q]} for q in qids]
    from compatret.data.beir import load_beir

    data = load_beir(text_env.beir)
    qv = load_encoder("minilm-l6").encode_queries([data.queries[q] for q in qids])
    return (ids, vectors), qv, positives, data, qids


@pytest.fixture(scope="module")
def model():
    from compatret.train.text.model_io import load_trainable

    m = load_trainable("minilm-l6")
    m.max_seq_length = 32
    return m


def test_static_negatives_are_hard_and_exclude_positives(mined):
    (_, vectors), qv, positives, _, _ = mined
    kernel = gallery_kernel(vectors)
    negs = static_hard_negatives(qv, kernel, positives, depth=50)
    _, top = kernel.search(qv, 50)
    for row, pos, t in zip(negs, positives, top):
        assert len(row) >= 50 - len(pos) and not set(row.tolist()) & pos
        assert row[0] == next(r for r in t if r not in pos)  # the hardest negative first


def test_dynamic_candidates_put_positives_first_with_their_ranks(mined):
    (_, vectors), qv, positives, _, _ = mined
    cand = dynamic_candidates(qv, gallery_kernel(vectors), positives, depth=20)
    for i, pos in enumerate(positives):
        n_pos = len(pos)
        assert set(cand.rows[i, :n_pos].tolist()) == pos and cand.relevant[i, :n_pos].all()
        negatives = cand.rows[i][cand.mask[i] & ~cand.relevant[i]]
        assert not set(negatives.tolist()) & pos and len(negatives) >= 20 - n_pos
        assert (cand.ranks[i][cand.mask[i]] <= 20).all()


def test_delta_ndcg_of_a_swap():
    w = delta_ndcg(torch.tensor([2]), torch.tensor([0]), torch.tensor([1]))
    assert float(w) == pytest.approx(1 - 1 / np.log2(4))


def test_adore_loss_only_moves_the_query_side(mined, model):
    (_, vectors), _, positives, data, qids = mined
    features = model.preprocess([data.queries[q] for q in qids[:6]])
    q = model(features)["sentence_embedding"]
    cand = dynamic_candidates(q.detach().numpy(), gallery_kernel(vectors), positives[:6], depth=30)
    items = torch.from_numpy(vectors[np.clip(cand.rows, 0, None)]).requires_grad_(True)
    parts = AdoreLoss()(q, items, *(torch.from_numpy(a) for a in (cand.relevant, cand.ranks, cand.mask)))
    assert torch.isfinite(parts["total"]) and float(parts["total"].detach()) > 0
    parts["total"].backward()
    assert items.grad is None  # stored item vectors are constants
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.zero_grad()


def _batch(mined, model, n=4):
    (ids, vectors), qv, positives, data, qids = mined
    negs = static_hard_negatives(qv[:n], gallery_kernel(vectors), positives[:n], depth=10)
    rows = np.array([[min(p), ng[0]] for p, ng in zip(positives[:n], negs)])
    doc = lambda r: " ".join(data.corpus[str(ids[r])].values())  # noqa: E731
    columns = [[data.queries[q] for q in qids[:n]], [doc(r) for r in rows[:, 0]], [doc(r) for r in rows[:, 1]]]
    return [model.preprocess(c) for c in columns], torch.from_numpy(rows), torch.from_numpy(vectors)


def test_star_loss_is_finite_with_gradients(mined, model):
    features, _, _ = _batch(mined, model)
    parts = StarLoss(model)(features)
    assert torch.isfinite(parts["total"])
    parts["total"].backward()
    assert sum(float(p.grad.abs().sum()) for p in model.parameters() if p.grad is not None) > 0
    model.zero_grad()


@pytest.mark.parametrize("item_term", ["influence", "cosine", "anchor"])
def test_compat_losses_return_named_finite_parts(mined, model, item_term):
    features, labels, old = _batch(mined, model)
    parts = CompatRetrievalLoss(model, old, item_term=item_term)(features, labels)
    assert set(parts) == {"retrieval", "compat_query", "compat_item", "total"}
    assert all(torch.isfinite(v) for v in parts.values())
    parts["total"].backward()
    assert sum(float(p.grad.abs().sum()) for p in model.parameters() if p.grad is not None) > 0
    model.zero_grad()


def test_extension_head_keeps_old_prefix_and_exports_the_same_map():
    head = ExtensionHead(16, 4)
    x = torch.randn(3, 16)
    assert torch.allclose(head({"sentence_embedding": x})["sentence_embedding"][:, :16], x, atol=1e-5)
    with torch.no_grad():
        head.rotate.linear.weight = torch.linalg.qr(torch.randn(20, 20))[0]
    y = head({"sentence_embedding": x.clone()})["sentence_embedding"]
    z = head.to_dense()({"sentence_embedding": x.clone()})["sentence_embedding"]
    assert torch.allclose(y, z, atol=1e-5)


def _log_softmax_at(logits: np.ndarray, target: int) -> float:
    return float(logits[target] - np.log(np.exp(logits).sum()))


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def test_adore_loss_equals_a_hand_computed_lambdarank():
    """One query, three retrieved items: the relevant one at rank 1, negatives at ranks 0 and 2."""
    q = torch.tensor([[1.0, 0.0]])
    items = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
    relevant, ranks, mask = torch.tensor([[True, False, False]]), torch.tensor([[1, 0, 2]]), torch.ones(1, 3, dtype=torch.bool)
    got = float(AdoreLoss(scale=1.0)(q, items, relevant, ranks, mask)["total"])
    disc = lambda r: 1 / np.log2(r + 2)  # noqa: E731
    scores = [1.0, 0.0, -1.0]  # cosines of the query with each item
    # pairs (relevant 0, negative j): |ΔnDCG| of swapping ranks 1 and rank_j (one relevant: ideal DCG 1), times log(1 + e^{s_j - s_0})
    want = sum(abs(disc(1) - disc(r)) * np.log1p(np.exp(scores[j] - scores[0])) for j, r in ((1, 0), (2, 2)))
    assert got == pytest.approx(want, rel=1e-5)


class _Given(torch.nn.Module):
    """The identity 'encoder': each column's features already hold its embeddings."""

    def forward(self, features: dict) -> dict:
        return features


def test_compat_loss_parts_equal_hand_computed_values():
    """Two queries, their positives (gallery rows 0, 1) and one shared hard negative (row 2), 2-d old space plus 1 new dim."""
    qs = np.array([[1.0, 0.2, 0.5], [0.1, 1.0, -0.3]])
    pos = np.array([[0.9, 0.1, 0.0], [0.0, 0.8, 0.4]])
    neg = np.array([[0.5, 0.5, 0.5], [0.6, 0.4, -0.2]])
    old = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    cols = [{"sentence_embedding": torch.tensor(c, dtype=torch.float32)} for c in (qs, pos, neg)]
    labels = torch.tensor([[0, 2], [1, 2]])
    loss = CompatRetrievalLoss(_Given(), torch.tensor(old, dtype=torch.float32), item_term="cosine", scale=1.0)
    parts = {k: float(v) for k, v in loss(cols, labels).items()}

    docs = np.vstack([pos, neg])  # candidates of every query: all positives, then all negatives
    retrieval = -np.mean([_log_softmax_at(np.array([_unit(q) @ _unit(d) for d in docs]), i) for i, q in enumerate(qs)])
    rows = [0, 1, 2, 2]  # the docs' gallery rows, in the same order
    olds = [_unit(old[r]) for r in rows]
    compat_query = -np.mean([_log_softmax_at(np.array([_unit(q[:2]) @ o for o in olds]), i) for i, q in enumerate(qs)])
    compat_item = np.mean([1 - _unit(d[:2]) @ o for d, o in zip(docs, olds)])
    assert parts["retrieval"] == pytest.approx(retrieval, rel=1e-5)
    assert parts["compat_query"] == pytest.approx(compat_query, rel=1e-5)
    assert parts["compat_item"] == pytest.approx(compat_item, rel=1e-5)
    assert parts["total"] == pytest.approx(retrieval + compat_query + compat_item, rel=1e-5)


def test_compat_influence_term_never_counts_a_document_as_its_own_negative():
    """Rows 2 and 2: the shared negative is each negative's own class; its other copy is masked."""
    docs = np.array([[0.9, 0.1], [0.0, 0.8], [0.5, 0.5], [0.6, 0.4]])
    old = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    cols = [{"sentence_embedding": torch.tensor(c, dtype=torch.float32)} for c in (docs[:2], docs[:2], docs[2:])]
    loss = CompatRetrievalLoss(_Given(), torch.tensor(old, dtype=torch.float32), item_term="influence", scale=1.0)
    got = float(loss(cols, torch.tensor([[0, 2], [1, 2]]))["compat_item"])
    rows = [0, 1, 2, 2]
    olds = [_unit(old[r]) for r in rows]
    terms = []
    for i, d in enumerate(docs):
        keep = [j for j in range(4) if j == i or rows[j] != rows[i]]  # the other copy of one's own row is left out
        logits = np.array([_unit(d) @ olds[j] for j in keep])
        terms.append(-_log_softmax_at(logits, keep.index(i)))
    assert got == pytest.approx(np.mean(terms), rel=1e-5)
