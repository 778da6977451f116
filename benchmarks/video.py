"""Video ingestion throughput: the whole pipeline (probe, sample and decode frames, embed, store,
index) against the encoder alone on the same sampled frames, and the decoding alone, measured
side by side in one run on a 720p H.264 video made here from the Flickr photos (each shown a few
seconds, panning, so frames are not identical and every due sample is kept).

    python benchmarks/video.py                        # 180 s at 30 fps, a key frame every 2 s
    python benchmarks/video.py --gop 300              # a key frame every 10 s (screen recordings)
    python benchmarks/video.py --size 1920x1080 --runtime torch --decode-workers 8   # a GPU machine

Ends with one line: video_s_per_s=... frames_per_s=... encoder_frames_per_s=... ratio=...
decode_ms_per_frame=... decode_cpu_ms_per_frame=... decode_share=... decode_cpu_share=...
ratio_bound=...; medians of --runs. ``ratio``: the pipeline's frames per
second over the encoder's alone on the same frames (prepared beforehand); ``decode_share``: the
decoding alone (demux, sample, scale, compare) over the pipeline's wall time; ``decode_cpu_share``:
the decoding's CPU time over its and the encoder's; ``ratio_bound``: the best ratio this machine's
cores allow, from the same run (the pipeline can beat neither job alone nor both jobs' CPU time
spread over every core).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmsearch import Engine, Settings  # noqa: E402
from mmsearch.cpus import available_cpus, decode_workers  # noqa: E402
from mmsearch.indexer.pipeline import frame_side  # noqa: E402
from mmsearch.media.video import VideoInfo, iter_frames  # noqa: E402
from mmsearch.media.video_parts import iter_parts  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO.parent / "shared" / "data" / "flickr8k-1k" / "images"


def make_video(path: Path, seconds: int, fps: int, gop: int, width: int = 1280, height: int = 720,
               source: Path = PHOTOS) -> None:
    """Each photo is shown for 3 s, panning slowly across it (a camera move)."""
    import av
    from PIL import Image

    photos = sorted(source.glob("*.jpg"))
    c = av.open(str(path), "w")
    s = c.add_stream("libx264", rate=fps)
    s.width, s.height, s.pix_fmt = width, height, "yuv420p"
    s.options = {"g": str(gop), "preset": "veryfast", "crf": "23"}
    shown = None
    for i in range(seconds * fps):
        k = i // (3 * fps)
        if shown is None or shown[0] != k:
            big = np.asarray(Image.open(photos[k % len(photos)]).convert("RGB")
                             .resize((width + 3 * fps * 2, height), Image.Resampling.BILINEAR))
            shown = (k, big)
        x = (i % (3 * fps)) * 2
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(shown[1][:, x:x + width]), format="rgb24")
        frame.pts = i
        for p in s.encode(frame):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=180)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--gop", type=int, default=60, help="Frames between key frames.")
    ap.add_argument("--interval", type=float, default=2.0, help="Settings.video_interval: a frame per this many s.")
    ap.add_argument("--model", default="open_clip:ViT-B-32@random")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--runtime", default="auto", choices=["auto", "torch", "onnx"])
    ap.add_argument("--runs", type=int, default=3, help="Alternate the measurements; report medians.")
    ap.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT of the video made (1920x1080: full HD).")
    ap.add_argument("--decode-workers", type=int, default=None,
                    help="Settings.decode_workers (default: the pipeline's choice); a lone video takes them all.")
    ap.add_argument("--photos", type=Path, default=PHOTOS, help="Folder of JPEGs the video is made of.")
    ap.add_argument("--video", type=Path, default=None,
                    help="Make the video at this path once and reuse it on later runs with the same options.")
    args = ap.parse_args()
    cores = available_cpus()

    decode_s, decode_cpu_s, encoder_s, encoder_cpu_s, pipeline_s = [], [], [], [], []
    timelines: list[str] = []  # where each pipeline run spent its time, as its progress reports say
    with tempfile.TemporaryDirectory() as tmp:
        media = Path(tmp) / "media"
        media.mkdir()
        video = media / "clip.mp4"
        t0 = time.perf_counter()
        width, height = (int(x) for x in args.size.split("x"))
        if args.video is None:
            make_video(video, args.seconds, args.fps, args.gop, width, height, args.photos)
        else:
            if not args.video.exists():
                args.video.parent.mkdir(parents=True, exist_ok=True)
                make_video(args.video, args.seconds, args.fps, args.gop, width, height, args.photos)
            try:  # a link would lead outside the indexed folder, which ingest does not follow
                os.link(args.video, video)
            except OSError:
                shutil.copyfile(args.video, video)
        made_s = time.perf_counter() - t0
        size_mb = video.stat().st_size / 2**20
        base = Settings(model=args.model, audio=False, batch_size=args.batch_size, runtime=args.runtime,
                        video_interval=args.interval, decode_workers=args.decode_workers,
                        model_config_dirs=[REPO / "tests" / "assets"])
        with Engine.open(base.model_copy(update={"catalog": Path(tmp) / "warm"})) as engine:
            enc = engine.encoders.get("clip")
            side = frame_side(base, engine.encoders)  # as the pipeline decodes them
            # the decode threads the pipeline gives one video: its own, and the idle ones (parts)
            workers = decode_workers(base, enc.device.startswith("cuda"))

            def decoded():  # type: ignore[no-untyped-def]
                if workers > 1:
                    return sorted(iter_parts(video, args.interval, side, VideoInfo(), workers), key=lambda f: f.start)
                return iter_frames(video, args.interval, side)

            frames = [f.image for f in decoded()]
            prepared = [enc.prepare("image", im) for im in frames]
            enc.encode("image", prepared[: args.batch_size])  # warm-up
            preloaded = {"clip": enc}
        for run in range(args.runs):
            t0, c0 = time.perf_counter(), time.process_time()  # decoding alone: the decode worker's job
            n = sum(1 for _ in decoded())
            decode_s.append(time.perf_counter() - t0)
            decode_cpu_s.append(time.process_time() - c0)  # its CPU time, decoder threads included
            t0, c0 = time.perf_counter(), time.process_time()  # the encoder alone, on the same frames prepared
            for i in range(0, len(prepared), args.batch_size):
                enc.encode("image", prepared[i: i + args.batch_size])
            encoder_s.append(time.perf_counter() - t0)
            encoder_cpu_s.append(time.process_time() - c0)
            with Engine.open(base.model_copy(update={"catalog": Path(tmp) / f"run{run}"}),
                             encoders=preloaded) as engine:
                heard: list[tuple[float, str, int]] = []
                t0 = time.perf_counter()
                report = engine.index([media], status=lambda st: heard.append(
                    (time.perf_counter() - t0, st.phase, st.items_done)))
                pipeline_s.append(time.perf_counter() - t0)
                timelines.append(_timeline(heard, pipeline_s[-1]))
                kept = engine.vectors(engine.lookup(str(video)))["clip.video"]
                stored = len(kept.ids)
        agreement = _agreement(enc, base, prepared[: args.batch_size], kept)
    # parts start with a sample at their key frame: where threads cut a video depends on when they
    # join, so a run may keep a sample or two more than another where a cut misses a sample
    assert report.failed == 0 and abs(stored - n) <= max(2, n // 50) and n == len(prepared), \
        (report.failures, stored, n)
    print(f"video={args.seconds}s {args.fps}fps gop={args.gop} {args.size} made_in={made_s:.1f}s frames={n} "
          f"stored={stored} "
          f"decode_threads={workers} device={enc.device} "
          f"interval={args.interval} batch={args.batch_size} model={enc.spec} runtime={getattr(enc, 'runtime', 'torch')} "
          f"decode_s={_fmt(decode_s)} decode_cpu_s={_fmt(decode_cpu_s)} encoder_s={_fmt(encoder_s)} "
          f"encoder_cpu_s={_fmt(encoder_cpu_s)} cores={cores} "
          f"pipeline_s={_fmt(pipeline_s)} mb={size_mb:.1f} load={os.getloadavg()[0]:.1f}{agreement} "
          f"timeline={timelines[len(timelines) // 2]}",
          file=sys.stderr)
    pipe, alone, dec = (statistics.median(x) for x in (pipeline_s, encoder_s, decode_s))
    dec_cpu, enc_cpu = statistics.median(decode_cpu_s), statistics.median(encoder_cpu_s)
    # the pipeline cannot beat the encoder alone, the decoding alone (one thread), nor both jobs'
    # CPU time spread over every core: the best ratio this machine allows
    bound = alone / max(alone, dec, (enc_cpu + dec_cpu) / cores)
    print(f"video_s_per_s={args.seconds / pipe:.2f} frames_per_s={n / pipe:.2f} encoder_frames_per_s={n / alone:.2f} "
          f"ratio={alone / pipe:.3f} decode_ms_per_frame={1000 * dec / n:.1f} "
          f"decode_cpu_ms_per_frame={1000 * dec_cpu / n:.1f} decode_share={dec / pipe:.3f} "
          f"decode_cpu_share={dec_cpu / (dec_cpu + enc_cpu):.3f} ratio_bound={bound:.3f}")


def _agreement(enc, base: Settings, prepared: list, kept) -> str:  # type: ignore[no-untyped-def]
    """On a GPU: the lowest cosine between the CPU encoder's vectors of the first frames and the
    closest vectors the pipeline stored (float16 autocast against float32), so a fast run is
    also a right one."""
    if enc.device == "cpu":
        return ""
    from mmsearch.encoders import load_encoder

    cpu = load_encoder(enc.spec, base.model_copy(update={"device": "cpu", "runtime": "torch"}))
    reference = cpu.encode("image", prepared)
    return f" gpu_cpu_min_cosine={float((reference @ kept.vectors.T).max(axis=1).min()):.5f}"


def _timeline(heard: list[tuple[float, str, int]], total: float) -> str:
    """When each phase began, the first and the last vectors were stored, and the run ended, in s
    (progress reports come at most every ``IngestMeter.every``, so times are late by up to that)."""
    marks, phase = [], None
    for t, ph, _ in heard:
        if ph != phase:
            marks.append(f"{ph}@{t:.2f}")
            phase = ph
    stored = [t for t, _, n in heard if n > 0]
    first = stored[0] if stored else float("nan")
    last = next((t for t, _, n in heard if stored and n == heard[-1][2]), first)  # the final count
    return ",".join([*marks, f"first_vectors@{first:.2f}", f"all_vectors@{last:.2f}", f"end@{total:.2f}"])


def _fmt(xs: list[float]) -> str:
    return ",".join(f"{x:.2f}" for x in xs)


if __name__ == "__main__":
    main()
