"""Videos: sampled frames and sound-track windows of one item, found by a photo, a sound, a text
or another item, with the moment's span; phone and browser files; damaged files fail alone."""

from __future__ import annotations

import io
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from mmsearch import Engine, Query
from mmsearch.media.video import VideoInfo, iter_frames, probe
from tests.conftest import CONFIG_DIR, DEVICE, TUXPAINT
from tests.video_media import RATE, photos, sound, write_sound, write_video

PHOTOS = photos(10)
SOUND_AT = 24.0


def _png(arr: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(arr).save(out, "PNG")
    return out.getvalue()


def _track() -> np.ndarray:
    """40 s of sound: two other sounds early on, the one looked for at SOUND_AT."""
    track = np.zeros(40 * RATE, np.float32)
    for i, at in ((0, 3.0), (1, 11.0), (3, SOUND_AT)):
        s = sound(i)[: 6 * RATE]
        track[int(at * RATE): int(at * RATE) + len(s)] = s
    return track


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A media folder: a 40 s story (photo i from 8i to 8i+8 s, sounds on its track), a sideways
    phone clip, a variable-frame-rate clip, a silent WebM-free MKV, sound-only M4A and Opus, two
    photo files, and damaged videos: truncated (both muxer layouts), 0-byte, garbage, stream-less."""
    root = tmp_path_factory.mktemp("videos")
    track = _track()
    write_video(root / "story.mp4", lambda t: PHOTOS[int(t // 8)], [i / 2 for i in range(80)], track)
    write_video(root / "phone.mov", lambda t: PHOTOS[5], [i / 2 for i in range(8)], rotate=90)
    write_video(root / "vfr.mp4", lambda t: PHOTOS[6] if 3 <= t < 6 else PHOTOS[7],
                [0, 0.1, 0.3, 1.5, 1.6, 3.0, 3.05, 3.9, 5.2, 6.0, 6.5, 8.9])
    write_video(root / "silent.mkv", lambda t: PHOTOS[7], [i / 2 for i in range(6)])
    # a browser's recording: VP8 and Opus in WebM written live (no duration, no index)
    write_video(root / "browser.webm", lambda t: PHOTOS[0] if t < 2 else PHOTOS[1], [i / 4 for i in range(16)],
                sound(2)[: 4 * RATE], codec="libvpx", audio_codec="libopus", options={"live": "1"})
    write_video(root / "old.avi", lambda t: PHOTOS[8] if t < 2 else PHOTOS[9], [i / 5 for i in range(20)],
                codec="mjpeg")  # every frame a key frame
    write_sound(root / "bark.m4a", sound(5), "ipod", "aac")
    write_sound(root / "note.opus", sound(6), "ogg", "libopus")
    write_sound(root / "memo.mp4", sound(7), "mp4", "aac")  # a video file with sound only
    Image.fromarray(PHOTOS[5]).save(root / "photo5.png")
    for i, arr in enumerate(photos(11, offset=20)):  # photo files not in any video (a background for calibration)
        Image.fromarray(arr).save(root / f"other{i}.png")
    bad = root / "bad"
    bad.mkdir()
    whole = (root / "story.mp4").read_bytes()
    (bad / "cut.mp4").write_bytes(whole[: len(whole) // 2])  # the index (moov) is at the end: lost
    write_video(bad / "faststart.mp4", lambda t: PHOTOS[int(t // 8)], [i / 2 for i in range(80)],
                options={"movflags": "faststart"})
    fast = (bad / "faststart.mp4").read_bytes()
    (bad / "faststart.mp4").write_bytes(fast[: len(fast) * 2 // 5])  # index first, frames cut short
    (bad / "empty.webm").write_bytes(b"")
    (bad / "noise.avi").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    return root


@pytest.fixture(scope="module")
def engine(media: Path, clip_spec: str, tiny_clap_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from mmsearch.settings import Settings

    settings = Settings(catalog=tmp_path_factory.mktemp("catalog"), model=clip_spec, model_config_dirs=[CONFIG_DIR],
                        audio=True, audio_model=f"clap:{tiny_clap_dir}", batch_size=16, decode_workers=2,
                        device=DEVICE)
    with Engine.open(settings) as eng:
        seen: list[float] = []
        eng.report = eng.index([media], status=lambda st: seen.append(st.media_seconds))  # type: ignore[attr-defined]
        eng.media_seen = seen  # type: ignore[attr-defined]
        yield eng


def _item(engine: Engine, path: Path) -> int:
    return engine.lookup(str(path))[0]


def test_videos_are_items_and_damaged_files_fail_alone(engine: Engine, media: Path) -> None:
    report = engine.report  # type: ignore[attr-defined]
    failures = dict(report.failures)
    assert report.added == 21 and report.failed == 4, failures
    bad = media / "bad"
    assert "0 bytes" in failures[str(bad / "empty.webm")]
    assert "corrupt" in failures[str(bad / "cut.mp4")] or "truncated" in failures[str(bad / "cut.mp4")]
    assert "truncated" in failures[str(bad / "faststart.mp4")]
    assert "corrupt" in failures[str(bad / "noise.avi")] or "unknown" in failures[str(bad / "noise.avi")]
    story = engine.item(_item(engine, media / "story.mp4"))
    assert story.modality == "video" and story.duration == pytest.approx(40.0, abs=0.1)
    assert (story.facts.width, story.facts.height, story.facts.mime) == (96, 64, "video/mp4")
    phone = engine.item(_item(engine, media / "phone.mov"))
    assert (phone.facts.width, phone.facts.height) == (96, 64)  # as shown: upright
    vectors = engine.vectors([story.id])
    assert set(vectors) == {"clip.video", "clap.video"}
    frames = vectors["clip.video"]
    # one frame per shot: five photos, each shown 8 s, collapsed from 20 samples
    assert frames.start.tolist() == [0.0, 8.0, 16.0, 24.0, 32.0] and frames.end.tolist() == [8.0, 16.0, 24.0, 32.0, 40.0]
    assert set(engine.vectors([_item(engine, media / "silent.mkv")])) == {"clip.video"}  # no track
    browser = engine.item(_item(engine, media / "browser.webm"))
    assert browser.modality == "video" and browser.duration == pytest.approx(4.0, abs=0.3)  # from its frames
    assert set(engine.vectors([browser.id])) == {"clip.video", "clap.video"}
    old = engine.vectors([_item(engine, media / "old.avi")])["clip.video"]
    assert len(old.ids) == 2 and old.start[0] == 0.0 and 2.0 <= old.start[1] <= 2.6  # the cut, within a quarter interval
    durations = [phone.duration, story.duration, browser.duration, engine.item(_item(engine, media / "old.avi")).duration]
    for name in ("bark.m4a", "note.opus", "memo.mp4", "vfr.mp4", "silent.mkv"):
        row = engine.item(_item(engine, media / name))
        assert row.duration and row.duration > 0.5
        assert row.modality == ("video" if name in ("vfr.mp4", "silent.mkv") else "audio")
        durations.append(row.duration)
    assert engine.item(_item(engine, media / "memo.mp4")).facts.mime == "audio/mp4"  # a sound, served as one
    # progress in seconds of sound and video (the meter's status): each video's time once, though
    # frames and track both cover it
    seen = engine.media_seen  # type: ignore[attr-defined]
    assert seen == sorted(seen) and report.media_seconds == pytest.approx(sum(durations))
    assert seen[-1] >= report.media_seconds  # the live count includes what failed files decoded first


def test_a_photo_finds_the_moment_it_is_shown(engine: Engine, media: Path) -> None:
    hit = engine.search(Query(image=_png(PHOTOS[2]), to="video", k=3)).results[0]
    assert hit.path == str(media / "story.mp4") and hit.modality == "video" and hit.collection == "clip.video"
    assert hit.start is not None and hit.end is not None
    assert 16.0 <= hit.start < hit.end <= 24.0 and hit.duration == pytest.approx(40.0, abs=0.1)
    # without --to, a picture finds photos and videos in one list: the photo file itself leads
    both = engine.search(Query(image=_png(PHOTOS[5]), k=5)).results
    assert {h.path for h in both[:2]} == {str(media / "photo5.png"), str(media / "phone.mov")}
    vfr = engine.search(Query(image=_png(PHOTOS[6]), to="video", k=1)).results[0]
    assert vfr.path == str(media / "vfr.mp4") and (vfr.start, vfr.end) == (3.0, 6.0)


def test_a_sound_finds_the_video_near_its_time(engine: Engine, media: Path, tmp_path: Path) -> None:
    track = _track()
    cut = tmp_path / "cut.wav"
    start = 20.0  # the track's window holding the sound at 24 s
    sf.write(cut, track[int(start * RATE): int((start + 10) * RATE)], RATE)
    tracks = engine.search(Query(audio=cut.read_bytes(), to="video", k=50))
    top = tracks.results[0]
    assert top.path == str(media / "story.mp4") and top.collection == "clap.video"
    # a sound searches sound tracks only: the total counts the videos that have one (not silent.mkv)
    videos = engine.browse(to="video")[0]
    assert tracks.total == len(tracks.results) == sum("clap.video" in engine.vectors([v.id]) for v in videos)
    assert tracks.total < len(videos) and tracks.total_relation == "eq"
    assert engine.search(Query(image=_png(PHOTOS[2]), to="video", k=1)).total == len(videos)  # frames: all
    assert top.start is not None and top.end is not None and top.start <= SOUND_AT < top.end
    mixed = engine.search(Query(audio=cut.read_bytes(), k=10)).results  # no --to: sounds and sound tracks
    assert {h.modality for h in mixed} == {"audio", "video"} and str(media / "story.mp4") in {h.path for h in mixed}
    assert {h.collection for h in mixed} <= {"clap.audio", "clap.video"}
    m4a = (media / "bark.m4a").read_bytes()  # a sound-only container as the query, through PyAV
    assert engine.search(Query(audio=m4a, to="audio", k=1)).results[0].path == str(media / "bark.m4a")


def test_similar_and_cross_modal_from_a_video(engine: Engine, media: Path) -> None:
    story = _item(engine, media / "story.mp4")
    videos = engine.similar([story], k=10).results
    assert videos and {h.modality for h in videos} == {"video"} and story not in {h.id for h in videos}
    photos_ = engine.similar([story], to="image", k=2).results  # a video's frames find photos
    assert photos_ and {h.modality for h in photos_} == {"image"}
    texts = engine.search(Query(text="a dog", to="video", k=10)).results
    assert {h.path for h in texts} >= {str(media / "story.mp4"), str(media / "vfr.mp4")}
    everything = engine.search(Query(text="a dog", k=20)).results  # the calibrated all-media list
    assert {"video", "image", "audio"} <= {h.modality for h in everything}
    assert len({h.id for h in everything}) == len(everything)  # a video once, though in two lists
    short = engine.search(Query(text="a dog", to="video", max_duration=10, k=10)).results
    assert short and all(h.duration is not None and h.duration <= 10 for h in short)


def test_unchanged_videos_are_skipped_and_a_changed_one_redone(engine: Engine, media: Path) -> None:
    again = engine.index([media])
    assert (again.added, again.updated, again.unchanged, again.failed) == (0, 0, 25, 0)  # failed ones wait for a change
    before = _item(engine, media / "silent.mkv")
    write_video(media / "silent.mkv", lambda t: PHOTOS[4], [i / 2 for i in range(6)])
    changed = engine.index([media])
    assert (changed.added, changed.updated) == (0, 1) and _item(engine, media / "silent.mkv") == before
    hit = engine.search(Query(image=_png(PHOTOS[4]), to="video", k=2)).results
    assert str(media / "silent.mkv") in {h.path for h in hit}


def test_frames_are_sampled_upright_at_their_own_times(media: Path, tmp_path: Path) -> None:
    info = VideoInfo()
    frames = list(iter_frames(media / "phone.mov", 2.0, 256, info))
    assert info.rotation == 90 and (info.width, info.height) == (96, 64)  # stored 64x96, turned by the matrix
    upright = np.asarray(frames[0].image, dtype=np.float32)
    assert upright.shape == (64, 96, 3)
    error, upside_down = (float(np.abs(upright - p).mean()) for p in (PHOTOS[5], PHOTOS[5][::-1, ::-1]))
    assert error < 12 < upside_down  # H.264 is lossy: near the photo, far from it turned round
    # a moving picture is sampled every interval; each sample spans until the next
    moving = write_video(tmp_path / "pan.mp4", lambda t: np.roll(PHOTOS[1], int(t * 12), axis=1),
                         [i / 4 for i in range(40)], gop=40)
    spans = [(f.start, f.end) for f in iter_frames(moving, 2.0, 256)]
    assert [s for s, _ in spans] == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    small = next(iter_frames(moving, 2.0, 32))  # scaled down in libswscale, never enlarged
    assert small.image.size == (48, 32)


def test_a_long_group_of_pictures_is_sampled_on_time_without_its_b_frames(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # one key frame for 30 s, three B-frames between references, no key frame at a cut
    moving = write_video(tmp_path / "long.mp4", lambda t: np.roll(PHOTOS[3], int(t * 8), axis=1),
                         [i / 12 for i in range(360)], gop=400,
                         codec_options={"bf": "3", "b_strategy": "0", "b-pyramid": "none", "sc_threshold": "0"})
    decoded = _decoded_frames(monkeypatch)
    spans = [(f.start, f.end) for f in iter_frames(moving, 2.0, 64)]
    assert [s for s, _ in spans] == [2.0 * k for k in range(15)]  # the frames all-frame decoding would pick
    assert spans[-1][1] == pytest.approx(30.0, abs=0.25)  # the end of the last frame
    # B-frames shown before a due time are skipped, not decoded; frames after the last sample are not needed
    assert len(decoded) < 360 // 2 and all(not f.is_corrupt for f in decoded)


def _decoded_frames(monkeypatch: pytest.MonkeyPatch) -> list:
    from mmsearch.media import video

    decoded: list = []
    take = video._Sampler.take

    def counting(self: video._Sampler, frames: list, base: float):  # type: ignore[no-untyped-def]
        decoded.extend(frames)
        return take(self, frames, base)

    monkeypatch.setattr(video._Sampler, "take", counting)
    return decoded


def test_a_key_frame_checked_for_a_cut_costs_no_other_frame(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Phones put a key frame every second. One between samples is decoded to see whether it
    starts a shot; with B-frames the decoder holds it back, and pushing it out with the next
    frames cost their decoding (a fifth of the decoding on such a video): it is decoded alone."""
    video = write_video(tmp_path / "phone.mp4", lambda t: np.roll(PHOTOS[int(t // 5)], int(t * 4), axis=1),
                        [i / 12 for i in range(12 * 20)], gop=12, codec_options={"bf": "2", "sc_threshold": "0"})
    decoded = _decoded_frames(monkeypatch)
    spans = [(f.start, f.end) for f in iter_frames(video, 2.0, 64)]
    assert [s for s, _ in spans] == [0, 2, 4, 5, 7, 9, 10, 12, 14, 15, 17, 19]  # every 2 s, and at each new photo
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert len(decoded) == 20 and all(f.key_frame for f in decoded)  # the 20 key frames, each once


def test_a_group_longer_than_the_last_is_decoded_again_from_its_key_frame(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Cuts at 3 s and 4 s, then no key frame to the end: the group at 4 s looked a second long,
    like the one before, so its key frame was decoded alone; the samples due inside it are decoded
    from the key frame again, on time."""
    def picture(t: float) -> np.ndarray:
        return np.roll(PHOTOS[0 if t < 3 else 1 if t < 4 else 2], int(t * 12), axis=1)

    video = write_video(tmp_path / "cuts.mp4", picture, [i / 12 for i in range(12 * 12)], gop=400,
                        codec_options={"bf": "2", "keyint_min": "1"})
    decoded = _decoded_frames(monkeypatch)
    spans = [(f.start, f.end) for f in iter_frames(video, 2.0, 64)]
    assert [s for s, _ in spans] == [0, 2, 3, 4, 6, 8, 10]
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:])) and spans[-1][1] == pytest.approx(12, abs=0.2)
    assert sum(f.key_frame for f in decoded) == 4  # the one at 4 s twice


def test_a_damaged_key_frame_leaves_its_sample_to_the_next_frames(tmp_path: Path) -> None:
    import av

    # a key frame every 2 s, each the due sample; the one at 4 s is zeroed after its first bytes
    clean = write_video(tmp_path / "clean.mkv", lambda t: np.roll(PHOTOS[4], int(t * 12), axis=1),
                        [i / 12 for i in range(12 * 14)], gop=24, codec_options={"sc_threshold": "0"})
    damaged = tmp_path / "damaged.mkv"
    with av.open(str(clean)) as src, av.open(str(damaged), "w") as dst:
        vin = src.streams.video[0]
        vout = dst.add_stream_from_template(vin)
        for packet in src.demux(vin):
            if packet.dts is None:
                continue
            if packet.is_keyframe and abs(float(packet.pts * packet.time_base) - 4.0) < 1e-3:
                zeroed = av.Packet(bytes(packet)[:8] + bytes(packet.size - 8))
                zeroed.pts, zeroed.dts, zeroed.time_base, zeroed.is_keyframe = (packet.pts, packet.dts,
                                                                                packet.time_base, True)
                packet = zeroed
            packet.stream = vout
            dst.mux(packet)
    starts = [f.start for f in iter_frames(damaged, 2.0, 64)]
    assert starts[:2] == [0.0, 2.0] and 4.0 < starts[2] < 4.5  # not a gap from 4 s to 6 s
    assert all(b - a <= 2.0 + 1 / 12 + 1e-6 for a, b in zip(starts, starts[1:])), starts  # a frame late at most


def test_tracks_that_end_or_start_apart_are_whole(clip_spec: str, tiny_clap_dir: Path, tmp_path: Path,
                                                  capfd: pytest.CaptureFixture[str]) -> None:
    """A file's picture and sound need not span the same time: a song with one still picture, a
    sound that stops or starts while the picture goes on, a picture that stops first. Each is
    whole (only a cut file stops every track); a late track's windows are at its time, and an early
    track starts the file's timeline (the picture's samples come after it, as a player shows them). ADTS AAC,
    and an M4A named .mp3, are sounds, with nothing written onto the terminal; a JPEG named .mp4
    is a photo, an MP4 named .jpg a video."""
    import av

    from mmsearch.errors import BadInput
    from mmsearch.settings import Settings

    folder = tmp_path / "media"
    folder.mkdir()
    song = np.tile(np.concatenate([sound(i)[: 4 * RATE] for i in range(3)]), 3)[: 12 * RATE]  # 12 s
    write_video(folder / "song.mkv", lambda t: PHOTOS[0], [0.0], song)
    write_video(folder / "short_sound.mkv", lambda t: PHOTOS[1], [i / 2 for i in range(20)], sound(2)[: 2 * RATE])
    write_video(folder / "short_picture.webm", lambda t: PHOTOS[2], [i / 4 for i in range(8)], song,
                codec="libvpx-vp9", audio_codec="libopus")
    write_video(folder / "late.mkv", lambda t: PHOTOS[3], [i / 2 for i in range(20)], sound(1)[: 4 * RATE],
                track_at=5.0)
    write_video(folder / "early.mkv", lambda t: PHOTOS[5], [2 + i / 2 for i in range(20)], sound(1)[: 4 * RATE])
    write_sound(folder / "raw.aac", sound(5), "adts", "aac")
    tag = b"ID3\x04\x00\x00\x00\x00\x00\x0a" + bytes(10)  # an ID3v2.4 tag of 10 padding bytes, as rips carry
    (folder / "tagged.mp3").write_bytes(tag + (folder / "raw.aac").read_bytes())
    Image.fromarray(PHOTOS[6]).save(folder / "photo_really.mp4", "JPEG")  # FFmpeg reads it as a 1-frame video
    write_video(tmp_path / "clip.mp4", lambda t: PHOTOS[7], [i / 2 for i in range(8)])
    (tmp_path / "clip.mp4").rename(folder / "clip_really.jpg")  # Pillow cannot read it
    write_sound(tmp_path / "m4a", sound(6), "ipod", "aac")
    (tmp_path / "m4a").rename(folder / "misnamed.mp3")
    cut = folder / "cut.mkv"  # a cut file stops every track: still truncated
    write_video(cut, lambda t: PHOTOS[4], [i / 2 for i in range(40)], np.tile(song, 2)[: 20 * RATE])
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    settings = Settings(catalog=tmp_path / "catalog", model=clip_spec, model_config_dirs=[CONFIG_DIR], audio=True,
                        audio_model=f"clap:{tiny_clap_dir}", device=DEVICE)
    capfd.readouterr()
    with Engine.open(settings) as e:
        report = e.index([folder])
        failures = dict(report.failures)
        assert set(failures) == {str(cut)} and "truncated" in failures[str(cut)], failures
        assert report.added == 10
        assert e.item(e.lookup(str(folder / "photo_really.mp4"))[0]).modality == "image"
        clip = e.item(e.lookup(str(folder / "clip_really.jpg"))[0])
        assert clip.modality == "video" and clip.facts.mime == "video/mp4"  # recorded (and served) as what it is
        for name, duration in (("song.mkv", 12.0), ("short_sound.mkv", 10.0), ("short_picture.webm", 12.0)):
            item = e.item(e.lookup(str(folder / name))[0])
            assert item.modality == "video" and item.duration == pytest.approx(duration, abs=0.35), name
            assert set(e.vectors([item.id])) == {"clip.video", "clap.video"}, name
        late = e.vectors(e.lookup(str(folder / "late.mkv")))["clap.video"]
        assert late.start[0] == pytest.approx(5.0, abs=0.05) and late.end.max() == pytest.approx(9.0, abs=0.1)
        # the sound starts 2 s before the picture: a player's timeline starts with the sound
        early = e.vectors(e.lookup(str(folder / "early.mkv")))
        assert early["clap.video"].start[0] == 0.0 and early["clap.video"].end.max() == pytest.approx(4.0, abs=0.1)
        assert early["clip.video"].start[0] == pytest.approx(2.0, abs=0.01)
        assert e.item(e.lookup(str(folder / "early.mkv"))[0]).duration == pytest.approx(11.75, abs=0.3)  # 2 s + 19 frames
        for name in ("raw.aac", "misnamed.mp3", "tagged.mp3"):
            assert e.item(e.lookup(str(folder / name))[0]).modality == "audio", name
        # a moment after the sound stops (2 s of 10): the frame shown then; the track has none there
        short = e.lookup(str(folder / "short_sound.mkv"))[0]
        assert short in e.runner.item_vectors([short], "clip", at=8.0)
        assert e.runner.item_vectors([short], "clap", at=8.0) == {}
        assert short in e.runner.item_vectors([short], "clap", at=1.0)
        assert e.similar([short], at=8.0, to="video").results  # was refused: "item ends at 2.0 s"
        with pytest.raises(BadInput, match="no moment at 8 s"):  # sounds are found by sounds: none then
            e.similar([short], at=8.0, to="audio")
    err = capfd.readouterr().err
    assert "mpg123" not in err and "getbits" not in err and "Illegal" not in err, err[-2000:]
    with av.open(str(folder / "raw.aac")) as c:
        assert c.format.name == "aac"  # really ADTS, which starts like an MP3 frame


def test_a_sound_finds_videos_in_a_catalog_of_videos_only(clip_spec: str, tiny_clap_dir: Path,
                                                           tmp_path: Path) -> None:
    """`search --audio` looks in sounds and sound tracks: a catalog of videos alone answers it.
    Asked for sound files (`--to audio`) it has none; a silent video's `similar --to audio` says why."""
    from mmsearch.errors import BadInput
    from mmsearch.settings import Settings

    folder = tmp_path / "videos"
    folder.mkdir()
    write_video(folder / "story.mp4", lambda t: PHOTOS[int(t // 8)], [i / 2 for i in range(80)], _track())
    write_video(folder / "silent.mkv", lambda t: PHOTOS[7], [i / 2 for i in range(6)])
    settings = Settings(catalog=tmp_path / "catalog", model=clip_spec, model_config_dirs=[CONFIG_DIR], audio=True,
                        audio_model=f"clap:{tiny_clap_dir}", device=DEVICE)
    clip = io.BytesIO()
    sf.write(clip, sound(3)[: 2 * RATE], RATE, format="WAV")
    with Engine.open(settings) as e:
        assert e.index([folder]).added == 2
        hit = e.search(Query(audio=clip.getvalue(), k=3)).results[0]
        assert hit.path == str(folder / "story.mp4") and hit.collection == "clap.video"
        with pytest.raises(BadInput, match="no sounds are indexed"):
            e.search(Query(audio=clip.getvalue(), to="audio"))
        write_sound(folder / "bark.m4a", sound(5), "ipod", "aac")
        assert e.index([folder]).added == 1
        assert e.search(Query(audio=clip.getvalue(), to="audio")).results[0].path == str(folder / "bark.m4a")
        with pytest.raises(BadInput, match="no sound track"):
            e.similar([_item(e, folder / "silent.mkv")], to="audio")


def _pan(path: Path, seconds: int, codec_options: dict[str, str] | None = None) -> Path:
    """A panning shot that changes photo every 6 s, a key frame every 2 s (on the samples)."""
    return write_video(path, lambda t: np.roll(PHOTOS[int(t // 6) % 10], int(t * 12), axis=1),
                       [i / 4 for i in range(4 * seconds)], gop=8, codec_options=codec_options,
                       options={"movflags": "faststart"})


@pytest.mark.parametrize("suffix", [".mkv", ".webm", ".mp4"])
def test_a_file_whose_streams_all_start_late_is_whole(tmp_path: Path, suffix: str) -> None:
    """Cut from a longer recording, every stream starts at 5 s. Matroska counts its length from 0,
    MP4 from the first timestamp: on the file's own timeline both are 20 s, and its frames too."""
    codecs = {"codec": "libvpx", "audio_codec": "libopus"} if suffix == ".webm" else {}
    track = np.zeros(20 * RATE, np.float32)
    path = write_video(tmp_path / f"cut{suffix}", lambda t: PHOTOS[int(t // 5) % 3], [5 + i / 2 for i in range(30)],
                       track, track_at=5.0, **codecs)
    frames = list(iter_frames(path, 2.0, 64))  # raised "truncated: it declares 25.02 s" for Matroska
    assert frames[0].start == 0.0 and probe(path).duration == pytest.approx(20.0, abs=0.05)
    assert frames[-1].end == pytest.approx(20.0, abs=0.05)


def test_the_earliest_sound_track_starts_the_timeline(tmp_path: Path) -> None:
    """A dubbed file: the picture and the first sound track start at 3 s, a second track at 0 s.
    A player starts at 0, and the file's length counts from there: the picture's samples are at
    3 s on, the first track's windows too, and the file is whole (not "truncated")."""
    import av

    from tests.video_media import MS, _encode_mono

    path = tmp_path / "dub.mkv"
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=4)
        v.width, v.height, v.pix_fmt, v.options = 96, 64, "yuv420p", {"g": "4", "bf": "0"}
        v.codec_context.time_base = MS
        first, second = c.add_stream("aac", rate=RATE), c.add_stream("aac", rate=RATE)
        first.layout = second.layout = "mono"
        for i in range(40):
            frame = av.VideoFrame.from_ndarray(PHOTOS[i // 20], format="rgb24")
            frame.pts, frame.time_base = 3000 + i * 250, MS
            for p in v.encode(frame):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        _encode_mono(c, first, sound(1)[: 4 * RATE], RATE, 3 * RATE)
        _encode_mono(c, second, sound(2)[: 4 * RATE], RATE, 0)
    frames = list(iter_frames(path, 2.0, 64))
    assert frames[0].start == pytest.approx(3.0, abs=0.01) and frames[-1].end == pytest.approx(13.0, abs=0.3)
    assert probe(path).audio_delay == pytest.approx(3.0, abs=0.05)


@pytest.mark.parametrize("codec_options", [{}, {"bf": "3", "open_gop": "1"}], ids=["plain", "b-frames"])
def test_a_long_video_is_cut_into_parts_as_threads_join(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        codec_options: dict[str, str]) -> None:
    """Each thread that joins cuts the part with the most left at the key frame before its middle;
    never behind where a thread got, never under the shortest part. Decoded part by part, the
    samples are a one-thread decode's (cuts on its samples), the same pixels, spans that tile."""
    from mmsearch.media import video_parts
    from mmsearch.media.video_parts import VideoParts

    monkeypatch.setattr(video_parts, "MIN_PART_SECONDS", 10.0)
    pan = _pan(tmp_path / "pan.mp4", 48, codec_options)
    info = probe(pan)  # as video_units starts: the length is known, the size as shown not yet
    info.width = info.height = None
    parts = VideoParts(pan, 2.0, 64, info)
    first = parts.take()
    assert first is not None and (first.start, first.until) == (0.0, None)
    taken = [first] + [parts.take() for _ in range(3)]
    assert all(p is not None for p in taken) and parts.take() is None  # 12 s each: no part of 10 s in them
    assert [(p.start, p.end()) for p in taken] == [(0.0, 12.0), (24.0, 36.0), (12.0, 24.0), (36.0, None)]
    samples = sorted((s for p in taken for s in parts.frames(p)), key=lambda f: f.start)  # type: ignore[union-attr]
    parts.wait()
    whole = list(iter_frames(pan, 2.0, 64))
    assert [(f.start, f.end) for f in samples] == [(f.start, f.end) for f in whole]
    assert all(a.end == b.start for a, b in zip(samples, samples[1:])) and samples[-1].end == pytest.approx(48, abs=0.3)
    assert all(np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(samples, whole))
    assert (info.width, info.height) == (96, 64)  # the first part fills in what the file shows

    late = VideoParts(pan, 2.0, 64, info)
    head = late.take()
    assert head is not None and not head.passes(30.0)  # its thread reached 30 s: 18 s are left
    assert late.take() is None  # too little behind it for two parts, and nothing is cut before it


def _first_part_waits(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """The first part stops after its first sample until another thread takes a part (10 s at
    most), so a test sees threads join a video under way however fast it decodes. Set once one has."""
    from mmsearch.media import video_parts

    joined = threading.Event()
    real_take, real_iter = video_parts.VideoParts.take, video_parts.iter_frames

    def take(self):  # type: ignore[no-untyped-def]
        part = real_take(self)
        if part is not None and part.start > 0:
            joined.set()
        return part

    def iter_frames_slowly(source, interval, side, info, start, until, damage):  # type: ignore[no-untyped-def]
        for k, sample in enumerate(real_iter(source, interval, side, info, start, until, damage)):
            if start == 0 and k == 1:
                joined.wait(10)
            yield sample

    monkeypatch.setattr(video_parts.VideoParts, "take", take)
    monkeypatch.setattr(video_parts, "iter_frames", iter_frames_slowly)
    return joined


def test_a_failed_part_stops_the_others_and_keeps_its_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a part fails, the others stop where they are without a verdict of their own (a part
    stopped early is not a truncated file), no part is cut any more, and the first reason stays."""
    from mmsearch.media import video_parts
    from mmsearch.media.video import VideoDecodeError
    from mmsearch.media.video_parts import VideoParts

    monkeypatch.setattr(video_parts, "MIN_PART_SECONDS", 10.0)
    pan = _pan(tmp_path / "pan.mp4", 48)
    parts = VideoParts(pan, 2.0, 64, probe(pan))
    head, tail = parts.take(), parts.take()
    assert head is not None and tail is not None and (tail.start, tail.until) == (24.0, None)
    parts.stop(VideoDecodeError("corrupt video: 6 damaged packets"))
    assert parts.take() is None  # nothing is cut from a stopped video
    # each stops at its first key frame, without a last span or a "truncated" of its own
    assert list(parts.frames(tail)) == [] and list(parts.frames(head)) == []
    with pytest.raises(VideoDecodeError, match="6 damaged packets"):
        parts.wait()


def _damaged(clean: Path, path: Path, times: set[float]) -> Path:
    """``clean`` with the packets at ``times`` overwritten by noise after their first bytes."""
    import av

    rng = np.random.default_rng(1)
    with av.open(str(clean)) as src, av.open(str(path), "w") as dst:
        vin = src.streams.video[0]
        vout = dst.add_stream_from_template(vin)
        for packet in src.demux(vin):
            if packet.size == 0:
                continue
            if any(abs(float(packet.pts * packet.time_base) - t) < 1e-3 for t in times):
                noise = av.Packet(bytes(packet)[:6] + rng.integers(0, 256, packet.size - 6, np.uint8).tobytes())
                noise.pts, noise.dts, noise.time_base, noise.is_keyframe = (packet.pts, packet.dts,
                                                                            packet.time_base, True)
                packet = noise
            packet.stream = vout
            dst.mux(packet)
    return path


def test_damaged_packets_are_counted_over_the_whole_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seven key frames damaged in each half: one thread fails the file past 5, and so do two
    threads decoding its halves (each half had fewer than 6, and was counted alone)."""
    from mmsearch.media import video_parts
    from mmsearch.media.video import VideoDecodeError
    from mmsearch.media.video_parts import VideoParts

    monkeypatch.setattr(video_parts, "MIN_PART_SECONDS", 10.0)
    clean = write_video(tmp_path / "clean.mkv", lambda t: np.roll(PHOTOS[int(t // 6) % 10], int(t * 12), axis=1),
                        [i / 4 for i in range(4 * 48)], gop=8, codec_options={"sc_threshold": "0"})
    damaged = _damaged(clean, tmp_path / "damaged.mkv", {2.0 * k for k in (*range(1, 8), *range(13, 20))})
    with pytest.raises(VideoDecodeError, match="6 damaged packets"):
        list(iter_frames(damaged, 2.0, 32))
    parts = VideoParts(damaged, 2.0, 32, probe(damaged))
    head, tail = parts.take(), parts.take()
    assert head is not None and tail is not None and (tail.start, tail.until) == (24.0, None)
    with pytest.raises(VideoDecodeError, match="6 damaged packets"):
        for part in (head, tail):
            list(parts.frames(part))
    assert isinstance(parts.settle(), VideoDecodeError)


def test_a_finished_video_opens_no_container_to_cut_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread that chose a part to cut while the video finished finds no cut, and leaves no
    container open that nothing would close."""
    from mmsearch.media import video_parts
    from mmsearch.media.video_parts import VideoParts

    monkeypatch.setattr(video_parts, "MIN_PART_SECONDS", 10.0)
    pan = _pan(tmp_path / "pan.mp4", 48)
    parts = VideoParts(pan, 2.0, 64, probe(pan))
    head = parts.take()
    assert head is not None and parts._key_frame_before(30.0) == 30.0  # the container is open to cut
    list(parts.frames(head))
    parts.wait()
    assert parts._seeker is None
    assert parts._key_frame_before(30.0) is None and parts._seeker is None


def test_parts_decoded_side_by_side_fail_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mmsearch.media import video_parts
    from mmsearch.media.video import VideoDecodeError
    from mmsearch.media.video_parts import iter_parts

    monkeypatch.setattr(video_parts, "MIN_PART_SECONDS", 10.0)
    pan = _pan(tmp_path / "pan.mp4", 48)
    joined, seen = _first_part_waits(monkeypatch), _parts_seen(monkeypatch)
    samples = sorted(iter_parts(pan, 2.0, 64, VideoInfo(), threads=3), key=lambda f: f.start)  # its length unknown
    assert joined.is_set() and len({name for name, _ in seen}) >= 2
    assert [(f.start, f.end) for f in samples] == [(f.start, f.end) for f in iter_frames(pan, 2.0, 64)]
    cut = tmp_path / "cut.mp4"  # the index says 48 s, the frames stop near 19 s: a later part finds nothing
    cut.write_bytes(pan.read_bytes()[: pan.stat().st_size * 2 // 5])
    with pytest.raises(VideoDecodeError, match="truncated"):
        list(iter_parts(cut, 2.0, 64, VideoInfo(), threads=3))


def _parts_seen(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, float]]:
    """(thread name, part start) of every part an ingest decodes."""
    from mmsearch.media.video_parts import VideoParts

    seen: list[tuple[str, float]] = []
    real = VideoParts.frames

    def frames(self, part):  # type: ignore[no-untyped-def]
        seen.append((threading.current_thread().name, part.start))
        return real(self, part)

    monkeypatch.setattr(VideoParts, "frames", frames)
    return seen


def test_an_ingest_lends_its_idle_decoders_to_a_long_video(make_settings, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """One video and two decode workers: the idle one decodes half the video; the item's frames
    are the ones a one-thread decode gives, and its seconds of media are counted once."""
    from mmsearch.media import video_parts

    monkeypatch.setattr(video_parts, "MIN_PART_SECONDS", 10.0)
    folder = tmp_path / "one"
    folder.mkdir()
    _pan(folder / "pan.mp4", 40)
    seen = _parts_seen(monkeypatch)
    spans, threads = {}, {}
    for workers in (1, 2):
        seen.clear()
        with Engine.open(make_settings(catalog=tmp_path / f"cat{workers}", decode_workers=workers)) as e:
            heard: list[float] = []
            report = e.index([folder], status=lambda st: heard.append(st.media_seconds))
            assert report.added == 1 and report.media_seconds == pytest.approx(40.0, abs=0.3)
            assert heard == sorted(heard) and heard[-1] == pytest.approx(40.0, abs=0.3)
            frames = e.vectors(e.lookup(str(folder / "pan.mp4")))["clip.video"]
            spans[workers] = sorted(zip(frames.start.tolist(), frames.end.tolist()))
        threads[workers] = {name for name, _ in seen}
        assert sorted(start for _, start in seen)[0] == 0.0
    assert len(threads[1]) == 1 and len(threads[2]) == 2  # the idle thread took a part
    assert spans[1] == spans[2] and len(spans[1]) == 20


def test_a_helper_that_fails_outside_decoding_fails_the_file(make_settings, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A frame of another thread's part that cannot be handed on (memory ran out preparing it)
    fails the video as it would on the file's own thread: not a video committed with a hole."""
    from mmsearch.indexer import pipeline
    from mmsearch.media import video_parts

    monkeypatch.setattr(video_parts, "MIN_PART_SECONDS", 10.0)
    folder = tmp_path / "one"
    folder.mkdir()
    _pan(folder / "pan.mp4", 40)
    joined, seen = _first_part_waits(monkeypatch), _parts_seen(monkeypatch)
    real = pipeline._Ingest._queue_unit

    def queue_unit(self, idx, unit, events):  # type: ignore[no-untyped-def]
        if unit.start == 24.0:  # inside the part the other thread took (cut at 20 s)
            raise MemoryError("simulated")
        return real(self, idx, unit, events)

    monkeypatch.setattr(pipeline._Ingest, "_queue_unit", queue_unit)
    with Engine.open(make_settings(decode_workers=2)) as e:
        report = e.index([folder])
        assert joined.is_set() and len({name for name, _ in seen}) == 2
        assert report.added == 0 and report.failed == 1 and "MemoryError: simulated" in report.failures[0][1]


def test_a_thread_that_finishes_its_file_joins_a_long_video_under_way(make_settings, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A film that starts while every thread holds a file is shared out as they finish theirs: the
    other thread is busy when the video starts, then takes the back of it."""
    from mmsearch.indexer import pipeline
    from mmsearch.media import video_parts

    monkeypatch.setattr(video_parts, "MIN_PART_SECONDS", 10.0)
    folder = tmp_path / "mixed"
    folder.mkdir()
    _pan(folder / "pan.mp4", 40)
    (folder / "memo.txt").write_text("a memo read while the video starts")
    shared, joined = threading.Event(), _first_part_waits(monkeypatch)
    real_share, real_read = pipeline._Ingest._share, pipeline.read_text

    def share(self, idx, parts):  # type: ignore[no-untyped-def]
        real_share(self, idx, parts)
        shared.set()

    def read_text(path, limit):  # type: ignore[no-untyped-def]
        assert shared.wait(10)  # the memo's thread is busy until the video has started
        return real_read(path, limit)

    monkeypatch.setattr(pipeline._Ingest, "_share", share)
    monkeypatch.setattr(pipeline, "read_text", read_text)
    seen = _parts_seen(monkeypatch)
    with Engine.open(make_settings(decode_workers=2)) as e:
        report = e.index([folder])
        assert report.added == 2 and report.failed == 0
        frames = e.vectors(e.lookup(str(folder / "pan.mp4")))["clip.video"]
        spans = sorted(zip(frames.start.tolist(), frames.end.tolist()))
    assert joined.is_set() and len({name for name, _ in seen}) == 2
    assert [start for _, start in seen][0] == 0.0 and max(start for _, start in seen) >= 10.0
    assert spans == [(f.start, f.end) for f in iter_frames(folder / "pan.mp4", 2.0, 64)]


@pytest.mark.parametrize(("codec", "suffix", "options"), [
    ("libx265", ".mov", {"x265-params": "log-level=none:bframes=4"}),  # phones' HEVC, B-frames in a pyramid
    ("libvpx-vp9", ".webm", {}),  # browsers' recordings
    ("libsvtav1", ".mp4", {"svtav1-params": "log-level=0"}),
    ("mpeg4", ".avi", {}),  # old cameras
])
def test_other_codecs_are_sampled_at_their_times(tmp_path: Path, codec: str, suffix: str,
                                                 options: dict[str, str]) -> None:
    moving = write_video(tmp_path / f"clip{suffix}", lambda t: np.roll(PHOTOS[2], int(t * 12), axis=1),
                         [i / 4 for i in range(40)], gop=40, codec=codec, codec_options=options)
    frames = list(iter_frames(moving, 2.0, 256))
    assert [f.start for f in frames] == [0.0, 2.0, 4.0, 6.0, 8.0]
    first = np.asarray(frames[0].image, dtype=np.float32)
    assert float(np.abs(first - PHOTOS[2]).mean()) < 16  # lossy, but the picture shown


def test_a_thumbnail_is_the_frame_shown_at_its_time_in_an_avi_with_b_frames(tmp_path: Path) -> None:
    """AVI seeks by decoding time: the key frame it lands on can be shown after the time asked,
    and the thumbnail was that later frame (Xvid and DivX files). It seeks further back."""
    import av

    from mmsearch.media.video import frame_at

    avi = write_video(tmp_path / "xvid.avi", lambda t: np.roll(PHOTOS[int(t // 6) % 10], int(t * 12), axis=1),
                      [i / 4 for i in range(4 * 20)], codec="mpeg4", gop=8, codec_options={"bf": "2"})
    with av.open(str(avi)) as c:
        shown = [(float(f.time), f.to_ndarray(format="rgb24").astype(np.float32)) for f in c.decode(video=0)]
    for t in (1.9, 5.8, 11.9, 19.9):
        picture = np.asarray(frame_at(avi, t, 64), dtype=np.float32)
        closest = min(shown, key=lambda f: float(np.abs(f[1] - picture).mean()))[0]
        assert closest == max(time for time, _ in shown if time <= t + 1e-3), t


def test_http_streams_videos_and_shows_their_frames(engine: Engine, media: Path) -> None:
    from fastapi.testclient import TestClient

    from mmsearch.api.app import create_app

    story = media / "story.mp4"
    with TestClient(create_app(engine, read_only=True)) as client:
        r = client.post("/search", files={"image": ("q.png", _png(PHOTOS[2]), "image/png")}, data={"to": "video"})
        assert r.status_code == 200, r.text
        hit = r.json()["results"][0]
        assert (hit["path"], hit["modality"]) == (str(story), "video")
        assert 16.0 <= hit["start"] < hit["end"] <= 24.0 and hit["duration"] == pytest.approx(40.0, abs=0.1)
        assert client.get("/search", params={"text": "a dog", "to": "video"}).status_code == 200
        assert client.get("/search", params={"text": "a dog", "to": "film"}).status_code == 422
        item = client.get(f"/items/{hit['id']}").json()
        assert item["modality"] == "video" and item["thumbnail_url"] and (item["width"], item["height"]) == (96, 64)
        size = story.stat().st_size
        head = client.head(f"/items/{hit['id']}/media")
        assert head.status_code == 200 and head.headers["content-type"] == "video/mp4" and not head.content
        assert head.headers["content-length"] == str(size) and head.headers["accept-ranges"] == "bytes"
        part = client.get(f"/items/{hit['id']}/media", headers={"Range": "bytes=1000-1999"})
        assert part.status_code == 206 and part.content == story.read_bytes()[1000:2000]
        assert part.headers["content-range"] == f"bytes 1000-1999/{size}"

        def shown(t: float | None) -> np.ndarray:
            r = client.get(f"/items/{hit['id']}/thumbnail", params={"size": 96} | ({} if t is None else {"t": t}))
            assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
            return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"), dtype=np.float32)

        for t in (hit["start"], 33.0):  # the matching moment, and a later one: the photo shown then
            thumb = shown(t)
            errors = [float(np.abs(thumb - p).mean()) for p in PHOTOS[:5]]
            assert int(np.argmin(errors)) == int(t // 8), errors
        assert shown(None).shape == (64, 96, 3)  # a representative frame
        assert client.get(f"/items/{hit['id']}/thumbnail", params={"t": -1}).status_code == 422
        # a moment as "more like this", and the video collections, as the CLI and POST /similar take them
        moment = client.get(f"/items/{hit['id']}/similar", params={"at": 20, "to": "video", "k": 3})
        same = client.post("/similar", json={"item_ids": [hit["id"]], "at": 20, "to": "video", "k": 3})
        assert moment.status_code == same.status_code == 200, moment.text
        assert [(r["id"], r["start"]) for r in moment.json()["results"]] == \
            [(r["id"], r["start"]) for r in same.json()["results"]]
        assert client.get(f"/items/{hit['id']}/similar", params={"at": -1}).status_code == 422
        for collection in ("clip.video", "clap.video"):
            assert client.get("/duplicates", params={"collection": collection}).status_code == 200
            assert client.get("/atlas.json", params={"collection": collection}).status_code == 200


def test_cli_finds_moments(engine: Engine, media: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from typer.testing import CliRunner

    from mmsearch.cli import app

    monkeypatch.setenv("MMSEARCH_MODEL_CONFIG_DIRS", json.dumps([str(CONFIG_DIR)]))
    monkeypatch.setenv("MMSEARCH_DEVICE", "cpu")
    query = tmp_path / "still.png"
    query.write_bytes(_png(PHOTOS[2]))
    catalog = str(engine.settings.catalog)
    runner = CliRunner()
    out = runner.invoke(app, ["search", "--image", str(query), "--to", "video", "--catalog", catalog, "--json"])
    assert out.exit_code == 0, out.output
    hit = json.loads(out.stdout.strip().splitlines()[-1])["results"][0]
    assert hit["path"] == str(media / "story.mp4") and hit["modality"] == "video" and 16 <= hit["start"] < hit["end"] <= 24
    text = runner.invoke(app, ["search", "--image", str(query), "--to", "video", "--catalog", catalog, "-k", "1"])
    assert text.exit_code == 0 and "story.mp4" in text.output and "[16.0-24.0s]" in text.output
    similar = runner.invoke(app, ["similar", str(hit["id"]), "--to", "image", "--catalog", catalog, "--json"])
    assert similar.exit_code == 0 and {h["modality"] for h in json.loads(similar.stdout)["results"]} == {"image"}
    moment = runner.invoke(app, ["similar", str(hit["id"]), "--at", "20", "--to", "image", "-k", "5", "--catalog",
                                 catalog, "--json"])
    assert moment.exit_code == 0, moment.output
    assert [h["id"] for h in json.loads(moment.stdout)["results"]] == \
        [h.id for h in engine.similar([hit["id"]], at=20.0, to="image", k=5).results]
    two = runner.invoke(app, ["similar", str(hit["id"]), str(hit["id"] + 1), "--at", "20", "--catalog", catalog])
    assert two.exit_code == 2 and "exactly one item" in two.output


def test_a_moment_of_a_video_is_the_query(engine: Engine, media: Path) -> None:
    from fastapi.testclient import TestClient

    from mmsearch import BadInput
    from mmsearch.api.app import create_app
    from mmsearch.search.query_embedding import at_moment

    story = _item(engine, media / "story.mp4")
    frames = engine.vectors([story], collection="clip.video")["clip.video"]
    at_20 = frames.vectors[(frames.start <= 20.0) & (20.0 < frames.end)][0]
    moment = engine.runner.item_vectors([story], "clip", at=20.0)[story]
    assert np.allclose(moment, at_20 / np.linalg.norm(at_20), atol=1e-6)  # the frame shown at 20 s, alone
    whole = engine.runner.item_vectors([story], "clip")[story]
    assert not np.allclose(moment, whole, atol=1e-3)
    at_end = engine.runner.item_vectors([story], "clip", at=40.2)[story]  # the end (spans are rounded): the last frame
    assert np.allclose(at_end, frames.vectors[-1] / np.linalg.norm(frames.vectors[-1]), atol=1e-6)
    rows = [(1, 7, "clip.video", 0.0, 8.0), (2, 7, "clip.video", 8.0, 16.0), (3, 9, "clip.image", None, None)]
    assert at_moment(rows, 8.0) == [(2, 7, "clip.video", 8.0, 16.0), (3, 9, "clip.image", None, None)]

    by_moment = engine.similar([story], at=20.0, to="image", k=5).results
    by_whole = engine.similar([story], to="image", k=5).results
    assert by_moment and [h.score for h in by_moment] != [h.score for h in by_whole]
    other = _item(engine, media / "vfr.mp4")  # a disliked item still counts beside a liked moment
    steered = engine.recommend(like=[story], dislike=[other], at=20.0, to="image", k=5).results
    assert [h.score for h in steered] != [h.score for h in by_moment]
    with pytest.raises(BadInput, match="exactly one item"):
        engine.similar([story, _item(engine, media / "vfr.mp4")], at=3.0)
    with pytest.raises(BadInput, match="no moments"):  # a photo has no time to point at
        engine.similar([_item(engine, media / "photo5.png")], at=3.0)
    with TestClient(create_app(engine, read_only=True)) as client:
        got = client.post("/similar", json={"item_ids": [story], "at": 20.0, "to": "image", "k": 5}).json()
        assert [h["id"] for h in got["results"]] == [h.id for h in by_moment]
        assert client.post("/similar", json={"item_ids": [story], "at": -1}).status_code == 422
        # past the end, not a number, or lengths that cannot meet: a reason, on every face
        past = client.post("/similar", json={"item_ids": [story], "at": 999})
        assert past.status_code == 400 and "past its end" in past.text and "40.0 s" in past.text
        nan = client.post("/similar", content=b'{"item_ids": [%d], "at": NaN}' % story,
                          headers={"content-type": "application/json"})
        assert nan.status_code == 422 and "finite" in nan.text, nan.text
        both = client.get("/search", params={"text": "a story", "min_duration": 10, "max_duration": 5})
        assert both.status_code in (400, 422) and "more than max_duration" in both.text, both.text
    with pytest.raises(BadInput, match="past its end"):
        engine.similar([story], at=999)
    with pytest.raises(BadInput, match="finite"):
        engine.similar([story], at=float("inf"))
    with pytest.raises(ValueError, match="more than max_duration"):  # a Query is checked as it is made
        Query(text="a story", min_duration=10, max_duration=5)
    assert engine.similar([story], at=40.2).results  # the end itself, spans being rounded


@pytest.mark.parametrize("setting", [None, 80])
def test_frames_are_scaled_once_to_the_side_the_image_model_takes(make_settings, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  setting: int | None) -> None:
    from mmsearch.media import video

    big = np.repeat(np.repeat(PHOTOS[3], 2, axis=0), 2, axis=1)  # 192x128: more than the model takes
    folder = tmp_path / "clips"
    folder.mkdir()
    write_video(folder / "big.mp4", lambda t: np.roll(big, int(t * 12), axis=1), [i / 4 for i in range(24)])
    sizes: list[tuple[int, int]] = []
    real = video.video_units

    def spy(path, interval, side, audio, info, share=None, sound_waits=False):  # type: ignore[no-untyped-def]
        for unit in real(path, interval, side, audio, info, share, sound_waits):
            sizes.append(unit.payload.size)
            yield unit

    monkeypatch.setattr(video, "video_units", spy)
    with Engine.open(make_settings(video_frame_side=setting)) as e:
        assert e.index([folder]).added == 1
        enc = e.encoders.get("clip")
        side = enc.image_side  # type: ignore[attr-defined]
        assert side == 64  # the tiny model's input, read off its transform (or the ONNX export's recipe)
        frame = Image.fromarray(np.roll(big, 0, axis=1)).resize((96, 64), Image.Resampling.BILINEAR)
        # at the model's side, preparing a frame only crops it: no second resize
        assert np.array_equal(np.asarray(enc.prepare("image", frame)), np.asarray(frame)[:, 16:80].transpose(2, 0, 1))
    want = (setting * 3 // 2, setting) if setting else (96, 64)
    assert sizes and set(sizes) == {want}


def test_files_without_an_extension_are_known_by_their_content(clip_spec: str, tiny_clap_dir: Path,
                                                                tmp_path: Path) -> None:
    """Downloads saved without their extension: an MP4 is a video; Ogg, FLAC and M4A are sounds,
    skipped while audio is off and indexed once it is on; other bytes are skipped under "(none)"."""
    from mmsearch.errors import BadInput
    from mmsearch.media import formats
    from mmsearch.settings import Settings

    folder = tmp_path / "downloads"
    folder.mkdir()
    write_video(tmp_path / "clip.mp4", lambda t: PHOTOS[2], [i / 2 for i in range(8)]).rename(folder / "clip")
    shutil.copy(sorted((TUXPAINT / "audio").glob("*.ogg"))[4], folder / "song")  # Ogg Vorbis
    sf.write(folder / "take", sound(5), RATE, format="FLAC")
    write_sound(tmp_path / "book.m4a", sound(6), "ipod", "aac").rename(folder / "book")  # an MP4 box, brand M4A
    (folder / "blob").write_bytes(np.random.default_rng(1).integers(0, 256, 4096, np.uint8).tobytes())
    for audio, added, waiting in ((False, 1, 3), (True, 3, 0)):  # the same catalog: the sounds wait for audio
        settings = Settings(catalog=tmp_path / "catalog", model=clip_spec, model_config_dirs=[CONFIG_DIR],
                            audio=audio, audio_model=f"clap:{tiny_clap_dir}", device=DEVICE)
        with Engine.open(settings) as e:
            report = e.index([folder])
            assert report.failures == [] and report.added == added and report.skipped == {"(none)": 1}
            assert report.waiting_for_audio == waiting
            assert e.item(_item(e, folder / "clip")).modality == "video"
    with Engine.open(settings) as e:
        assert [e.item(_item(e, folder / n)).modality for n in ("song", "take", "book")] == ["audio"] * 3
        # served as what they hold, not application/octet-stream
        assert [e.item(_item(e, folder / n)).facts.mime for n in ("clip", "song", "take", "book")] == \
            ["video/mp4", "audio/ogg", "audio/flac", "audio/mp4"]
        [hit] = e.search(Query(audio=(folder / "take").read_bytes(), to="audio", k=1)).results
        assert hit.path == str(folder / "take")
    with Engine.open(settings.model_copy(update={"catalog": tmp_path / "one"})) as e:  # named alone
        assert e.index([folder / "clip"]).added == 1 and e.item(_item(e, folder / "clip")).modality == "video"
        with pytest.raises(BadInput, match="not a kind of file mmsearch indexes.*videos"):
            e.index([folder / "blob"])
    theora = tmp_path / "film"  # an Ogg page whose first packet is a Theora header: a video, not a sound
    theora.write_bytes(b"OggS\x00\x02" + bytes(20) + b"\x01\x2a" + b"\x80theora" + bytes(64))
    assert formats.sniff_kind(str(theora)) == "video"


def test_videos_that_share_a_moment_are_not_duplicates(clip_spec: str, tmp_path: Path) -> None:
    """Three films that open on the same 2 s of black are not duplicates of each other; a copy
    of one encoded again (another quality, another container) is."""
    from mmsearch.settings import Settings

    folder = tmp_path / "films"
    folder.mkdir()
    black = np.zeros_like(PHOTOS[0])
    for k in range(3):
        write_video(folder / f"film{k}.mp4", lambda t, k=k: black if t < 2 else np.roll(PHOTOS[2 + k], int(t * 6), 1),
                    [i / 4 for i in range(56)])
    write_video(folder / "film0_copy.mkv", lambda t: black if t < 2 else np.roll(PHOTOS[2], int(t * 6), 1),
                [i / 4 for i in range(56)], codec_options={"crf": "30"})
    settings = Settings(catalog=tmp_path / "catalog", model=clip_spec, model_config_dirs=[CONFIG_DIR], audio=False,
                        device=DEVICE)
    with Engine.open(settings) as e:
        assert e.index([folder]).added == 4
        frames = e.vectors([_item(e, folder / "film1.mp4"), _item(e, folder / "film2.mp4")])["clip.video"]
        first = frames.vectors[frames.start == 0.0]
        assert len(first) == 2 and float(first[0] @ first[1]) / float(np.linalg.norm(first[0]) *
                                                                       np.linalg.norm(first[1])) > 0.99
        # the tiny random model puts any two photos within 0.95-0.99: 0.99 tells copies apart
        groups = e.duplicates(collection="clip.video", threshold=0.99).groups
        assert [sorted(m.path for m in g.items) for g in groups] == [[str(folder / "film0.mp4"),
                                                                      str(folder / "film0_copy.mkv")]]


def test_files_with_sound_wait_while_audio_is_off(clip_spec: str, tiny_clap_dir: Path, tmp_path: Path) -> None:
    """A run with audio off over a catalog that holds sound tracks leaves files with sound as they
    are: a changed video keeps its track's vectors (re-embedded without it, it lost them, and the
    next run with audio saw it unchanged), a new sound-only MP4 is not a failure, a changed note
    keeps its CLAP vector; the next run with audio on takes them all."""
    import os

    from mmsearch.errors import BadInput
    from mmsearch.settings import Settings

    folder = tmp_path / "media"
    folder.mkdir()
    film = write_video(folder / "film.mp4", lambda t: PHOTOS[1], [i / 2 for i in range(12)], sound(1)[: 6 * RATE])
    write_video(folder / "silent.mp4", lambda t: PHOTOS[2], [i / 2 for i in range(8)])
    (folder / "note.txt").write_text("a dog barks")
    with_audio = Settings(catalog=tmp_path / "catalog", model=clip_spec, model_config_dirs=[CONFIG_DIR], audio=True,
                          audio_model=f"clap:{tiny_clap_dir}", device=DEVICE)
    without = with_audio.model_copy(update={"audio": False})
    with Engine.open(with_audio) as e:
        assert e.index([folder]).added == 3
        track = e.vectors([_item(e, film)])["clap.video"]
    os.utime(film, ns=(film.stat().st_atime_ns, film.stat().st_mtime_ns + 10**9))  # changed, it seems
    os.utime(folder / "silent.mp4", ns=(film.stat().st_atime_ns, film.stat().st_mtime_ns + 10**9))
    write_sound(folder / "memo.mp4", sound(3), "mp4", "aac")
    (folder / "note.txt").write_text("a dog barks at night")  # a note is in CLAP's space too: it waits
    with Engine.open(without) as e:
        report = e.index([folder])
        assert (report.updated, report.added, report.failed, report.waiting_for_audio) == (1, 0, 0, 3), report
        assert np.array_equal(e.vectors([_item(e, film)])["clap.video"].ids, track.ids)  # the track is kept
        assert set(e.vectors([_item(e, folder / "note.txt")])) == {"clip.text", "clap.text"}
        assert e.index([folder]).waiting_for_audio == 3  # still waiting, not unchanged
        with pytest.raises(BadInput, match="audio is off"):  # not "add a text query"
            e.search(Query(text="a dog", to="audio"))
    with Engine.open(with_audio) as e:
        report = e.index([folder])
        assert (report.updated, report.added, report.waiting_for_audio, report.unchanged) == (2, 1, 0, 1), report
        assert set(e.vectors([_item(e, film)])) == {"clip.video", "clap.video"}
        assert e.item(_item(e, folder / "memo.mp4")).modality == "audio"


def test_a_file_the_database_refuses_is_failed_beside_one_waiting_for_audio(clip_spec: str, tiny_clap_dir: Path,
                                                                           tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Committed file by file after a refused batch, each reason goes to its own file: a waiting
    file (not written) once shifted the reason onto itself, and the refused file counted as added."""
    import os

    from mmsearch.settings import Settings
    from tests.conftest import refuse_storing

    folder = tmp_path / "media"
    folder.mkdir()
    film = write_video(folder / "film.mp4", lambda t: PHOTOS[1], [i / 2 for i in range(12)], sound(1)[: 6 * RATE])
    with_audio = Settings(catalog=tmp_path / "catalog", model=clip_spec, model_config_dirs=[CONFIG_DIR], audio=True,
                          audio_model=f"clap:{tiny_clap_dir}", device=DEVICE, decode_workers=1)
    with Engine.open(with_audio) as e:
        assert e.index([folder]).added == 1
    os.utime(film, ns=(film.stat().st_atime_ns, film.stat().st_mtime_ns + 10**9))  # waits for audio
    Image.fromarray(PHOTOS[3]).save(folder / "zz.png")  # a photo the database refuses
    refuse_storing(monkeypatch, "zz.png")
    with Engine.open(with_audio.model_copy(update={"audio": False})) as e:
        report = e.index([folder])
    assert (report.waiting_for_audio, report.added, report.failed) == (1, 0, 1), report
    assert "could not be stored" in dict(report.failures)[str(folder / "zz.png")]


def test_a_video_file_is_a_query(engine: Engine, media: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A clip that is not indexed finds the video it comes from, by its frames and its sound track,
    on every face; without `to`, videos; a file that is no video is refused with its reason."""
    import json

    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from mmsearch import BadInput
    from mmsearch.api.app import create_app
    from mmsearch.cli import app

    clip = write_video(tmp_path / "clip.mp4", lambda t: PHOTOS[2], [i / 2 for i in range(8)],
                       sound(3)[: 4 * RATE])  # the story's photo from 16 s to 24 s, and its sound at 24 s
    frames_only = engine.runner.embed_video_frames(clip.read_bytes())
    story = engine.vectors([_item(engine, media / "story.mp4")])["clip.video"]
    shown = story.vectors[(story.start <= 20.0) & (20.0 < story.end)][0]
    assert float(frames_only @ shown) / float(np.linalg.norm(shown)) > 0.99  # the same picture, embedded alike
    hits = engine.search(Query(video=clip.read_bytes(), k=3)).results
    assert {h.modality for h in hits} == {"video"} and hits[0].path == str(media / "story.mp4")
    assert 16.0 <= hits[0].start < 30.0
    photos = engine.search(Query(video=clip.read_bytes(), to="image", k=1)).results
    assert photos and photos[0].modality == "image"
    with pytest.raises(BadInput, match="query video: no video stream"):
        engine.search(Query(video=(media / "bark.m4a").read_bytes()))
    with pytest.raises(BadInput, match="query video"):
        engine.search(Query(video=b"not a video at all" * 100))
    with TestClient(create_app(engine, read_only=True)) as client:
        r = client.post("/search", files={"video": ("clip.mp4", clip.read_bytes(), "video/mp4")}, data={"k": "3"})
        assert r.status_code == 200 and [h["id"] for h in r.json()["results"]] == [h.id for h in hits]
        bad = client.post("/search", files={"video": ("x.mp4", b"garbage" * 50, "video/mp4")})
        assert bad.status_code == 400 and "query video" in bad.text
    monkeypatch.setenv("MMSEARCH_MODEL_CONFIG_DIRS", json.dumps([str(CONFIG_DIR)]))
    monkeypatch.setenv("MMSEARCH_DEVICE", "cpu")
    out = CliRunner().invoke(app, ["search", "--video", str(clip), "-k", "3", "--json",
                                   "--catalog", str(engine.catalog.root)])
    assert out.exit_code == 0, out.output
    assert [h["id"] for h in json.loads(out.stdout)["results"]] == [h.id for h in hits]
    term = CliRunner().invoke(app, ["search", "a dog", "--add", str(clip), "--catalog", str(engine.catalog.root)])
    assert term.exit_code == 2 and "give it as --video" in term.output  # was taken as the text "…/clip.mp4"
