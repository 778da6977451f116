"""CPU runtime against eager PyTorch: images/s and texts/s for torch, ONNX fp32 and int8 on ONNX Runtime,
and OpenVINO on the same fp32 and int8 graphs, all on the same prepared inputs and batches, with each
one's smallest cosine to torch. Decoding and preprocessing are done beforehand: model forwards only.

    python benchmarks/runtime.py                       # ViT-B-32@random, 128 Flickr photos, 640 captions
    python benchmarks/runtime.py --tune                # also: ORT optimisation levels and thread counts

The first run exports the towers into --cache-dir (a minute or two for ViT-B-32); later runs load them.
Ends with one line: torch_img_s=... onnx_img_s=... int8_img_s=... speedup=... min_cos=... int8_min_cos=...
(onnx: fp32 on the backend the CPU runtime picked for each tower, ONNX Runtime or OpenVINO; speedup: its
images/s over torch; min_cos: it to torch; int8_min_cos: int8 (ONNX Runtime) to torch), medians
of --runs; within a run the runtimes take turns batch by batch, so load from other processes falls on all.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from mmsearch.encoders import cpu_runtime, load_encoder  # noqa: E402
from mmsearch.media.decode import load_image  # noqa: E402
from mmsearch.settings import Settings  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FLICKR = REPO.parent / "shared" / "data" / "flickr8k-1k"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, default=FLICKR, help="A folder with images/ and captions.csv.")
    ap.add_argument("--model", default="open_clip:ViT-B-32@random")
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--texts", type=int, default=640)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="Intra-op threads for every runtime (default: "
                    "what the CPU runtime picks: the cores torch uses, capped by CPU affinity).")
    ap.add_argument("--cache-dir", type=Path, default=None, help="Export cache (default: the setting's).")
    ap.add_argument("--no-openvino", action="store_true")
    ap.add_argument("--tune", action="store_true", help="Time ORT graph optimisation levels and thread counts.")
    args = ap.parse_args()

    import torch

    threads = args.threads or cpu_runtime.intra_op_threads()
    torch.set_num_threads(threads)
    base = Settings(model=args.model, device="cpu", batch_size=args.batch_size,
                    model_config_dirs=[REPO / "tests" / "assets"],
                    **({"cache_dir": args.cache_dir} if args.cache_dir else {}))
    t0 = time.perf_counter()
    ref = load_encoder(args.model, base.model_copy(update={"runtime": "torch"}))
    print(f"torch model loaded in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    fp32 = load_encoder(args.model, base.model_copy(update={"runtime": "onnx"}))
    int8 = load_encoder(args.model, base.model_copy(update={"runtime": "onnx", "int8": True}))
    assert isinstance(fp32, cpu_runtime.OnnxEncoder) and isinstance(int8, cpu_runtime.OnnxEncoder)

    photos = sorted((args.folder / "images").glob("*.jpg"))[: args.images]
    with open(args.folder / "captions.csv", newline="") as fh:
        captions = [row["caption"] for row in csv.DictReader(fh)][: args.texts]
    images = [ref.prepare("image", load_image(p, base.max_image_pixels)) for p in photos]
    texts = [ref.prepare("text", c) for c in captions]
    inputs = {"image": images, "text": texts}

    for enc in (fp32, int8):  # export (first run only), quantise, load the sessions
        for modality in ("image", "text"):
            t0 = time.perf_counter()
            enc.runner(modality)
            print(f"{'int8' if enc is int8 else 'fp32'} {modality} tower ready in {time.perf_counter() - t0:.1f} s",
                  file=sys.stderr)

    runners: dict[str, dict[str, Callable[[list[Any]], np.ndarray]]] = {
        "torch": {m: (lambda items, m=m: ref.encode(m, items)) for m in inputs},
        "onnxruntime": {m: _direct(fp32, m, cpu_runtime.OrtRunner(_path(fp32, m), threads)) for m in inputs},
        "int8": {m: (lambda items, m=m: int8.encode(m, items)) for m in inputs},
    }
    if not args.no_openvino and cpu_runtime.openvino_available():
        runners["openvino"] = {m: _direct(fp32, m, cpu_runtime.OpenVinoRunner(_path(fp32, m), threads))
                               for m in inputs}
        try:
            runners["openvino-int8"] = {m: _direct(fp32, m, cpu_runtime.OpenVinoRunner(
                _path(fp32, m).with_name("model.int8.onnx"), threads)) for m in inputs}
        except Exception as e:  # noqa: BLE001 - a comparison only
            print(f"OpenVINO cannot run the int8 graphs: {type(e).__name__}: {e}", file=sys.stderr)
    backend = {m: b if (b := _meta(fp32, m).get("backend", "onnxruntime")) in runners else "onnxruntime"
               for m in inputs}  # what the CPU runtime runs
    print(f"the CPU runtime runs fp32 towers on: {backend}", file=sys.stderr)

    vectors = {name: {m: run(inputs[m][: args.batch_size]) for m, run in fns.items()}  # warm-up
               for name, fns in runners.items()}
    # Interleaved batch by batch: on a shared machine, load from other processes comes and goes in
    # seconds, and each runtime should see the same share of it.
    seconds: dict[str, dict[str, list[float]]] = {name: {m: [] for m in inputs} for name in runners}
    for r in range(args.runs):
        for modality, items in inputs.items():
            spent = dict.fromkeys(runners, 0.0)
            out: dict[str, list[np.ndarray]] = {name: [] for name in runners}
            for b, i in enumerate(range(0, len(items), args.batch_size)):
                k = (r + b) % len(runners)
                for name in list(runners)[k:] + list(runners)[:k]:
                    t0 = time.perf_counter()
                    out[name].append(runners[name][modality](items[i:i + args.batch_size]))
                    spent[name] += time.perf_counter() - t0
            for name in runners:
                seconds[name][modality].append(spent[name])
                vectors[name][modality] = np.concatenate(out[name])

    rate = {name: {m: len(inputs[m]) / statistics.median(s) for m, s in per.items()} for name, per in seconds.items()}
    cos = {name: min(cpu_runtime.min_cosine(vectors[name][m], vectors["torch"][m]) for m in inputs)
           for name in runners}
    print(f"model={ref.spec} threads={threads} batch={args.batch_size} images={len(images)} texts={len(texts)} "
          f"runs={args.runs}")
    for name in runners:
        print(f"  {name:<13} images/s={rate[name]['image']:8.1f}  texts/s={rate[name]['text']:8.1f}  "
              f"min_cos_to_torch={cos[name]:.6f}  (image s: {_fmt(seconds[name]['image'])}; "
              f"text s: {_fmt(seconds[name]['text'])})")
    for enc, label in ((int8, "int8"),):
        for modality in inputs:
            meta = _meta(enc, modality)
            print(f"  {label} {modality} tower: min cosine to fp32 {meta.get('int8_min_cos', float('nan')):.4f} "
                  f"(at quantisation); fp32 export min cosine to torch {meta.get('min_cos', float('nan')):.6f}")
    if args.tune:
        _tune(fp32, images, args.batch_size, threads)
    t = rate["torch"]
    onnx = {m: rate[backend[m]][m] for m in inputs}
    onnx_cos = min(cpu_runtime.min_cosine(vectors[backend[m]][m], vectors["torch"][m]) for m in inputs)
    others = " ".join(f"{name.replace('-', '_')}_img_s={rate[name]['image']:.1f} "
                      f"{name.replace('-', '_')}_txt_s={rate[name]['text']:.1f}"
                      for name in runners if name not in ("torch", "int8"))
    print(f"{others} int8_speedup={rate['int8']['image'] / t['image']:.2f}")
    print(f"torch_txt_s={t['text']:.1f} onnx_txt_s={onnx['text']:.1f} int8_txt_s={rate['int8']['text']:.1f}")
    print(f"torch_img_s={t['image']:.1f} onnx_img_s={onnx['image']:.1f} int8_img_s={rate['int8']['image']:.1f} "
          f"speedup={onnx['image'] / t['image']:.2f} min_cos={onnx_cos:.6f} int8_min_cos={cos['int8']:.6f}")


def _path(enc: cpu_runtime.OnnxEncoder, modality: str) -> Path:
    return enc.cache.folder(modality) / "model.onnx"  # type: ignore[arg-type]


def _direct(enc: cpu_runtime.OnnxEncoder, modality: str, run: cpu_runtime.Runner) -> Callable[[list[Any]], np.ndarray]:
    """The exported graph and feeds of ``enc``, on a given backend."""
    tower = enc._towers[modality]  # type: ignore[index]
    return lambda items: cpu_runtime.l2_normalise(run(tower.input_names, tower.feeds(items)))


def _meta(enc: cpu_runtime.OnnxEncoder, modality: str) -> dict[str, Any]:
    import json

    return json.loads((enc.cache.folder(modality) / "meta.json").read_text())


def _tune(enc: cpu_runtime.OnnxEncoder, images: list[Any], batch: int, threads: int) -> None:
    """Images/s of the fp32 image tower per ORT graph optimisation level, thread count and spinning,
    the configurations taking turns batch by batch."""
    tower = enc._towers["image"]  # type: ignore[index]
    path = enc.cache.folder("image") / "model.onnx"
    feeds = [tower.feeds(images[i:i + batch]) for i in range(0, len(images), batch)]
    configs = [(level, n, "1") for level in ("basic", "extended", "all") for n in sorted({1, threads})]
    configs.append(("all", threads, "0"))
    runs = {c: cpu_runtime.OrtRunner(path, c[1], c[0], {"session.intra_op.allow_spinning": c[2]}) for c in configs}
    spent = dict.fromkeys(configs, 0.0)
    for c, run in runs.items():
        run(tower.input_names, feeds[0])
    for b, f in enumerate(feeds * 2):
        k = b % len(configs)
        for c in configs[k:] + configs[:k]:
            t0 = time.perf_counter()
            runs[c](tower.input_names, f)
            spent[c] += time.perf_counter() - t0
    for (level, n, spin), s in spent.items():
        print(f"  tune: ort level={level:<8} threads={n} spinning={spin}  images/s={2 * len(images) / s:.1f}")


def _fmt(xs: list[float]) -> str:
    return ",".join(f"{x:.2f}" for x in xs)


if __name__ == "__main__":
    main()
