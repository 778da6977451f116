"""Near-duplicate groups in a collection: items whose vectors lie within a cosine of each other.

Every live vector asks the collection's live index (the saved FAISS index plus the change log,
search/live.py) for its nearest neighbours, in blocks of query vectors read from the float16
store, all cores at once: a batched kNN, the "ANN range search" of a photo library's duplicate
finder. Every neighbour is then scored exactly from the float16 vectors: an IVF-PQ index ranks
near copies first but estimates their scores poorly (random 512-d vectors at cosine 0.97 can be
estimated below 0.8). A vector whose k-th neighbour still passes asks again with 4k, so a large
group is never cut. Memory holds one block, its neighbour lists and the pairs found, never the
collection's vectors in float32.

Groups are connected components: each member is within the threshold of at least one other
member (single linkage), as duplicate finders group "this photo, its crop, the crop's resize".
An item with several vectors (a video's frames, a sound's windows) is within the threshold of
another when at least half of each one's vectors are: two films that open on the same black
frame are not duplicates, a re-encoded copy is.
"""

from __future__ import annotations

import time

import numpy as np
from pydantic import BaseModel, Field

from mmsearch.search.live import LiveIndex
from mmsearch.storage.catalog import Catalog
from mmsearch.storage.vectors import VectorStore

BLOCK = 2048  # query vectors per batched search
DEGRADED_BLOCK = 128  # without an index, each block is scored against 65,536 rows at a time
FIRST_K = 8  # neighbours asked for first; 4x more for a vector whose k-th neighbour still passes
MAX_K = 4096
COVERAGE = 0.5  # items with several vectors (videos, sounds): the share of each one's that must match the other's


class DuplicateItem(BaseModel):
    id: int
    path: str
    size: int | None = Field(None, description="File size in bytes.")
    width: int | None = None
    height: int | None = None


class DuplicateGroup(BaseModel):
    items: list[DuplicateItem] = Field(description="Members, by item id (oldest first).")
    score: float = Field(description="The highest cosine between two members.")


class DuplicatesResponse(BaseModel):
    collection: str
    threshold: float
    groups: list[DuplicateGroup] = Field(description="Largest groups first.")
    timings_ms: dict[str, float]


def near_pairs(index: LiveIndex, store: VectorStore, threshold: float) -> dict[tuple[int, int], float]:
    """(embedding id a, embedding id b) with a < b -> exact cosine, for every pair at or above
    ``threshold`` that the index finds among each vector's nearest neighbours."""
    ids = index.ids()
    total = index.ntotal
    block = DEGRADED_BLOCK if index.degraded else BLOCK
    pairs: dict[tuple[int, int], float] = {}
    for start in range(0, ids.size, block):
        found, vectors = store.lookup(ids[start:start + block])
        queries = ids[start:start + block][found]
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        rows, k = np.arange(queries.size), FIRST_K
        while rows.size:
            _, labels = index.search(vectors[rows], min(k + 1, total))
            passes = _confirm(pairs, queries[rows], vectors[rows], labels, store, threshold)
            more = passes[:, -1] if k + 1 < total and k < MAX_K else np.zeros(rows.size, bool)
            rows, k = rows[more], k * 4
    return pairs


def _confirm(pairs: dict[tuple[int, int], float], queries: np.ndarray, vectors: np.ndarray, labels: np.ndarray,
             store: VectorStore, threshold: float) -> np.ndarray:
    """Score every neighbour exactly (IVF-PQ ranks well but estimates scores poorly: a true near
    copy can score far below the threshold there) and keep the pairs that reach the threshold.
    Returns which (query, neighbour) cells passed."""
    passes = np.zeros(labels.shape, dtype=bool)
    r, c = np.nonzero((labels >= 0) & (labels != queries[:, None]))
    if not r.size:
        return passes
    found, neighbours = store.lookup(labels[r, c])
    r, c = r[found], c[found]
    neighbours /= np.maximum(np.linalg.norm(neighbours, axis=1, keepdims=True), 1e-12)
    cosines = np.einsum("ij,ij->i", vectors[r], neighbours)
    ok = cosines >= threshold
    passes[r[ok], c[ok]] = True
    for a, b, cos in zip(queries[r[ok]].tolist(), labels[r[ok], c[ok]].tolist(), cosines[ok].tolist()):
        pairs[(min(a, b), max(a, b))] = cos
    return passes


def _segments(catalog: Catalog, collection: str, items: set[int]) -> dict[int, int]:
    """How many vectors each item has in the collection: a video's frames, a sound's windows."""
    counts: dict[int, int] = {}
    for row in catalog.embeddings_of(sorted(items)) if items else []:
        if row[2] == collection:
            counts[row[1]] = counts.get(row[1], 0) + 1
    return counts


def find_duplicates(catalog: Catalog, index: LiveIndex, store: VectorStore, collection: str, threshold: float,
                    limit: int | None = None) -> DuplicatesResponse:
    """Groups of near-duplicate items: pairs of vectors become pairs of items (a sound's windows
    are one item, never its own duplicate), joined into connected components."""
    t0 = time.perf_counter()
    pairs = near_pairs(index, store, threshold)
    t1 = time.perf_counter()
    owners = catalog.embedding_items(sorted({e for pair in pairs for e in pair}))
    parent: dict[int, int] = {}

    def root(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    best: dict[tuple[int, int], float] = {}
    matched: dict[tuple[int, int], tuple[set[int], set[int]]] = {}  # each one's segments with a match in the other
    for (a, b), cos in pairs.items():
        if a not in owners or b not in owners or owners[a][0] == owners[b][0]:
            continue
        (x, ex), (y, ey) = sorted(((owners[a][0], a), (owners[b][0], b)))
        best[(x, y)] = max(best.get((x, y), -1.0), cos)
        mx, my = matched.setdefault((x, y), (set(), set()))
        mx.add(ex)
        my.add(ey)
    segments = _segments(catalog, collection, {i for pair in matched for i in pair})
    for (x, y), (mx, my) in matched.items():
        if len(mx) >= COVERAGE * segments.get(x, 1) and len(my) >= COVERAGE * segments.get(y, 1):
            parent[root(x)] = root(y)
        else:  # a shared moment (a title card, a fade to black) does not make two videos the same
            best.pop((x, y))
    members: dict[int, list[int]] = {}
    for item in parent:
        members.setdefault(root(item), []).append(item)
    score: dict[int, float] = {}
    for (x, _), cos in best.items():
        score[root(x)] = max(score.get(root(x), -1.0), cos)
    ordered = sorted(members, key=lambda r: (-len(members[r]), -score[r], min(members[r])))[:limit]
    rows = catalog.items([i for r in ordered for i in members[r]])
    groups = [DuplicateGroup(score=round(score[r], 6), items=[
        DuplicateItem(id=i, path=rows[i].path, size=rows[i].size, width=rows[i].facts.width,
                      height=rows[i].facts.height) for i in sorted(members[r]) if i in rows]) for r in ordered]
    timings = {"search": (t1 - t0) * 1000, "total": (time.perf_counter() - t0) * 1000}
    return DuplicatesResponse(collection=collection, threshold=threshold,
                              groups=[g for g in groups if len(g.items) > 1],
                              timings_ms={k: round(v, 3) for k, v in timings.items()})
