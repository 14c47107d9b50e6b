"""Learned maps between embedding spaces, and the unit-length rule every stored vector follows."""

from __future__ import annotations

import functools
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compatret.core.errors import CompatretError


@dataclass(frozen=True)
class LearnedMap:
    """y = x @ weight + bias [+ relu(x @ w1 + b1) @ w2]: one learned transform step, parent space
    -> child space. Stored as .npy (the weight rows, then the bias row) or as .npz (weight, bias,
    and w1, b1, w2 when it has a residual layer); read with numpy only."""

    weight: np.ndarray
    bias: np.ndarray
    w1: np.ndarray | None = None
    b1: np.ndarray | None = None
    w2: np.ndarray | None = None

    @staticmethod
    def load(path: str | Path, name: str | None = None) -> LearnedMap:
        """The map in `path`. An error names it as `name` (say, relative to its gallery), else by its
        file name: the message may reach an HTTP client, which must not learn the server's folders."""
        try:
            if str(path).endswith(".npz"):
                with np.load(path, allow_pickle=False) as z:
                    parts = {k: z[k].astype(np.float32) for k in ("weight", "bias", "w1", "b1", "w2") if k in z}
                return LearnedMap(**parts)
            m = np.load(path, allow_pickle=False).astype(np.float32)
            return LearnedMap(weight=m[:-1], bias=m[-1])
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)  # an OSError's own text repeats the path
            raise CompatretError(f"cannot read transform {name or Path(path).name}: {why}") from exc

    def save(self, path: str | Path) -> None:
        """As .npz, written whole or not at all."""
        arrays = {
            k: v
            for k, v in (("weight", self.weight), ("bias", self.bias), ("w1", self.w1), ("b1", self.b1), ("w2", self.w2))
            if v is not None
        }
        tmp = Path(path).with_name(f".{Path(path).name}.tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, **{k: np.asarray(v, np.float32) for k, v in arrays.items()})  # type: ignore[arg-type]  # mypy matches ** against savez's allow_pickle: bool too
        os.replace(tmp, path)

    @property
    def dims(self) -> tuple[int, int]:
        """(input dim, output dim)."""
        return int(self.weight.shape[0]), int(self.weight.shape[1])

    def __call__(self, x: np.ndarray, block: int = 8192) -> np.ndarray:
        """Mapped in blocks of rows: temporaries stay small (a 1M-row group needs no 2 GB hidden layer)."""
        x = np.asarray(x, dtype=np.float32)
        y = np.empty((len(x), self.weight.shape[1]), np.float32)
        for s in range(0, len(x), block):
            part = x[s : s + block]
            out = part @ self.weight
            out += self.bias
            if self.w1 is not None and self.b1 is not None and self.w2 is not None:
                hidden = part @ self.w1
                hidden += self.b1
                np.maximum(hidden, 0, out=hidden)
                out += hidden @ self.w2
            y[s : s + block] = out
        return y


def normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation (zero rows stay zero); rows are first scaled by their largest
    magnitude, so 1e20 or 1e-30 components neither overflow nor vanish when squared."""
    x = np.asarray(x, dtype=np.float32)
    peak = np.abs(x).max(axis=1, keepdims=True) if x.size else np.ones((len(x), 1), np.float32)
    x = x / np.where(peak > 0, peak, 1).astype(np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


@functools.lru_cache(maxsize=64)
def _map_of_file(path: str, size: int, mtime_ns: int, name: str | None) -> LearnedMap:
    return LearnedMap.load(path, name)


def cached_map(path: str | Path, name: str | None = None) -> LearnedMap:
    """`LearnedMap.load`, read once per file state: a query through a transform plan (every IVF-PQ
    re-rank) must not read the file again; a file replaced in place has another size or mtime."""
    try:
        st = os.stat(path)
    except OSError:
        return LearnedMap.load(path, name)  # its own one-line error
    return _map_of_file(str(path), st.st_size, st.st_mtime_ns, name)
