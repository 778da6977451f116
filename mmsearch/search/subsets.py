"""The vectors a filter selects (path, date, camera, place, size, duration, extension, tags),
kept between queries.

A filter selecting few vectors is scored exactly over all of them. Finding them (index range
scans joined to their vectors, storage/filters.py) and reading them from the float16 store cost
more than scoring them, and a user tends to run several queries with one filter, so the
selection is kept, as unit float32 rows, until the catalog changes (the change log or the
filters' generation moves: tags, moved files) or the cache's byte budget pushes it out (least
recently used first). A broad filter is remembered as broad: its matches are never fetched, the
search's candidates are checked instead."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmsearch.search.scoring import QueryVector
from mmsearch.search.stamped_cache import StampedCache
from mmsearch.storage.catalog import Catalog
from mmsearch.storage.filters import Filter
from mmsearch.storage.vectors import VectorStore

CACHE_BYTES = 128 * 2**20


@dataclass(frozen=True)
class Subset:
    filter: Filter
    ids: np.ndarray | None  # sorted embedding ids the filter selects; None: broad, checked after the search
    vectors: np.ndarray | None  # their unit float32 rows when few enough to score exactly

    @property
    def broad(self) -> bool:
        return self.ids is None

    @property
    def nbytes(self) -> int:
        return int((self.ids.nbytes if self.ids is not None else 0)
                   + (self.vectors.nbytes if self.vectors is not None else 0))


class SubsetCache(StampedCache[Subset]):
    def __init__(self, catalog: Catalog, exact_max: int, budget: int = CACHE_BYTES) -> None:
        super().__init__(catalog)
        self.exact_max, self.budget = exact_max, budget

    def _full(self) -> bool:
        return sum(subset.nbytes for _, subset in self._entries.values()) > self.budget

    def get(self, collection: str, f: Filter, store: VectorStore, cap: int | None = None) -> Subset:
        """The filter's selection in a collection; broad (``ids`` None) when every condition of it
        matches more than ``cap`` rows. ``cap`` None: always the selection, however large."""

        def select() -> Subset:
            ids = self.catalog.select_ids(collection, f, cap)
            vectors = None
            if ids is not None and ids.size <= self.exact_max:
                found, vectors = store.lookup(ids)
                ids = ids[found]
                vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            return Subset(f, ids, vectors)

        return self._get((collection, f, cap is None), select)

    def score(self, subset: Subset, query: QueryVector) -> tuple[np.ndarray, np.ndarray]:
        """(ids, exact scores) of the whole subset, best first: what exact_rescore would give."""
        assert subset.vectors is not None and subset.ids is not None
        scores = query.score(subset.vectors)  # one thread, as rerank.dot_rows
        order = np.argsort(-scores, kind="stable")
        return subset.ids[order], scores[order]
