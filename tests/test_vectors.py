from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest

from mmsearch.storage.vectors import VectorStore

DIM = 16


def _unit(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_empty_store(tmp_path: Path) -> None:
    store = VectorStore(tmp_path / "vec", "clip.image", DIM)
    assert len(store) == 0
    assert store.max_id == -1
    assert store.ids().size == 0
    assert store.get(np.array([], dtype=np.int64)).shape == (0, DIM)
    assert store.rows(np.array([1, 2])).tolist() == [-1, -1]
    assert store.nbytes() == 0
    assert (tmp_path / "vec" / "clip.image.f16").exists()
    assert (tmp_path / "vec" / "clip.image.ids").exists()


def test_append_get_rows(tmp_path: Path) -> None:
    store = VectorStore(tmp_path, "clip.image", DIM)
    x = _unit(10)
    ids = np.array([1, 2, 3, 5, 8, 13, 21, 34, 55, 89], dtype=np.int64)
    store.append(ids[:4], x[:4])
    store.append(ids[4:], x[4:])
    assert len(store) == 10
    assert store.max_id == 89
    assert store.ids().tolist() == ids.tolist()
    assert store.rows(np.array([5, 4, 89, 1, 1000])).tolist() == [3, -1, 9, 0, -1]
    got = store.get(np.array([55, 2, 55]))
    assert got.dtype == np.float32 and got.shape == (3, DIM)
    np.testing.assert_allclose(got, x[[8, 1, 8]], atol=1e-3)  # float16 storage
    np.testing.assert_allclose(store.get(ids), x, atol=1e-3)
    with pytest.raises(KeyError):
        store.get(np.array([1, 4]))
    found, vecs = store.lookup(np.array([89, 4, 1, 1000]))
    assert found.tolist() == [True, False, True, False]
    np.testing.assert_allclose(vecs, x[[9, 0]], atol=1e-3)
    assert store.nbytes() == 10 * (DIM * 2 + 8)
    assert os.path.getsize(tmp_path / "clip.image.f16") == 10 * DIM * 2

    reopened = VectorStore(tmp_path, "clip.image", DIM)
    assert reopened.ids().tolist() == ids.tolist()
    np.testing.assert_array_equal(reopened.get(ids), store.get(ids))


@pytest.mark.parametrize(
    "ids",
    [
        np.array([3, 2], dtype=np.int64),  # decreasing
        np.array([4, 4], dtype=np.int64),  # repeated
        np.array([5], dtype=np.int64),  # not above max_id
        np.array([1], dtype=np.int64),
    ],
)
def test_append_rejects_non_increasing_ids(tmp_path: Path, ids: np.ndarray) -> None:
    store = VectorStore(tmp_path, "s", DIM)
    store.append(np.array([1, 5]), _unit(2))
    with pytest.raises(ValueError):
        store.append(ids, _unit(ids.size, 1))
    assert store.ids().tolist() == [1, 5]  # nothing written


def test_append_rejects_bad_shapes_and_values(tmp_path: Path) -> None:
    store = VectorStore(tmp_path, "s", DIM)
    with pytest.raises(ValueError):
        store.append(np.array([1, 2]), _unit(3))
    with pytest.raises(ValueError):
        store.append(np.array([1]), np.ones((1, DIM + 1), np.float32))
    with pytest.raises(ValueError):
        store.append(np.array([1]), np.full((1, DIM), np.nan, np.float32))
    assert len(store) == 0


@pytest.mark.parametrize("torn", ["vectors_only", "partial_vector_row", "partial_id", "ids_longer"])
def test_torn_append_is_repaired_on_open(tmp_path: Path, torn: str) -> None:
    store = VectorStore(tmp_path, "s", DIM)
    x = _unit(8)
    store.append(np.arange(1, 6), x[:5])
    vec, idp = tmp_path / "s.f16", tmp_path / "s.ids"
    if torn == "vectors_only":  # crash after the vectors write, before the ids write
        with open(vec, "ab") as f:
            f.write(x[5:8].astype(np.float16).tobytes())
    elif torn == "partial_vector_row":
        with open(vec, "ab") as f:
            f.write(x[5].astype(np.float16).tobytes()[:7])
    elif torn == "partial_id":  # vectors complete, ids cut mid-record
        with open(vec, "ab") as f:
            f.write(x[5:7].astype(np.float16).tobytes())
        with open(idp, "ab") as f:
            f.write(np.array([6], np.int64).tobytes() + b"\x07\x00\x00")
    else:  # the ids file is the longer one (e.g. the vectors file lost its tail)
        with open(vec, "r+b") as f:
            f.truncate(3 * DIM * 2)
    expected = {"vectors_only": 5, "partial_vector_row": 5, "partial_id": 6, "ids_longer": 3}[torn]
    reopened = VectorStore(tmp_path, "s", DIM)
    assert len(reopened) == expected
    assert os.path.getsize(vec) == expected * DIM * 2
    assert os.path.getsize(idp) == expected * 8
    np.testing.assert_allclose(reopened.get(reopened.ids()), x[:expected], atol=1e-3)
    # and the store keeps working after the repair
    reopened.append(np.array([100]), x[7:8])
    assert reopened.max_id == 100 and len(reopened) == expected + 1


def test_reader_sees_appends_of_writer(tmp_path: Path) -> None:
    writer = VectorStore(tmp_path, "s", DIM)
    reader = VectorStore(tmp_path, "s", DIM)
    writer.append(np.array([1, 2]), _unit(2))
    assert len(reader) == 2
    writer.append(np.array([3]), _unit(1, 5))
    assert reader.ids().tolist() == [1, 2, 3]
    np.testing.assert_array_equal(reader.get(np.array([3])), writer.get(np.array([3])))


def test_compact(tmp_path: Path) -> None:
    store = VectorStore(tmp_path, "s", DIM)
    x = _unit(20)
    ids = np.arange(10, 30, dtype=np.int64)
    store.append(ids, x)
    reader = VectorStore(tmp_path, "s", DIM)
    live = np.array([29, 10, 15, 16, 999], dtype=np.int64)  # unordered, with an unknown id
    store.compact(live)
    assert store.ids().tolist() == [10, 15, 16, 29]
    np.testing.assert_allclose(store.get(np.array([15, 29])), x[[5, 19]], atol=1e-3)
    with pytest.raises(KeyError):
        store.get(np.array([11]))
    assert reader.ids().tolist() == [10, 15, 16, 29]  # other handles pick up the new files
    np.testing.assert_array_equal(reader.get(np.array([16])), store.get(np.array([16])))
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / "s.compact").exists()
    store.append(np.array([30]), x[:1])  # ids stay increasing after compaction
    with pytest.raises(ValueError):
        store.append(np.array([20]), x[:1])
    store.compact(np.array([], dtype=np.int64))
    assert len(store) == 0 and store.max_id == -1


