"""Fault-injection benchmark (issue 27): each fault run against the CLI and a live `compatret serve`
with concurrent clients, every answer checked against brute force over the table version it names.

    python eval/faults/run.py            # -> eval/faults/results.json, results.md (about 6 min on 2 cores)

Per case it counts wrong answers, HTTP 5xx (and dropped connections), crashes (a server that
died, a CLI killed by a signal or with an unexpected exit code), Python tracebacks printed by
any compatret process, and rows lost or duplicated against the ledger of acknowledged writes.
An answer is wrong when one of its ids is not a row of the version it names, its score is not
the query's inner product with that row's stored vector, or (exact galleries) its ids are not
the brute-force top-k. The full-disk and read-only cases mount a tmpfs / bind mount (needs root).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx
import lance
import numpy as np
from compatret.testing.ports import free_port  # noqa: E402
from compatret.testing.serve import answers_health  # noqa: E402
from compatret.testing.damage import bitrot  # noqa: E402

os.environ.setdefault("LANCEDB_LOG", "error")
HERE = Path(__file__).parent
DIM, ROWS, BATCHES, K = 32, 3000, 6, 10
QUERIES_PER_REQUEST = 16
CLIENTS = 3


@dataclass
class Case:
    name: str
    target: str  # cli | server | both
    checked_answers: int = 0
    wrong_answers: int = 0
    server_errors: int = 0
    crashes: int = 0
    tracebacks: int = 0
    lost: int = 0
    duplicated: int = 0
    notes: list[str] = field(default_factory=list)
    family: str = ""  # the fault, when one fault is run several ways (the README's table groups them)

    def fail(self, what: str) -> None:
        self.notes.append(what)


# ---- the truth: brute force over the table version an answer names -------------------------------
class Truth:
    """Rows of each table version, read from Lance (read before a prune deletes old versions)."""

    def __init__(self, gallery: Path) -> None:
        self.uri = str(gallery / "gallery.lance")
        self.versions: dict[int, tuple[np.ndarray, np.ndarray, dict[str, int]]] = {}
        self.lock = threading.Lock()

    def snapshot(self) -> None:
        for v in lance.dataset(self.uri).versions():
            self.rows(int(v["version"]))

    def rows(self, version: int) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
        with self.lock:
            if version not in self.versions:
                t = lance.dataset(self.uri, version=version).to_table(columns=["id", "vector"])
                ids = np.asarray(t.column("id").to_pylist())
                vectors = np.asarray(t.column("vector").to_pylist(), dtype=np.float32).reshape(len(ids), DIM)
                self.versions[version] = (ids, vectors, {str(i): n for n, i in enumerate(ids)})
            return self.versions[version]

    def wrong(self, q: np.ndarray, ids: list[str], scores: list[float], version: int, exact: bool) -> bool:
        try:
            all_ids, vectors, where = self.rows(version)
        except Exception:  # noqa: BLE001  a version the answer names but the table never had
            return True
        pos = [where.get(i) for i in ids]
        if any(p is None for p in pos) or len(set(ids)) != len(ids):
            return True
        true = vectors[pos] @ q if pos else np.zeros(0)
        if not np.allclose(true, scores, atol=1e-4):
            return True
        if exact:
            all_scores = vectors @ q
            want = min(K, len(all_ids))
            kth = np.sort(all_scores)[::-1][want - 1] if want else -np.inf
            return len(ids) != want or bool((true < kth - 1e-5).any())
        return False


# ---- processes ------------------------------------------------------------------------------------

def cli(case: Case, *args: str, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
    """Run a compatret command; a traceback, a signal or an exit code outside `ok` is counted."""
    res = subprocess.run([sys.executable, "-m", "compatret", *args], capture_output=True, text=True, timeout=600)
    case.tracebacks += res.stderr.count("Traceback")
    if res.returncode not in ok:
        case.crashes += 1
        case.fail(f"`compatret {' '.join(args[:2])}` exited {res.returncode}: {res.stderr.strip()[-300:]}")
    return res


class Server:
    def __init__(self, gallery: Path, *options: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        self.proc = subprocess.Popen([sys.executable, "-m", "compatret", "serve", str(gallery), "--port", str(self.port), *options],
                                     stdout=subprocess.DEVNULL, stderr=self.log, start_new_session=True)
        if answers_health(self.url, 90):
            return
        os.killpg(self.proc.pid, signal.SIGKILL)
        raise RuntimeError(f"server did not answer /health with 200: {Path(self.log.name).read_text()[-300:]}")

    def stop(self, case: Case) -> None:
        if self.proc.poll() is not None:
            case.crashes += 1
            case.fail(f"server died with {self.proc.returncode}")
        else:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        text = Path(self.log.name).read_text()
        case.tracebacks += text.count("Traceback")
        if "Traceback" in text:
            case.fail("server traceback: " + text[text.index("Traceback"):][:400])
        os.unlink(self.log.name)


class Clients:
    """Threads that query a server until stopped; every answer checked against its version."""

    def __init__(self, case: Case, server: Server, truth: Truth, queries: np.ndarray, exact: bool = True,
                 payload: bool = False, forbidden: Callable[[], set[str]] | None = None) -> None:
        self.case, self.server, self.truth, self.queries = case, server, truth, queries
        self.exact, self.payload, self.forbidden = exact, payload, forbidden
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(n,)) for n in range(CLIENTS)]

    def __enter__(self) -> Clients:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()

    def ask(self, client: httpx.Client, q: np.ndarray) -> None:
        gone = self.forbidden() if self.forbidden else set()  # acknowledged deletes before this request
        try:
            r = client.post(f"{self.server.url}/query", json={"vectors": q.tolist(), "k": K, "payload": self.payload}, timeout=60)
        except httpx.HTTPError as exc:
            with self.lock:
                self.case.server_errors += 1
                self.case.fail(f"connection: {exc!r}"[:200])
            return
        with self.lock:
            if r.status_code >= 500 or r.status_code != 200:
                self.case.server_errors += r.status_code >= 500
                self.case.wrong_answers += r.status_code < 500
                self.case.fail(f"HTTP {r.status_code}: {r.text[:200]}")
                return
            for qi, hit in zip(q, r.json()["results"]):
                self.case.checked_answers += 1
                if self.truth.wrong(qi, hit["ids"], hit["scores"], hit["table_version"], self.exact) or gone & set(hit["ids"]):
                    self.case.wrong_answers += 1
                    if len(self.case.notes) < 5:
                        self.case.fail(f"wrong answer at version {hit['table_version']}: {hit['ids'][:3]}")

    def _run(self, n: int) -> None:
        rng = np.random.default_rng(n)
        with httpx.Client() as client:
            while not self.stop.is_set():
                pick = rng.choice(len(self.queries), QUERIES_PER_REQUEST, replace=False)
                self.ask(client, self.queries[pick])


# ---- galleries ------------------------------------------------------------------------------------
def vectors() -> np.ndarray:
    x = np.random.default_rng(0).normal(size=(ROWS + 500, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_template(where: Path, ann: str) -> Path:
    """A gallery of ROWS bare vectors added in BATCHES commits, its search cache written."""
    from compatret.engine.service import Service

    g = where / f"template-{ann}"
    x = vectors()[:ROWS]
    service = Service.create(g, dim=DIM, version_id="v1", ann=ann)
    for part in np.array_split(np.arange(ROWS), BATCHES):
        service.add_vectors(x[part], ids=[f"r{i}" for i in part])
    Service.open(g).query(vectors=x[:1])
    return g


def fresh(template: Path, where: Path, name: str) -> Path:
    g = where / name
    shutil.rmtree(g, ignore_errors=True)  # what a case that could not finish left
    shutil.copytree(template, g)
    return g


def ledger_check(case: Case, gallery: Path, expected: set[str]) -> None:
    """Rows lost (acknowledged, not in the table) or duplicated (an id held twice)."""
    ids = lance.dataset(str(gallery / "gallery.lance")).to_table(columns=["id"]).column("id").to_pylist()
    case.duplicated += len(ids) - len(set(ids))
    case.lost += len(expected - set(ids))
    extra = set(ids) - expected
    if extra:
        case.fail(f"{len(extra)} rows nobody acknowledged, e.g. {sorted(extra)[:3]}")
        case.lost += len(extra)  # a resurrected or phantom row is as wrong as a lost one


def cli_answers(case: Case, gallery: Path, truth: Truth, queries: np.ndarray, tmp: Path, exact: bool = True) -> None:
    """`compatret query --json` answers, checked like the server's."""
    np.save(tmp / "q.npy", queries)
    res = cli(case, "query", str(gallery), "--vectors", str(tmp / "q.npy"), "-k", str(K), "--json")
    if res.returncode:
        return
    for qi, line in zip(queries, res.stdout.strip().splitlines()):
        hit = json.loads(line)
        case.checked_answers += 1
        case.wrong_answers += truth.wrong(qi, hit["ids"], hit["scores"], hit["table_version"], exact)


