from __future__ import annotations

import math
from pathlib import Path

import faiss
import numpy as np
import pytest

from mmsearch.search import ann
from mmsearch.search.ann import AnnIndex
from mmsearch.search.index_plan import IndexPlan, plan_index
from mmsearch.search.rerank import exact_rescore
from mmsearch.settings import Settings
from mmsearch.storage.vectors import VectorStore

DIM = 64
N = 3000
FORCED = Settings(ivf_min_vectors=1000, retrain_growth=4.0, nprobe=None, faiss_gpu=False)
# small data with an HNSW coarse quantiser: nlist = N // 39 = 76 lists
FORCED_HNSW = Settings(ivf_min_vectors=1000, hnsw_min_vectors=2000, nprobe=None, faiss_gpu=False)
BIG_BUDGET = 100_000  # build_memory_mb that never binds, to check the guideline rules alone

Data = tuple[np.ndarray, np.ndarray]


def _clustered(n: int, seed: int = 0, clusters: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, DIM)).astype(np.float32)
    x = centers[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float16).astype(np.float32)  # exactly what the float16 store gives back


def _queries(x: np.ndarray, nq: int, seed: int = 1) -> np.ndarray:
    """Off-distribution queries: a data point plus a shared offset and noise (like text vs image)."""
    rng = np.random.default_rng(seed)
    offset = rng.standard_normal(DIM).astype(np.float32)
    offset /= np.linalg.norm(offset)
    noise = rng.standard_normal((nq, DIM)).astype(np.float32) / math.sqrt(DIM)
    q = x[rng.integers(0, x.shape[0], nq)] + 0.8 * offset + 0.6 * noise
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def _make_store(folder: Path, ids: np.ndarray, x: np.ndarray) -> VectorStore:
    s = VectorStore(folder, "clip.image", DIM)
    s.append(ids, x)
    return s


@pytest.fixture(scope="module")
def data() -> Data:
    x = _clustered(N)
    ids = np.arange(1, 2 * N + 1, 2, dtype=np.int64)  # gaps, like SQL ids after deletes
    return x, ids


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, data: Data) -> VectorStore:
    x, ids = data
    return _make_store(tmp_path_factory.mktemp("vectors"), ids, x)


def _planned(store: VectorStore, ids: np.ndarray, settings: Settings, coarse: str) -> AnnIndex:
    plan = plan_index(N, DIM, settings)
    assert plan.kind == "ivfpq" and plan.coarse == coarse
    return AnnIndex.build(store, ids, plan)


@pytest.fixture(scope="module")
def ivf(store: VectorStore, data: Data) -> AnnIndex:
    return _planned(store, data[1], FORCED, "flat")


@pytest.fixture(scope="module")
def hnsw(store: VectorStore, data: Data) -> AnnIndex:
    return _planned(store, data[1], FORCED_HNSW, "hnsw")


@pytest.fixture(scope="module")
def flat(store: VectorStore, data: Data) -> AnnIndex:
    _, ids = data
    return AnnIndex.build(store, ids, IndexPlan(kind="flat"))


def _index(kind: str, request: pytest.FixtureRequest) -> AnnIndex:
    return request.getfixturevalue({"flat": "flat", "ivfpq": "ivf", "hnsw": "hnsw"}[kind])


# -- plan_index -----------------------------------------------------------------------------


def test_plan_flat_below_threshold() -> None:
    s = Settings(ivf_min_vectors=50_000)
    for n in (0, 1, 2, 1000, 49_999):
        plan = plan_index(n, 512, s)
        assert plan.kind == "flat" and plan.factory == "Flat"


@pytest.mark.parametrize("n", [50_000, 70_000, 200_000, 1_000_000, 3_000_000])
def test_plan_ivfpq_follows_guidelines(n: int) -> None:
    dim = 512
    plan = plan_index(n, dim, Settings(ivf_min_vectors=50_000, build_memory_mb=BIG_BUDGET))
    assert plan.kind == "ivfpq" and plan.coarse == "flat"
    assert 4 * math.sqrt(n) <= plan.nlist <= 16 * math.sqrt(n)
    assert 30 * plan.nlist <= plan.train_size <= min(n, 256 * plan.nlist)
    assert dim % plan.m == 0
    assert plan.nbits == 8
    assert plan.m * plan.nbits / 8 + 8 <= 80  # code + id
    assert 1 <= plan.nprobe <= plan.nlist
    assert plan.factory == f"IVF{plan.nlist}(SQfp16),PQ{plan.m}"
    assert plan.build_factory == f"IVF{plan.nlist},PQ{plan.m}"


