"""Text queries over HTTP on loopback against the same queries through the engine in process.

    python benchmarks/http_load.py                       # 100 Flickr photos, ViT-B-32 (random weights)
    python benchmarks/http_load.py --catalog DIR         # an existing catalog, as it is
    python benchmarks/http_load.py --model open_clip:mmtest-tiny@random --images 50   # quick

The server is `mmsearch serve` in its own process on 127.0.0.1 (so client and server do not
share a GIL); the load generator is N threads with one keep-alive connection each. Both sides
stop by themselves: after --requests queries or --seconds, whichever comes first. The in-process
side runs the same queries with the same concurrency through ``Engine.search``.

Ends with one line:
http_qps=... http_p50_ms=... http_p99_ms=... inproc_qps=... inproc_p50_ms=... inproc_p99_ms=... ratio=...
(ratio = http_qps / inproc_qps), then http_nobatch_qps and http_nobatch_p50_ms: the HTTP run
again with micro-batching off (unless --no-compare-batching).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import argparse  # noqa: E402
import csv  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import urllib.parse  # noqa: E402
from collections.abc import Callable  # noqa: E402

from mmsearch.api.readiness import wait_until_ready  # noqa: E402

FLICKR = REPO.parent / "shared" / "data" / "flickr8k-1k"
CONFIG_DIR = REPO / "tests" / "assets"


def queries(n: int) -> list[str]:
    """Real captions, not seen as such by the index (captions.csv is left out of the catalog)."""
    with open(FLICKR / "captions.csv", newline="") as fh:
        rows = [r["caption"] for r in csv.DictReader(fh)]
    return rows[-n:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def load(run_one: Callable[[int, object], None], make_state: Callable[[], object], concurrency: int,
         requests: int, seconds: float) -> tuple[list[float], float, int]:
    """Bounded closed-loop load: each worker sends its next query when the last one answered;
    all stop after `requests` in total or `seconds`. Returns latencies (s), wall time, errors."""
    lock = threading.Lock()
    issued = 0
    errors = 0
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    def worker() -> None:
        nonlocal issued, errors
        state = make_state()
        while True:
            with lock:
                if issued >= requests or time.perf_counter() > deadline:
                    return
                i = issued
                issued += 1
            t0 = time.perf_counter()
            try:
                run_one(i, state)
            except Exception as e:  # noqa: BLE001 - counted, reported, never retried
                with lock:
                    errors += 1
                if errors == 1:
                    print(f"first error: {type(e).__name__}: {e}", file=sys.stderr)
                continue
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    return latencies, time.perf_counter() - t0, errors


def summary(name: str, latencies: list[float], wall: float) -> dict[str, float]:
    return {f"{name}_qps": len(latencies) / wall, f"{name}_p50_ms": percentile(latencies, 50) * 1000,
            f"{name}_p99_ms": percentile(latencies, 99) * 1000}


def main() -> None:  # noqa: C901 - one linear script
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", type=Path, help="Use this catalog as it is (default: build one in a temp dir).")
    ap.add_argument("--images", type=int, default=100, help="Photos to index when building a catalog.")
    ap.add_argument("--model", default="open_clip:ViT-B-32@random")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--requests", type=int, default=400, help="Queries per side (upper bound).")
    ap.add_argument("--seconds", type=float, default=30.0, help="Time per side (upper bound).")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-compare-batching", dest="compare_batching", action="store_false",
                    help="Skip the extra HTTP run with micro-batching off.")
    args = ap.parse_args()

    from mmsearch import Engine, Query, Settings

    tmp = Path(tempfile.mkdtemp(prefix="mmsearch-http-bench-"))
    proc: subprocess.Popen | None = None
    log = open(tmp / "server.log", "w+")
    try:
        catalog = args.catalog or tmp / "catalog"
        settings = Settings(catalog=catalog, model=None if args.catalog else args.model, audio=False,
                            device=args.device, model_config_dirs=[CONFIG_DIR])
        if not args.catalog:
            media = tmp / "media"
            media.mkdir()
            for src in sorted((FLICKR / "images").glob("*.jpg"))[: args.images]:
                shutil.copy2(src, media / src.name)
            t0 = time.perf_counter()
            with Engine.open(settings) as engine:
                report = engine.index([media])
            print(f"indexed {report.items} items in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        texts = queries(max(args.requests, 50))

        # -- over HTTP ---------------------------------------------------------------------------
        def over_http(batching: bool) -> tuple[list[float], float, int, dict]:
            nonlocal proc
            port = free_port()
            env = {**os.environ, "MMSEARCH_MODEL_CONFIG_DIRS": json.dumps([str(CONFIG_DIR)])}
            env.pop("MMSEARCH_API_KEY", None)
            cmd = [sys.executable, "-m", "mmsearch.cli", "serve", "--catalog", str(catalog), "--host", "127.0.0.1",
                   "--port", str(port), "--no-audio", "--log-level", "warning", "--read-only",
                   "--batching" if batching else "--no-batching"]
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
            if not wait_until_ready(f"http://127.0.0.1:{port}", proc, timeout=180):
                log.seek(0)
                sys.exit(f"the server did not start:\n{log.read()[-2000:]}")

            def http_one(i: int, conn: object) -> None:
                assert isinstance(conn, http.client.HTTPConnection)
                q = urllib.parse.urlencode({"text": texts[i % len(texts)], "k": args.k})
                conn.request("GET", f"/search?{q}")
                r = conn.getresponse()
                body = r.read()
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}: {body[:200]!r}")

            def new_conn() -> object:
                return http.client.HTTPConnection("127.0.0.1", port, timeout=60)

            load(http_one, new_conn, args.concurrency, 3 * args.concurrency, args.seconds)  # warm-up, untimed
            result = load(http_one, new_conn, args.concurrency, args.requests, args.seconds)
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            c.request("GET", "/stats")
            info = json.loads(c.getresponse().read())["service"]["batching"].get("clip", {})
            proc.terminate()
            proc.wait(20)
            proc = None
            return (*result, info)

        lat_http, wall_http, err_http, batching = over_http(True)
        if args.compare_batching:
            lat_nb, wall_nb, _, _ = over_http(False)

        # -- in process --------------------------------------------------------------------------
        with Engine.open(settings) as engine:
            def inproc_one(i: int, _: object) -> None:
                engine.search(Query(text=texts[i % len(texts)], k=args.k))

            load(inproc_one, lambda: None, args.concurrency, 3 * args.concurrency, args.seconds)  # warm-up

            lat_in, wall_in, err_in = load(inproc_one, lambda: None, args.concurrency, args.requests, args.seconds)
            stats = engine.stats()
    finally:
        if proc is not None:
            proc.kill()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)

    if not lat_http or not lat_in:
        sys.exit("no query succeeded")
    out = {**summary("http", lat_http, wall_http), **summary("inproc", lat_in, wall_in)}
    out["ratio"] = out["http_qps"] / out["inproc_qps"]
    if args.compare_batching and lat_nb:
        nb = summary("http_nobatch", lat_nb, wall_nb)
        out = {**out, "http_nobatch_qps": nb["http_nobatch_qps"], "http_nobatch_p50_ms": nb["http_nobatch_p50_ms"]}
    items = sum(stats["items"].values())
    print(f"model={stats['models']['clip']['spec']} items={items} concurrency={args.concurrency} k={args.k} "
          f"http: {len(lat_http)} ok, {err_http} errors in {wall_http:.1f} s; "
          f"in process: {len(lat_in)} ok, {err_in} errors in {wall_in:.1f} s; "
          f"server micro-batching: {batching}", file=sys.stderr)
    print(" ".join(f"{k}={v:.3f}" if k == "ratio" else f"{k}={v:.1f}" for k, v in out.items()))


if __name__ == "__main__":
    main()
