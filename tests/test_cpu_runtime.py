"""The CPU runtime: towers exported to ONNX once, checked against torch, cached, interchangeable."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from PIL import Image
from typer.testing import CliRunner

from mmsearch import Engine, Query
from mmsearch.cli import app
from mmsearch.encoders import cpu_runtime, load_encoder
from mmsearch.encoders.clap import ClapEncoder
from mmsearch.encoders.clip import OpenClipEncoder
from mmsearch.encoders.cpu_runtime import OnnxEncoder
from mmsearch.settings import Settings
from tests.conftest import CONFIG_DIR, flickr_images

TEXTS = ["dog", "a dog running on the beach at sunset with a red ball", "word " * 100, ""]


def _settings(cache: Path, **kw: Any) -> Settings:
    values: dict[str, Any] = dict(model_config_dirs=[CONFIG_DIR], device="cpu", batch_size=4, cache_dir=cache)
    values.update(kw)
    return Settings(**values)


def _images(n: int) -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in flickr_images(n)]


def _both(enc: Any, modality: str, items: list[Any]) -> np.ndarray:
    return enc.encode(modality, [enc.prepare(modality, x) for x in items])


def _min_cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(a * b, axis=1)))


@pytest.fixture
def export_spy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records each real export (by modality) while letting it run."""
    calls: list[str] = []
    real = cpu_runtime.export_tower

    def spy(base: Any, tower: cpu_runtime.Tower, folder: Path) -> None:
        calls.append(tower.modality)
        real(base, tower, folder)

    monkeypatch.setattr(cpu_runtime, "export_tower", spy)
    return calls


def test_export_matches_torch_and_is_cached(clip_spec: str, tmp_path: Path, export_spy: list[str]) -> None:
    settings = _settings(tmp_path / "cache", runtime="onnx")
    enc = load_encoder(clip_spec, settings)
    ref = load_encoder(clip_spec, settings.model_copy(update={"runtime": "torch"}))
    assert isinstance(enc, OnnxEncoder) and isinstance(ref, OpenClipEncoder)
    assert (enc.spec, enc.space, enc.dim, enc.modalities) == (ref.spec, ref.space, ref.dim, ref.modalities)

    images = _images(6)  # batch_size 4: two runs of the exported graph, the second of 2
    got_img, got_txt = _both(enc, "image", images), _both(enc, "text", TEXTS)
    assert export_spy == ["image", "text"]
    assert got_img.dtype == np.float32 and got_img.shape == (6, enc.dim)
    np.testing.assert_allclose(np.linalg.norm(got_txt, axis=1), 1.0, atol=1e-5)
    assert _min_cos(got_img, _both(ref, "image", images)) >= cpu_runtime.MIN_COS_FP32
    assert _min_cos(got_txt, _both(ref, "text", TEXTS)) >= cpu_runtime.MIN_COS_FP32
    for one in TEXTS:  # a query is a batch of one, of any length
        assert _min_cos(_both(enc, "text", [one]), _both(ref, "text", [one])) >= cpu_runtime.MIN_COS_FP32

    folders = sorted((tmp_path / "cache" / "onnx").glob("open_clip-*"))
    assert [f.name.split("-")[1] for f in folders] == ["image", "text"]
    for f in folders:
        meta = json.loads((f / "meta.json").read_text())
        assert meta["spec"] == clip_spec and meta["min_cos"] >= cpu_runtime.MIN_COS_FP32
        assert meta["checksum"].startswith("file:")

    # The text tower keeps the trimming: its sequence axis is dynamic, and short texts are fed short.
    graph = onnx.load(str(enc.cache.folder("text") / "model.onnx"), load_external_data=False).graph
    assert [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim] == ["batch", "seq"]
    assert enc._towers["text"].feeds(["a dog"])[0].shape == (1, 4)  # type: ignore[index]

    again = load_encoder(clip_spec, settings)  # another process, say: the cache answers
    np.testing.assert_array_equal(_both(again, "image", images), got_img)
    np.testing.assert_array_equal(_both(again, "text", TEXTS), got_txt)
    assert export_spy == ["image", "text"]
    assert again.image_side == enc.image_side == ref.image_side == 64  # type: ignore[attr-defined]

    # a text tower runs a query on every core; the image tower cuts a batch into one-thread lanes,
    # one per core, with the same vectors bit for bit
    opened = {m: enc.cache._open(enc.cache.folder(m), {"modality": m}) for m in ("image", "text")}
    assert (opened["text"].lanes, opened["image"].lanes) == (1, cpu_runtime.intra_op_threads())
    names, feeds = enc._towers["image"].input_names, enc._towers["image"].feeds(  # type: ignore[union-attr]
        [enc.prepare("image", im) for im in images])
    one = tuple(x[:1] for x in feeds)
    path = enc.cache.folder("image") / "model.onnx"
    whole = cpu_runtime.OrtRunner(path, threads=2)(names, feeds)
    query = cpu_runtime.OrtRunner(path, threads=2, lanes=2)  # a CLI query: one session, every core
    np.testing.assert_array_equal(query(names, one), whole[:1])
    assert set(query._sessions) == {2}
    ingest = cpu_runtime.OrtRunner(path, threads=2, lanes=2)
    ingest.ingesting = True
    np.testing.assert_array_equal(ingest(names, one), whole[:1])
    np.testing.assert_array_equal(ingest(names, feeds), whole)
    assert set(ingest._sessions) == {1}  # an ingest holds one session: a lone row takes a lane
    server = cpu_runtime.OrtRunner(path, threads=2, lanes=2)
    server.ready()  # a server's warm-up: its queries run on every core, ingesting or not
    server.ingesting = True
    np.testing.assert_array_equal(server(names, one), whole[:1])
    assert set(server._sessions) == {2}
    np.testing.assert_array_equal(server(names, feeds), whole)
    assert set(server._sessions) == {1, 2}  # queries and an ingest in one process: both sessions
    # OpenVINO the same way: one stream per lane for batches, the latency model for queries
    vino = cpu_runtime.OpenVinoRunner(path, threads=2, lanes=2)
    vino.ingesting = True
    assert _min_cos(vino(names, feeds), whole) >= cpu_runtime.MIN_COS_FP32
    assert _min_cos(vino(names, one), whole[:1]) >= cpu_runtime.MIN_COS_FP32 and set(vino._compiled) == {2}
    vino.ready()
    assert _min_cos(vino(names, one), whole[:1]) >= cpu_runtime.MIN_COS_FP32 and set(vino._compiled) == {1, 2}
    # an ingest tells the encoder, and its runners take lone rows on a lane
    again.for_ingest()  # type: ignore[attr-defined]
    assert again.runner("image").ingesting is True  # type: ignore[attr-defined,union-attr]


