"""`index add` resumes: a rerun after kill -9 or Ctrl-C stores every item once, as an uninterrupted run would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from compatret import CompatretError
from compatret.store.gallery import Gallery
from compatret.engine.service import Service

ENV = {**os.environ, "LANCEDB_LOG": "error"}


def items_parquet(path, digit_models, n: int) -> str:
    items = digit_models["items"][:n]
    pq.write_table(pa.table({"id": [it["id"] for it in items], "image": [it["image"] for it in items],
                             "metadata": pa.array([it["metadata"] for it in items])}), path)
    return str(path)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
@pytest.mark.processes
def test_interrupted_add_resumes(tmp_path, digit_models, sig):
    src = items_parquet(tmp_path / "items.parquet", digit_models, 400)
    for name in ("whole", "cut"):
        Service.create(tmp_path / name, model=digit_models["v1"])
    cmd = lambda g: [sys.executable, "-m", "compatret", "index", "add", str(tmp_path / g), "--items", src, "--batch-size", "4", "--json"]  # noqa: E731  (100 commits: room to land the signal mid-run)
    subprocess.run(cmd("whole"), env=ENV, check=True, capture_output=True)
    start = Gallery.open(tmp_path / "cut").version
    # a child of a background job inherits an ignored SIGINT (no KeyboardInterrupt): give it Ctrl-C back
    proc = subprocess.Popen(cmd("cut"), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while time.time() < deadline and Gallery.open(tmp_path / "cut").latest_version() < start + 3:
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    partial = Gallery.open(tmp_path / "cut").count()
    assert 0 < partial < 400, f"the interruption did not land mid-run ({partial} rows)"
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and f"{partial} rows committed" in err and "rerun" in err
    done = subprocess.run(cmd("cut"), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"added": 400 - partial, "skipped": partial, "rows": 400, "skipped_empty": 0, "skipped_empty_ids": []}
    whole, cut = Gallery.open(tmp_path / "whole").vectors_by_id(), Gallery.open(tmp_path / "cut").vectors_by_id()
    assert set(whole) == set(cut) and len(cut) == Gallery.open(tmp_path / "cut").count() == 400
    for i, (version, vec) in whole.items():
        np.testing.assert_allclose(cut[i][1], vec, atol=1e-6)


def test_same_id_other_content_refused(tmp_path, digit_models):
    s = Service.create(tmp_path / "g", model=digit_models["v1"])
    items = digit_models["items"][:10]
    assert s.add_items(items, progress=False) == 10
    assert s.add_items(items, progress=False) == 0  # all stored alike: nothing to do
    version = s.gallery.version
    changed = [{**items[3], "image": items[4]["image"]}]
    with pytest.raises(CompatretError, match=r"other content, e\.g\. 'd3'"):
        s.add_items(changed, progress=False)
    assert s.gallery.version == version


def test_add_progress_moves_per_encoded_slice_not_per_commit(digit_models):
    """70 items in one commit: the bar moves after each encoder call of 32, and the vectors are
    those of one call over all 70."""
    from tqdm import tqdm

    from compatret.encoders import load_encoder
    from compatret.engine.ingest import embed_with_progress

    encoder = load_encoder(digit_models["v1"])
    images = [it["image"] for it in digit_models["items"][:70]]
    seen: list[int] = []

    class Recording(tqdm):
        def update(self, n: int = 1) -> bool | None:
            seen.append(n)
            return super().update(n)

    with Recording(total=70, disable=True) as bar:
        vecs = embed_with_progress(encoder, images, bar)
    assert seen == [32, 32, 6]
    np.testing.assert_allclose(vecs, encoder.encode_items(images, batch_size=70), atol=1e-5)
