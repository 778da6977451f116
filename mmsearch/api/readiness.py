"""Waiting for a started `mmsearch serve` to load its models: for scripts, tests and deployments."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request


def wait_until_ready(base_url: str, proc: subprocess.Popen | None = None, timeout: float = 120.0) -> bool:
    """Poll ``/readyz``; False if the server process exited or ``timeout`` seconds passed first."""
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(base_url.rstrip("/") + "/readyz", timeout=2) as r:
                if json.load(r).get("ready"):
                    return True
        except (OSError, ValueError):
            pass
        if (proc is not None and proc.poll() is not None) or time.time() > deadline:
            return False
        time.sleep(0.2)
