"""Torch image encoders: a CIFAR-style ResNet-18 with a width multiplier, saved as a model folder."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from compatret.core.device import torch_device
from compatret.core.errors import CompatretError
from compatret.core.lineage import ModelVersion
from compatret.encoders.base import ENCODER_FILE, write_encoder_config
from compatret.models.heads.basis_transform import BasisTransform
from compatret.models.heads.orthogonal import OrthogonalProjection

WEIGHTS_FILE = "weights.pt"


@dataclass(frozen=True)
class ImageModelSpec:
    """Everything needed to rebuild an image embedder: architecture and preprocessing.

    `extra` names an inference-time neck after the embedding, so the folder alone rebuilds
    it: {"neck": "bt2", "old_dim": d} (BasisTransform) or {"neck": "oca"} (OrthogonalProjection),
    both square over embed_dim.
    """

    width: float = 1.0
    in_channels: int = 3
    image_size: int = 32
    embed_dim: int = 128
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.25, 0.25, 0.25)
    extra: dict[str, Any] = field(default_factory=dict)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet18(nn.Module):
    """ResNet-18 with a 3x3 stem and no max-pool (the CIFAR variant); width scales every stage."""

    def __init__(self, width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        chans = [max(4, int(round(c * width))) for c in (64, 128, 256, 512)]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, chans[0], 3, 1, 1, bias=False), nn.BatchNorm2d(chans[0]), nn.ReLU())
        layers: list[nn.Module] = []
        cin = chans[0]
        for i, c in enumerate(chans):
            stride = 1 if i == 0 else 2
            layers += [BasicBlock(cin, c, stride), BasicBlock(c, c, 1)]
            cin = c
        self.layers = nn.Sequential(*layers)
        self.out_dim = chans[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1)


def build_neck(spec: ImageModelSpec) -> nn.Module:
    """The inference-time head `spec.extra` names (identity when none), so it saves with the model."""
    name = spec.extra.get("neck")
    if name is None:
        return nn.Identity()
    if name == "bt2":
        old_dim = int(spec.extra["old_dim"])
        return BasisTransform(old_dim, spec.embed_dim - old_dim)
    if name == "oca":
        return OrthogonalProjection(spec.embed_dim)
    raise CompatretError(f"unknown image model neck {name!r}")


class ImageEmbedder(nn.Module):
    """Backbone -> linear embedding -> neck (BT² / OCA orthogonal head, or identity)."""

    def __init__(self, spec: ImageModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = CifarResNet18(spec.width, spec.in_channels)
        self.embed = nn.Linear(self.backbone.out_dim, spec.embed_dim)
        self.neck = build_neck(spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.embed(self.backbone(x)))


def decode_image(item: Any, spec: ImageModelSpec) -> np.ndarray:
    """Image bytes, a path or an array -> float32 [C, H, W] in [0, 1] at the model's size.

    Bytes that are no image (or a decompression bomb) give one error, not a traceback."""
    from PIL import Image

    if isinstance(item, dict):
        item = item.get("image") if item.get("image") is not None else item.get("image_path")
    img: Image.Image
    try:
        if isinstance(item, (bytes, bytearray, memoryview)):
            img = Image.open(io.BytesIO(bytes(item)))
        elif isinstance(item, (str, Path)):
            img = Image.open(item)
        elif isinstance(item, np.ndarray):
            arr = item.astype(np.float32)
            if arr.max() > 1.0:
                arr = arr / 255.0
            img = Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8).squeeze())
        else:
            raise CompatretError(f"cannot read an image from {type(item).__name__}")
        img = img.convert("L" if spec.in_channels == 1 else "RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise CompatretError(f"cannot read an image: {type(exc).__name__}") from exc
    if img.size != (spec.image_size, spec.image_size):
        img = img.resize((spec.image_size, spec.image_size), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr.transpose(2, 0, 1)


def to_batch(images: Sequence[Any], spec: ImageModelSpec) -> torch.Tensor:
    """Decode and normalise a list of images into one [N, C, H, W] tensor."""
    x = torch.from_numpy(np.stack([decode_image(i, spec) for i in images]))
    mean = torch.tensor(spec.mean[: spec.in_channels]).view(1, -1, 1, 1)
    std = torch.tensor(spec.std[: spec.in_channels]).view(1, -1, 1, 1)
    return (x - mean) / std


class ImageEncoder:
    """Encoder protocol over an ImageEmbedder; queries and items go through the same tower."""

    def __init__(self, model: ImageEmbedder, version: ModelVersion, device: str | None = None) -> None:
        self.device = torch_device(device)
        self.model = model.to(self.device).eval()
        self.version = version

    @property
    def dim(self) -> int:
        return self.version.dim

    @torch.no_grad()
    def encode_items(self, items: Sequence[Any], batch_size: int = 256, progress: bool = False) -> np.ndarray:
        out = []
        for s in tqdm(range(0, len(items), batch_size), desc="encode", disable=not progress, unit="batch"):
            x = to_batch(items[s : s + batch_size], self.model.spec).to(self.device)
            out.append(F.normalize(self.model(x), dim=1).cpu().numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.dim), np.float32)

    def encode_queries(self, queries: Sequence[Any], batch_size: int = 256, progress: bool = False) -> np.ndarray:
        return self.encode_items(queries, batch_size, progress)


def save_image_model(model: ImageEmbedder, version: ModelVersion, model_dir: str | Path, extra_state: dict[str, Any] | None = None) -> Path:
    """Write weights, architecture and the ModelVersion into one folder."""
    d = Path(model_dir)
    d.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), **(extra_state or {})}, d / WEIGHTS_FILE)
    write_encoder_config(d, "image", spec=asdict(model.spec))
    version.save(d)
    return d


def load_image_model(model_dir: str | Path) -> tuple[ImageEmbedder, dict[str, Any]]:
    """Rebuild an ImageEmbedder (neck included) from its folder; returns it and the other saved state."""
    d = Path(model_dir)
    if not (d / ENCODER_FILE).exists() or not (d / WEIGHTS_FILE).exists():
        raise CompatretError(f"{d} is not an image model folder (needs {ENCODER_FILE} and {WEIGHTS_FILE})")
    cfg = json.loads((d / ENCODER_FILE).read_text())
    spec_d = cfg["spec"]
    spec = ImageModelSpec(**{**spec_d, "mean": tuple(spec_d["mean"]), "std": tuple(spec_d["std"])})
    model = ImageEmbedder(spec)
    state = torch.load(d / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state.pop("model"))
    return model, state
