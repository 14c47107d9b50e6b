"""One loop for the five retriever methods: seeded batches, checkpoints every few steps, resume.

A hand-written loop rather than SentenceTransformerTrainer: ADORE re-retrieves inside each
step against frozen gallery vectors, the compat losses need each document's gallery row,
and the trainer needs `datasets` and `accelerate`, which compatret does not depend on.
The losses themselves are sentence-transformers' (MultipleNegativesRankingLoss) where they fit.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from compatret.core.device import torch_device
from compatret.core.errors import CompatretError
from compatret.core.lineage import VERSION_FILE, Compat, ModelVersion
from compatret.core.transforms import normalize
from compatret.encoders import load_version
from compatret.models.losses.ranking import AdoreLoss, StarLoss
from compatret.models.losses.retrieval_compat import CompatRetrievalLoss
from compatret.train.checkpoint import load_checkpoint, save_checkpoint
from compatret.train.seeding import seed_everything
from compatret.train.text.batches import clean_batches, plain_batches
from compatret.train.text.config import RetrieverConfig
from compatret.train.text.heads import ExtensionHead, alignment_map
from compatret.train.text.mining import dynamic_candidates
from compatret.train.text.model_io import load_trainable, save_retriever
from compatret.train.text.setup import TrainingSet, load_training_set, sample_negatives

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

CHECKPOINT = Path("checkpoints") / "last.pt"
LOG_FILE = "train_log.json"
Step = Callable[[np.ndarray, np.random.Generator], dict[str, Tensor]]
ITEM_TERMS = {"star": "none", "bct": "influence", "bt2": "cosine", "oca": "anchor"}


def build_model(cfg: RetrieverConfig, ts: TrainingSet) -> SentenceTransformer:
    """Start weights, aligned to the old space when asked, with the extension head for BT²/OCA."""
    old_dim = ts.old_vectors.shape[1]
    model = load_trainable(cfg.init or cfg.old, device=torch_device())
    # restored on save; an extra attribute, which torch's Module.__setattr__ types as Tensor | Module
    model.serve_seq_length = model.max_seq_length  # type: ignore[assignment]
    model.max_seq_length = min(cfg.max_seq_length, model.max_seq_length)  # type: ignore[type-var]  # sentence-transformers types it Optional; a loaded transformer has one
    if cfg.align_docs:
        model.append(_fit_alignment(model, ts, cfg.align_docs, cfg.seed).to(torch_device()))
    dim = model.get_embedding_dimension()
    if cfg.method in ("bt2", "oca"):
        if dim < old_dim:
            raise CompatretError(f"{cfg.method}: start model has {dim} dims, the gallery {old_dim}")
        model.append(ExtensionHead(dim, cfg.extra_dims).to(torch_device()))  # type: ignore[arg-type]  # typed Optional; `dim < old_dim` above needs an int
    elif cfg.method != "star" and dim != old_dim:
        raise CompatretError(f"{cfg.method} keeps the old space: start model has {dim} dims, the gallery {old_dim}")
    return model


def _fit_alignment(model: SentenceTransformer, ts: TrainingSet, n_docs: int, seed: int) -> nn.Module:
    """Least-squares map from the start model's embeddings of n gallery documents to their stored old vectors."""
    known = ts.text_rows
    rows = np.sort(np.random.default_rng(seed).choice(known, size=min(n_docs, len(known)), replace=False))
    new = model.encode([ts.doc_texts[r] for r in rows], batch_size=64, convert_to_tensor=True, show_progress_bar=True)
    return alignment_map(new.cpu(), torch.from_numpy(ts.old_vectors[rows]))


def new_version(cfg: RetrieverConfig, ts: TrainingSet, dim: int) -> ModelVersion:
    """identity for ADORE and BCT, prefix(d_old) for BT² and OCA, no parent for STAR."""
    init = load_version(cfg.init or cfg.old).id
    vid = f"{init}-{cfg.method}-{cfg.fingerprint()[:8]}"
    how = f"{cfg.method} (compatret train retriever) on {Path(cfg.train_data).name}/{cfg.split}, init {init}"
    if cfg.method == "star":
        return ModelVersion(vid, dim, "text", method=how)
    compat = Compat.prefix(ts.old_version.dim) if cfg.method in ("bt2", "oca") else Compat.identity()
    return ModelVersion(vid, dim, "text", parent=ts.old_version, compat=compat, method=how)


def batch_plan(cfg: RetrieverConfig, ts: TrainingSet) -> list[np.ndarray]:
    """Every step's pair indices, epoch after epoch: clean batches where the loss uses in-batch negatives.

    ADORE's loss has none (it ranks each query against retrieved gallery rows, all its positives
    known), so it keeps plain batches.
    """
    plan: list[np.ndarray] = []
    for epoch in range(cfg.epochs):
        rng = np.random.default_rng([cfg.seed, epoch])
        if cfg.method == "adore":
            plan += plain_batches(len(ts.pairs), cfg.batch_size, rng)
        else:
            plan += clean_batches(ts.pairs, ts.positives, cfg.batch_size, rng)
    return plan


