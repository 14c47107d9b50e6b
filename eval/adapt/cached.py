"""Each model's corpus vectors computed once per benchmark run's work folder, and served from there.

The benchmark builds galleries and backfills them many times (four pairs, two corpora, a curve of
five points each); all-mpnet-base-v2 embeds about 1.4 SciFact abstracts a second on 2 cores, so
re-embedding at every step would take hours. A CachedEncoder answers `encode_items` from vectors
the real model computed for exactly these texts (keyed by the text compatret embeds) and passes
anything else, queries included, to the real model (its query vectors are kept too). `adapt`
itself never sees a cache: its pairs, its timing and its budget are the real model's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from compatret.engine.service import Service
from compatret.encoders import load_encoder, load_version
from compatret.encoders.base import Encoder, item_text


class CachedEncoder:
    """`spec`'s encoder with known item vectors by text; the real model is loaded only when needed."""

    def __init__(self, spec: str, items: dict[str, np.ndarray]) -> None:
        self.spec, self.version, self.items = spec, load_version(spec), items
        self.queries: dict[str, np.ndarray] = {}
        self._real: Encoder | None = None

    @property
    def dim(self) -> int:
        return self.version.dim

    def real(self) -> Encoder:
        if self._real is None:
            self._real = load_encoder(self.spec)
        return self._real

    def encode_items(self, items: Sequence[Any], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        keys = [item_text(i) for i in items]
        missing = [n for n, k in enumerate(keys) if k not in self.items]
        if missing:
            vecs = self.real().encode_items([items[n] for n in missing], batch_size=batch_size)
            self.items.update({keys[n]: v for n, v in zip(missing, vecs)})
        return np.stack([self.items[k] for k in keys]).astype(np.float32)

    def encode_queries(self, queries: Sequence[Any], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        missing = sorted({q for q in queries if q not in self.queries})
        if missing:
            self.queries.update(zip(missing, self.real().encode_queries(missing, batch_size=batch_size)))
        return np.stack([self.queries[q] for q in queries]).astype(np.float32)


def corpus_encoder(spec: str, name: str, items: list[dict[str, str]], cache: Path, log: Any) -> CachedEncoder:
    """The encoder of `spec` with every corpus item's vector, computed (once) into `cache`/NAME.npy."""
    path = cache / f"{name}.npy"
    if not path.exists():
        t0 = time.perf_counter()
        log(f"embedding {len(items)} documents with {spec} (once; cached in {path})")
        vecs = load_encoder(spec).encode_items(items, batch_size=32, progress=False)
        cache.mkdir(parents=True, exist_ok=True)
        np.save(path, vecs)
        log(f"  {time.perf_counter() - t0:.0f} s")
    vecs = np.load(path)
    return CachedEncoder(spec, {item_text(it): v for it, v in zip(items, vecs)})


def serve_with(service: Service, encoder: CachedEncoder) -> Service:
    """The service embeds with `encoder` wherever it would load `encoder.spec`'s model (adds, backfill, queries)."""
    service._encoders[service.meta.sources.get(encoder.version.id, encoder.spec)] = encoder  # noqa: SLF001  the benchmark's one reach inside
    return service
