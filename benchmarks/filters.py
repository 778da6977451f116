"""Metadata filters and near duplicates at scale, on synthetic catalogs.

    python benchmarks/filters.py                          # N = 100,000
    python benchmarks/filters.py --n 100000,1000000 --dup-n 100000
    python benchmarks/filters.py --n 1000000 --catalog-dir /tmp/fbench --keep   # reuse what it built

For each N it writes a catalog through the one writer (``CatalogWriter.commit_files``, the
ingest's own commit path) without decoding anything: N photos in 100 folders, each a random
512-d unit vector (float16 store) with facts spread so that each filter below selects 1%: one of
100 camera models, a date taken on one of 100 days, a position within 5 km of one of 100
places, a size in the top 1%, the tag ``fav`` on every 100th item, a folder. Camera and date
vary independently, so both together select 0.01%. Queries embed text through a
deterministic hashing encoder (no model: the engine's search, filters and SQL are what is timed).

Per filter: the first query (no cached selection: the SQL range scans, reading the selection
from the float16 store) and p50/p99 of --queries more with new query vectors (the selection
cached until the catalog changes), through ``Engine.search``, k=10. With --index (always for the
duplicates catalog) the IVF-PQ index is built too, so a broad filter (50%: checked on the search's
candidates) and an unfiltered query can be timed.

Duplicates: a catalog of --dup-n vectors with 1% planted near copies (cosine ~0.97-0.999), its
IVF-PQ index built, then ``Engine.duplicates(threshold=0.95)``: seconds, groups, and the planted
pairs found. No figure is asserted. Ends with one line (the filters' figures: the slowest of the 1% kinds at the largest N):
n=... filter_first_ms=... filter_p50_ms=... dup_n=... dup_s=... dup_groups=... dup_recall=...
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import argparse  # noqa: E402
import hashlib  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from sqlalchemy import insert  # noqa: E402

from mmsearch import Engine, Query, Settings  # noqa: E402
from mmsearch.media.metadata import FileFacts  # noqa: E402
from mmsearch.storage.catalog import FileRecord, NewItem  # noqa: E402
from mmsearch.storage.models import Tag  # noqa: E402
from mmsearch.writer import CatalogWriter  # noqa: E402

DIM = 512
SPEC = "open_clip:bench-hash@random"
DAY = 86_400
START = 1_600_000_000  # 2020-09-13
PLACES = [(float(lat), float(lon)) for lat, lon in zip(np.linspace(-60, 60, 100), np.linspace(-170, 170, 100))]
CHUNK = 10_000


class HashEncoder:
    """A text's vector is a seeded random unit vector: deterministic, and no model to load."""

    spec, space, dim, modalities, batch_size, device = SPEC, "clip", DIM, ("image", "text"), 64, "cpu"

    def prepare(self, modality: str, decoded: Any) -> Any:
        return decoded

    def encode(self, modality: str, prepared: Sequence[Any]) -> np.ndarray:
        out = []
        for text in prepared:
            seed = int.from_bytes(hashlib.blake2b(str(text).encode(), digest_size=8).digest(), "little")
            v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
            out.append(v / np.linalg.norm(v))
        return np.stack(out)


def settings(catalog: Path) -> Settings:
    return Settings(catalog=catalog, model=SPEC, audio=False, device="cpu", faiss_gpu=False)


