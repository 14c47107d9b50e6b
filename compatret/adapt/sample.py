"""The pairs `compatret adapt` fits on, gathered within a time budget.

Rows that carry a payload and whose vectors are in the serving model's full space are read in a
seeded random order; for each, the stored vector (brought into the serving space by its plan),
NEW's vector of the payload; for the first MAX_QUERIES rows, a pseudo-query (a title, or one
sentence of the text) taken out of the row, embedded by both models, and the row paired without it
(both models embed the rest: neither finds the row by the query's own words). The clock is read
before every step, and each step's encoder calls are sized from the rate measured so far to take
about CALL_SECONDS, so the embedding stops within about one step of its deadline; unpaired rows
join as distractors for the estimate (stored vectors only, no embedding).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from compatret.core.contract import CompatPlan, apply_plan, resolve
from compatret.core.errors import CompatretError
from compatret.core.lineage import ModelVersion
from compatret.core.transforms import normalize
from compatret.encoders.base import Encoder
from compatret.store.gallery import Gallery
from compatret.store.rows import id_filter, item_inputs, sql_quote

MIN_PAIRS = 20
MAX_SAMPLE = 20_000  # bounds the fit: the MLP trains on every pair
MAX_QUERIES = 2_000  # pseudo-queries: enough for a tight interval, few enough to score every option quickly
MAX_DISTRACTORS = 20_000
FIRST_CALL = 8  # rows in the first encoder call, which measures the rate
CALL_SECONDS = 2.0  # later calls are sized to take about this long: the budget overruns by at most one call
MIN_WORDS = 5


@dataclass(frozen=True)
class Pairs:
    """Row i: the old space's vector `old[i]` and NEW's vector `new[i]` of the same payload: the
    stored vector and NEW's vector of the row, or, where the row gave a pseudo-query
    (`q_old[i]`/`q_new[i]`, by each model; NaN where none), both models' vectors of the row
    without it; `others`: stored vectors of unpaired rows."""

    ids: list[str]
    old: np.ndarray
    new: np.ndarray
    q_old: np.ndarray
    q_new: np.ndarray
    others: np.ndarray
    query_source: str  # "titles", "sentences" or "none"


@dataclass(frozen=True)
class PseudoQuery:
    """A short text taken out of a row, and the row without it (what the row is found by)."""

    text: str
    rest: dict[str, str]
    source: str  # "titles" or "sentences"


def pseudo_query(item: Any, rng: np.random.Generator) -> PseudoQuery | None:
    """Its title when the row has a title and a text, else one sentence of at least MIN_WORDS words
    drawn from a text of two or more; None when neither exists. Taken out of the row, so that
    staying does not find the row by the query's own words."""
    if not isinstance(item, dict):
        return None
    title, text = (item.get("title") or "").strip(), (item.get("text") or "").strip()
    if title and text:
        return PseudoQuery(title, {"title": "", "text": text}, "titles")
    sentences = re.split(r"(?<=[.!?])\s+", text)
    long = [n for n, s in enumerate(sentences) if len(s.split()) >= MIN_WORDS]
    if len(sentences) < 2 or not long:
        return None
    pick = long[int(rng.integers(len(long)))]
    return PseudoQuery(sentences[pick], {"title": title, "text": " ".join(s for n, s in enumerate(sentences) if n != pick)}, "sentences")


def usable_rows(gallery: Gallery, old: ModelVersion) -> tuple[dict[str, CompatPlan], list[str], list[str]]:
    """(plan per model version, versions in the serving space, ids of their rows with a payload)."""
    meta = gallery.meta
    plans = {v: resolve(old, meta.version(v), gallery.path) for v in gallery.rows_by_version()}
    usable = sorted(v for v, plan in plans.items() if plan.dims == old.dim)
    payload = "image IS NOT NULL" if meta.modality == "image" else "(text IS NOT NULL OR title IS NOT NULL)"
    in_space = " OR ".join(f"model_version = {sql_quote(v)}" for v in usable) or "FALSE"
    return plans, usable, gallery.scan(["id"], where=f"({in_space}) AND {payload}").column("id").to_pylist()


