"""Classification-style training of image embedders, with an optional compatibility loss.

Images stream from an ImageSource through a DataLoader (loader workers, pinned memory on GPUs),
augmented per image; seeds, per-epoch checkpoints with resume, a progress bar, CPU or GPU chosen
at run time, mixed precision on CUDA, and data-parallel processes under torchrun (`distributed`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from compatret.core.device import torch_device
from compatret.core.errors import CompatretError
from compatret.encoders.image import ImageModelSpec
from compatret.train.checkpoint import load_checkpoint, save_checkpoint
from compatret.train.image import distributed
from compatret.train.image.data import Augment, ImageSource, ParquetImages, RankBatches, TrainImages, in_order
from compatret.train.seeding import seed_everything

CompatLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]
CHECKPOINT = "last.pt"
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
AUGMENTS = ("crop", "resized_crop", "none")


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser (`optimizer`: sgd, Nesterov | adam, as BT² and d-Simplex train) and schedule
    (`schedule`: onecycle | cosine, after `warmup_epochs` of linear warm-up, down to `min_lr`),
    `label_smoothing` of the cross-entropy, per-image augmentation (`augment`: crop |
    resized_crop | none, with crop_padding and flip), loader `workers` (0: read in the training
    process), `shuffle_mb` (a parquet file's images are shuffled within row groups holding this
    much, each loader worker keeping them in memory), `precision` (fp32 | bf16 | fp16; half precision on CUDA only) and, in a
    data-parallel run, `sync_batchnorm` (batch statistics over the global batch)."""

    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    device: str | None = None
    optimizer: str = "sgd"
    schedule: str = "onecycle"
    warmup_epochs: int = 0
    min_lr: float = 0.0
    label_smoothing: float = 0.0
    crop_padding: int = 4
    flip: bool = True
    augment: str = "crop"
    workers: int = 0
    shuffle_mb: float = 256.0
    precision: str = "fp32"
    sync_batchnorm: bool = True
    checkpoint_dir: str | None = None
    progress: bool = True

    def check(self, device: str) -> None:
        if self.augment not in AUGMENTS:
            raise CompatretError(f"train.augment must be one of {', '.join(AUGMENTS)}, got {self.augment!r}")
        if self.precision not in PRECISIONS:
            raise CompatretError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.precision != "fp32" and not device.startswith("cuda"):
            raise CompatretError(f"train.precision {self.precision} needs a CUDA device (this run is on {device})")
        if self.workers < 0 or self.shuffle_mb <= 0:
            raise CompatretError("train.workers must be >= 0 and train.shuffle_mb > 0")
        if self.optimizer not in ("sgd", "adam") or self.schedule not in ("onecycle", "cosine"):
            raise CompatretError(
                f"train.optimizer is sgd or adam and train.schedule onecycle or cosine, got {self.optimizer!r}, {self.schedule!r}"
            )
        if not (0 <= self.warmup_epochs < self.epochs and 0 <= self.min_lr <= self.lr and 0 <= self.label_smoothing < 1):
            raise CompatretError("train.warmup_epochs must be below epochs, min_lr at most lr, label_smoothing in [0, 1)")

    def optimiser(
        self, params: list[nn.Parameter], steps_per_epoch: int
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """The optimiser and its per-step schedule."""
        if self.optimizer == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        else:
            opt = torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay, nesterov=True)
        total = self.epochs * steps_per_epoch
        if self.schedule == "onecycle":
            return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=total, pct_start=0.15)
        warm = self.warmup_epochs * steps_per_epoch
        floor = self.min_lr / self.lr

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            t = (step - warm) / max(1, total - warm)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

        return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


class _Net(nn.Module):
    """Embedder and classifier as one module: what DDP wraps, so both are kept in step."""

    def __init__(self, model: nn.Module, classifier: nn.Module | None) -> None:
        super().__init__()
        self.model, self.classifier = model, classifier

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        feats = self.model(x)
        return feats, self.classifier(feats) if self.classifier is not None else None


