"""The catalog's write lock: one writer process at a time, the others refused (or made to wait)
with a message that names the holder. An OS lock (flock), so a crashed writer never leaves it held."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from mmsearch.errors import MMSearchError

LOCK_FILE = "write.lock"


class CatalogBusy(MMSearchError):
    """Another process holds the catalog's write lock."""


class WriteLock:
    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, timeout: float = 0.0) -> None:
        """Take the lock, waiting up to ``timeout`` seconds for another writer to finish."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _read_holder(fd)
                    os.close(fd)
                    raise CatalogBusy(
                        f"another process{holder} is writing to the catalog {self.path.parent}: wait for it "
                        "to finish (an HTTP server takes writes through POST /jobs and DELETE /items)") from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def _read_holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        pid = int(os.pread(fd, 32, 0).decode().strip() or 0)
        if pid:
            return f" (pid {pid})"
    return ""