def _item_step(cfg: RetrieverConfig, ts: TrainingSet, model: SentenceTransformer) -> Step:
    """Query, positive and hard-negative columns through a STAR or compat loss."""
    if cfg.method == "star":
        loss: nn.Module = StarLoss(model)
    else:
        old = torch.from_numpy(ts.old_vectors).to(torch_device())
        loss = CompatRetrievalLoss(model, old, ITEM_TERMS[cfg.method], cfg.compat_weight, cfg.compat_weight)  # type: ignore[arg-type]

    def step(batch: np.ndarray, rng: np.random.Generator) -> dict[str, Tensor]:
        q, pos = batch[:, 0], batch[:, 1]
        relevant = set().union(*(ts.positives[i] for i in q))  # no batch query's positive as anyone's negative
        negs = sample_negatives(ts, q, cfg.hard_negatives, rng, exclude=relevant)
        rows = np.concatenate([pos[:, None], negs], axis=1)
        columns = [[ts.queries[i] for i in q]] + [[ts.doc_texts[r] for r in rows[:, c]] for c in range(rows.shape[1])]
        features = [_to_device(model.preprocess(col)) for col in columns]
        return loss(features, torch.from_numpy(rows))

    return step


def _adore_step(cfg: RetrieverConfig, ts: TrainingSet, model: SentenceTransformer) -> Step:
    """Query tower only: retrieve with the current weights, then LambdaRank over what came back."""
    loss = AdoreLoss()
    vectors = torch.tensor(ts.old_vectors)  # a copy: the array read from Arrow is read-only

    def step(batch: np.ndarray, rng: np.random.Generator) -> dict[str, Tensor]:
        q = np.unique(batch[:, 0])  # one row per query: all its positives take part
        features = _to_device(model.preprocess([ts.queries[i] for i in q]))
        emb = model(features)["sentence_embedding"]
        found = dynamic_candidates(normalize(emb.detach().cpu().numpy()), ts.kernel, [ts.positives[i] for i in q], cfg.depth)
        items = vectors[np.clip(found.rows, 0, None)].to(emb.device)
        as_t = lambda a: torch.from_numpy(a).to(emb.device)  # noqa: E731
        return loss(emb, items, as_t(found.relevant), as_t(found.ranks), as_t(found.mask))

    return step


def _to_device(features: dict) -> dict:
    dev = torch_device()
    return {k: v.to(dev) if isinstance(v, Tensor) else v for k, v in features.items()}


def _finished(out: Path, fingerprint: str) -> bool:
    if not (out / VERSION_FILE).exists():
        return False
    log = json.loads((out / LOG_FILE).read_text()) if (out / LOG_FILE).exists() else {}
    if log.get("fingerprint") != fingerprint:
        raise CompatretError(f"{out} already holds a different model; choose another --out")
    return True


def train_retriever(cfg: RetrieverConfig, progress: bool = True) -> Path:
    """Train, checkpointing into cfg.out, resuming a run with the same spec; returns the model folder."""
    cfg.check()
    out, fp = Path(cfg.out), cfg.fingerprint()
    if _finished(out, fp):
        return out
    seed_everything(cfg.seed)
    ts = load_training_set(cfg, progress=progress)
    model = build_model(cfg, ts)
    step_fn = _adore_step(cfg, ts, model) if cfg.method == "adore" else _item_step(cfg, ts, model)
    plan = batch_plan(cfg, ts)
    total = min(len(plan), cfg.max_steps or len(plan))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.01)
    warmup = max(1, total // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))
    start, seconds, history = 0, 0.0, []
    ckpt = out / CHECKPOINT
    if ckpt.exists():
        state = load_checkpoint(ckpt, torch_device())
        if state["fingerprint"] != fp:
            raise CompatretError(f"{ckpt} belongs to a different run; choose another --out or delete it")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start, seconds, history = state["step"], state["seconds"], state["history"]
    model.train()
    bar = tqdm(total=total, initial=start, desc=f"train {cfg.method}", unit="step", disable=not progress)
    sums: dict[str, float] = {}
    t0 = time.perf_counter()
    for step in range(start, total):
        parts = step_fn(ts.pairs[plan[step]], np.random.default_rng([cfg.seed, step]))
        parts["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        bar.update(1)
        bar.set_postfix({k: f"{float(v.detach()):.3f}" for k, v in parts.items()})
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == total:
            n = (step + 1) - (history[-1]["step"] if history else 0)
            history.append({"step": step + 1, **{k: v / n for k, v in sums.items()}})
            sums = {}
            seconds_now = seconds + time.perf_counter() - t0
            save_checkpoint(
                ckpt,
                {
                    "fingerprint": fp,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                    "step": step + 1,
                    "seconds": seconds_now,
                    "history": history,
                },
            )
    bar.close()
    _save(cfg, ts, model, {"fingerprint": fp, "steps": total, "train_seconds": seconds + time.perf_counter() - t0, "history": history})
    return out


def _save(cfg: RetrieverConfig, ts: TrainingSet, model: SentenceTransformer, log: dict) -> None:
    """The finished model folder: served at full sequence length, its log, no checkpoints left."""
    out = Path(cfg.out)
    model.eval()
    model.max_seq_length = model.serve_seq_length  # train short, serve at full length
    version = new_version(cfg, ts, model.get_embedding_dimension())  # type: ignore[arg-type]  # sentence-transformers types it Optional; a loaded model has one
    (out / LOG_FILE).parent.mkdir(parents=True, exist_ok=True)
    (out / LOG_FILE).write_text(
        json.dumps(
            {
                "fingerprint": log["fingerprint"],
                "config": cfg.model_dump(),
                "steps": log["steps"],
                "train_seconds": log["train_seconds"],
                "history": log["history"],
            },
            indent=2,
        )
    )
    save_retriever(model, out, version, item_encoder=cfg.old if cfg.method == "adore" else None)
    shutil.rmtree((out / CHECKPOINT).parent, ignore_errors=True)  # a finished folder holds the model only
