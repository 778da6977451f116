"""The atlas: a 2-D map of a collection, one point per item, for looking rather than reading.

A map of the whole catalog would cost time and memory in proportion to the catalog, so the
atlas is drawn from an even sample of the collection's live vectors (at most ``limit``, spread
over the id range, so old and new items both appear). The sample is projected on its first two
principal components: a linear map, fast and the same on every call for the same sample, where
UMAP or t-SNE would add a heavy dependency and randomness for a picture that is only a way in.
Clicking a region of the map on the page asks for items like the points there (``similar``),
so a region is searched with the full vectors, never with the lossy 2-D coordinates.
"""

from __future__ import annotations

import time

import numpy as np
from pydantic import BaseModel, Field

from mmsearch.search.live import LiveIndex
from mmsearch.storage.catalog import Catalog
from mmsearch.storage.vectors import VectorStore

MAX_POINTS = 20_000


class AtlasPoint(BaseModel):
    id: int = Field(description="The item.")
    x: float = Field(description="First principal coordinate, scaled to [0, 1].")
    y: float = Field(description="Second principal coordinate, scaled to [0, 1].")
    modality: str
    path: str
    text: str | None = Field(None, description="The text of a caption or note, cut to 200 characters.")


class AtlasResponse(BaseModel):
    collection: str
    total: int = Field(description="Live vectors in the collection; the map shows a sample of them.")
    points: list[AtlasPoint]
    explained: list[float] = Field(description="Share of the sample's variance along x and along y.")
    timings_ms: dict[str, float]


def even_sample(ids: np.ndarray, limit: int) -> np.ndarray:
    """At most ``limit`` of the sorted ``ids``, evenly spaced: the same sample for the same ids."""
    if ids.size <= limit:
        return ids
    return ids[np.linspace(0, ids.size - 1, limit).round().astype(np.int64)]


def project(vectors: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """(n, 2) coordinates in [0, 1] on the sample's two principal axes, and the variance share of
    each. Signs are fixed (the largest loading of each axis is positive), so maps are stable."""
    n = vectors.shape[0]
    if n == 0:
        return np.empty((0, 2)), [0.0, 0.0]
    centred = vectors - vectors.mean(axis=0, keepdims=True)
    if n < 2 or not np.any(centred):
        return np.full((n, 2), 0.5), [0.0, 0.0]
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    axes = vt[:2]
    signs = np.sign(axes[np.arange(axes.shape[0]), np.abs(axes).argmax(axis=1)])
    axes = axes * signs[:, None]
    coords = centred @ axes.T
    if coords.shape[1] < 2:
        coords = np.hstack([coords, np.zeros((n, 1))])
    low, high = coords.min(axis=0), coords.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    scaled = (coords - low) / span
    scaled[:, high <= low] = 0.5
    variance = s**2
    shares = (variance[:2] / variance.sum()).tolist() if variance.sum() > 0 else [0.0, 0.0]
    return scaled, [round(v, 6) for v in shares] + [0.0] * (2 - len(shares))


def build_atlas(catalog: Catalog, index: LiveIndex, store: VectorStore, collection: str,
                limit: int) -> AtlasResponse:
    """One point per item: an item with several vectors (a sound's windows) shows its first
    sampled one. Cost: the live id list, then ``limit`` vectors and rows, whatever the size."""
    t0 = time.perf_counter()
    live = index.ids()
    sample = even_sample(live, limit)
    found, vectors = store.lookup(sample)
    sample = sample[found]
    owners = catalog.embedding_items(sample.tolist())
    keep, seen = [], set()
    for row, emb in enumerate(sample.tolist()):
        owner = owners.get(emb)
        if owner is not None and owner[0] not in seen:
            seen.add(owner[0])
            keep.append((row, owner[0]))
    rows = np.array([r for r, _ in keep], dtype=np.int64)
    vectors = vectors[rows] if rows.size else np.empty((0, vectors.shape[1] if vectors.ndim == 2 else 0))
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    t1 = time.perf_counter()
    coords, explained = project(vectors.astype(np.float64))
    t2 = time.perf_counter()
    items = catalog.items([item for _, item in keep])
    points = [AtlasPoint(id=item, x=round(float(x), 5), y=round(float(y), 5), modality=items[item].modality,
                         path=items[item].path, text=(items[item].text or None) and items[item].text[:200])
              for (_, item), (x, y) in zip(keep, coords) if item in items]
    t3 = time.perf_counter()
    timings = {"sample": (t1 - t0) * 1000, "project": (t2 - t1) * 1000, "hydrate": (t3 - t2) * 1000,
               "total": (t3 - t0) * 1000}
    return AtlasResponse(collection=collection, total=int(live.size), points=points, explained=explained,
                         timings_ms={k: round(v, 3) for k, v in timings.items()})
