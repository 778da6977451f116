from __future__ import annotations

import math
from pathlib import Path

import faiss
import numpy as np
import pytest

from mmsearch.search.ann import AnnIndex, IndexPlan, plan_index, sync_index
from mmsearch.search.rerank import exact_rescore
from mmsearch.settings import Settings
from mmsearch.storage.vectors import VectorStore

DIM = 64
N = 3000
FORCED = Settings(ivf_min_vectors=1000, retrain_growth=4.0, nprobe=None, faiss_gpu=False)


def _clustered(n: int, seed: int = 0, clusters: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, DIM)).astype(np.float32)
    x = centers[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, DIM)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _queries(x: np.ndarray, nq: int, seed: int = 1) -> np.ndarray:
    """Off-distribution queries: a data point plus a shared offset and noise (like text vs image)."""
    rng = np.random.default_rng(seed)
    offset = rng.standard_normal(DIM).astype(np.float32)
    offset /= np.linalg.norm(offset)
    noise = rng.standard_normal((nq, DIM)).astype(np.float32) / math.sqrt(DIM)
    q = x[rng.integers(0, x.shape[0], nq)] + 0.8 * offset + 0.6 * noise
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    x = _clustered(N)
    ids = np.arange(1, 2 * N + 1, 2, dtype=np.int64)  # gaps, like SQL ids after deletes
    return x, ids


@pytest.fixture(scope="module")
def ivf(data: tuple[np.ndarray, np.ndarray]) -> AnnIndex:
    x, ids = data
    plan = plan_index(N, DIM, FORCED)
    assert plan.kind == "ivfpq"
    return AnnIndex.build(x, ids, plan)


