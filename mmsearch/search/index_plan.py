"""Which FAISS index a collection of a given size gets, after the FAISS wiki's "Guidelines to
choose an index". A pure function of (n, dim, settings), so upkeep can tell when a collection
has outgrown (or shrunk below) the index it has and must be rebuilt."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from mmsearch.settings import Settings

# FAISS k-means warns below 39 points per centroid and subsamples above 256 (its
# ClusteringParameters defaults); the wiki's "30*K to 256*K" training rule is the same range.
MIN_POINTS_PER_CENTROID = 39
TRAIN_POINTS_PER_LIST = 64  # where in that range we sit: more buys little, costs k-means time
MAX_BYTES_PER_VECTOR = 80  # RAM budget per vector: PQ code + the 8-byte id of the inverted list
ID_BYTES = 8
MIN_NPROBE = 16
HNSW_NLIST_1M = 65_536  # the wiki's IVF65536_HNSW32 for 1M-10M vectors
HNSW_NLIST_10M = 262_144  # and IVF262144_HNSW32 for 10M-100M
HNSW_M = 32


@dataclass(frozen=True)
class IndexPlan:
    """What to build for a collection of a given size; see plan_index for the rules."""

    kind: Literal["flat", "ivfpq"]
    nlist: int = 0
    m: int = 0
    nbits: int = 8
    train_size: int = 0
    nprobe: int = 0
    coarse: Literal["flat", "hnsw"] = "flat"

    @property
    def factory(self) -> str:
        """The faiss index_factory string of the index as built and saved. Flat is wrapped in
        IDMap to carry ids; IVF-PQ with a flat quantiser keeps its centroids in float16."""
        if self.kind == "flat":
            return "Flat"
        return self.build_factory.replace(f"IVF{self.nlist},", f"IVF{self.nlist}(SQfp16),")

    @property
    def build_factory(self) -> str:
        """The factory string to train with (a float32 quantiser: BLAS k-means and bulk adds)."""
        pq = f"PQ{self.m}" if self.nbits == 8 else f"PQ{self.m}x{self.nbits}"
        coarse = f"_HNSW{HNSW_M}" if self.coarse == "hnsw" else ""
        return f"IVF{self.nlist}{coarse},{pq}"


def _pow2_floor(x: float) -> int:
    return 1 << max(0, math.floor(math.log2(max(x, 1.0))))


def default_nprobe(nlist: int) -> int:
    """Lists probed by default: sqrt(nlist), so the scanned fraction shrinks as the index grows
    (64 of 4096 lists = 1.6% of a 1M collection), but at least 16: in a small index each list
    is a large slice of the space, so a few probes cut through neighbourhoods (a 600-vector
    index with 15 lists: recall@10 0.89 with 4 probes, 0.98 with 8+), and scanning is cheap."""
    return max(1, min(nlist, max(MIN_NPROBE, round(math.sqrt(nlist)))))


def plan_index(n: int, dim: int, settings: Settings) -> IndexPlan:
    """Choose the index for ``n`` vectors of ``dim``, following the FAISS wiki's
    "Guidelines to choose an index":

    * ``n < settings.ivf_min_vectors`` (default 50k): exact ``Flat`` (IndexFlatIP). Brute force
      is fast enough there and needs no training.
    * Otherwise IVF-PQ:

      - nlist: the power of two in (4*sqrt(n), 8*sqrt(n)], i.e. in the lower half of the
        wiki's 4*sqrt(n) .. 16*sqrt(n) (fewer, larger lists: cheaper k-means and adds on few
        cores; 1M -> 4096), but at most n/39 so that every coarse centroid gets the 39 training
        points FAISS k-means asks for (between ~24k and ~97k vectors that cap gives a
        non-power-of-two nlist still inside the range; a forced tiny index, e.g. 3k vectors
        in tests, gets fewer lists rather than an under-trained quantiser).
      - train_size: 64*nlist, within the wiki's 30*nlist .. 256*nlist (and FAISS's own
        39 .. 256 points per centroid), capped at n (1M -> 262,144 training vectors, ~2 min
        of k-means on 2 cores).
      - m: the largest divisor of dim whose m*nbits-bit code + 8-byte id <= 80 bytes/vector
        (512-, 768- or 1024-d -> PQ64: 72 bytes, dim/8 for CLIP/CLAP's 512). With fewer bits
        (small n) that allows more, finer sub-quantisers, down to 1 dim each, which is what
        keeps small indexes accurate (600 x 32-d, 3 bits: PQ32 recall@10 1.0, PQ8 0.97).
      - coarse centroids are kept in float16 (``IVF4096(SQfp16)``): nlist*dim*2/n, ~4 B/vector
        at 1M instead of ~8, which keeps the whole index under 80 B/vector (76.8 measured);
        their precision does not matter once candidates are rescored exactly.
      - nbits: 8, reduced when the training sample is too small to give each of the 2**nbits
        PQ centroids 39 points (3k vectors -> 6 bits).
      - nprobe: settings.nprobe when set, else sqrt(nlist), at least 16 (4096 -> 64).
      - the training sample is also capped by ``settings.build_memory_mb`` (float32 rows), so
        a rebuild holds at most that much beside the index it builds.
    * From ``settings.hnsw_min_vectors`` up, the wiki's choice for 1M-100M vectors: an HNSW
      coarse quantiser over 65,536 lists (262,144 from 10M), ``IVF65536_HNSW32,PQ64``, where a
      flat quantiser's scan of every centroid per query would cost more than the lists.

    Measured with benchmarks/ann.py (1M x 512-d, 2 cores, off-distribution queries): nprobe
    barely matters past 16 there, PQ64 ranking does: exact rescoring of k*10 candidates gives
    recall@10 ~0.93, of k*20 ~0.98, for ~0.05 ms more; hence rerank_factor 20.
    """
    if n < settings.ivf_min_vectors or n < 2:
        return IndexPlan(kind="flat")
    hnsw = n >= settings.hnsw_min_vectors
    budget_rows = max(1, settings.build_memory_mb * 2**20 // (4 * dim))
    if hnsw:
        nlist = HNSW_NLIST_10M if n >= 10_000_000 else HNSW_NLIST_1M
    else:
        nlist = _pow2_floor(8 * math.sqrt(n))
    nlist = max(1, min(nlist, n // MIN_POINTS_PER_CENTROID, budget_rows // MIN_POINTS_PER_CENTROID))
    train_size = min(n, TRAIN_POINTS_PER_LIST * nlist, budget_rows)  # >= 39*nlist by the caps above
    nbits = max(1, min(8, math.floor(math.log2(max(2.0, train_size / MIN_POINTS_PER_CENTROID)))))
    code_budget_bits = (MAX_BYTES_PER_VECTOR - ID_BYTES) * 8
    m = max(m for m in range(1, dim + 1) if dim % m == 0 and m * nbits <= code_budget_bits)
    nprobe = settings.nprobe if settings.nprobe else default_nprobe(nlist)
    return IndexPlan(
        kind="ivfpq", nlist=nlist, m=m, nbits=nbits, train_size=train_size,
        nprobe=max(1, min(int(nprobe), nlist)), coarse="hnsw" if hnsw else "flat",
    )