def test_a_new_checkpoint_at_the_same_path_is_exported_again(tmp_path: Path, export_spy: list[str]) -> None:
    import open_clip
    import torch

    open_clip.add_model_config(CONFIG_DIR)
    ckpt = tmp_path / "model.pt"
    spec = f"open_clip:mmtest-tiny@{ckpt}"
    settings = _settings(tmp_path / "cache", runtime="onnx")
    vecs, cached = [], []
    for seed in (1, 2):
        torch.manual_seed(seed)
        torch.save({"state_dict": open_clip.create_model("mmtest-tiny").state_dict()}, ckpt)
        cached.append(OnnxEncoder.from_cache(spec, settings, lambda: None))  # the torch-free path: stale?
        vecs.append(_both(load_encoder(spec, settings), "text", ["a dog"]))
        cached.append(OnnxEncoder.from_cache(spec, settings, lambda: None))
    assert export_spy == ["text", "text"]
    assert [c is not None for c in cached] == [False, True, False, True]  # the old export was never found
    assert _min_cos(vecs[0], vecs[1]) < 0.99
    ref = load_encoder(spec, settings.model_copy(update={"runtime": "torch"}))
    assert _min_cos(vecs[1], _both(ref, "text", ["a dog"])) >= cpu_runtime.MIN_COS_FP32


