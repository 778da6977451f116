"""Tiny videos and sound files the tests make themselves from real media (Flickr photos, Tux
Paint sounds), with PyAV: H.264 frames of 96x64 pixels at a few frames per second, AAC sound."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import soundfile as sf
import soxr
from PIL import Image

from tests.conftest import FLICKR, TUXPAINT

SIZE = (96, 64)  # width, height
MS = Fraction(1, 1000)
RATE = 48_000  # the tiny CLAP's rate: the track needs no resampling on the way in


def photos(n: int, offset: int = 0) -> list[np.ndarray]:
    """n Flickr photos as 96x64 RGB arrays (what the videos show, and the queries)."""
    paths = sorted((FLICKR / "images").glob("*.jpg"))[offset:offset + n]
    return [np.asarray(Image.open(p).convert("RGB").resize(SIZE, Image.Resampling.BILINEAR)) for p in paths]


def sound(i: int, rate: int = RATE) -> np.ndarray:
    """Tux Paint sound i, mono float32 at ``rate``."""
    path = sorted((TUXPAINT / "audio").glob("*.ogg"))[i]
    data, sr = sf.read(path, dtype="float32", always_2d=True)
    return soxr.resample(data.mean(axis=1), sr, rate).astype(np.float32)


def write_video(path: Path, picture_at: Callable[[float], np.ndarray], times: Sequence[float],
                track: np.ndarray | None = None, *, rotate: int = 0, gop: int = 4,
                options: dict[str, str] | None = None, codec: str = "libx264", audio_codec: str = "aac",
                codec_options: dict[str, str] | None = None, track_at: float = 0.0) -> Path:
    """Frames shown at ``times`` (seconds; irregular times make a variable frame rate), each the
    picture ``picture_at(t)``; an optional mono track at RATE (AAC, or ``audio_codec``). ``rotate``: the frames are
    stored turned clockwise and the display matrix says to turn them back (as phones do).
    ``codec_options`` override the encoder's (B-frames, scene cut detection); ``track_at``: the
    track starts this many seconds in."""
    with _scheduling_kept():  # SVT-AV1 turns its caller real-time
        c = av.open(str(path), "w", options=options or {})
        v = c.add_stream(codec, rate=4)
        h, w = picture_at(times[0]).shape[:2]  # the pictures' size (photos(): SIZE)
        w, h = (w, h) if rotate in (0, 180) else (h, w)
        v.width, v.height, v.pix_fmt = w, h, "yuvj420p" if codec == "mjpeg" else "yuv420p"
        v.options = {"g": str(gop), "bf": "0"} if codec == "libx264" else {"g": str(gop)} if codec != "mjpeg" else {}
        v.options = {**v.options, **(codec_options or {})}
        if rotate:
            v.set_display_rotation(rotate)
        v.codec_context.time_base = MS  # frame times in milliseconds: any frame rate, variable too
        a = None
        if track is not None:
            a = c.add_stream(audio_codec, rate=RATE)
            a.layout = "mono"
        for t in times:
            arr = picture_at(t)
            if rotate:
                arr = np.ascontiguousarray(np.rot90(arr, k=-rotate // 90))
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            frame.pts = round(t * 1000)
            frame.time_base = MS
            for p in v.encode(frame):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        if a is not None and track is not None:
            _encode_mono(c, a, track, RATE, round(track_at * RATE))
        c.close()
        return path


def write_sound(path: Path, samples: np.ndarray, fmt: str, codec: str, rate: int = RATE) -> Path:
    """A sound-only container (M4A, Opus, Matroska) that libsndfile cannot read."""
    c = av.open(str(path), "w", format=fmt)
    a = c.add_stream(codec, rate=rate)
    a.layout = "mono"
    _encode_mono(c, a, samples, rate)
    c.close()
    return path


def _encode_mono(container: Any, stream: Any, samples: np.ndarray, rate: int, first: int = 0) -> None:
    """Mono float samples through an audio stream into the container, in the codec's frame size,
    the first at sample ``first``."""
    size = stream.codec_context.frame_size or 1024
    for i in range(0, len(samples), size):
        f = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[None, i:i + size]), format="fltp", layout="mono")
        f.sample_rate, f.pts = rate, first + i
        for p in stream.encode(f):
            container.mux(p)
    for p in stream.encode():
        container.mux(p)


@contextmanager
def _scheduling_kept() -> Iterator[None]:
    """The calling thread's scheduling as it was: SVT-AV1 turns its caller SCHED_FIFO 99, and a
    later spin-wait in that thread (OpenVINO compiling a model) then starves the test run."""
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        yield
    finally:
        if os.sched_getscheduler(0) != policy:
            os.sched_setscheduler(0, policy, param)
