"""What files that are neither media nor text cost an index run: read once when new, never again.

    python benchmarks/sniff.py --n 3000

Two folders indexed side by side with a tiny random model (after a warm-up run): N/20 notes, and
the same notes plus N files under extensions that name no kind (random bytes: build outputs,
archives, binaries). The first run reads the extra files' headers (content sniffing) and records
them as skipped; a re-run of the unchanged folders must not read them, so its cost per file stays
that of a known unchanged file: a stat and a lookup.
Ends with: files=... first_extra_us=... sniff_us=... rescan_extra_us=... scan_us=...
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmsearch import Engine, Settings  # noqa: E402
from mmsearch.indexer.scan import scan  # noqa: E402
from mmsearch.media.formats import sniff_image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXTS = (".bin", ".o", ".zip", ".exe", "", ".log")


def _timed_index(tmp: Path, name: str, media: Path, repeats: int) -> tuple[float, float, dict[str, int]]:
    """The best of ``repeats`` first runs (each into a new catalog) and of as many unchanged re-runs."""
    firsts, rescans = [], []
    for r in range(repeats):
        settings = Settings(catalog=tmp / f"catalog-{name}-{r}", model="open_clip:mmtest-tiny@random", audio=False,
                            batch_size=256, model_config_dirs=[REPO / "tests" / "assets"], runtime="torch")
        with Engine.open(settings) as engine:
            t0 = time.perf_counter()
            first = engine.index([media])
            firsts.append(time.perf_counter() - t0)
        with Engine.open(settings.model_copy(update={"model": None})) as engine:
            t0 = time.perf_counter()
            again = engine.index([media])
            rescans.append(time.perf_counter() - t0)
            assert again.added == again.updated == 0
    return min(firsts), min(rescans), first.skipped


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        plain, mixed = tmp / "plain", tmp / "mixed"
        notes = max(1, args.n // 20)
        for folder in (plain, mixed):
            for i in range(notes):
                sub = folder / f"d{i // 500:03d}"
                sub.mkdir(parents=True, exist_ok=True)
                (sub / f"note-{i:05d}.txt").write_text(f"note number {i} about topic {i % 97}")
        for i in range(args.n):
            sub = mixed / f"d{i // 500:03d}"
            sub.mkdir(parents=True, exist_ok=True)
            (sub / f"blob-{i:05d}{EXTS[i % len(EXTS)]}").write_bytes(os.urandom(4096))
        t0 = time.perf_counter()
        others = [f.path for f in scan(mixed, others=True) if f.kind == "other"]
        scan_us = (time.perf_counter() - t0) / (len(others) + notes) * 1e6
        t0 = time.perf_counter()
        hits = sum(sniff_image(p) for p in others)
        sniff_us = (time.perf_counter() - t0) / len(others) * 1e6
        assert hits == 0
        _timed_index(tmp, "warm-up", plain, 1)  # imports, model load, first batches
        plain_first, plain_rescan, _ = _timed_index(tmp, "plain", plain, args.repeats)
        mixed_first, mixed_rescan, skipped = _timed_index(tmp, "mixed", mixed, args.repeats)
    assert sum(skipped.values()) == args.n, skipped
    first_extra = (mixed_first - plain_first) / args.n * 1e6
    rescan_extra = (mixed_rescan - plain_rescan) / args.n * 1e6
    print(f"first index:  {notes} notes {plain_first:.2f} s; with {args.n} other files {mixed_first:.2f} s "
          f"({first_extra:.0f} us per other file; sniffing alone {sniff_us:.0f} us)")
    print(f"unchanged re-run: {plain_rescan:.3f} s; with the other files {mixed_rescan:.3f} s "
          f"({rescan_extra:.1f} us per other file, of which the scan's stat {scan_us:.1f} us, the rest its "
          "catalog row)")
    print(f"files={args.n} first_extra_us={first_extra:.0f} sniff_us={sniff_us:.0f} "
          f"rescan_extra_us={rescan_extra:.1f} scan_us={scan_us:.1f}")


if __name__ == "__main__":
    main()
