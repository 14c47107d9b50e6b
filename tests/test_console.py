"""The web console in a real headless Chromium (Debian's, driven by Playwright) against a real server.

One walk through the page as a user takes it: no key, a read key, a search, a write key, a
backfill whose bar moves to 100 %, a stop, and a rollback that changes the serving model.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from compatret.engine.service import Service
from compatret.testing.serve import serving

pytestmark = pytest.mark.browser
SHOTS = Path(os.environ.get("COMPATRET_CONSOLE_SHOTS", "")) if os.environ.get("COMPATRET_CONSOLE_SHOTS") else None
READ_KEY, WRITE_KEY = "read-key-0123456789abcdef", "write-key-0123456789abcdef"


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    if path is None:
        if os.environ.get("COMPATRET_REQUIRE_BROWSER") == "1":
            pytest.fail("COMPATRET_REQUIRE_BROWSER=1 but no chromium on PATH (apt-get install chromium)")
        pytest.skip("no chromium on PATH: apt-get install chromium to run the console tests")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                                          "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield b
        b.close()


@pytest.fixture()
def upgraded_gallery(tmp_path, digit_models) -> tuple[str, str]:
    """150 digit images embedded by v1, then upgraded to the BCT-compatible v2 (no row re-embedded yet)."""
    s = Service.create(tmp_path / "g", model=digit_models["v1"])
    s.add_items(digit_models["items"][:150], progress=False)
    s.upgrade(digit_models["v2"])
    keys = tmp_path / "keys.txt"
    keys.write_text(f"read {READ_KEY}\nwrite {WRITE_KEY}\n")
    return str(tmp_path / "g"), str(keys)


def use_key(page, key: str) -> None:
    page.fill("#key", key)
    page.click("#key-form button[type=submit]")


ACCENT = "rgb(36, 88, 214)"  # the console's accent (#2458d6): the serving model's part of the bar


def bar_color(page, version: str) -> str:
    return page.evaluate("v => getComputedStyle(document.querySelector(`#bar span[data-version='${v}']`)).backgroundColor", version)


def placeholder_fits(page, selector: str) -> bool:
    """Whether an input's placeholder is drawn whole: its text width in the input's font within the box."""
    return page.evaluate("""s => {
      const input = document.querySelector(s), style = getComputedStyle(input);
      const ctx = document.createElement("canvas").getContext("2d");
      ctx.font = `${style.fontSize} ${style.fontFamily}`;
      const room = input.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
      return ctx.measureText(input.placeholder).width <= room;
    }""", selector)


def bar_share(page, version: str, settle: float = 5.0) -> float:
    """The drawn width of one model's part of the backfill bar, as a share of the bar, once it stops moving."""
    share, deadline = -1.0, time.time() + settle
    while time.time() < deadline:
        now = page.evaluate("v => document.querySelector(`#bar span[data-version='${v}']`).getBoundingClientRect().width"
                            " / document.querySelector('#bar').clientWidth", version)
        if abs(now - share) < 1e-4:
            break
        share = now
        time.sleep(0.3)
    return share