def test_a_mismatching_export_is_refused_and_torch_runs(clip_spec: str, tmp_path: Path, export_spy: list[str],
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(cpu_runtime, "MIN_COS_FP32", 1.01)  # no export can pass: each is refused
    settings = _settings(tmp_path / "cache", runtime="onnx")
    enc = load_encoder(clip_spec, settings)
    ref = load_encoder(clip_spec, settings.model_copy(update={"runtime": "torch"}))
    with caplog.at_level(logging.WARNING, logger="mmsearch"):
        got = _both(enc, "text", TEXTS)
    np.testing.assert_array_equal(got, _both(ref, "text", TEXTS))  # torch's own vectors
    assert enc.runner("text") is None
    assert "does not match torch (min cosine" in caplog.text and "using torch" in caplog.text
    refused = json.loads(next((tmp_path / "cache" / "onnx").glob("open_clip-text-*/refused.json")).read_text())
    assert "does not match torch" in refused["reason"]

    _both(load_encoder(clip_spec, settings), "text", TEXTS)  # the refusal is remembered: not exported again
    assert export_spy == ["text"]

    monkeypatch.setattr(cpu_runtime, "MIN_COS_FP32", 0.9999)  # say torch or onnxruntime were upgraded:
    monkeypatch.setattr(cpu_runtime, "_versions", lambda: {"torch": "next", "onnxruntime": "next"})
    enc = load_encoder(clip_spec, settings)
    assert enc.runner("text") is not None  # tried again, and kept
    assert export_spy == ["text", "text"]


def test_check_export_measures_the_cosine_to_torch(clip_spec: str, tmp_path: Path) -> None:
    enc = load_encoder(clip_spec, _settings(tmp_path / "cache", runtime="onnx"))
    assert isinstance(enc, OnnxEncoder)
    tower = cpu_runtime.towers(enc.base)["image"]
    rng = np.random.default_rng(0)

    def noise(names: Any, inputs: Any) -> np.ndarray:
        return rng.standard_normal((len(inputs[0]), enc.dim)).astype(np.float32)

    assert cpu_runtime.check_export(enc.base, tower, noise) < 0.9
    run = enc.runner("image")
    assert run is not None and cpu_runtime.check_export(enc.base, tower, run) >= cpu_runtime.MIN_COS_FP32


def test_the_faster_backend_is_measured_once_and_kept(clip_spec: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """With OpenVINO installed, it and ONNX Runtime are timed on the probe batch (after OpenVINO
    passes the check against torch); the faster one (OpenVINO by a clear margin) is recorded and
    used from then on."""
    if not cpu_runtime.openvino_available():
        pytest.skip("OpenVINO is not installed: ONNX Runtime runs every tower")
    settings = _settings(tmp_path / "cache", runtime="onnx")
    enc = load_encoder(clip_spec, settings)
    run = enc.runner("image")
    meta = json.loads((enc.cache.folder("image") / "meta.json").read_text())
    assert meta["openvino_min_cos"] >= cpu_runtime.MIN_COS_FP32
    assert set(meta["backend_ms"]) == {"onnxruntime", "openvino"}
    ms = meta["backend_ms"]
    assert meta["backend"] == ("openvino" if ms["openvino"] < cpu_runtime.OPENVINO_MARGIN * ms["onnxruntime"]
                               else "onnxruntime")
    assert type(run).name == meta["backend"]  # type: ignore[attr-defined]
    enc.runner("text")  # a text tower answers first from nothing: its load time counts too
    text = json.loads((enc.cache.folder("text") / "meta.json").read_text())
    assert text["backend"] == min(text["first_ms"], key=text["first_ms"].get)

    picks: list[str] = []
    monkeypatch.setattr(cpu_runtime.ExportCache, "_pick_backend", lambda *a: picks.append("x"))
    again = load_encoder(clip_spec, settings)
    assert type(again.runner("image")).name == meta["backend"] and picks == []  # type: ignore[attr-defined]

    monkeypatch.setattr(cpu_runtime, "openvino_available", lambda: False)  # uninstalled since: ORT runs it
    assert isinstance(load_encoder(clip_spec, settings).runner("image"), cpu_runtime.OrtRunner)


def test_int8_is_checked_against_fp32(clip_spec: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = _settings(tmp_path / "cache", runtime="onnx", int8=True)
    with caplog.at_level(logging.WARNING, logger="mmsearch"):
        enc = load_encoder(clip_spec, settings)
        got = _both(enc, "image", _images(4))
    ref = load_encoder(clip_spec, settings.model_copy(update={"runtime": "torch"}))
    assert _min_cos(got, _both(ref, "image", _images(4))) >= cpu_runtime.MIN_COS_INT8
    folder = next((tmp_path / "cache" / "onnx").glob("open_clip-image-*"))
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["int8_min_cos"] >= cpu_runtime.MIN_COS_INT8 and (folder / "model.int8.onnx").exists()
    assert "int8 image tower" in caplog.text and "min cosine to fp32" in caplog.text


def test_clap_towers(tiny_clap_dir: Path, tmp_path: Path) -> None:
    settings = _settings(tmp_path / "cache", runtime="onnx", batch_size=2)
    spec = "clap:" + str(tiny_clap_dir)
    enc, ref = load_encoder(spec, settings), load_encoder(spec, settings.model_copy(update={"runtime": "torch"}))
    assert isinstance(enc, OnnxEncoder) and isinstance(ref, ClapEncoder)
    assert (enc.sample_rate, enc.window_seconds) == (ref.sample_rate, ref.window_seconds)  # the base's
    rng = np.random.default_rng(3)
    windows = [(0.1 * rng.standard_normal(int(enc.sample_rate * s))).astype(np.float32) for s in (0.5, 10, 3)]
    assert _min_cos(_both(enc, "audio", windows), _both(ref, "audio", windows)) >= cpu_runtime.MIN_COS_FP32
    assert _min_cos(_both(enc, "text", TEXTS), _both(ref, "text", TEXTS)) >= cpu_runtime.MIN_COS_FP32
    meta = json.loads(next((tmp_path / "cache" / "onnx").glob("clap-audio-*/meta.json")).read_text())
    assert meta["checksum"].startswith("dir:")  # the folder's files, hashed: found again without torch


def test_clap_text_runs_from_the_cache_without_torch(tiny_clap_dir: Path, tmp_path: Path) -> None:
    """Once CLAP's text tower is exported, its tokeniser comes from the cache (the ``tokenizers``
    library, no transformers): the same ids, the same vectors; changed weights are not matched."""
    import shutil

    from safetensors.numpy import load_file, save_file

    folder = tmp_path / "clap"
    shutil.copytree(tiny_clap_dir, folder)
    settings = _settings(tmp_path / "cache", runtime="onnx")
    spec = "clap:" + str(folder)
    texts = [*TEXTS, "Café crème 🐶 &amp; <s> </s> numbers 3.14", "a cow mooing on the farm"]
    want = _both(load_encoder(spec, settings), "text", texts)

    def no_torch() -> Any:
        raise AssertionError("the torch encoder was built")

    light = OnnxEncoder.from_cache(spec, settings, no_torch)
    assert light is not None and (light.dim, light.modalities) == (want.shape[1], ("audio", "text"))
    np.testing.assert_array_equal(_both(light, "text", texts), want)
    np.testing.assert_array_equal(_both(light, "text", texts[:1]), want[:1])  # a query alone

    weights = next(folder.glob("*.safetensors"))
    tensors = load_file(str(weights))
    name = next(k for k in sorted(tensors) if k.startswith("text_model.embeddings"))
    tensors[name] = tensors[name] + 1
    save_file(tensors, str(weights), metadata={"format": "pt"})
    assert OnnxEncoder.from_cache(spec, settings, no_torch) is None  # stale: torch exports it again


@pytest.mark.parametrize("build, query", [("torch", "onnx"), ("onnx", "torch")])
def test_a_catalog_built_with_one_runtime_is_searched_with_the_other(make_settings: Any, photo_dir: Path,
                                                                     build: str, query: str) -> None:
    with Engine.open(make_settings(runtime=build)) as engine:
        assert engine.index([photo_dir]).added == 27
        assert engine.encoders.get("clip").device == "cpu"
    img = sorted(photo_dir.rglob("*.jpg"))[5].read_bytes()
    queries = [Query(text="a dog running on the beach", to="image", k=5), Query(image=img, k=5),
               Query(text="a busy city street", to="text", k=3)]
    hits = {}
    for runtime in (build, query):
        with Engine.open(make_settings(runtime=runtime, model=None), create=False) as engine:
            assert isinstance(engine.encoders.get("clip"), OnnxEncoder if runtime == "onnx" else OpenClipEncoder)
            hits[runtime] = [engine.search(q).results for q in queries]
    for mine, theirs in zip(hits[build], hits[query]):
        assert [h.id for h in mine] == [h.id for h in theirs]
        np.testing.assert_allclose([h.score for h in mine], [h.score for h in theirs], atol=1e-3)
    assert hits[query][1][0].path.endswith(sorted(photo_dir.rglob("*.jpg"))[5].name)


def test_auto_is_onnx_on_a_cpu_and_torch_without_onnxruntime(clip_spec: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    settings = _settings(tmp_path / "cache")
    assert settings.runtime == "auto" and isinstance(load_encoder(clip_spec, settings), OnnxEncoder)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    assert not cpu_runtime.onnx_available()
    assert isinstance(load_encoder(clip_spec, settings), OpenClipEncoder)
    with caplog.at_level(logging.WARNING, logger="mmsearch"):
        enc = load_encoder(clip_spec, settings.model_copy(update={"runtime": "onnx"}))
    assert isinstance(enc, OpenClipEncoder)
    assert "needs onnxruntime" in caplog.text and "using torch" in caplog.text
    assert not (tmp_path / "cache" / "onnx").exists() or not any((tmp_path / "cache" / "onnx").glob("*-text-*"))


def test_runtime_setting_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMSEARCH_RUNTIME", "torch")
    assert Settings().runtime == "torch"
    monkeypatch.setenv("MMSEARCH_RUNTIME", "tensorrt")
    with pytest.raises(ValueError, match="runtime"):
        Settings()


def test_cli_runtime_option(clip_spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMSEARCH_MODEL_CONFIG_DIRS", json.dumps([str(CONFIG_DIR)]))
    monkeypatch.setenv("MMSEARCH_AUDIO", "false")
    runner = CliRunner()
    catalog = str(tmp_path / "cat")
    for command in (["search", "a dog"], ["similar", "1"], ["embed", "--text", "a dog"], ["serve"],
                    ["index", str(tmp_path)]):
        bad = runner.invoke(app, [*command, "--runtime", "tensorrt", "--catalog", catalog])
        assert bad.exit_code == 2 and "Invalid value for '--runtime'" in bad.output, command
    vecs = {}
    for runtime in ("torch", "onnx"):
        out = runner.invoke(app, ["embed", "--text", "a dog", "--model", clip_spec, "--runtime", runtime,
                                  "--json", "--catalog", catalog])
        assert out.exit_code == 0, out.output
        vecs[runtime] = np.array(json.loads(out.stdout.strip().splitlines()[-1])["vector"], dtype=np.float32)
    assert float(vecs["torch"] @ vecs["onnx"]) >= cpu_runtime.MIN_COS_FP32
    media = tmp_path / "media"
    media.mkdir()
    (media / "photo.jpg").write_bytes(flickr_images(1)[0].read_bytes())
    out = runner.invoke(app, ["index", str(media), "--model", clip_spec, "--runtime", "onnx", "--device", "cuda",
                              "--catalog", catalog])
    assert out.exit_code == 2 and "runtime 'onnx' runs on the CPU" in out.output


def test_a_pretrained_tag_is_found_while_the_hub_cache_still_gives_its_file(tmp_path: Path) -> None:
    """A tag's export is keyed by the file an earlier load read from the Hugging Face cache; it is
    found again without torch only while the cache's main branch still points at that snapshot."""
    from mmsearch.encoders.base import Spec

    repo = tmp_path / "hub" / "models--org--clip"
    weights = repo / "snapshots" / "rev1" / "open_clip_model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"weights one")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("rev1")
    root = tmp_path / "cache" / "onnx"
    spec = Spec("open_clip", "ViT-B-32", "some_tag")
    assert cpu_runtime.cached_checksum(spec, root) is None  # never loaded here
    cpu_runtime._record_weights_file(root, str(spec), str(weights))
    found = cpu_runtime.cached_checksum(spec, root)
    assert found is not None and found.startswith("file:")
    (repo / "refs" / "main").write_text("rev2")  # the hub cache moved on: a load would read another file
    assert cpu_runtime.cached_checksum(spec, root) is None
    assert cpu_runtime.cached_checksum(Spec("open_clip", "ViT-B-32", "random"), root) is None


def test_inputs_not_reproduced_stay_with_torch(clip_spec: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A tokeniser whose ids differ from open_clip's on a check text is not saved: the card says
    so, the cache gives no torch-free encoder, and queries keep torch's tokeniser."""
    from mmsearch.encoders import clip_tokenizer

    real = clip_tokenizer.ClipTokenizer.encode
    monkeypatch.setattr(clip_tokenizer.ClipTokenizer, "encode",
                        lambda self, text: real(self, text)[::-1])  # wrong order for texts of 2+ tokens
    settings = _settings(tmp_path / "cache", runtime="onnx")
    enc = load_encoder(clip_spec, settings)
    got = _both(enc, "text", TEXTS)
    card = json.loads((enc.cache.folder("text") / cpu_runtime.LIGHT_FILE).read_text())
    assert card["feeds"] is None and not (enc.cache.folder("text") / clip_tokenizer.VOCAB_FILE).exists()
    assert OnnxEncoder.from_cache(clip_spec, settings, lambda: None) is None
    ref = load_encoder(clip_spec, settings.model_copy(update={"runtime": "torch"}))
    assert _min_cos(got, _both(ref, "text", TEXTS)) >= cpu_runtime.MIN_COS_FP32


def test_openvino_loads_without_its_telemetry() -> None:
    """Importing OpenVINO's model converter sends a telemetry event from a forked process; a fork
    beside OpenBLAS threads (a CLAP decoder's spectrogram) deadlocked ingests. The runtime needs
    no converter, so it is not imported: no telemetry, nothing written to ~/intel."""
    import subprocess

    code = ("import sys; from mmsearch.encoders.cpu_runtime import import_openvino; ov = import_openvino(); "
            "ov.Core(); print(sorted(m for m in sys.modules if 'telemetry' in m or m.startswith('openvino.tools.ovc')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
