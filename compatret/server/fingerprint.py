"""Re-checks that an endpoint model still returns the registered model's vectors."""

from __future__ import annotations

import logging
import threading

from compatret.core.errors import CompatretError
from compatret.engine.service import Service
from compatret.engine.sharded import ShardedService

log = logging.getLogger(__name__)


class FingerprintWatch:
    """For a serving model behind an endpoint: its fingerprint checked every `minutes` in a daemon
    thread; `drift` is the refusal line while the endpoint serves another model (None while it
    serves the registered one, or for local models)."""

    def __init__(self, service: Service | ShardedService, minutes: float) -> None:
        self.service = service
        self.minutes = minutes
        self.drift: str | None = None
        self.stopped = threading.Event()
        self.started = False
        self.ensure()

    def ensure(self) -> None:
        """Start the watch once the serving model is behind an endpoint (at start, or after an upgrade)."""
        from compatret.encoders.registry import is_endpoint_model

        source = self.service.meta.serving_source
        if self.started or self.minutes <= 0 or source is None or not is_endpoint_model(source):
            return
        self.started = True
        threading.Thread(target=self._run, args=(self.minutes * 60,), daemon=True, name="fingerprint-watch").start()

    def _run(self, every: float) -> None:
        while not self.stopped.wait(every):
            self.check()

    def stop(self) -> None:
        self.stopped.set()

    def check(self) -> None:
        from compatret.encoders.registry import check_endpoint

        try:
            check_endpoint(self.service.meta.serving_source, "serve queries embedded by it")
            self.drift = None
        except Exception as exc:  # noqa: BLE001  any failure (drift, an unreadable fingerprint, the endpoint down) is reported, and the watch goes on
            line = str(exc) if isinstance(exc, CompatretError) else f"fingerprint check failed: {exc.__class__.__name__}: {exc}"
            if line != self.drift:
                log.warning("%s", line, exc_info=not isinstance(exc, CompatretError))
            self.drift = line
