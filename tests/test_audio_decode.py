"""Streaming decode into windows: real files, odd formats, damaged files, very long files."""

from __future__ import annotations

import csv
import io
import math
import shutil
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from mmsearch.media.audio import AudioDecodeError, AudioWindow, audio_duration, iter_windows

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TUXPAINT = DATA / "tuxpaint"
ANIMALS = DATA / "animals-cc0"
SR = 48_000
WIN = 10.0


def _tuxpaint_files() -> list[Path]:
    with open(TUXPAINT / "manifest.csv", newline="") as f:
        return [TUXPAINT / r["audio"] for r in csv.DictReader(f)]


def _noise(seconds: float, rate: int, channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.2 * rng.standard_normal((round(seconds * rate), channels))).astype(np.float32)


def _check_windows(ws: list[AudioWindow], duration: float, sr: int, win: float, hop: float) -> None:
    """Start grid, lengths, timeline and coverage of a window sequence."""
    assert ws, "no windows"
    for k, w in enumerate(ws):
        assert w.samples.dtype == np.float32 and w.samples.ndim == 1
        assert w.start == pytest.approx(k * hop, abs=1 / sr)
        assert w.end == pytest.approx(w.start + len(w.samples) / sr, abs=1e-9)
        assert 0 < len(w.samples) <= round(win * sr)
        assert np.isfinite(w.samples).all()
    assert all(len(w.samples) == round(win * sr) for w in ws[:-1])
    assert ws[-1].end == pytest.approx(duration, abs=2 / sr)


# --- real media -------------------------------------------------------------------------------

def test_tuxpaint_ogg_all_decode() -> None:
    files = _tuxpaint_files()
    assert len(files) == 108
    loud = 0
    for p in files:
        ws = list(iter_windows(p, SR, WIN))
        info = sf.info(str(p))
        duration = audio_duration(p)
        _check_windows(ws, duration, SR, WIN, WIN / 2)
        assert len(ws) == (1 if duration <= WIN else math.ceil((duration - WIN) / (WIN / 2)) + 1), p
        total = round(ws[-1].start * SR) + len(ws[-1].samples)
        assert total == pytest.approx(info.frames * SR / info.samplerate, abs=2)
        loud += bool(np.abs(np.concatenate([w.samples for w in ws])).max() > 1e-3)
    assert loud >= 100  # a few stamps are (really) silent; the rest must not decode to zeros


def test_animals_mp3_all_decode() -> None:
    files = sorted(ANIMALS.glob("*.mp3"))
    assert len(files) == 10
    for p in files:
        ws = list(iter_windows(p, SR, WIN))
        _check_windows(ws, ws[-1].end, SR, WIN, WIN / 2)
        # An MP3 header's length is an estimate; the decoded length is within a few percent.
        assert ws[-1].end == pytest.approx(audio_duration(p), rel=0.03)
        assert np.abs(np.concatenate([w.samples for w in ws])).max() > 1e-3


def test_real_file_matches_one_shot_decode_and_resample() -> None:
    """Known item at the decode level: the streamed window equals decoding the whole file and
    resampling it in one go."""
    p = _tuxpaint_files()[5]
    data, rate = sf.read(str(p), dtype="float32", always_2d=True)
    ref = soxr.resample(data.mean(axis=1), rate, SR, quality="HQ")
    (w,) = list(iter_windows(p, SR, WIN))
    np.testing.assert_allclose(w.samples, ref, atol=1e-6)


# --- synthesized formats, rates and channel counts ----------------------------------------------

