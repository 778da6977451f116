"""The HTTP service: ``create_app(engine_or_settings)`` builds a FastAPI app; ``mmsearch serve`` runs it."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "create_app":  # imported on use, so `import mmsearch.api` stays light
        from mmsearch.api.app import create_app

        return create_app
    raise AttributeError(f"module 'mmsearch.api' has no attribute {name!r}")


__all__ = ["create_app"]
