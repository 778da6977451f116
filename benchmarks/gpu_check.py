"""On a machine with CUDA: the encoders' fp16-autocast GPU vectors against their fp32 CPU vectors.

    python benchmarks/gpu_check.py [--model open_clip:ViT-B-32@random] [--images DIR]

Ends with: clip_min_cosine=... clip_gpu_ms_per_image=... clip_cpu_ms_per_image=...
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mmsearch.encoders import load_encoder  # noqa: E402
from mmsearch.media.decode import load_image  # noqa: E402
from mmsearch.settings import Settings  # noqa: E402


def _time(enc, modality: str, prepared: list, reps: int = 3) -> tuple[np.ndarray, float]:  # type: ignore[no-untyped-def]
    out = enc.encode(modality, prepared)
    if enc.device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        enc.encode(modality, prepared)
    if enc.device == "cuda":
        torch.cuda.synchronize()
    return out, (time.perf_counter() - t0) / reps / len(prepared) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="open_clip:ViT-B-32@random")
    ap.add_argument("--images", type=Path, default=Path("../shared/data/flickr8k-1k/images"))
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--clap", default=None, help="Also check a CLAP spec, e.g. clap:/path/to/dir.")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this check needs a GPU")
    gpu = load_encoder(args.model, Settings(device="cuda"))
    cpu = load_encoder(args.model, Settings(device="cpu"))
    images = [load_image(p, 89_478_485) for p in sorted(args.images.glob("*.jpg"))[: args.n]]
    prepared = [cpu.prepare("image", im) for im in images]
    g, g_ms = _time(gpu, "image", prepared)
    c, c_ms = _time(cpu, "image", prepared, reps=1)
    texts = [f"a photo of thing number {i}" for i in range(args.n)]
    gt, ct = gpu.encode("text", texts), cpu.encode("text", texts)
    cos = min(float((g * c).sum(1).min()), float((gt * ct).sum(1).min()))
    print(f"{torch.cuda.get_device_name()} {args.model}: images {len(images)}", file=sys.stderr)
    line = f"clip_min_cosine={cos:.6f} clip_gpu_ms_per_image={g_ms:.3f} clip_cpu_ms_per_image={c_ms:.2f}"
    if args.clap:
        gpu_a = load_encoder(args.clap, Settings(device="cuda"))
        cpu_a = load_encoder(args.clap, Settings(device="cpu"))
        rng = np.random.default_rng(0)
        windows = [rng.normal(0, 0.1, int(cpu_a.sample_rate * cpu_a.window_seconds)).astype(np.float32)
                   for _ in range(16)]  # type: ignore[attr-defined]
        prep = [cpu_a.prepare("audio", w) for w in windows]
        a, b = gpu_a.encode("audio", prep), cpu_a.encode("audio", prep)
        at, bt = gpu_a.encode("text", texts), cpu_a.encode("text", texts)
        line += f" clap_min_cosine={min(float((a * b).sum(1).min()), float((at * bt).sum(1).min())):.6f}"
    print(line)


if __name__ == "__main__":
    main()
