"""The vector stores and ANN indexes of one catalog, one pair per collection ("clip.image", ...).

Indexes are derived data: SQL says which ids are live, the stores hold the exact vectors, and
``sync`` makes each index hold exactly the live ids. Saves are atomic file replaces, so a reader
(the HTTP service while a job indexes) never sees a half-written index.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from mmsearch.search.ann import AnnIndex, sync_index
from mmsearch.settings import Settings
from mmsearch.storage.catalog import Catalog
from mmsearch.storage.vectors import VectorStore

STATE = "state.json"
COMPACT_MIN = 1_000  # below this many stored vectors, dead ones cost nothing worth a rewrite


class IndexSet:
    def __init__(self, vectors_dir: Path, indexes_dir: Path, settings: Settings) -> None:
        self.vectors_dir = vectors_dir
        self.indexes_dir = indexes_dir
        self.settings = settings
        self._stores: dict[str, VectorStore] = {}
        self._indexes: dict[str, tuple[float, AnnIndex]] = {}

    @classmethod
    def for_catalog(cls, catalog: Catalog) -> "IndexSet":
        return cls(catalog.vectors_dir, catalog.indexes_dir, catalog.settings)

    def store(self, collection: str, dim: int) -> VectorStore:
        st = self._stores.get(collection)
        if st is None or st.dim != dim:
            st = self._stores[collection] = VectorStore(self.vectors_dir, collection, dim)
        return st

    def stored_collections(self) -> list[str]:
        if not self.vectors_dir.is_dir():
            return []
        return sorted(p.name[: -len(".ids")] for p in self.vectors_dir.glob("*.ids"))

    def max_stored_id(self) -> int:
        """Ids are never reused, even those a crash left without SQL rows."""
        best = 0
        for path in self.vectors_dir.glob("*.ids") if self.vectors_dir.is_dir() else []:
            n = path.stat().st_size // 8
            if n:
                best = max(best, int(np.memmap(path, dtype=np.int64, mode="r", shape=(n,))[-1]))
        return best

    def index_path(self, collection: str) -> Path:
        return self.indexes_dir / f"{collection}.faiss.npz"

    def index(self, collection: str) -> AnnIndex | None:
        """The saved index, reloaded when another process replaced the file."""
        path = self.index_path(collection)
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            self._indexes.pop(collection, None)
            return None
        cached = self._indexes.get(collection)
        if cached and cached[0] == mtime:
            return cached[1]
        idx = AnnIndex.load(path)
        if idx is not None:
            self._indexes[collection] = (mtime, idx)
        return idx

    def sync(self, catalog: Catalog, *, compact: bool = True) -> None:
        """Make every index hold exactly the live ids; the caller holds the catalog's write lock.
        ``compact=False`` during an ingest: vectors of files not yet committed look dead there."""
        generation = catalog.generation()
        dims = {name: dim for name, (_, dim) in catalog.spaces().items()}
        self.indexes_dir.mkdir(parents=True, exist_ok=True)
        for collection in sorted(set(self.stored_collections()) | set(catalog.counts()["embeddings"])):
            dim = dims.get(collection.split(".")[0])
            if dim is None:
                continue
            live = catalog.live_ids(collection)
            store = self.store(collection, dim)
            # a fresh copy from disk: the cached one may be answering queries in other threads
            idx = sync_index(AnnIndex.load(self.index_path(collection)), store, live, self.settings)
            if compact and len(store) > max(COMPACT_MIN, 2 * len(live)):  # mostly dead vectors
                catalog.raise_id_floor(store.max_id)  # their ids stay used
                store.compact(live)
            path = self.index_path(collection)
            idx.save(path)
            self._indexes[collection] = (path.stat().st_mtime_ns, idx)
        tmp = self.indexes_dir / (STATE + ".tmp")
        tmp.write_text(json.dumps({"generation": generation}))
        os.replace(tmp, self.indexes_dir / STATE)

    def synced_generation(self) -> int:
        try:
            return int(json.loads((self.indexes_dir / STATE).read_text())["generation"])
        except (OSError, ValueError, KeyError):
            return -1

    def describe(self, catalog: Catalog) -> dict[str, dict]:
        dims = {name: dim for name, (_, dim) in catalog.spaces().items()}
        out: dict[str, dict] = {}
        for collection in self.stored_collections():
            dim = dims.get(collection.split(".")[0])
            if dim is None:
                continue
            idx = self.index(collection)
            store = self.store(collection, dim)
            out[collection] = {"index": idx.describe() if idx else None,
                               "vectors": {"stored": len(store), "bytes": store.nbytes(), "dtype": "float16"}}
        return out
