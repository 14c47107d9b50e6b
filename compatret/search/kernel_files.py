"""Persisted ANN kernels: sealed files that say which table version they derive from."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compatret.search.fragments import CACHE_DIR, _replace_dir, _write_failed
from compatret.search.kernels import Kernel
from compatret.store.sealed import Damaged, read_sealed, write_sealed

log = logging.getLogger(__name__)
Mapper = Callable[[np.ndarray], np.ndarray]  # a row transform (a Compat plan), applied before a kernel sees the rows


@dataclass
class KernelState:
    """A kernel and the fragments (with their deletion state) whose rows it holds."""

    kernel: Kernel
    covers: dict[str, str | None]
    fids: dict[str, int] = field(default_factory=dict)  # fragment key -> fragment id (label range)
    mapper: Mapper | None = None  # how stored vectors enter this kernel's space (None: as stored)
    dirty: int = 0  # rows added or removed since it was built or saved


def _kernel_dir(gallery_dir: Path, key: tuple[str, ...]) -> Path:
    return gallery_dir / CACHE_DIR / f"kernel-{hashlib.blake2b('|'.join(key).encode(), digest_size=8).hexdigest()}"


def _save_kernel(gallery_dir: Path, key: tuple[str, ...], state: KernelState) -> None:
    """The index and the fragments it covers, in one sealed folder renamed into place. state.json
    names its index file by a fresh token, so a reader never pairs one save's state with another's
    index. Best effort: a kernel that cannot be saved is rebuilt by the next process that needs it."""
    import faiss

    target = _kernel_dir(gallery_dir, key)
    token = uuid.uuid4().hex
    tmp = target.with_name(f".tmp-{token}-{target.name}")
    try:
        tmp.mkdir(parents=True)
        index_bytes = faiss.serialize_index(state.kernel.index).tobytes()  # type: ignore[attr-defined]
        write_sealed(
            tmp,
            {
                f"index-{token}.faiss": index_bytes,
                "state.json": json.dumps(
                    {
                        "key": list(key),
                        "index": f"index-{token}.faiss",
                        "covers": state.covers,
                        "fids": state.fids,
                        "trained_on": state.kernel.trained_on,  # type: ignore[attr-defined]
                        "rerank": state.kernel.rerank,  # type: ignore[attr-defined]
                    }
                ).encode(),
            },
        )
        _replace_dir(tmp, target)
        state.dirty = 0
    except OSError as exc:
        _write_failed(gallery_dir, tmp, exc)


def kernel_files(d: Path) -> tuple[dict[str, Any], np.ndarray]:
    """A saved kernel folder's state and index bytes, each checked against the seal (raises
    Damaged, or ValueError/KeyError for a state that does not parse)."""
    state = json.loads(bytes(read_sealed(d, "state.json")))
    return state, read_sealed(d, state["index"])


def _load_kernel(gallery_dir: Path, key: tuple[str, ...]) -> KernelState | None:
    """A saved kernel, checked against its seal; None when missing or damaged (logged: it is rebuilt)."""
    import faiss

    from compatret.search.kernels import FaissKernel, faiss_gpus, on_gpu

    d = _kernel_dir(gallery_dir, key)
    if not d.exists():
        return None
    try:
        state, index_bytes = kernel_files(d)
        if state["key"] != list(key):
            return None
        index = faiss.deserialize_index(index_bytes)
    except (Damaged, ValueError, KeyError, RuntimeError) as exc:
        log.warning("search cache: discarding kernel %s (%s); rebuilding it from the rows", d, exc)
        return None
    kernel = FaissKernel(index, on_gpu(key[1], key[2]) and faiss_gpus() > 0, int(state["trained_on"]), int(state.get("rerank", 0)))
    return KernelState(kernel, dict(state["covers"]), {k: int(v) for k, v in state["fids"].items()})
