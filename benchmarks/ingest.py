"""Ingestion throughput: the whole pipeline (scan, decode, embed, store, index) against the
encoder alone on the same decoded inputs with the same batch size, measured in one run.

    python benchmarks/ingest.py ../shared/data/flickr8k-1k/images
    python benchmarks/ingest.py ../shared/data/tuxpaint/audio --modality audio --audio-model clap:DIR

Ends with one line: pipeline_items_per_s=... encoder_items_per_s=... ratio=...
(audio: pipeline_audio_s_per_s=... encoder_audio_s_per_s=... ratio=...).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmsearch import Engine, Settings  # noqa: E402
from mmsearch.indexer.decode import load_image  # noqa: E402
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
    ap.add_argument("--repeat", type=int, default=1, help="Link each file this many times (more work).")
    args = ap.parse_args()

    files = [f for f in scan(args.folder.resolve()) if f.kind == args.modality]
    files = (files[: args.limit] if args.limit else files) * args.repeat
    with tempfile.TemporaryDirectory() as tmp:
        media = Path(tmp) / "media"
        media.mkdir()
        for i, f in enumerate(files):  # the same files, behind links, so the pipeline scans only these
            (media / f"{i:06d}-{Path(f.path).name}").symlink_to(f.path)
        settings = Settings(catalog=Path(tmp) / "catalog", model=args.model, audio_model=args.audio_model,
                            audio=args.modality == "audio", batch_size=args.batch_size, device=args.device,
                            model_config_dirs=[REPO / "tests" / "assets"])
        with Engine.open(settings) as engine:
            space = "clip" if args.modality == "image" else "clap"
            enc = engine.encoders.get(space)
            enc.encode("text", [enc.prepare("text", "warm-up")])

            # Encoder alone: decode and preprocess first (untimed), then time the batched forwards.
            prepared, seconds_of_audio = [], 0.0
            for f in files:
                if args.modality == "image":
                    prepared.append(enc.prepare("image", load_image(f.path, settings.max_image_pixels)))
                else:
                    from mmsearch.indexer.audio import iter_windows

                    for w in iter_windows(Path(f.path), enc.sample_rate, enc.window_seconds):  # type: ignore[attr-defined]
                        prepared.append(enc.prepare("audio", w.samples))
            if args.modality == "audio":
                import soundfile as sf

                seconds_of_audio = sum(sf.info(f.path).duration for f in files)
            enc.encode(args.modality, prepared[: args.batch_size])  # warm-up
            t0 = time.perf_counter()
            for i in range(0, len(prepared), args.batch_size):
                enc.encode(args.modality, prepared[i: i + args.batch_size])
            encoder_s = time.perf_counter() - t0

            t0 = time.perf_counter()
            report = engine.index([media])
            pipeline_s = time.perf_counter() - t0
    n = len(files)
    print(f"files={n} units={len(prepared)} batch={args.batch_size} model={enc.spec} device={enc.device} "
          f"decode_workers={settings.decode_workers} failed={report.failed}", file=sys.stderr)
    if args.modality == "image":
        pipe, alone = n / pipeline_s, n / encoder_s
        print(f"pipeline_items_per_s={pipe:.1f} encoder_items_per_s={alone:.1f} ratio={pipe / alone:.3f}")
    else:
        pipe, alone = seconds_of_audio / pipeline_s, seconds_of_audio / encoder_s
        print(f"pipeline_audio_s_per_s={pipe:.1f} encoder_audio_s_per_s={alone:.1f} ratio={pipe / alone:.3f}")


if __name__ == "__main__":
    main()