# ---- faults ---------------------------------------------------------------------------------------

def frags(g: Path) -> list[Path]:
    return sorted((g / "search").glob("frag-*"))


DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated rows.npz": lambda g: [os.truncate(d / "rows.npz", 10) for d in frags(g)] and None,
    "emptied vec-0.npy": lambda g: [os.truncate(d / "vec-0.npy", 0) for d in frags(g)] and None,
    "bit-rot in vec-0.npy": lambda g: [bitrot(d / "vec-0.npy") for d in frags(g)] and None,
    "seal (digest.json) deleted": lambda g: [(d / "digest.json").unlink() for d in frags(g)] and None,
    "search/ folder deleted": lambda g: shutil.rmtree(g / "search"),
    "kernel file bit-rot": lambda g: [bitrot(f, 4096) for f in (g / "search").glob("kernel-*/index-*.faiss")] and None,
}


def run_clients(case: Case, server: Server, truth: Truth, queries: np.ndarray, seconds: float, **kw: Any) -> None:
    with Clients(case, server, truth, queries, **kw):
        time.sleep(seconds)


def damage_case(name: str, ann: str, when: str, templates: dict[str, Path], tmp: Path, queries: np.ndarray) -> Case:
    """A cache fault before a CLI query, before a server starts, or while a server answers."""
    case = Case(f"{name} ({ann}; {when})", "cli" if when == "before a CLI query" else "server", family=name)
    g = fresh(templates[ann], tmp, "g")
    truth = Truth(g)
    exact = ann == "flat"
    if when == "before a CLI query":
        DAMAGE[name](g)
        cli_answers(case, g, truth, queries, tmp, exact)
        verify = cli(case, "index", "verify", str(g), "--repair")
        if "ok: the cache matches" not in verify.stdout:
            case.fail(f"verify --repair: {verify.stdout[-200:]}")
        cli_answers(case, g, truth, queries, tmp, exact)
    elif when == "before the server starts":
        DAMAGE[name](g)
        server = Server(g)
        run_clients(case, server, truth, queries, 2.0, exact=exact)
        server.stop(case)
    else:
        server = Server(g)
        with Clients(case, server, truth, queries, exact=exact):
            time.sleep(1.0)
            DAMAGE[name](g)
            time.sleep(1.0)
            cli(case, "index", "verify", str(g), "--repair")
            time.sleep(1.0)
        server.stop(case)
    ledger_check(case, g, {f"r{i}" for i in range(ROWS)})
    shutil.rmtree(g)
    return case


