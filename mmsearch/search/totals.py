"""The total of a query's pages: how many items it ranks, counted in SQL, never from vectors.

That is the items of the collections it searches that pass its filters, less those it leaves out
(exclusions, liked and disliked items). The count follows the filter's matches (the counters the
triggers keep, without a filter), and a user pages through one query: so the count before
exclusions is kept per (collections, filter) until the catalog changes (the change log or the
filters' generation moves), and the exclusions, a few ids, are counted by primary key each time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Collection, Sequence

from mmsearch.storage.catalog import Catalog
from mmsearch.storage.filters import Filter

MAX_ENTRIES = 256


class TotalCache:
    def __init__(self, catalog: Catalog, size: int = MAX_ENTRIES) -> None:
        self.catalog, self.size = catalog, size
        self._entries: OrderedDict[tuple[tuple[str, ...], Filter], tuple[tuple[int, int], int]] = OrderedDict()
        self._lock = threading.Lock()

    def count(self, collections: Sequence[str], f: Filter, exclude: Collection[int] = ()) -> int:
        """Items of ``collections`` that pass ``f``, less ``exclude``."""
        stamp = self.catalog.filter_stamp()
        key = (tuple(sorted(collections)), f)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[0] == stamp:
                self._entries.move_to_end(key)
        if hit is None or hit[0] != stamp:
            hit = (stamp, self.catalog.count_items(key[0], f))
            with self._lock:
                self._entries[key] = hit
                self._entries.move_to_end(key)
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
        left_out = self.catalog.count_items(key[0], f, among=sorted(exclude)) if exclude else 0
        return max(0, hit[1] - left_out)
