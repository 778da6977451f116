"""A reader's view of a catalog's indexes: the saved ANN index of each collection plus the change
log since it was saved, applied in memory. Readers never write anything.

Per collection the view is an immutable snapshot, swapped whole, so queries in other threads
never lock: ``base`` (the saved FAISS index, loaded once per file version, by one thread), the
vectors added since (``delta``, searched exactly: small by construction, the writer merges it
into the base once it grows), and the ids removed since (``dead``, filtered out of results).

A missing or damaged index never gives silently empty results: the snapshot then searches the
collection's live ids exactly over the float16 store until the writer has rebuilt the index.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from mmsearch.search.index_files import IndexFiles
from mmsearch.storage.catalog import Catalog
from mmsearch.storage.stores import VectorStores
from mmsearch.storage.vectors import VectorStore

if TYPE_CHECKING:  # loaded with the first index: ``stats`` never imports faiss
    from mmsearch.search.ann import AnnIndex

log = logging.getLogger(__name__)

MAX_BLOCKS = 32  # delta blocks before they are joined into one (one block per change otherwise)
EXACT_BLOCK = 65_536  # rows scored at a time when searching without an index


@dataclass(frozen=True)
class _Snapshot:
    stamp: tuple[int, int, int]  # index file (inode, size, mtime) when loaded; zeros when absent
    base: AnnIndex | None
    exact_ids: np.ndarray | None  # sorted live ids at ``applied`` when there is no usable base
    applied: int  # change-log position this snapshot holds everything up to
    delta: tuple[tuple[np.ndarray, np.ndarray], ...] = ()  # (ids, float32 vectors) added since
    dead: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # removed since, sorted

    @property
    def degraded(self) -> bool:
        return self.base is None and self.exact_ids is not None and self.exact_ids.size > 0


class LiveIndex:
    """One collection in one process."""

    def __init__(self, collection: str, catalog: Catalog, store: VectorStore, files: IndexFiles) -> None:
        self.collection, self.catalog, self.store, self.files = collection, catalog, store, files
        self._snap: _Snapshot | None = None
        self._lock = threading.Lock()
        self._ids_cache: tuple[int, np.ndarray] | None = None

    # -- keeping up -----------------------------------------------------------------------------

    def refresh(self) -> None:
        """Pick up a new index file and the log since; one thread does it, others keep querying
        the snapshot they have (or wait for the first one)."""
        snap = self._snap
        if snap is not None and not self._lock.acquire(blocking=False):
            return
        if snap is None:
            self._lock.acquire()
        try:
            self._snap = self._advance(self._snap)
        finally:
            self._lock.release()

    def _advance(self, snap: _Snapshot | None) -> _Snapshot:
        stamp = self._stamp()
        if snap is None or stamp != snap.stamp:
            snap = self._load(stamp)
        floor, last, added, removed = self.catalog.changes_since(self.collection, snap.applied)
        if floor > snap.applied:  # the writer merged past us and truncated the log
            snap = self._load(self._stamp())
            floor, last, added, removed = self.catalog.changes_since(self.collection, snap.applied)
            if floor > snap.applied:  # an index file older than the log (copied or restored over it)
                snap = self._exact(snap.stamp)  # cannot catch up: exact until the writer rebuilds it
                floor, last, added, removed = self.catalog.changes_since(self.collection, snap.applied)
        if last == snap.applied:
            return snap
        return self._apply(snap, last, added, removed)

    def _stamp(self) -> tuple[int, int, int]:
        try:
            st = os.stat(self.files.index_path(self.collection))
            return (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            return (0, 0, 0)

    def _load(self, stamp: tuple[int, int, int]) -> _Snapshot:
        from mmsearch.search.ann import AnnIndex

        base = AnnIndex.load(self.files.index_path(self.collection)) if stamp != (0, 0, 0) else None
        if base is not None:
            nprobe = self.catalog.settings.nprobe  # the setting wins over the nprobe saved with the plan
            if nprobe and base.plan.kind == "ivfpq":
                base.plan = dataclasses.replace(base.plan, nprobe=max(1, min(int(nprobe), base.plan.nlist)))
            return _Snapshot(stamp, base, None, base.seq)
        return self._exact(stamp)

    def _exact(self, stamp: tuple[int, int, int]) -> _Snapshot:
        """No usable index: exact search over every live id until the writer rebuilds it."""
        applied = self.catalog.last_seq()
        live = self.catalog.live_ids(self.collection)
        if live.size:
            log.warning("%s: no usable ANN index; searching its %d vectors exactly until `mmsearch index` "
                        "rebuilds it", self.collection, live.size)
        return _Snapshot(stamp, None, live, applied)

    def _apply(self, snap: _Snapshot, last: int, added: np.ndarray, removed: np.ndarray) -> _Snapshot:
        added = np.setdiff1d(added, removed)  # ids are never reused: added-then-removed is dead
        if snap.base is None:
            exact = np.setdiff1d(np.union1d(snap.exact_ids, added), removed)
            return _Snapshot(snap.stamp, None, exact, last)
        # removed ids leave the delta blocks (whose top-k must not be spent on them) and are noted
        # as dead only where the base holds them, so ntotal and the base's over-fetch stay exact
        delta = tuple(_without(block, removed) for block in snap.delta) if removed.size else snap.delta
        dead = np.union1d(snap.dead, removed[_member(removed, snap.base.ids())])
        if added.size:
            found, vectors = self.store.lookup(added)
            delta = delta + ((added[found], vectors),)
        if len(delta) > MAX_BLOCKS:
            delta = ((np.concatenate([d[0] for d in delta]), np.concatenate([d[1] for d in delta])),)
        return _Snapshot(snap.stamp, snap.base, None, last, delta, dead)

    # -- querying -------------------------------------------------------------------------------

    def _current(self) -> _Snapshot:
        if self._snap is None:
            self.refresh()
        assert self._snap is not None
        return self._snap

    @property
    def ntotal(self) -> int:
        snap = self._current()
        if snap.base is None:
            return int(snap.exact_ids.size) if snap.exact_ids is not None else 0
        return snap.base.ntotal + sum(d[0].size for d in snap.delta) - int(snap.dead.size)

    @property
    def degraded(self) -> bool:
        return self._current().degraded

    @property
    def approximate(self) -> bool:
        """Whether its scores are estimates (IVF-PQ codes) rather than exact inner products."""
        base = self._current().base
        return base is not None and base.plan.kind != "flat"

    def ids(self) -> np.ndarray:
        """Every live id (sorted); computed once per snapshot, for sampling."""
        snap = self._current()
        if self._ids_cache is not None and self._ids_cache[0] == id(snap):
            return self._ids_cache[1]
        if snap.base is None:
            ids = snap.exact_ids if snap.exact_ids is not None else np.empty(0, np.int64)
        else:
            parts = [snap.base.ids()] + [d[0] for d in snap.delta]
            ids = np.setdiff1d(np.concatenate(parts), snap.dead)
        self._ids_cache = (id(snap), ids)
        return ids

    def search(self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None,
               *, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product over base + delta - dead: (scores (nq, k), ids (nq, k), -1 padded)."""
        snap = self._current()
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = int(k)
        allowed = None if allowed_ids is None else np.unique(np.asarray(allowed_ids, dtype=np.int64))
        parts_s: list[np.ndarray] = []
        parts_i: list[np.ndarray] = []
        if snap.base is not None:
            extra = int(min(snap.dead.size, snap.base.ntotal))
            s, i = snap.base.search(q, k + extra, allowed_ids=allowed, threads=threads)
            parts_s.append(s)
            parts_i.append(i)
            blocks = snap.delta
        else:
            ids = snap.exact_ids if snap.exact_ids is not None else np.empty(0, np.int64)
            blocks = tuple((ids[j:j + EXACT_BLOCK], None) for j in range(0, ids.size, EXACT_BLOCK))
        for ids, vectors in blocks:
            if allowed is not None:
                keep = np.isin(ids, allowed, assume_unique=True)
                ids = ids[keep]
                vectors = vectors[keep] if vectors is not None else None
            if vectors is None:
                found, vectors = self.store.lookup(ids)
                ids = ids[found]
            if ids.size == 0:
                continue
            scores = q @ vectors.T
            top = min(k, ids.size)
            pick = np.argpartition(-scores, top - 1, axis=1)[:, :top]
            parts_s.append(np.take_along_axis(scores, pick, axis=1))
            parts_i.append(ids[pick])
        return _merge(parts_s, parts_i, snap.dead, q.shape[0], k)