@pytest.mark.parametrize("fmt", ["WAV", "FLAC"])
@pytest.mark.parametrize("rate,channels", [(11025, 1), (22050, 2), (44100, 6), (7999, 2), (48000, 1)])
def test_odd_rates_and_channels(tmp_path: Path, fmt: str, rate: int, channels: int) -> None:
    x = _noise(12.3, rate, channels, seed=rate + channels)
    p = tmp_path / f"x.{fmt.lower()}"
    sf.write(str(p), x, rate, format=fmt, subtype="PCM_24")
    decoded = sf.read(str(p), dtype="float32", always_2d=True)[0]  # what the file actually holds
    ref = soxr.resample(decoded.mean(axis=1), rate, SR, quality="HQ") if rate != SR else decoded.mean(axis=1)
    ws = list(iter_windows(p, SR, WIN))
    _check_windows(ws, 12.3, SR, WIN, WIN / 2)
    assert [w.start for w in ws] == [0.0, 5.0]  # 0-10, then 5-12.3 (short) covers the rest
    assert len(ws[1].samples) == pytest.approx(7.3 * SR, abs=3)  # 12.3 s is not whole frames at every rate
    for w in ws:  # downmixed mean, resampled, at the right place on the timeline
        a = round(w.start * SR)
        np.testing.assert_allclose(w.samples, ref[a:a + len(w.samples)], atol=1e-5)
    assert audio_duration(p) == pytest.approx(12.3, abs=1 / rate)


def test_ogg_vorbis_written_here(tmp_path: Path) -> None:
    p = tmp_path / "x.ogg"
    sf.write(str(p), _noise(3.0, 22050, 2), 22050, format="OGG", subtype="VORBIS")
    ws = list(iter_windows(p, SR, WIN))
    assert len(ws) == 1 and ws[0].end == pytest.approx(3.0, abs=1e-3)


def test_lying_extensions_decode_by_content(tmp_path: Path) -> None:
    for src, fake in [(ANIMALS / "cat.mp3", "cat.wav"), (_tuxpaint_files()[0], "frog.flac"),
                      (ANIMALS / "dog.mp3", "dog.ogg"), (ANIMALS / "cow.mp3", "cow.txt"),
                      # its first frame header is overwritten: libsndfile needs the .mp3 name
                      (ANIMALS / "horse.mp3", "horse.wav")]:
        dst = tmp_path / fake
        shutil.copyfile(src, dst)
        want = list(iter_windows(src, SR, WIN))
        got = list(iter_windows(dst, SR, WIN))
        assert [(w.start, w.end) for w in got] == [(w.start, w.end) for w in want]
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a.samples, b.samples)


@pytest.mark.parametrize("p", [ANIMALS / "cat.mp3", _tuxpaint_files()[3]], ids=["mp3", "ogg"])
def test_file_object_input(p: Path) -> None:
    from_path = list(iter_windows(p, SR, WIN))
    from_stream = list(iter_windows(io.BytesIO(p.read_bytes()), SR, WIN))
    assert len(from_stream) == len(from_path)
    for a, b in zip(from_stream, from_path):
        np.testing.assert_array_equal(a.samples, b.samples)


# --- windowing --------------------------------------------------------------------------------

@pytest.mark.parametrize("seconds,starts,last_len", [
    (3.0, [0.0], 3.0),  # shorter than a window: one window
    (10.0, [0.0], 10.0),  # exactly one window: no redundant tail
    (25.0, [0.0, 5.0, 10.0, 15.0], 10.0),  # the last full window ends at the end: no tail
    (27.0, [0.0, 5.0, 10.0, 15.0, 20.0], 7.0),  # a shorter tail covers the rest
])
def test_window_grid(tmp_path: Path, seconds: float, starts: list[float], last_len: float) -> None:
    rate = 8000
    p = tmp_path / "x.wav"
    sf.write(str(p), _noise(seconds, rate, 1), rate)
    ws = list(iter_windows(p, rate, WIN))
    assert [w.start for w in ws] == starts
    assert ws[-1].end == seconds and len(ws[-1].samples) == round(last_len * rate)
    for a, b in zip(ws, ws[1:]):  # half-window overlap: shared samples are identical
        h = round(5.0 * rate)
        if len(b.samples) >= len(a.samples) - h:
            np.testing.assert_array_equal(a.samples[h:], b.samples[: len(a.samples) - h])


