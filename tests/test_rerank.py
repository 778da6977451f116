from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmsearch.search.rerank import exact_rescore, mmr
from mmsearch.storage.vectors import VectorStore

DIM = 32


def _normed(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture()
def store_and_data(tmp_path: Path) -> tuple[VectorStore, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = _normed(rng.standard_normal((200, DIM)))
    ids = np.arange(1, 401, 2, dtype=np.int64)  # odd ids only
    store = VectorStore(tmp_path, "clip.image", DIM)
    store.append(ids, x)
    return store, ids, x


def _cos(v: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Cosine of each stored (float16, so not quite unit) vector with the unit query."""
    return (v @ q) / np.linalg.norm(v, axis=1)


def test_exact_rescore_is_a_true_cosine(tmp_path: Path) -> None:
    store = VectorStore(tmp_path, "c", DIM)
    v = _normed(np.random.default_rng(7).standard_normal(DIM)).astype(np.float32)
    store.append(np.array([1], dtype=np.int64), v[None, :])
    _, scores = exact_rescore(v, np.array([1]), store)
    assert scores[0] <= 1.0 and scores[0] == pytest.approx(1.0, abs=1e-6)


def test_exact_rescore_orders_by_exact_cosine(store_and_data: tuple[VectorStore, np.ndarray, np.ndarray]) -> None:
    store, ids, x = store_and_data
    q = _normed(np.random.default_rng(1).standard_normal(DIM))
    cand = np.array([ids[5], -1, ids[17], 2, ids[5], ids[100], 999_999, ids[3], -1], dtype=np.int64)
    out_ids, out_scores = exact_rescore(q, cand, store)
    assert sorted(out_ids.tolist()) == sorted({int(ids[5]), int(ids[17]), int(ids[100]), int(ids[3])})
    np.testing.assert_allclose(out_scores, _cos(store.get(out_ids), q), rtol=1e-6, atol=1e-7)  # float32 sums in another order
    assert (np.diff(out_scores) <= 0).all()
    # stored float16 vs float32 source: scores agree closely
    rows = (out_ids - 1) // 2
    np.testing.assert_allclose(out_scores, x[rows] @ q, atol=5e-3)


def test_exact_rescore_empty(store_and_data: tuple[VectorStore, np.ndarray, np.ndarray]) -> None:
    store, _, _ = store_and_data
    out_ids, out_scores = exact_rescore(np.ones(DIM, np.float32) / np.sqrt(DIM), np.array([-1, -1, 4]), store)
    assert out_ids.size == 0 and out_scores.size == 0
    with pytest.raises(ValueError):
        exact_rescore(np.ones(DIM + 1, np.float32), np.array([1]), store)


def test_mmr_zero_diversity_is_top_k(store_and_data: tuple[VectorStore, np.ndarray, np.ndarray]) -> None:
    store, ids, _ = store_and_data
    q = _normed(np.random.default_rng(2).standard_normal(DIM))
    r_ids, r_scores = exact_rescore(q, ids, store)
    perm = np.random.default_rng(3).permutation(r_ids.size)  # input order must not matter
    m_ids, m_scores = mmr(q, r_ids[perm], r_scores[perm], store, k=10, diversity=0.0)
    assert m_ids.tolist() == r_ids[:10].tolist()
    np.testing.assert_array_equal(m_scores, r_scores[:10])
    assert mmr(q, r_ids, r_scores, store, k=500, diversity=0.0)[0].size == r_ids.size


def test_mmr_diversity_avoids_near_duplicates(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    q = _normed(rng.standard_normal(DIM))
    # 5 "bursts" of 6 near-identical items each, in different directions around q (pairwise
    # cosine ~0.4), burst b at decreasing similarity to q (0.71, 0.61, 0.53, ...)
    bases = []
    for b in range(5):
        u = rng.standard_normal(DIM)
        u = _normed(u - (u @ q) * q)
        bases.append(_normed(q + (1.0 + 0.3 * b) * u))
    x = np.stack([_normed(base + 0.01 * rng.standard_normal(DIM)) for base in bases for _ in range(6)])
    burst = np.repeat(np.arange(5), 6)
    ids = np.arange(1, x.shape[0] + 1, dtype=np.int64)
    store = VectorStore(tmp_path, "s", DIM)
    store.append(ids, x)
    r_ids, r_scores = exact_rescore(q, ids, store)

    plain, _ = mmr(q, r_ids, r_scores, store, k=5, diversity=0.0)
    diverse, diverse_scores = mmr(q, r_ids, r_scores, store, k=5, diversity=0.5)
    plain_bursts = len(set(burst[plain - 1].tolist()))
    diverse_bursts = len(set(burst[diverse - 1].tolist()))
    assert plain_bursts == 1  # the top 5 are all copies of the best burst
    assert diverse_bursts == 5
    assert diverse[0] == r_ids[0]  # the best item is still picked first
    np.testing.assert_allclose(diverse_scores, _cos(store.get(diverse), q), rtol=1e-5)

    def max_pair_sim(sel: np.ndarray) -> float:
        v = store.get(sel)
        s = v @ v.T
        np.fill_diagonal(s, -1)
        return float(s.max())

    assert max_pair_sim(diverse) < max_pair_sim(plain) - 0.1
    assert len(set(diverse.tolist())) == 5


def test_mmr_validates(store_and_data: tuple[VectorStore, np.ndarray, np.ndarray]) -> None:
    store, ids, _ = store_and_data
    q = np.ones(DIM, np.float32) / np.sqrt(DIM)
    with pytest.raises(ValueError):
        mmr(q, ids[:3], np.zeros(3, np.float32), store, k=2, diversity=1.5)
    with pytest.raises(ValueError):
        mmr(q, ids[:3], np.zeros(2, np.float32), store, k=2, diversity=0.5)
    out_ids, out_scores = mmr(q, ids[:0], np.zeros(0, np.float32), store, k=3, diversity=0.5)
    assert out_ids.size == 0 and out_scores.size == 0


def test_mmr_drops_ids_no_longer_stored(store_and_data: tuple[VectorStore, np.ndarray, np.ndarray]) -> None:
    store, ids, _ = store_and_data
    q = _normed(np.random.default_rng(5).standard_normal(DIM))
    r_ids, r_scores = exact_rescore(q, ids, store)
    store.compact(r_ids[1:])  # the best one is compacted away between rescoring and MMR
    m_ids, m_scores = mmr(q, r_ids[:10], r_scores[:10], store, k=5, diversity=0.3)
    assert m_ids.size == 5 and r_ids[0] not in m_ids.tolist()
    assert m_ids[0] == r_ids[1]
    store.compact(np.array([], dtype=np.int64))
    assert mmr(q, r_ids[:10], r_scores[:10], store, k=5, diversity=0.3)[0].size == 0
