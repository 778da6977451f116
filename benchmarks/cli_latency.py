"""Wall time of cold CLI commands on an indexed folder, as a user meets them: each run is a new
``mmsearch`` process (import, open the catalog, load what the command needs, answer).

    python benchmarks/cli_latency.py                       # index 200 Flickr photos in a temp catalog
    python benchmarks/cli_latency.py --catalog DIR         # kept: indexed if missing, else used as it is
    python benchmarks/cli_latency.py --catalog DIR --src OTHER_CHECKOUT   # the same, another version
    python benchmarks/cli_latency.py --limit 0 --runs 7    # the whole folder
    python benchmarks/cli_latency.py --catalog DIR --against ../main --against-cache /tmp/main-cache
        # this checkout and another, runs taking turns (the same load for both): ratios too

With ``--checkpoint`` (the default) the ``@random`` weights are saved to a safetensors file first
and the catalog uses that file: what a pretrained model costs (it is read from a file, a tower at
a time), where ``@random`` builds and initialises the whole model in every process.
One warm-up run per command (the page cache then holds the files, as for any second query, and
the CPU runtime has exported the towers it needs), then the median of ``--runs``. Ends with: cli_text_s=... cli_image_s=... cli_stats_s=...
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLICKR = REPO.parent / "shared" / "data" / "flickr8k-1k"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, default=FLICKR)
    ap.add_argument("--catalog", type=Path, default=None,
                    help="Catalog to keep (indexed first if it does not exist; its checkpoint beside it).")
    ap.add_argument("--src", type=Path, default=REPO, help="The mmsearch checkout to run (default: this one).")
    ap.add_argument("--model", default="open_clip:ViT-B-32@random")
    ap.add_argument("--checkpoint", action=argparse.BooleanOptionalAction, default=True,
                    help="Save @random weights to a file and use the file (as a pretrained model loads).")
    ap.add_argument("--limit", type=int, default=200, help="Index only the first N photos (0: all).")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--runtime", choices=["auto", "torch", "onnx"], default=None,
                    help="MMSEARCH_RUNTIME for every command (default: as set, else auto).")
    ap.add_argument("--image", type=Path, default=None, help="Query image (default: the first photo).")
    ap.add_argument("--against", type=Path, default=None,
                    help="Another checkout, timed in turns with --src on the same catalog; prints ratios.")
    ap.add_argument("--against-cache", type=Path, default=None,
                    help="MMSEARCH_CACHE_DIR for --against (its own exports; default: the same as --src).")
    args = ap.parse_args()

    env = {**os.environ, "PYTHONPATH": str(args.src.resolve()), "MMSEARCH_AUDIO": "false",
           "MMSEARCH_MODEL_CONFIG_DIRS": json.dumps([str(REPO / "tests" / "assets")]),
           **({"MMSEARCH_RUNTIME": args.runtime} if args.runtime else {})}
    with tempfile.TemporaryDirectory() as tmp:
        catalog = (args.catalog or Path(tmp) / "catalog").resolve()
        work = catalog.parent / f"{catalog.name}-work"
        if not catalog.exists():
            work.mkdir(parents=True, exist_ok=True)
            model = _checkpoint(args.model, work) if args.checkpoint and args.model.endswith("@random") \
                else args.model
            folder = _folder(args.folder, work / "media", args.limit)
            t0 = time.perf_counter()
            _mmsearch(["index", str(folder), "--catalog", str(catalog), "--model", model, "--follow-links",
                       "--no-audio"], env)
            print(f"indexed {folder} with {model} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        image = args.image or next(p for p in sorted((args.folder / "images").glob("*.jpg")))
        cat = ["--catalog", str(catalog)]
        item = json.loads(_mmsearch(["search", "--image", str(image), "-k", "1", "--json", *cat], env))
        commands = {
            "text": ["search", "a dog running on the beach", "-k", "10", *cat],
            "image": ["search", "--image", str(image), "-k", "10", *cat],
            "stats": ["stats", *cat],
            "similar": ["similar", str(item["results"][0]["id"]), "-k", "10", *cat],
            "help": ["--help"],
        }
        if args.against is not None:
            other = {**env, "PYTHONPATH": str(args.against.resolve()),
                     **({"MMSEARCH_CACHE_DIR": str(args.against_cache)} if args.against_cache else {})}
            _compare(commands, env, other, args.runs)
            return
        runs = {name: _time(cmd, env, args.runs) for name, cmd in commands.items()}
        runs["python"] = _time(None, env, args.runs)  # the interpreter alone: the floor
    times = {name: [wall for wall, _ in r] for name, r in runs.items()}
    for name, r in runs.items():
        print(f"{name:8s} median {statistics.median(w for w, _ in r):.3f} s wall, "
              f"{statistics.median(c for _, c in r):.3f} s CPU;  runs {' '.join(f'{w:.2f}' for w, _ in r)}",
              file=sys.stderr)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"cli_similar_s={med['similar']:.3f} cli_help_s={med['help']:.3f} python_s={med['python']:.3f}",
          file=sys.stderr)
    print(f"cli_text_s={med['text']:.3f} cli_image_s={med['image']:.3f} cli_stats_s={med['stats']:.3f}")


def _compare(commands: dict[str, list[str]], env: dict[str, str], other: dict[str, str], runs: int) -> None:
    """Each command on both checkouts, one run of each in turn (after a warm-up of each): medians,
    and this checkout's time over the other's. Ends with: ratio_text=... ratio_image=... ..."""
    ratios = {}
    for name, cmd in commands.items():
        if name == "help":
            continue
        ours: list[tuple[float, float]] = []
        theirs: list[tuple[float, float]] = []
        _mmsearch(cmd, env)
        _mmsearch(cmd, other)
        for _ in range(runs):
            ours += _time(cmd, env, 1, warm=False)
            theirs += _time(cmd, other, 1, warm=False)
        med = [statistics.median(w for w, _ in r) for r in (ours, theirs)]
        cpu = [statistics.median(c for _, c in r) for r in (ours, theirs)]
        ratios[name] = med[0] / med[1]
        print(f"{name:8s} this {med[0]:.3f} s wall ({cpu[0]:.3f} s CPU), other {med[1]:.3f} s ({cpu[1]:.3f} s CPU): "
              f"ratio {ratios[name]:.3f}", file=sys.stderr)
    print(" ".join(f"ratio_{n}={r:.3f}" for n, r in ratios.items()))


def _mmsearch(args: list[str] | None, env: dict[str, str]) -> str:
    cmd = [sys.executable, "-c", "pass"] if args is None else [sys.executable, "-m", "mmsearch.cli", *args]
    # ``-m`` puts the working folder first on sys.path: run in the checkout being measured
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=env["PYTHONPATH"])
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout


def _time(args: list[str] | None, env: dict[str, str], runs: int, warm: bool = True) -> list[tuple[float, float]]:
    """(wall, CPU) seconds per run. CPU time (user + system of the process) tells what a command
    costs when other work shares the cores and stretches the wall time."""
    if warm:
        _mmsearch(args, env)  # warm-up: the page cache holds the files, as for any second query
    out = []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        _mmsearch(args, env)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        out.append((wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime))
    return out


def _folder(source: Path, dest: Path, limit: int) -> Path:
    """The photos (behind links) and their captions: the first ``limit`` photos, or all."""
    if not limit:
        return source
    (dest / "images").mkdir(parents=True, exist_ok=True)
    photos = sorted((source / "images").glob("*.jpg"))[:limit]
    for p in photos:
        if not (dest / "images" / p.name).is_symlink():
            (dest / "images" / p.name).symlink_to(p)
    names = {p.name for p in photos}
    lines = (source / "captions.csv").read_text().splitlines()
    (dest / "captions.csv").write_text("\n".join([lines[0]] + [ln for ln in lines[1:] if ln.split(",")[0] in names]))
    return dest


def _checkpoint(spec: str, tmp: Path) -> str:
    """The ``@random`` weights as a safetensors file: the same vectors, loaded as a pretrained model is."""
    sys.path.insert(0, str(REPO))
    import open_clip
    import torch
    from safetensors.torch import save_file

    from mmsearch.encoders.clip import RANDOM_SEED

    arch = spec.split(":", 1)[1].split("@", 1)[0]
    open_clip.add_model_config(REPO / "tests" / "assets")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        model = open_clip.create_model(arch, pretrained=None)
    path = tmp / f"{arch}-random.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return f"open_clip:{arch}@{path}"


if __name__ == "__main__":
    main()