def build(catalog: Path, n: int, *, planted: int = 0, index: bool = False, seed: int = 0) -> dict[str, Any]:
    """N photos through the writer; ``planted`` of them near copies of others. Returns the pairs."""
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    pairs: list[tuple[int, int]] = []
    with CatalogWriter(settings(catalog)) as writer:
        writer.record_space("clip", SPEC, DIM, ["image"], reembed=False)
        root = writer.ensure_root(Path("/bench"))
        first = writer.next_embedding_id()
        originals = rng.choice(n - planted, planted, replace=False) if planted else np.zeros(0, np.int64)
        kept: dict[int, np.ndarray] = {}
        for start in range(0, n, CHUNK):
            count = min(CHUNK, n - start)
            x = rng.standard_normal((count, DIM)).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            for src in originals[(originals >= start) & (originals < start + count)].tolist():
                kept[src] = x[src - start].copy()
            for j in range(max(0, n - planted - start), count):  # the last ones: near copies of earlier ones
                i = start + j
                src = int(originals[i - (n - planted)])
                v = kept[src] + rng.standard_normal(DIM).astype(np.float32) * rng.uniform(0.005, 0.012)
                x[j] = v / np.linalg.norm(v)
                pairs.append((first + src, first + i))
            ids = np.arange(first + start, first + start + count, dtype=np.int64)
            writer.append_vectors("clip.image", ids, x)
            writer.commit_files([record(root, int(i) - first, int(i), rng) for i in ids])
        with writer.catalog.sessions.begin() as s:  # every 100th item is a favourite
            s.execute(insert(Tag), [{"item_id": item_id, "tag": "fav", "value": None}
                                    for item_id in range(1, n + 1, 100)])
        built = time.perf_counter() - t0
        t1 = time.perf_counter()
        if index:
            writer.upkeep(wait=True)
    return {"pairs": pairs, "build_s": built, "index_s": time.perf_counter() - t1 if index else None}


