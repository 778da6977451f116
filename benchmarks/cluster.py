"""Ingest through Ray against the local pipeline, on the same folder, in one run.

    python benchmarks/cluster.py ../shared/data/flickr8k-1k/images --limit 400

Each configuration indexes the same files into a fresh catalog: the local pipeline (decode
threads + the encoder in this process), then Ray with 1 and with 2 encoder actors (decode in Ray
tasks, one model per actor, vectors streamed back to this process, which commits them). The Ray
cluster is started once before the timings, as `ray start` would be; each Ray run's time includes
starting its actors (each loads its own model), as a real run's does.

On one machine, cores are shared: the cluster gets the available cores plus one logical CPU for
the decode tasks (the local pipeline's decode thread shares the cores the same way), and each actor
reserves ``--actor-cpus`` (its encoder threads).

Ends with one line: local_items_s=... ray1_items_s=... ray2_items_s=... ray_items_s=... ratio=...
steady_ratio=... scaling=... overhead_ms_per_item=...  (items/s over whole runs; ray_items_s: the
fastest Ray run; ratio: it over local; steady_ratio: the same in files/s once each run's first
file was done, i.e. without loading models and starting actors; scaling: 2 actors over 1, steady;
overhead: Ray's extra wall time per item against local with one actor of as many encoder threads
as local uses, actor start included).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.checkpoint import model_spec  # noqa: E402
from mmsearch import Engine, Settings  # noqa: E402
from mmsearch.cpus import available_cpus  # noqa: E402
from mmsearch.indexer.scan import scan  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def timed(settings: Settings, media: Path, catalog: Path) -> tuple[float, float, int]:
    """(seconds for the whole run, files per second once the first file was done, items)."""
    marks: list[float] = []
    with Engine.open(settings.model_copy(update={"catalog": catalog})) as engine:
        t0 = time.perf_counter()
        report = engine.index([media], progress=lambda done, total: marks.append(time.perf_counter()))
        seconds = time.perf_counter() - t0
    assert report.failed == 0, report.failures[:3]
    return seconds, (len(marks) - 1) / (marks[-1] - marks[0]), report.items


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, nargs="?", default=REPO.parent / "shared/data/flickr8k-1k/images")
    ap.add_argument("--model", default=None, help="A model spec (default: ViT-B-32 with random weights saved to a "
                    "checkpoint file, so each actor loads the cached export as a user's run does).")
    ap.add_argument("--limit", type=int, default=400, help="Use only the first N images.")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--actor-cpus", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=1, help="Repeat the four runs in turn; report medians.")
    args = ap.parse_args()

    import ray

    cores = available_cpus()
    files = [f for f in scan(args.folder.resolve()) if f.kind == "image"][: args.limit]
    with tempfile.TemporaryDirectory() as tmp:
        media = Path(tmp) / "media"
        media.mkdir()
        for i, f in enumerate(files):  # behind links, so each run scans exactly these
            (media / f"{i:06d}-{Path(f.path).name}").symlink_to(f.path)
        base = Settings(model=model_spec(args.model), audio=False, batch_size=args.batch_size, follow_links=True,
                        model_config_dirs=[REPO / "tests" / "assets"])
        timed(base, media, Path(tmp) / "warm")  # exports the model for the CPU runtime once, for all runs
        ray.init(num_cpus=cores + 1, include_dashboard=False, log_to_driver=False,
                 object_store_memory=512 * 2**20)
        try:
            runs: dict[str, list[tuple[float, float]]] = {}
            configs = {"local": base,
                       "same": base.model_copy(update={"ray": "auto", "ray_actors": 1, "ray_actor_cpus": float(cores)}),
                       **{f"ray{a}": base.model_copy(update={"ray": "auto", "ray_actors": a,
                                                             "ray_actor_cpus": args.actor_cpus}) for a in (1, 2)}}
            for run in range(args.runs):  # in turn, so a change of load hits every configuration alike
                for name, settings in configs.items():
                    seconds, steady, n = timed(settings, media, Path(tmp) / f"{name}-{run}")
                    runs.setdefault(name, []).append((seconds, steady))
                    print(f"{name}: {n} items in {seconds:.1f} s ({n / seconds:.2f} items/s; {steady:.2f} files/s "
                          f"after the first), load {os.getloadavg()[0]:.1f}", flush=True)
        finally:
            ray.shutdown()
    med = {name: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs)) for name, rs in runs.items()}
    (local_s, local_steady), (same_s, _) = med["local"], med["same"]
    rates = {name: n / seconds for name, (seconds, _) in med.items()}
    best = max(rates[k] for k in ("same", "ray1", "ray2"))
    best_steady = max(med[k][1] for k in ("same", "ray1", "ray2"))
    print(f"load average {os.getloadavg()[0]:.2f} on {cores} cores ('same': 1 actor of {cores} threads, "
          f"'rayN': N actors of {args.actor_cpus:g})")
    print(f"local_items_s={rates['local']:.2f} ray1_items_s={rates['ray1']:.2f} ray2_items_s={rates['ray2']:.2f} "
          f"ray_items_s={best:.2f} ratio={best / rates['local']:.3f} steady_ratio={best_steady / local_steady:.3f} "
          f"scaling={med['ray2'][1] / med['ray1'][1]:.3f} overhead_ms_per_item={1000 * (same_s - local_s) / n:.1f}")

if __name__ == "__main__":
    main()
