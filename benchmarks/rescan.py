"""Re-scanning an unchanged folder: how long an incremental `index` takes when nothing changed.

    python benchmarks/rescan.py --n 10000

Builds N small text files, indexes them once with a tiny random model, then times a re-run
against a full first run. Ends with: files=... first_s=... rescan_s=... speedup=...
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmsearch import Engine, Settings  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        media = Path(tmp) / "media"
        for i in range(args.n):
            folder = media / f"d{i // 500:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"note-{i:05d}.txt").write_text(f"note number {i} about topic {i % 97}")
        settings = Settings(catalog=Path(tmp) / "catalog", model="open_clip:mmtest-tiny@random", audio=False,
                            batch_size=256, model_config_dirs=[REPO / "tests" / "assets"])
        with Engine.open(settings) as engine:
            t0 = time.perf_counter()
            first = engine.index([media])
            first_s = time.perf_counter() - t0
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                again = engine.index([media])
                times.append(time.perf_counter() - t0)
                assert again.unchanged == args.n and again.added == 0
    rescan = min(times)
    print(f"first run {first.added} files in {first_s:.1f} s; re-scans: "
          + ", ".join(f"{t:.2f}" for t in times), file=sys.stderr)
    print(f"files={args.n} first_s={first_s:.2f} rescan_s={rescan:.3f} speedup={first_s / rescan:.1f}")


if __name__ == "__main__":
    main()
