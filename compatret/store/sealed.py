"""Derived files that are checked, never trusted: a folder "sealed" with the size and digest of each file.

The search cache (`search/frag-*`, `search/kernel-*`) is derived from the table and may be
damaged on disk (a truncated or rewritten file, bit-rot, a full disk mid-write). Each folder
lists its files with their size and xxh3-64 digest in `digest.json`, written last; a reader
reads each file whole into its own memory, checks it in the same pass and parses the bytes it
checked. So a damaged file is found once per load (never per query) and a file changed or
truncated later cannot reach a running process (nothing is memory-mapped: no SIGBUS).
"""

from __future__ import annotations

import errno
import io
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import xxhash

if TYPE_CHECKING:
    from typing_extensions import Buffer

DIGEST_FILE = "digest.json"
NPY_HEADER_MAX = 1 << 16  # a .npy header is at most this long (format 2.0)
log = logging.getLogger(__name__)


class Damaged(Exception):
    """A sealed file that is missing, truncated or not the bytes that were sealed."""


def digest(data: bytes | np.ndarray) -> str:
    return xxhash.xxh3_64_hexdigest(cast("Buffer", data))  # numpy's stubs give ndarray __buffer__ only on Python >= 3.12


def write_sealed(folder: Path, files: dict[str, bytes]) -> None:
    """Write `files` into `folder`, then the digest that seals them."""
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / DIGEST_FILE).write_text(json.dumps({name: [len(data), digest(data)] for name, data in files.items()}))


def read_sealed(folder: Path, name: str) -> np.ndarray:
    """The bytes of one sealed file (uint8), checked against the folder's digest (raises Damaged).

    Read into a numpy buffer: numpy asks for huge pages for large arrays, which makes the copy
    out of the page cache several times faster than into a bytearray (eval/faults/load_cost.py)."""
    try:
        sealed = json.loads((folder / DIGEST_FILE).read_text())
        size, want = sealed[name]
        with open(folder / name, "rb") as f:
            data = np.empty(int(size), np.uint8)
            got = f.readinto(data)  # type: ignore[arg-type]
            extra = f.read(1)
    except FileNotFoundError as exc:
        raise Damaged(f"{exc.filename} is missing") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise Damaged(f"{folder.name}/{name}: {exc}") from exc
    if got != size or extra:
        raise Damaged(f"{folder.name}/{name} has the wrong size (sealed {size} bytes)")
    if digest(data) != want:
        raise Damaged(f"{folder.name}/{name} does not match its digest")
    return data


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def npz_bytes(**arrays: np.ndarray | np.generic) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]  # mypy matches **arrays against savez's allow_pickle: bool too
    return buf.getvalue()


def npy_from(data: np.ndarray) -> np.ndarray:
    """An array over checked .npy bytes (uint8), without another copy."""
    buf = io.BytesIO(data[:NPY_HEADER_MAX].tobytes())
    major, _ = np.lib.format.read_magic(buf)
    header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = header(buf)
    if dtype.hasobject or fortran:
        raise Damaged("unexpected array layout")
    count = int(np.prod(shape))
    if buf.tell() + count * dtype.itemsize != len(data):
        raise Damaged("array header does not match its size")
    return data[buf.tell() :].view(dtype).reshape(shape)


def no_space(exc: BaseException) -> bool:
    """Whether an error (an OSError, or a LanceError that wraps one in its message) is a full disk."""
    return (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space left on device" in str(exc)
