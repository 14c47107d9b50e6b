"""`--engine ray` on a real local Ray cluster: the same rows as the local engine, a killed
worker and a killed driver change nothing but the time taken."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from compatret.core.errors import CompatretError
from compatret.engine.backfill import backfill
from compatret.engine.service import Service
from compatret.store.gallery import Gallery

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")

from compatret.engine.ingest import vectors_to_add
from compatret.engine.ray_cluster import RayOptions, connect
from compatret.engine.ray_ingest import ingest_items


@pytest.fixture(scope="module")
def cluster():
    try:
        connect(RayOptions())
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"Ray cannot start here: {exc}")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def items_file(path, digit_models, n: int, copies: int = 1) -> str:
    items = [it for c in range(copies) for it in digit_models["items"][:n]]
    table = pa.table({"id": [f"{it['id']}-{c}" for c in range(copies) for it in digit_models["items"][:n]],
                      "image": [it["image"] for it in items],
                      "metadata": [json.dumps(it["metadata"]) for it in items]})
    pq.write_table(table, path)
    return str(path)


def rows(path) -> dict[str, tuple[str, np.ndarray]]:
    return Gallery.open(path).vectors_by_id()


def assert_same_rows(a, b) -> None:
    ra, rb = rows(a), rows(b)
    assert set(ra) == set(rb)
    for i, (version, vec) in ra.items():
        assert rb[i][0] == version
        np.testing.assert_allclose(rb[i][1], vec, atol=1e-6)
    ma, mb = Gallery.open(a).meta, Gallery.open(b).meta
    assert (ma.serving, ma.vector_model, ma.versions) == (mb.serving, mb.vector_model, mb.versions)


def test_ingest_and_backfill_match_the_local_engine(tmp_path, digit_models, cluster):
    src = items_file(tmp_path / "items.parquet", digit_models, 300)
    local = Service.create(tmp_path / "local", model=digit_models["v1"])
    local.add_items([{**it, "id": f"{it['id']}-0"} for it in digit_models["items"][:300]], progress=False)
    remote = Service.create(tmp_path / "ray", model=digit_models["v1"])
    report = ingest_items(remote.gallery, remote.source_of_serving(), src, RayOptions(batch_size=64, step_rows=100), progress=False)
    assert (report["added"], report["skipped"]) == (300, 0)
    assert_same_rows(tmp_path / "local", tmp_path / "ray")
    meta = Gallery.open(tmp_path / "ray").scan(["id", "metadata"], where="id = 'd7-0'").column("metadata")[0].as_py()
    assert json.loads(meta) == digit_models["items"][7]["metadata"]

    for s in (local, remote):
        s.upgrade(digit_models["v2"])
    backfill(Service.open(tmp_path / "local"), progress=False)
    done = backfill(Service.open(tmp_path / "ray"), progress=False, ray=RayOptions(batch_size=64, step_rows=100))
    assert (done.done, done.remaining) == (300, 0)
    assert_same_rows(tmp_path / "local", tmp_path / "ray")
    assert {v for v, _ in rows(tmp_path / "ray").values()} == {"v2"}


def test_empty_items_are_refused_or_skipped_as_the_local_engine_does(tmp_path, digit_models, cluster):
    items = digit_models["items"][:20]
    table = pa.table({"id": [it["id"] for it in items], "image": [None if n in (4, 11) else it["image"] for n, it in enumerate(items)]})
    pq.write_table(table, tmp_path / "items.parquet")
    g = Service.create(tmp_path / "g", model=digit_models["v1"])
    with pytest.raises(CompatretError, match=r"item 5 \('d4'\) has no image \(--skip-empty"):
        ingest_items(g.gallery, g.source_of_serving(), str(tmp_path / "items.parquet"), RayOptions(batch_size=8), progress=False)
    assert g.gallery.count() == 0
    report = ingest_items(g.gallery, g.source_of_serving(), str(tmp_path / "items.parquet"), RayOptions(batch_size=8), progress=False,
                          skip_empty=True)
    assert (report["added"], report["skipped_empty"], report["skipped_empty_ids"]) == (18, 2, ["d4", "d11"])
    assert Gallery.open(tmp_path / "g").count() == 18


def test_a_killed_worker_is_retried_and_stdout_stays_json(tmp_path, digit_models, cluster):
    """The CLI in its own process, as a user runs it: one of its Ray actors is killed midway. Ray
    retries the work (none lost, none twice) and relays the death to the driver's stdout, which
    must still hold nothing but the JSON report."""
    src = items_file(tmp_path / "items.parquet", digit_models, 600, copies=3)
    Service.create(tmp_path / "g", model=digit_models["v1"])
    killed: list[int] = []

    def kill_one_actor() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            actors = [pid for pid, title in processes() if "_IngestWriter" in title]
            if actors:
                time.sleep(0.5)  # let it take batches first
                os.kill(actors[0], signal.SIGKILL)
                killed.append(actors[0])
            time.sleep(0.05)

    cmd = [sys.executable, "-m", "compatret", "index", "add", str(tmp_path / "g"), "--items", src, "--engine", "ray",
           "--ray-address", cluster, "--batch-size", "8", "--step-rows", "400", "--json"]
    killer = threading.Thread(target=kill_one_actor)
    killer.start()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "LANCEDB_LOG": "error"}, timeout=300)
    killer.join()
    assert killed, "no worker was killed: the test proves nothing"
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)  # the JSON report alone: Ray's lines went to stderr
    stored = rows(tmp_path / "g")
    expected = 3 * len(digit_models["items"][:600])
    assert report["added"] == expected == len(stored) == Gallery.open(tmp_path / "g").count()  # none lost, none twice
    assert "RayDeprecationWarning" not in done.stderr and "fork-safe" not in done.stderr  # compatret's own calls are clean


def processes() -> list[tuple[int, str]]:
    """(pid, command line) of this machine's processes; Ray names its actor processes `ray::<class>`."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    out.append((int(d), f.read().replace(b"\0", b" ").decode(errors="replace")))
            except OSError:
                pass
    return out