def read_your_writes(templates: dict[str, Path], tmp: Path, queries: np.ndarray) -> list[Case]:
    """Deletes over HTTP and adds by the CLI while clients query a 2-worker server: no answer
    begun after a delete's acknowledgement holds the row; the CLI's rows are found at once."""
    out = []
    case = Case("read-your-writes: HTTP deletes, 2 workers, --refresh-seconds 30", "server")
    g = fresh(templates["flat"], tmp, "g")
    truth = Truth(g)
    server = Server(g, "--workers", "2", "--refresh-seconds", "30")
    deleted: set[str] = set()
    lock = threading.Lock()

    def gone() -> set[str]:
        with lock:
            return set(deleted)

    with Clients(case, server, truth, queries, forbidden=gone):
        for row in range(40):
            r = httpx.post(f"{server.url}/items/delete", json={"ids": [f"r{row}"]}, timeout=60)
            if r.status_code != 200:
                case.server_errors += r.status_code >= 500
                case.fail(f"delete: {r.status_code} {r.text[:200]}")
                continue
            with lock:
                deleted.add(f"r{row}")
            time.sleep(0.05)
    server.stop(case)
    ledger_check(case, g, {f"r{i}" for i in range(ROWS)} - deleted)
    out.append(case)
    shutil.rmtree(g)

    case = Case("read-your-writes: another process's add (CLI) seen by the next query", "both")
    g = fresh(templates["flat"], tmp, "g")
    truth = Truth(g)
    server = Server(g, "--workers", "2", "--refresh-seconds", "30")
    extra = vectors()[ROWS:]
    with Clients(case, server, truth, queries):
        for n in range(5):
            part = extra[n * 20 : (n + 1) * 20]
            np.save(tmp / "add.npy", part)
            np.save(tmp / "add_ids.npy", np.array([f"x{n}-{i}" for i in range(len(part))]))
            if cli(case, "index", "add", str(g), "--vectors", str(tmp / "add.npy"), "--ids", str(tmp / "add_ids.npy")).returncode:
                continue
            with httpx.Client() as client:
                for i, v in enumerate(part):
                    r = client.post(f"{server.url}/query", json={"vectors": [v.tolist()], "k": 1}, timeout=60)
                    case.checked_answers += 1
                    if r.status_code != 200 or r.json()["results"][0]["ids"] != [f"x{n}-{i}"]:
                        case.wrong_answers += 1
                        case.server_errors += r.status_code >= 500
    server.stop(case)
    ledger_check(case, g, {f"r{i}" for i in range(ROWS)} | {f"x{n}-{i}" for n in range(5) for i in range(20)})
    out.append(case)
    shutil.rmtree(g)
    return out


