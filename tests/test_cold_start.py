"""A cold command pays only for what it needs: no model for commands that read the catalog, the
text tower alone for a text query, inputs refused before any model loads, light imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from mmsearch.cli import app
from tests.conftest import CONFIG_DIR, REPO, TUXPAINT

HEAVY = ("torch", "open_clip", "torchvision", "transformers")


@pytest.fixture
def catalog(tmp_path: Path, photo_dir: Path, clip_spec: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A catalog of the photo folder, indexed with the tiny checkpoint."""
    monkeypatch.setenv("MMSEARCH_MODEL_CONFIG_DIRS", json.dumps([str(CONFIG_DIR)]))
    monkeypatch.setenv("MMSEARCH_DEVICE", "cpu")
    monkeypatch.setenv("MMSEARCH_AUDIO", "false")
    cat = tmp_path / "cat"
    r = CliRunner().invoke(app, ["index", str(photo_dir), "--model", clip_spec, "--catalog", str(cat)])
    assert r.exit_code == 0, r.output
    return cat


@pytest.fixture
def no_models(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Any model load fails the test (and is recorded)."""
    loads: list[str] = []

    def refuse(spec: str, *a: Any, **k: Any) -> Any:
        loads.append(spec)
        raise AssertionError(f"a model was loaded: {spec}")

    monkeypatch.setattr("mmsearch.encoders.encoder_set.load_encoder", refuse)
    return loads


def _cli(catalog: Path, *args: str) -> Any:
    return CliRunner().invoke(app, [*args, "--catalog", str(catalog)])


def test_reading_commands_load_no_model(catalog: Path, photo_dir: Path, no_models: list[str]) -> None:
    img = sorted(photo_dir.rglob("*.jpg"))[0]
    r = _cli(catalog, "lookup", str(img), "--json")
    assert r.exit_code == 0, r.output
    item = json.loads(r.stdout)[str(img)][0]
    for args in (["stats", "--json"], ["similar", str(item), "--json", "-k", "3"], ["check", "--json"],
                 ["similar", str(item), "--to", "text", "--json"]):
        r = _cli(catalog, *args)
        assert r.exit_code == 0, (args, r.output)
    assert len(json.loads(_cli(catalog, "similar", str(item), "--json", "-k", "3").stdout)["results"]) == 3
    r = _cli(catalog, "delete", str(item), "--json")
    assert r.exit_code == 0 and json.loads(r.stdout) == {"deleted": [item]}
    r = _cli(catalog, "delete", "--path", str(photo_dir / "notes" / "dogs.txt"))
    assert r.exit_code == 0, r.output
    assert no_models == []


def test_refused_inputs_load_no_model(catalog: Path, tmp_path: Path, no_models: list[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    r = _cli(catalog, "search", "--image", str(bad))
    assert r.exit_code == 2 and "--image: not a readable image" in r.output
    noise = tmp_path / "noise.wav"
    noise.write_bytes(b"RIFF....WAVEfmt garbage")
    r = _cli(catalog, "search", "a dog", "--audio", str(noise))
    assert r.exit_code == 2 and "--audio: cannot decode audio" in r.output
    r = _cli(catalog, "search", "a dog", "--path", "photos[z-a]/*")
    assert r.exit_code == 2 and "bad path pattern" in r.output
    r = _cli(catalog, "search", "a dog", "--to", "audio")  # no sounds in this catalog: refused, and why
    assert r.exit_code == 2 and "no sounds are indexed" in r.output and "--no-audio" in r.output
    sound = sorted((TUXPAINT / "audio").glob("*.ogg"))[0]
    monkeypatch.setenv("MMSEARCH_AUDIO", "true")  # audio on, as by default: still no model
    r = _cli(catalog, "search", "--audio", str(sound))  # not the CLAP download the issue saw
    assert r.exit_code == 2 and "no sounds are indexed" in r.output
    r = _cli(catalog, "search")
    assert r.exit_code == 2 and "empty query" in r.output
    assert no_models == []


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_text_query_reads_only_the_text_tower(catalog: Path, photo_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                              runtime: str, tmp_path: Path) -> None:
    from mmsearch.encoders import encoder_set
    from mmsearch.encoders.cpu_runtime import onnx_available

    if runtime == "onnx" and not onnx_available():
        pytest.skip("the CPU runtime is not installed")
    monkeypatch.setenv("MMSEARCH_RUNTIME", runtime)
    monkeypatch.setenv("MMSEARCH_CACHE_DIR", str(tmp_path / "cache"))  # exports made here, not reused
    built: list[Any] = []
    real = encoder_set.load_encoder

    def spy(spec: str, *a: Any, **k: Any) -> Any:
        built.append(real(spec, *a, **k))
        return built[-1]

    monkeypatch.setattr(encoder_set, "load_encoder", spy)
    r = _cli(catalog, "search", "a dog on the beach", "--to", "image", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["results"], r.output
    (enc,) = built
    torch_encoder = enc.base if runtime == "onnx" else enc
    assert torch_encoder.loaded_towers() == {"text"}  # the ONNX export of the text tower read it, no more
    assert all(p.is_meta for p in torch_encoder.module.visual.parameters())  # never read nor allocated
    if runtime == "onnx":
        assert set(enc._runners) == {"text"}
    img = sorted(photo_dir.rglob("*.jpg"))[2]
    r = _cli(catalog, "search", "--image", str(img), "--json", "-k", "1")
    assert json.loads(r.stdout)["results"][0]["path"] == str(img)
    torch_encoder = built[-1].base if runtime == "onnx" else built[-1]
    assert torch_encoder.loaded_towers() == {"image"}


def test_lazy_towers_give_the_same_vectors_as_a_whole_model(clip_spec: str, tiny_clip_checkpoint: Path) -> None:
    import numpy as np
    import open_clip
    import torch

    from mmsearch.encoders import load_encoder
    from mmsearch.settings import Settings

    enc = load_encoder(clip_spec, Settings(model_config_dirs=[CONFIG_DIR], device="cpu", runtime="torch"))
    assert enc.loaded_towers() == set() and enc.dim == 32
    ref = open_clip.create_model("mmtest-tiny", pretrained=str(tiny_clip_checkpoint)).eval()
    with torch.inference_mode():
        want = ref.encode_text(open_clip.get_tokenizer("mmtest-tiny")(["a dog", "two cats"]), normalize=True)
    np.testing.assert_allclose(enc.encode("text", ["a dog", "two cats"]), want.numpy(), atol=1e-5)
    assert enc.loaded_towers() == {"text"}
    assert enc.model is enc._module and enc.loaded_towers() == {"image", "text"}  # .model: everything


def test_imports_stay_light() -> None:
    """``import mmsearch`` and the CLI module import nothing heavy (``--help``); the engine (what
    stats, similar, lookup need) never imports torch (only an encoder built does), nor faiss or
    Alembic (loaded with an index, or by a writer that migrates)."""
    code = ("import json, sys, mmsearch, mmsearch.cli; a = [m for m in %r if m in sys.modules]; "
            "import mmsearch.engine, mmsearch.search.runner; b = [m for m in %r if m in sys.modules]; "
            "print(json.dumps([a, b]))") % (HEAVY + ("sqlalchemy", "faiss"), HEAVY + ("faiss", "alembic"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    light, engine = json.loads(out.stdout)
    assert light == [] and engine == []


@pytest.mark.slow
def test_stats_and_similar_in_a_fresh_process_never_import_torch(catalog: Path, photo_dir: Path) -> None:
    img = sorted(photo_dir.rglob("*.jpg"))[0]
    item = json.loads(_cli(catalog, "lookup", str(img), "--json").stdout)[str(img)][0]
    code = ("import sys; from mmsearch.cli import app\n"
            f"for args in (['stats'], ['similar', '{item}'], ['check'], ['lookup', {str(img)!r}]):\n"
            "    try: app(args + ['--catalog', %r])\n"
            "    except SystemExit as e: assert not e.code, (args, e.code)\n"
            "print('torch' in sys.modules)") % str(catalog)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin",
                              "MMSEARCH_MODEL_CONFIG_DIRS": json.dumps([str(CONFIG_DIR)])})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_cached_exports_answer_queries_without_torch(catalog: Path, photo_dir: Path) -> None:
    """A fresh process, the exports cached (the index made them): text and image queries import
    neither torch, open_clip, torchvision nor transformers, and rank as torch does."""
    img = sorted(photo_dir.rglob("*.jpg"))[3]
    queries = (["search", "a dog on the beach", "-k", "8"], ["search", "--image", str(img), "-k", "8"])
    code = ("import json, sys; from mmsearch.cli import app\n"
            f"for args in {[list(q) for q in queries]!r}:\n"
            "    try: app(args + ['--json', '--catalog', %r])\n"
            "    except SystemExit as e: assert not e.code, (args, e.code)\n"
            "print(json.dumps([m for m in %r if m in sys.modules]))") % (str(catalog), HEAVY)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO), "MMSEARCH_RUNTIME": "auto"})
    assert out.returncode == 0, out.stderr
    *answers, heavy = out.stdout.strip().splitlines()
    assert json.loads(heavy) == []
    for query, answer in zip(queries, answers):
        got = json.loads(answer)["results"]
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MMSEARCH_RUNTIME", "torch")
            want = json.loads(_cli(catalog, *query, "--json").stdout)["results"]
        assert len(got) == 8 and [r["id"] for r in got] == [r["id"] for r in want]
        np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in want], atol=1e-4)
    assert json.loads(answers[1])["results"][0]["path"] == str(img)
