"""Sound through PyAV: the formats libsndfile cannot read (AAC in MP4/M4A, Opus and Vorbis in
Matroska or WebM, AC-3, ...) and the sound track of a video. Decoded frames become mono float32
blocks at the stream's own rate; ``audio.cut_windows`` turns them into model windows exactly as
it does for libsndfile's blocks, so a sound in a video is embedded like the same sound in a file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

import numpy as np

from mmsearch.media.audio import SHORTFALL_MIN_SECONDS, SHORTFALL_TOLERANCE, AudioDecodeError
from mmsearch.media.video import (MAX_DECODE_ERRORS, UnreadableMedia, VideoDecodeError, libav_reason, open_media,
                                  video_stream)

Source = str | os.PathLike[str] | BinaryIO


def _stream(container: Any) -> Any:
    if not container.streams.audio:
        raise AudioDecodeError("no audio stream in the file")
    return container.streams.audio[0]


def _duration(container: Any, stream: Any) -> float | None:
    """The stream's own length, else the file's when the sound is all it holds: beside a picture
    the file's length is the longer track's (Matroska gives no stream its own), and a sound track
    may well end first."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if video_stream(container) is not None:
        return None
    return container.duration / 1_000_000 if container.duration else None


def av_audio_info(source: Source) -> tuple[int, float | None]:
    """(sample rate, duration in seconds or None) of the first sound stream, from the headers."""
    try:
        with open_media(source) as c:
            s = _stream(c)
            if not s.rate:
                raise AudioDecodeError("invalid audio header: no sample rate")
            return int(s.rate), _duration(c, s)
    except UnreadableMedia as e:
        raise AudioDecodeError(f"not an audio file, or a damaged one: neither libsndfile nor FFmpeg can open it "
                               f"({str(e).split('(', 1)[-1].rstrip(')')})") from None
    except VideoDecodeError as e:
        raise AudioDecodeError(str(e)) from None
    finally:
        if not isinstance(source, (str, os.PathLike)):
            source.seek(0)


@contextmanager
def iter_av_blocks(source: Source, max_seconds: float | None = None) -> Iterator[tuple[int, Iterator[np.ndarray]]]:
    """(the stream's rate, its mono float32 blocks), decoded lazily; the blocks raise
    AudioDecodeError for damage, and a stream that stops well short of its declared length is
    truncated (as libsndfile's path words it)."""
    import av

    try:
        with open_media(source) as c:
            s = _stream(c)
            s.thread_type = "AUTO"
            rate = int(s.rate or 0)
            if rate <= 0:
                raise AudioDecodeError("invalid audio header: no sample rate")
            yield rate, _blocks(c, s, rate, max_seconds, av)
    except UnreadableMedia as e:
        raise AudioDecodeError(f"not an audio file, or a damaged one: neither libsndfile nor FFmpeg can open it "
                               f"({str(e).split('(', 1)[-1].rstrip(')')})") from None
    except VideoDecodeError as e:
        raise AudioDecodeError(str(e)) from None


def _blocks(c: Any, s: Any, rate: int, max_seconds: float | None, av: Any) -> Iterator[np.ndarray]:
    limit = None if max_seconds is None else max(0, round(max_seconds * rate))
    to_float = av.AudioResampler(format="fltp", rate=rate)  # keeps the layout: downmixed here, as a mean
    read, errors = 0, 0
    try:
        for packet in c.demux(s):
            try:
                frames = s.codec_context.decode(packet if packet.size else None)
            except (av.error.InvalidDataError, ValueError) as e:  # ArgumentError is a ValueError
                errors += 1
                if errors > MAX_DECODE_ERRORS:
                    raise AudioDecodeError(f"corrupt audio data after {read / rate:.2f} s: {errors} damaged packets "
                                          f"({libav_reason(e)})") from None
                continue
            for frame in frames:
                frame.pts = None  # the resampler follows its own clock; times come from the sample count
                for out in to_float.resample(frame):
                    block = out.to_ndarray()
                    mono = block.mean(axis=0, dtype=np.float32) if block.shape[0] > 1 else block[0]
                    if limit is not None:
                        mono = mono[:limit - read]
                    if not np.isfinite(mono).all():
                        raise AudioDecodeError("corrupt audio data: non-finite (NaN/inf) samples")
                    read += len(mono)
                    if len(mono):
                        yield np.ascontiguousarray(mono, np.float32)
                    if limit is not None and read >= limit:
                        return
    except av.error.FFmpegError as e:
        raise AudioDecodeError(f"corrupt or truncated audio after {read / rate:.2f} s ({libav_reason(e)})") from None
    declared = _duration(c, s)
    if declared and limit is None:
        missing = declared - read / rate
        if missing > max(SHORTFALL_TOLERANCE * declared, SHORTFALL_MIN_SECONDS):
            raise AudioDecodeError(f"truncated or corrupt audio: the header promises {declared:.2f} s, "
                                   f"only {read / rate:.2f} s could be decoded")
