"""ANN benchmark: recall and latency of the query path (plan_index -> AnnIndex.build ->
search top k*rerank_factor -> exact_rescore from a VectorStore) against exact IndexFlatIP.

Synthetic data shaped like CLIP embeddings: a few thousand Gaussian clusters of unequal size
and spread on the unit sphere, L2-normalised. Queries sit off the data distribution the way
CLIP text queries sit off the image distribution: a shared offset direction (the "modality
gap") plus a cluster direction and noise, so that their best cosine to the data is ~0.3.

Prints figures only, never asserts. The last line is the summary:

    recall@10=... p50_ms=... flat_p50_ms=... speedup=... bytes_per_vector=...

Usage: python benchmarks/ann.py --n 1000000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmsearch.search.ann import AnnIndex  # noqa: E402
from mmsearch.search.index_plan import plan_index  # noqa: E402
from mmsearch.search.rerank import exact_rescore  # noqa: E402
from mmsearch.settings import Settings  # noqa: E402
from mmsearch.storage.vectors import VectorStore  # noqa: E402

CHUNK = 100_000


def make_data(
    n: int, dim: int, rng: np.random.Generator, clusters: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vectors, cluster centres, cluster weights); generated in chunks to stay fast at 1M."""
    centers = rng.standard_normal((clusters, dim), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    spread = rng.uniform(0.6, 1.4, clusters).astype(np.float32)  # cos to centre 0.58 .. 0.86
    weights = rng.pareto(2.0, clusters) + 1.0  # uneven cluster sizes, a few large ones
    weights /= weights.sum()
    x = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, CHUNK):
        end = min(n, start + CHUNK)
        label = rng.choice(clusters, end - start, p=weights)
        block = rng.standard_normal((end - start, dim), dtype=np.float32)
        block *= (spread[label] / np.sqrt(dim))[:, None]
        block += centers[label]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        x[start:end] = block
    return x, centers, weights


def make_queries(
    nq: int, dim: int, centers: np.ndarray, weights: np.ndarray, rng: np.random.Generator,
    toward: float = 0.32, gap: float = 0.7,
) -> np.ndarray:
    """toward * cluster centre + gap * shared offset + noise, normalised (cos to data ~0.3)."""
    offset = rng.standard_normal(dim).astype(np.float32)
    offset /= np.linalg.norm(offset)
    label = rng.choice(len(centers), nq, p=weights)
    noise = rng.standard_normal((nq, dim), dtype=np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    q = toward * centers[label] + gap * offset + np.sqrt(max(0.0, 1 - toward**2 - gap**2)) * noise
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def percentile_ms(seconds: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(seconds) * 1e3, p))


def time_ann_path(
    index: AnnIndex, store: VectorStore, queries: np.ndarray, k: int, fetch: int, threads: int
) -> tuple[list[float], np.ndarray]:
    """One query at a time, as a server answers them: ANN shortlist, then exact rescoring."""
    lat: list[float] = []
    top = np.full((queries.shape[0], k), -1, dtype=np.int64)
    for i in range(queries.shape[0]):
        t0 = time.perf_counter()
        _, cand = index.search(queries[i : i + 1], fetch, threads=threads)
        ids, _ = exact_rescore(queries[i], cand[0], store)
        lat.append(time.perf_counter() - t0)
        top[i, : min(k, ids.size)] = ids[:k]
    return lat, top


def time_flat(flat: faiss.Index, queries: np.ndarray, k: int) -> list[float]:
    lat: list[float] = []
    for i in range(queries.shape[0]):
        t0 = time.perf_counter()
        flat.search(queries[i : i + 1], k)
        lat.append(time.perf_counter() - t0)
    return lat


