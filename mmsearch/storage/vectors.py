"""Exact vectors of one collection, kept beside the ANN index so that any index can be rebuilt
from them and ANN candidates can be rescored exactly.

Layout (all raw, little-endian, no header, so a crash can only leave a torn tail):

* ``{name}.f16``  n * dim float16 rows, in id order;
* ``{name}.ids``  n int64 ids, strictly increasing (row i holds id ``ids[i]``);
* ``{name}.lock`` an empty file, ``flock``-ed by the writer while it changes the two files
  (and shared-locked by readers while they map them), so a reader never maps a half-done
  append or compaction and never "repairs" an append that is still in flight;
* ``{name}.compact`` exists only between the two renames of a compaction; its presence on open
  means the compaction reached its commit point and is rolled forward.

Appends write the vectors file first and the ids file second, each fsync-ed, so after a crash
the ids file is never longer than the vectors file; the common prefix is the consistent state.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

try:  # POSIX advisory locks; elsewhere one process per catalog is assumed.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

_ID_BYTES = 8
_COMPONENT_BYTES = 2  # float16
_COPY_ROWS = 65_536  # rows per chunk when compacting, to bound memory
# float16 -> float32 by table (256 KB, stays in cache): twice as fast as astype, and the same bits
_F16_TO_F32 = np.arange(65_536, dtype=np.uint16).view(np.float16).astype(np.float32)


def _widen(half: np.ndarray) -> np.ndarray:
    # "wrap" skips take's bounds check on every index (about a fifth of its time): a uint16 index
    # into 65,536 entries never needs wrapping, so the result is the same
    return np.take(_F16_TO_F32, np.ascontiguousarray(half).view(np.uint16), mode="wrap")


@dataclass(frozen=True)
class _View:
    """One consistent mapping of both files. Swapped as a whole, so a reader thread never pairs
    the ids of one mapping with the vectors of another."""

    stamp: tuple[int, ...]
    ids: np.ndarray  # (n,) int64, read-only
    vectors: np.ndarray  # (n, dim) float16, read-only

    def rows(self, ids: np.ndarray) -> np.ndarray:
        stored = self.ids
        n = stored.shape[0]
        if n == 0:
            return np.full(ids.shape, -1, dtype=np.int64)
        first, last = int(stored[0]), int(stored[-1])
        if last - first == n - 1:  # strictly increasing ids spanning n values: no gaps, a row is id - first
            # (a batch's rescoring locates 200,000 ids: an offset, not a binary search each)
            return np.where((ids >= first) & (ids <= last), ids - first, -1).astype(np.int64, copy=False)
        pos = np.searchsorted(stored, ids)
        clipped = np.minimum(pos, stored.shape[0] - 1)
        return np.where(stored[clipped] == ids, clipped, -1).astype(np.int64)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """float32 copies of stored rows (row numbers from ``rows``, all present)."""
        return _widen(self.vectors[rows])


def _fsync_dir(directory: Path) -> None:
    """Make a create/rename durable (POSIX needs the directory entry synced too)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_durably(path: Path, data: bytes | memoryview, mode: str) -> None:
    with open(path, mode) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class VectorStore:
    """Append-only exact vectors of one collection: float16, memory-mapped, so any index can be
    rebuilt and ANN candidates reranked exactly.

    One writer process, any number of reader processes: readers see a consistent prefix and
    pick up appends and compactions on their next call. A reader (``writable=False``) never
    creates, repairs or locks exclusively: a store with no files reads as empty."""

    def __init__(self, directory: Path, name: str, dim: int, *, writable: bool = True) -> None:
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.directory = Path(directory)
        self.name = name
        self.dim = int(dim)
        self.writable = writable
        self._vec_path = self.directory / f"{name}.f16"
        self._ids_path = self.directory / f"{name}.ids"
        self._lock_path = self.directory / f"{name}.lock"
        self._marker_path = self.directory / f"{name}.compact"
        self._row_bytes = self.dim * _COMPONENT_BYTES
        self._view = _View((), np.empty(0, np.int64), np.empty((0, self.dim), np.float16))
        if not writable:
            self._current()
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._locked(exclusive=True):
            created = not self._vec_path.exists() or not self._ids_path.exists()
            self._recover()
            if created:
                _fsync_dir(self.directory)
            self._map()

    # -- locking and mapping -------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, *, exclusive: bool) -> Iterator[None]:
        if fcntl is None:  # pragma: no cover
            yield
            return
        try:  # readers open the lock read-only: they must work on a read-only catalog
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT if self.writable else os.O_RDONLY, 0o644)
        except FileNotFoundError:
            yield  # no writer ever created this store
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _file_stamp(self) -> tuple[int, ...]:
        """Identity and size of both files: any append or compaction changes it."""
        try:
            v, i = os.stat(self._vec_path), os.stat(self._ids_path)
        except FileNotFoundError:
            return (0, 0, 0, 0)
        return (v.st_ino, v.st_size, i.st_ino, i.st_size)

    def _recover(self) -> None:
        """Under the exclusive lock: finish a committed compaction, then cut a torn append."""
        if self._marker_path.exists():
            for final in (self._vec_path, self._ids_path):
                tmp = final.with_name(final.name + ".tmp")
                if tmp.exists():
                    os.replace(tmp, final)
            _fsync_dir(self.directory)
            self._marker_path.unlink()
            _fsync_dir(self.directory)
        for final in (self._vec_path, self._ids_path):  # an uncommitted compaction is dropped
            tmp = final.with_name(final.name + ".tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        for path in (self._vec_path, self._ids_path):
            path.touch(exist_ok=True)
        n = self._consistent_count()
        for path, size in ((self._vec_path, n * self._row_bytes), (self._ids_path, n * _ID_BYTES)):
            if path.stat().st_size != size:
                with open(path, "r+b") as f:
                    f.truncate(size)
                    f.flush()
                    os.fsync(f.fileno())

    def _consistent_count(self) -> int:
        try:
            return min(
                self._vec_path.stat().st_size // self._row_bytes,
                self._ids_path.stat().st_size // _ID_BYTES,
            )
        except FileNotFoundError:
            return 0

    def _map(self) -> _View:
        """(Re-)map the consistent prefix read-only. Caller holds a lock."""
        stamp = self._file_stamp()
        n = self._consistent_count()
        if n == 0:
            view = _View(stamp, np.empty(0, np.int64), np.empty((0, self.dim), np.float16))
        else:
            view = _View(
                stamp,
                np.memmap(self._ids_path, dtype="<i8", mode="r", shape=(n,)),
                np.memmap(self._vec_path, dtype="<f2", mode="r", shape=(n, self.dim)),
            )
        self._view = view
        return view

    def _current(self) -> _View:
        """The up-to-date view, picking up another process's appends/compactions (two stat
        calls when nothing changed)."""
        view = self._view
        if self._file_stamp() != view.stamp:
            with self._locked(exclusive=False):
                view = self._map()
        return view

    # -- reading -------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self._current().ids.shape[0])

    @property
    def max_id(self) -> int:
        ids = self._current().ids
        return int(ids[-1]) if ids.shape[0] else -1

    def ids(self) -> np.ndarray:
        """All stored ids, ascending (a read-only view, still valid after a compaction)."""
        return self._current().ids

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Row index of each id, -1 where absent."""
        return self._current().rows(np.asarray(ids, dtype=np.int64))

    def get(self, ids: np.ndarray) -> np.ndarray:
        """float32 rows for ``ids`` (any order, duplicates allowed); KeyError if any is absent."""
        found, vectors = self.lookup(ids)
        if not found.all():
            missing = np.asarray(ids, dtype=np.int64).reshape(-1)[~found]
            raise KeyError(f"{self.name}: {missing.size} id(s) not stored, e.g. {missing[:5].tolist()}")
        return vectors

    def mapping(self) -> _View:
        """The current mapping, for callers that look up many ids and read their rows in
        several steps (a batch's rescoring) yet must see one consistent version of the store."""
        return self._current()

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found mask per id, float32 vectors of the found ids in input order), from one
        mapping: what query-time code wants, since ids may be compacted away at any time."""
        view = self._current()
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        rows = view.rows(ids)
        found = rows >= 0
        rows = rows[found]
        n = view.ids.shape[0]
        if rows.size == n and n and rows[0] == 0 and (np.diff(rows) == 1).all():
            return found, _widen(view.vectors)  # whole store: sequential
        return found, _widen(view.vectors[rows])

    def nbytes(self) -> int:
        return int(self._current().ids.shape[0]) * (self._row_bytes + _ID_BYTES)

    def chunks(self, ids: np.ndarray, rows: int = _COPY_ROWS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, float32 vectors) of the stored ``ids`` in blocks of ``rows``: training and rebuilds
        stream the float16 store instead of holding a float32 copy of it."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        for start in range(0, ids.size, rows):
            found, vectors = self.lookup(ids[start:start + rows])
            yield ids[start:start + rows][found], vectors

    # -- writing (one writer process) ----------------------------------------------------

    def append(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Durably append rows; ids must be strictly increasing and above every stored id."""
        if not self.writable:
            raise RuntimeError("a read-only VectorStore was asked to append")
        ids = np.asarray(ids)
        vectors = np.asarray(vectors)
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError("ids must be a 1-D integer array")
        ids = ids.astype(np.int64, copy=False)
        if vectors.ndim != 2 or vectors.shape != (ids.shape[0], self.dim):
            raise ValueError(f"vectors must have shape ({ids.shape[0]}, {self.dim}), got {vectors.shape}")
        if ids.size == 0:
            return
        if ids.size > 1 and not (np.diff(ids) > 0).all():
            raise ValueError("ids must be strictly increasing")
        if not np.isfinite(vectors).all():
            raise ValueError("vectors contain NaN or infinity")
        f16 = np.ascontiguousarray(vectors, dtype="<f2")
        if not np.isfinite(f16).all():
            raise ValueError("vectors overflow float16")
        with self._locked(exclusive=True):
            self._recover()  # cut any torn tail left by a crashed writer before extending
            view = self._map()
            current_max = int(view.ids[-1]) if view.ids.shape[0] else -1
            if ids[0] <= current_max:
                raise ValueError(f"ids must be > max_id ({current_max}), got {int(ids[0])}")
            _write_durably(self._vec_path, memoryview(f16).cast("B"), "ab")
            _write_durably(self._ids_path, memoryview(np.ascontiguousarray(ids, dtype="<i8")).cast("B"), "ab")
            self._map()

    def compact(self, live_ids: np.ndarray) -> None:
        """Rewrite keeping only ``live_ids`` (others are dropped; unknown ids are ignored).

        New files are written beside the old ones, then a marker commits the change and both
        renames follow; a crash before the marker keeps the old files, after it rolls forward."""
        live = np.unique(np.asarray(live_ids, dtype=np.int64))
        with self._locked(exclusive=True):
            self._recover()
            view = self._map()
            keep = view.rows(live)
            keep = keep[keep >= 0]
            if keep.size == view.ids.shape[0]:
                return
            vec_tmp = self._vec_path.with_name(self._vec_path.name + ".tmp")
            ids_tmp = self._ids_path.with_name(self._ids_path.name + ".tmp")
            with open(vec_tmp, "wb") as fv, open(ids_tmp, "wb") as fi:
                for start in range(0, keep.size, _COPY_ROWS):
                    chunk = keep[start : start + _COPY_ROWS]
                    fv.write(np.ascontiguousarray(view.vectors[chunk]).tobytes())
                    fi.write(np.ascontiguousarray(view.ids[chunk]).tobytes())
                for f in (fv, fi):
                    f.flush()
                    os.fsync(f.fileno())
            _write_durably(self._marker_path, b"", "wb")
            _fsync_dir(self.directory)
            self._recover()  # performs the renames and removes the marker
            self._map()
