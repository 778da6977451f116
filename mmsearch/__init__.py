"""mmsearch: cross-modal semantic search over a media folder.

    from mmsearch import Engine, Query, Settings
    with Engine.open(Settings(catalog="~/.mmsearch")) as engine:
        engine.index(["~/Photos"])
        hits = engine.search(Query(text="a dog on the beach", k=5)).results

Names are imported on first use, so ``mmsearch --help`` does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Engine": "mmsearch.engine", "Embedding": "mmsearch.engine", "Embeddings": "mmsearch.engine",
    "ItemVectors": "mmsearch.engine",
    "Query": "mmsearch.search.request", "Hit": "mmsearch.search.request", "SearchResponse": "mmsearch.search.request",
    "Profile": "mmsearch.search.request", "Filters": "mmsearch.search.request",
    "Settings": "mmsearch.settings",
    "MMSearchError": "mmsearch.errors", "BadInput": "mmsearch.errors", "ModelMismatch": "mmsearch.errors",
    "ModelUnavailable": "mmsearch.errors", "NotFound": "mmsearch.errors",
}
__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mmsearch' has no attribute {name!r}")