def test_plan_at_one_million() -> None:
    plan = plan_index(1_000_000, 512, Settings())
    assert (plan.nlist, plan.m, plan.nbits, plan.nprobe, plan.coarse) == (4096, 64, 8, 64, "flat")
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


def test_plan_hnsw_coarse_from_threshold() -> None:
    s = Settings(ivf_min_vectors=1000, hnsw_min_vectors=2000)
    below, at = plan_index(1999, DIM, s), plan_index(2000, DIM, s)
    assert below.coarse == "flat" and "HNSW" not in below.factory
    assert at.kind == "ivfpq" and at.coarse == "hnsw"
    assert at.nlist == 2000 // 39  # the wiki's 65,536 lists, capped so every centroid gets 39 points
    assert at.train_size >= 39 * at.nlist
    # the HNSW quantiser keeps float32 centroids: what is built is what is saved
    assert at.factory == at.build_factory == f"IVF{at.nlist}_HNSW32,PQ{at.m}x{at.nbits}"
    # at full scale (given the memory for the training sample), the wiki's own factory strings
    roomy = Settings(build_memory_mb=BIG_BUDGET)
    assert plan_index(3_999_999, 512, roomy).coarse == "flat"
    assert plan_index(4_000_000, 512, roomy).factory == "IVF65536_HNSW32,PQ64"
    assert plan_index(20_000_000, 512, roomy).factory == "IVF262144_HNSW32,PQ64"


@pytest.mark.parametrize(("n", "dim", "mb"), [(1_000_000, 512, 16), (1_000_000, 512, 100), (50_000, 1024, 16),
                                              (5_000_000, 512, 384), (2_000, DIM, 16)])
def test_build_memory_caps_train_size(n: int, dim: int, mb: int) -> None:
    s = Settings(ivf_min_vectors=1000, build_memory_mb=mb)
    plan = plan_index(n, dim, s)
    roomy = plan_index(n, dim, Settings(ivf_min_vectors=1000, build_memory_mb=BIG_BUDGET))
    assert plan.kind == "ivfpq"
    assert plan.train_size * dim * 4 <= mb * 2**20  # the float32 sample fits the budget
    assert plan.train_size >= 39 * plan.nlist  # fewer lists rather than under-trained ones
    assert plan.train_size <= roomy.train_size and plan.nlist <= roomy.nlist
    if roomy.train_size * dim * 4 > mb * 2**20:
        assert plan.train_size < roomy.train_size  # the cap did bind
    assert plan.m * plan.nbits / 8 + 8 <= 80


def test_plan_nprobe_default() -> None:
    from mmsearch.search.index_plan import default_nprobe

    assert default_nprobe(1) == 1 and default_nprobe(10) == 10  # never more than nlist
    assert default_nprobe(100) == 16 and default_nprobe(4096) == 64 and default_nprobe(65_536) == 256


# -- AnnIndex -------------------------------------------------------------------------------


def _exact_top(x: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int, mask: np.ndarray | None = None) -> np.ndarray:
    s = q @ x.T
    if mask is not None:
        s[:, ~mask] = -np.inf
    order = np.argsort(-s, axis=1)[:, :k]
    return np.where(np.isfinite(np.take_along_axis(s, order, axis=1)), ids[order], -1)


def test_flat_is_exact(flat: AnnIndex, data: Data) -> None:
    x, ids = data
    assert flat.plan.kind == "flat" and flat.ntotal == N
    q = _queries(x, 20)
    scores, got = flat.search(q, 10)
    assert got.dtype == np.int64 and scores.dtype == np.float32 and got.shape == (20, 10)
    np.testing.assert_array_equal(got, _exact_top(x, ids, q, 10))


def _recall_after_rescore(index: AnnIndex, store: VectorStore, x: np.ndarray, ids: np.ndarray) -> float:
    q = _queries(x, 50)
    truth = _exact_top(x, ids, q, 10)
    _, cand = index.search(q, 100)
    hits = 0
    for i in range(q.shape[0]):
        top, _ = exact_rescore(q[i], cand[i], store)
        hits += len(set(top[:10].tolist()) & set(truth[i].tolist()))
    return hits / truth.size


