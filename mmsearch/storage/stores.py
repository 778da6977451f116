"""The vector stores of one catalog, one per collection ("clip.image", ...), opened on demand."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from mmsearch.storage.vectors import VectorStore


class VectorStores:
    def __init__(self, folder: Path, *, writable: bool) -> None:
        self.folder = Path(folder)
        self.writable = writable
        self._stores: dict[str, VectorStore] = {}
        self._lock = threading.Lock()

    def get(self, collection: str, dim: int) -> VectorStore:
        with self._lock:
            st = self._stores.get(collection)
            if st is None or st.dim != dim:
                st = self._stores[collection] = VectorStore(self.folder, collection, dim, writable=self.writable)
            return st

    def collections(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(p.name[: -len(".ids")] for p in self.folder.glob("*.ids"))

    def max_stored_id(self) -> int:
        """Ids are never reused, even those a crash left without SQL rows."""
        best = 0
        for path in self.folder.glob("*.ids") if self.folder.is_dir() else []:
            n = path.stat().st_size // 8
            if n:
                best = max(best, int(np.memmap(path, dtype=np.int64, mode="r", shape=(n,))[-1]))
        return best

    def remove_space(self, space: str) -> None:
        """Drop a space's stores (its model changed: every vector is embedded again)."""
        with self._lock:
            for name in [c for c in self._stores if c.startswith(space + ".")]:
                del self._stores[name]
            for path in self.folder.glob(f"{space}.*") if self.folder.is_dir() else []:
                path.unlink()
