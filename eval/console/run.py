"""The web console on real galleries: screenshots for the README, and the page against 1M rows.

    python eval/console/run.py                 # both parts -> eval/console/results.json, *.png
    python eval/console/run.py --part million  # only the 1M-row check

`screenshots`: 1,000 SciFact documents embedded by paraphrase-MiniLM-L3-v2, switched to
all-MiniLM-L6-v2 through a fitted adapter (`compatret adapt`, a `transform` rule), then a
backfill started from the page; the page is captured mid-backfill with a search's hits from
both models' rows, on a wide and a narrow screen.

`million`: a gallery of 1,000,000 external 64-d vectors. The page is loaded in Chromium and
every response it receives is recorded: the page must show the gallery without asking for
rows (its largest response, and the time until the row count shows, are reported).
Needs Debian's chromium and playwright (the dev extra).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from compatret.core.config import dataset, index_home
from compatret.data.beir import load_beir
from compatret.engine.service import Service
from compatret.testing.serve import serving  # noqa: E402

HERE = Path(__file__).resolve().parent
KEY = "console-demo-write-key-0123456789"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]


def served(gallery: Path, keys: Path) -> AbstractContextManager[str]:
    """`compatret serve` on a free loopback port until the block ends."""
    return serving(str(gallery), "--api-key-file", str(keys), "--refresh-seconds", "0.5")


@contextmanager
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    path = shutil.which("chromium")
    if path is None:
        raise SystemExit("error: no chromium on PATH (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=ARGS)
        yield browser
        browser.close()


def key_file(work: Path) -> Path:
    path = work / "keys.txt"
    path.write_text(f"write {KEY}\n")
    return path


def open_console(browser: Any, url: str, width: int) -> Any:
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.goto(url)
    page.fill("#key", KEY)
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("#lineage li.model")
    page.wait_for_selector("#history tbody tr")  # every panel loaded (the banner of the keyless first load cleared)
    page.wait_for_function("() => document.querySelector('#error').hidden")
    return page


def screenshots(work: Path) -> dict[str, Any]:
    """A text gallery mid-backfill from an adapted L3 -> L6 upgrade, wide and narrow."""
    gallery, model = work / "scifact-l3", work / "l6-adapted"
    if not gallery.exists():
        corpus = load_beir(dataset("scifact"), splits=("test",)).corpus
        items = [{"id": d, **doc} for d, doc in list(corpus.items())[:1000]]
        Service.create(gallery, model="minilm-l3").add_items(items)
    if not model.exists():
        subprocess.run(["compatret", "adapt", str(gallery), "--model", "minilm-l6", "--out", str(model), "--direction", "gallery",
                        "--budget", "60", "--force"], check=True)  # a mid-backfill gallery to draw, not a serving choice
    service = Service.open(gallery)
    if service.meta.serving.id == "minilm-l3":
        service.upgrade(str(model))
    out: dict[str, Any] = {"gallery_rows": service.gallery.count(), "serving": service.meta.serving.id}
    with served(gallery, key_file(work)) as url, chromium() as browser:
        page = open_console(browser, url, 1280)
        page.fill("#query", "Vitamin D deficiency is linked to a higher risk of cancer")
        page.click("#search-form button[type=submit]")
        page.wait_for_selector("#hits li")
        page.fill("#backfill-batch", "16")
        page.click("#backfill-start")
        page.wait_for_function("() => Number(document.querySelector('#backfill-percent').dataset.percent) >= 35", timeout=600_000)
        page.click("#search-form button[type=submit]")  # the same query, now over a mixed gallery
        page.wait_for_timeout(1500)
        page.screenshot(path=str(HERE / "console-mid-backfill.png"), full_page=True)
        out["percent_at_screenshot"] = float(page.locator("#backfill-percent").get_attribute("data-percent"))
        out["hit_versions_at_screenshot"] = page.locator("#hits li .version").all_inner_texts()
        narrow = open_console(browser, url, 390)
        narrow.screenshot(path=str(HERE / "console-narrow.png"), full_page=True)
        page.click("#backfill-stop")
        page.wait_for_function("() => document.querySelector('#backfill-state').textContent.includes('stopped')", timeout=120_000)
    return out


def api_seconds(url: str, repeats: int = 3) -> dict[str, float]:
    """Median seconds of each read the page polls, asked directly."""
    import httpx

    out = {}
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=300) as c:
        for path in ("/gallery", "/backfill", "/history?limit=50"):
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                c.get(path).raise_for_status()
                times.append(time.perf_counter() - t0)
            out[path] = round(float(np.median(times)), 3)
    return out


def million(work: Path, rows: int = 1_000_000, dim: int = 64) -> dict[str, Any]:
    """Load the page against 1M rows: every response's size, the time until the row count shows, search times."""
    gallery = work / "million"
    if not (work / "million.done").exists():
        shutil.rmtree(gallery, ignore_errors=True)
        service = Service.create(gallery, dim=dim, version_id="external-v1")
        rng = np.random.default_rng(0)
        for start in range(0, rows, 200_000):
            n = min(200_000, rows - start)
            service.add_vectors(rng.normal(size=(n, dim)).astype(np.float32), ids=[f"r{start + i}" for i in range(n)])
        (work / "million.done").touch()
    responses: list[dict[str, Any]] = []
    searches = []
    with served(gallery, key_file(work)) as url, chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("response", lambda r: responses.append({"url": r.url.removeprefix(url), "status": r.status,
                                                       "bytes": int(r.headers.get("content-length") or 0)}))
        page.goto(url)
        t0 = time.perf_counter()
        page.fill("#key", KEY)
        page.click("#key-form button[type=submit]")
        page.wait_for_function(f"() => document.querySelector('[data-stat=rows]')?.textContent.replace(/\\D/g, '') === '{rows}'",
                               timeout=300_000)
        shown = time.perf_counter() - t0
        page.fill("#query", json.dumps(np.random.default_rng(1).normal(size=dim).round(4).tolist()))
        for n in range(2):  # the first search builds the search kernel, the second uses it
            t1 = time.perf_counter()
            page.click("#search-form button[type=submit]")
            page.wait_for_function(f"() => document.querySelectorAll('#hits li').length === 10 && window.performance.getEntriesByType('resource')"
                                   f".filter(e => e.name.endsWith('/query')).length === {n + 1}", timeout=300_000)
            searches.append(round(time.perf_counter() - t1, 2))
        page.wait_for_timeout(5000)  # a few status polls
        endpoints = api_seconds(url)
    largest = max(responses, key=lambda r: r["bytes"])
    return {"rows": rows, "dim": dim, "seconds_until_rows_shown": round(shown, 2), "search_seconds_first_then_second": searches,
            "api_seconds_median": endpoints, "responses": len(responses), "largest_response": largest,
            "total_bytes": sum(r["bytes"] for r in responses), "paths": sorted({r["url"].split("?")[0] for r in responses})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["screenshots", "million", "all"], default="all")
    args = ap.parse_args()
    work = index_home() / "console"
    work.mkdir(parents=True, exist_ok=True)
    results_file = HERE / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    if args.part in ("screenshots", "all"):
        results["screenshots"] = screenshots(work)
    if args.part in ("million", "all"):
        results["million"] = million(work)
    results["command"] = "python eval/console/run.py"
    results_file.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("LANCEDB_LOG", "error")
    main()