def test_ivfpq_recall_after_rescore(ivf: AnnIndex, store: VectorStore, data: Data) -> None:
    x, ids = data
    assert ivf.ntotal == N and ivf.plan.kind == "ivfpq" and ivf.trained_n == N
    ivfpq = faiss.downcast_index(faiss.extract_index_ivf(ivf._index))
    assert isinstance(ivfpq, faiss.IndexIVFPQ)
    assert isinstance(faiss.downcast_index(ivfpq.quantizer), faiss.IndexScalarQuantizer)  # float16 centroids
    np.testing.assert_array_equal(ivf.ids(), ids)
    assert _recall_after_rescore(ivf, store, *data) >= 0.9


def test_hnsw_coarse_builds_and_recalls(hnsw: AnnIndex, store: VectorStore, data: Data) -> None:
    x, ids = data
    assert hnsw.ntotal == N and hnsw.plan.coarse == "hnsw"
    ivfpq = faiss.downcast_index(faiss.extract_index_ivf(hnsw._index))
    assert isinstance(ivfpq, faiss.IndexIVFPQ) and ivfpq.nlist == N // 39
    assert isinstance(faiss.downcast_index(ivfpq.quantizer), faiss.IndexHNSWFlat)
    assert _recall_after_rescore(hnsw, store, x, ids) >= 0.9
    allowed = np.sort(np.random.default_rng(5).choice(ids, 7, replace=False))
    _, got = hnsw.search(_queries(x, 5), 10, allowed_ids=allowed)
    assert np.isin(got[:, :7], allowed).all() and (got[:, 7:] == -1).all()


def test_search_pads_when_fewer_than_k(store: VectorStore, data: Data) -> None:
    x, ids = data
    index = AnnIndex.build(store, ids[:3], plan_index(3, DIM, FORCED))
    scores, got = index.search(x[:1], 5)
    assert got[0, :3].tolist() != [-1, -1, -1] and (got[0, 3:] == -1).all()
    assert np.isneginf(scores[0, 3:]).all()
    assert sorted(got[0, :3].tolist()) == sorted(ids[:3].tolist())


@pytest.mark.parametrize("kind", ["flat", "ivfpq"])
def test_remove_never_returns(kind: str, request: pytest.FixtureRequest, data: Data, tmp_path: Path) -> None:
    x, _ = data
    index = AnnIndex.load(_saved(_index(kind, request), tmp_path))  # a private copy
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