def record(root: int, i: int, eid: int, rng: np.random.Generator) -> FileRecord:
    lat, lon = PLACES[i % 100]
    facts = FileFacts(mime="image/jpeg", width=4000, height=3000, taken_s=START + (i // 100 % 100) * DAY + i % 3600,
                      camera_make=f"Make{i % 100:02d}", camera_model=f"Make{i % 100:02d} Model {i % 100}",
                      lat=lat + rng.uniform(-0.03, 0.03), lon=lon + rng.uniform(-0.03, 0.03))
    size = 10_000_000 if i % 100 == 7 else 1_000_000 + i % 1000
    return FileRecord(path=f"/bench/f{i % 100:03d}/{i:08d}.jpg", root_id=root, kind="image", size=size,
                      mtime_ns=START * 10**9, facts=facts, content_hash=None,
                      items=[NewItem(modality="image", embeddings=[(eid, "clip.image", None, None)])])


def time_queries(engine: Engine, make: Any, queries: int) -> dict[str, float]:
    """First query (selection made) and p50/p99 of the next ones (selection cached)."""
    engine.runner._subsets._entries.clear()
    t0 = time.perf_counter()
    first = engine.search(make("first query"))
    first_ms = (time.perf_counter() - t0) * 1000
    times, hits = [], []
    for q in range(queries):
        t0 = time.perf_counter()
        res = engine.search(make(f"query {q}"))
        times.append((time.perf_counter() - t0) * 1000)
        hits.append(len(res.results))
    times.sort()
    return {"first_ms": first_ms, "p50_ms": statistics.median(times), "p99_ms": times[-1],
            "hits": statistics.mean(hits), "first_hits": len(first.results)}


def filters_run(n: int, base: Path, queries: int, index: bool, keep: bool) -> dict[str, Any]:
    catalog = base / f"filters-{n}"
    info: dict[str, Any] = {}
    if not (catalog / "catalog.db").exists():
        info = build(catalog, n, index=index)
        print(f"[n={n}] built in {info['build_s']:.1f} s" + (f", index {info['index_s']:.1f} s" if index else ""),
              file=sys.stderr)
    lat, lon = PLACES[7]
    kinds: dict[str, Any] = {
        "camera 1%": lambda t: Query(text=t, k=10, camera="make07 model"),
        "date 1% (one day)": lambda t: Query(text=t, k=10, date_from="2020-09-20", date_to="2020-09-20"),
        "near 1% (10 km)": lambda t: Query(text=t, k=10, near=(lat, lon, 10)),
        "min_size 1%": lambda t: Query(text=t, k=10, min_size="9MB"),
        "tag 1%": lambda t: Query(text=t, k=10, tags=["fav"]),
        "path 1%": lambda t: Query(text=t, k=10, path="/bench/f007"),
        "camera+date 0.01%": lambda t: Query(text=t, k=10, camera="make07", date_from="2020-09-20",
                                             date_to="2020-09-20"),
    }
    if index:
        kinds["date 50% (broad)"] = lambda t: Query(text=t, k=10, date_from="2020-09-13", date_to="2020-10-31")
        kinds["plain"] = lambda t: Query(text=t, k=10)
    out: dict[str, Any] = {"n": n, "kinds": {}}
    with Engine.open(settings(catalog), encoders={"clip": HashEncoder()}, create=False) as engine:
        engine.search(Query(text="warm up", k=10, camera="make01"))
        for name, make in kinds.items():
            out["kinds"][name] = r = time_queries(engine, make, queries)
            print(f"[n={n}] {name:<22} first {r['first_ms']:8.1f} ms  p50 {r['p50_ms']:6.2f} ms  "
                  f"p99 {r['p99_ms']:6.2f} ms  hits {r['hits']:.1f}", file=sys.stderr)
    if not keep:
        shutil.rmtree(catalog)
    return out


def duplicates_run(n: int, base: Path, keep: bool) -> dict[str, Any]:
    catalog = base / f"dups-{n}"
    planted = n // 100
    info = build(catalog, n, planted=planted, index=True, seed=1)
    print(f"[dup n={n}] built in {info['build_s']:.1f} s, index {info['index_s']:.1f} s", file=sys.stderr)
    with Engine.open(settings(catalog), encoders={"clip": HashEncoder()}, create=False) as engine:
        t0 = time.perf_counter()
        res = engine.duplicates(threshold=0.95)
        seconds = time.perf_counter() - t0
        owners = engine.catalog.embedding_items(sorted({e for p in info["pairs"] for e in p}))
        grouped = {frozenset(it.id for it in g.items) for g in res.groups}
        member = {i: g for g in grouped for i in g}
        found = sum(1 for a, b in info["pairs"] if member.get(owners[a][0]) is not None
                    and owners[b][0] in member[owners[a][0]])
    if not keep:
        shutil.rmtree(catalog)
    out = {"n": n, "seconds": seconds, "groups": len(res.groups), "recall": found / max(1, len(info["pairs"])),
           "planted": len(info["pairs"])}
    print(f"[dup n={n}] duplicates(0.95): {seconds:.1f} s, {out['groups']} groups, planted pairs found "
          f"{found}/{len(info['pairs'])}", file=sys.stderr)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="100000", help="catalog sizes, comma-separated")
    ap.add_argument("--dup-n", type=int, default=100_000, help="vectors for the duplicates run (0: skip)")
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--index", action="store_true", help="build the IVF-PQ index of the filter catalogs too")
    ap.add_argument("--catalog-dir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    base = args.catalog_dir or Path(tempfile.mkdtemp(prefix="mms-filters-"))
    base.mkdir(parents=True, exist_ok=True)
    runs = [filters_run(int(n), base, args.queries, args.index, args.keep) for n in args.n.split(",")]
    dup = duplicates_run(args.dup_n, base, args.keep) if args.dup_n else None
    last = runs[-1]
    one_percent = [r for name, r in last["kinds"].items() if " 1%" in name]
    worst = max(one_percent, key=lambda r: r["p50_ms"])
    firsts = max(r["first_ms"] for r in one_percent)
    line = f"n={last['n']} filter_first_ms={firsts:.1f} filter_p50_ms={worst['p50_ms']:.2f}"
    if dup:
        line += f" dup_n={dup['n']} dup_s={dup['seconds']:.1f} dup_groups={dup['groups']} dup_recall={dup['recall']:.3f}"
    print(line)


if __name__ == "__main__":
    main()
