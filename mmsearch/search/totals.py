"""The total of a query's pages: how many items it ranks, counted in SQL, never from vectors.

That is the items of the collections it searches that pass its filters, less those it leaves out
(exclusions, liked and disliked items). The count follows the filter's matches, up to ``CAP``
(the counters the triggers keep, without a filter), and a user pages through one query: so the count before
exclusions is kept per (collections, filter) until the catalog changes (the change log or the
filters' generation moves), and the exclusions, a few ids, are counted by primary key each time.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from mmsearch.search.stamped_cache import StampedCache
from mmsearch.storage.catalog import Catalog
from mmsearch.storage.filters import Filter

MAX_ENTRIES = 256
CAP = 10_000  # matches counted at most: past it a total is a lower bound (a broad glob costs no more)


class TotalCache(StampedCache[tuple[int, bool]]):
    def __init__(self, catalog: Catalog, size: int = MAX_ENTRIES, cap: int = CAP) -> None:
        super().__init__(catalog)
        self.size, self.cap = size, cap

    def _full(self) -> bool:
        return len(self._entries) > self.size

    def count(self, collections: Sequence[str], f: Filter, exclude: Collection[int] = ()) -> tuple[int, bool]:
        """Items of ``collections`` that pass ``f``, less ``exclude``; and whether the count
        stopped at the cap (then it is a lower bound)."""
        key = tuple(sorted(collections))
        if not f:  # the triggers' counters: read afresh with the exclusions, one session, nothing to keep
            n, exact = self.catalog.count_items(key, f, exclude=sorted(exclude))
            return n, not exact
        counted, exact = self._get((key, f), lambda: self.catalog.count_items(key, f, limit=self.cap))
        left_out = self.catalog.count_items(key, f, among=sorted(exclude))[0] if exclude else 0
        return max(0, counted - left_out), not exact
