"""A frozen ONNX text encoder (BERT-style graph) with mean pooling over the attention mask."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from compatret.core.lineage import ModelVersion
from compatret.core.transforms import normalize
from compatret.encoders.base import item_text


class OnnxTextEncoder:
    """Runs an exported transformer with onnxruntime; no torch needed at query time."""

    def __init__(self, onnx_path: str | Path, tokenizer_path: str | Path, version: ModelVersion, max_length: int = 128) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        options = ort.SessionOptions()
        threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
        if threads > 0:  # a Ray actor or a pinned process: as many threads as it was given cores
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self.tokenizer.enable_truncation(max_length=max_length)
        self.tokenizer.enable_padding()
        self.input_names = {i.name for i in self.session.get_inputs()}
        # token embeddings: the [batch, seq, hidden] output; pooling is done here, not trusted to the graph
        self.token_output = next(o.name for o in self.session.get_outputs() if len(o.shape) == 3)
        self.version = version

    @property
    def dim(self) -> int:
        return self.version.dim

    def _encode(self, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        starts = range(0, len(texts), batch_size)
        for s in tqdm(starts, desc="encode", disable=not progress, unit="batch"):
            enc = self.tokenizer.encode_batch(texts[s : s + batch_size])
            ids = np.array([e.ids for e in enc], dtype=np.int64)
            mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self.input_names:
                feeds["token_type_ids"] = np.zeros_like(ids)
            tokens = self.session.run([self.token_output], {k: v for k, v in feeds.items() if k in self.input_names})[0]
            m = mask[:, :, None].astype(np.float32)
            out[s : s + len(enc)] = (tokens * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        return normalize(out)

    def encode_queries(self, queries: Sequence[Any], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        return self._encode([item_text(q) for q in queries], batch_size, progress)

    def encode_items(self, items: Sequence[Any], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        return self._encode([item_text(i) for i in items], batch_size, progress)