def test_console_search_backfill_stop_and_rollback(browser, upgraded_gallery):
    from playwright.sync_api import expect

    gallery, keys = upgraded_gallery
    with serving(gallery, "--refresh-seconds", "0.05", "--api-key-file", keys) as url:
        page = browser.new_page(viewport={"width": 390, "height": 1400})  # a phone's width: the page must still work
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        expect(page.locator("#error")).to_contain_text("needs an API key")  # the API's 401 as a sentence
        expect(page.locator("#backfill-summary")).to_be_hidden()  # no "– of rows" before the server answers
        expect(page.locator("#backfill-waiting")).to_contain_text("API key")
        assert placeholder_fits(page, "#key")

        use_key(page, READ_KEY)
        expect(page.locator("[data-stat=rows]")).to_have_text("150")
        expect(page.locator("[data-stat='serving model']")).to_have_text("v2")
        expect(page.locator("#lineage li.model")).to_have_count(2)
        expect(page.locator("#lineage li.arrow")).to_contain_text("identity")  # v2's rule to v1 (BCT)
        expect(page.locator("#lineage li.serving")).to_contain_text("v2")
        expect(page.locator("#read-only-note")).to_be_visible()
        expect(page.locator("#backfill-form")).to_be_hidden()
        expect(page.locator("#backfill-percent")).to_have_text("0%")
        expect(page.locator("#backfill-waiting")).to_be_hidden()
        # 0 % backfilled: the whole bar is v1's rows, drawn in grey; the accent is the serving model's share only
        assert bar_share(page, "v1") > 0.98 and bar_color(page, "v1") != ACCENT

        # a vector search: the page is in vector mode for an image gallery; the hits name v1 (no row backfilled yet)
        expect(page.locator("input[name=mode][value=image]")).to_be_checked()
        page.check("input[name=mode][value=vector]")
        page.fill("#query", json.dumps(np.eye(16)[3].tolist()))
        page.fill("#k", "5")
        page.click("#search-form button[type=submit]")
        expect(page.locator("#hits li")).to_have_count(5)
        expect(page.locator("#hits li .version").first).to_have_text("v1")
        page.fill("#query", "[1, 2")  # not JSON: a sentence, no request
        page.click("#search-form button[type=submit]")
        expect(page.locator("#error")).to_contain_text("JSON list of numbers")
        page.fill("#query", "[1, 2]")  # wrong dimension: the API's refusal, readable
        page.click("#search-form button[type=submit]")
        expect(page.locator("#error")).to_contain_text("shape (n, 16)")

        # a write key: start a backfill in small batches; the bar moves to 100 %
        use_key(page, WRITE_KEY)
        expect(page.locator("#backfill-form")).to_be_visible()
        page.fill("#backfill-batch", "5")
        page.fill("#backfill-fraction", "40")
        page.click("#backfill-start")
        expect(page.locator("#backfill-percent")).to_have_text("40%", timeout=60_000)
        expect(page.locator("#backfill-state")).to_contain_text("last backfill: 60 rows")
        assert 0.38 < bar_share(page, "v2") < 0.42  # the bar is drawn, not only the number
        assert bar_color(page, "v2") == ACCENT and bar_color(page, "v1") != ACCENT
        page.fill("#backfill-fraction", "")
        page.fill("#backfill-batch", "1")  # 90 commits: seconds, time to stop it midway
        page.click("#backfill-start")
        expect(page.locator("#backfill-state")).to_contain_text("running", timeout=10_000)
        time.sleep(0.5)
        if SHOTS:
            page.screenshot(path=str(SHOTS / "console-mid-backfill-narrow.png"), full_page=True)
        page.click("#backfill-stop")
        expect(page.locator("#backfill-state")).to_contain_text("(stopped)", timeout=30_000)
        stopped_at = float(page.locator("#backfill-percent").get_attribute("data-percent"))
        assert 40 < stopped_at < 100
        page.click("#backfill-start")
        expect(page.locator("#backfill-percent")).to_have_text("100%", timeout=90_000)
        expect(page.locator("#lineage li.serving")).to_contain_text("150 rows")
        assert bar_share(page, "v2") > 0.98
        page.click("#search-form button[type=submit]")  # the last query was refused; this one is [1, 2] again
        page.fill("#query", json.dumps(np.eye(16)[3].tolist()))
        page.click("#search-form button[type=submit]")
        expect(page.locator("#hits li .version").first).to_have_text("v2")

        # roll back to the version before the upgrade: the serving model is v1 again, after a confirmation
        before_upgrade = page.locator("#history tbody tr", has_text="upgrade").locator("xpath=following-sibling::tr[1]")
        page.once("dialog", lambda d: d.accept())
        before_upgrade.locator("button.rollback").click()
        expect(page.locator("[data-stat='serving model']")).to_have_text("v1", timeout=30_000)
        expect(page.locator("#history tbody tr").first).to_contain_text("rollback")
        assert errors == []
