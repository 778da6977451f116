"""The vectors a path filter selects, kept between queries.

A filter selecting few vectors is scored exactly over all of them. Finding them (a range scan of
the files' paths joined to their vectors) and reading them from the float16 store cost more than
scoring them, and a user tends to run several queries in one folder, so the selection is kept,
as unit float32 rows, until the catalog changes (the change log moves) or the cache's byte budget
pushes it out (least recently used first)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from mmsearch.search.scoring import QueryVector
from mmsearch.storage.catalog import Catalog
from mmsearch.storage.vectors import VectorStore

CACHE_BYTES = 128 * 2**20


@dataclass(frozen=True)
class Subset:
    seq: int
    ids: np.ndarray  # sorted embedding ids the filter selects
    vectors: np.ndarray | None  # their unit float32 rows when few enough to score exactly

    @property
    def nbytes(self) -> int:
        return int(self.ids.nbytes + (self.vectors.nbytes if self.vectors is not None else 0))


class SubsetCache:
    def __init__(self, catalog: Catalog, exact_max: int, budget: int = CACHE_BYTES) -> None:
        self.catalog, self.exact_max, self.budget = catalog, exact_max, budget
        self._entries: OrderedDict[tuple[str, str], Subset] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, collection: str, pattern: str, store: VectorStore) -> Subset:
        seq = self.catalog.last_seq()
        key = (collection, pattern)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit.seq == seq:
                self._entries.move_to_end(key)
                return hit
        ids = self.catalog.ids_under(collection, pattern)
        vectors = None
        if ids.size <= self.exact_max:
            found, vectors = store.lookup(ids)
            ids = ids[found]
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        subset = Subset(seq, ids, vectors)
        with self._lock:
            self._entries[key] = subset
            self._entries.move_to_end(key)
            while sum(e.nbytes for e in self._entries.values()) > self.budget and len(self._entries) > 1:
                self._entries.popitem(last=False)
        return subset

    def score(self, subset: Subset, query: QueryVector) -> tuple[np.ndarray, np.ndarray]:
        """(ids, exact scores) of the whole subset, best first: what exact_rescore would give."""
        assert subset.vectors is not None
        scores = query.score(subset.vectors)
        order = np.argsort(-scores, kind="stable")
        return subset.ids[order], scores[order]
