"""`compatret adapt`: fit a map between a gallery's model and a new model on the gallery's own
rows, and write a compatret model folder that `index upgrade` accepts.

- direction `gallery` (FCT): the folder holds NEW under a record whose rule is `transform`
  from the gallery's model; stored rows are mapped into NEW's space, new and backfilled rows
  are native, and backfill closes the gap to NEW's own quality;
- direction `query` (Drift-Adapter): the folder holds NEW plus a head that maps its vectors
  into the old space, under an `identity` rule: the gallery keeps its space for good.

Pairs are (stored vector, NEW's vector) of rows that have payloads, as many as NEW embeds in the
time budget (`sample`); every option (direction, kind, ridge) is scored out of sample on
pseudo-queries from the gallery's own text (`select`), the best is fitted again on every pair, and
it is written only when it is estimated at least as good as staying on the old model.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compatret.adapt.fit import KINDS, fit_one
from compatret.adapt.sample import MAX_SAMPLE, MIN_PAIRS, Pairs, check_enough, gather, usable_rows
from compatret.adapt.select import FOLDS, Estimate, Option, Probe, estimate, options, served_scores, stay_scores, training_pairs
from compatret.core.errors import CompatretError
from compatret.core.lineage import VERSION_FILE, Compat, ModelVersion
from compatret.core.transforms import LearnedMap
from compatret.encoders.base import Encoder, write_encoder_config
from compatret.encoders.folders import built_beside
from compatret.encoders.registry import ALIASES, check_endpoint, load_encoder, load_version
from compatret.engine.upgrade import TRANSFORMS_DIR
from compatret.store.gallery import Gallery

DIRECTIONS = ("gallery", "query", "auto")
DEFAULT_BUDGET_S = 180.0  # reading, embedding, fitting and scoring; writing the folder comes after
MIN_QUERIES = 20  # pseudo-queries the estimate needs (as many again choose the map)
EMBED_SHARE = 0.7  # of the budget for embedding; the rest fits and scores the options


@dataclass(frozen=True)
class AdaptSettings:
    """What `compatret adapt` fits: direction (gallery | query | auto), kind (auto or one of KINDS),
    the pairs (`sample` rows, None: all, at most MAX_SAMPLE), `budget` seconds for the whole run,
    and `force`: write the adapter even when it is estimated worse than staying."""

    direction: str = "gallery"
    kind: str = "auto"
    sample: int | None = None
    budget: float | None = DEFAULT_BUDGET_S
    seed: int = 0
    force: bool = False

    def check(self) -> None:
        if self.direction not in DIRECTIONS:
            raise CompatretError(f"unknown direction {self.direction!r}; choose from {DIRECTIONS}")
        if self.kind != "auto" and self.kind not in KINDS:
            raise CompatretError(f"unknown kind {self.kind!r}; choose from {('auto', *KINDS)}")
        if self.sample is not None and self.sample < MIN_PAIRS:
            raise CompatretError(f"--sample must be at least {MIN_PAIRS}")
        if self.budget is not None and not (0 < self.budget < math.inf):
            raise CompatretError("--budget must be a positive number of seconds")


@dataclass(frozen=True)
class Scored:
    """One option's per pseudo-query nDCG@10 as the gallery would serve it (`served_scores`)."""

    option: Option
    scores: np.ndarray
    seconds: float

    @property
    def mean(self) -> float:
        return float(self.scores.mean())

    @property
    def choosing(self) -> float:
        """The mean on the half of the pseudo-queries that choose the option (the other half estimates it)."""
        return float(self.scores[choosing_half(len(self.scores))].mean())


def choosing_half(n: int) -> np.ndarray:
    return np.arange(n) % 2 == 0


@dataclass(frozen=True)
class Fitted:
    """One fitting run: the two records, the pairs, every option's scores, the chosen map and its estimate."""

    old: ModelVersion
    new: ModelVersion
    pairs: Pairs
    probe: Probe
    scored: list[Scored]
    chosen: Scored
    fitted: LearnedMap
    stay: np.ndarray | None  # staying's per pseudo-query scores, paired with each Scored's
    estimate: Estimate | None
    epochs: dict[str, int]
    embed_seconds: float
    seconds: float


