"""Index upkeep (search/upkeep.py) and the reader's live view (search/live.py) over a real
catalog: rows committed through the CatalogWriter, the change log its SQL triggers write."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from mmsearch.search import upkeep as upkeep_module
from mmsearch.search.ann import AnnIndex
from mmsearch.search.live import LiveIndex, LiveIndexes
from mmsearch.storage.catalog import Catalog, FileRecord, NewItem
from mmsearch.writer import CatalogWriter

DIM = 32
COLL = "clip.text"
KINDS = ["image", "text", "captions"]


def _path(eid: int) -> str:
    return f"/data/notes/{eid}.txt"


class Rows:
    """One text item per file, one vector per item, committed through the writer; the test's own
    record of what is live, to check the indexes against."""

    def __init__(self, writer: CatalogWriter, seed: int = 0) -> None:
        self.writer = writer
        self.root = writer.ensure_root(Path("/data"))
        self.rng = np.random.default_rng(seed)
        self.vectors: dict[int, np.ndarray] = {}  # live id -> the float32 of its stored float16
        self.gone: dict[int, np.ndarray] = {}  # deleted id -> its vector

    def add(self, n: int) -> np.ndarray:
        start = self.writer.next_embedding_id()
        ids = np.arange(start, start + n, dtype=np.int64)
        x = self.rng.standard_normal((n, DIM)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        self.writer.append_vectors(COLL, ids, x)
        self.writer.commit_files([
            FileRecord(path=_path(int(eid)), root_id=self.root, kind="text", size=10, mtime_ns=1,
                       items=[NewItem(modality="text", ordinal=0, text=f"note {eid}",
                                      embeddings=[(int(eid), COLL, None, None)])])
            for eid in ids])
        self.vectors.update(zip(ids.tolist(), x.astype(np.float16).astype(np.float32)))
        return ids

    def delete(self, ids: np.ndarray) -> None:
        assert self.writer.delete_files([_path(int(i)) for i in ids]) == len(ids)
        for i in ids:
            self.gone[int(i)] = self.vectors.pop(int(i))

    def live(self) -> np.ndarray:
        return np.array(sorted(self.vectors), dtype=np.int64)

    def matrix(self, ids: np.ndarray) -> np.ndarray:
        return np.stack([self.vectors.get(int(i), self.gone.get(int(i))) for i in ids])

    def exact(self, q: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Brute-force top-k over the live rows (within ``allowed``), -1 / -inf padded."""
        ids = self.live()
        if allowed is not None:
            ids = ids[np.isin(ids, allowed)]
        scores = np.full((q.shape[0], k), -np.inf, np.float32)
        labels = np.full((q.shape[0], k), -1, np.int64)
        if ids.size:
            s = q @ self.matrix(ids).T
            order = np.argsort(-s, axis=1)[:, :k]
            scores[:, : order.shape[1]] = np.take_along_axis(s, order, axis=1)
            labels[:, : order.shape[1]] = ids[order]
        return scores, labels

    def queries(self, n: int) -> np.ndarray:
        q = self.rng.standard_normal((n, DIM)).astype(np.float32)
        return q / np.linalg.norm(q, axis=1, keepdims=True)


OpenWriter = Callable[..., tuple[CatalogWriter, Rows]]


@pytest.fixture
def open_writer(make_settings) -> Iterator[OpenWriter]:  # type: ignore[no-untyped-def]
    """Open the catalog's writer (settings overridden as given) with a 32-d "clip" space."""
    writers: list[CatalogWriter] = []

    def open_(**overrides: object) -> tuple[CatalogWriter, Rows]:
        writer = CatalogWriter(make_settings(faiss_gpu=False, **overrides))
        writers.append(writer)
        writer.record_space("clip", "test:random-32", DIM, KINDS, reembed=False)
        return writer, Rows(writer)

    yield open_
    for writer in writers:
        writer.close()


def _reader(writer: CatalogWriter) -> LiveIndexes:
    return LiveIndexes(Catalog(writer.settings))