@pytest.fixture()
def store(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> VectorStore:
    x, ids = data
    s = VectorStore(tmp_path, "clip.image", DIM)
    s.append(ids, x)
    return s


# -- plan_index -----------------------------------------------------------------------------


def test_plan_flat_below_threshold() -> None:
    s = Settings(ivf_min_vectors=50_000)
    for n in (0, 1, 2, 1000, 49_999):
        plan = plan_index(n, 512, s)
        assert plan.kind == "flat" and plan.factory == "Flat"


@pytest.mark.parametrize("n", [50_000, 70_000, 200_000, 1_000_000, 10_000_000])
def test_plan_ivfpq_follows_guidelines(n: int) -> None:
    dim = 512
    plan = plan_index(n, dim, Settings(ivf_min_vectors=50_000))
    assert plan.kind == "ivfpq"
    assert 4 * math.sqrt(n) <= plan.nlist <= 16 * math.sqrt(n)
    assert 30 * plan.nlist <= plan.train_size <= min(n, 256 * plan.nlist)
    assert dim % plan.m == 0
    assert plan.nbits == 8
    assert plan.m * plan.nbits / 8 + 8 <= 80  # code + id
    assert 1 <= plan.nprobe <= plan.nlist
    assert plan.factory == f"IVF{plan.nlist}(SQfp16),PQ{plan.m}"


def test_plan_at_one_million() -> None:
    plan = plan_index(1_000_000, 512, Settings())
    assert (plan.nlist, plan.m, plan.nbits, plan.nprobe) == (4096, 64, 8, 64)
    assert plan.factory == "IVF4096(SQfp16),PQ64"
    assert plan_index(1_000_000, 512, Settings(nprobe=17)).nprobe == 17


@pytest.mark.parametrize(("dim", "m"), [(32, 32), (64, 64), (128, 64), (384, 64), (768, 64), (1024, 64)])
def test_plan_m_fits_budget_for_other_dims(dim: int, m: int) -> None:
    plan = plan_index(500_000, dim, Settings())
    assert plan.m == m and dim % plan.m == 0
    assert plan.m + 8 <= 80


def test_plan_few_bits_buy_more_subquantizers() -> None:
    plan = plan_index(320, 32, Settings(ivf_min_vectors=300))
    assert plan.nbits < 8 and plan.m == 32  # finest split: the byte budget is far away


def test_plan_small_forced_ivf_reduces_nlist_and_nbits() -> None:
    plan = plan_index(2000, DIM, Settings(ivf_min_vectors=1000))
    assert plan.kind == "ivfpq"
    assert plan.train_size <= 2000
    assert plan.train_size >= 39 * plan.nlist  # every coarse centroid gets enough points
    assert plan.train_size >= 39 * 2**plan.nbits  # and every PQ centroid too
    assert plan.nbits < 8
    assert "x" in plan.factory  # e.g. IVF32,PQ16x5


# -- AnnIndex -------------------------------------------------------------------------------


def _exact_top(x: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int, mask: np.ndarray | None = None) -> np.ndarray:
    s = q @ x.T
    if mask is not None:
        s[:, ~mask] = -np.inf
    order = np.argsort(-s, axis=1)[:, :k]
    return np.where(np.isfinite(np.take_along_axis(s, order, axis=1)), ids[order], -1)


def test_flat_is_exact(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, ids = data
    index = AnnIndex.build(x, ids, plan_index(N, DIM, Settings()))
    assert index.plan.kind == "flat" and index.ntotal == N
    q = _queries(x, 20)
    scores, got = index.search(q, 10)
    assert got.dtype == np.int64 and scores.dtype == np.float32 and got.shape == (20, 10)
    np.testing.assert_array_equal(got, _exact_top(x, ids, q, 10))


def test_ivfpq_recall_after_rescore(ivf: AnnIndex, store: VectorStore, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, ids = data
    assert ivf.ntotal == N and ivf.plan.kind == "ivfpq"
    assert isinstance(faiss.downcast_index(faiss.extract_index_ivf(ivf._index)), faiss.IndexIVFPQ)
    q = _queries(x, 50)
    truth = _exact_top(x, ids, q, 10)
    _, cand = ivf.search(q, 100)
    hits = 0
    for i in range(q.shape[0]):
        top, _ = exact_rescore(q[i], cand[i], store)
        hits += len(set(top[:10].tolist()) & set(truth[i].tolist()))
    assert hits / truth.size >= 0.9


def test_search_pads_when_fewer_than_k(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, ids = data
    index = AnnIndex.build(x[:3], ids[:3], plan_index(3, DIM, FORCED))
    scores, got = index.search(x[:1], 5)
    assert got[0, :3].tolist() != [-1, -1, -1] and (got[0, 3:] == -1).all()
    assert np.isneginf(scores[0, 3:]).all()
    assert sorted(got[0, :3].tolist()) == sorted(ids[:3].tolist())


def test_remove_never_returns(ivf: AnnIndex, data: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    x, ids = data
    index = AnnIndex.load(_saved(ivf, tmp_path))  # a private copy
    assert index is not None
    q = _queries(x, 20)
    _, before = index.search(q, 50)
    gone = np.unique(before[:, :10])
    index.remove(gone)
    assert index.ntotal == N - gone.size
    assert not np.isin(gone, index.ids()).any()
    _, after = index.search(q, 200)
    assert not np.isin(after, gone).any()
    index.remove(gone)  # idempotent
    assert index.ntotal == N - gone.size


def _saved(index: AnnIndex, tmp_path: Path) -> Path:
    path = tmp_path / "clip.image.faiss.npz"
    index.save(path)
    return path


@pytest.mark.parametrize("kind", ["flat", "ivfpq"])
def test_save_load_roundtrip(kind: str, ivf: AnnIndex, data: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    x, ids = data
    index = ivf if kind == "ivfpq" else AnnIndex.build(x, ids, IndexPlan(kind="flat"))
    path = _saved(index, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind
    loaded = AnnIndex.load(path)
    assert loaded is not None
    assert loaded.plan == index.plan and loaded.trained_n == index.trained_n
    np.testing.assert_array_equal(loaded.ids(), index.ids())
    q = _queries(x, 10)
    for a, b in zip(index.search(q, 20), loaded.search(q, 20)):
        np.testing.assert_array_equal(a, b)
    assert loaded.describe() == index.describe()


def test_load_missing_or_corrupt_returns_none(ivf: AnnIndex, tmp_path: Path) -> None:
    assert AnnIndex.load(tmp_path / "nope.npz") is None
    path = _saved(ivf, tmp_path)
    raw = bytearray(path.read_bytes())
    flipped = tmp_path / "flipped.npz"
    mid = len(raw) // 2
    raw[mid : mid + 16] = bytes(b ^ 0xFF for b in raw[mid : mid + 16])
    flipped.write_bytes(bytes(raw))
    assert AnnIndex.load(flipped) is None
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(path.read_bytes()[: len(raw) // 3])
    assert AnnIndex.load(truncated) is None
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not an index at all")
    assert AnnIndex.load(garbage) is None


@pytest.mark.parametrize("kind", ["flat", "ivfpq"])
def test_allowed_ids_filter(kind: str, ivf: AnnIndex, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, ids = data
    index = ivf if kind == "ivfpq" else AnnIndex.build(x, ids, IndexPlan(kind="flat"))
    q = _queries(x, 10)
    rng = np.random.default_rng(7)
    for n_allowed in (5, 60, 1500):
        allowed = np.sort(rng.choice(ids, n_allowed, replace=False))
        _, got = index.search(q, 10, allowed_ids=allowed)
        valid = got[got >= 0]
        assert np.isin(valid, allowed).all()
        # selective filters still fill the page (nprobe is widened, then all lists are scanned)
        assert ((got >= 0).sum(axis=1) == min(10, n_allowed)).all()
        if kind == "flat":
            mask = np.isin(ids, allowed)
            np.testing.assert_array_equal(got, _exact_top(x, ids, q, 10, mask))
    _, none = index.search(q, 10, allowed_ids=np.array([], dtype=np.int64))
    assert (none == -1).all()
    _, unknown = index.search(q, 10, allowed_ids=np.array([2, 4]))  # even ids are not indexed
    assert (unknown == -1).all()


def test_empty_and_single(tmp_path: Path) -> None:
    empty = AnnIndex.build(np.zeros((0, DIM), np.float32), np.zeros(0, np.int64), plan_index(0, DIM, FORCED))
    scores, got = empty.search(np.ones((2, DIM), np.float32), 5)
    assert got.shape == (2, 5) and (got == -1).all()
    assert empty.describe()["ntotal"] == 0
    one = AnnIndex.build(np.ones((1, DIM), np.float32) / 8, np.array([42]), plan_index(1, DIM, FORCED))
    _, got = one.search(np.ones(DIM, np.float32) / 8, 3)
    assert got.tolist() == [[42, -1, -1]]


def test_describe(ivf: AnnIndex) -> None:
    d = ivf.describe()
    assert d["kind"] == "ivfpq" and d["ntotal"] == N and d["factory"] == ivf.plan.factory
    assert d["nlist"] == ivf.plan.nlist and d["m"] == ivf.plan.m and d["trained_n"] == N
    assert d["bytes"] > N * (ivf.plan.m * ivf.plan.nbits / 8 + 8)
    assert d["bytes_per_vector"] == pytest.approx(d["bytes"] / N)


# -- sync_index -----------------------------------------------------------------------------


def test_sync_incremental_add_remove(store: VectorStore, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, ids = data
    s = Settings(ivf_min_vectors=100_000)
    index = sync_index(None, store, ids[:1000], s)
    assert index.plan.kind == "flat" and index.ntotal == 1000
    live = np.concatenate([ids[100:1000], ids[1000:1200]])  # 100 removed, 200 added
    same = sync_index(index, store, live, s)
    assert same is index  # incremental, not rebuilt
    np.testing.assert_array_equal(same.ids(), live)
    _, got = same.search(x[:5], 10)  # rows 0..4 were removed
    assert not np.isin(got, ids[:100]).any()
    _, got = same.search(x[1100:1105], 1)
    assert got[:, 0].tolist() == ids[1100:1105].tolist()
    assert sync_index(same, store, np.array([], np.int64), s).ntotal == 0
    assert sync_index(None, store, ids[:1], s).ids().tolist() == [int(ids[0])]


def test_sync_rebuilds_on_threshold_crossing_and_growth(
    store: VectorStore, data: tuple[np.ndarray, np.ndarray]
) -> None:
    x, ids = data
    s = Settings(ivf_min_vectors=1000, retrain_growth=2.0, faiss_gpu=False)
    small = sync_index(None, store, ids[:500], s)
    assert small.plan.kind == "flat"
    crossed = sync_index(small, store, ids[:1100], s)
    assert crossed is not small and crossed.plan.kind == "ivfpq" and crossed.trained_n == 1100
    grown = sync_index(crossed, store, ids[:2000], s)  # < 2x: incremental
    assert grown is crossed and grown.trained_n == 1100 and grown.ntotal == 2000
    retrained = sync_index(grown, store, ids[:2200], s)  # 2x since training: retrain
    assert retrained is not grown and retrained.trained_n == 2200
    assert retrained.plan == plan_index(2200, DIM, s)
    np.testing.assert_array_equal(retrained.ids(), ids[:2200])
    back = sync_index(retrained, store, ids[:900], s)  # below the threshold again: exact
    assert back.plan.kind == "flat" and back.ntotal == 900


def test_sync_follows_nprobe_setting(
    ivf: AnnIndex, store: VectorStore, data: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    _, ids = data
    index = AnnIndex.load(_saved(ivf, tmp_path))
    assert index is not None
    synced = sync_index(index, store, ids, Settings(ivf_min_vectors=1000, nprobe=3))
    assert synced is index and synced.plan.nprobe == 3


def test_sync_missing_vectors_raise(store: VectorStore) -> None:
    with pytest.raises(KeyError):
        sync_index(None, store, np.array([2, 4], np.int64), Settings())


@pytest.mark.parametrize("kind", ["flat", "ivfpq"])
def test_allowed_ids_with_huge_ids(kind: str, data: tuple[np.ndarray, np.ndarray]) -> None:
    """Ids beyond the bitmap range use a hash-set selector; results must be the same."""
    x, ids = data
    big = ids + (1 << 40)
    plan = IndexPlan(kind="flat") if kind == "flat" else plan_index(N, DIM, FORCED)
    small_index, big_index = AnnIndex.build(x, ids, plan), AnnIndex.build(x, big, plan)
    q = _queries(x, 5)
    allowed = np.sort(np.random.default_rng(3).choice(ids, 40, replace=False))
    _, a = small_index.search(q, 10, allowed_ids=allowed)
    _, b = big_index.search(q, 10, allowed_ids=allowed + (1 << 40))
    assert (a >= 0).all() and np.isin(a, allowed).all()
    np.testing.assert_array_equal(b, a + (1 << 40))


def test_add_rejects_present_ids_and_keeps_ids_sorted(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, ids = data
    index = AnnIndex.build(x[100:200], ids[100:200], IndexPlan(kind="flat"))
    with pytest.raises(ValueError):
        index.add(x[150:151], ids[150:151])
    with pytest.raises(ValueError):
        index.add(x[:2], np.array([ids[0], ids[0]]))
    index.add(x[:100][::-1], ids[:100][::-1])  # older ids, out of order
    index.add(x[200:300], ids[200:300])
    np.testing.assert_array_equal(index.ids(), ids[:300])
    index.remove(np.array([ids[5], ids[250], 10**12]))
    assert index.ntotal == 298 and not np.isin([ids[5], ids[250]], index.ids()).any()
    _, got = index.search(x[[5, 250, 7]], 1)
    assert got[2, 0] == ids[7] and got[0, 0] != ids[5] and got[1, 0] != ids[250]


def test_opq_plan_builds_and_filters(data: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    x, ids = data
    x, ids = x[:1000], ids[:1000]  # OPQ training is slow; keep it small
    plan = IndexPlan(kind="ivfpq", nlist=16, m=8, nbits=4, opq=True, train_size=1000, nprobe=4)
    assert plan.factory == "OPQ8,IVF16(SQfp16),PQ8x4"
    index = AnnIndex.build(x, ids, plan)
    allowed = ids[::97]
    _, got = index.search(_queries(x, 3), 10, allowed_ids=allowed)
    assert np.isin(got, allowed).all()
    index.remove(allowed[:3])
    loaded = AnnIndex.load(_saved(index, tmp_path))
    assert loaded is not None and loaded.ntotal == ids.size - 3
    _, again = loaded.search(_queries(x, 3), 10, allowed_ids=allowed)
    assert allowed.size - 3 < 10
    assert np.isin(again[:, : allowed.size - 3], allowed[3:]).all() and (again[:, allowed.size - 3 :] == -1).all()
