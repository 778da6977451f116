"""Second stage of a query: ANN candidates are rescored with the exact stored vectors (PQ scores
are only good enough to shortlist), then optionally diversified with maximal marginal relevance
so that near-duplicates (bursts of similar photos, re-encoded files) do not fill a page."""

from __future__ import annotations

import numpy as np

from mmsearch.storage.vectors import VectorStore


def dot_rows(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """``matrix @ vector`` on this thread. OpenBLAS splits any matrix-vector product above ~9,000
    numbers over its threads, and on a busy 2-core machine each call then waits for a thread to
    be scheduled: measured 20 ms for 1,000 x 512, against 0.04 ms here (0.01 ms idle either way)."""
    return np.einsum("ij,j->i", matrix, np.asarray(vector, dtype=matrix.dtype).reshape(-1))


def exact_rescore(
    query: np.ndarray, candidate_ids: np.ndarray, store: VectorStore
) -> tuple[np.ndarray, np.ndarray]:
    """(ids, exact cosine scores), best first. -1 padding, duplicates and ids the store no longer
    holds are dropped; ``query`` is expected L2-normalised like the stored vectors."""
    q = np.asarray(query, dtype=np.float32).reshape(-1)
    if q.shape[0] != store.dim:
        raise ValueError(f"query has dim {q.shape[0]}, store {store.name!r} has {store.dim}")
    ids = np.unique(np.asarray(candidate_ids, dtype=np.int64).reshape(-1))  # sorted: sequential reads
    ids = ids[ids >= 0]
    found, vectors = store.lookup(ids)
    ids = ids[found]
    if ids.size == 0:
        return ids, np.empty(0, dtype=np.float32)
    # float16 storage leaves norms a hair off 1; dividing keeps scores true cosines (<= 1)
    scores = dot_rows(vectors, q) / np.maximum(np.linalg.norm(vectors, axis=1), 1e-12)
    order = np.argsort(-scores, kind="stable")
    return ids[order], scores[order].astype(np.float32, copy=False)


def mmr(
    query: np.ndarray,
    ids: np.ndarray,
    scores: np.ndarray,
    store: VectorStore,
    k: int,
    diversity: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy maximal marginal relevance over the candidates: each pick maximises
    ``(1 - diversity) * score - diversity * max cosine to the items already picked``.

    ``scores`` is the relevance (normally exact cosine from exact_rescore, but fused scores work
    too, which is why it is not recomputed from ``query``; the query only fixes the dimension).
    diversity 0 is plain top-k by score; 1 ignores relevance after the first (best) pick.
    Returns (ids, relevance scores) in pick order."""
    if not 0.0 <= diversity <= 1.0:
        raise ValueError(f"diversity must be in [0, 1], got {diversity}")
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    rel = np.asarray(scores, dtype=np.float32).reshape(-1)
    if ids.shape != rel.shape:
        raise ValueError(f"{ids.size} ids but {rel.size} scores")
    if np.asarray(query).size != store.dim:
        raise ValueError(f"query has dim {np.asarray(query).size}, store has {store.dim}")
    k = max(0, min(int(k), ids.size))
    by_score = np.argsort(-rel, kind="stable")
    if diversity == 0.0 or k <= 1:
        top = by_score[:k]
        return ids[top], rel[top]
    found, vecs = store.lookup(ids)  # ids compacted away since rescoring are dropped
    if not found.all():
        ids, rel = ids[found], rel[found]
        k = min(k, ids.size)
        by_score = np.argsort(-rel, kind="stable")
        if k == 0:
            return ids, rel
    vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    max_sim = np.full(ids.size, -np.inf, dtype=np.float32)
    picked = np.zeros(ids.size, dtype=bool)
    order = np.empty(k, dtype=np.int64)
    order[0] = by_score[0]
    for step in range(k):
        if step:
            objective = (1.0 - diversity) * rel - diversity * max_sim
            objective[picked] = -np.inf
            order[step] = int(np.argmax(objective))
        chosen = order[step]
        picked[chosen] = True
        np.maximum(max_sim, dot_rows(vecs, vecs[chosen]), out=max_sim)
    return ids[order], rel[order]
