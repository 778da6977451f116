"""Recommendation benchmark: many profiles answered as one batch against a loop of single queries.

    python benchmarks/recommend.py --n 100000 --profiles 1000

Writes N synthetic 512-d unit vectors (clustered like benchmarks/ann.py's) straight into a
catalog through the writer, one image item each, and lets upkeep build its index (IVF-PQ above
50,000 vectors). Then times 1,000 profiles of 5 liked and 2 disliked items:

* batch: ``Engine.recommend_batch(profiles)``: the items of every profile read in one pass, one
  FAISS search for all profile vectors, then each profile's exact rescoring (spread over the
  cores) and filters, and one SQL read for every page;
* loop: ``Engine.recommend(**profile)`` one after the other, as a caller without the batch form
  would.

Prints figures side by side (wall and CPU time: on a busy machine the CPU time is the steadier
ratio), never asserts, and ends with

    profiles=... batch_s=... loop_s=... speedup=... dup_groups=... dup_s=...

``dup_groups``/``dup_s``: ``Engine.duplicates`` (near-duplicate groups over the whole collection,
what ``mmsearch duplicates`` runs) on the same catalog; its random vectors have no near copies,
so the figure is the cost of the search itself (benchmarks/filters.py plants copies to check recall).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ann import make_data  # noqa: E402

from mmsearch import Engine, Settings  # noqa: E402
from mmsearch.storage.catalog import FileRecord, NewItem  # noqa: E402
from mmsearch.writer import CatalogWriter  # noqa: E402

COLL = "clip.image"
SPEC = "bench:random"
CHUNK = 10_000


class VectorsOnly:
    """Stands in for the image model: profiles are made of stored items, so nothing is embedded."""

    space, modalities, batch_size, device = "clip", ("image", "text"), 1, "cpu"

    def __init__(self, dim: int) -> None:
        self.dim, self.spec = dim, f"{SPEC}-{dim}"

    def prepare(self, modality: str, decoded: Any) -> Any:
        raise NotImplementedError("the benchmark embeds nothing")

    def encode(self, modality: str, prepared: Any) -> np.ndarray:
        raise NotImplementedError("the benchmark embeds nothing")


def build(settings: Settings, n: int, dim: int, rng: np.random.Generator) -> list[int]:
    """N image items with one vector each, committed as ingest commits them; the item ids."""
    x, _, _ = make_data(n, dim, rng, clusters=max(1, n // 33))
    with CatalogWriter(settings) as writer:
        writer.record_space("clip", f"{SPEC}-{dim}", dim, ["image", "text", "captions"], reembed=False)
        root = writer.ensure_root(Path("/bench"))
        for start in range(0, n, CHUNK):
            first = writer.next_embedding_id()
            ids = np.arange(first, first + min(CHUNK, n - start), dtype=np.int64)
            writer.append_vectors(COLL, ids, x[start:start + ids.size])
            writer.commit_files([
                FileRecord(path=f"/bench/img/{start + j:07d}.jpg", root_id=root, kind="image", size=1000, mtime_ns=1,
                           items=[NewItem(modality="image", embeddings=[(int(e), COLL, None, None)])])
                for j, e in enumerate(ids.tolist())])
        writer.upkeep(wait=True)
    with Engine.open(settings, encoders={"clip": VectorsOnly(dim)}, create=False) as engine:
        from sqlalchemy import select

        from mmsearch.storage.models import Item

        with engine.catalog.sessions() as s:
            return list(s.scalars(select(Item.id).order_by(Item.id)))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="vectors (items) in the catalog")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--profiles", type=int, default=1000)
    ap.add_argument("--likes", type=int, default=5)
    ap.add_argument("--dislikes", type=int, default=2)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3, help="batch runs (the median is reported)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(catalog=Path(tmp) / "catalog", audio=False, faiss_gpu=False)
        t0 = time.perf_counter()
        items = build(settings, args.n, args.dim, rng)
        print(f"catalog: {args.n} vectors, {args.dim}-d, built and indexed in {time.perf_counter() - t0:.1f} s")
        picks = [rng.choice(len(items), args.likes + args.dislikes, replace=False) for _ in range(args.profiles)]
        profiles = [{"like": [items[j] for j in row[:args.likes]], "dislike": [items[j] for j in row[args.likes:]],
                     "k": args.k} for row in picks]

        with Engine.open(settings, encoders={"clip": VectorsOnly(args.dim)}, create=False) as engine:
            index = engine.stats()["collections"][COLL]["index"] or {}
            print(f"index: {index.get('factory')} ntotal={index.get('ntotal')} nprobe={index.get('nprobe')}")
            engine.recommend(**profiles[0])  # loads the index: not part of either timing
            batch_runs, batch_cpu, batch = [], [], []
            for _ in range(args.repeats):
                c0, t0 = time.process_time(), time.perf_counter()
                batch = engine.recommend_batch(profiles)
                batch_runs.append(time.perf_counter() - t0)
                batch_cpu.append(time.process_time() - c0)
            batch_s, batch_cpu_s = statistics.median(batch_runs), statistics.median(batch_cpu)
            c0, t0 = time.process_time(), time.perf_counter()
            loop = [engine.recommend(**p) for p in profiles]
            loop_s, loop_cpu_s = time.perf_counter() - t0, time.process_time() - c0
            same = sum([h.id for h in a.results] == [h.id for h in b.results] for a, b in zip(batch, loop))
            stages = batch[0].timings_ms
            t0 = time.perf_counter()
            dup_groups = len(engine.duplicates(threshold=0.95, collection=COLL).groups)
            dup_s = time.perf_counter() - t0

    n = len(profiles)
    print(f"{'':24}{'batch':>12}{'loop':>12}")
    print(f"{'total (s)':24}{batch_s:12.3f}{loop_s:12.3f}")
    print(f"{'per profile (ms)':24}{batch_s / n * 1e3:12.3f}{loop_s / n * 1e3:12.3f}")
    print(f"{'profiles per second':24}{n / batch_s:12.0f}{n / loop_s:12.0f}")
    print(f"{'CPU time (s)':24}{batch_cpu_s:12.3f}{loop_cpu_s:12.3f}   (all threads; ratio {loop_cpu_s / batch_cpu_s:.1f})")
    print(f"load average (1, 5, 15 min) at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"batch runs (s): {', '.join(f'{s:.3f}' for s in batch_runs)}; stages of the batch (ms, whole batch): "
          + ", ".join(f"{k} {v:.0f}" for k, v in stages.items() if k in ("embed", "ann", "hydrate", "total")))
    print(f"same result lists, batch and loop: {same}/{n}")
    print(f"duplicates over the whole collection (cosine >= 0.95; random vectors have none): "
          f"{dup_groups} groups in {dup_s:.1f} s")
    print(f"profiles={n} batch_s={batch_s:.3f} loop_s={loop_s:.3f} speedup={loop_s / batch_s:.1f} "
          f"dup_groups={dup_groups} dup_s={dup_s:.1f}")


if __name__ == "__main__":
    main()
