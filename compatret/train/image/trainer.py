"""Classification-style training of image embedders, with an optional compatibility loss.

Seeds, per-epoch checkpoints with resume, a progress bar, CPU or GPU chosen at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from compatret.core.device import torch_device
from compatret.train.checkpoint import load_checkpoint, save_checkpoint
from compatret.train.seeding import seed_everything

CompatLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]
CHECKPOINT = "last.pt"


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    device: str | None = None
    crop_padding: int = 4
    flip: bool = True
    checkpoint_dir: str | None = None
    progress: bool = True


def augment(x: torch.Tensor, padding: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding (one offset per batch) and random horizontal flips."""
    if padding > 0:
        h, w = x.shape[-2:]
        dy, dx = (int(v) for v in torch.randint(0, 2 * padding + 1, (2,), generator=gen))
        x = F.pad(x, (padding,) * 4)[..., dy : dy + h, dx : dx + w]
    if flip:
        mask = torch.rand(x.shape[0], generator=gen) < 0.5
        x = torch.where(mask.view(-1, 1, 1, 1).to(x.device), x.flip(-1), x)
    return x


@torch.no_grad()
def embed(model: nn.Module, x: torch.Tensor, batch_size: int = 512, device: str | None = None) -> torch.Tensor:
    """Features of a whole tensor of images (eval mode), on the CPU."""
    device = torch_device(device)
    was_training = model.training
    model.eval().to(device)
    out = [model(x[s : s + batch_size].to(device)).cpu() for s in range(0, len(x), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def _objective(
    model: nn.Module, classifier: nn.Module | None, compat_loss: CompatLoss | None, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of one batch and its named parts: cross-entropy (with a classifier) + the compat loss."""
    feats = model(x)
    parts = {"ce": F.cross_entropy(classifier(feats), y)} if classifier is not None else {}
    loss = parts.get("ce", feats.new_zeros(()))
    if compat_loss is not None:
        extra = compat_loss(feats, y, x)
        parts.update({k: v for k, v in extra.items() if k != "total"})
        loss = loss + extra["total"]
    return loss, parts


def _resume(ckpt: Path | None, device: str, stateful: dict[str, Any], gen: torch.Generator) -> tuple[int, list[dict[str, float]]]:
    """(first epoch to run, history so far): from the checkpoint if there is one, else (0, [])."""
    if ckpt is None or not ckpt.exists():
        return 0, []
    state = load_checkpoint(ckpt, device)
    for key, module in stateful.items():
        module.load_state_dict(state[key])
    gen.set_state(state["gen"])
    torch.set_rng_state(state["torch_rng"])
    return state["epoch"], state["history"]


def train_image_model(
    model: nn.Module,
    classifier: nn.Module | None,
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: TrainConfig,
    compat_loss: CompatLoss | None = None,
    desc: str = "train",
) -> list[dict[str, float]]:
    """Train model+classifier by cross-entropy (+ compat_loss(features, labels, images)).

    With classifier None the compat_loss is the whole objective (d-Simplex: its loss holds
    the fixed classifier and weighs CE against HOC itself). Returns the per-epoch mean of
    each loss part. With cfg.checkpoint_dir set, each epoch ends with a checkpoint and a
    rerun resumes after the last finished epoch.
    """
    if classifier is None and compat_loss is None:
        raise ValueError("train_image_model needs a classifier, a compat_loss or both")
    seed_everything(cfg.seed)
    device = torch_device(cfg.device)
    heads = nn.ModuleList([classifier] if classifier is not None else [])
    # ~1.3-1.45x faster convolutions on CPU
    model.to(device, memory_format=torch.channels_last).train()  # type: ignore[call-overload]  # Module.to takes memory_format; torch's overloads omit it
    heads.to(device).train()
    params = [p for p in list(model.parameters()) + list(heads.parameters()) if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    steps_per_epoch = max(1, (len(images) + cfg.batch_size - 1) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.15)
    gen = torch.Generator().manual_seed(cfg.seed)
    stateful: dict[str, Any] = {"model": model, "heads": heads, "opt": opt, "sched": sched}
    ckpt = Path(cfg.checkpoint_dir) / CHECKPOINT if cfg.checkpoint_dir else None
    start, history = _resume(ckpt, device, stateful, gen)
    bar = tqdm(desc=desc, unit="batch", disable=not cfg.progress, initial=start * steps_per_epoch, total=cfg.epochs * steps_per_epoch)
    for epoch in range(start, cfg.epochs):
        sums: dict[str, float] = {}
        order = torch.randperm(len(images), generator=gen)
        for s in range(0, len(images), cfg.batch_size):
            idx = order[s : s + cfg.batch_size]
            x = augment(images[idx], cfg.crop_padding, cfg.flip, gen).to(device, memory_format=torch.channels_last)
            y = labels[idx].to(device)
            loss, parts = _objective(model, classifier, compat_loss, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(idx)
        history.append({k: v / len(images) for k, v in sums.items()})
        bar.set_postfix({"epoch": epoch + 1, **{k: f"{v:.3f}" for k, v in history[-1].items()}})
        if ckpt is not None:
            save_checkpoint(
                ckpt,
                {
                    **{k: m.state_dict() for k, m in stateful.items()},
                    "gen": gen.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "epoch": epoch + 1,
                    "history": history,
                },
            )
    bar.close()
    model.eval()
    return history
