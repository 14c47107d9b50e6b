"""Faults a storage engine must survive (issue 27): damaged cache files, a cache file changed under
a running server, read-your-writes across workers, prune beside serving, a cache that cannot be
written, a full disk. Real galleries on disk, real `compatret serve` processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from compatret.store.gallery import Gallery
from compatret.engine.service import Service
from compatret.search.verify import verify
from compatret.testing.serve import serving
from compatret.testing.damage import bitrot

DIM = 32


def make_gallery(path: Path, rows: int = 3000, ann: str = "flat", batches: int = 1) -> np.ndarray:
    """A gallery of random unit vectors with ids r0..; returns the vectors as stored."""
    x = np.random.default_rng(0).normal(size=(rows, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    service = Service.create(path, dim=DIM, version_id="v1", ann=ann)
    for part in np.array_split(np.arange(rows), batches):
        service.add_vectors(x[part], ids=[f"r{i}" for i in part])
    return x


def truth(path: Path, queries: np.ndarray, k: int = 10) -> list[list[str]]:
    """Exact top-k by brute force over the table's latest version."""
    t = Gallery.open(path).scan(["id", "vector"])
    ids = np.asarray(t.column("id").to_pylist())
    vectors = np.asarray(t.column("vector").to_pylist(), dtype=np.float32)
    order = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]
    return [list(ids[row]) for row in order]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "compatret", *args], capture_output=True, text=True, timeout=300)


def frag_dir(path: Path) -> Path:
    return sorted((path / "search").glob("frag-*"))[0]



