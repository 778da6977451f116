"""Values worked out from the catalog and kept while it stays as it was: a filter's selection
(search/subsets.py), a query's count (search/totals.py). An entry holds while the catalog's filter
stamp (change log position, filters' generation) is the one it was made at; once the cache is full
the least recently used go first."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from mmsearch.storage.catalog import Catalog

V = TypeVar("V")
Stamp = tuple[int, int]


class StampedCache(Generic[V]):
    """Subclasses say when the cache is full (``_full``) and ask for values with ``_get``."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._entries: OrderedDict[Hashable, tuple[Stamp, V]] = OrderedDict()
        self._lock = threading.Lock()

    def _full(self) -> bool:
        raise NotImplementedError

    def _get(self, key: Hashable, make: Callable[[], V]) -> V:
        """The value kept for ``key`` at the catalog's present stamp, or ``make()``'s, kept."""
        stamp = self.catalog.filter_stamp()
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[0] == stamp:
                self._entries.move_to_end(key)
                return hit[1]
        value = make()
        with self._lock:
            self._entries[key] = (stamp, value)
            self._entries.move_to_end(key)
            while len(self._entries) > 1 and self._full():
                self._entries.popitem(last=False)
        return value