def maintenance_case(name: str, action: Callable[[Case, Path, Server], None], templates: dict[str, Path], tmp: Path,
                     queries: np.ndarray, expected: Callable[[Path], set[str]] | None = None, workers: int = 2) -> Case:
    """A maintenance command run beside a serving process with payload queries (0 5xx wanted)."""
    case = Case(name, "both")
    g = fresh(templates["flat"], tmp, "g")
    truth = Truth(g)
    truth.snapshot()
    server = Server(g, "--workers", str(workers))
    with Clients(case, server, truth, queries, payload=True):
        time.sleep(0.5)
        action(case, g, server)
        time.sleep(1.0)
    server.stop(case)
    ledger_check(case, g, expected(g) if expected else {f"r{i}" for i in range(ROWS)})
    shutil.rmtree(g)
    return case


def kill_during(case: Case, args: list[str], after: float) -> None:
    """Start a compatret command and SIGKILL it after `after` seconds (if still running)."""
    proc = subprocess.Popen([sys.executable, "-m", "compatret", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(after)
    proc.kill()
    _, err = proc.communicate()
    case.tracebacks += err.count("Traceback")


ROLLBACKS = (3, 5, 2, 7)  # table versions restored in turn; the ledger expects the rows of the last


def rollbacks(case: Case, g: Path, server: Server) -> None:
    for to in ROLLBACKS:
        cli(case, "index", "rollback", str(g), "--to", str(to))
        time.sleep(0.3)


def stale_lock(case: Case, g: Path, server: Server) -> None:
    """A dead writer's lock and holder files: the next write must go through."""
    (g / ".writer.lock").write_text("")
    (g / ".writer.json").write_text(json.dumps({"pid": 999999, "command": "index add", "since": "2026-01-01T00:00:00"}))
    r = httpx.post(f"{server.url}/items/delete", json={"ids": ["r5"]}, timeout=60)
    if r.status_code != 200:
        case.fail(f"delete after a stale lock: {r.status_code} {r.text[:200]}")


def kill_add_then_finish(case: Case, g: Path, server: Server, tmp: Path) -> None:
    extra = np.random.default_rng(9).normal(size=(60000, DIM)).astype(np.float32)
    np.save(tmp / "big.npy", extra)
    np.save(tmp / "big_ids.npy", np.array([f"k{i}" for i in range(len(extra))]))
    args = ["index", "add", str(g), "--vectors", str(tmp / "big.npy"), "--ids", str(tmp / "big_ids.npy"), "--batch-size", "5000"]
    kill_during(case, args, 4.0)
    cli(case, *args)


@dataclass
class Disk:
    """A small tmpfs, filled to the last byte when asked."""

    path: Path

    def __enter__(self) -> Disk:
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(self.path)], check=True)
        return self

    def fill(self) -> None:
        with open(self.path / "filler", "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 2**16)
                    f.flush()
            except OSError:
                pass

    def __exit__(self, *exc: Any) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


def one_line_no_space(case: Case, res: subprocess.CompletedProcess[str], what: str) -> None:
    if res.returncode != 2 or res.stderr.count("\n") != 1 or "no space left on device" not in res.stderr:
        case.fail(f"{what}: rc {res.returncode}, stderr {res.stderr[-300:]!r}")
        case.crashes += 1


def full_disk_cases(templates: dict[str, Path], tmp: Path, queries: np.ndarray) -> list[Case]:
    out = []
    big = np.random.default_rng(3).normal(size=(20000, DIM)).astype(np.float32)
    np.save(tmp / "big.npy", big)
    np.save(tmp / "big_ids.npy", np.array([f"b{i}" for i in range(len(big))]))
    for what in ("index add", "index delete", "CLI query with no cache", "server start with no cache"):
        case = Case(f"full disk: {what}", "server" if what.startswith("server") else "cli")
        try:
            full_disk(case, what, templates, tmp, queries)
        except Exception as exc:  # noqa: BLE001  counted, and the next full-disk case still runs
            case.crashes += 1
            case.fail(f"the case could not finish: {exc!r}"[:300])
        out.append(case)
    return out


def full_disk(case: Case, what: str, templates: dict[str, Path], tmp: Path, queries: np.ndarray) -> None:
    """One write or read on a gallery whose disk is full: one error line, nothing half-written, answers right."""
    with Disk(tmp / "disk") as disk:
        g = disk.path / "g"
        shutil.copytree(templates["flat"], g)
        truth = Truth(g)
        truth.snapshot()
        if what.endswith("no cache"):
            shutil.rmtree(g / "search")
        disk.fill()
        if what == "index add":
            res = subprocess.run([sys.executable, "-m", "compatret", "index", "add", str(g), "--vectors", str(tmp / "big.npy"),
                                  "--ids", str(tmp / "big_ids.npy")], capture_output=True, text=True)
            case.tracebacks += res.stderr.count("Traceback")
            one_line_no_space(case, res, what)
        elif what == "index delete":
            ids = [arg for i in range(2000) for arg in ("--id", f"r{i}")]
            res = subprocess.run([sys.executable, "-m", "compatret", "index", "delete", str(g), *ids], capture_output=True, text=True)
            case.tracebacks += res.stderr.count("Traceback")
            if res.returncode == 0:
                case.fail("delete on a full disk went through")  # possible when Lance needs no new file: then it must be right
            else:
                one_line_no_space(case, res, what)
        elif what == "CLI query with no cache":
            cli_answers(case, g, truth, queries, tmp)
        else:
            server = Server(g)
            health = httpx.get(f"{server.url}/health", timeout=30).json()
            if health.get("status") != "degraded" or not health.get("problems"):
                case.fail(f"/health on a full disk: {health}")
            run_clients(case, server, truth, queries, 2.0)
            server.stop(case)
        left = list(g.glob("**/.tmp-*"))
        if left:
            case.fail(f"temp folders left: {left[:2]}")
            case.crashes += 1
        deleted_ok = what == "index delete" and "delete on a full disk went through" in case.notes
        ledger_check(case, g, {f"r{i}" for i in range(2000 if deleted_ok else 0, ROWS)})
        if deleted_ok:
            case.notes.remove("delete on a full disk went through")
            case.notes.append("delete needed no new space and went through (checked against the ledger)")
        shutil.rmtree(g, ignore_errors=True)


def read_only_cache(templates: dict[str, Path], tmp: Path, queries: np.ndarray) -> Case:
    """The cache folder mounted read-only (a permissions fault root cannot get by chmod)."""
    case = Case("search cache read-only (bind mount), server and CLI", "both")
    g = fresh(templates["flat"], tmp, "g")
    shutil.rmtree(g / "search")
    (g / "search").mkdir()
    subprocess.run(["mount", "--bind", str(g / "search"), str(g / "search")], check=True)
    subprocess.run(["mount", "-o", "remount,ro,bind", str(g / "search")], check=True)
    try:
        truth = Truth(g)
        server = Server(g)
        if httpx.get(f"{server.url}/health", timeout=30).json().get("status") != "degraded":
            case.fail("/health did not say the cache cannot be written")
        run_clients(case, server, truth, queries, 2.0)
        server.stop(case)
        cli_answers(case, g, truth, queries, tmp)
    finally:
        subprocess.run(["umount", "-l", str(g / "search")], check=False)
    ledger_check(case, g, {f"r{i}" for i in range(ROWS)})
    shutil.rmtree(g)
    return case


def http_cases(templates: dict[str, Path], tmp: Path, queries: np.ndarray) -> list[Case]:
    """Small HTTP faults and a killed multi-worker parent."""
    g = fresh(templates["flat"], tmp, "g")
    truth = Truth(g)
    chunked = Case("chunked 20 MB body", "server")
    dup = Case("delete with a repeated id", "server")
    killed = Case("serve --workers 2: parent SIGKILLed, then restarted on its port", "server")
    server = Server(g, "--workers", "2")
    with Clients(chunked, server, truth, queries):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        conn.putrequest("POST", "/query")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        try:
            for _ in range(20):
                block = b" " * 2**20
                conn.send(f"{len(block):x}\r\n".encode() + block + b"\r\n")
            conn.send(b"0\r\n\r\n")
        except OSError:
            pass  # the server may answer and close before the body ends
        status = conn.getresponse().status
        if status != 413:
            chunked.fail(f"chunked 20 MB body got {status}, not 413")
            chunked.server_errors += status >= 500
    r = httpx.post(f"{server.url}/items/delete", json={"ids": ["r1", "r1"]}, timeout=60)
    if r.status_code != 200 or r.json() != {"deleted": 1}:
        dup.fail(f"delete r1 twice: {r.status_code} {r.text[:200]}")
        dup.wrong_answers += 1
    dup.checked_answers += 1
    ledger_check(dup, g, {f"r{i}" for i in range(ROWS)} - {"r1"})
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait()
    time.sleep(1.0)
    try:
        again = Server.__new__(Server)
        again.port, again.url = server.port, server.url
        again.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        again.proc = subprocess.Popen([sys.executable, "-m", "compatret", "serve", str(g), "--port", str(server.port)],
                                      stdout=subprocess.DEVNULL, stderr=again.log, start_new_session=True)
        deadline = time.time() + 60
        while time.time() < deadline and again.proc.poll() is None:
            try:
                httpx.get(f"{again.url}/health", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        run_clients(killed, again, truth, queries, 1.5)
        again.stop(killed)
    finally:
        try:
            os.killpg(server.proc.pid, signal.SIGKILL)  # any worker the dead parent left
        except ProcessLookupError:
            pass
    shutil.rmtree(g)
    return [chunked, dup, killed]


def attempt(cases: list[Case], name: str, target: str, run: Callable[[], Case | list[Case]]) -> None:
    """Run one case (or group); a case that cannot even finish (a server that never answers) counts as a crash."""
    try:
        out = run()
    except Exception as exc:  # noqa: BLE001  the benchmark reports every fault, whatever it raises
        out = Case(name, target, crashes=1)
        out.fail(f"the case could not finish: {exc!r}"[:300])
    for case in out if isinstance(out, list) else [out]:
        cases.append(case)
        print(f"{case.name}: {case.checked_answers} answers, notes {case.notes[:1]}", flush=True)


def main() -> None:
    queries = vectors()[:ROWS] + np.random.default_rng(7).normal(scale=0.05, size=(ROWS, DIM)).astype(np.float32)
    queries = queries[:400] / np.linalg.norm(queries[:400], axis=1, keepdims=True)  # compatret scores unit queries
    tmp = Path(tempfile.mkdtemp(prefix="compatret-faults-"))
    started = time.time()
    cases: list[Case] = []
    try:
        t = {ann: make_template(tmp, ann) for ann in ("flat", "ivfpq", "ivf")}
        for name in DAMAGE:
            kinds = ["ivf"] if name.startswith("kernel") else ["flat"]
            if name in ("bit-rot in vec-0.npy", "emptied vec-0.npy"):
                kinds.append("ivfpq")
            for ann in kinds:
                for when in ("before a CLI query", "before the server starts", "while a server answers"):
                    attempt(cases, f"{name} ({ann}; {when})", "server",
                            lambda name=name, ann=ann, when=when: damage_case(name, ann, when, t, tmp, queries))
        attempt(cases, "read-your-writes", "server", lambda: read_your_writes(t, tmp, queries))
        prune = "prune --older-than-days 0 beside a server (payload queries)"
        attempt(cases, prune, "both", lambda: maintenance_case(
            prune, lambda c, g, s: cli(c, "index", "prune", str(g), "--older-than-days", "0") and None, t, tmp, queries))
        compaction = "compaction (prune --older-than-days 1000) beside a server"
        attempt(cases, compaction, "both", lambda: maintenance_case(
            compaction, lambda c, g, s: cli(c, "index", "prune", str(g), "--older-than-days", "1000") and None, t, tmp, queries))
        attempt(cases, "rollbacks beside a server", "both", lambda: maintenance_case(
            "rollbacks beside a server", rollbacks, t, tmp, queries, expected=lambda g: set(Truth(g).rows(ROLLBACKS[-1])[0].tolist())))
        killed_prune = "kill -9 during prune, then prune again, beside a server"
        attempt(cases, killed_prune, "both", lambda: maintenance_case(
            killed_prune, lambda c, g, s: (kill_during(c, ["index", "prune", str(g), "--older-than-days", "0"], 2.5),
                                           cli(c, "index", "prune", str(g), "--older-than-days", "0")) and None, t, tmp, queries))
        attempt(cases, "stale writer lock of a dead process", "both", lambda: maintenance_case(
            "stale writer lock of a dead process", stale_lock, t, tmp, queries, expected=lambda g: {f"r{i}" for i in range(ROWS)} - {"r5"}))
        killed_add = "kill -9 during index add, then the same add, beside a server"
        attempt(cases, killed_add, "both", lambda: maintenance_case(
            killed_add, lambda c, g, s: kill_add_then_finish(c, g, s, tmp), t, tmp, queries,
            expected=lambda g: {f"r{i}" for i in range(ROWS)} | {f"k{i}" for i in range(60000)}))
        attempt(cases, "full disk", "both", lambda: full_disk_cases(t, tmp, queries))
        attempt(cases, "search cache read-only (bind mount), server and CLI", "both", lambda: read_only_cache(t, tmp, queries))
        attempt(cases, "HTTP faults", "server", lambda: http_cases(t, tmp, queries))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write(cases, time.time() - started)


TOTALS = ("checked_answers", "wrong_answers", "server_errors", "crashes", "tracebacks", "lost", "duplicated")


def write(cases: list[Case], seconds: float) -> None:
    totals = {t: sum(getattr(c, t) for c in cases) for t in TOTALS}
    result = {"command": "python eval/faults/run.py", "seconds": round(seconds, 1), "cases": len(cases), **totals,
              "bar": "all counts zero, >= 30 cases, >= 10,000 checked answers",
              "passed": len(cases) >= 30 and totals["checked_answers"] >= 10_000 and not any(totals[t] for t in TOTALS[1:])
              and not any(c.notes for c in cases),
              "detail": [asdict(c) for c in cases]}
    (HERE / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"`python eval/faults/run.py` ({result['seconds']:.0f} s, 2 cores): {len(cases)} fault cases, "
             f"{totals['checked_answers']:,} answers checked against brute force over the table version each names.", "",
             "| fault | against | answers checked | wrong | 5xx | crashes | tracebacks | lost | duplicated | notes |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in cases:
        lines.append(f"| {c.name} | {c.target} | {c.checked_answers:,} | {c.wrong_answers} | {c.server_errors} | {c.crashes} | "
                     f"{c.tracebacks} | {c.lost} | {c.duplicated} | {'; '.join(c.notes)[:300].replace('|', '/')} |")
    lines.append(f"| **total** | | **{totals['checked_answers']:,}** | **{totals['wrong_answers']}** | **{totals['server_errors']}** | "
                 f"**{totals['crashes']}** | **{totals['tracebacks']}** | **{totals['lost']}** | **{totals['duplicated']}** | |")
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    (HERE / "summary.md").write_text("\n".join(summary(cases, result)) + "\n")
    print("\n".join(lines))


def summary(cases: list[Case], result: dict[str, Any]) -> list[str]:
    """The README's table: cases of one fault (CLI, server start, live server; flat/ivf/ivfpq) on one row."""
    families: dict[str, list[Case]] = {}
    for c in cases:
        families.setdefault(c.family or c.name, []).append(c)
    lines = ["| fault | cases | answers checked | wrong | 5xx | crashes | tracebacks | lost | duplicated |", "|---|---|---|---|---|---|---|---|---|"]
    for name, group in families.items():
        lines.append(f"| {name} | {len(group)} | {sum(c.checked_answers for c in group):,} | "
                     + " | ".join(str(sum(getattr(c, t) for c in group)) for t in TOTALS[1:]) + " |")
    lines.append(f"| **all** | **{result['cases']}** | **{result['checked_answers']:,}** | "
                 + " | ".join(f"**{result[t]}**" for t in TOTALS[1:]) + " |")
    return lines


if __name__ == "__main__":
    main()
