"""`compatret adapt`: fit a map between a gallery's model and a new model on the gallery's own
rows, and write a compatret model folder that `index upgrade` accepts.

- direction `gallery` (FCT): the folder holds NEW under a record whose rule is `transform`
  from the gallery's model; stored rows are mapped into NEW's space, new and backfilled rows
  are native, and backfill closes the gap to NEW's own quality;
- direction `query` (Drift-Adapter): the folder holds NEW plus a head that maps its vectors
  into the old space, under an `identity` rule: the gallery keeps its space for good.

Pairs are (stored vector, NEW's vector) of rows that have payloads, as many as NEW embeds in the
time budget; a fifth is held aside to choose the kind (and, with `auto`, the direction), then the
chosen map is fitted again on every pair.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm.auto import tqdm

from compatret.adapt.fit import KINDS, Candidate, fit_kinds
from compatret.encoders.base import write_encoder_config
from compatret.encoders.registry import ALIASES, load_encoder, load_version
from compatret.errors import CompatretError
from compatret.index.gallery import Gallery, id_filter, item_inputs, sql_quote
from compatret.index.service import TRANSFORMS_DIR
from compatret.versions import VERSION_FILE, Compat, ModelVersion, apply_plan, normalize, resolve

DIRECTIONS = ("gallery", "query", "auto")
HELD_ASIDE = 0.2
DEFAULT_BUDGET_S = 150.0  # seconds of embedding by NEW: with fitting, `adapt` stays within about 3 minutes
MAX_SAMPLE = 20_000  # bounds the fit: the MLP trains on every pair for a fixed number of epochs
MIN_PAIRS = 20
CHUNK = 256  # rows read and embedded between two looks at the clock


@dataclass(frozen=True)
class Pairs:
    """Stored vectors of the gallery's model and NEW's vectors of the same rows."""

    ids: list[str]
    old: np.ndarray
    new: np.ndarray


def sample_pairs(gallery: Gallery, new_spec: str, settings: AdaptSettings, progress: bool = True) -> tuple[ModelVersion, ModelVersion, Pairs]:
    """(serving model, NEW's record, pairs): rows that carry a payload and whose vectors are in the
    serving model's full space (its own rows, or rows its lineage maps there by identity or
    transform rules), re-embedded by NEW in a seeded random order until `sample` rows (default:
    all, at most MAX_SAMPLE) or until `budget` seconds of embedding are spent. More pairs fit a
    better map (the MLP most of all), and what a user can spare is time: a fast NEW model gets
    every row, a slow one what the budget allows. After one adapter, the next one continues the
    lineage from it (v1 -> adapter v2 -> v3)."""
    sample, budget = settings.sample, settings.budget
    meta = gallery.meta
    old = meta.serving
    new = load_version(new_spec)
    if meta.modality == "vector":
        raise CompatretError("this gallery holds bare vectors, no payload (text or image) for a new model to embed: it cannot be adapted")
    if new.modality != meta.modality:
        raise CompatretError(f"model {new.id!r} is for {new.modality}, this gallery holds {meta.modality}")
    if new.id == old.id:
        raise CompatretError(f"the gallery already serves {old.id!r}")
    if sample is not None and sample < MIN_PAIRS:
        raise CompatretError(f"--sample must be at least {MIN_PAIRS}")
    if budget is not None and budget <= 0:
        raise CompatretError("--budget must be a positive number of seconds")
    plans = {v: resolve(old, meta.version(v), gallery.path) for v in gallery.rows_by_version()}
    usable = sorted(v for v, plan in plans.items() if plan.dims == old.dim)
    payload = "image IS NOT NULL" if meta.modality == "image" else "(text IS NOT NULL OR title IS NOT NULL)"
    in_space = " OR ".join(f"model_version = {sql_quote(v)}" for v in usable) or "FALSE"
    ids = gallery.scan(["id"], where=f"({in_space}) AND {payload}").column("id").to_pylist()
    if not ids:
        raise CompatretError(f"no rows with a payload (text or image) in {old.id!r}'s space to fit on: "
                             "a gallery of bare vectors cannot be adapted (and rows under a prefix rule need a backfill first)")
    if sample is not None and sample > len(ids):
        raise CompatretError(f"--sample {sample} is larger than the gallery's {len(ids)} rows with a payload in {old.id!r}'s space")
    wanted = min(len(ids), MAX_SAMPLE) if sample is None else sample
    if wanted < MIN_PAIRS:
        raise CompatretError(f"the gallery has {len(ids)} rows with a payload in {old.id!r}'s space: at least {MIN_PAIRS} are needed")
    order = np.random.default_rng(settings.seed).permutation(len(ids))[:wanted]
    encoder = load_encoder(new_spec)
    olds, news = [], []
    start = time.perf_counter()
    with tqdm(total=wanted, desc=f"embedding rows with {new.id}", unit="row", disable=not progress) as bar:
        for s in range(0, wanted, CHUNK):
            picked = [ids[i] for i in order[s : s + CHUNK]]
            old_vec, items = _stored_and_payloads(gallery, picked, plans, usable)
            olds.append(old_vec)
            news.append(encoder.encode_items(items, batch_size=64, progress=False))
            bar.update(len(picked))
            if budget is not None and time.perf_counter() - start > budget:
                break
    done = [ids[i] for i in order[: sum(len(o) for o in olds)]]
    if len(done) < MIN_PAIRS:  # only a budget stops the loop early
        raise CompatretError(f"{new.id!r} embedded only {len(done)} rows in --budget {budget} s: at least {MIN_PAIRS} are needed")
    return old, new, Pairs(done, np.concatenate(olds), normalize(np.concatenate(news)))


def _stored_and_payloads(gallery: Gallery, picked: list[str], plans: dict[str, Any], usable: list[str]) -> tuple[np.ndarray, list[Any]]:
    """The stored vectors of `picked` rows, brought into the serving space by their plans, and their payloads."""
    meta = gallery.meta
    column_of = {v: meta.column(meta.version(v)) for v in usable}
    t = gallery.scan(["id", "model_version", "title", "text", "image", *sorted(set(column_of.values()))], where=id_filter(picked))
    rows = {r["id"]: r for r in t.to_pylist()}
    old_vec = np.zeros((len(picked), meta.serving.dim), np.float32)
    for v in usable:
        pos = [n for n, i in enumerate(picked) if rows[i]["model_version"] == v]
        if pos:
            stored = np.asarray([rows[picked[n]][column_of[v]] for n in pos], dtype=np.float32)
            old_vec[pos] = apply_plan(plans[v], None, stored)[1]
    return old_vec, item_inputs(rows, picked, meta.modality)


@dataclass(frozen=True)
class Fitted:
    """Everything one fitting run found: the two records, the pairs, and each direction's candidates."""

    old: ModelVersion
    new: ModelVersion
    pairs: Pairs
    held_aside: int
    found: dict[str, list[Candidate]]
    embed_seconds: float  # reading and embedding the sample
    seconds: float  # everything


