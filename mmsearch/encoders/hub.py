"""Weights from the Hugging Face hub: the local cache first, the network only when it answers.

Without this, an offline machine waits about a minute on the hub client's retries before failing.
"""

from __future__ import annotations

import os
import socket
from typing import Iterable

HUB_HOST = "huggingface.co"


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connection attempt: a DNS failure or a closed network answers at once."""
    if hub_offline():
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def cached_file(repo_id: str, filenames: Iterable[str]) -> str | None:
    """Path of the first of ``filenames`` already in the local HF cache, else None."""
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        path = try_to_load_from_cache(repo_id, name)
        if isinstance(path, str) and os.path.isfile(path):
            return path
    return None