def _without(block: tuple[np.ndarray, np.ndarray], removed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids, vectors = block
    keep = ~np.isin(ids, removed)
    return block if keep.all() else (ids[keep], vectors[keep])


def _member(ids: np.ndarray, sorted_ids: np.ndarray) -> np.ndarray:
    """Which ``ids`` are in ``sorted_ids``, by binary search (no sort of the base's ids)."""
    if sorted_ids.size == 0:
        return np.zeros(ids.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), sorted_ids.size - 1)
    return sorted_ids[pos] == ids


def _merge(parts_s: list[np.ndarray], parts_i: list[np.ndarray], dead: np.ndarray, nq: int,
           k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = np.full((nq, max(k, 0)), -np.inf, dtype=np.float32)
    labels = np.full((nq, max(k, 0)), -1, dtype=np.int64)
    if not parts_s or k <= 0:
        return scores, labels
    s = np.concatenate(parts_s, axis=1)
    i = np.concatenate(parts_i, axis=1)
    bad = (i < 0) | (np.isin(i, dead) if dead.size else False)
    s = np.where(bad, -np.inf, s)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    top_s = np.take_along_axis(s, order, axis=1)
    top_i = np.take_along_axis(i, order, axis=1)
    valid = np.isfinite(top_s)
    n = top_s.shape[1]
    scores[:, :n] = np.where(valid, top_s, -np.inf)
    labels[:, :n] = np.where(valid, top_i, -1)
    return scores, labels


class LiveIndexes:
    """The reader's indexes and stores of one catalog. ``refresh`` costs one SQL lookup when
    nothing changed (the log's last position) plus a stat per loaded index."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.stores = VectorStores(catalog.vectors_dir, writable=False)
        self.files = IndexFiles(catalog.indexes_dir)
        self._indexes: dict[str, LiveIndex] = {}
        self._lock = threading.Lock()
        self._seen_seq = -1

    def store(self, collection: str, dim: int) -> VectorStore:
        return self.stores.get(collection, dim)

    def stored_collections(self) -> list[str]:
        return self.catalog.collections()

    def index(self, collection: str) -> LiveIndex | None:
        dims = {name: dim for name, (_, dim) in self.catalog.spaces().items()}
        dim = dims.get(collection.split(".")[0])
        if dim is None:
            return None
        with self._lock:
            live = self._indexes.get(collection)
            if live is None or live.store.dim != dim:
                live = self._indexes[collection] = LiveIndex(collection, self.catalog, self.store(collection, dim),
                                                             self.files)
        live.refresh()
        return live

    def refresh(self) -> None:
        """Bring loaded collections up to the log (new queries refresh what they open)."""
        seq = self.catalog.last_seq()
        stale = seq != self._seen_seq
        self._seen_seq = seq
        for live in list(self._indexes.values()):
            if stale or live._snap is None or live._stamp() != live._snap.stamp:
                live.refresh()

    def describe(self) -> dict[str, dict]:
        """Figures for ``stats``, from the notes beside the index files and file sizes: nothing is
        loaded, scanned or serialised."""
        dims = {name: dim for name, (_, dim) in self.catalog.spaces().items()}
        counts = self.catalog.counts()["embeddings"]
        out: dict[str, dict] = {}
        for collection in sorted(set(self.stores.collections()) | set(counts)):
            dim = dims.get(collection.split(".")[0])
            if dim is None:
                continue
            note = self.files.read_note(collection)
            intact = self.files.looks_intact(collection)
            index = None
            if note is not None and intact:
                plan = note.get("plan", {})
                index = {"kind": plan.get("kind"), "factory": note.get("factory"), "ntotal": note.get("ntotal"),
                         "nlist": plan.get("nlist"), "m": plan.get("m"), "nbits": plan.get("nbits"),
                         "nprobe": plan.get("nprobe"), "trained_n": note.get("trained_n"),
                         "bytes": note.get("bytes"), "seq": note.get("seq"),
                         "bytes_per_vector": note["bytes"] / note["ntotal"] if note.get("ntotal") else 0.0}
            stored = len(self.stores.get(collection, dim))
            out[collection] = {"index": index, "live": counts.get(collection, 0),
                               "vectors": {"stored": stored, "bytes": stored * (dim * 2 + 8), "dtype": "float16"}}
        return out
