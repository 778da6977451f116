"""The one writer of a catalog. Ingest commits, deletes, moves, model records, index upkeep,
compaction and retraining all go through it; readers (queries, ``stats``) never write.

It holds the catalog's write lock for its whole life, so a second writer process is refused (or
waits ``settings.lock_timeout`` seconds) with a message naming the holder, including while the
catalog is first created. Opening it is where recovery happens: schema migrations (atomic),
temp files of interrupted saves, torn vector appends, and damaged indexes or lost vectors found
by cheap checks. Within a process, one write runs at a time (a mutex, like Datasette's single
write thread); index upkeep runs in one background thread beside ingest and queries.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmsearch.errors import MMSearchError
from mmsearch.media.metadata import FileFacts
from mmsearch.search.index_files import IndexFiles
from mmsearch.search.upkeep import Action, IndexUpkeep
from mmsearch.settings import Settings
from mmsearch.storage.catalog import Catalog, FileRecord
from mmsearch.storage.lock import WriteLock
from mmsearch.storage.stores import VectorStores
from mmsearch.storage.vectors import VectorStore

log = logging.getLogger(__name__)


class CatalogWriter:
    def __init__(self, settings: Settings) -> None:
        root = Path(settings.catalog).expanduser().resolve()
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MMSearchError(f"cannot use {root} as a catalog folder: {e.strerror or e}") from e
        self.settings = settings
        self.lock = WriteLock(root)
        self.lock.acquire(timeout=settings.lock_timeout)
        try:
            self.catalog = Catalog(settings, writable=True)
            self.stores = VectorStores(self.catalog.vectors_dir, writable=True)
            self.files = IndexFiles(self.catalog.indexes_dir)
            self.files.folder.mkdir(parents=True, exist_ok=True)
            self.upkeep_jobs = IndexUpkeep(self.catalog, self.stores, self.files, settings)
            self._mutex = threading.RLock()
            self._background: threading.Thread | None = None
            self._background_error: BaseException | None = None
            self.recovered = self.recover()
        except BaseException:
            self.lock.release()
            raise

    def close(self) -> None:
        self.wait_for_upkeep()
        self.catalog.close()
        self.lock.release()

    def __enter__(self) -> "CatalogWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- recovery -------------------------------------------------------------------------------

    def recover(self) -> dict[str, Any]:
        """Cheap checks on every open (stats and a few indexed SQL lookups, never a scan):
        interrupted saves are cleaned up, torn appends cut, and live rows whose vectors are gone
        have their files marked so the next scan embeds them again."""
        report: dict[str, Any] = {"temp_files": self.files.clean_temp_files(), "lost_vectors": {}}
        spaces = self.catalog.spaces()
        for collection in self.catalog.collections():
            space = spaces.get(collection.split(".")[0])
            if space is None:
                continue
            store = self.stores.get(collection, space[1])  # opening cuts a torn append
            if store.max_id < self.catalog.max_live_id(collection):
                lost = self.lost_vectors(collection, store)
                report["lost_vectors"][collection] = int(lost.size)
        return report

    def lost_vectors(self, collection: str, store: VectorStore) -> np.ndarray:
        """Live ids with no stored vector; their files are marked for re-embedding."""
        live = self.catalog.live_ids(collection)
        lost = live[store.rows(live) < 0]
        if lost.size:
            with self._mutex:
                self.catalog.mark_lost(collection, lost.tolist())
        return lost

    # -- writes ---------------------------------------------------------------------------------

    def store(self, collection: str, dim: int) -> VectorStore:
        return self.stores.get(collection, dim)

    def next_embedding_id(self) -> int:
        return max(self.catalog.max_embedding_id(), self.stores.max_stored_id()) + 1

    def append_vectors(self, collection: str, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Vectors are durable before any row points at them (the ingest's order of writes)."""
        self.stores.get(collection, int(vectors.shape[1])).append(ids, vectors)

    def commit_files(self, records: Sequence[FileRecord]) -> None:
        with self._mutex:
            self.catalog.commit_files(records)

    def delete_files(self, paths: Iterable[str]) -> int:
        with self._mutex:
            return self.catalog.delete_files(paths)

    def delete_item(self, item_id: int) -> None:
        """An SQL delete: the change log carries it to readers at once, and no index file is
        touched, so it costs milliseconds at any catalog size and never blocks a query."""
        with self._mutex:
            self.catalog.delete_item(item_id)

    def set_tags(self, item_id: int, add: Sequence[str], remove: Sequence[str],
                 values: Mapping[str, str] | None) -> list[str]:
        """Tags are SQL rows: a trigger moves the filters' generation, so cached selections see it."""
        with self._mutex:
            return self.catalog.set_tags(item_id, add, remove, values)

    def record_run(self, run: Mapping[str, object]) -> None:
        with self._mutex:
            self.catalog.record_run(run)

    def fill_facts(self, rows: Sequence[tuple[int, str, int, FileFacts]]) -> None:
        """Facts read from unchanged files' headers (see Catalog.fill_facts): SQL only."""
        with self._mutex:
            self.catalog.fill_facts(rows)

    def move_file(self, old_path: str, new_path: str, root_id: int, mtime_ns: int) -> None:
        with self._mutex:
            self.catalog.move_file(old_path, new_path, root_id, mtime_ns)

    def ensure_root(self, path: Path) -> int:
        with self._mutex:
            return self.catalog.ensure_root(path)

    def record_space(self, name: str, spec: str, dim: int, kinds: Sequence[str], *, reembed: bool) -> bool:
        """Record a space's model (see Catalog.ensure_space); a re-embed also drops the old model's
        vectors and indexes, whose ids stay used."""
        with self._mutex:
            previous = self.catalog.spaces().get(name)
            redo = self.catalog.ensure_space(name, spec, dim, kinds, reembed=reembed)
            if previous is not None and previous != (spec, dim):
                self.wait_for_upkeep()
                self.stores.remove_space(name)
                for collection in [c for c in self.upkeep_jobs.collections() if c.startswith(name + ".")]:
                    self.files.remove(collection)
            return redo

    # -- index upkeep ---------------------------------------------------------------------------

    def due(self, *, compact: bool = True) -> list[tuple[str, Action]]:
        return [(c, a) for c in self.upkeep_jobs.collections() if (a := self.upkeep_jobs.due(c, compact=compact))]

    def upkeep(self, *, wait: bool, compact: bool = True) -> bool:
        """Start the merges and rebuilds that are due in the background thread (unless one
        runs); with ``wait``, finish them first. ``compact=False`` during an ingest: vectors of
        files not yet committed look dead there. True if any work was started."""
        if self._background is not None and self._background.is_alive():
            if not wait:
                return False
            self.wait_for_upkeep()
        due = self.due(compact=compact)
        if not due:
            return False
        self._background = threading.Thread(target=self._run_upkeep, args=(due, compact),
                                            name="mmsearch-upkeep", daemon=True)
        self._background.start()
        if wait:
            self.wait_for_upkeep()
        return True

    def _run_upkeep(self, due: list[tuple[str, Action]], compact: bool) -> None:
        try:
            for collection, action in due:
                self.upkeep_jobs.run(collection, action, compact=compact)
        except BaseException as e:  # noqa: BLE001 - reported by wait_for_upkeep in the caller's thread
            log.exception("index upkeep failed")
            self._background_error = e

    def wait_for_upkeep(self) -> None:
        if self._background is not None:
            self._background.join()
            self._background = None
        if self._background_error is not None:
            err, self._background_error = self._background_error, None
            raise MMSearchError(f"index upkeep failed: {err}") from err