def test_compaction_crash_rolls_forward_or_back(tmp_path: Path) -> None:
    store = VectorStore(tmp_path, "s", DIM)
    x = _unit(6)
    store.append(np.arange(1, 7), x)
    keep = np.array([2, 5])
    # crash after the commit marker and the first rename: the reopen must finish the job
    (tmp_path / "s.f16").write_bytes(x[[1, 4]].astype(np.float16).tobytes())
    (tmp_path / "s.ids.tmp").write_bytes(keep.astype(np.int64).tobytes())
    (tmp_path / "s.compact").write_bytes(b"")
    rolled = VectorStore(tmp_path, "s", DIM)
    assert rolled.ids().tolist() == [2, 5]
    np.testing.assert_allclose(rolled.get(keep), x[[1, 4]], atol=1e-3)
    # crash before the marker: the half-written temp files are discarded
    (tmp_path / "s.f16.tmp").write_bytes(b"garbage")
    (tmp_path / "s.ids.tmp").write_bytes(b"garbage")
    back = VectorStore(tmp_path, "s", DIM)
    assert back.ids().tolist() == [2, 5]
    assert not list(tmp_path.glob("*.tmp"))


def _append_in_child(directory: str) -> None:
    store = VectorStore(Path(directory), "s", DIM)
    store.append(np.array([7, 8]), np.ones((2, DIM), np.float32))


def test_other_process_append_visible(tmp_path: Path) -> None:
    reader = VectorStore(tmp_path, "s", DIM)
    assert len(reader) == 0
    ctx = multiprocessing.get_context("spawn")
    p = ctx.Process(target=_append_in_child, args=(str(tmp_path),))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    assert reader.ids().tolist() == [7, 8]
    np.testing.assert_array_equal(reader.get(np.array([8])), np.ones((1, DIM), np.float32))


def test_rows_of_a_store_without_gaps_and_with_them(tmp_path: Path) -> None:
    """A store whose ids have no gaps locates an id by its offset; one with gaps (after a
    compaction drops some) by search: both give the row, or -1 for an id it does not hold."""
    store = VectorStore(tmp_path, "clip.image", DIM)
    store.append(np.arange(10, 30, dtype=np.int64), _unit(20))
    asked = np.array([9, 10, 29, 30, -1, 15, 2**62, -2**63, 10], dtype=np.int64)
    assert store.rows(asked).tolist() == [-1, 0, 19, -1, -1, 5, -1, -1, 0]
    found, vecs = store.lookup(np.array([29, 31, 12]))
    assert found.tolist() == [True, False, True]
    np.testing.assert_allclose(vecs, _unit(20)[[19, 2]], atol=1e-3)
    store.compact(np.setdiff1d(np.arange(10, 30), [12, 20]))
    assert store.rows(asked).tolist() == [-1, 0, 17, -1, -1, 4, -1, -1, 0]
    assert store.rows(np.array([12, 13, 20, 21])).tolist() == [-1, 2, -1, 9]


def test_widening_is_float16_to_float32_for_every_value() -> None:
    """The table lookup that widens stored rows gives numpy's own conversion, bit for bit, for
    all 65,536 float16 values (infinities, NaNs and subnormals included)."""
    from mmsearch.storage.vectors import _widen

    every = np.arange(65_536, dtype=np.uint16).view(np.float16).reshape(256, 256)
    assert np.array_equal(_widen(every).view(np.uint32), every.astype(np.float32).view(np.uint32))
