"""The web console at `/`: one static page (HTML, CSS, plain JavaScript) shipped in the package.

No framework and no CDN: the page must load on an offline machine, and what it shows comes
from the same JSON API a program uses, with the same keys (asked for in the page, kept in the
tab's sessionStorage only). The static files hold no data, so they need no key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

CONSOLE_PREFIX = "/console/"
# own scripts and styles only: a payload that smuggles markup can run nothing
POLICY = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
STATIC = Path(__file__).with_name("console_static")


class _Revalidated(StaticFiles):
    """Static files a browser checks again each time: after an upgrade, no old script beside a new page."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response


def mount_console(app: FastAPI) -> None:
    """GET / serves the page; its script and style sheet live under /console/."""
    app.mount(CONSOLE_PREFIX.rstrip("/"), _Revalidated(directory=STATIC), name="console")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache", "Content-Security-Policy": POLICY})