def loader(data: torch.utils.data.Dataset[Any], batches: Any, workers: int, pin: bool) -> torch.utils.data.DataLoader[Any]:
    """Batches read by `workers` processes (started by forkserver: torch and friends are not fork-safe)."""
    return torch.utils.data.DataLoader(
        data, batch_sampler=batches, num_workers=workers, pin_memory=pin, multiprocessing_context="forkserver" if workers else None
    )


@torch.no_grad()
def class_means(
    model: nn.Module, source: ImageSource, spec: ImageModelSpec, num_classes: int, device: str, normalized: bool = False, workers: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-class mean feature [num_classes, D], images per class) of un-augmented images, one
    streaming pass (each process takes its share; the sums are added up across processes)."""
    r = distributed.ranks()
    model.eval()
    sums: torch.Tensor | None = None
    counts = torch.zeros(num_classes, dtype=torch.float64)
    for x, y, _ in loader(TrainImages(source, spec, None, 0), list(in_order(source, 256, r.rank, r.world)), workers, False):
        f = model(x.to(device)).double().cpu()
        f = F.normalize(f, dim=1) if normalized else f
        sums = torch.zeros(num_classes, f.shape[1], dtype=torch.float64) if sums is None else sums
        sums.index_add_(0, y, f)
        counts += torch.bincount(y, minlength=num_classes).double()
    if sums is None:
        raise CompatretError("no training images to compute class means from")
    sums, counts = distributed.all_sum(sums), distributed.all_sum(counts)
    return (sums / counts.clamp(min=1)[:, None]).float(), counts


def _objective(
    net: nn.Module, compat_loss: CompatLoss | None, x: torch.Tensor, y: torch.Tensor, smoothing: float = 0.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of one batch and its named parts: cross-entropy (with a classifier) + the compat loss."""
    feats, logits = net(x)
    parts = {"ce": F.cross_entropy(logits.float(), y, label_smoothing=smoothing)} if logits is not None else {}
    loss = parts.get("ce", feats.new_zeros((), dtype=torch.float32))
    if compat_loss is not None:
        extra = compat_loss(feats.float(), y, x)
        parts.update({k: v for k, v in extra.items() if k != "total"})
        loss = loss + extra["total"]
    return loss, parts


def _next(batches: Any) -> Any:
    """The next batch; an image a loader worker could not read is its one-line error, not the worker's traceback."""
    try:
        return next(batches)
    except CompatretError as exc:
        raise CompatretError(str(exc).strip().splitlines()[-1].removeprefix("compatret.core.errors.CompatretError: ")) from None


def _resume(ckpt: Path | None, device: str, stateful: dict[str, Any], world: int) -> tuple[int, list[dict[str, float]]]:
    """(first epoch to run, history so far): from the checkpoint if there is one, else (0, []). Every
    process reads it: under torchrun on several machines the output folder must be shared storage."""
    if ckpt is None or not ckpt.exists():
        return 0, []
    state = load_checkpoint(ckpt, device)
    if state.get("world", 1) != world:
        raise CompatretError(f"{ckpt} was written by a run of {state.get('world', 1)} processes: resume it with as many (this is {world})")
    for key, module in stateful.items():
        if key in state:  # (a checkpoint from before mixed precision has no scaler: it starts fresh)
            module.load_state_dict(state[key])
    torch.set_rng_state(state["torch_rng"])
    return state["epoch"], state["history"]