@dataclass(frozen=True)
class AdaptSettings:
    """What `compatret adapt` fits: direction (gallery | query | auto), kind (auto or one of KINDS),
    and the pairs: `sample` rows (None: all, at most MAX_SAMPLE) within `budget` seconds of embedding."""

    direction: str = "gallery"
    kind: str = "auto"
    sample: int | None = None
    budget: float | None = DEFAULT_BUDGET_S
    seed: int = 0

    def check(self) -> None:
        if self.direction not in DIRECTIONS:
            raise CompatretError(f"unknown direction {self.direction!r}; choose from {DIRECTIONS}")
        if self.kind != "auto" and self.kind not in KINDS:
            raise CompatretError(f"unknown kind {self.kind!r}; choose from {('auto', *KINDS)}")


def fit_adapters(gallery_dir: str | Path, new_spec: str, settings: AdaptSettings = AdaptSettings(), progress: bool = True,
                 log: Callable[[str], None] | None = None) -> Fitted:
    """Sample and embed the pairs once, then fit every asked kind in every asked direction."""
    settings.check()
    direction, kind, seed = settings.direction, settings.kind, settings.seed
    start = time.perf_counter()
    old, new, pairs = sample_pairs(Gallery.open(gallery_dir), new_spec, settings, progress)
    embedded = time.perf_counter() - start
    aside = np.random.default_rng(seed + 1).random(len(pairs.ids)) < HELD_ASIDE
    kinds = KINDS if kind == "auto" else (kind,)
    found: dict[str, list[Candidate]] = {}
    for d in (("gallery", "query") if direction == "auto" else (direction,)):
        src, dst = (pairs.old, pairs.new) if d == "gallery" else (pairs.new, pairs.old)
        if log:
            log(f"direction {d}: fitting {', '.join(kinds)} on {int((~aside).sum())} pairs, scoring on {int(aside.sum())} held aside, "
                "then again on all")
        found[d] = fit_kinds(src, dst, aside, d == "gallery", kinds, log)
    return Fitted(old, new, pairs, int(aside.sum()), found, embedded, time.perf_counter() - start)


