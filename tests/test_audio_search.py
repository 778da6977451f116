"""Audio as a first-class modality: known items, time spans, incremental runs, bad files, mixed media."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mmsearch import Engine, Query
from tests.conftest import ANIMALS, TUXPAINT


@pytest.fixture
def audio_settings(make_settings, tiny_clap_dir: Path):  # type: ignore[no-untyped-def]
    return make_settings(audio=True, audio_model=f"clap:{tiny_clap_dir}")


@pytest.fixture
def sound_dir(tmp_path: Path) -> Path:
    root = tmp_path / "sounds"
    root.mkdir()
    for src in sorted((TUXPAINT / "audio").glob("*.ogg"))[:20]:
        shutil.copy(src, root / src.name)
    for src in sorted(ANIMALS.glob("*.mp3"))[:4]:
        shutil.copy(src, root / src.name)
    return root


def _long_file(tmp_path: Path, sources: list[Path], sr: int = 48_000) -> tuple[Path, np.ndarray, list[float]]:
    """Concatenate real sounds into one long WAV; returns it, its samples and each part's start."""
    import soxr

    parts, starts, t = [], [], 0.0
    for src in sources:
        data, rate = sf.read(src, dtype="float32", always_2d=True)
        mono = soxr.resample(data.mean(axis=1), rate, sr)
        starts.append(t)
        parts.append(mono)
        t += len(mono) / sr
    samples = np.concatenate(parts)
    path = tmp_path / "long.wav"
    sf.write(path, samples, sr)
    return path, samples, starts


def test_a_sound_finds_itself_first(audio_settings, sound_dir: Path) -> None:  # type: ignore[no-untyped-def]
    with Engine.open(audio_settings) as engine:
        report = engine.index([sound_dir])
        assert (report.added, report.failed) == (24, 0)
        for src in sorted(sound_dir.iterdir())[::4]:
            hits = engine.search(Query(audio=src.read_bytes(), k=3)).results  # no --to: audio -> audio
            assert hits[0].path == str(src) and hits[0].modality == "audio"
            assert hits[0].start == 0.0 and hits[0].end and hits[0].end > 0


