"""Index upkeep, run by the writer only: keeps each collection's saved ANN index in step with
the change log, at a cost that follows the change.

* Nothing to do while the change log since the saved index is small: readers apply it
  themselves (search/live.py), so adding or deleting one item touches no index file.
* **merge**: once the log holds more than ``merge_min_changes`` (or ``merge_fraction`` of the
  index), it is folded into the saved index and the log is truncated.
* **rebuild**: when the plan changes (flat <-> IVF-PQ, HNSW coarse quantiser), the collection grew
  or shrank ``retrain_growth``-fold since training (nlist leaves the guideline range), or the
  index file is missing, damaged or replaced. Built from the float16 store in blocks, beside
  ingest and queries; changes that land meanwhile are applied before the atomic swap.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
from sqlalchemy import func, select

from mmsearch.search.ann import AnnIndex
from mmsearch.search.index_files import IndexFiles
from mmsearch.search.index_plan import IndexPlan, plan_index
from mmsearch.settings import Settings
from mmsearch.storage.catalog import Catalog
from mmsearch.storage.models import Change
from mmsearch.storage.stores import VectorStores

log = logging.getLogger(__name__)

Action = Literal["merge", "rebuild"]
COMPACT_MIN = 1_000  # below this many stored vectors, dead ones cost nothing worth a rewrite


class IndexUpkeep:
    def __init__(self, catalog: Catalog, stores: VectorStores, files: IndexFiles, settings: Settings) -> None:
        self.catalog, self.stores, self.files, self.settings = catalog, stores, files, settings

    def collections(self) -> list[str]:
        """Collections with vectors in SQL, plus any with an index file left to clean up."""
        noted = {p.name[: -len(".faiss.npz")] for p in self.files.folder.glob("*.faiss.npz")} \
            if self.files.folder.is_dir() else set()
        return sorted(set(self.catalog.collections()) | noted)

    def due(self, collection: str, *, compact: bool = True) -> Action | None:
        """What a collection needs now, decided from the note, the counters, the store's size and
        a count of the log since the saved index: no index is read. ``compact``: a store that is
        mostly dead vectors is rewritten (with a rebuild: it needs every live id)."""
        exists = self.files.index_path(collection).exists()
        if collection.split(".")[0] not in self.catalog.spaces():
            return "rebuild" if exists else None  # the rebuild removes what a dropped space left
        n_live = self.catalog.counts()["embeddings"].get(collection, 0)
        note = self.files.read_note(collection)
        if not self.files.looks_intact(collection) or note is None:
            return "rebuild" if n_live or exists else None
        plan = IndexPlan(**note["plan"])
        dim = self._dim(collection)
        if compact and len(self.stores.get(collection, dim)) > max(COMPACT_MIN, 2 * n_live):
            return "rebuild"
        planned = plan_index(n_live, dim, self.settings)
        if (planned.kind, planned.coarse) != (plan.kind, plan.coarse):
            return "rebuild"
        trained = max(int(note.get("trained_n", 0)), 1)
        growth = self.settings.retrain_growth
        if plan.kind == "ivfpq" and (n_live >= growth * trained or n_live * growth <= trained):
            return "rebuild"
        pending = self._pending(collection, int(note.get("seq", 0)))
        threshold = max(self.settings.merge_min_changes, self.settings.merge_fraction * int(note.get("ntotal", 0)))
        return "merge" if pending >= threshold else None

    def run(self, collection: str, action: Action, *, compact: bool = True) -> None:
        if action == "merge" and self._merge(collection):
            return
        self._rebuild(collection, compact=compact)

    # -- the two actions ------------------------------------------------------------------------

    def _merge(self, collection: str) -> bool:
        """Fold the log into the saved index; False when the index must be rebuilt instead."""
        idx = AnnIndex.load(self.files.index_path(collection))
        if idx is None:
            return False
        floor, last, added, removed = self.catalog.changes_since(collection, idx.seq)
        if floor > idx.seq:
            return False
        self._apply(collection, idx, added, removed)
        idx.seq = max(idx.seq, last)
        self._save(collection, idx)
        return True

    def _rebuild(self, collection: str, *, compact: bool) -> None:
        space = collection.split(".")[0]
        if space not in self.catalog.spaces():
            self.files.remove(collection)
            return
        seq0 = self.catalog.last_seq()  # changes after this are applied once the build is done
        live = self.catalog.live_ids(collection)
        store = self.stores.get(collection, self._dim(collection))
        plan = plan_index(int(live.size), store.dim, self.settings)
        log.info("building %s index of %s: %d vectors", plan.factory, collection, live.size)
        idx = AnnIndex.build(store, live, plan, seq=seq0, use_gpu=self.settings.faiss_gpu,
                             threads=self.settings.resolved_build_threads())
        lost = np.setdiff1d(live, idx.ids(), assume_unique=True)
        if lost.size:
            self.catalog.mark_lost(collection, lost.tolist())
        _, last, added, removed = self.catalog.changes_since(collection, seq0)
        self._apply(collection, idx, added, removed)
        idx.seq = max(seq0, last)
        if compact and len(store) > max(COMPACT_MIN, 2 * live.size):  # mostly dead vectors
            self.catalog.raise_id_floor(store.max_id)  # their ids stay used
            store.compact(idx.ids())
        self._save(collection, idx)

    def _apply(self, collection: str, idx: AnnIndex, added: np.ndarray, removed: np.ndarray) -> None:
        """Apply net changes: an id added and removed within the log is dead (ids are never reused)."""
        idx.remove(removed)
        added = np.setdiff1d(added, removed)
        lost = idx.add_from(self.stores.get(collection, self._dim(collection)), added)
        if lost.size:
            self.catalog.mark_lost(collection, lost.tolist())

    def _save(self, collection: str, idx: AnnIndex) -> None:
        idx.save(self.files.index_path(collection))
        self.files.write_note(collection, idx.meta())
        self.catalog.truncate_changes(collection, idx.seq)

    def _pending(self, collection: str, seq: int) -> int:
        with self.catalog.sessions() as s:
            return int(s.scalar(select(func.count()).select_from(Change)
                                .where(Change.collection == collection, Change.seq > seq)) or 0)

    def _dim(self, collection: str) -> int:
        return self.catalog.spaces()[collection.split(".")[0]][1]
