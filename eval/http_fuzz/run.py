"""Fuzz the HTTP API of a real `compatret serve` with schemathesis: 5xx, schema breaks, unauthorized writes.

    python eval/http_fuzz/run.py                  # default scale (bars: >= 2,000 write-key, >= 500 keyless requests)
    python eval/http_fuzz/run.py --quick          # smoke run, ~10x fewer requests
    python eval/http_fuzz/run.py --max-examples 100 --seed 7 --out /tmp/fz

What runs:
1. Two tiny real image models on the bundled digits (v1, BCT-compatible v2) plus v3 (BCT on v2)
   in one models folder (runs/http_fuzz/models, trained once in seconds and then reused;
   --retrain), a fresh gallery of 300 digits served by v1 (runs/http_fuzz/work, wiped), a key
   file with one write and one read key, then
   `python -m compatret serve GALLERY --api-key-file KEYS --models-dir MODELS` as a subprocess
   on a free loopback port.
2. Auth probes (plain httpx): each write endpoint with a body that a write key gets accepted,
   sent without a key, with the read key, an unknown key, a mangled write key and other wrong
   `Authorization` forms; then the same body with the write key (the control: it must be
   accepted, else the probe proves nothing). The last control upgrades the gallery to v2.
3. Three `st run` runs of schemathesis against the live /openapi.json, all phases (examples,
   coverage, fuzzing, stateful; the schema has no examples and no links, so the examples and
   stateful phases skip), all checks, `--mode all` (schema-valid and schema-breaking data),
   `--continue-on-failure` (a failing check does not end an operation's fuzzing early): without
   any key (no Authorization header at all), with the read key, with the write key. While the keyless
   and read-key runs go, the table must not change (no write may land): its version and row
   count are compared before and after.
   A config file adds fuzz dictionaries so that generated requests also reach the success
   paths: real digit images and adversarial images (other formats, modes, sizes, truncated and
   corrupted files, a decompression bomb header) for `image_base64` / `images_base64`, the
   gallery's row ids for `ids`, and model names (v1, v2, v3, the text aliases) for `model`;
   `hooks.py` reshapes two thirds of the schema-valid bodies of POST /query and POST /items to
   rules the schema cannot state (exactly one query kind, vectors of the gallery's dimension,
   an image in every item).
4. Every request schemathesis sent is read back from its NDJSON event report (one interaction
   per request, including the extra requests its checks send, with the result of every check
   on that response; plus the few requests of its probing phase; not the schema download),
   classified by the `Authorization` header actually sent (write key, read key, none, other:
   reports are written unsanitized to runs/, keys are redacted in results.json) and counted.

Bars: server_errors (5xx responses) = 0, schema_violations (responses failing
status_code_conformance, response_schema_conformance, content_type_conformance or
response_headers_conformance against the documented responses) = 0, unauthorized_writes_accepted
(a 2xx from POST /items, /items/delete, /upgrade or /backfill to a request without the write
key, fuzzed or probed) = 0, the server alive at the end and no traceback in its log.
Schemathesis' other checks (e.g. positive_data_acceptance: a schema-valid body answered 422)
are reported as findings, not bars.

Writes results.json and results.md next to this file (or under --out).
"""

from __future__ import annotations

import argparse
import base64
import collections
import io
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from compatret.testing.ports import free_port  # noqa: E402

