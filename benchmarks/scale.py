"""How the engine behaves as a catalog grows: ingest, small writes, filtered queries, rebuild memory.

    python benchmarks/scale.py --n 10000                  # one catalog of 10,000 items
    python benchmarks/scale.py --n 10000,100000           # several sizes, smallest first
    python benchmarks/scale.py --n 20000 --during-rebuild # also: queries while a rebuild runs
    python benchmarks/scale.py --n 10000 --catalog-dir /tmp/scale --keep   # keep what it built

For each N it builds a media folder of N caption rows (a cheap source of many text items): 100
sub-folders f000..f099, each with one captions.csv (columns image,caption) holding every 100th
row, so the path prefix ROOT/f007 selects 1% of the items. The image a row names does not exist,
which is fine: a caption row is a text item of its own. It indexes the folder through the public
engine (``Engine.open(settings).index``) with a tiny random CLIP (tests/assets/mmtest-tiny.json),
then measures, in this one process and side by side:

- ingest: items/s of the first ``index`` (the model is loaded before the clock starts);
- add one: a new small .txt note, then ``engine.index([ROOT])`` (scan, embed one note, sync);
- delete one: ``engine.delete(item_id)``; unchanged: ``engine.index([ROOT])`` with nothing new;
  each the median of --repeats runs;
- queries, --queries text queries of each kind, the kinds taking turns in blocks of 10 so they
  share the same conditions: plain; a 1% path filter (``Query(path=ROOT/f007)``); a
  ``min_score`` that nothing reaches; ``offset=1000``. p50 and p99 (with 50 queries, p99 is the
  slowest one). Default target (no ``to``: all media, one calibrated list), k=10;
- ``GET /stats`` through ``create_app(engine)`` and FastAPI's TestClient (in process), p50;
- peak RSS of this process (``ru_maxrss``; a running maximum, so with several N it covers every
  catalog built so far: N runs smallest first);
- rebuild: the catalog's indexes/ folder emptied, then ``mmsearch index ROOT --catalog ... --model
  ...`` in a subprocess; its own peak RSS (``os.wait4``), wall time, and whether queries answer
  again afterwards;
- with --during-rebuild: query latency while a retrain runs in the subprocess, against the same
  queries right after it, idle. The index's JSON note is removed, so the child's writer takes the
  index for replaced and rebuilds it while this process keeps answering from the index it holds;
  queries stop when the child has written indexes/clip.text.json again (this relies on the
  catalog layout; without it they run until the child exits). Empty answers are counted too.

No figure is asserted. Ends with one line for the largest N:
n=... add_one_ms=... delete_one_ms=... filter_p50_ms=... query_p50_ms=... rebuild_peak_rss_mb=...
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

CONFIG_DIR = REPO / "tests" / "assets"
FOLDERS = 100  # a path prefix naming one of them selects 1% of the items
FILTER_FOLDER = "f007"
NOTES = "notes"  # where the add-one files go, outside the f* folders
BLOCK = 10  # queries of one kind in a row

ADJ = ["red", "small", "old", "bright", "wet", "quiet", "busy", "wooden", "striped", "tired", "happy", "dark"]
NOUN = ["dog", "cat", "child", "bicycle", "boat", "horse", "woman", "man", "bird", "car", "train", "tent"]
VERB = ["runs across", "sits on", "jumps over", "waits by", "rolls down", "looks at", "plays near", "crosses"]
PLACE = ["the beach", "a snowy field", "the city street", "a river bank", "the old bridge", "a market",
         "the mountain path", "a green park", "the harbour", "a dusty road", "the playground", "a forest"]
TAIL = ["at sunset", "in the rain", "at noon", "under a blue sky", "in autumn", "at night", "in the fog", ""]


def sentence(rng: random.Random) -> str:
    s = (f"a {rng.choice(ADJ)} {rng.choice(NOUN)} {rng.choice(VERB)} {rng.choice(PLACE)} {rng.choice(TAIL)}"
         f" with a {rng.choice(ADJ)} {rng.choice(NOUN)}")
    return " ".join(s.split())


def build_media(root: Path, n: int) -> None:
    """N caption rows over FOLDERS captions files; row i goes to folder i % FOLDERS."""
    rng = random.Random(n)
    writers = []
    files = []
    for j in range(FOLDERS):
        folder = root / f"f{j:03d}"
        folder.mkdir(parents=True)
        fh = open(folder / "captions.csv", "w", newline="")
        files.append(fh)
        w = csv.writer(fh)
        w.writerow(["image", "caption"])
        writers.append(w)
    try:
        for i in range(n):
            writers[i % FOLDERS].writerow([f"img-{i:07d}.jpg", f"{sentence(rng)}, photo {i}"])
    finally:
        for fh in files:
            fh.close()
    (root / NOTES).mkdir()


def watch_batches() -> list[float]:
    """Times at which the ingest stores a batch of vectors (the writer's append_vectors, once per
    encoder batch): its heartbeat. A retrain or a merge that stalled the ingest would show as a
    gap of its own length; retrains that run beside it leave only batch-sized gaps."""
    from mmsearch.writer import CatalogWriter

    stamps: list[float] = []
    original = CatalogWriter.append_vectors

    def append_vectors(self, collection, ids, vectors):  # type: ignore[no-untyped-def]
        original(self, collection, ids, vectors)
        stamps.append(time.perf_counter())

    CatalogWriter.append_vectors = append_vectors  # type: ignore[method-assign]
    return stamps


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def ms(seconds: float) -> float:
    return seconds * 1000


def rss_mb(kib: int) -> float:
    return kib / 1024  # ru_maxrss is in KiB on Linux


def rebuild_cmd(root: Path, catalog: Path, model: str, device: str) -> list[str]:
    return [sys.executable, "-m", "mmsearch.cli", "index", str(root), "--catalog", str(catalog),
            "--model", model, "--no-audio", "--device", device, "--json"]


def rebuild_env() -> dict[str, str]:
    return {**os.environ, "MMSEARCH_MODEL_CONFIG_DIRS": json.dumps([str(CONFIG_DIR)]),
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def wait_child(proc: subprocess.Popen, log: Path) -> tuple[int, float]:
    """Wait for the child and return its exit code and its own peak RSS in MiB: VmHWM of its
    address space, polled from /proc until it exits. (ru_maxrss would not do: a child forked
    from this large process carries the parent's RSS as its high-water mark across exec.)"""
    peak_kib = 0
    status_file = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            for line in status_file.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak_kib = max(peak_kib, int(line.split()[1]))
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    if proc.returncode != 0:
        sys.exit(f"the rebuild failed (exit {proc.returncode}):\n{log.read_text()[-3000:]}")
    return proc.returncode, rss_mb(peak_kib)


def empty_folder(folder: Path) -> None:
    for p in folder.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def run_one_n(n: int, base: Path, args: argparse.Namespace) -> dict[str, float]:  # noqa: C901 - one linear run
    from fastapi.testclient import TestClient

    from mmsearch import Engine, Query, Settings
    from mmsearch.api.app import create_app

    root = base / f"media-{n}"
    catalog = base / f"catalog-{n}"
    t_media, _ = timed(lambda: build_media(root, n))
    print(f"[n={n}] wrote {n} caption rows in {FOLDERS} captions files in {t_media:.1f} s", file=sys.stderr)

    settings = Settings(catalog=catalog, model=args.model, audio=False, device=args.device,
                        batch_size=args.batch_size, model_config_dirs=[CONFIG_DIR])
    rng = random.Random(12345)
    texts = [sentence(rng) for _ in range(args.queries)]
    out: dict[str, float] = {"n": n}
    with Engine.open(settings) as engine:
        engine.embed(text="warm up the text tower")  # loads the model: not part of the ingest time
        batches = watch_batches()
        t_ingest, report = timed(lambda: engine.index([root]))
        gaps = np.diff(np.array(batches)) if len(batches) > 1 else np.zeros(1)
        out["ingest_longest_pause_s"] = float(gaps.max())
        print(f"[n={n}] longest gap between stored batches: {gaps.max():.2f} s (median {np.median(gaps):.3f} s, "
              f"{len(batches)} batches) - retrains run beside the ingest", file=sys.stderr)
        items = report.items
        out["ingest_items_per_s"] = items / t_ingest
        print(f"[n={n}] ingest: {items} items from {report.added} files in {t_ingest:.1f} s "
              f"({out['ingest_items_per_s']:.0f} items/s), {report.failed} failed", file=sys.stderr)

        # -- queries: four kinds, taking turns -----------------------------------------------
        prefix = str(root.resolve() / FILTER_FOLDER)
        kinds: dict[str, Callable[[str], Any]] = {
            "query": lambda t: Query(text=t, k=args.k),
            "filter": lambda t: Query(text=t, k=args.k, path=prefix),
            "min_score": lambda t: Query(text=t, k=args.k, min_score=args.min_score),
            "offset": lambda t: Query(text=t, k=args.k, offset=1000),
        }
        for t in texts[:5]:  # warm-up, untimed: first-query caches (background samples, index loads)
            for make in kinds.values():
                engine.search(make(t))
        lat: dict[str, list[float]] = {k: [] for k in kinds}
        hits: dict[str, list[int]] = {k: [] for k in kinds}
        outside = 0  # filtered results not under the prefix (should stay 0)
        victims: list[int] = []
        # Each kind runs in blocks of BLOCK queries, the kinds taking turns block by block, so they
        # share the machine's conditions; one untimed query opens each block, because a plain
        # query right after a deep one (offset, min_score) is measurably slower (caches).
        for start in range(0, len(texts), BLOCK):
            for kind, make in kinds.items():
                engine.search(make(texts[(start + BLOCK) % len(texts)]))
                for t in texts[start:start + BLOCK]:
                    dt, resp = timed(lambda: engine.search(make(t)))  # noqa: B023
                    lat[kind].append(dt)
                    results = resp.results
                    hits[kind].append(len(results))
                    if kind == "filter":
                        outside += sum(not h.path.startswith(prefix) for h in results)
                    if kind == "query":
                        victims.extend(h.id for h in results if h.id not in victims)
        for kind in kinds:
            out[f"{kind}_p50_ms"] = ms(percentile(lat[kind], 50))
            out[f"{kind}_p99_ms"] = ms(percentile(lat[kind], 99))
            out[f"{kind}_hits"] = statistics.mean(hits[kind])
        if outside:
            print(f"[n={n}] WARNING: {outside} filtered results outside {prefix}", file=sys.stderr)

        # -- /stats through the HTTP app, in process -----------------------------------------
        client = TestClient(create_app(engine))  # no lifespan: no background model loading
        r = client.get("/stats")
        if r.status_code != 200:
            sys.exit(f"/stats answered {r.status_code}: {r.text[:500]}")
        stats_lat = []
        for _ in range(args.queries):
            dt, r = timed(lambda: client.get("/stats"))
            stats_lat.append(dt)
        out["stats_p50_ms"] = ms(percentile(stats_lat, 50))

        # -- small writes --------------------------------------------------------------------
        add, delete, unchanged = [], [], []
        for r_i in range(args.repeats):
            note = root / NOTES / f"note-{r_i:03d}.txt"
            note.write_text(f"a short note number {r_i}: {sentence(rng)}")
            dt, rep = timed(lambda: engine.index([root]))
            add.append(dt)
            if rep.added != 1:
                print(f"[n={n}] WARNING: adding one note reported {rep}", file=sys.stderr)
        for r_i in range(args.repeats):
            dt, _ = timed(lambda: engine.delete(victims[r_i]))  # noqa: B023
            delete.append(dt)
        for _ in range(args.repeats):
            dt, rep = timed(lambda: engine.index([root]))
            unchanged.append(dt)
            if rep.added or rep.updated or rep.removed:
                print(f"[n={n}] WARNING: an unchanged re-index reported {rep}", file=sys.stderr)
        out["add_one_ms"] = ms(statistics.median(add))
        out["delete_one_ms"] = ms(statistics.median(delete))
        out["unchanged_ms"] = ms(statistics.median(unchanged))
        out["peak_rss_mb"] = rss_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        describe = engine.stats()["collections"]
        out_index = {c: (d["index"] or {}).get("factory") for c, d in describe.items()}

        # -- rebuild in a subprocess ---------------------------------------------------------
        indexes = catalog / "indexes"
        empty_folder(indexes)
        log = base / f"rebuild-{n}.log"
        t0 = time.perf_counter()
        with open(log, "w") as fh:
            proc = subprocess.Popen(rebuild_cmd(root, catalog, args.model, args.device), cwd=REPO,
                                    env=rebuild_env(), stdout=fh, stderr=subprocess.STDOUT)
            _, out["rebuild_peak_rss_mb"] = wait_child(proc, log)
        out["rebuild_s"] = time.perf_counter() - t0
        # The same command again, with nothing to rebuild: the floor (interpreter, imports, model).
        with open(log, "a") as fh:
            proc = subprocess.Popen(rebuild_cmd(root, catalog, args.model, args.device), cwd=REPO,
                                    env=rebuild_env(), stdout=fh, stderr=subprocess.STDOUT)
            _, out["noop_peak_rss_mb"] = wait_child(proc, log)
        after = [len(engine.search(Query(text=t, k=args.k)).results) for t in texts[:10]]
        out["after_rebuild_nonempty"] = float(all(after))
        print(f"[n={n}] rebuild subprocess: {out['rebuild_s']:.1f} s wall (start-up and model load "
              f"included), results after it: {after}", file=sys.stderr)

        # -- optional: queries while a rebuild runs ------------------------------------------
        if args.during_rebuild:
            # Only the JSON note goes: the writer then takes the index for replaced and rebuilds it
            # (a retrain), while readers keep answering from the index they hold.
            (indexes / "clip.text.json").unlink()
            log = base / f"rebuild-during-{n}.log"
            during: list[float] = []
            empty = 0
            with open(log, "w") as fh:
                proc = subprocess.Popen(rebuild_cmd(root, catalog, args.model, args.device), cwd=REPO,
                                        env=rebuild_env(), stdout=fh, stderr=subprocess.STDOUT)
                # ... and stop when it has saved the index (its JSON note comes last): after that
                # the child is only exiting.
                i = 0
                while proc.poll() is None and not (indexes / "clip.text.json").exists():
                    dt, resp = timed(lambda: engine.search(Query(text=texts[i % len(texts)], k=args.k)))  # noqa: B023
                    during.append(dt)
                    empty += not resp.results
                    i += 1
                proc.wait()
                if proc.returncode != 0:
                    sys.exit(f"the rebuild failed (exit {proc.returncode}):\n{log.read_text()[-3000:]}")
            idle = [timed(lambda: engine.search(Query(text=texts[j % len(texts)], k=args.k)))[0]  # noqa: B023
                    for j in range(max(len(during), args.queries))]
            out["during_n"] = len(during)
            out["during_empty"] = empty
            if during:
                out["during_p50_ms"] = ms(percentile(during, 50))
                out["during_p99_ms"] = ms(percentile(during, 99))
            out["idle_p50_ms"] = ms(percentile(idle, 50))
            out["idle_p99_ms"] = ms(percentile(idle, 99))

    print(f"[n={n}] indexes: {out_index}", file=sys.stderr)
    return out


def report(o: dict[str, float], args: argparse.Namespace) -> None:
    n = int(o["n"])
    q = args.queries
    print(f"N={n:,}")
    print(f"  ingest              {o['ingest_items_per_s']:8.0f} items/s")
    print(f"  add one file        {o['add_one_ms']:8.1f} ms   (median of {args.repeats}; index of the root)")
    print(f"  delete one item     {o['delete_one_ms']:8.1f} ms")
    print(f"  index, unchanged    {o['unchanged_ms']:8.1f} ms")
    print(f"  queries ({q} each)   p50 ms   p99 ms   hits/query   p50 vs plain")
    for kind, label in (("query", "plain"), ("filter", "path 1%"), ("min_score", f"min_score {args.min_score}"),
                        ("offset", "offset 1000")):
        print(f"    {label:18s}{o[f'{kind}_p50_ms']:8.1f} {o[f'{kind}_p99_ms']:8.1f} {o[f'{kind}_hits']:10.1f}"
              f"   {o[f'{kind}_p50_ms'] / o['query_p50_ms']:8.2f}x")
    print(f"  /stats p50          {o['stats_p50_ms']:8.1f} ms")
    print(f"  peak RSS, this process {o['peak_rss_mb']:6.0f} MiB (running maximum)")
    print(f"  rebuild subprocess  {o['rebuild_peak_rss_mb']:8.0f} MiB peak RSS, {o['rebuild_s']:.1f} s wall, "
          f"results after it: {'yes' if o['after_rebuild_nonempty'] else 'NO'}")
    print(f"    same command, nothing to rebuild {o['noop_peak_rss_mb']:6.0f} MiB: the rebuild itself adds "
          f"{o['rebuild_peak_rss_mb'] - o['noop_peak_rss_mb']:.0f} MiB")
    if "idle_p99_ms" in o:
        if o.get("during_n"):
            print(f"  during a rebuild    p50 {o['during_p50_ms']:.1f} ms, p99 {o['during_p99_ms']:.1f} ms over "
                  f"{int(o['during_n'])} queries ({int(o['during_empty'])} empty); idle right after: p50 "
                  f"{o['idle_p50_ms']:.1f}, p99 {o['idle_p99_ms']:.1f}; p99 ratio "
                  f"{o['during_p99_ms'] / o['idle_p99_ms']:.2f}")
        else:
            print("  during a rebuild    no query fitted in the rebuild's window")


def parse_ns(values: list[str]) -> list[int]:
    ns = sorted({int(x.replace("_", "")) for v in values for x in v.split(",") if x.strip()})
    if not ns or min(ns) < FOLDERS:
        raise SystemExit(f"--n: sizes of at least {FOLDERS}")
    return ns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", action="append", default=None,
                    help="Catalog size(s): repeatable or a comma list (default 100000).")
    ap.add_argument("--catalog-dir", type=Path, help="Where to build media and catalogs (default: a temp dir).")
    ap.add_argument("--keep", action="store_true", help="Leave the media and catalogs in place.")
    ap.add_argument("--model", default="open_clip:mmtest-tiny@random",
                    help="Model spec (tests/assets holds mmtest-tiny's config).")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--queries", type=int, default=50, help="Text queries per kind.")
    ap.add_argument("--repeats", type=int, default=5, help="Runs of add one / delete one / unchanged.")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--min-score", type=float, default=0.999, help="A minimum score nothing should reach.")
    ap.add_argument("--during-rebuild", action="store_true",
                    help="Also time queries while a rebuild subprocess runs.")
    args = ap.parse_args()
    ns = parse_ns(args.n or ["100000"])

    import torch

    # One thread for the tiny model: it gains nothing from more, and on a small shared machine a
    # second OpenMP thread only adds noise to the latencies. The rebuild subprocess keeps defaults.
    torch.set_num_threads(1)

    if args.catalog_dir:
        args.catalog_dir.mkdir(parents=True, exist_ok=True)
        base = args.catalog_dir.resolve()
    else:
        base = Path(tempfile.mkdtemp(prefix="mmsearch-scale-")).resolve()
    for n in ns:  # never build over (or clean up) what was there before
        for p in (base / f"media-{n}", base / f"catalog-{n}"):
            if p.exists():
                sys.exit(f"{p} exists: remove it or use another --catalog-dir")
    results = []
    try:
        for n in ns:
            o = run_one_n(n, base, args)
            report(o, args)
            sys.stdout.flush()
            results.append(o)
            if not args.keep:
                for p in (base / f"media-{n}", base / f"catalog-{n}"):
                    shutil.rmtree(p, ignore_errors=True)
    finally:
        if args.keep:
            print(f"kept: {base}", file=sys.stderr)
        elif args.catalog_dir:
            for n in ns:
                for p in (base / f"media-{n}", base / f"catalog-{n}", base / f"rebuild-{n}.log",
                          base / f"rebuild-during-{n}.log"):
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        else:
            shutil.rmtree(base, ignore_errors=True)
    o = results[-1]
    print(f"n={int(o['n'])} add_one_ms={o['add_one_ms']:.1f} delete_one_ms={o['delete_one_ms']:.1f} "
          f"filter_p50_ms={o['filter_p50_ms']:.2f} query_p50_ms={o['query_p50_ms']:.2f} "
          f"rebuild_peak_rss_mb={o['rebuild_peak_rss_mb']:.0f}")


if __name__ == "__main__":
    main()