DAMAGE = {
    "truncated rows": lambda d: os.truncate(d / "rows.npz", 10),
    "emptied vectors": lambda d: os.truncate(d / "vec-0.npy", 0),
    "bit-rot in vectors": lambda d: bitrot(d / "vec-0.npy"),
    "seal removed": lambda d: (d / "digest.json").unlink(),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_cache_file_is_rebuilt_and_answers_stay_exact(tmp_path: Path, damage: str) -> None:
    """Catches a cache trusted as it is: BadZipFile, `Aborted!`, or bit-rot served as wrong answers."""
    g = tmp_path / "g"
    x = make_gallery(g)
    Service.open(g).query(vectors=x[:1])  # writes the cache
    DAMAGE[damage](frag_dir(g))
    report = verify(Gallery.open(g))
    assert not report.ok and "damaged" in report.mismatches[0]
    q = x[:20] + 0.01
    res = Service.open(g).query(vectors=q, k=10)
    assert [r.ids for r in res] == truth(g, q)
    assert verify(Gallery.open(g)).ok  # the query rewrote the folder it discarded


@pytest.mark.processes
def test_verify_repair_fixes_a_damaged_cache_from_the_cli(tmp_path: Path) -> None:
    g = tmp_path / "g"
    make_gallery(g)
    Service.open(g).query(vectors=np.ones((1, DIM), np.float32))
    os.truncate(frag_dir(g) / "rows.npz", 10)
    bad = cli("index", "verify", str(g))
    assert bad.returncode == 1 and "damaged" in bad.stdout and "Traceback" not in bad.stderr
    fixed = cli("index", "verify", str(g), "--repair")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert cli("index", "verify", str(g)).returncode == 0


def test_a_damaged_saved_kernel_is_rebuilt(tmp_path: Path) -> None:
    """Catches a faiss file loaded unchecked: bit-rot in its codes would be served as scores."""
    g = tmp_path / "g"
    x = make_gallery(g, ann="ivf")
    q = x[:20]
    first = [r.ids for r in Service.open(g).query(vectors=q)]
    kernel = sorted((g / "search").glob("kernel-*"))[0]
    bitrot(next(kernel.glob("index-*.faiss")), keep=4096)
    assert any("kernel" in m for m in verify(Gallery.open(g)).mismatches)
    assert [r.ids for r in Service.open(g).query(vectors=q)] == first


def _queries_ok(url: str, q: np.ndarray, want: list[list[str]], payload: bool = False) -> None:
    r = httpx.post(f"{url}/query", json={"vectors": q.tolist(), "k": 10, "payload": payload}, timeout=30)
    assert r.status_code == 200, r.text
    assert [h["ids"] for h in r.json()["results"]] == want


@pytest.mark.processes
def test_a_cache_file_damaged_or_truncated_under_a_running_server(tmp_path: Path) -> None:
    """ivfpq re-ranks on the stored vectors: a memory-mapped file truncated under the server
    killed it with SIGBUS, and bit-rot changed every score; the server answers as before."""
    g = tmp_path / "g"
    x = make_gallery(g, rows=4000, ann="ivfpq")
    q = x[:30]
    Service.open(g).query(vectors=q)  # the server starts from cache files
    with serving(str(g)) as url:
        r = httpx.post(f"{url}/query", json={"vectors": q.tolist(), "k": 10}, timeout=60)
        before = r.json()["results"]
        d = frag_dir(g)
        bitrot(d / "vec-0.npy")
        r = httpx.post(f"{url}/query", json={"vectors": q.tolist(), "k": 10}, timeout=60)
        assert r.json()["results"] == before
        os.truncate(d / "vec-0.npy", 0)
        r = httpx.post(f"{url}/query", json={"vectors": q.tolist(), "k": 10}, timeout=60)
        assert r.status_code == 200 and r.json()["results"] == before
        assert httpx.get(f"{url}/health", timeout=10).json()["status"] == "ok"


@pytest.mark.processes
def test_read_your_writes_on_every_worker(tmp_path: Path) -> None:
    """Catches the snapshot served for --refresh-seconds after an acknowledged delete (any worker),
    and a write by another process (the CLI) not seen by the next query."""
    g = tmp_path / "g"
    x = make_gallery(g, rows=2000)
    with serving(str(g), "--workers", "2", "--refresh-seconds", "30") as url:
        for i in range(20):  # warm both workers' views
            httpx.post(f"{url}/query", json={"vectors": x[:1].tolist(), "k": 3}, timeout=30)
        for row in range(10):
            r = httpx.post(f"{url}/items/delete", json={"ids": [f"r{row}"]}, timeout=30)
            assert r.status_code == 200, r.text
            for _ in range(6):
                hits = httpx.post(f"{url}/query", json={"vectors": x[row : row + 1].tolist(), "k": 3}, timeout=30).json()
                assert f"r{row}" not in hits["results"][0]["ids"]
        extra = np.random.default_rng(5).normal(size=(1, DIM)).astype(np.float32)
        np.save(tmp_path / "extra.npy", extra)
        np.save(tmp_path / "extra_ids.npy", np.array(["new-row"]))
        added = cli("index", "add", str(g), "--vectors", str(tmp_path / "extra.npy"), "--ids", str(tmp_path / "extra_ids.npy"))
        assert added.returncode == 0, added.stderr
        for _ in range(6):
            hits = httpx.post(f"{url}/query", json={"vectors": extra.tolist(), "k": 1}, timeout=30).json()
            assert hits["results"][0]["ids"] == ["new-row"]


@pytest.mark.processes
def test_prune_beside_a_serving_process_gives_no_5xx(tmp_path: Path) -> None:
    """Catches a reader pinned to a version whose files prune deletes: HTTP 500 on payload queries."""
    g = tmp_path / "g"
    x = make_gallery(g, rows=3000, batches=12)
    q = x[:5]
    with serving(str(g)) as url:
        want = truth(g, q)
        failures: list[str] = []
        stop = threading.Event()

        def ask() -> None:
            while not stop.is_set():
                r = httpx.post(f"{url}/query", json={"vectors": q.tolist(), "k": 10, "payload": True}, timeout=60)
                if r.status_code != 200 or [h["ids"] for h in r.json()["results"]] != want:
                    failures.append(f"{r.status_code} {r.text[:200]}")

        threads = [threading.Thread(target=ask) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            pruned = cli("index", "prune", str(g), "--older-than-days", "0")
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert pruned.returncode == 0, pruned.stderr
        assert not failures, failures[:3]
        _queries_ok(url, q, want, payload=True)


@pytest.mark.processes
def test_a_cache_that_cannot_be_written_is_served_from_memory_and_reported(tmp_path: Path) -> None:
    """Catches a cache write failure that failed every route (500 on /health, /query)."""
    g = tmp_path / "g"
    x = make_gallery(g)
    shutil.rmtree(g / "search", ignore_errors=True)
    (g / "search").write_text("not a folder")  # every cache write now fails
    q = x[:10]
    with serving(str(g)) as url:
        health = httpx.get(f"{url}/health", timeout=30).json()
        assert health["status"] == "degraded" and "cannot write the search cache" in health["problems"][0]
        _queries_ok(url, q, truth(g, q))
    res = cli("query", str(g), "--vectors", str(_saved(tmp_path, q)), "-k", "3", "--json")
    assert res.returncode == 0, res.stderr
    assert not list(g.glob("**/.tmp-*"))


def _saved(tmp_path: Path, q: np.ndarray) -> Path:
    np.save(tmp_path / "q.npy", q)
    return tmp_path / "q.npy"


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 24 MiB tmpfs (skipped where mounting is not allowed; the fault benchmark does not skip)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.processes
def test_a_full_disk_is_one_error_line_and_nothing_half_written(tmp_path: Path, small_disk: Path) -> None:
    """Catches the 56-line LanceError traceback (rc 1) and a .tmp-* cache folder left behind."""
    g = small_disk / "g"
    x = make_gallery(g, rows=1000)
    q = x[:5]
    want = truth(g, q)
    (small_disk / "filler").write_bytes(b"")
    with open(small_disk / "filler", "wb") as f:  # fill the disk
        try:
            while True:
                f.write(b"\0" * 2**20)
                f.flush()
        except OSError:
            pass
    big = np.random.default_rng(2).normal(size=(20000, DIM)).astype(np.float32)
    np.save(tmp_path / "big.npy", big)
    np.save(tmp_path / "big_ids.npy", np.array([f"b{i}" for i in range(len(big))]))
    res = cli("index", "add", str(g), "--vectors", str(tmp_path / "big.npy"), "--ids", str(tmp_path / "big_ids.npy"))
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: no space left on device: add vectors"), res.stderr
    assert Gallery.open(g).count() == 1000
    shutil.rmtree(g / "search", ignore_errors=True)  # the query must write a cache on a full disk
    res = cli("query", str(g), "--vectors", str(_saved(tmp_path, q)), "-k", "10", "--json")
    assert res.returncode == 0, res.stderr
    assert not list(g.glob("**/.tmp-*"))
    (small_disk / "filler").unlink()
    assert [r.ids for r in Service.open(g).query(vectors=q)] == want