def test_custom_hop_and_max_seconds(tmp_path: Path) -> None:
    rate = 8000
    p = tmp_path / "x.flac"
    sf.write(str(p), _noise(30.0, rate, 2), rate)
    ws = list(iter_windows(p, SR, 4.0, hop_seconds=4.0))
    assert [w.start for w in ws] == [4.0 * k for k in range(8)]
    assert ws[-1].end == pytest.approx(30.0) and len(ws[-1].samples) == round(2.0 * SR)
    capped = list(iter_windows(p, SR, 4.0, hop_seconds=4.0, max_seconds=9.0))
    assert [(w.start, w.end) for w in capped] == [(0.0, 4.0), (4.0, 8.0), (8.0, 9.0)]
    np.testing.assert_array_equal(capped[1].samples, ws[1].samples[: len(capped[1].samples)])
    gappy = list(iter_windows(p, rate, 2.0, hop_seconds=5.0))  # hop > window skips audio
    assert [w.start for w in gappy] == [0.0, 5.0, 10.0, 15.0, 20.0, 25.0]
    assert all(len(w.samples) == 2 * rate for w in gappy)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        next(iter_windows(ANIMALS / "cat.mp3", SR, 0.0))
    with pytest.raises(ValueError):
        next(iter_windows(ANIMALS / "cat.mp3", SR, 10.0, hop_seconds=0.0))


