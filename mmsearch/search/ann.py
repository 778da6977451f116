"""Approximate nearest-neighbour index of one collection (FAISS, inner product on L2-normalised
vectors, i.e. cosine). FAISS ids are the SQL ids. The exact float16 vectors live in the
collection's VectorStore, so this index is disposable: it can always be rebuilt, and its
candidates are rescored exactly (see search/rerank.py), which is why a compact PQ code is enough.
What to build is search/index_plan.py's choice; when to merge or rebuild is search/upkeep.py's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from mmsearch.cpus import available_cpus, intra_op_threads
from mmsearch.search.index_plan import IndexPlan
from mmsearch.storage.vectors import VectorStore

log = logging.getLogger(__name__)

SAMPLE_SEED = 1234  # fixed so a rebuild of the same data gives the same index
_FORMAT = 2
_BITMAP_MAX_ID = 1 << 24  # filter bitmap <= 2 MiB
SMALL_TRAIN = 20_000  # below this many training vectors, train single-threaded
ADD_CHUNK = 16_384  # rows per float32 block when adding from a float16 store (32 MiB at 512-d)
HNSW_EF_SEARCH = 16  # faiss's default efSearch, the floor for an HNSW coarse quantiser


def _gpu_available(use_gpu: bool) -> bool:
    if not use_gpu:
        return False
    try:
        return faiss.get_num_gpus() > 0 and hasattr(faiss, "index_cpu_to_all_gpus")
    except Exception:  # faiss-cpu builds may lack the GPU entry points entirely
        return False


def _float16_quantizer(ivf: faiss.IndexIVF) -> None:
    """Swap the IVF's float32 flat quantiser for a float16 copy of the same centroids: half the
    fixed memory, the same single-query coarse search speed. Ownership moves so that neither
    quantiser leaks: the IVF frees the new one, Python frees the old one."""
    old = ivf.quantizer
    centroids = old.reconstruct_n(0, old.ntotal)
    q16 = faiss.IndexScalarQuantizer(ivf.d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    q16.add(centroids)
    q16.this.disown()
    ivf.quantizer = q16
    ivf.own_fields = True
    old.this.acquire()


faiss.omp_set_num_threads(available_cpus())  # OpenMP counts the affinity's cores, not the cgroup quota


@contextlib.contextmanager
def _omp_threads(threads: int | None) -> Iterator[None]:
    """Cap faiss's OpenMP threads for a block (None: the process's intra-op threads, see
    mmsearch/cpus.py). The setting is per calling thread in OpenMP, so other threads (another
    request, the indexer) are unaffected; it is restored on exit."""
    threads = threads or intra_op_threads()
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(max(1, int(threads)))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _selector(allowed: np.ndarray) -> faiss.IDSelector:
    """faiss selector for sorted ids: a bitmap (one bit per id, cheapest membership test) while
    ids are small enough for it to stay a few MB, else a hash set."""
    if allowed[0] >= 0 and allowed[-1] < _BITMAP_MAX_ID:
        bits = np.zeros(int(allowed[-1]) + 1, dtype=bool)
        bits[allowed] = True
        return faiss.IDSelectorBitmap(np.packbits(bits, bitorder="little"))
    return faiss.IDSelectorBatch(allowed)


def _as_f32(x: np.ndarray, dim: int) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x.reshape(1, -1)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"expected vectors of dim {dim}, got shape {x.shape}")
    return x


def _as_ids(ids: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(ids).reshape(-1), dtype=np.int64)


class AnnIndex:
    """One FAISS index plus the sorted ids it holds (kept here so membership checks and
    merges of the change log never have to walk the inverted lists).

    search() may run from many threads at once; add/add_from/remove must not run concurrently
    with anything else on the same object: change a copy (load) and swap it in."""

    def __init__(self, index: faiss.Index, ids: np.ndarray, plan: IndexPlan, trained_n: int, seq: int = 0) -> None:
        self._index = index
        self._ids = np.sort(_as_ids(ids))
        self.plan = plan
        self.trained_n = int(trained_n)
        self.seq = int(seq)  # the change-log position this index holds everything up to
        self.dim = int(index.d)
        self._ivf = faiss.downcast_index(faiss.extract_index_ivf(index)) if plan.kind == "ivfpq" else None

    # -- construction --------------------------------------------------------------------

    @classmethod
    def build(cls, store: VectorStore, ids: np.ndarray, plan: IndexPlan, *, seq: int = 0,
              use_gpu: bool = False, threads: int | None = None) -> AnnIndex:
        """Train (for IVF-PQ: on a fixed-seed sample of plan.train_size rows) and add ``ids``,
        reading the float16 store in blocks: memory stays at the index plus the training sample
        (capped by settings.build_memory_mb), never a float32 copy of the store.

        With ``use_gpu`` and a GPU visible to faiss, k-means runs on the GPU; the index itself
        stays a CPU index, so what is saved loads anywhere. ``threads`` caps OpenMP threads, so
        a rebuild beside live queries leaves them a core."""
        ids = np.unique(_as_ids(ids))
        dim = store.dim
        if plan.kind == "flat":
            out = cls(faiss.IndexIDMap(faiss.IndexFlatIP(dim)), np.empty(0, np.int64), plan, trained_n=ids.size,
                      seq=seq)
            out.add_from(store, ids)
            return out
        n = ids.size
        if n < plan.nlist:
            raise ValueError(f"{n} vectors cannot train {plan.nlist} lists")
        index = faiss.index_factory(dim, plan.build_factory, faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        ivf.do_polysemous_training = False  # only used by polysemous search, which we never do
        ivf.nprobe = plan.nprobe
        ivf.cp.seed = SAMPLE_SEED
        clustering = None
        if plan.coarse == "flat":
            clustering = faiss.IndexFlatIP(dim)
            if _gpu_available(use_gpu):
                clustering = faiss.index_cpu_to_all_gpus(clustering)
            ivf.clustering_index = clustering
        take = min(n, max(plan.train_size, plan.nlist))
        rows = np.sort(np.random.default_rng(SAMPLE_SEED).choice(n, take, replace=False)) if take < n else None
        sample_ids = ids if rows is None else ids[rows]
        sample = np.concatenate([v for _, v in store.chunks(sample_ids)] or [np.empty((0, dim), np.float32)])
        # Small trainings are thousands of tiny parallel regions: on few (or busy) cores the
        # OpenMP barriers cost more than the parallelism gains (measured 2-4x slower).
        with _omp_threads(1 if take < SMALL_TRAIN else threads):
            index.train(sample)
            del sample
            if clustering is not None:
                ivf.clustering_index = None  # drop the GPU resource before the index is kept or saved
                del clustering
            out = cls(index, np.empty(0, np.int64), plan, trained_n=n, seq=seq)
            out.add_from(store, ids)
        if plan.coarse == "flat":
            _float16_quantizer(ivf)
        return out

    # -- mutation ------------------------------------------------------------------------

    def add_from(self, store: VectorStore, ids: np.ndarray) -> np.ndarray:
        """Add the stored vectors of ``ids`` not yet in the index, block by block; returns the
        ids that the store no longer holds (lost vectors: the caller has them re-embedded)."""
        ids = np.unique(_as_ids(ids))
        ids = ids[~self._present(ids)]
        lost: list[np.ndarray] = []
        for start in range(0, ids.size, ADD_CHUNK):
            block = ids[start:start + ADD_CHUNK]
            found, vectors = store.lookup(block)
            if not found.all():
                lost.append(block[~found])
            self.add(vectors, block[found])
        return np.concatenate(lost) if lost else np.empty(0, np.int64)

    def add(self, vectors: np.ndarray, ids: np.ndarray, *, chunk: int = ADD_CHUNK) -> None:
        """Add rows; an id already present is a ValueError (remove it first)."""
        ids = _as_ids(ids)
        if ids.size == 0:
            return
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape != (ids.size, self.dim):
            raise ValueError(f"vectors {vectors.shape} do not match ({ids.size}, {self.dim})")
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        if (np.diff(sorted_ids) == 0).any() or self._present(sorted_ids).any():
            raise ValueError("ids already in the index (or duplicated)")
        for start in range(0, ids.size, chunk):  # bounded float32 copies for float16 input
            self._index.add_with_ids(_as_f32(vectors[start : start + chunk], self.dim), ids[start : start + chunk])
        if self._ids.size == 0 or sorted_ids[0] > self._ids[-1]:
            self._ids = np.concatenate([self._ids, sorted_ids])  # the usual case: new SQL ids
        else:
            self._ids = np.union1d(self._ids, sorted_ids)

    def remove(self, ids: np.ndarray) -> None:
        """Remove ids (absent ones are ignored); they never come back from search."""
        ids = np.unique(_as_ids(ids))
        ids = ids[self._present(ids)]
        if ids.size == 0:
            return
        removed = self._index.remove_ids(faiss.IDSelectorBatch(ids))
        if removed != ids.size:  # pragma: no cover - would mean ids and index drifted apart
            raise RuntimeError(f"faiss removed {removed} of {ids.size} ids")
        self._ids = np.delete(self._ids, np.searchsorted(self._ids, ids))

    def _present(self, sorted_ids: np.ndarray) -> np.ndarray:
        """Membership of sorted ids in the index, by binary search (O(k log N), no N-sized sort)."""
        if self._ids.size == 0 or sorted_ids.size == 0:
            return np.zeros(sorted_ids.shape, dtype=bool)
        pos = np.minimum(np.searchsorted(self._ids, sorted_ids), self._ids.size - 1)
        return self._ids[pos] == sorted_ids

    # -- queries -------------------------------------------------------------------------

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    def ids(self) -> np.ndarray:
        return self._ids

    def search(
        self,
        queries: np.ndarray,
        k: int,
        allowed_ids: np.ndarray | None = None,
        *,
        threads: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: (scores (nq, k) float32, ids (nq, k) int64, -1 padded).

        ``allowed_ids`` restricts results (path filters) via a faiss IDSelector, applied while
        scanning. For IVF a selective filter would leave the probed lists nearly empty, so
        nprobe is scaled up by the inverse of the allowed fraction, and a query that still finds
        fewer than k hits is retried over every list.

        ``threads`` caps OpenMP threads for this call only (the setting is per calling thread
        and restored afterwards). By default a single query runs single-threaded: faiss gains
        nothing from threads for one query, and on a busy 2-core box every parallel region
        waits for a descheduled thread (measured at 1M: p50 1.2 ms with 1 thread, 2.1 ms with
        2); batches use all threads."""
        if threads is None and (np.ndim(queries) == 1 or np.shape(queries)[0] == 1):
            threads = 1
        with _omp_threads(threads):
            return self._search(queries, k, allowed_ids)

    def _search(
        self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        q = _as_f32(queries, self.dim)
        nq = q.shape[0]
        k = int(k)
        scores = np.full((nq, max(k, 0)), -np.inf, dtype=np.float32)
        labels = np.full((nq, max(k, 0)), -1, dtype=np.int64)
        if k <= 0 or nq == 0 or self.ntotal == 0:
            return scores, labels
        selector = None
        allowed_n = self.ntotal
        if allowed_ids is not None:
            allowed = np.unique(_as_ids(allowed_ids))
            allowed = allowed[self._present(allowed)]
            if allowed.size == 0:
                return scores, labels
            if allowed.size < self._ids.size:
                selector = _selector(allowed)
                allowed_n = allowed.size
        if self._ivf is None:
            params = faiss.SearchParameters(sel=selector) if selector is not None else None
            d, i = self._index.search(q, k, params=params)
        else:
            nlist = self._ivf.nlist
            nprobe = min(nlist, max(1, self.plan.nprobe))
            if selector is not None:
                nprobe = min(nlist, math.ceil(nprobe * self.ntotal / allowed_n))
            d, i = self._search_ivf(q, k, nprobe, selector)
            short = (i[:, min(k, allowed_n) - 1] < 0) if nprobe < nlist else np.zeros(nq, bool)
            if short.any():
                d2, i2 = self._search_ivf(q[short], k, nlist, selector)
                d[short], i[short] = d2, i2
        valid = i >= 0
        scores[:] = np.where(valid, d, -np.inf)
        labels[:] = np.where(valid, i, -1)
        return scores, labels

    def _search_ivf(
        self, q: np.ndarray, k: int, nprobe: int, selector: faiss.IDSelector | None
    ) -> tuple[np.ndarray, np.ndarray]:
        params = faiss.SearchParametersIVF(nprobe=nprobe)
        if selector is not None:
            params.sel = selector
        quantizer_params = None  # referenced here until the search returns
        if self.plan.coarse == "hnsw":
            # an HNSW quantiser finds at most efSearch lists (faiss default 16): asked for more, it
            # returns fewer, and even a "scan every list" retry would miss lists
            quantizer_params = faiss.SearchParametersHNSW(efSearch=max(nprobe, HNSW_EF_SEARCH))
            params.quantizer_params = quantizer_params
        return self._index.search(q, k, params=params)

    # -- persistence ---------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write one .npz (serialized index, ids, plan) to a temp file, fsync, then rename over
        ``path``: readers see the old or the new index, never half of one."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = self.meta()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                np.savez(
                    f,
                    index=faiss.serialize_index(self._index),
                    ids=self._ids,
                    meta=np.array(json.dumps(meta)),
                )
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        try:
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass

    @classmethod
    def load(cls, path: Path) -> AnnIndex | None:
        """The saved index, or None when missing or unreadable (the caller rebuilds it from the
        VectorStore). The zip container's CRC rejects corrupt bytes before faiss parses them."""
        path = Path(path)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                meta: dict[str, Any] = json.loads(str(z["meta"]))
                if meta.get("format") != _FORMAT:
                    raise ValueError(f"unknown index format {meta.get('format')}")
                ids = np.asarray(z["ids"], dtype=np.int64)
                raw = np.ascontiguousarray(z["index"], dtype=np.uint8)
            index = faiss.deserialize_index(raw)
            plan = IndexPlan(**meta["plan"])
            is_ivf = faiss.try_extract_index_ivf(index) is not None
            if index.ntotal != ids.size or (plan.kind == "ivfpq") != is_ivf:
                raise ValueError("index and metadata disagree")
            return cls(index, ids, plan, trained_n=int(meta["trained_n"]), seq=int(meta.get("seq", 0)))
        except Exception as exc:  # any damage means "rebuild", never a crash at startup
            log.warning("ignoring unreadable ANN index %s: %s", path, exc)
            return None

    def meta(self) -> dict[str, Any]:
        """What the index file says about itself; also kept beside it as JSON for ``stats``."""
        return {"format": _FORMAT, "plan": dataclasses.asdict(self.plan), "trained_n": self.trained_n,
                "seq": self.seq, "ntotal": self.ntotal, "factory": self.plan.factory}