def _records(gallery: Gallery, new_spec: str) -> tuple[ModelVersion, ModelVersion]:
    meta = gallery.meta
    old, new = meta.serving, load_version(new_spec)
    bare = meta.modality == "vector"
    if gallery.count() == 0:
        how = (
            "and was created for bare vectors (--dim): a map is fitted on stored texts or images, so create it with --model and add items"
            if bare
            else f"add its items first (compatret index add {gallery.path} --items FILE)"
        )
        raise CompatretError(f"the gallery {gallery.path} is empty: an adapter is fitted on the gallery's own rows; {how}")
    if bare:
        raise CompatretError("this gallery holds bare vectors, no payload (text or image) for a new model to embed: it cannot be adapted")
    if new.modality != meta.modality:
        raise CompatretError(f"model {new.id!r} is for {new.modality}, this gallery holds {meta.modality}")
    if new.id == old.id:
        raise CompatretError(f"the gallery already serves {old.id!r}")
    return old, new


def _old_encoder(gallery_dir: str | Path, modality: str) -> Encoder | None:
    """The serving model, to embed pseudo-queries as the gallery answers them today (None: image galleries)."""
    from compatret.engine.service import Service

    return Service.open(gallery_dir).encoder() if modality == "text" else None


def _mlp_epochs(probe: Probe, option: Option, left: float) -> int:
    """Epochs of the MLP that fit the time left for it, timed on one epoch; 0: skip it."""
    import torch  # noqa: F401  imported before the clock starts: its import is not an epoch

    if left <= 0:
        return 0
    t0 = time.perf_counter()
    fit_one("mlp", *training_pairs(probe, np.arange(len(probe.old)), option), epochs=1)
    per_epoch = time.perf_counter() - t0
    fits = (FOLDS + 2) if probe.paired_share < 1 else 2  # the folds (unseen rows), the seen-rows map, the final map
    epochs = int(left / max(per_epoch * fits, 1e-6))
    return min(MLP_EPOCHS, epochs) if epochs >= MIN_MLP_EPOCHS else 0


MLP_EPOCHS, MIN_MLP_EPOCHS = 30, 5


def score_options(
    probe: Probe, opts: list[Option], deadline: float, log: Callable[[str], None] | None
) -> tuple[list[Scored], dict[str, int]]:
    """Every option's cross-fitted scores, simplest first, while time is left (the MLP sized to it)."""
    scored: list[Scored] = []
    epochs: dict[str, int] = {}
    for opt in sorted(opts, key=lambda o: o.kind == "mlp"):
        left = deadline - time.perf_counter()
        if opt.kind == "mlp":
            n_mlp = sum(o.kind == "mlp" for o in opts if o.direction not in epochs)
            epochs[opt.direction] = _mlp_epochs(probe, opt, 0.9 * left / max(n_mlp, 1))
            if epochs[opt.direction] == 0:
                if log:
                    log(f"{opt.label}: skipped, not enough of the budget left to train it")
                continue
        elif left <= 0 and scored:
            break
        t0 = time.perf_counter()
        n = epochs.get(opt.direction, MLP_EPOCHS)

        def fit(o: Option, x: np.ndarray, y: np.ndarray, n: int = n) -> LearnedMap:
            return fit_one(o.kind, x, y, o.ridge, epochs=n)

        scores = served_scores(probe, opt, fit)
        scored.append(Scored(opt, scores, time.perf_counter() - t0))
        if log:
            log(f"{opt.label}: pseudo-query nDCG@10 as served {scored[-1].choosing:.3f} on the choosing half ({scored[-1].seconds:.1f} s)")
    return scored, epochs


