"""A few real training steps per kind of method: the saved folder loads, and upgrade accepts or refuses it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from text_env import text_env  # noqa: F401

from compatret.encoders import load_encoder
from compatret.encoders.two_tower import TwoTowerEncoder
from compatret.core.errors import CompatretError
from compatret.engine.service import Service
from compatret.train.text.config import RetrieverConfig
from compatret.train.text.trainer import CHECKPOINT, LOG_FILE, train_retriever
from compatret.core.lineage import ModelVersion
from compatret.core.transforms import normalize

FAST = dict(batch_size=4, max_seq_length=32, depth=20, lr=5e-4, checkpoint_every=1)


def _cfg(env, tmp_path, method, **kw):
    return RetrieverConfig(method=method, old="minilm-l6", gallery=str(env.gallery), train_data=str(env.beir),
                           out=str(tmp_path / method), **{**FAST, **kw})


def _copy_gallery(env, tmp_path):
    import shutil

    shutil.copytree(env.gallery, tmp_path / "g")
    return Service.open(tmp_path / "g")


def test_adore_trains_queries_only_and_upgrades_in_place(text_env, tmp_path):  # noqa: F811
    folder = train_retriever(_cfg(text_env, tmp_path, "adore", max_steps=3), progress=False)
    version = ModelVersion.load(folder)
    assert version.parent is not None and version.parent.id == "minilm-l6" and version.compat.kind == "identity"
    enc, old = load_encoder(str(folder)), load_encoder("minilm-l6")
    assert isinstance(enc, TwoTowerEncoder)
    texts = ["smoking causes lung cancer", "vitamin D and bone density"]
    assert not np.allclose(enc.encode_queries(texts), old.encode_queries(texts), atol=1e-4)  # the query tower moved
    assert "items" not in vars(enc)  # queries alone never load the item encoder (a second MiniLM)
    assert np.allclose(enc.encode_items(texts), old.encode_items(texts), atol=1e-5)  # items: the frozen old encoder
    service = _copy_gallery(text_env, tmp_path)
    assert service.upgrade(str(folder)).serving.id == version.id
    assert len(service.query(texts=texts, k=5)[0].ids) == 5
    assert not (folder / CHECKPOINT).exists()


def test_star_is_independent_and_refused_by_upgrade(text_env, tmp_path):  # noqa: F811
    folder = train_retriever(_cfg(text_env, tmp_path, "star", max_steps=2), progress=False)
    version = ModelVersion.load(folder)
    assert version.parent is None
    assert load_encoder(str(folder)).encode_items(["a document"]).shape == (1, 384)
    with pytest.raises(CompatretError, match="not compatible|lineage"):
        _copy_gallery(text_env, tmp_path).upgrade(str(folder))


def test_bt2_extends_the_space_and_resumes_after_interruption(text_env, tmp_path, monkeypatch):  # noqa: F811
    import compatret.train.text.trainer as trainer

    cfg = _cfg(text_env, tmp_path, "bt2", max_steps=2, extra_dims=8)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(trainer, "save_retriever", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train_retriever(cfg, progress=False)
    assert (tmp_path / "bt2" / CHECKPOINT).exists()
    calls: list[int] = []
    real = trainer._item_step

    def counting(*args):
        step = real(*args)
        return lambda batch, rng: calls.append(1) or step(batch, rng)

    monkeypatch.setattr(trainer, "_item_step", counting)
    folder = train_retriever(cfg, progress=False)  # resumes at step 2 of 2: nothing left to run
    assert calls == []
    assert not (folder / CHECKPOINT).parent.exists()  # a finished folder keeps no (empty) checkpoints/
    log = json.loads((folder / LOG_FILE).read_text())
    assert log["steps"] == 2 and len(log["history"]) == 2
    version = ModelVersion.load(folder)
    assert version.dim == 384 + 8 and version.compat.kind == "prefix" and version.compat.dims == 384
    assert load_encoder(str(folder)).encode_queries(["q"]).shape == (1, 392)
    service = _copy_gallery(text_env, tmp_path)
    service.upgrade(str(folder))
    assert service.plan().dims == 384
    assert train_retriever(cfg, progress=False) == folder  # finished: a rerun is a no-op


def test_alignment_map_recovers_a_linear_relation():
    import torch

    from compatret.train.text.heads import alignment_map

    gen = torch.Generator().manual_seed(0)
    new = torch.nn.functional.normalize(torch.randn(500, 24, generator=gen), dim=1)
    true = torch.linalg.qr(torch.randn(24, 16, generator=gen))[0]  # an isometry keeps rows unit-norm up to scale
    old = new @ true
    dense = alignment_map(new, old)
    mapped = dense({"sentence_embedding": new})["sentence_embedding"]
    cos = torch.nn.functional.cosine_similarity(mapped, torch.nn.functional.normalize(old, dim=1), dim=1)
    assert cos.min() > 0.98


def test_cross_architecture_starts_aligned_to_a_frozen_onnx_gallery(text_env, tmp_path):  # noqa: F811
    from compatret.data.beir import load_beir
    from compatret.train.text.setup import gallery_vectors

    corpus = load_beir(text_env.beir, splits=("train",)).corpus
    ids = sorted(corpus)
    l3 = Service.create(tmp_path / "l3", model="minilm-l3")
    l3.add_vectors(load_encoder("minilm-l3").encode_items([corpus[i] for i in ids], batch_size=64), ids=ids)
    cfg = RetrieverConfig(method="bct", old="minilm-l3", init="minilm-l6", gallery=str(tmp_path / "l3"),
                          train_data=str(text_env.beir), out=str(tmp_path / "cross"), align_docs=len(ids), max_steps=1,
                          **{**FAST, "lr": 1e-6})
    folder = train_retriever(cfg, progress=False)
    version = ModelVersion.load(folder)
    assert version.compat.kind == "identity" and version.parent is not None and version.parent.id == "minilm-l3"
    stored = dict(zip(*gallery_vectors(Service.open(tmp_path / "l3"), "minilm-l3")))
    sample = ids[:40]
    old = np.stack([stored[i] for i in sample])
    new = load_encoder(str(folder)).encode_items([corpus[i] for i in sample])
    raw = load_encoder("minilm-l6").encode_items([corpus[i] for i in sample])

    def mean_cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.mean(np.sum(normalize(a) * normalize(b), 1)))

    assert mean_cos(new, old) > mean_cos(raw, old) + 0.3  # aligned into L3's space; L6 alone is not in it
    assert Service.open(tmp_path / "l3").upgrade(str(folder)).serving.id == version.id
