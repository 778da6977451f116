"""Streaming audio decoding into model-sized windows.

Files are read block by block through libsndfile (WAV, FLAC, OGG, MP3; format detected from
content, not the extension), or through PyAV for what libsndfile does not know (AAC in MP4/M4A,
Matroska, a video's sound track: media/av_audio.py), downmixed, resampled with a streaming soxr
resampler and cut into overlapping windows (``cut_windows``, shared by both), so memory stays
bounded by one window plus one block whatever the length.
Every failure surfaces as :class:`AudioDecodeError` whose message is the reason recorded for the
file.
"""

from __future__ import annotations

import os
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import soundfile as sf
import soxr

from mmsearch.media.formats import EBML_MAGIC

BLOCK_FRAMES = 65_536  # source frames per read: ~1.4 s at 48 kHz, ~1.5 MB for 6 channels
RESAMPLE_QUALITY = "HQ"
# An MP3 header's length is an estimate (real files decode up to ~2% short); a file that
# decodes shorter than this lost data.
SHORTFALL_TOLERANCE = 0.05
SHORTFALL_MIN_SECONDS = 0.25
ID3_PEEK = 64 * 1024  # bytes read to see past an ID3v2 tag at a file's start (cover art makes tags larger)
# Chunk sizes that mean "unknown length" (streamed recordings), not truncation.
_UNKNOWN_SIZES = {0, 0xFFFFFFFF, 0x7FFFFFFF, 0xFFFFFFFFFFFFFFFF}
_CHUNK_MISMATCH = re.compile(r"^\s*(data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_OGG_CORRUPT = ("Corrupted bitstream", "reports a hole")
_OGG_TRUNCATED = "lacks an end-of-stream"


NOT_RECOGNISED = "not an audio file (libsndfile does not recognise the format)"


class AudioDecodeError(Exception):
    """A file that cannot be decoded as audio; the message is the human reason."""


class _NotRecognised(AudioDecodeError):
    """libsndfile does not know the format: PyAV may."""


@dataclass(frozen=True)
class AudioWindow:
    start: float  # seconds on the original timeline
    end: float
    samples: np.ndarray  # mono float32 at the target rate, len <= one window


def audio_duration(path: Path) -> float:
    """Duration from the header, without decoding; a cheap validity check before indexing."""
    if not _readable_by_libsndfile(path):
        from mmsearch.media.av_audio import av_audio_info

        return av_audio_info(path)[1] or 0.0
    with _open(path) as f:
        return f.frames / f.samplerate


def audio_rate(source: Path | BinaryIO) -> int:
    """The file's own sample rate, from its header: decoding at it needs no resampler."""
    if not _readable_by_libsndfile(source):
        from mmsearch.media.av_audio import av_audio_info

        return av_audio_info(source)[0]
    with _open(source) as f:
        return int(f.samplerate)


def iter_windows(
    path: Path | BinaryIO,
    sample_rate: int,
    window_seconds: float,
    hop_seconds: float | None = None,
    max_seconds: float | None = None,
) -> Iterator[AudioWindow]:
    """Yield overlapping mono windows at ``sample_rate``, lazily.

    Windows start every ``hop_seconds`` (default half a window); the last one may be shorter and a
    clip shorter than one window is a single window. ``max_seconds`` caps how much of the file is
    read. Damage found only while reading (e.g. an MP3 cut short) raises after the windows decoded
    so far were yielded: callers should treat the whole file as failed then.
    """
    if sample_rate <= 0 or window_seconds <= 0:
        raise ValueError("sample_rate and window_seconds must be positive")
    hop_seconds = window_seconds / 2 if hop_seconds is None else hop_seconds
    if hop_seconds <= 0:
        raise ValueError("hop_seconds must be positive")
    win = max(1, round(window_seconds * sample_rate))
    hop = max(1, round(hop_seconds * sample_rate))

    if _readable_by_libsndfile(path):
        with _open(path) as f:
            limit = None if max_seconds is None else max(0, round(max_seconds * f.samplerate))
            read = [0]  # source frames read

            def blocks() -> Iterator[np.ndarray]:
                while limit is None or read[0] < limit:
                    want = BLOCK_FRAMES if limit is None else min(BLOCK_FRAMES, limit - read[0])
                    block = _read_block(f, want)
                    if len(block) == 0:
                        return
                    read[0] += len(block)
                    yield block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]

            yield from cut_windows(blocks(), f.samplerate, sample_rate, win, hop)
            if limit is None or read[0] < limit:
                _check_shortfall(f, read[0])
        return
    from mmsearch.media.av_audio import iter_av_blocks

    with iter_av_blocks(path, max_seconds) as (in_rate, blocks):
        yield from cut_windows(blocks, in_rate, sample_rate, win, hop)