def fit_adapters(
    gallery_dir: str | Path,
    new_spec: str,
    settings: AdaptSettings = AdaptSettings(),
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> Fitted:
    """Sample and embed the pairs within the budget, score every option out of sample, fit the best
    on every pair and estimate it against staying."""
    settings.check()
    start = time.perf_counter()
    budget = settings.budget if settings.budget is not None else math.inf
    gallery = Gallery.open(gallery_dir)
    old, new = _records(gallery, new_spec)
    for spec in (new_spec, gallery.meta.serving_source):  # a model behind an endpoint must still be the one registered
        check_endpoint(spec, "fit an adapter with it")
    plans, usable, ids = usable_rows(gallery, old)
    if not ids:
        raise CompatretError(
            f"no rows with a payload (text or image) in {old.id!r}'s space to fit on (rows under a prefix rule need a backfill first)"
        )
    if settings.sample is not None and settings.sample > len(ids):
        raise CompatretError(
            f"--sample {settings.sample} is larger than the gallery's {len(ids)} rows with a payload in {old.id!r}'s space"
        )
    if len(ids) < MIN_PAIRS:
        raise CompatretError(f"the gallery has {len(ids)} rows with a payload in {old.id!r}'s space: at least {MIN_PAIRS} are needed")
    wanted = min(len(ids), MAX_SAMPLE) if settings.sample is None else settings.sample
    new_enc, old_enc = load_encoder(new_spec), _old_encoder(gallery_dir, gallery.meta.modality)
    pairs = gather(gallery, ids, plans, usable, wanted, new_enc, old_enc, start + EMBED_SHARE * budget, settings.seed, progress)
    check_enough(pairs, new, settings.budget)
    embedded = time.perf_counter() - start
    folds = np.random.default_rng(settings.seed + 2).permutation(np.arange(len(pairs.ids)) % FOLDS)
    text = old_enc is not None and not np.isnan(pairs.q_old[:, 0]).all()
    # without text to ask with (image galleries), each row's own NEW vector asks for it: it ranks options, it cannot judge staying
    probe = Probe(
        pairs.old,
        pairs.new,
        pairs.q_old if text else pairs.old,
        pairs.q_new if text else pairs.new,
        pairs.others,
        folds,
        len(pairs.ids) / len(ids),
    )
    directions = ("gallery", "query") if settings.direction == "auto" else (settings.direction,)
    opts = options(directions, KINDS if settings.kind == "auto" else (settings.kind,))
    if log:
        log(
            f"{len(pairs.ids)} pairs ({embedded:.0f} s), {int(probe.queried.sum())} pseudo-queries ({pairs.query_source}), "
            f"{len(pairs.others)} more rows as distractors; {len(opts)} options, each scored on seen ({probe.paired_share:.0%} of rows) "
            f"and unseen rows ({FOLDS}-fold cross-fitted)"
        )
    scored, epochs = score_options(probe, opts, start + budget, log)
    if not scored:
        raise CompatretError(f"no map could be fitted within --budget {settings.budget} s: raise --budget (or choose --kind affine)")
    # chosen on half the pseudo-queries, estimated on the other half: the best of several options,
    # estimated on the queries it was chosen by, would look better than it is
    half = choosing_half(len(scored[0].scores))
    chosen = max(scored, key=lambda s: round(s.choosing, 4))  # max keeps the first of equals: the simpler
    opt = chosen.option
    fitted = fit_one(
        opt.kind, *training_pairs(probe, np.arange(len(pairs.ids)), opt), opt.ridge, epochs=epochs.get(opt.direction, MLP_EPOCHS)
    )
    stay = stay_scores(probe) if text else None
    est = estimate(stay[~half], chosen.scores[~half], settings.seed) if stay is not None and (~half).sum() >= MIN_QUERIES else None
    return Fitted(old, new, pairs, probe, scored, chosen, fitted, stay, est, epochs, embedded, time.perf_counter() - start)


class AdapterRefused(CompatretError):
    """The adapted model is estimated to serve worse than the gallery's model does today."""


def refusal(f: Fitted) -> str | None:
    """Why the chosen adapter must not be written without --force: estimated worse than staying
    (the mean change on the pseudo-queries below 0), or no estimate at all; None when it may."""
    if f.estimate is None:
        asked = int(f.probe.queried.sum()) if f.stay is not None else 0
        why = (
            "an image gallery has no text to make pseudo-queries from"
            if f.old.modality == "image"
            else f"only {asked} pseudo-queries (titles or sentences of 5+ words) were made within the budget, {2 * MIN_QUERIES} are needed"
        )
        return f"no estimate against staying ({why}): nothing written; --force writes the adapter unchecked"
    if f.estimate.change.mean < 0:
        return (
            f"staying on {f.old.id!r} is estimated better than the {f.chosen.option.label} adapter to {f.new.id!r}: "
            f"{f.estimate.line()}; nothing written (--force writes it anyway)"
        )
    return None


def adapt(
    gallery_dir: str | Path,
    new_spec: str,
    out_dir: str | Path,
    settings: AdaptSettings = AdaptSettings(),
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Fit, choose, estimate and write the adapted model folder; returns the report `--json` prints.
    Refuses (writing nothing) when the estimate says staying is better, unless `force`."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise CompatretError(f"{out} exists and is not empty")
    f = fit_adapters(gallery_dir, new_spec, settings, progress, log)
    est = f.estimate
    why = refusal(f)
    if why is not None and not settings.force:
        raise AdapterRefused(why)
    version = write_model(out, new_spec, f, settings, gallery_dir)
    return {
        "model": str(out),
        "model_id": version.id,
        "direction": f.chosen.option.direction,
        "kind": f.chosen.option.kind,
        "ridge": f.chosen.option.ridge,
        "from": f.old.id,
        "to": f.new.id,
        "sample": len(f.pairs.ids),
        "pseudo_queries": int((~np.isnan(f.pairs.q_old[:, 0])).sum()),
        "query_source": f.pairs.query_source,
        "estimate": est.to_dict() if est else None,
        "forced": why is not None,
        "options": [
            {
                "direction": s.option.direction,
                "kind": s.option.kind,
                "ridge": s.option.ridge,
                "pseudo_ndcg": s.choosing,
                "seconds": s.seconds,
            }
            for s in f.scored
        ],
        "embed_seconds": f.embed_seconds,
        "seconds": f.seconds,
        "budget_seconds": settings.budget,
    }


ADAPTER_FILE = "adapter.json"  # how the adapter was chosen and its estimate against staying: `index upgrade` shows it


def write_model(out: Path, new_spec: str, f: Fitted, settings: AdaptSettings, gallery_dir: str | Path | None = None) -> ModelVersion:
    """Build the folder beside `out` and rename it into place: a failed run leaves nothing."""
    with built_beside(out) as tmp:
        tmp.mkdir()
        old, new, direction, kind, fitted = f.old, f.new, f.chosen.option.direction, f.chosen.option.kind, f.fitted
        tag = hashlib.blake2b(fitted.weight.tobytes(), digest_size=4).hexdigest()
        method = f"adapter:{kind}:{direction} from {old.id} ({len(f.pairs.ids)} pairs)"
        alias = new_spec in ALIASES
        if direction == "gallery":  # NEW itself (its files, or its alias) under a record with a transform rule
            vid = f"{new.id}-from-{old.id}-{tag}"
            if not alias:
                shutil.copytree(new_spec, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(VERSION_FILE, "checkpoints"))
            else:
                write_encoder_config(tmp, "alias", model=new_spec)
            (tmp / TRANSFORMS_DIR).mkdir(exist_ok=True)
            fitted.save(tmp / TRANSFORMS_DIR / f"{vid}.npz")
            version = ModelVersion(
                vid, new.dim, new.modality, parent=old, compat=Compat.transform(f"{TRANSFORMS_DIR}/{vid}.npz"), method=method
            )
        else:  # NEW (alias, or a copy in base/) followed by the head, under an identity rule
            vid = f"{new.id}-into-{old.id}-{tag}"
            if not alias:
                shutil.copytree(new_spec, tmp / "base", ignore=shutil.ignore_patterns("checkpoints"))
            fitted.save(tmp / "head.npz")
            version = ModelVersion(vid, old.dim, new.modality, parent=old, compat=Compat.identity(), method=method)
            write_encoder_config(tmp, "adapted", base=new_spec if alias else "base", head="head.npz")
        version.save(tmp)
        (tmp / ADAPTER_FILE).write_text(
            json.dumps(
                {
                    "direction": direction,
                    "kind": kind,
                    "ridge": f.chosen.option.ridge,
                    "from": old.id,
                    "to": new.id,
                    "sample": len(f.pairs.ids),
                    "gallery": str(Path(gallery_dir).resolve()) if gallery_dir else None,
                    "forced": refusal(f) is not None,
                    "estimate": f.estimate.to_dict() if f.estimate else None,
                    "estimate_line": f.estimate.line() if f.estimate else None,
                },
                indent=2,
            )
        )
    return version