def _saved(writer: CatalogWriter, rows: Rows) -> AnnIndex:
    """The saved index holds exactly the live ids, its note describes it, and the log is
    truncated up to it."""
    idx = AnnIndex.load(writer.files.index_path(COLL))
    assert idx is not None
    np.testing.assert_array_equal(writer.catalog.live_ids(COLL), rows.live())
    np.testing.assert_array_equal(idx.ids(), rows.live())
    note = writer.files.read_note(COLL)
    assert note is not None and writer.files.looks_intact(COLL)
    assert (note["seq"], note["ntotal"], note["trained_n"]) == (idx.seq, idx.ntotal, idx.trained_n)
    floor, last, added, removed = writer.catalog.changes_since(COLL, 0)
    assert floor == idx.seq and last == 0 and added.size == removed.size == 0
    return idx


def _check_exact(live: LiveIndex, rows: Rows, q: np.ndarray, k: int, allowed: np.ndarray | None = None) -> None:
    """Results match brute force over the live rows: the same scores, ids that really score so,
    never a deleted id (ties aside, the same ids)."""
    scores, got = live.search(q, k, allowed_ids=allowed)
    want_s, want_i = rows.exact(q, k, allowed)
    np.testing.assert_array_equal(got < 0, want_i < 0)  # as many results, never fewer
    np.testing.assert_allclose(scores[got >= 0], want_s[want_i >= 0], atol=1e-5)
    hit = got >= 0
    assert np.isin(got[hit], rows.live()).all()
    if allowed is not None:
        assert np.isin(got[hit], allowed).all()
    true_scores = np.einsum("qd,qkd->qk", q, rows.matrix(np.where(hit, got, rows.live()[0]).ravel())
                            .reshape(*got.shape, DIM))
    np.testing.assert_allclose(scores[hit], true_scores[hit], atol=1e-5)


def _check_live(live: LiveIndex, rows: Rows) -> None:
    np.testing.assert_array_equal(live.ids(), rows.live())
    assert live.ntotal == len(rows.vectors)
    _check_exact(live, rows, rows.queries(8), 10)
    sample = rows.live()[:: max(1, len(rows.vectors) // 7)]
    _, got = live.search(rows.matrix(sample), 1)  # every row finds itself
    np.testing.assert_array_equal(got[:, 0], sample)


# -- the change log and what is due -------------------------------------------------------------


def test_log_small_changes_wait_then_merge(open_writer: OpenWriter) -> None:
    writer, rows = open_writer(ivf_min_vectors=10_000, merge_min_changes=50)
    up = writer.upkeep_jobs
    assert up.due(COLL) is None and writer.due() == []  # an empty catalog needs nothing
    first = rows.add(30)
    floor, last, added, removed = writer.catalog.changes_since(COLL, 0)
    assert floor == 0 and last > 0 and added.tolist() == first.tolist() and removed.size == 0
    assert writer.catalog.counts()["embeddings"] == {COLL: 30}
    assert up.due(COLL) == "rebuild"  # live vectors, no index yet
    assert writer.upkeep(wait=True)
    idx = _saved(writer, rows)
    assert idx.plan.kind == "flat"
    assert up.due(COLL) is None and not writer.upkeep(wait=True)

    path = writer.files.index_path(COLL)
    before = os.stat(path)
    more = rows.add(10)
    rows.delete(first[:5])
    floor, last, added, removed = writer.catalog.changes_since(COLL, idx.seq)
    assert floor == idx.seq and last > idx.seq
    assert added.tolist() == more.tolist() and sorted(removed.tolist()) == first[:5].tolist()
    assert up.due(COLL) is None  # 15 changes < merge_min_changes: readers apply them
    assert not writer.upkeep(wait=True)
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)

    rows.add(35)  # 50 changes
    assert up.due(COLL) == "merge" and writer.due() == [(COLL, "merge")]
    assert writer.upkeep(wait=True)
    merged = _saved(writer, rows)
    assert merged.seq > idx.seq and merged.plan == idx.plan
    assert up.due(COLL) is None


def test_merge_threshold_grows_with_the_index(open_writer: OpenWriter) -> None:
    writer, rows = open_writer(merge_min_changes=5, merge_fraction=0.1)
    rows.add(200)
    writer.upkeep(wait=True)
    rows.add(19)
    assert writer.upkeep_jobs.due(COLL) is None  # 19 < 10% of 200
    rows.delete(rows.live()[:1])
    assert writer.upkeep_jobs.due(COLL) == "merge"


def test_rebuild_when_plan_changes_or_size_leaves_training_range(open_writer: OpenWriter) -> None:
    writer, rows = open_writer(ivf_min_vectors=300, retrain_growth=2.0, merge_min_changes=10_000)
    up = writer.upkeep_jobs
    first = rows.add(200)
    writer.upkeep(wait=True)
    assert _saved(writer, rows).plan.kind == "flat"
    rows.add(99)
    assert up.due(COLL) is None
    rows.add(1)  # crosses ivf_min_vectors
    assert up.due(COLL) == "rebuild"
    writer.upkeep(wait=True)
    idx = _saved(writer, rows)
    assert idx.plan.kind == "ivfpq" and idx.trained_n == 300
    rows.add(299)  # 599 < 2 x 300
    assert up.due(COLL) is None
    rows.add(1)  # grew retrain_growth-fold since training
    assert up.due(COLL) == "rebuild"
    writer.upkeep(wait=True)
    assert _saved(writer, rows).trained_n == 600
    rows.delete(first[:150])  # 450: inside the range
    assert up.due(COLL) is None
    rows.delete(rows.live()[:150])  # 300 = 600 / 2: shrank retrain_growth-fold
    assert up.due(COLL) == "rebuild"
    writer.upkeep(wait=True)
    idx = _saved(writer, rows)
    assert idx.plan.kind == "ivfpq" and idx.trained_n == 300
    rows.delete(rows.live()[:1])  # below ivf_min_vectors: exact again
    assert up.due(COLL) == "rebuild"
    writer.upkeep(wait=True)
    assert _saved(writer, rows).plan.kind == "flat"


def _damage(path: Path, how: str, older: bytes) -> None:
    if how == "deleted":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "garbled":
        raw = bytearray(path.read_bytes())
        mid = len(raw) // 2
        raw[mid : mid + 64] = bytes(b ^ 0xFF for b in raw[mid : mid + 64])
        path.write_bytes(bytes(raw))
    elif how == "older copy":
        path.write_bytes(older)  # a valid index, from before the last merge
    elif how == "note deleted":
        path.with_name(COLL + ".json").unlink()
    else:  # pragma: no cover
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["deleted", "truncated", "garbled", "older copy", "note deleted"])
def test_rebuild_when_index_file_damaged(how: str, open_writer: OpenWriter) -> None:
    writer, rows = open_writer(merge_min_changes=20)
    up = writer.upkeep_jobs
    rows.add(40)
    writer.upkeep(wait=True)
    path = writer.files.index_path(COLL)
    older = path.read_bytes()
    rows.add(25)
    writer.upkeep(wait=True)  # merged: the log before it is gone
    rows.add(3)
    assert up.due(COLL) is None
    _damage(path, how, older)
    assert up.due(COLL) == "rebuild" and up.due(COLL, compact=False) == "rebuild"
    writer.upkeep(wait=True)
    _saved(writer, rows)
    assert up.due(COLL) is None