def cut_windows(blocks: Iterator[np.ndarray], in_rate: int, sample_rate: int, win: int, hop: int
                ) -> Iterator[AudioWindow]:
    """Mono blocks at ``in_rate`` -> windows of ``win`` samples every ``hop`` at ``sample_rate``
    (a streaming resampler between), the last one possibly shorter: what every decoder feeds."""
    resampler = _resampler(in_rate, sample_rate) if in_rate != sample_rate else None
    buf = np.zeros(0, dtype=np.float32)
    buf_start = 0  # absolute index (target rate) of buf[0]
    next_start = 0  # absolute index of the next window's first sample
    last_end = 0  # absolute end of the last window yielded
    decoded = 0  # source frames seen
    eof = False
    while not eof:
        mono = next(blocks, None)
        eof = mono is None
        if mono is None:
            mono = np.zeros(0, dtype=np.float32)
        decoded += len(mono)
        if resampler is not None:
            mono = resampler.resample_chunk(np.ascontiguousarray(mono, np.float32), last=eof)
        buf = np.concatenate([buf, mono]) if len(buf) else np.ascontiguousarray(mono, np.float32)
        while buf_start + len(buf) >= next_start + win:
            a = next_start - buf_start
            yield _window(buf[a:a + win], next_start, sample_rate)
            last_end = next_start + win
            next_start += hop
            cut = min(next_start - buf_start, len(buf))
            buf, buf_start = buf[cut:], buf_start + cut
    total = buf_start + len(buf)
    if decoded == 0 or total == 0:
        raise AudioDecodeError("no audio frames: nothing could be decoded")
    if next_start < total and (last_end == 0 or total > last_end):
        yield _window(buf[next_start - buf_start:], next_start, sample_rate)


def _readable_by_libsndfile(source: Path | BinaryIO) -> bool:
    """Whether libsndfile knows the format (WAV, FLAC, Ogg, MP3...); the others (AAC in MP4 or
    M4A, Matroska, ...) go through PyAV. Other failures are libsndfile's to word."""
    if _ffmpeg_only(source):
        return False
    try:
        with _open(source):
            return True
    except _NotRecognised:
        return False
    except AudioDecodeError:
        return True
    finally:
        if not isinstance(source, (str, os.PathLike)):
            source.seek(0)


def _resampler(in_rate: int, out_rate: int) -> soxr.ResampleStream:
    try:
        return soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality=RESAMPLE_QUALITY)
    except Exception as e:  # noqa: BLE001 - a header rate soxr rejects is a property of the file
        raise AudioDecodeError(f"cannot resample from {in_rate} Hz: {e}") from None


def _window(samples: np.ndarray, start: int, sample_rate: int) -> AudioWindow:
    # A copy, so a consumer holding a window does not pin the decode buffer.
    samples = np.array(samples, dtype=np.float32, copy=True)
    return AudioWindow(start / sample_rate, (start + len(samples)) / sample_rate, samples)


@contextmanager
def _open(source: Path | BinaryIO) -> Iterator[sf.SoundFile]:
    """Open a file or stream with libsndfile, turning every failure into a readable reason."""
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        try:
            st = p.stat()
        except FileNotFoundError:
            raise AudioDecodeError("file not found") from None
        except OSError as e:
            raise AudioDecodeError(f"cannot read the file: {e.strerror or e}") from None
        if p.is_dir():
            raise AudioDecodeError("is a directory, not an audio file")
        if st.st_size == 0:
            raise AudioDecodeError("empty file (0 bytes)")
        source = str(p)
    try:
        f = _soundfile(source)
    except sf.LibsndfileError as e:
        reason = _open_reason(e)
        raise (_NotRecognised if reason == NOT_RECOGNISED else AudioDecodeError)(reason) from None
    except Exception as e:  # noqa: BLE001 - bad streams raise TypeError/ValueError/OSError too
        raise AudioDecodeError(f"cannot open as audio: {type(e).__name__}: {e}") from None
    with f:
        if f.samplerate <= 0 or f.channels <= 0:
            raise AudioDecodeError(f"invalid header: {f.samplerate} Hz, {f.channels} channels")
        if f.frames <= 0:
            raise AudioDecodeError("no audio frames (empty audio stream)")
        problem = _header_problem(f)
        if problem:
            raise AudioDecodeError(problem)
        yield f


