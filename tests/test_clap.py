"""ClapEncoder against the transformers reference forward, on a tiny random CLAP saved to disk."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from mmsearch.encoders import Encoder, load_encoder
from mmsearch.encoders.clap import ClapEncoder, canonical_spec, is_local_name
from mmsearch.encoders.base import Spec
from mmsearch.errors import ModelUnavailable
from mmsearch.media.audio import iter_windows
from mmsearch.settings import DEFAULT_AUDIO_MODEL, Settings

sys.path.insert(0, str(Path(__file__).parent))
from tiny_clap import DIM, make_tiny_clap  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TUXPAINT = DATA / "tuxpaint"
FAST_FAIL_S = 10.0


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_clap(tmp_path_factory.mktemp("tiny-clap"))


@pytest.fixture(scope="module")
def enc(tiny_dir: Path) -> ClapEncoder:
    e = load_encoder("clap:" + str(tiny_dir), Settings(device="cpu", batch_size=3, runtime="torch"))
    assert isinstance(e, ClapEncoder)
    return e


def _reference_audio(e: ClapEncoder, windows: list[np.ndarray]) -> np.ndarray:
    inputs = e.processor(audio=windows, sampling_rate=e.sample_rate, return_tensors="pt")
    with torch.inference_mode():
        out = e.model.get_audio_features(**inputs)
    v = (out if isinstance(out, torch.Tensor) else out.pooler_output).numpy()
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _reference_text(e: ClapEncoder, texts: list[str]) -> np.ndarray:
    inputs = e.processor(text=texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        out = e.model.get_text_features(**inputs)
    v = (out if isinstance(out, torch.Tensor) else out.pooler_output).numpy()
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _real_windows(e: ClapEncoder, n_files: int = 6) -> list[np.ndarray]:
    """Windows of real sounds: short clips (repeat-padded by the extractor) of varied length."""
    with open(TUXPAINT / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:: max(1, 108 // n_files)][:n_files]
    windows = [w.samples for r in rows for w in iter_windows(TUXPAINT / r["audio"], e.sample_rate, e.window_seconds)]
    rng = np.random.default_rng(1)
    full = (0.1 * rng.standard_normal(int(e.sample_rate * e.window_seconds))).astype(np.float32)
    return windows + [full]


def test_protocol_and_attributes(enc: ClapEncoder, tiny_dir: Path) -> None:
    assert isinstance(enc, Encoder)
    assert enc.spec == "clap:" + str(tiny_dir.resolve())
    assert enc.space == "clap"
    assert enc.modalities == ("audio", "text")
    assert enc.dim == DIM
    assert enc.device == "cpu"
    assert enc.batch_size == 3
    assert enc.sample_rate == 48_000
    assert enc.window_seconds == 10.0


def test_relative_dir_spec_is_recorded_absolute(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tiny_dir.parent)
    e = load_encoder(f"clap:./{tiny_dir.name}", Settings(device="cpu"))
    assert e.spec == "clap:" + str(tiny_dir.resolve())
    assert Path(e.spec.partition(":")[2]).is_absolute()


def test_hub_ids_and_paths_are_told_apart(tmp_path: Path) -> None:
    assert not is_local_name("laion/clap-htsat-unfused")
    assert is_local_name(str(tmp_path))
    assert is_local_name("./models/clap") and is_local_name("~/clap") and is_local_name("a/b/c")
    assert canonical_spec(Spec("clap", "laion/clap-htsat-unfused", None)) == Spec(
        "clap", "laion/clap-htsat-unfused", None)


def test_audio_matches_reference_forward(enc: ClapEncoder) -> None:
    windows = _real_windows(enc)
    assert len(windows) >= 6 and {len(w) for w in windows} != {len(windows[0])}
    got = enc.encode("audio", [enc.prepare("audio", w) for w in windows])
    assert got.dtype == np.float32 and got.shape == (len(windows), DIM)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, _reference_audio(enc, windows), atol=1e-5)
    # Distinct sounds must not collapse onto one vector (a constant output would pass the rest).
    assert np.abs(got[0] - got[-1]).max() > 1e-3


def test_text_matches_reference_forward(enc: ClapEncoder) -> None:
    texts = ["a dog barks", "the sound of rain falling on a tin roof at night", "cat", "a piano melody"]
    got = enc.encode("text", [enc.prepare("text", t) for t in texts])
    assert got.dtype == np.float32 and got.shape == (len(texts), DIM)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, _reference_text(enc, texts), atol=1e-5)
    assert np.abs(got[0] - got[1]).max() > 1e-3


def test_batch_equals_single(enc: ClapEncoder) -> None:
    windows = _real_windows(enc, n_files=4)
    prepared = [enc.prepare("audio", w) for w in windows]
    batched = enc.encode("audio", prepared)  # batch_size 3: several chunks
    single = np.concatenate([enc.encode("audio", [p]) for p in prepared])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    texts = ["short", "a much longer sentence about birds singing in the morning", "cow", "x y z", "water"]
    batched_t = enc.encode("text", [enc.prepare("text", t) for t in texts])
    single_t = np.concatenate([enc.encode("text", [t]) for t in texts])
    np.testing.assert_allclose(batched_t, single_t, atol=1e-5)


def test_prepare_is_thread_safe_and_deterministic(enc: ClapEncoder) -> None:
    windows = _real_windows(enc, n_files=3) * 3
    serial = [enc.prepare("audio", w) for w in windows]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda w: enc.prepare("audio", w), windows))
    for a, b in zip(serial, threaded):
        assert a.input_features.dtype == np.float32
        np.testing.assert_array_equal(a.input_features, b.input_features)
        assert a.is_longer is b.is_longer is False


def test_long_text_is_truncated_not_crashing(enc: ClapEncoder) -> None:
    v = enc.encode("text", ["dog " * 500])
    assert v.shape == (1, DIM) and np.isfinite(v).all()


def test_empty_and_wrong_modality(enc: ClapEncoder) -> None:
    assert enc.encode("audio", []).shape == (0, DIM)
    with pytest.raises(ValueError):
        enc.prepare("image", object())
    with pytest.raises(ValueError):
        enc.encode("image", [object()])
    with pytest.raises(ValueError):
        enc.prepare("audio", np.zeros(0, np.float32))


def _fails_fast(spec: str, settings: Settings | None = None) -> str:
    t = time.monotonic()
    with pytest.raises(ModelUnavailable) as exc:
        load_encoder(spec, settings or Settings(device="cpu"))
    assert time.monotonic() - t < FAST_FAIL_S
    return str(exc.value)


def _assert_help(msg: str) -> None:
    assert "--audio-model clap:/path/to/dir" in msg
    assert "HF_HUB_OFFLINE=1" in msg


def test_missing_local_dir_fails_fast(tmp_path: Path) -> None:
    msg = _fails_fast("clap:" + str(tmp_path / "no-such-model"))
    assert "no such directory" in msg
    _assert_help(msg)


def test_dir_without_model_fails_fast(tmp_path: Path) -> None:
    (tmp_path / "README").write_text("not a model")
    msg = _fails_fast("clap:" + str(tmp_path))
    assert "save_pretrained" in msg and str(tmp_path) in msg


def test_unknown_hub_id_offline_fails_fast() -> None:
    msg = _fails_fast("clap:mmsearch-tests/no-such-clap-model")
    _assert_help(msg)


def test_default_model_without_weights_fails_fast() -> None:
    from mmsearch.encoders.clap import _in_hf_cache

    if _in_hf_cache(DEFAULT_AUDIO_MODEL.partition(":")[2]):
        pytest.skip("the real CLAP weights are in the HF cache here")
    _assert_help(_fails_fast(DEFAULT_AUDIO_MODEL))


def test_hf_hub_offline_fails_without_touching_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    msg = _fails_fast("clap:mmsearch-tests/no-such-clap-model")
    assert "HF_HUB_OFFLINE is set" in msg


def test_silent_hub_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub that accepts connections and never answers costs the check timeout, not retries."""
    from huggingface_hub import constants

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)  # the kernel accepts; nobody ever reads or answers
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        msg = _fails_fast("clap:mmsearch-tests/no-such-clap-model")
    assert "unreachable" in msg
    _assert_help(msg)


def test_populated_hf_cache_loads_offline(tiny_dir: Path, tmp_path: Path) -> None:
    """The route the help text offers: a hub-shaped cache plus HF_HUB_OFFLINE=1."""
    repo = tmp_path / "hub" / "models--mmsearch-tests--tiny-clap"
    commit = "0" * 40
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in tiny_dir.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    code = textwrap.dedent("""
        from mmsearch.encoders import load_encoder
        from mmsearch.settings import Settings
        e = load_encoder("clap:mmsearch-tests/tiny-clap", Settings(device="cpu"))
        print("SPEC", e.spec, e.dim, e.encode("text", ["a dog"]).shape)
    """)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                       cwd=root)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"SPEC clap:mmsearch-tests/tiny-clap {DIM} (1, {DIM})" in r.stdout


def test_loading_draws_no_progress_bar(tiny_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """transformers' "Loading weights" bar reached `index --json` and piped runs; a load from disk
    draws none now, and leaves transformers' own setting as it was."""
    from transformers.utils import logging as hf_logging

    capfd.readouterr()
    load_encoder("clap:" + str(tiny_dir), Settings(device="cpu", runtime="torch"))
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "%|" not in err, err
    assert hf_logging.is_progress_bar_enabled()