def choose(fitted: Fitted) -> tuple[str, Candidate]:
    """The best (direction, candidate) by held-aside neighbour recall (ties: the simpler kind, listed first)."""
    options = [(d, c) for d, cands in fitted.found.items() for c in cands]
    best = max(range(len(options)), key=lambda n: (round(options[n][1].held_out_recall, 3), -n))
    return options[best]


def adapt(gallery_dir: str | Path, new_spec: str, out_dir: str | Path, settings: AdaptSettings = AdaptSettings(), progress: bool = True,
          log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Fit, choose and write the adapted model folder; returns the report `--json` prints."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise CompatretError(f"{out} exists and is not empty")
    fitted = fit_adapters(gallery_dir, new_spec, settings, progress, log)
    chosen_direction, chosen = choose(fitted)
    version = write_model(out, new_spec, fitted.old, fitted.new, chosen_direction, chosen, len(fitted.pairs.ids))
    return {
        "model": str(out), "model_id": version.id, "direction": chosen_direction, "kind": chosen.kind,
        "from": fitted.old.id, "to": fitted.new.id, "sample": len(fitted.pairs.ids), "held_aside": fitted.held_aside,
        "kinds": [{"direction": d, "kind": c.kind, "held_out_recall": c.held_out_recall, "held_out_cosine": c.held_out_cosine,
                   "fit_seconds": c.fit_seconds} for d, cands in fitted.found.items() for c in cands],
        "embed_seconds": fitted.embed_seconds, "seconds": fitted.seconds,
    }


def write_model(out: Path, new_spec: str, old: ModelVersion, new: ModelVersion, direction: str, chosen: Candidate, sample: int) -> ModelVersion:
    """Build the folder beside `out` and rename it into place: a failed run leaves nothing."""
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        tag = hashlib.blake2b(chosen.fitted.weight.tobytes(), digest_size=4).hexdigest()
        method = f"adapter:{chosen.kind}:{direction} from {old.id} ({sample} pairs)"
        alias = new_spec in ALIASES
        if direction == "gallery":  # NEW itself (its files, or its alias) under a record with a transform rule
            vid = f"{new.id}-from-{old.id}-{tag}"
            if not alias:
                shutil.copytree(new_spec, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(VERSION_FILE, "checkpoints"))
            else:
                write_encoder_config(tmp, "alias", model=new_spec)
            (tmp / TRANSFORMS_DIR).mkdir(exist_ok=True)
            chosen.fitted.save(tmp / TRANSFORMS_DIR / f"{vid}.npz")
            version = ModelVersion(vid, new.dim, new.modality, parent=old, compat=Compat.transform(f"{TRANSFORMS_DIR}/{vid}.npz"), method=method)
        else:  # NEW (alias, or a copy in base/) followed by the head, under an identity rule
            vid = f"{new.id}-into-{old.id}-{tag}"
            if not alias:
                shutil.copytree(new_spec, tmp / "base", ignore=shutil.ignore_patterns("checkpoints"))
            chosen.fitted.save(tmp / "head.npz")
            version = ModelVersion(vid, old.dim, new.modality, parent=old, compat=Compat.identity(), method=method)
            write_encoder_config(tmp, "adapted", base=new_spec if alias else "base", head="head.npz")
        version.save(tmp)
        (tmp / "adapter.json").write_text(json.dumps({"direction": direction, "kind": chosen.kind, "from": old.id, "to": new.id,
                                                      "sample": sample, "held_out_recall": chosen.held_out_recall}, indent=2))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return version

