"""Ingest through Ray (mmsearch/indexer/ray_ingest.py) on a real local Ray cluster: the same
catalog as a local ingest, an actor that dies has its batch retried, a killed driver resumes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mmsearch import Engine
from mmsearch.indexer.ray_ingest import EmbedActor, RayIngest
from tests.conftest import CONFIG_DIR, TUXPAINT, files_committed, linked_photos


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """One local Ray cluster on 127.0.0.1 for every test here (Ray takes seconds to start), with
    the CPUs this machine may use and a small object store. Yields its address."""
    import ray

    from mmsearch.cpus import available_cpus

    ray.init(num_cpus=available_cpus(), include_dashboard=False, object_store_memory=128 * 1024**2,
             _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture
def tux_settings(make_settings, tiny_clap_dir: Path):  # type: ignore[no-untyped-def]
    """Images, sounds and descriptions (manifest.csv) with the tiny CLIP and CLAP."""
    return lambda **kw: make_settings(audio=True, audio_model=f"clap:{tiny_clap_dir}", **kw)


def snapshot(settings: Any) -> tuple[dict[str, tuple], dict[tuple, np.ndarray]]:
    """A catalog as comparable data: each file's status and reason, each vector by where it comes
    from (path, modality, ordinal, collection, start), whatever ids it was given."""
    db = Path(settings.catalog) / "catalog.db"
    with sqlite3.connect(db) as conn:
        files = {p: (s, e) for p, s, e in conn.execute("select path, status, error from files")}
        rows = conn.execute("select e.item_id, f.path, i.modality, i.ordinal, i.text, i.ref_path, e.collection, "
                            "e.start_s from embeddings e join items i on i.id = e.item_id "
                            "join files f on f.id = i.file_id").fetchall()
    with Engine.open(settings, create=False) as engine:
        got = engine.vectors(sorted({r[0] for r in rows}))
    by_id: dict[tuple[int, str, float | None], np.ndarray] = {}
    for collection, v in got.items():
        for item_id, start, vec in zip(v.item_ids.tolist(), v.start.tolist(), v.vectors):
            by_id[(item_id, collection, None if start != start else start)] = np.asarray(vec, np.float32)
    vectors = {}
    for item_id, path, modality, ordinal, text, ref, collection, start in rows:
        key = (path, modality, ordinal, text, ref, collection, start)
        assert key not in vectors, f"duplicate vector {key}"
        vectors[key] = by_id[(item_id, collection, start)]
    return files, vectors


def assert_same_catalog(a: Any, b: Any) -> set[str]:
    """Same files, failures, items and vectors (cosine >= 0.9999); returns the collections."""
    files_a, vec_a = snapshot(a)
    files_b, vec_b = snapshot(b)
    assert files_a == files_b
    assert sorted(vec_a) == sorted(vec_b)
    cos = [float(vec_a[k] @ vec_b[k] / np.linalg.norm(vec_a[k]) / np.linalg.norm(vec_b[k])) for k in vec_a]
    assert min(cos) >= 0.9999
    return {k[5] for k in vec_a}


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Tux Paint's pictures, sounds and descriptions, and a folder with a video (frames and sound
    track) and files that cannot be indexed."""
    from tests.video_media import RATE, photos, sound, write_video

    bad = tmp_path_factory.mktemp("more")
    pictures = photos(3)
    write_video(bad / "clip.mp4", lambda t: pictures[int(t // 2)], [i / 2 for i in range(12)], sound(1)[: 6 * RATE])
    (bad / "cut.mp4").write_bytes((bad / "clip.mp4").read_bytes()[:2000])
    (bad / "truncated.png").write_bytes((TUXPAINT / "images" / "animals__birds__crow.png").read_bytes()[:300])
    (bad / "noise.ogg").write_bytes(b"OggS" + bytes(range(256)) * 4)
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "note.txt").write_text("a note beside the broken files")
    return [TUXPAINT, bad]


@pytest.fixture(scope="module")
def local_tux(tmp_path_factory: pytest.TempPathFactory, clip_spec: str, tiny_clap_dir: Path,
              media: list[Path]) -> Any:
    """The media indexed the local way, once for the tests below to compare with."""
    from mmsearch.settings import Settings

    settings = Settings(catalog=tmp_path_factory.mktemp("local") / "catalog", model=clip_spec,
                        audio_model=f"clap:{tiny_clap_dir}", model_config_dirs=[CONFIG_DIR], batch_size=16,
                        decode_workers=2, device="cpu")
    with Engine.open(settings) as engine:
        report = engine.index(media)
    assert report.added > 200 and report.failed == 4
    return settings, report


def test_ray_ingest_matches_a_local_one(ray_cluster: str, local_tux: Any, tux_settings,  # type: ignore[no-untyped-def]
                                       media: list[Path]) -> None:
    local, expected = local_tux
    settings = tux_settings(ray="auto", ray_actors=1)
    with Engine.open(settings) as engine:
        report = engine.index(media)
        assert (report.added, report.failed, report.items) == (expected.added, expected.failed, expected.items)
        assert sorted(report.failures) == sorted(expected.failures)
        assert engine.index(media).unchanged == report.added + report.failed  # incremental, as locally
    assert assert_same_catalog(local, settings) == {"clip.image", "clip.text", "clap.audio", "clap.text",
                                                    "clip.video", "clap.video"}
    clip = media[1] / "clip.mp4"
    was = clip.stat()
    os.utime(clip, ns=(was.st_atime_ns, was.st_mtime_ns + 10**9))  # changed, it seems
    try:  # with audio off, as locally: it waits for a run with audio, its sound track kept
        with Engine.open(settings.model_copy(update={"audio": False})) as engine:
            again = engine.index(media)
            assert (again.waiting_for_audio, again.updated, again.failed) == (1, 0, 0), again
    finally:
        os.utime(clip, ns=(was.st_atime_ns, was.st_mtime_ns))
    assert assert_same_catalog(local, settings)


class DiesOnce(EmbedActor):
    """An encoder actor whose process exits on its second batch, once in the run (a marker file
    says it happened), as a machine lost mid-batch would."""

    marker: str = ""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.batches == 1 and not os.path.exists(self.marker):
            Path(self.marker).touch()
            os._exit(1)
        return super().__call__(batch)


def test_an_actor_that_dies_has_its_batch_retried(ray_cluster: str, local_tux: Any, tux_settings,  # type: ignore[no-untyped-def]
                                                  media: list[Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this file
    marker = tmp_path / "died"
    dies = type("DiesHere", (DiesOnce,), {"marker": str(marker), "__module__": DiesOnce.__module__})
    monkeypatch.setattr(RayIngest, "actor", dies)
    settings = tux_settings(ray="auto", ray_actors=1, ray_batch_size=24)
    with Engine.open(settings) as engine:
        engine.index(media)
    assert marker.exists(), "the actor never died: nothing was tested"
    assert_same_catalog(local_tux[0], settings)


def test_a_killed_driver_resumes(ray_cluster: str, tmp_path: Path, clip_spec: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "many"
    linked_photos(folder, 96)
    catalog = tmp_path / "cat"
    env = {**os.environ, "MMSEARCH_MODEL_CONFIG_DIRS": json.dumps([str(CONFIG_DIR)]), "MMSEARCH_AUDIO": "false",
           "MMSEARCH_COMMIT_EVERY": "8", "MMSEARCH_BATCH_SIZE": "8", "MMSEARCH_DEVICE": "cpu"}
    cmd = [sys.executable, "-m", "mmsearch.cli", "index", str(folder), "--catalog", str(catalog),
           "--model", clip_spec, "--follow-links", "--json", "--ray", ray_cluster]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    db = catalog / "catalog.db"
    files_committed(proc, db, 16, timeout=180)
    assert proc.poll() is None, f"ingest ended before it could be killed: {proc.communicate()[1][-2000:]!r}"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    with sqlite3.connect(db) as conn:
        assert 16 <= conn.execute("select count(*) from files").fetchone()[0] < 96
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["failed"] == 0 and report["added"] + report["unchanged"] == 96 and report["unchanged"] >= 16
    clean = make_settings(catalog=tmp_path / "clean", follow_links=True)
    with Engine.open(clean) as engine:
        engine.index([folder])
    assert_same_catalog(clean, make_settings(catalog=catalog, follow_links=True))


def test_without_the_extra_ray_says_how_to_install_it(photo_dir: Path, clip_spec: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from mmsearch.cli import app

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when not installed
    monkeypatch.setenv("MMSEARCH_MODEL_CONFIG_DIRS", json.dumps([str(CONFIG_DIR)]))
    r = CliRunner().invoke(app, ["index", str(photo_dir), "--catalog", str(tmp_path / "c"), "--model", clip_spec,
                                 "--no-audio", "--ray", "auto"])
    assert r.exit_code == 2 and "pip install 'mmsearch[ray]'" in r.output


def test_a_pool_that_leaves_decoding_no_cpu_is_refused(make_settings) -> None:  # type: ignore[no-untyped-def]
    from mmsearch.errors import BadInput
    from mmsearch.indexer.ray_ingest import pool_size

    assert pool_size({"CPU": 2.0}, make_settings()) == (0, 2.0, 1)  # one actor, a CPU left to decode
    assert pool_size({"CPU": 16.0, "GPU": 4.0}, make_settings(device="auto")) == (4, 16.0, 4)
    with pytest.raises(BadInput, match="need 3 CPUs"):
        pool_size({"CPU": 2.0}, make_settings(ray_actors=2))
    with pytest.raises(BadInput, match="GPU each"):
        pool_size({"CPU": 16.0, "GPU": 1.0}, make_settings(device="auto", ray_actors=2))


def test_decode_tasks_prepare_items_as_the_encoders_do(tux_settings) -> None:  # type: ignore[no-untyped-def]
    """The actors only run forward passes: a decode task ships each unit prepared for every space
    it goes to (resize and crop, log-mel features, text), equal to the encoder's own ``prepare``."""
    import pickle

    from mmsearch.indexer.pipeline import _Pending, decode_file
    from mmsearch.indexer.ray_ingest import DecodePlan, decode_batch, encoder_facts, preparers
    from mmsearch.indexer.scan import scan

    settings = tux_settings()
    with Engine.open(settings) as engine:
        encoders, spaces = engine.encoders, ["clip", "clap"]
        targets = {"image": ["clip"], "text": ["clip", "clap"], "audio": ["clap"]}
        plan = DecodePlan(settings, None, targets, {s: encoder_facts(encoders.get(s)) for s in spaces},
                          preparers(encoders, spaces))
        assert {(s, m) for s, m in plan.preparers} == {("clip", "image"), ("clip", "text"), ("clap", "audio"),
                                                       ("clap", "text")}
        found = sorted(scan(TUXPAINT), key=lambda f: f.path)
        files = [next(f for f in found if f.kind == kind) for kind in ("image", "audio")]
        plan = pickle.loads(pickle.dumps(plan))  # as Ray ships it to a task
        rows = [pickle.loads(r) for r in decode_batch(
            {"file": np.array([pickle.dumps((i, f)) for i, f in enumerate(files)], dtype=object)}, plan)["row"]]
        units = [r for r in rows if r[0] == "unit"]
        assert {r[3].modality for r in units} == {"image", "audio"}
        for _, idx, seq, unit, unit_spaces, prepared in units:
            assert unit.payload is None and set(prepared) == set(unit_spaces)
            local = list(decode_file(_Pending(files[idx], 0, False), settings, encoders, None, targets))[seq]
            for space, got in prepared.items():
                want = encoders.get(space).prepare(local.modality, local.payload)
                if local.modality == "audio":  # log-mel features and the "longer" flag
                    assert np.array_equal(got.input_features, want.input_features)
                    assert got.is_longer == want.is_longer
                else:  # uint8 pixels after resize and crop (numpy from the recipe, or torch)
                    assert np.array_equal(np.asarray(got), np.asarray(want))
                vectors = encoders.get(space).encode(local.modality, [got, want])
                assert np.allclose(vectors[0], vectors[1], atol=1e-6)


def test_rays_own_lines_stay_off_the_terminal(capfd: pytest.CaptureFixture[str]) -> None:
    """What C++ writes to fd 2 during Ray's start is held and written out without Ray's notice
    about its log level; Ray Data's console notes are raised to errors for a run, then restored."""
    import logging

    from mmsearch.indexer.ray_ingest import _held_stderr, quiet_console

    with _held_stderr(drop=("Set ray log level",)):
        os.write(2, b"[I logging.cc:303] Set ray log level from environment variable to 3\n")
        os.write(2, b"a real problem\n")
    assert capfd.readouterr().err == "a real problem\n"
    console = logging.StreamHandler(sys.stderr)
    logger = logging.getLogger("mmsearch-test-ray-data")
    logger.addHandler(console)
    logger.setLevel(logging.INFO)
    try:
        with quiet_console("mmsearch-test-ray-data"):
            logger.info("Dataset execution finished")
            logger.error("a failure")
        logger.info("after the run")
    finally:
        logger.removeHandler(console)
    assert capfd.readouterr().err == "a failure\nafter the run\n"