def read_rows(
    gallery: Gallery, picked: list[str], plans: dict[str, CompatPlan], usable: list[str], payloads: bool = True
) -> tuple[np.ndarray, list[Any]]:
    """The stored vectors of `picked`, brought into the serving space by their plans, and their payloads."""
    meta = gallery.meta
    column_of = {v: meta.column(meta.version(v)) for v in usable}
    cols = ["id", "model_version", *(("title", "text", "image") if payloads else ()), *sorted(set(column_of.values()))]
    rows = {r["id"]: r for r in gallery.scan(cols, where=id_filter(picked)).to_pylist()}
    vec = np.zeros((len(picked), meta.serving.dim), np.float32)
    for v in usable:
        pos = [n for n, i in enumerate(picked) if rows[i]["model_version"] == v]
        if pos:
            stored = np.asarray([rows[picked[n]][column_of[v]] for n in pos], dtype=np.float32)
            vec[pos] = apply_plan(plans[v], None, stored)[1]
    return vec, (item_inputs(rows, picked, meta.modality) if payloads else [])


def gather(
    gallery: Gallery,
    ids: list[str],
    plans: dict[str, CompatPlan],
    usable: list[str],
    wanted: int,
    new_enc: Encoder,
    old_enc: Encoder | None,
    deadline: float,
    seed: int,
    progress: bool = True,
) -> Pairs:
    """Embed rows in a seeded random order until `wanted` or `deadline` (time.perf_counter()),
    reading the clock before each step (a chunk of rows whose encoder calls take about
    CALL_SECONDS at the rate measured so far); the first rows (up to MAX_QUERIES, and in at most
    half the time) also give pseudo-queries; then read distractors from the rest."""
    order = np.random.default_rng(seed).permutation(len(ids))
    rng = np.random.default_rng(seed + 1)
    query_deadline = time.perf_counter() + (deadline - time.perf_counter()) / 2
    olds, news, q_olds, q_news = [], [], [], []
    sources: set[str] = set()
    done, chunk = 0, FIRST_CALL
    dim_old = gallery.meta.serving.dim
    with tqdm(total=wanted, desc=f"embedding rows with {new_enc.version.id}", unit="row", disable=not progress) as bar:
        while done < wanted and time.perf_counter() < deadline:
            picked = [ids[i] for i in order[done : done + min(chunk, wanted - done)]]
            t0 = time.perf_counter()
            old_vec, items = read_rows(gallery, picked, plans, usable)
            q_old = np.full((len(picked), dim_old), np.nan, np.float32)
            q_new = np.full((len(picked), new_enc.dim), np.nan, np.float32)
            asking = old_enc is not None and time.perf_counter() < query_deadline
            pqs = [pseudo_query(it, rng) for it in items[: max(0, MAX_QUERIES - done)]] if asking else []
            asked = [n for n, p in enumerate(pqs) if p is not None]
            if asked:  # these rows pair without their query: its text left out for both models
                taken = [pqs[n] for n in asked]
                sources.update(p.source for p in taken)  # type: ignore[union-attr]
                q_new[asked] = new_enc.encode_queries([p.text for p in taken], batch_size=64)  # type: ignore[union-attr]
                q_old[asked] = old_enc.encode_queries([p.text for p in taken], batch_size=64)  # type: ignore[union-attr]
                old_vec[asked] = old_enc.encode_items([p.rest for p in taken], batch_size=64)  # type: ignore[union-attr]
                for n, p in zip(asked, taken):
                    items[n] = p.rest  # type: ignore[union-attr]
            olds.append(old_vec)
            news.append(new_enc.encode_items(items, batch_size=64, progress=False))
            q_olds.append(q_old)
            q_news.append(q_new)
            done += len(picked)
            bar.update(len(picked))
            rate = len(picked) / max(time.perf_counter() - t0, 1e-3)
            chunk = int(np.clip(rate * min(CALL_SECONDS, max(deadline - time.perf_counter(), 0.0)), FIRST_CALL, 512))
    paired = [ids[i] for i in order[:done]]
    rest = [ids[i] for i in order[done : done + MAX_DISTRACTORS]]
    others = read_rows(gallery, rest, plans, usable, payloads=False)[0] if rest else np.zeros((0, dim_old), np.float32)

    def cat(parts: list[np.ndarray], d: int) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros((0, d), np.float32)

    return Pairs(
        paired,
        cat(olds, dim_old),
        normalize(cat(news, new_enc.dim)),
        cat(q_olds, dim_old),
        cat(q_news, new_enc.dim),
        others,
        "+".join(sorted(sources)) or "none",
    )


def check_enough(pairs: Pairs, new: ModelVersion, budget: float | None) -> None:
    if len(pairs.ids) < MIN_PAIRS:
        raise CompatretError(
            f"{new.id!r} embedded only {len(pairs.ids)} rows within --budget {budget} s: at least {MIN_PAIRS} are needed (raise --budget)"
        )