def test_long_file_bounded_memory_and_lazy(tmp_path: Path) -> None:
    """30 minutes (7.2 M frames); decoding it whole would take 29 MB at its rate, 58 MB after
    resampling. The stream must stay around one window plus one block."""
    rate, seconds, target = 4000, 1800, 8000
    p = tmp_path / "long.wav"
    with sf.SoundFile(str(p), "w", rate, 1, "PCM_16") as f:
        for minute in range(seconds // 60):  # a ramp of DC levels: each minute has its own level
            f.write(np.full(60 * rate, (minute - 15) / 20, dtype=np.float32))
    assert audio_duration(p) == seconds

    t = time.monotonic()
    gen = iter_windows(p, target, WIN)
    first = next(gen)
    assert time.monotonic() - t < 1.0  # lazy: the first window does not wait for the whole file
    assert (first.start, first.end) == (0.0, 10.0)
    gen.close()

    tracemalloc.start()
    try:
        n, prev = 0, None
        for w in iter_windows(p, target, WIN):
            assert w.start == 5.0 * n and len(w.samples) == 10 * target
            if prev is not None:
                np.testing.assert_array_equal(prev.samples[5 * target:], w.samples[: 5 * target])
            if w.start in (600.0, 1205.0):  # away from level changes: the level of that minute
                assert np.median(w.samples) == pytest.approx((int(w.start // 60) - 15) / 20, abs=1e-3)
            prev, n = w, n + 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == (seconds - 10) // 5 + 1  # 359 windows, the last ending exactly at 30:00
    assert prev is not None and prev.end == seconds
    assert peak < 6 * 2**20, f"peak {peak / 2**20:.1f} MiB grows with the file"


# --- damaged and non-audio files -----------------------------------------------------------------

def _decode_error(p: Path | io.BytesIO) -> str:
    with pytest.raises(AudioDecodeError) as exc:
        for _ in iter_windows(p, SR, WIN):
            pass
    return str(exc.value)


def _good_files(tmp_path: Path) -> dict[str, Path]:
    x = _noise(3.0, 22050, 2)
    out = {}
    for fmt, sub in [("wav", "PCM_16"), ("flac", "PCM_16"), ("ogg", "VORBIS")]:
        out[fmt] = tmp_path / f"good.{fmt}"
        sf.write(str(out[fmt]), x, 22050, subtype=sub)
    out["mp3"] = ANIMALS / "cat.mp3"
    return out


def test_zero_byte_text_and_missing(tmp_path: Path) -> None:
    (tmp_path / "zero.wav").write_bytes(b"")
    assert _decode_error(tmp_path / "zero.wav") == "empty file (0 bytes)"
    (tmp_path / "notes.wav").write_text("this is a text file renamed to .wav\n" * 20)
    assert "not an audio file" in _decode_error(tmp_path / "notes.wav")
    (tmp_path / "random.mp3").write_bytes(np.random.default_rng(0).bytes(50_000))
    assert _decode_error(tmp_path / "random.mp3")
    assert _decode_error(tmp_path / "missing.ogg") == "file not found"
    assert "directory" in _decode_error(tmp_path)
    assert "not an audio file" in _decode_error(io.BytesIO(b"hello" * 100))
    for p in (tmp_path / "zero.wav", tmp_path / "notes.wav", tmp_path / "missing.ogg"):
        with pytest.raises(AudioDecodeError):
            audio_duration(p)


def test_empty_audio_stream(tmp_path: Path) -> None:
    p = tmp_path / "empty.wav"
    sf.write(str(p), np.zeros((0, 2), np.float32), 44100)
    assert "no audio frames" in _decode_error(p)
    with pytest.raises(AudioDecodeError, match="no audio frames"):
        audio_duration(p)


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg", "mp3"])
def test_truncated(tmp_path: Path, fmt: str) -> None:
    src = _good_files(tmp_path)[fmt]
    data = src.read_bytes()
    p = tmp_path / f"cut.{fmt}"
    p.write_bytes(data[: len(data) // 2])
    assert "truncated" in _decode_error(p) or "corrupt" in _decode_error(p)
    header_only = tmp_path / f"head.{fmt}"
    header_only.write_bytes(data[:60])
    assert _decode_error(header_only)


@pytest.mark.parametrize("fmt", ["flac", "ogg", "mp3"])
def test_corrupt(tmp_path: Path, fmt: str) -> None:
    data = bytearray(_good_files(tmp_path)[fmt].read_bytes())
    a = len(data) // 4
    data[a:a + 2000] = np.random.default_rng(1).bytes(2000)
    p = tmp_path / f"bad.{fmt}"
    p.write_bytes(bytes(data))
    assert "corrupt" in _decode_error(p)


def test_corrupt_wav_header(tmp_path: Path) -> None:
    data = bytearray(_good_files(tmp_path)["wav"].read_bytes())
    data[20:36] = b"\xff" * 16  # the fmt chunk: format tag, channels, rate, block align
    p = tmp_path / "badhdr.wav"
    p.write_bytes(bytes(data))
    assert _decode_error(p)


def test_non_finite_samples(tmp_path: Path) -> None:
    x = _noise(2.0, 8000, 1)
    x[5000] = np.nan
    p = tmp_path / "nan.wav"
    sf.write(str(p), x, 8000, subtype="FLOAT")
    assert "non-finite" in _decode_error(p)


def test_a_few_damaged_packets_in_an_m4a_are_concealed_and_many_fail_it(tmp_path: Path) -> None:
    """Decoded by FFmpeg (libsndfile cannot read AAC), a damaged packet is skipped up to a few per
    file, as in videos; past that the file fails with a reason. (An unknown name in the except
    clause turned the first damaged packet into an AttributeError, and an HTTP query into a 500.)"""
    from tests.video_media import RATE, sound, write_sound

    clean = write_sound(tmp_path / "clean.m4a", np.concatenate([sound(1), sound(2)]), "mp4", "aac").read_bytes()
    for n, damaged in ((60, tmp_path / "scratched.m4a"), (3000, tmp_path / "torn.m4a")):
        data = bytearray(clean)
        data[len(data) // 2: len(data) // 2 + n] = b"\xff" * n
        damaged.write_bytes(bytes(data))
    assert sum(len(w.samples) for w in iter_windows(tmp_path / "scratched.m4a", RATE, 10.0)) > 0
    assert "corrupt" in _decode_error(tmp_path / "torn.m4a")