def train_image_model(
    model: nn.Module,
    classifier: nn.Module | None,
    source: ImageSource,
    spec: ImageModelSpec,
    cfg: TrainConfig,
    compat_loss: CompatLoss | None = None,
    desc: str = "train",
) -> list[dict[str, float]]:
    """Train model+classifier by cross-entropy (+ compat_loss(features, labels, images)).

    With classifier None the compat_loss is the whole objective (d-Simplex: its loss holds
    the fixed classifier and weighs CE against HOC itself). Returns the per-epoch mean of
    each loss part. With cfg.checkpoint_dir set, each epoch ends with a checkpoint and a
    rerun resumes after the last finished epoch. Under torchrun, each process trains on its
    part of every global batch; its loss is weighed by its share, so the averaged gradient is
    the global batch's, as in one process.
    """
    if classifier is None and compat_loss is None:
        raise ValueError("train_image_model needs a classifier, a compat_loss or both")
    r = distributed.ranks()
    device = distributed.join(torch_device(cfg.device), r)
    cfg.check(device)
    if isinstance(source, ParquetImages):
        source = source.shuffled_in(cfg.shuffle_mb)
    seed_everything(cfg.seed)
    net = _Net(model, classifier)
    if r.world > 1 and cfg.sync_batchnorm:
        distributed.sync_batchnorm(net, device)
    # ~1.3-1.45x faster convolutions on CPU
    net.to(device, memory_format=torch.channels_last).train()  # type: ignore[call-overload]  # Module.to takes memory_format; torch's overloads omit it
    heads = nn.ModuleList([classifier] if classifier is not None else [])
    params = [p for p in net.parameters() if p.requires_grad]
    steps = RankBatches(source, cfg.batch_size, cfg.seed, 0, cfg.epochs, r.rank, r.world).steps_per_epoch()
    opt, sched = cfg.optimiser(params, steps)
    ckpt = Path(cfg.checkpoint_dir) / CHECKPOINT if cfg.checkpoint_dir else None
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "fp16")
    start, history = _resume(ckpt, device, {"model": model, "heads": heads, "opt": opt, "sched": sched, "scaler": scaler}, r.world)
    wrapped = nn.parallel.DistributedDataParallel(net, device_ids=[r.local] if device.startswith("cuda") else None) if r.world > 1 else net
    cuda = device.startswith("cuda")
    augment = Augment(cfg.augment, cfg.crop_padding, cfg.flip) if cfg.augment != "none" or cfg.flip else None
    batches = iter(
        loader(
            TrainImages(source, spec, augment, cfg.seed),
            RankBatches(source, cfg.batch_size, cfg.seed, start, cfg.epochs, r.rank, r.world),
            cfg.workers,
            cuda,
        )
    )
    half = PRECISIONS[cfg.precision]
    bar = tqdm(desc=desc, unit="batch", disable=not (cfg.progress and r.main), initial=start * steps, total=cfg.epochs * steps)
    for epoch in range(start, cfg.epochs):
        sums: torch.Tensor | None = None  # images seen, then each part's sum over them
        names: list[str] = []
        for _ in range(steps):
            x, y, n_global = _next(batches)
            x, y = x.to(device, memory_format=torch.channels_last, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast("cuda", dtype=half) if half is not None else nullcontext():
                loss, parts = _objective(wrapped, compat_loss, x, y, cfg.label_smoothing)
            share = len(y) * r.world / int(n_global[0])  # this process's images over the global batch's, times W: DDP averages
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss * share).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            bar.update(1)
            names = names or list(parts)
            row = torch.tensor([len(y)] + [float(parts[k].detach()) * len(y) for k in names], dtype=torch.float64)
            sums = row if sums is None else sums + row
        if sums is None:
            raise CompatretError(f"no batch to train on: {len(source.labels)} images, batch size {cfg.batch_size}")
        totals = distributed.all_sum(sums)
        history.append({k: float(totals[n + 1] / totals[0]) for n, k in enumerate(names)})
        bar.set_postfix({"epoch": epoch + 1, **{k: f"{v:.3f}" for k, v in history[-1].items()}})
        if ckpt is not None and r.main:
            stateful: dict[str, Any] = {"model": model, "heads": heads, "opt": opt, "sched": sched, "scaler": scaler}
            state = {k: m.state_dict() for k, m in stateful.items()}
            save_checkpoint(ckpt, {**state, "torch_rng": torch.get_rng_state(), "epoch": epoch + 1, "history": history, "world": r.world})
        distributed.barrier()
    bar.close()
    model.eval()
    return history
