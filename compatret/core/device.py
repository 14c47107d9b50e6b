"""Where torch runs: one answer for training, encoders and search kernels."""

from __future__ import annotations

import os


def torch_cuda() -> bool:
    """CUDA through torch, without importing torch on machines that have no NVIDIA driver."""
    if not os.path.exists("/proc/driver/nvidia"):
        return False
    import torch

    return bool(torch.cuda.is_available())


def torch_device(requested: str | None = None) -> str:
    """The device asked for, else CUDA when torch sees a GPU, else the CPU."""
    return requested or ("cuda" if torch_cuda() else "cpu")