def _soundfile(source: str | BinaryIO) -> sf.SoundFile:
    """libsndfile sniffs the content, but an MP3 whose first frame is damaged (e.g. a zero-size
    ID3 tag written over it) is only found through the ``.mp3`` extension, which a misnamed file
    lacks: retry such content under an ``.mp3`` name."""
    try:
        return sf.SoundFile(source)
    except sf.LibsndfileError as e:
        if not isinstance(source, str) or "not recognised" not in str(e) or not _looks_like_mp3(source):
            raise
        with tempfile.TemporaryDirectory(prefix="mmsearch-audio-") as d:
            alias = os.path.join(d, "audio.mp3")
            try:
                os.symlink(os.path.abspath(source), alias)
            except OSError:
                raise e from None
            return sf.SoundFile(alias)  # the open descriptor outlives the alias


def _looks_like_mp3(path: str) -> bool:
    """An MPEG audio frame's sync and a layer (ADTS AAC has the same sync and layer 0), or an ID3
    tag followed by anything but what FFmpeg alone reads (a damaged first frame is worth a try)."""
    with open(path, "rb") as fh:
        head = fh.read(ID3_PEEK)
    if head[:3] == b"ID3":
        return not _ffmpeg_head(_past_id3(head))
    return len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06 != 0


def _past_id3(head: bytes) -> bytes:
    """What follows an ID3v2 tag at the start of ``head`` (MP3s and AAC rips carry one): b"" when
    the tag is longer than ``head``; ``head`` itself when there is none."""
    if head[:3] != b"ID3" or len(head) < 10:
        return head
    size = 10 + ((head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7 | head[9] & 0x7F)
    size += 10 if head[5] & 0x10 else 0  # a footer
    return head[size:size + 12]


def _ffmpeg_only(source: Path | BinaryIO) -> bool:
    """Content libsndfile does not read, whatever the file is named: MP4/M4A/MOV, Matroska/WebM,
    ADTS AAC. Named ``.mp3`` or ``.wav``, libsndfile would try the name's format on it (mpg123
    then writes errors onto the terminal) and fail."""
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, "rb") as fh:
                head = fh.read(ID3_PEEK)
        except OSError:
            return False
    else:
        head = source.read(ID3_PEEK)
        source.seek(0)
    return _ffmpeg_head(_past_id3(head))


def _ffmpeg_head(head: bytes) -> bool:
    """MP4/M4A/MOV (an ISO ``ftyp`` box), Matroska/WebM (EBML), ADTS AAC (sync, layer 0)."""
    return (head[4:8] == b"ftyp" or head[:4] == EBML_MAGIC
            or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0))


def _open_reason(e: sf.LibsndfileError) -> str:
    msg = str(e.error_string if hasattr(e, "error_string") else e).strip()
    if "Format not recognised" in msg:
        return NOT_RECOGNISED
    if "malformed" in msg:
        return "corrupt or truncated audio file (supported format but malformed)"
    if "not a regular file" in msg or "unknown error" in msg or "internal" in msg.lower():
        return f"corrupt or truncated audio file ({msg})"
    return f"cannot decode audio: {msg}"


def _header_problem(f: sf.SoundFile) -> str | None:
    """libsndfile reads past damage silently but logs it; the log is the only place to see it."""
    log = f.extra_info or ""
    for m in _CHUNK_MISMATCH.finditer(log):
        declared, present = int(m.group(2)), int(m.group(3))
        if declared > present and declared not in _UNKNOWN_SIZES:
            return (f"truncated audio file: the header declares {declared} bytes of audio data, "
                    f"the file holds {present}")
    if any(s in log for s in _OGG_CORRUPT):
        return "corrupt Ogg stream: pages are missing or damaged"
    if _OGG_TRUNCATED in log:
        return "truncated Ogg stream: it ends without an end-of-stream page"
    return None


def _read_block(f: sf.SoundFile, frames: int) -> np.ndarray:
    try:
        block = f.read(frames, dtype="float32", always_2d=True)
    except sf.LibsndfileError as e:
        raise AudioDecodeError(f"corrupt audio data after {f.tell() / f.samplerate:.2f} s: "
                               f"{str(e).strip()}") from None
    except Exception as e:  # noqa: BLE001 - decoder failures come in several types
        raise AudioDecodeError(f"cannot decode audio: {type(e).__name__}: {e}") from None
    if not np.isfinite(block).all():
        raise AudioDecodeError("corrupt audio data: non-finite (NaN/inf) samples")
    return block


def _check_shortfall(f: sf.SoundFile, decoded: int) -> None:
    expected = f.frames
    missing = expected - decoded
    if missing > max(SHORTFALL_TOLERANCE * expected, SHORTFALL_MIN_SECONDS * f.samplerate):
        raise AudioDecodeError(
            f"truncated or corrupt audio: the header promises {expected / f.samplerate:.2f} s, "
            f"only {decoded / f.samplerate:.2f} s could be decoded"
        )
