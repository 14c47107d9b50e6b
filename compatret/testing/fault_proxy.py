"""A fault-injecting HTTP proxy between compatret and an embeddings endpoint, for tests.

Each POST takes the next entry of a cyclic schedule: `ok` forwards it; `429` answers Too Many
Requests with `Retry-After: 0`, `429-bare` without the header; `500` a server error; `timeout`
forwards after sleeping past the client's timeout; `truncated` forwards and cuts the JSON body in
half (status 200). `swap_to` sends every request to another upstream from then on (a provider
changing the model behind the same name).
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import cycle


class FaultProxy:
    def __init__(self, upstream: str, schedule: Iterable[str] = ("ok",), timeout_sleep: float = 2.0) -> None:
        self.upstream = upstream.rstrip("/")
        self._schedule = cycle(list(schedule))
        self.timeout_sleep = timeout_sleep
        self.injected: Counter[str] = Counter()
        self.forwarded = 0
        self.in_flight = self.max_in_flight = 0  # requests being forwarded at once, and the most seen
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self._forward(b"", "GET")

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy.lock:
                    fault = next(proxy._schedule)
                if fault == "429":
                    return self._reply(429, b'{"error": {"message": "slow down"}}', {"Retry-After": "0"}, fault)
                if fault == "429-bare":
                    return self._reply(429, b'{"error": {"message": "slow down"}}', {}, fault)
                if fault == "500":
                    return self._reply(500, b'{"error": {"message": "boom"}}', {}, fault)
                if fault == "timeout":
                    proxy.count(fault)
                    time.sleep(proxy.timeout_sleep)
                self._forward(body, "POST", cut=fault == "truncated")

            def _reply(self, code: int, body: bytes, headers: dict[str, str], fault: str) -> None:
                proxy.count(fault)
                self.send_response(code)
                for k, v in {"Content-Type": "application/json", "Content-Length": str(len(body)), **headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _forward(self, body: bytes, method: str, cut: bool = False) -> None:
                req = urllib.request.Request(
                    proxy.upstream + self.path, data=body or None, method=method, headers={"Content-Type": "application/json"}
                )
                with proxy.lock:
                    proxy.in_flight += 1
                    proxy.max_in_flight = max(proxy.max_in_flight, proxy.in_flight)
                try:
                    with urllib.request.urlopen(req, timeout=60) as resp:
                        status, payload = resp.status, resp.read()
                except urllib.error.HTTPError as exc:
                    status, payload = exc.code, exc.read()
                except OSError:  # the client gave up on a delayed answer: nothing to send
                    return
                finally:
                    with proxy.lock:
                        proxy.in_flight -= 1
                if cut:
                    proxy.count("truncated")
                    payload = payload[: len(payload) // 2]
                else:
                    with proxy.lock:
                        proxy.forwarded += 1
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def count(self, fault: str) -> None:
        with self.lock:
            self.injected[fault] += 1

    def set_schedule(self, schedule: Iterable[str]) -> None:
        with self.lock:
            self._schedule = cycle(list(schedule))

    def swap_to(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