def main(argv: list[str] | None = None) -> None:
    defaults = Settings()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="database vectors")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=1000, help="queries for recall and ANN latency")
    ap.add_argument("--flat-queries", type=int, default=50, help="queries timed on the exact flat index")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--rerank-factor", type=int, default=defaults.rerank_factor)
    ap.add_argument("--nprobe", type=int, default=None, help="default: plan_index's")
    ap.add_argument("--ivf-min-vectors", type=int, default=defaults.ivf_min_vectors)
    ap.add_argument("--hnsw-min-vectors", type=int, default=defaults.hnsw_min_vectors,
                    help="HNSW coarse quantiser from here up (lower it to compare the two at --n)")
    ap.add_argument("--clusters", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, nargs="*", default=None,
                    help="OpenMP thread counts to time (default: 1 and all cores); the best is reported")
    args = ap.parse_args(argv)

    settings = Settings(ivf_min_vectors=args.ivf_min_vectors, hnsw_min_vectors=args.hnsw_min_vectors,
                        nprobe=args.nprobe, faiss_gpu=True)
    rng = np.random.default_rng(args.seed)
    max_threads = faiss.omp_get_max_threads()
    thread_counts = args.threads or sorted({1, max_threads})
    fetch = args.k * args.rerank_factor

    t0 = time.perf_counter()
    x, centers, weights = make_data(args.n, args.dim, rng, args.clusters)
    queries = make_queries(args.queries, args.dim, centers, weights, rng)
    ids = np.arange(1, args.n + 1, dtype=np.int64)
    print(f"data: n={args.n} dim={args.dim} clusters={args.clusters} queries={args.queries} "
          f"({time.perf_counter() - t0:.1f}s)", flush=True)

    faiss.omp_set_num_threads(max_threads)
    flat = faiss.IndexFlatIP(args.dim)
    flat.add(x)
    t0 = time.perf_counter()
    truth_scores, truth = flat.search(queries, args.k)
    truth = ids[truth]
    print(f"ground truth: exact top-{args.k} in {time.perf_counter() - t0:.1f}s; "
          f"query cos to nearest: mean {truth_scores[:, 0].mean():.3f}, "
          f"to {args.k}th: {truth_scores[:, -1].mean():.3f}", flush=True)

    plan = plan_index(args.n, args.dim, settings)
    print(f"plan: {plan.factory} kind={plan.kind} nlist={plan.nlist} m={plan.m} nbits={plan.nbits} "
          f"train_size={plan.train_size} nprobe={plan.nprobe} rerank_factor={args.rerank_factor} "
          f"(fetch {fetch})", flush=True)
    with tempfile.TemporaryDirectory(prefix="mmsearch-bench-") as tmp:
        store = VectorStore(Path(tmp), "bench", args.dim)
        for start in range(0, args.n, CHUNK):
            store.append(ids[start : start + CHUNK], x[start : start + CHUNK])
        del x  # the build and the rescoring read float16 rows from the store, as in production
        t0 = time.perf_counter()
        index = AnnIndex.build(store, ids, plan, use_gpu=settings.faiss_gpu)
        print(f"build: {time.perf_counter() - t0:.1f}s on {max_threads} threads", flush=True)
        saved = Path(tmp) / "bench.faiss.npz"
        index.save(saved)
        nbytes = saved.stat().st_size
        info = {"bytes": nbytes, "bytes_per_vector": nbytes / max(index.ntotal, 1)}
        print(f"index: {info['bytes'] / 2**20:.1f} MiB, {info['bytes_per_vector']:.1f} bytes/vector (saved file)",
              flush=True)

        best: tuple[float, float, int, float] | None = None  # (p50, p99, threads, recall)
        for threads in thread_counts:
            time_ann_path(index, store, queries[: min(50, len(queries))], args.k, fetch, threads)  # warm up
            lat, top = time_ann_path(index, store, queries, args.k, fetch, threads)
            recall = float(np.mean([len(np.intersect1d(top[i], truth[i])) / args.k for i in range(len(top))]))
            p50, p99 = percentile_ms(lat, 50), percentile_ms(lat, 99)
            print(f"ann+rerank threads={threads}: recall@{args.k}={recall:.4f} p50={p50:.3f}ms p99={p99:.3f}ms",
                  flush=True)
            if best is None or p50 < best[0]:
                best = (p50, p99, threads, recall)

        flat_best = float("inf")
        fq = queries[: max(1, min(args.flat_queries, len(queries)))]
        for threads in thread_counts:
            faiss.omp_set_num_threads(threads)
            time_flat(flat, fq[:3], args.k)
            flat_lat = time_flat(flat, fq, args.k)
            p50 = percentile_ms(flat_lat, 50)
            print(f"flat threads={threads}: p50={p50:.3f}ms over {len(fq)} queries", flush=True)
            flat_best = min(flat_best, p50)
        faiss.omp_set_num_threads(max_threads)

    assert best is not None
    p50, p99, threads, recall = best
    print(f"best ann+rerank: threads={threads} p99={p99:.3f}ms; flat at its best thread count", flush=True)
    print(f"recall@{args.k}={recall:.4f} p50_ms={p50:.3f} flat_p50_ms={flat_best:.3f} "
          f"speedup={flat_best / p50:.1f} bytes_per_vector={info['bytes_per_vector']:.1f}", flush=True)


if __name__ == "__main__":
    main()
