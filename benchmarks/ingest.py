"""Ingestion throughput: the whole pipeline (scan, decode, embed, store, index) against the
encoder alone on the same decoded inputs with the same batch size, measured in one run.

    python benchmarks/ingest.py ../shared/data/flickr8k-1k/images
    python benchmarks/ingest.py ../shared/data/tuxpaint/audio --modality audio --audio-model clap:DIR
    # on a GPU: JPEG files decoded in batches on the device (nvJPEG), against the encoder alone
    python benchmarks/ingest.py ../shared/data/flickr8k-1k/images --device cuda --image-decode torch \
        --batch-size 256 --repeat 4

Ends with one line: pipeline_items_per_s=... encoder_items_per_s=... ratio=...
(audio: pipeline_audio_s_per_s=... encoder_audio_s_per_s=... ratio=...), medians of --runs.
The encoder alone gets its inputs decoded and resized beforehand (uint8 tensors in host memory):
only the copies to the device and the forwards are timed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmsearch import Engine, Settings  # noqa: E402
from mmsearch.media.decode import load_image  # noqa: E402
from mmsearch.indexer.scan import scan  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--modality", choices=["image", "audio"], default="image")
    ap.add_argument("--model", default="open_clip:ViT-B-32@random")
    ap.add_argument("--audio-model", default=None)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--limit", type=int, default=0, help="Use only the first N files.")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--runtime", default="auto", choices=["auto", "torch", "onnx"])
    ap.add_argument("--image-decode", choices=["auto", "pillow", "torch"], default="auto",
                    help="Pillow in worker threads, or torchvision decode_jpeg in batches on the device.")
    ap.add_argument("--repeat", type=int, default=1, help="Link each file this many times (more work).")
    ap.add_argument("--runs", type=int, default=3, help="Alternate the two measurements; report medians.")
    args = ap.parse_args()

    files = [f for f in scan(args.folder.resolve()) if f.kind == args.modality]
    files = (files[: args.limit] if args.limit else files) * args.repeat
    encoder_s, pipeline_s = [], []
    with tempfile.TemporaryDirectory() as tmp:
        media = Path(tmp) / "media"
        media.mkdir()
        for i, f in enumerate(files):  # the same files, behind links, so the pipeline scans only these
            (media / f"{i:06d}-{Path(f.path).name}").symlink_to(f.path)
        base = Settings(model=args.model, audio_model=args.audio_model, audio=args.modality == "audio",
                        batch_size=args.batch_size, device=args.device, runtime=args.runtime, follow_links=True,
                        image_decode=args.image_decode,
                        model_config_dirs=[REPO / "tests" / "assets"])
        space = "clip" if args.modality == "image" else "clap"
        with Engine.open(base.model_copy(update={"catalog": Path(tmp) / "warm"})) as engine:
            enc = engine.encoders.get(space)
            enc.encode("text", [enc.prepare("text", "warm-up")])
            prepared, seconds_of_audio = _prepare_all(enc, files, args.modality, base.max_image_pixels)
            enc.encode(args.modality, prepared[: args.batch_size])  # warm-up
            preloaded = {s: engine.encoders.get(s) for s in ("clip", space)}
        for run in range(args.runs):
            # Encoder alone: inputs decoded and preprocessed beforehand; only the batched forwards.
            t0 = time.perf_counter()
            for i in range(0, len(prepared), args.batch_size):
                enc.encode(args.modality, prepared[i: i + args.batch_size])
            encoder_s.append(time.perf_counter() - t0)
            # The whole pipeline, on a fresh catalog, with the same (already loaded) encoders.
            with Engine.open(base.model_copy(update={"catalog": Path(tmp) / f"run{run}"}),
                             encoders=preloaded) as engine:
                t0 = time.perf_counter()
                report = engine.index([media])
                pipeline_s.append(time.perf_counter() - t0)
    n = len(files)
    print(f"files={n} units={len(prepared)} batch={args.batch_size} model={enc.spec} device={enc.device} "
          f"runtime={getattr(enc, 'runtime', 'torch')} "
          f"failed={report.failed} runs={args.runs} image_decode={args.image_decode} "
          f"encoder_s={_fmt(encoder_s)} pipeline_s={_fmt(pipeline_s)}",
          file=sys.stderr)
    work = n if args.modality == "image" else seconds_of_audio
    pipe, alone = work / statistics.median(pipeline_s), work / statistics.median(encoder_s)
    unit = "items" if args.modality == "image" else "audio_s"
    print(f"pipeline_{unit}_per_s={pipe:.1f} encoder_{unit}_per_s={alone:.1f} ratio={pipe / alone:.3f}")


def _prepare_all(enc, files: list, modality: str, max_pixels: int) -> tuple[list, float]:  # type: ignore[no-untyped-def]
    if modality == "image":
        return [enc.prepare("image", load_image(f.path, max_pixels)) for f in files], 0.0
    import soundfile as sf

    from mmsearch.media.audio import iter_windows

    prepared = [enc.prepare("audio", w.samples) for f in files
                for w in iter_windows(Path(f.path), enc.sample_rate, enc.window_seconds)]
    return prepared, sum(sf.info(f.path).duration for f in files)


def _fmt(xs: list[float]) -> str:
    return ",".join(f"{x:.2f}" for x in xs)


if __name__ == "__main__":
    main()
