"""The web page's files: static assets that browsers may cache for good, and the page that links them."""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path
from typing import Any

from fastapi import Response
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"


class CachedStatic(StaticFiles):
    """Assets are linked with a content hash (``?v=``), so browsers may keep them for good."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        return response


@cache
def page_html(name: str = "index.html") -> str:
    """A page with each asset's content hash in its URL; read once, as the assets are."""
    html = (STATIC / name).read_text(encoding="utf-8")
    for asset in sorted(STATIC.iterdir()):
        if asset.suffix in (".js", ".css") and f"/static/{asset.name}" in html:
            digest = hashlib.sha256(asset.read_bytes()).hexdigest()[:10]
            html = html.replace(f"/static/{asset.name}\"", f"/static/{asset.name}?v={digest}\"")
    return html
