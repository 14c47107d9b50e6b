"""Real offline models on real SciFact text, and the image encoder's save/load round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compatret.encoders import load_encoder, load_version
from compatret.encoders.image import ImageEmbedder, ImageModelSpec, load_image_model, save_image_model
from compatret.core.errors import CompatretError
from compatret.core.lineage import ModelVersion


def mean_rank_of_relevant(enc, subset) -> float:
    docs = subset["docs"]
    d = enc.encode_items(docs)
    ids = [x["id"] for x in docs]
    ranks = []
    for qid, text in subset["queries"].items():
        order = np.argsort(-(d @ enc.encode_queries([text])[0]))
        ranks += [list(order).index(ids.index(r)) for r in subset["qrels"][qid] if r in ids]
    return float(np.median(ranks))


@pytest.mark.parametrize("alias", ["minilm-l6", "minilm-l3"])
def test_text_alias_encodes_and_retrieves(alias, scifact_subset):
    enc = load_encoder(alias)
    assert enc.version == load_version(alias) and enc.dim == 384
    v = enc.encode_items(scifact_subset["docs"][:8])
    assert v.shape == (8, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # relevant abstracts rank near the top among 300 (chance would be ~150)
    assert mean_rank_of_relevant(enc, scifact_subset) < 5


def test_onnx_l3_and_l6_are_different_spaces(scifact_subset):
    docs = scifact_subset["docs"][:20]
    a, b = load_encoder("minilm-l6").encode_items(docs), load_encoder("minilm-l3").encode_items(docs)
    assert np.mean(np.sum(a * b, axis=1)) < 0.5  # same dims, incomparable spaces: why lineage matters


def test_image_model_roundtrip(tmp_path):
    spec = ImageModelSpec(width=0.125, in_channels=1, image_size=8, embed_dim=16, mean=(0.5,), std=(0.5,))
    torch.manual_seed(0)
    model = ImageEmbedder(spec).eval()
    version = ModelVersion("img-v1", 16, "image")
    save_image_model(model, version, tmp_path / "m")
    enc = load_encoder(str(tmp_path / "m"))
    imgs = [np.random.default_rng(i).integers(0, 255, (8, 8), dtype=np.uint8) for i in range(4)]
    v = enc.encode_items(imgs)
    assert v.shape == (4, 16)
    again, _ = load_image_model(tmp_path / "m")
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(again.eval()(x), model(x))


def test_unknown_model_spec(tmp_path):
    with pytest.raises(CompatretError, match="unknown model"):
        load_version("no-such-model")
    with pytest.raises(CompatretError, match="not a compatret model folder"):
        load_version(str(tmp_path))


def test_onnx_model_folder_loads_like_its_alias(tmp_path, scifact_subset):
    import shutil

    from compatret.encoders.base import write_encoder_config
    from compatret.encoders.registry import _minilm_l3_onnx, _minilm_l6_dir

    folder = tmp_path / "l3-copy"
    folder.mkdir()
    shutil.copyfile(_minilm_l3_onnx(), folder / "model.onnx")
    shutil.copyfile(_minilm_l6_dir() / "tokenizer.json", folder / "tokenizer.json")
    write_encoder_config(folder, "onnx", onnx="model.onnx", tokenizer="tokenizer.json")
    ModelVersion("l3-copy", 384, "text", parent=load_version("minilm-l3")).save(folder)
    docs = scifact_subset["docs"][:5]
    np.testing.assert_allclose(load_encoder(str(folder)).encode_items(docs), load_encoder("minilm-l3").encode_items(docs), atol=1e-6)