def test_a_clip_cut_from_a_long_file_finds_the_file_and_the_span(audio_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sources = sorted((TUXPAINT / "audio").glob("*.ogg"))[:30]
    folder = tmp_path / "long"
    folder.mkdir()
    long_path, samples, _ = _long_file(folder, sources)
    duration = len(samples) / 48_000
    assert duration > 60
    with Engine.open(audio_settings) as engine:
        engine.index([folder])
        item = engine.search(Query(audio=long_path.read_bytes(), k=1)).results[0]
        assert item.duration == pytest.approx(duration, abs=0.1)
        for start in (20.0, 45.0):
            cut = tmp_path / f"cut{int(start)}.wav"
            sf.write(cut, samples[int(start * 48_000): int((start + 10) * 48_000)], 48_000)
            hit = engine.search(Query(audio=cut.read_bytes(), k=1)).results[0]
            assert hit.path == str(long_path)
            assert hit.start is not None and hit.end is not None
            assert hit.start <= start + 5 and hit.end >= start + 5  # the window holds the clip's middle
            assert hit.start == pytest.approx(start, abs=5.0)


def test_incremental_add_and_delete_audio(audio_settings, sound_dir: Path) -> None:  # type: ignore[no-untyped-def]
    with Engine.open(audio_settings) as engine:
        engine.index([sound_dir])
        gone = sorted(sound_dir.glob("*.ogg"))[0]
        gone_bytes = gone.read_bytes()
        gone.unlink()
        new = sorted((TUXPAINT / "audio").glob("*.ogg"))[-1]
        shutil.copy(new, sound_dir / new.name)
        r = engine.index([sound_dir])
        assert (r.added, r.removed, r.unchanged) == (1, 1, 23)
        assert engine.search(Query(audio=new.read_bytes(), k=1)).results[0].path == str(sound_dir / new.name)
        assert all(h.path != str(gone) for h in engine.search(Query(audio=gone_bytes, k=50)).results)


def test_bad_and_odd_audio_files(audio_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "odd"
    folder.mkdir()
    real = sorted((TUXPAINT / "audio").glob("*.ogg"))[3].read_bytes()
    (folder / "truncated.ogg").write_bytes(real[: len(real) // 3])
    (folder / "zero.wav").write_bytes(b"")
    (folder / "text.mp3").write_bytes(b"this is not audio at all " * 50)
    (folder / "really-ogg.wav").write_bytes(real)  # the extension lies, the content is fine
    rng = np.random.default_rng(0)
    sf.write(folder / "odd-rate.wav", rng.normal(0, 0.1, (7999 * 3, 1)).astype(np.float32), 7999)
    sf.write(folder / "six-channels.flac", rng.normal(0, 0.1, (22050 * 2, 6)).astype(np.float32), 22050)
    sf.write(folder / "empty.wav", np.zeros((0, 1), dtype=np.float32), 16000)
    with Engine.open(audio_settings) as engine:
        report = engine.index([folder])
        failed = {Path(p).name for p, _ in report.failures}
        assert failed == {"truncated.ogg", "zero.wav", "text.mp3", "empty.wav"}
        assert report.added == 3
        hit = engine.search(Query(audio=real, k=1)).results[0]
        assert hit.path == str(folder / "really-ogg.wav")


def test_text_to_audio_audio_to_text_and_the_mixed_list(audio_settings) -> None:  # type: ignore[no-untyped-def]
    with Engine.open(audio_settings) as engine:
        report = engine.index([TUXPAINT])
        assert report.failed == 0
        counts = engine.stats()["items"]
        assert counts["audio"] == 108 and counts["image"] == 103 and counts["text"] >= 100

        hits = engine.search(Query(text="a dog barking", to="audio", k=5)).results
        assert len(hits) == 5 and {h.modality for h in hits} == {"audio"}
        assert all(h.collection == "clap.audio" for h in hits)

        sound = sorted((TUXPAINT / "audio").glob("*.ogg"))[0]
        hits = engine.search(Query(audio=sound.read_bytes(), to="text", k=5)).results
        assert hits and all(h.collection == "clap.text" for h in hits)

        mixed = engine.search(Query(text="a dog barking", k=300)).results
        assert {h.modality for h in mixed} == {"image", "text", "audio"}
        calibrated = [h.calibrated for h in mixed]
        assert all(c is not None for c in calibrated) and calibrated == sorted(calibrated, reverse=True)
        # merging puts lists on one scale without reordering any of them
        for modality in ("audio", "image"):
            alone = [h.id for h in engine.search(Query(text="a dog barking", to=modality, k=300)).results]
            merged = [h.id for h in mixed if h.modality == modality]
            assert merged == alone[: len(merged)]


def test_indexing_without_audio_keeps_the_sounds(audio_settings, make_settings, sound_dir: Path) -> None:  # type: ignore[no-untyped-def]
    with Engine.open(audio_settings) as engine:
        engine.index([sound_dir])
    with Engine.open(make_settings(audio=False, model=None)) as engine:  # --no-audio, or CLAP missing
        report = engine.index([sound_dir])
        assert report.removed == 0 and report.unchanged == 24
        assert engine.stats()["items"]["audio"] == 24


def test_long_sounds_still_fill_the_page(make_settings, tiny_clap_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Items of many windows: the candidate budget counts windows, the page counts sounds."""
    sources = sorted((TUXPAINT / "audio").glob("*.ogg"))
    folder = tmp_path / "long"
    folder.mkdir()
    for i in range(4):
        path, _, _ = _long_file(folder, sources[i * 12:(i + 1) * 12])
        path.rename(folder / f"long{i}.wav")
    settings = make_settings(audio=True, audio_model=f"clap:{tiny_clap_dir}", rerank_factor=1)
    with Engine.open(settings) as engine:
        engine.index([folder])
        assert len(engine.indexes.store("clap.audio", 24)) > 16  # several windows per sound
        hits = engine.search(Query(text="a dog barking", to="audio", k=4)).results
        assert sorted(Path(h.path).name for h in hits) == [f"long{i}.wav" for i in range(4)]


def test_a_batch_of_sound_profiles_answers_what_a_loop_answers(audio_settings, sound_dir: Path, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Sounds of many windows liked, disliked and excluded, with texts, negatives and other
    modalities: a batch (rescored on several threads) answers what each profile answers alone,
    to the bit, windows included."""
    from mmsearch.search import rerank

    sources = sorted((TUXPAINT / "audio").glob("*.ogg"))[20:32]
    long_path, _, _ = _long_file(sound_dir, sources)  # one item of many windows among the sounds
    (sound_dir / "dogs.txt").write_text("Two dogs bark at a passing car.")
    (sound_dir / "bell.txt").write_text("A bicycle bell rings twice.")
    monkeypatch.setattr(rerank, "PARALLEL_MIN", 2)
    with Engine.open(audio_settings) as engine:
        assert engine.index([sound_dir]).failed == 0
        ids = {Path(p).name: i for p in map(str, sorted(sound_dir.iterdir())) for i in engine.lookup(p)}
        long_id, sounds = ids["long.wav"], [i for n, i in ids.items() if n.endswith((".ogg", ".mp3"))]
        assert len(engine.catalog.item_embeddings(long_id)) > 2  # several windows
        profiles = [
            {"like": [long_id]},
            {"like": sounds[:3], "dislike": [long_id], "exclude_ids": sounds[3:6], "k": 6},
            {"like": {sounds[6]: 2.0, long_id: 0.5}, "dislike": {sounds[7]: 1.5}, "text": "a dog", "k": 5},
            {"like": [sounds[8], long_id], "dislike": [sounds[9]], "scoring": "best", "k": 7},
            {"like": [sounds[10]], "to": "text", "k": 2},
            {"like": [long_id, ids["dogs.txt"]], "to": "all", "k": 8},
            {"like": [sounds[11]], "offset": 3, "k": 4, "exclude_ids": [long_id]},
            {"like": [sounds[0]], "k": 30},
        ]
        batch = engine.recommend_batch(profiles * 2)
        loop = [engine.recommend(**p) for p in profiles]
        for got, want in zip(batch, loop + loop):
            assert got.results
            assert [(h.id, h.score, h.calibrated, h.collection, h.start, h.end) for h in got.results] == \
                   [(h.id, h.score, h.calibrated, h.collection, h.start, h.end) for h in want.results]
        long_hit = next(h for h in batch[7].results if h.id == long_id)  # every sound: the long one by its best window
        assert long_hit.start is not None and long_hit.end is not None and long_hit.end - long_hit.start <= 10.0
        assert long_id not in [h.id for h in batch[1].results + batch[6].results]  # disliked, excluded