@pytest.mark.parametrize("kind", ["flat", "ivfpq", "hnsw"])
def test_save_load_roundtrip(kind: str, request: pytest.FixtureRequest, data: Data, tmp_path: Path) -> None:
    x, _ = data
    index = _index(kind, request)
    path = _saved(index, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind
    loaded = AnnIndex.load(path)
    assert loaded is not None
    assert loaded.plan == index.plan and loaded.trained_n == index.trained_n and loaded.seq == index.seq
    np.testing.assert_array_equal(loaded.ids(), index.ids())
    q = _queries(x, 10)
    for a, b in zip(index.search(q, 20), loaded.search(q, 20)):
        np.testing.assert_array_equal(a, b)
    assert loaded.meta() == index.meta()


def test_meta_and_seq(store: VectorStore, ivf: AnnIndex, data: Data, tmp_path: Path) -> None:
    m = ivf.meta()
    assert m["plan"]["kind"] == "ivfpq" and m["ntotal"] == N and m["factory"] == ivf.plan.factory
    assert m["plan"]["nlist"] == ivf.plan.nlist and m["trained_n"] == N and m["seq"] == 0
    _, ids = data
    index = AnnIndex.build(store, ids[:10], IndexPlan(kind="flat"), seq=41)
    assert index.seq == 41 and index.meta()["seq"] == 41
    index.seq = 57  # upkeep advances it after applying the log
    loaded = AnnIndex.load(_saved(index, tmp_path))
    assert loaded is not None and loaded.seq == 57 and loaded.meta()["seq"] == 57


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
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    assert AnnIndex.load(empty) is None
    assert AnnIndex.load(tmp_path) is None  # a folder where the file should be


@pytest.mark.parametrize("kind", ["flat", "ivfpq", "hnsw"])
def test_allowed_ids_filter(kind: str, request: pytest.FixtureRequest, data: Data) -> None:
    x, ids = data
    index = _index(kind, request)
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


def test_empty_and_single(store: VectorStore, data: Data) -> None:
    x, ids = data
    empty = AnnIndex.build(store, np.zeros(0, np.int64), plan_index(0, DIM, FORCED))
    scores, got = empty.search(np.ones((2, DIM), np.float32), 5)
    assert got.shape == (2, 5) and (got == -1).all()
    assert empty.meta()["ntotal"] == 0 and empty.ids().size == 0
    one = AnnIndex.build(store, ids[:1], plan_index(1, DIM, FORCED))
    _, got = one.search(x[0], 3)
    assert got.tolist() == [[int(ids[0]), -1, -1]]


@pytest.mark.parametrize("kind", ["flat", "ivfpq"])
def test_allowed_ids_with_huge_ids(kind: str, store: VectorStore, data: Data, tmp_path: Path) -> None:
    """Ids beyond the bitmap range use a hash-set selector; results must be the same."""
    x, ids = data
    big = ids + (1 << 40)
    big_store = _make_store(tmp_path, big, x)
    plan = IndexPlan(kind="flat") if kind == "flat" else plan_index(N, DIM, FORCED)
    small_index, big_index = AnnIndex.build(store, ids, plan), AnnIndex.build(big_store, big, plan)
    q = _queries(x, 5)
    allowed = np.sort(np.random.default_rng(3).choice(ids, 40, replace=False))
    _, a = small_index.search(q, 10, allowed_ids=allowed)
    _, b = big_index.search(q, 10, allowed_ids=allowed + (1 << 40))
    assert (a >= 0).all() and np.isin(a, allowed).all()
    np.testing.assert_array_equal(b, a + (1 << 40))


def test_add_rejects_present_ids_and_keeps_ids_sorted(store: VectorStore, data: Data) -> None:
    x, ids = data
    index = AnnIndex.build(store, ids[100:200], IndexPlan(kind="flat"))
    with pytest.raises(ValueError):
        index.add(x[150:151], ids[150:151])
    with pytest.raises(ValueError):
        index.add(x[:2], np.array([ids[0], ids[0]]))
    with pytest.raises(ValueError):
        index.add(x[:2], ids[:3])  # shapes disagree
    index.add(x[:100][::-1], ids[:100][::-1])  # older ids, out of order
    index.add(x[200:300], ids[200:300])
    np.testing.assert_array_equal(index.ids(), ids[:300])
    index.remove(np.array([ids[5], ids[250], 10**12]))
    assert index.ntotal == 298 and not np.isin([ids[5], ids[250]], index.ids()).any()
    _, got = index.search(x[[5, 250, 7]], 1)
    assert got[2, 0] == ids[7] and got[0, 0] != ids[5] and got[1, 0] != ids[250]


def test_add_from_skips_present_and_returns_lost(store: VectorStore, data: Data) -> None:
    x, ids = data
    absent = np.array([2, 4, 10**9], np.int64)  # even ids were never stored
    index = AnnIndex.build(store, np.concatenate([ids[:50], absent]), IndexPlan(kind="flat"))
    np.testing.assert_array_equal(index.ids(), ids[:50])  # what the store lacks is left out
    lost = index.add_from(store, np.concatenate([ids[40:80], absent[:1]]))
    assert lost.tolist() == [2]  # present ids are skipped, not an error
    np.testing.assert_array_equal(index.ids(), ids[:80])
    _, got = index.search(x[60:65], 1)
    assert got[:, 0].tolist() == ids[60:65].tolist()
    assert index.add_from(store, ids[:80]).size == 0 and index.ntotal == 80


@pytest.mark.parametrize("kind", ["flat", "ivfpq", "hnsw"])
def test_build_reads_the_store_in_blocks(kind: str, store: VectorStore, data: Data,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """No call reads more than one block (or the bounded training sample) of the store: the
    whole store is never turned into one float32 array."""
    _, ids = data
    block, sample = 256, 1000
    monkeypatch.setattr(ann, "ADD_CHUNK", block)
    calls: list[tuple[int, int]] = []
    real_lookup = VectorStore.lookup

    def spy(self: VectorStore, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        found, vectors = real_lookup(self, wanted)
        calls.append((np.asarray(wanted).size, vectors.shape[0]))
        return found, vectors

    monkeypatch.setattr(VectorStore, "lookup", spy)
    if kind == "flat":
        plan = IndexPlan(kind="flat")
    else:
        plan = IndexPlan(kind="ivfpq", nlist=16, m=16, nbits=4, train_size=sample, nprobe=8,
                         coarse="hnsw" if kind == "hnsw" else "flat")
    index = AnnIndex.build(store, ids, plan)
    assert index.ntotal == N
    asked = [a for a, _ in calls]
    assert max(r for _, r in calls) <= (block if kind == "flat" else sample) < N
    adds = [a for a in asked if a <= block]
    assert sum(adds) == N  # every vector was added, one block at a time
    if kind != "flat":
        assert sum(asked) - sum(adds) == sample  # plus the training sample, read once