os.environ.setdefault("LANCEDB_LOG", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ST = Path(sys.executable).with_name("st") if Path(sys.executable).with_name("st").exists() else Path(shutil.which("st") or "st")
DIM = 16
GALLERY_ROWS = 300
WRITE_ENDPOINTS = {("POST", "/items"), ("POST", "/items/delete"), ("POST", "/upgrade"), ("POST", "/backfill")}
READ_ENDPOINTS = {("POST", "/query"), ("GET", "/backfill")}
SCHEMA_CHECKS = ("status_code_conformance", "response_schema_conformance", "content_type_conformance", "response_headers_conformance")
# per key kind: max examples per operation (fuzzing phase) at default scale; --quick divides by 10
DEFAULT_EXAMPLES = {"none": 150, "read": 100, "write": 600}


def log(msg: str) -> None:
    print(f"[http_fuzz {time.strftime('%H:%M:%S')}] {msg}", flush=True)



# ---------------------------------------------------------------- models, gallery, images


def build_models(models: Path) -> None:
    """v1, v2 (BCT on v1) and v3 (BCT on v2) in one folder: real, tiny, trained in seconds."""
    from compatret.data.images import load_digits_splits
    from compatret.train.image.digits import digit_model_pair
    from compatret.encoders.image import ImageModelSpec
    from compatret.train.image.methods import MethodSpec, fit_image_version
    from compatret.train.image.trainer import TrainConfig

    digit_model_pair(models, embed_dim=DIM, epochs=3)
    if not (models / "v3" / "compatret_version.json").exists():
        train, _ = load_digits_splits(test_fraction=0.3)
        spec = ImageModelSpec(width=0.125, in_channels=1, image_size=8, embed_dim=DIM, mean=(0.3,), std=(0.4,))
        cfg = TrainConfig(epochs=3, batch_size=64, lr=0.1, crop_padding=1, flip=False, progress=False, seed=1)
        fit_image_version("v3", MethodSpec("bct", num_classes=10, align_weight=1.0), train, spec, cfg, models / "v3", parent_dir=models / "v2")


def _png(arr: np.ndarray, **save: Any) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", **save)
    return buf.getvalue()


def image_corpus(pixels: list[np.ndarray], seed: int) -> dict[str, bytes]:
    """Real digits and adversarial images: other formats and modes, odd sizes, truncated and corrupted files."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out: dict[str, bytes] = {f"digit-{i}": _png(p) for i, p in enumerate(pixels[:16])}
    base = pixels[0]
    big = np.kron(base, np.ones((4, 4), dtype=np.uint8))  # 32x32
    variants: dict[str, tuple[Image.Image, str, dict[str, Any]]] = {
        "png-rgb": (Image.fromarray(np.stack([big] * 3, -1)), "PNG", {}),
        "png-rgba": (Image.fromarray(np.stack([big] * 4, -1)), "PNG", {}),
        "png-palette": (Image.fromarray(big).convert("P"), "PNG", {}),
        "png-1bit": (Image.fromarray(big).convert("1"), "PNG", {}),
        "png-16bit": (Image.fromarray(big.astype(np.uint16) * 257), "PNG", {}),
        "png-1x1": (Image.fromarray(np.zeros((1, 1), np.uint8)), "PNG", {}),
        "png-1x500": (Image.fromarray(np.zeros((1, 500), np.uint8)), "PNG", {}),
        "png-1024": (Image.fromarray(np.kron(base, np.ones((128, 128), dtype=np.uint8))), "PNG", {}),
        "jpeg": (Image.fromarray(big), "JPEG", {}),
        "jpeg-cmyk": (Image.fromarray(np.stack([big] * 3, -1)).convert("CMYK"), "JPEG", {}),
        "gif": (Image.fromarray(big), "GIF", {}),
        "bmp": (Image.fromarray(big), "BMP", {}),
        "tiff": (Image.fromarray(big), "TIFF", {}),
        "tiff-float": (Image.fromarray(big.astype(np.float32) / 255), "TIFF", {}),
        "webp": (Image.fromarray(big), "WEBP", {}),
        "ico": (Image.fromarray(big), "ICO", {}),
        "ppm": (Image.fromarray(big), "PPM", {}),
        "tga": (Image.fromarray(big), "TGA", {}),
        "pcx": (Image.fromarray(big), "PCX", {}),
    }
    for name, (img, fmt, kw) in variants.items():
        try:
            buf = io.BytesIO()
            img.save(buf, format=fmt, **kw)
        except (OSError, KeyError, ValueError):
            continue
        out[name] = buf.getvalue()
    frames = [Image.fromarray(big), Image.fromarray(255 - big)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    out["gif-animated"] = buf.getvalue()
    for name in list(out):
        if name.startswith("digit-") and name != "digit-0":
            continue
        data = out[name]
        out[f"{name}-truncated"] = data[: max(8, len(data) // 2)]
        bad = bytearray(data)
        for pos in rng.integers(min(16, len(bad) - 1), len(bad), size=8):
            bad[pos] ^= 0xFF
        out[f"{name}-corrupted"] = bytes(bad)
    # a PNG whose header claims 100,000 x 100,000 pixels (a decompression bomb), with one tiny IDAT
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    ihdr = (100_000).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    out["png-bomb-header"] = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")
    out["not-an-image"] = b"hello, this is not an image"
    out["svg"] = b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"><rect width="8" height="8"/></svg>'
    return out


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def build_gallery(work: Path, models: Path, seed: int) -> dict[str, Any]:
    from compatret.data.images import load_digits_splits
    from compatret.engine.service import Service

    t = time.time()
    build_models(models)
    log(f"models v1, v2, v3 ready in {models} ({time.time() - t:.1f} s; trained once, then reused)")
    train, test = load_digits_splits(test_fraction=0.3)
    s = Service.create(work / "gallery", model=str(models / "v1"))
    items = [{"id": f"d{i}", "image": img, "metadata": {"label": int(y), "split": "test"}}
             for i, (img, y) in enumerate(zip(test.images[:GALLERY_ROWS], test.labels[:GALLERY_ROWS]))]
    s.add_items(items, progress=False)
    from sklearn.datasets import load_digits

    pixels = list((load_digits().images / 16.0 * 255).round().astype(np.uint8)[:32])
    log(f"gallery of {len(items)} digits served by v1 in {work / 'gallery'}")
    return {"models": models, "gallery": work / "gallery", "images": image_corpus(pixels, seed)}


# ---------------------------------------------------------------- server


class Server:
    def __init__(self, work: Path, gallery: Path, models: Path, keyfile: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = work / "server.log"
        self.cmd = [sys.executable, "-m", "compatret", "serve", str(gallery), "--port", str(self.port),
                    "--api-key-file", str(keyfile), "--models-dir", str(models), "--refresh-seconds", "0.2"]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=work,
                                     env={**os.environ, "LANCEDB_LOG": "error", "HF_HUB_OFFLINE": "1"})
        import httpx

        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"compatret serve exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise SystemExit(f"compatret serve did not answer /health in 120 s:\n{self.log_path.read_text()}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def wait_idle(client: Any, timeout: float = 120) -> dict[str, Any]:
    """Wait until no backfill runs; return /health."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not client.get("/backfill").json()["running"]:
            break
        time.sleep(0.2)
    return client.get("/health").json()


# ---------------------------------------------------------------- auth probes


def auth_probes(url: str, keys: dict[str, str], images: dict[str, bytes]) -> dict[str, Any]:
    """Valid write requests with every wrong kind of credentials, then with the write key (control)."""
    import httpx

    write, read = keys["write"], keys["read"]
    wrong = {
        "none": {},
        "read": {"Authorization": f"Bearer {read}"},
        "unknown key": {"Authorization": f"Bearer {secrets.token_urlsafe(24)}"},
        "write key minus last char": {"Authorization": f"Bearer {write[:-1]}"},
        "write key plus a char": {"Authorization": f"Bearer {write}x"},
        "write key uppercased": {"Authorization": f"Bearer {write.upper()}"},
        "bearer scheme without a key": {"Authorization": "Bearer"},
        "write key without scheme": {"Authorization": write},
        "basic auth with the write key": {"Authorization": "Basic " + b64(f"write:{write}".encode())},
        "token scheme": {"Authorization": f"Token {write}"},
        "write key in X-API-Key": {"X-API-Key": write},
        "write key in query string": {"__query__": write},
        "read key then write key": {"Authorization": f"Bearer {read} {write}"},
    }
    png = b64(images["digit-1"])
    requests = [  # (method, path, body, expected control status); upgrade last: its control changes the serving model
        ("POST", "/items", {"items": [{"id": "probe-1", "image_base64": png, "metadata": {"probe": True}}]}, 200),
        ("POST", "/items/delete", {"ids": ["probe-1"]}, 200),
        ("POST", "/backfill", {"limit": 0, "batch_size": 8}, 202),
        ("POST", "/upgrade", {"model": "v2"}, 200),
    ]
    c = httpx.Client(base_url=url, timeout=60)
    admin = {"Authorization": f"Bearer {write}"}
    rows: list[dict[str, Any]] = []
    sent = collections.Counter()
    accepted_unauthorized: list[dict[str, Any]] = []
    for method, path, body, control_status in requests:
        before = wait_idle(httpx.Client(base_url=url, timeout=60, headers=admin))
        for label, headers in wrong.items():
            params = {}
            if "__query__" in headers:
                params = {"api_key": headers["__query__"], "key": headers["__query__"], "access_token": headers["__query__"]}
                headers = {}
            r = c.request(method, path, json=body, headers=headers, params=params)
            kind = "none" if "Authorization" not in headers else "read" if label == "read" else "other"
            sent[kind] += 1
            row = {"endpoint": f"{method} {path}", "credentials": label, "key_kind": kind, "status": r.status_code}
            rows.append(row)
            if 200 <= r.status_code < 300:
                accepted_unauthorized.append({**row, "response": r.text[:500]})
        after = wait_idle(httpx.Client(base_url=url, timeout=60, headers=admin))
        unchanged = (before["table_version"], before["rows"], before["serving"]) == (after["table_version"], after["rows"], after["serving"])
        r = c.request(method, path, json=body, headers=admin)
        sent["write"] += 1
        rows.append({"endpoint": f"{method} {path}", "credentials": "write key (control)", "key_kind": "write", "status": r.status_code,
                     "gallery_unchanged_by_the_refused_requests": unchanged})
        log(f"auth probes {method} {path}: {len(wrong)} wrong credentials -> "
            f"{sorted(collections.Counter(x['status'] for x in rows if x['endpoint'] == f'{method} {path}' and x['key_kind'] != 'write').items())}, "
            f"control with the write key -> {r.status_code}, gallery unchanged: {unchanged}")
        if r.status_code != control_status:
            raise SystemExit(f"auth probe control {method} {path} with the write key answered {r.status_code} "
                             f"(expected {control_status}): {r.text[:500]}")
    wait_idle(httpx.Client(base_url=url, timeout=60, headers=admin))
    return {"requests": sum(sent.values()), "by_key_kind": dict(sent), "rows": rows,
            "unauthorized_writes_accepted": len(accepted_unauthorized), "accepted": accepted_unauthorized,
            "gallery_changed_by_refused_requests": sum(not x.get("gallery_unchanged_by_the_refused_requests", True) for x in rows)}


def scale_probes(url: str, key: str, seed: int) -> dict[str, Any]:
    """One query direction at several scales: cosine ranking must not depend on the scale (or the vector be refused)."""
    import httpx

    direction = np.random.default_rng(seed).normal(size=DIM)
    c = httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {key}"})
    answers: dict[str, Any] = {}
    for scale in (1.0, 1e-30, 1e-20, 1e-10, 1e10, 1e20, 1e30):
        r = c.post("/query", json={"vectors": [(direction * scale).tolist()], "k": 5})
        answers[f"{scale:g}"] = {"status": r.status_code, **(r.json()["results"][0] if r.status_code == 200 else {"detail": r.json().get("detail")})}
    base = answers["1"]

    def same(a: dict[str, Any]) -> bool:
        if not np.allclose(a["scores"], base["scores"], rtol=1e-4, atol=1e-6):
            return False
        # ids may differ only among rows tied in score (duplicate images: identical vectors)
        return all(x == y or sum(abs(t - base["scores"][i]) <= 1e-6 for t in base["scores"]) > 1
                   for i, (x, y) in enumerate(zip(a["ids"], base["ids"])))

    mismatches = {s: a for s, a in answers.items() if a["status"] == 200 and not same(a)}
    return {"requests": len(answers), "direction_seed": seed, "answers": answers, "mismatches": len(mismatches),
            "mismatched_scales": sorted(mismatches, key=float)}


# ---------------------------------------------------------------- schemathesis


def toml_list(values: list[Any]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def fuzz_images(images: dict[str, bytes]) -> list[str]:
    """The image dictionary as base64: every corpus file once, the real digits three times (half the draws decode)."""
    digits = [b64(v) for k, v in images.items() if k.startswith("digit-") and k.count("-") == 1]
    return digits * 3 + [b64(v) for k, v in images.items() if not (k.startswith("digit-") and k.count("-") == 1)]


def write_config(path: Path, images: list[str]) -> None:
    row_ids = [f"d{i}" for i in range(0, GALLERY_ROWS, 5)] + ["probe-1", "d-missing", "D1", "d1 "]
    new_ids = [f"fuzz-{i}" for i in range(40)] + ["d0", "d7", "probe-1"]
    models = ["v1", "v2", "v3", "minilm-l6", "minilm-l3", "v1.", "V2", "models", "gallery"]
    path.write_text(f"""# written by eval/http_fuzz/run.py
hooks = {json.dumps(str(HERE / 'hooks.py'))}

[dictionaries.images]
values = {toml_list(images)}

[dictionaries.row_ids]
values = {toml_list(row_ids)}

[dictionaries.new_ids]
values = {toml_list(new_ids)}

[dictionaries.models]
values = {toml_list(models)}

[parameters]
"body.images_base64[*]" = {{ dictionary = "images", probability = 0.5 }}
"body.items[*].image_base64" = {{ dictionary = "images", probability = 0.7 }}
"body.items[*].id" = {{ dictionary = "new_ids", probability = 0.3 }}
"body.ids[*]" = {{ dictionary = "row_ids", probability = 0.5 }}
"body.model" = {{ dictionary = "models", probability = 0.5 }}

[checks.positive_data_acceptance]
# 400 is the documented "refused: the detail says why" (unknown model, ids not in the gallery,
# an undecodable image): schema-valid but refused on the gallery's state. A 422 (validation)
# on a schema-valid body still counts: the schema is looser than the validation.
expected-statuses = ["2xx", "400", "401", "403", "409"]
""")


def run_schemathesis(kind: str, url: str, key: str | None, examples: int, seed: int, work: Path, config: Path,
                     workers: int, timeout: float) -> dict[str, Any]:
    """One `st run`; returns the command (key redacted), exit code, wall time and the NDJSON path."""
    report = work / f"st-{kind}.ndjson"
    cmd = [str(ST), "--config-file", str(config), "run", f"{url}/openapi.json",
           "--checks", "all", "--mode", "all", "--phases", "examples,coverage,fuzzing,stateful",
           "--max-examples", str(examples), "--seed", str(seed), "--workers", str(workers), "--continue-on-failure",
           "--generation-database", "none", "--request-timeout", "60", "--output-sanitize", "false", "--no-color",
           "--report", "ndjson", "--report-ndjson-path", str(report), "--suppress-health-check", "all"]
    if key is not None:
        cmd += ["--header", f"Authorization: Bearer {key}"]
    else:
        cmd += ["--generation-with-security-parameters", "false"]  # no Authorization header at all
    shown = [c if key is None or key not in c else c.replace(key, f"<{kind} key>") for c in cmd]
    log(f"st run ({kind}): {' '.join(shown[1:])}")
    env = {**os.environ, "HTTP_FUZZ_DIM": str(DIM), "HTTP_FUZZ_IMAGES": str(work / "images.json"), "NO_COLOR": "1", "COLUMNS": "120"}
    t = time.time()
    out_path = work / f"st-{kind}.out"
    with open(out_path, "w") as out:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=work, env=env)
        assert proc.stdout is not None
        last = 0.0
        for line in proc.stdout:
            out.write(line)
            s = line.rstrip()
            # progress: schemathesis' per-phase lines; a heartbeat of the tail every few seconds otherwise
            if any(w in s for w in ("Phase", "phase", "API Operations", "Test cases", "generated", "Seed:", "failures in", "passed in", "error")) \
                    or time.time() - last > 10:
                if s.strip():
                    print(f"    st[{kind}] {s[:160]}", flush=True)
                    last = time.time()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
    wall = time.time() - t
    log(f"st run ({kind}) exited {rc} after {wall:.0f} s")
    return {"kind": kind, "command": " ".join(shown[1:]), "exit_code": rc, "seconds": round(wall, 1),
            "report": report, "stdout": out_path, "max_examples": examples}


def _decode(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, dict):
        if "$base64" in content:
            return base64.b64decode(content["$base64"]).decode("utf-8", "replace")
        if "string" in content:
            return content["string"]
    return str(content)


def key_kind(headers: dict[str, Any], keys: dict[str, str]) -> str:
    values = [v for name, vs in (headers or {}).items() if name.lower() == "authorization" for v in (vs if isinstance(vs, list) else [vs])]
    if not values:
        return "none"
    if values == [f"Bearer {keys['write']}"]:
        return "write"
    if values == [f"Bearer {keys['read']}"]:
        return "read"
    return "other"


def redact(text: str, keys: dict[str, str]) -> str:
    for name, key in keys.items():
        text = text.replace(key, f"<{name} key>")
    return text


def analyse(report: Path, keys: dict[str, str], run_kind: str) -> dict[str, Any]:
    """Per-request counts and check results from one schemathesis NDJSON report."""
    requests = 0
    by_kind = collections.Counter()
    by_endpoint: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    by_status = collections.Counter()
    by_phase = collections.Counter()
    checks: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    failures: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    server_errors: list[dict[str, Any]] = []
    unauthorized_writes: list[dict[str, Any]] = []
    unauthorized_reads: list[dict[str, Any]] = []
    schema_violations = 0
    schema_by_check = collections.Counter()
    no_response = 0
    scenario_errors: list[str] = []
    valid_write_2xx = collections.Counter()
    status_by_endpoint: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    auth_not_first: collections.Counter = collections.Counter()
    auth_not_first_examples: list[dict[str, Any]] = []
    phases: dict[str, str] = {}
    for line in report.read_text().splitlines():
        event = json.loads(line)
        name, body = next(iter(event.items()))
        if name == "PhaseFinished":
            phase = body.get("phase") or {}
            phases[phase.get("name", "?")] = body.get("status", "?") + (f" ({phase['skip_reason']})" if phase.get("skip_reason") else "")
            # schemathesis' probing phase sends a couple of requests of its own (e.g. a NUL byte in a header)
            for probe in (body.get("payload") or {}).get("probes", []) if phase.get("name") == "probing" else []:
                req = probe.get("request") or {}
                if not req:
                    continue
                requests += 1
                by_phase["probing"] += 1
                kind = key_kind({k: [v] for k, v in (req.get("headers") or {}).items()}, keys)
                by_kind[kind] += 1
                status = re.search(r"\[(\d+)\]", str(probe.get("response")))
                code = int(status.group(1)) if status else None
                by_status[str(code)] += 1
                path = "/" + req.get("url", "").split("://", 1)[-1].split("/", 1)[-1].split("?", 1)[0]
                by_endpoint[f"{req.get('method')} {path} (probe)"][kind] += 1
                if code is None:
                    no_response += 1
                elif code >= 500:
                    server_errors.append({"phase": "probing", "probe": probe.get("probe"), "method": req.get("method"), "path": path, "status": code})
        if name == "NonFatalError" or (name == "ScenarioFinished" and body.get("status") == "error"):
            scenario_errors.append(redact(json.dumps(body)[:2000], keys))
        if name == "FatalError":
            scenario_errors.append(redact(json.dumps(body)[:2000], keys))
        if name != "ScenarioFinished":
            continue
        recorder = body.get("recorder") or {}
        cases = recorder.get("cases") or {}
        results = recorder.get("checks") or {}
        for case_id, interaction in (recorder.get("interactions") or {}).items():
            requests += 1
            req, resp = interaction.get("request") or {}, interaction.get("response")
            method = req.get("method", "?")
            path = "/" + req.get("uri", "").split("://", 1)[-1].split("/", 1)[-1].split("?", 1)[0]
            endpoint = f"{method} {path}"
            kind = key_kind(req.get("headers") or {}, keys)
            by_kind[kind] += 1
            status = resp.get("status_code") if resp else None
            by_endpoint[endpoint][kind] += 1
            by_status[str(status)] += 1
            status_by_endpoint[endpoint][str(status)] += 1
            case = (cases.get(case_id) or {}).get("value") or {}
            phase = ((case.get("meta") or {}).get("phase") or {}).get("name", "check-generated")
            by_phase[phase] += 1
            if resp is None:
                no_response += 1

            def example() -> dict[str, Any]:
                hdrs = {k: v for k, v in (req.get("headers") or {}).items() if k.lower() not in ("user-agent", "accept-encoding", "accept", "connection", "x-schemathesis-testcaseid")}
                return {"case_id": case_id, "phase": phase, "method": method, "path": path, "key_kind": kind,
                        "request_headers": json.loads(redact(json.dumps(hdrs), keys)),
                        "request_body": redact(_decode(req.get("body"))[:3000], keys),
                        "status": status, "response_body": redact(_decode((resp or {}).get("content"))[:2000], keys),
                        "response_headers": (resp or {}).get("headers")}

            if status is not None and status >= 500:
                server_errors.append(example())
            ok = status is not None and 200 <= status < 300
            if ok and (method, path) in WRITE_ENDPOINTS:
                if kind == "write":
                    valid_write_2xx[endpoint] += 1
                else:
                    unauthorized_writes.append(example())
            if ok and (method, path) in READ_ENDPOINTS and kind not in ("read", "write"):
                unauthorized_reads.append(example())
            # refused for the key, but with which status? 401 (no/unknown key) or 403 (read key on a write) expected
            needs = "write" if (method, path) in WRITE_ENDPOINTS else "read" if (method, path) in READ_ENDPOINTS else None
            if needs and status is not None and (kind in ("none", "other") or (kind == "read" and needs == "write")):
                expected = 401 if kind in ("none", "other") else 403
                if status != expected and not ok:
                    auth_not_first[f"{endpoint} [{kind} key] -> {status}"] += 1
                    if len(auth_not_first_examples) < 10:
                        auth_not_first_examples.append(example())
            failed_schema = False
            for check in results.get(case_id) or []:
                cname, cstatus = check.get("name"), check.get("status")
                checks[cname][cstatus] += 1
                if cstatus == "failure":
                    info = ((check.get("failure_info") or {}).get("failure") or {})
                    if cname in SCHEMA_CHECKS:
                        failed_schema = True
                        schema_by_check[cname] += 1
                    if len(failures[cname]) < 5:
                        failures[cname].append({"title": info.get("title"), "message": redact(str(info.get("message", ""))[:1500], keys), **example()})
            schema_violations += failed_schema
    return {"run": run_kind, "requests": requests, "by_key_kind": dict(by_kind),
            "by_endpoint": {k: dict(v) for k, v in sorted(by_endpoint.items())}, "by_status": dict(sorted(by_status.items())),
            "by_phase": dict(by_phase), "phases": phases,
            "status_by_endpoint": {k: dict(sorted(v.items())) for k, v in sorted(status_by_endpoint.items())}, "checks": {k: dict(v) for k, v in sorted(checks.items())},
            "server_errors": len(server_errors), "server_error_examples": server_errors[:20],
            "schema_violations": schema_violations, "schema_violations_by_check": dict(schema_by_check),
            "unauthorized_writes_accepted": len(unauthorized_writes), "unauthorized_write_examples": unauthorized_writes[:20],
            "unauthorized_reads_accepted": len(unauthorized_reads), "unauthorized_read_examples": unauthorized_reads[:20],
            "writes_accepted_with_write_key": dict(valid_write_2xx), "no_response": no_response,
            "refused_for_the_key_but_not_401_403": dict(sorted(auth_not_first.items())), "refused_for_the_key_but_not_401_403_examples": auth_not_first_examples,
            "scenario_errors": scenario_errors[:20], "failure_examples": dict(failures)}


# ---------------------------------------------------------------- report


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {"by_key_kind": collections.Counter(), "by_status": collections.Counter(), "by_phase": collections.Counter()}
    endpoints: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    checks: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    statuses: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for p in parts:
        for e, c in p["status_by_endpoint"].items():
            statuses[e].update(c)
        for f in ("by_key_kind", "by_status", "by_phase"):
            total[f].update(p[f])
        for e, c in p["by_endpoint"].items():
            endpoints[e].update(c)
        for name, c in p["checks"].items():
            checks[name].update(c)
    return {"by_key_kind": dict(total["by_key_kind"]), "by_status": dict(sorted(total["by_status"].items())),
            "by_phase": dict(total["by_phase"]), "by_endpoint": {e: dict(c) for e, c in sorted(endpoints.items())},
            "status_by_endpoint": {e: dict(sorted(c.items())) for e, c in sorted(statuses.items())},
            "checks": {n: dict(c) for n, c in sorted(checks.items())}}


def write_md(res: dict[str, Any], path: Path) -> None:
    b = res["bars"]
    lines = [f"`{res['command']}` (schemathesis {res['schemathesis_version']}, seed {res['seed']}, {res['seconds']:.0f} s)", "",
             "| requests | write key | read key | no key | other key | 5xx | schema violations | unauthorized writes accepted | unauthorized reads accepted | server alive | server tracebacks |",
             "|---|---|---|---|---|---|---|---|---|---|---|",
             f"| {res['requests']} | {res['requests_by_key_kind'].get('write', 0)} | {res['requests_by_key_kind'].get('read', 0)} | "
             f"{res['requests_by_key_kind'].get('none', 0)} | {res['requests_by_key_kind'].get('other', 0)} | {res['server_errors']} | "
             f"{res['schema_violations']} | {res['unauthorized_writes_accepted']} | {res['unauthorized_reads_accepted']} | "
             f"{res['server_alive_at_end']} | {res['server_tracebacks']} |", "",
             "Bars: " + ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in b.items()), "",
             "Requests per endpoint and key kind (schemathesis; `other` = a wrong or malformed Authorization header):", "",
             "| endpoint | write | read | none | other |", "|---|---|---|---|---|"]
    only_405 = collections.Counter()
    for e, c in res["fuzz"]["by_endpoint"].items():
        if set(res["fuzz"]["status_by_endpoint"].get(e, {})) == {"405"}:
            only_405.update(c)
            continue
        lines.append(f"| {e} | {c.get('write', 0)} | {c.get('read', 0)} | {c.get('none', 0)} | {c.get('other', 0)} |")
    if only_405:
        lines.append(f"| undocumented methods on the documented paths (all 405) | {only_405.get('write', 0)} | {only_405.get('read', 0)} | "
                     f"{only_405.get('none', 0)} | {only_405.get('other', 0)} |")
    lines += ["", "Status codes per endpoint (all key kinds; 405s from the coverage phase's unexpected methods are left out):", "",
              "| endpoint | status codes |", "|---|---|"]
    for e, c in res["fuzz"]["status_by_endpoint"].items():
        if set(c) != {"405"}:
            lines.append(f"| {e} | {', '.join(f'{k}: {v}' for k, v in c.items())} |")
    lines += ["", "Status codes: " + ", ".join(f"{k}: {v}" for k, v in res["fuzz"]["by_status"].items()), "",
              "Writes accepted with the write key (2xx, fuzzed): " + ", ".join(f"{k}: {v}" for k, v in res["fuzz"]["writes_accepted_with_write_key"].items()), "",
              "| run | requests | seconds | exit code | 5xx | schema violations | unauthorized writes |", "|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        lines.append(f"| {r['run']} | {r['requests']} | {r['seconds']} | {r['exit_code']} | {r['server_errors']} | {r['schema_violations']} | {r['unauthorized_writes_accepted']} |")
    lines += ["", "Schemathesis phases: " + "; ".join(f"{r['run']}: " + ", ".join(f"{k} {v}" for k, v in r["phases"].items()) for r in runs_(res)), ""]
    lines += ["", "Checks (per response, all runs):", "", "| check | success | failure | bar |", "|---|---|---|---|"]
    for name, c in res["fuzz"]["checks"].items():
        bar = "yes" if name in SCHEMA_CHECKS or name == "not_a_server_error" else ""
        lines.append(f"| {name} | {c.get('success', 0)} | {c.get('failure', 0)} | {bar} |")
    p = res["auth_probes"]
    lines += ["", f"Auth probes: {p['requests']} requests ({p['by_key_kind']}), unauthorized writes accepted "
              f"{p['unauthorized_writes_accepted']}, gallery changed by refused requests {p['gallery_changed_by_refused_requests']}; "
              f"table unchanged through the keyless and read-key runs: {res['table_unchanged_during_keyless_and_read_runs']}.",
              "", f"Scale probes (after the fuzz; not a bar): one query direction at scales {list(res['scale_probes']['answers'])}; "
              f"answers differing from scale 1: {res['scale_probes']['mismatched_scales'] or 'none'}.",
              "", "Server log warnings: " + (", ".join(f"{k[:90]} x{v}" for k, v in res["server_log_warnings"].items()) or "none") + "."]
    if res["findings"]:
        lines += ["", "Findings (none of them is a bar; the bars' own failures, if any, are in results.json):", ""] + [f"- {f}" for f in res["findings"]]
    lines += ["", "How: three `st run` runs (no key, read key, write key) against the live `/openapi.json`, `--checks all --mode all "
              "--continue-on-failure`, fuzz dictionaries (real and adversarial images, row ids, model names) and `hooks.py`; "
              "every request counted from schemathesis' NDJSON report and classified by the Authorization header it carried. "
              "Bars: `not_a_server_error` and the four schema checks (status code, response schema, content type, response headers "
              "against the documented responses), and no 2xx from a write endpoint without the write key. "
              "`positive_data_acceptance` fails where a body the OpenAPI schema allows is answered 422: the server's validators that "
              "the schema cannot express (base64 images, exactly one of texts/images_base64/vectors, finite non-zero rectangular "
              "vectors); `negative_data_rejection` fails where a body the schema forbids is accepted."]
    path.write_text("\n".join(lines) + "\n")


def runs_(res: dict[str, Any]) -> list[dict[str, Any]]:
    return res["runs"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: a tenth of the examples (does not reach the bars' request counts)")
    ap.add_argument("--max-examples", type=int, help="schemathesis examples per operation for the write-key run (keyless and read-key runs scale with it)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2, help="schemathesis workers")
    ap.add_argument("--out", type=Path, default=HERE, help="where results.json and results.md go")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "http_fuzz" / "work", help="scratch folder (wiped)")
    ap.add_argument("--models", type=Path, default=ROOT / "runs" / "http_fuzz" / "models", help="the models folder served as --models-dir (trained when missing)")
    ap.add_argument("--retrain", action="store_true", help="train the models again")
    args = ap.parse_args()
    started = time.time()
    command = "python eval/http_fuzz/run.py" + "".join(f" {a}" for a in sys.argv[1:])
    if args.max_examples:
        examples = {k: max(1, round(v * args.max_examples / DEFAULT_EXAMPLES["write"])) for k, v in DEFAULT_EXAMPLES.items()}
    else:
        examples = {k: max(5, v // 10) if args.quick else v for k, v in DEFAULT_EXAMPLES.items()}

    import httpx
    import schemathesis

    work = args.work.resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    if args.retrain and args.models.exists():
        shutil.rmtree(args.models)
    built = build_gallery(work, args.models.resolve(), args.seed)
    keys = {"write": "w-" + secrets.token_urlsafe(24), "read": "r-" + secrets.token_urlsafe(24)}
    keyfile = work / "keys.txt"
    keyfile.write_text(f"write {keys['write']}\nread {keys['read']}\n")
    config = work / "schemathesis.toml"
    images = fuzz_images(built["images"])
    write_config(config, images)
    (work / "images.json").write_text(json.dumps(images))
    log(f"{len(built['images'])} images in the fuzz dictionary ({', '.join(list(built['images'])[16:24])}, ...)")

    server = Server(work, built["gallery"], built["models"], keyfile)
    log(f"compatret serve up at {server.url} (pid {server.proc.pid}, log {server.log_path})")
    admin = httpx.Client(base_url=server.url, timeout=60, headers={"Authorization": f"Bearer {keys['write']}"})
    runs: list[dict[str, Any]] = []
    try:
        probes = auth_probes(server.url, keys, built["images"])
        before = wait_idle(admin)
        log(f"gallery before the keyless and read-key runs: {before}")
        for kind in ("none", "read"):
            meta = run_schemathesis(kind, server.url, keys.get(kind), examples[kind], args.seed, work, config, args.workers, 900)
            runs.append({**meta, **analyse(meta["report"], keys, kind)})
            log(f"{kind}: {runs[-1]['requests']} requests {runs[-1]['by_key_kind']}, 5xx {runs[-1]['server_errors']}, "
                f"schema violations {runs[-1]['schema_violations']}, unauthorized writes {runs[-1]['unauthorized_writes_accepted']}")
        after = wait_idle(admin)
        unchanged = (before["table_version"], before["rows"], before["serving"]) == (after["table_version"], after["rows"], after["serving"])
        log(f"gallery after them: {after} (unchanged: {unchanged})")
        meta = run_schemathesis("write", server.url, keys["write"], examples["write"], args.seed, work, config, args.workers, 1800)
        runs.append({**meta, **analyse(meta["report"], keys, "write")})
        log(f"write: {runs[-1]['requests']} requests {runs[-1]['by_key_kind']}, 5xx {runs[-1]['server_errors']}, "
            f"schema violations {runs[-1]['schema_violations']}, unauthorized writes {runs[-1]['unauthorized_writes_accepted']}")
        final = wait_idle(admin, timeout=300)
        scales = scale_probes(server.url, keys["read"], args.seed)
        log(f"scale probes: one query direction at {len(scales['answers'])} scales, mismatching the scale-1 answer: "
            f"{scales['mismatched_scales'] or 'none'}")
        alive = server.alive() and httpx.get(f"{server.url}/health", timeout=10).status_code == 200
        backfill_state = admin.get("/backfill").json()
    finally:
        server.stop()
    server_log = server.log_path.read_text(errors="replace")
    tracebacks = server_log.count("Traceback (most recent call last)")
    log_warnings = collections.Counter(m.group(1).strip() for m in re.finditer(r"^(?:\S+?:\d+: )?(\w*Warning\b.*|WARNING: .*)$", server_log, re.M))

    fuzz = merge(runs)
    fuzz["writes_accepted_with_write_key"] = dict(sum((collections.Counter(r["writes_accepted_with_write_key"]) for r in runs), collections.Counter()))
    by_kind = collections.Counter(fuzz["by_key_kind"])
    by_kind.update(probes["by_key_kind"])
    by_kind.update({"read": scales["requests"]})
    server_errors = sum(r["server_errors"] for r in runs)
    schema_violations = sum(r["schema_violations"] for r in runs)
    unauthorized_writes = sum(r["unauthorized_writes_accepted"] for r in runs) + probes["unauthorized_writes_accepted"]
    unauthorized_reads = sum(r["unauthorized_reads_accepted"] for r in runs)
    no_response = sum(r["no_response"] for r in runs)
    findings: list[str] = []
    for r in runs:
        for name, examples_ in r["failure_examples"].items():
            c = r["checks"].get(name, {}).get("failure", 0)
            ex = examples_[0]
            findings.append(f"[{r['run']} run] {name}: {c} responses, e.g. {ex['method']} {ex['path']} body {ex['request_body'][:200]!r} "
                            f"-> {ex['status']} {ex['response_body'][:200]!r} ({ex['message'][:200]!r})")
    auth_order = sum((collections.Counter(r["refused_for_the_key_but_not_401_403"]) for r in runs), collections.Counter())
    auth_order_examples = [ex for r in runs for ex in r["refused_for_the_key_but_not_401_403_examples"]][:10]
    if auth_order:
        by_status = collections.Counter()
        for k, v in auth_order.items():
            by_status[k.rsplit("-> ", 1)[1]] += v
        ex = auth_order_examples[0]
        findings.append(f"{sum(auth_order.values())} requests without a fitting key were refused with {dict(by_status)} instead of 401/403 "
                        f"(the body is parsed before the key is checked; nothing was accepted), e.g. {ex['method']} {ex['path']} "
                        f"[{ex['key_kind']} key] body {ex['request_body'][:60]!r} -> {ex['status']} {ex['response_body'][:100]!r}")
    if scales["mismatches"]:
        a, b = scales["answers"][scales["mismatched_scales"][-1]], scales["answers"]["1"]
        findings.append(f"a query vector's scale changes its answer: the same direction at scales {scales['mismatched_scales']} "
                        f"answers ids {a['ids'][:3]} scores {[round(x, 6) for x in a['scores'][:3]]} (status {a['status']}), "
                        f"at scale 1 ids {b['ids'][:3]} scores {[round(x, 6) for x in b['scores'][:3]]} "
                        f"(the float32 norm over- or underflows; such vectors are neither ranked right nor refused)")
    if tracebacks:
        findings.append(f"server log holds {tracebacks} tracebacks (see {server.log_path})")
    bars = {
        "write-key requests >= 2000": by_kind.get("write", 0) >= 2000,
        "keyless requests >= 500": by_kind.get("none", 0) >= 500,
        "0 server errors": server_errors == 0 and no_response == 0,
        "0 schema violations": schema_violations == 0,
        "0 unauthorized writes accepted": unauthorized_writes == 0 and unchanged and probes["gallery_changed_by_refused_requests"] == 0,
        "server alive, no tracebacks": alive and tracebacks == 0,
    }
    res = {
        "command": command,
        "schemathesis_version": schemathesis.__version__ if hasattr(schemathesis, "__version__") else "",
        "seed": args.seed,
        "seconds": round(time.time() - started, 1),
        "requests": fuzz_total(runs) + probes["requests"] + scales["requests"],
        "requests_by_source": {"schemathesis": fuzz_total(runs), "auth_probes": probes["requests"], "scale_probes": scales["requests"]},
        "requests_by_key_kind": dict(by_kind),
        "server_errors": server_errors,
        "schema_violations": schema_violations,
        "unauthorized_writes_accepted": unauthorized_writes,
        "unauthorized_reads_accepted": unauthorized_reads,
        "requests_without_response": no_response,
        "refused_for_the_key_but_not_401_403": {"total": sum(auth_order.values()), "by_endpoint_key_status": dict(sorted(auth_order.items())),
                                                 "examples": auth_order_examples},
        "table_unchanged_during_keyless_and_read_runs": unchanged,
        "server_alive_at_end": alive,
        "server_tracebacks": tracebacks,
        "server_log_warnings": dict(log_warnings),
        "scale_probes": scales,
        "bars": bars,
        "all_bars_pass": all(bars.values()),
        "gallery": {"rows_at_start": GALLERY_ROWS, "at_end": final, "backfill_at_end": {k: backfill_state[k] for k in ("serving", "rows_by_version", "pending", "last_error")}},
        "fuzz": fuzz,
        "runs": [{k: (str(v) if isinstance(v, Path) else v) for k, v in r.items()} for r in runs],
        "auth_probes": probes,
        "findings": findings,
        "settings": {"examples_per_operation": examples, "workers": args.workers, "gallery_dim": DIM,
                     "schema_checks_counted_as_violations": list(SCHEMA_CHECKS), "fuzz_dictionary_images": list(built["images"])},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    write_md(res, args.out / "results.md")
    log(f"{res['requests']} requests ({dict(by_kind)}): 5xx {server_errors}, schema violations {schema_violations}, "
        f"unauthorized writes accepted {unauthorized_writes}, server alive {alive}, tracebacks {tracebacks}; "
        f"bars {'all pass' if res['all_bars_pass'] else 'FAIL: ' + ', '.join(k for k, v in bars.items() if not v)}")
    log(f"wrote {args.out / 'results.json'} and {args.out / 'results.md'} in {res['seconds']:.0f} s")


def fuzz_total(runs: list[dict[str, Any]]) -> int:
    return sum(r["requests"] for r in runs)


if __name__ == "__main__":
    main()