def test_merge_falls_back_to_rebuild_when_the_log_is_gone(open_writer: OpenWriter) -> None:
    """A merge asked of an index older than the log's floor cannot catch up: it rebuilds."""
    writer, rows = open_writer(merge_min_changes=20)
    rows.add(40)
    writer.upkeep(wait=True)
    path = writer.files.index_path(COLL)
    older = path.read_bytes()
    rows.add(25)
    writer.upkeep(wait=True)
    rows.add(3)
    path.write_bytes(older)
    writer.files.write_note(COLL, AnnIndex.load(path).meta())  # looks intact: only the log tells
    writer.upkeep_jobs.run(COLL, "merge")
    _saved(writer, rows)


# -- rebuilds beside writes; compaction --------------------------------------------------------


@pytest.mark.parametrize("ivf_min", [10_000, 100])
def test_rebuild_keeps_rows_committed_while_it_builds(ivf_min: int, open_writer: OpenWriter,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    writer, rows = open_writer(ivf_min_vectors=ivf_min, merge_min_changes=10_000)
    first = rows.add(150)
    real_build = AnnIndex.build
    during: dict[str, np.ndarray] = {}

    def build_while_rows_commit(store, ids, plan, **kw):  # type: ignore[no-untyped-def]
        if not during:  # after the rebuild took its snapshot of the live ids
            during["snapshot"] = np.asarray(ids).copy()
            during["added"] = rows.add(30)
            rows.delete(first[:10])
        return real_build(store, ids, plan, **kw)

    monkeypatch.setattr(AnnIndex, "build", build_while_rows_commit)
    assert writer.upkeep_jobs.due(COLL) == "rebuild"
    writer.upkeep(wait=True)
    assert not np.isin(during["added"], during["snapshot"]).any()  # the race did happen
    assert np.isin(first[:10], during["snapshot"]).all()
    idx = _saved(writer, rows)  # every live id, none of the deleted ones
    assert idx.plan.kind == ("flat" if ivf_min > 1000 else "ivfpq")
    if idx.plan.kind == "flat":
        _, got = idx.search(rows.matrix(during["added"]), 1)
        np.testing.assert_array_equal(got[:, 0], during["added"])
    live = _reader(writer).index(COLL)
    assert live is not None and not live.degraded
    np.testing.assert_array_equal(live.ids(), rows.live())


def test_compaction_keeps_live_vectors_and_never_reuses_ids(open_writer: OpenWriter,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upkeep_module, "COMPACT_MIN", 100)
    writer, rows = open_writer(merge_min_changes=10_000)
    ids = rows.add(400)
    writer.upkeep(wait=True)
    reader = _reader(writer)
    assert reader.index(COLL) is not None
    top = int(ids.max())
    rows.delete(np.concatenate([ids[:150], ids[-150:]]))  # the highest ids die too
    up = writer.upkeep_jobs
    assert up.due(COLL, compact=False) is None  # during an ingest: never
    assert up.due(COLL) == "rebuild"  # 400 stored, 100 live
    writer.upkeep(wait=True)
    store = writer.store(COLL, DIM)
    np.testing.assert_array_equal(store.ids(), rows.live())
    np.testing.assert_array_equal(store.get(rows.live()), rows.matrix(rows.live()))
    _saved(writer, rows)
    assert up.due(COLL) is None
    live = reader.index(COLL)  # a reader that mapped the store before the compaction
    assert live is not None
    _check_live(live, rows)
    new = rows.add(5)
    assert new.min() > top  # the compacted-away maximum stays used
    settings = writer.settings
    writer.close()
    with CatalogWriter(settings) as again:  # and still after a restart
        assert again.next_embedding_id() > int(new.max())
        assert again.store(COLL, DIM).ids().size == 105


# -- the reader's live view --------------------------------------------------------------------


def test_reader_sees_changes_without_index_files_rewritten(open_writer: OpenWriter) -> None:
    writer, rows = open_writer(merge_min_changes=10_000)
    first = rows.add(100)
    writer.upkeep(wait=True)
    path, note = writer.files.index_path(COLL), writer.files.note_path(COLL)
    stamps = [(os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in (path, note)]
    reader = _reader(writer)
    live = reader.index(COLL)
    assert live is not None and not live.degraded
    _check_live(live, rows)
    rows.add(20)
    rows.delete(first[::7])
    brief = rows.add(6)
    rows.delete(brief[:3])  # added and deleted between two refreshes
    writer.delete_item(writer.catalog.items_for_path(_path(int(first[1])))[0])  # an item, not a file
    rows.gone[int(first[1])] = rows.vectors.pop(int(first[1]))
    assert not writer.upkeep(wait=True)
    live = reader.index(COLL)
    assert live is not None and not live.degraded
    _check_live(live, rows)
    _, got = live.search(rows.matrix(np.array(sorted(rows.gone))), 5)
    assert not np.isin(got, list(rows.gone)).any()
    reader.refresh()
    _check_live(live, rows)
    assert [(os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in (path, note)] == stamps


@pytest.mark.parametrize("how", ["deleted", "truncated", "garbled", "older copy"])
def test_reader_searches_exactly_without_a_usable_index(how: str, open_writer: OpenWriter) -> None:
    writer, rows = open_writer(ivf_min_vectors=100, merge_min_changes=20)  # an IVF-PQ base is not exact
    rows.add(200)
    writer.upkeep(wait=True)
    path = writer.files.index_path(COLL)
    older = path.read_bytes()
    early = _reader(writer)  # loaded the healthy index before the damage
    assert early.index(COLL) is not None
    rows.add(25)
    writer.upkeep(wait=True)  # merged: the log up to here is truncated
    rows.add(5)
    _damage(path, how, older)
    for reader in (early, _reader(writer)):
        live = reader.index(COLL)
        assert live is not None and live.degraded
        np.testing.assert_array_equal(live.ids(), rows.live())
        _check_exact(live, rows, rows.queries(6), 10)  # exact results, never empty ones
        rows.delete(rows.live()[-3:])
        rows.add(4)
        live = reader.index(COLL)
        assert live is not None and live.degraded
        _check_exact(live, rows, rows.queries(6), 10)
        np.testing.assert_array_equal(live.ids(), rows.live())
    writer.upkeep(wait=True)  # rebuilt
    live = early.index(COLL)
    assert live is not None and not live.degraded
    np.testing.assert_array_equal(live.ids(), rows.live())


def test_reader_behind_a_merge_reloads(open_writer: OpenWriter, monkeypatch: pytest.MonkeyPatch) -> None:
    writer, rows = open_writer(merge_min_changes=30)
    first = rows.add(50)
    writer.upkeep(wait=True)
    reader = _reader(writer)
    live = reader.index(COLL)
    assert live is not None
    old_snap = live._snap
    rows.add(20)
    rows.delete(first[:5])
    live = reader.index(COLL)
    assert live is not None and live._snap is not None and live._snap.base is old_snap.base  # a delta on the base
    _check_live(live, rows)
    rows.add(10)
    writer.upkeep(wait=True)  # merge, then the log is truncated past what the reader applied
    floor, *_ = writer.catalog.changes_since(COLL, 0)
    assert floor > live._snap.applied
    live = reader.index(COLL)
    assert live is not None and live._snap.base is not old_snap.base and live._snap.applied >= floor
    _check_live(live, rows)

    # the same when the file's stamp (inode, size, mtime) looks unchanged: the log's floor tells
    held = live._snap
    rows.add(31)
    writer.upkeep(wait=True)
    monkeypatch.setattr(live, "_stamp", lambda: held.stamp)
    live.refresh()
    assert live._snap is not None and live._snap.base is not held.base
    _check_live(live, rows)


def test_live_search_allowed_ids_and_dead_ids_over_base_and_delta(open_writer: OpenWriter) -> None:
    writer, rows = open_writer(merge_min_changes=10_000)  # a flat base: every result checks exactly
    base = rows.add(60)
    writer.upkeep(wait=True)
    reader = _reader(writer)
    assert reader.index(COLL) is not None
    d1 = rows.add(30)
    assert reader.index(COLL) is not None  # one delta block
    d2 = rows.add(30)
    live = reader.index(COLL)  # and a second one
    assert live is not None and len(live._snap.delta) == 2
    dead = np.concatenate([base[:10], d1[:10]])  # in the base and in an earlier delta block
    rows.delete(dead)
    live = reader.index(COLL)
    assert live is not None
    _check_live(live, rows)
    q = rows.matrix(dead)  # the dead rows' own vectors: each would be its own best match
    _check_exact(live, rows, q, 5)
    _, got = live.search(q, 200)
    assert not np.isin(got, dead).any() and (got >= 0).sum(axis=1).tolist() == [100] * dead.size
    # a filter of one delta block with dead ids in it: every live one comes back, no dead one
    _check_exact(live, rows, q, 20, allowed=d1)
    _check_exact(live, rows, q, 25, allowed=d1)
    rng = np.random.default_rng(3)
    mixed = np.sort(np.concatenate([rng.choice(base, 15, replace=False), rng.choice(d1, 8, replace=False),
                                    rng.choice(d2, 8, replace=False), [10**9, 10**12]]))
    for k in (3, 10, 40):
        _check_exact(live, rows, q, k, allowed=mixed)
        _check_exact(live, rows, rows.queries(4), k, allowed=mixed)
    _check_exact(live, rows, q, 5, allowed=dead)  # only dead ids allowed: nothing
    _, got = live.search(q, 5, allowed_ids=np.array([], np.int64))
    assert (got == -1).all()


def test_reader_unknown_collection_and_empty(open_writer: OpenWriter) -> None:
    writer, rows = open_writer()
    reader = _reader(writer)
    assert reader.index("nospace.text") is None
    live = reader.index(COLL)  # a space with no vectors yet: empty, not an error
    assert live is not None and live.ntotal == 0
    _, got = live.search(rows.queries(2), 3)
    assert (got == -1).all()
    rows.add(3)
    live = reader.index(COLL)
    assert live is not None and live.degraded  # no index yet: exact over the log
    _check_live(live, rows)
