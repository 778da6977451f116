"""Vectors out: the stored vectors of some items (``Engine.vectors``), or of whole collections
streamed to Parquet or ``.npy`` (``mmsearch export``), so other systems need not reach into the
float16 stores and their embedding ids.

An export walks each collection a block of rows at a time, along the (collection, id) index,
reading each block's vectors from the float16 store: memory stays at one block, whatever the
catalog's size, and no long transaction holds the database.
"""

from __future__ import annotations

import csv
import itertools
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mmsearch.errors import BadInput, NotFound
from mmsearch.search.live import LiveIndexes
from mmsearch.storage.catalog import Catalog

ExportFormat = Literal["parquet", "npy"]
BLOCK_ROWS = 8192  # rows per block: 16 MB of float32 at 512-d


@dataclass(frozen=True)
class ItemVectors:
    """Vectors of one collection, a row each: an audio item has one per window (its span in
    ``start``/``end``, NaN for a vector of the whole item). Float32 of the stored float16, unit
    to about 1e-3. ``ids`` are the embedding ids, which are also the FAISS ids."""

    collection: str
    ids: np.ndarray  # (n,) int64
    item_ids: np.ndarray  # (n,) int64
    vectors: np.ndarray  # (n, dim) float32
    start: np.ndarray  # (n,) float64 seconds
    end: np.ndarray  # (n,) float64 seconds
    paths: list[str] = field(default_factory=list)  # filled in by exports, one per row
    modalities: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.ids.size)


def _span(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def item_vectors(catalog: Catalog, indexes: LiveIndexes, item_ids: Sequence[int],
                 collection: str | None = None) -> dict[str, ItemVectors]:
    """The stored vectors of these items, by collection (a note has one in clip.text and one in
    clap.text), rows in embedding id order. NotFound names the first unknown item."""
    known = catalog.items(item_ids)
    missing = [i for i in item_ids if i not in known]
    if missing:
        raise NotFound(f"no item {missing[0]}")
    rows = [r for r in catalog.embeddings_of(sorted(set(item_ids))) if collection is None or r[2] == collection]
    dims = {name: dim for name, (_, dim) in catalog.spaces().items()}
    out: dict[str, ItemVectors] = {}
    for coll in sorted({r[2] for r in rows}):
        mine = [r for r in rows if r[2] == coll]
        ids = np.array([r[0] for r in mine], dtype=np.int64)
        found, vectors = indexes.store(coll, dims[coll.split(".")[0]]).lookup(ids)
        keep = [r for r, f in zip(mine, found) if f]  # a lost vector is left out until re-embedded
        out[coll] = ItemVectors(coll, ids[found], np.array([r[1] for r in keep], dtype=np.int64), vectors,
                                _span([r[3] for r in keep]), _span([r[4] for r in keep]))
    return out


def blocks(catalog: Catalog, indexes: LiveIndexes, collections: Sequence[str],
           rows: int | None = None) -> Iterator[ItemVectors]:
    """Every live vector of these collections, with its item's path and modality, ``rows``
    (default BLOCK_ROWS) at a time in embedding id order."""
    rows = rows or BLOCK_ROWS
    dims = {name: dim for name, (_, dim) in catalog.spaces().items()}
    for coll in collections:
        store = indexes.store(coll, dims[coll.split(".")[0]])
        after = 0
        while True:
            part = catalog.embedding_rows(coll, after, rows)
            if not part:
                break
            after = part[-1][0]
            ids = np.array([r[0] for r in part], dtype=np.int64)
            found, vectors = store.lookup(ids)
            keep = [r for r, f in zip(part, found) if f]
            if keep:
                yield ItemVectors(coll, ids[found], np.array([r[1] for r in keep], dtype=np.int64), vectors,
                                  _span([r[2] for r in keep]), _span([r[3] for r in keep]),
                                  [r[4] for r in keep], [r[5] for r in keep])


def write_parquet(parts: Iterable[ItemVectors], out: Path, dims: dict[str, int]) -> int:
    """One Parquet file, a row group per block: collection, embedding_id, item_id, path,
    modality, start, end (null where not a window) and vector (a fixed-size list of float32 when
    every collection shares one dimension, a list otherwise)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise BadInput("Parquet export needs pyarrow: pip install 'mmsearch[export]' (or use --format npy)") from None
    same = len(set(dims.values())) == 1
    vector_type = pa.list_(pa.float32(), next(iter(dims.values()))) if same else pa.list_(pa.float32())
    schema = pa.schema([("collection", pa.string()), ("embedding_id", pa.int64()), ("item_id", pa.int64()),
                        ("path", pa.string()), ("modality", pa.string()), ("start", pa.float64()),
                        ("end", pa.float64()), ("vector", vector_type)])
    n = 0
    with pq.ParquetWriter(out, schema) as writer:
        for b in parts:
            values = pa.array(b.vectors.reshape(-1), type=pa.float32())
            if same:
                vectors: Any = pa.FixedSizeListArray.from_arrays(values, b.vectors.shape[1])
            else:
                offsets = pa.array(np.arange(len(b) + 1, dtype=np.int32) * b.vectors.shape[1])
                vectors = pa.ListArray.from_arrays(offsets, values)
            writer.write_table(pa.Table.from_arrays([
                pa.array([b.collection] * len(b)), pa.array(b.ids), pa.array(b.item_ids), pa.array(b.paths),
                pa.array(b.modalities), pa.array(b.start, from_pandas=True), pa.array(b.end, from_pandas=True),
                vectors], schema=schema))
            n += len(b)
    return n


def _npy_header(rows: int, dim: int) -> bytes:
    """A .npy (version 1.0) header for float32 (rows, dim) of a fixed 128 bytes, so it can be
    written before the rows and rewritten with their count after."""
    text = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }" % (rows, dim)
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", 118) + (text.ljust(117) + "\n").encode("latin1")


def write_npy(parts: Iterable[ItemVectors], out: Path) -> dict[str, int]:
    """A folder with, per collection, ``<collection>.npy`` (float32, a row per vector) and
    ``<collection>.csv`` (embedding_id, item_id, path, modality, start, end: the same rows in the
    same order; start and end empty where not a window)."""
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for coll, group in itertools.groupby(parts, key=lambda b: b.collection):
        n = dim = 0
        with open(out / f"{coll}.npy", "wb") as npy, open(out / f"{coll}.csv", "w", newline="",
                                                          encoding="utf-8") as table:
            npy.write(_npy_header(0, 0))
            rows = csv.writer(table)
            rows.writerow(["embedding_id", "item_id", "path", "modality", "start", "end"])
            for b in group:
                dim = b.vectors.shape[1]
                npy.write(np.ascontiguousarray(b.vectors, dtype="<f4").tobytes())
                rows.writerows(zip(b.ids.tolist(), b.item_ids.tolist(), b.paths, b.modalities,
                                   ["" if np.isnan(v) else v for v in b.start.tolist()],
                                   ["" if np.isnan(v) else v for v in b.end.tolist()]))
                n += len(b)
            npy.seek(0)
            npy.write(_npy_header(n, dim))
        counts[coll] = n
    return counts