def _data_files(gallery_dir) -> tuple[set[str], set[str]]:
    """Data files on disk, and those some table version refers to."""
    import lance

    uri = str(gallery_dir / "gallery.lance")
    on_disk = {p.name for p in (gallery_dir / "gallery.lance" / "data").iterdir()}
    ds = lance.dataset(uri)
    used = {f.path.split("/")[-1] for v in ds.versions() for fr in lance.dataset(uri, version=v["version"]).get_fragments()
            for f in fr.metadata.files}
    return on_disk, used


def test_a_killed_driver_resumes(tmp_path, digit_models, cluster):
    src = items_file(tmp_path / "items.parquet", digit_models, 600, copies=2)
    Service.create(tmp_path / "g", model=digit_models["v1"])
    start = Gallery.open(tmp_path / "g").version
    cmd = [sys.executable, "-m", "compatret", "index", "add", str(tmp_path / "g"), "--items", src, "--engine", "ray",
           "--ray-address", cluster, "--batch-size", "8", "--step-rows", "200", "--json"]
    env = {**os.environ, "LANCEDB_LOG": "error"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and Gallery.open(tmp_path / "g").latest_version() <= start + 1:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = Gallery.open(tmp_path / "g").count()
    expected = 2 * len(digit_models["items"][:600])
    assert 0 < partial < expected, f"the kill did not land between commits ({partial} rows)"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["added"] + report["skipped"] == expected and report["skipped"] == partial
    assert Gallery.open(tmp_path / "g").count() == expected == len(rows(tmp_path / "g"))
    on_disk, used = _data_files(tmp_path / "g")
    assert on_disk <= used  # files of the killed attempt (and of the rerun's skipped blocks) removed... or in use


def test_vectors_on_ray_match_the_local_engine_and_resume(tmp_path, cluster, monkeypatch):
    """`add --vectors --engine ray`: the rows the local engine stores; a rerun after a partial run
    (steps committed, the rest not) adds only the rest; another vector under a stored id is refused."""
    import compatret.engine.ray_ingest as engine
    from compatret.engine.ray_ingest import ingest_vectors

    monkeypatch.setattr(engine, "VECTOR_BLOCK_ROWS", 250)  # several blocks and steps on a small gallery
    x = np.random.default_rng(0).normal(size=(1200, 16)).astype(np.float32)
    ids = np.array([f"v{i}" for i in range(1200)])
    local = Service.create(tmp_path / "local", dim=16, version_id="v1")
    local.add_vectors(x, ids=ids, batch_size=250)

    remote = Service.create(tmp_path / "ray", dim=16, version_id="v1")
    remote.add_vectors(x[:500], ids=ids[:500], batch_size=250)  # what a killed driver had committed
    with remote.gallery.writing("checks"):
        version, id_arr, stored = vectors_to_add(remote.gallery, x, ids, None)
    assert stored.sum() == 500 and stored[:500].all()
    added = ingest_vectors(remote.gallery, x, id_arr, stored, version.id, RayOptions(workers=2), progress=False)
    assert added == 700
    assert_same_rows(tmp_path / "local", tmp_path / "ray")
    assert len(Gallery.open(tmp_path / "ray").dataset(Gallery.open(tmp_path / "ray").latest_version()).get_fragments()) == 2 + 3

    before = Gallery.open(tmp_path / "ray").latest_version()
    other = x[:3].copy()
    other[1] += 1.0
    with remote.gallery.writing("checks"), pytest.raises(Exception, match="other content, e.g. 'v1'"):
        vectors_to_add(remote.gallery, other, ids[:3], None)
    assert Gallery.open(tmp_path / "ray").latest_version() == before


def test_cli_vectors_on_ray(tmp_path, cluster):
    """The CLI path: a separate process joins this test's cluster and stores the vectors."""
    x = np.random.default_rng(1).normal(size=(300, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "ids.npy", np.array([f"r{i}" for i in range(300)]))
    Service.create(tmp_path / "g", dim=8, version_id="v1")
    cmd = [sys.executable, "-m", "compatret", "index", "add", str(tmp_path / "g"), "--vectors", str(tmp_path / "x.npy"),
           "--ids", str(tmp_path / "ids.npy"), "--engine", "ray", "--ray-address", cluster, "--json"]
    env = {**os.environ, "LANCEDB_LOG": "error"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["added"] == 300
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0 and json.loads(again.stdout)["skipped"] == 300, again.stderr[-2000:]
    got = Gallery.open(tmp_path / "g").vectors_by_id()
    np.testing.assert_allclose(got["r7"][1], x[7] / np.linalg.norm(x[7]), atol=1e-6)
