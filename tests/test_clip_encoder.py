from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from mmsearch.encoders import Spec, load_encoder
from mmsearch.errors import BadInput, ModelUnavailable
from mmsearch.settings import Settings
from tests.conftest import CONFIG_DIR, TINY_ARCH, flickr_images


def _settings() -> Settings:
    return Settings(model_config_dirs=[CONFIG_DIR], device="cpu", batch_size=4)


def test_vectors_equal_open_clip_reference(clip_spec: str, tiny_clip_checkpoint: Path) -> None:
    enc = load_encoder(clip_spec, _settings())
    ref, _, preprocess = open_clip.create_model_and_transforms(TINY_ARCH, pretrained=str(tiny_clip_checkpoint))
    ref.eval()
    tokenizer = open_clip.get_tokenizer(TINY_ARCH)
    images = [Image.open(p).convert("RGB") for p in flickr_images(5)]
    texts = ["a dog running on the beach", "two people", "a red car"]

    got_img = enc.encode("image", [enc.prepare("image", im) for im in images])
    got_txt = enc.encode("text", [enc.prepare("text", t) for t in texts])
    with torch.inference_mode():
        want_img = ref.encode_image(torch.stack([preprocess(im) for im in images]), normalize=True).numpy()
        want_txt = ref.encode_text(tokenizer(texts), normalize=True).numpy()

    assert got_img.shape == (5, enc.dim) and got_txt.shape == (3, enc.dim)
    np.testing.assert_allclose(got_img, want_img, atol=1e-5)
    np.testing.assert_allclose(got_txt, want_txt, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got_img, axis=1), 1.0, atol=1e-5)


def test_trimmed_text_batches_equal_the_full_forward(clip_spec: str, tiny_clip_checkpoint: Path) -> None:
    """Texts of very different lengths, one past the 77-token context: same vectors as open_clip."""
    enc = load_encoder(clip_spec, _settings())
    ref, _, _ = open_clip.create_model_and_transforms(TINY_ARCH, pretrained=str(tiny_clip_checkpoint))
    tokenizer = open_clip.get_tokenizer(TINY_ARCH)
    texts = ["dog", "a dog running on the beach at sunset with a red ball", "word " * 100, ""]
    for batch in (texts, texts[:2], texts[:1]):
        with torch.inference_mode():
            want = ref.eval().encode_text(tokenizer(batch), normalize=True).numpy()
        np.testing.assert_allclose(enc.encode("text", batch), want, atol=1e-5)


def test_spec_records_absolute_checkpoint_path(tiny_clip_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tiny_clip_checkpoint.parent)
    enc = load_encoder(f"open_clip:{TINY_ARCH}@{tiny_clip_checkpoint.name}", _settings())
    assert enc.spec == f"open_clip:{TINY_ARCH}@{tiny_clip_checkpoint}"
    assert enc.space == "clip" and enc.dim == 32


def test_random_spec_is_seeded_and_deterministic() -> None:
    a = load_encoder(f"open_clip:{TINY_ARCH}@random", _settings())
    b = load_encoder(f"open_clip:{TINY_ARCH}@random", _settings())
    np.testing.assert_array_equal(a.encode("text", ["x"]), b.encode("text", ["x"]))


@pytest.mark.parametrize("spec", ["ViT-B-32", "open_clip:ViT-B-32", "clip:foo@bar", "open_clip:@random", ""])
def test_bad_specs_are_refused(spec: str) -> None:
    with pytest.raises(BadInput):
        Spec.parse(spec)


def test_missing_checkpoint_and_unknown_names() -> None:
    with pytest.raises(ModelUnavailable, match="not found"):
        load_encoder(f"open_clip:{TINY_ARCH}@/nonexistent/model.pt", _settings())
    with pytest.raises(ModelUnavailable, match="unknown open_clip architecture"):
        load_encoder("open_clip:NoSuchNet@random", _settings())
    with pytest.raises(ModelUnavailable, match="no pretrained tag"):
        load_encoder("open_clip:ViT-B-32@not-a-tag", _settings())


def test_offline_pretrained_tag_fails_fast_with_help(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # nothing cached
    t0 = time.perf_counter()
    with pytest.raises(ModelUnavailable) as err:
        load_encoder("open_clip:ViT-B-32@laion2b_s34b_b79k", _settings())
    assert time.perf_counter() - t0 < 20  # no minute of hub retries
    assert "local checkpoint" in str(err.value) and "@random" in str(err.value)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelUnavailable, match="could not load checkpoint"):
        load_encoder(f"open_clip:{TINY_ARCH}@{bad}", _settings())


def test_the_model_free_preparer_is_prepare_in_numpy(clip_spec: str, tiny_clip_checkpoint: Path) -> None:
    """What Ray's decode tasks run for the torch encoder: the same pixels as ``prepare``, as a
    picklable function holding no model, giving numpy (an ONNX actor unpickles it without torch)."""
    import pickle

    enc = load_encoder(clip_spec, _settings().model_copy(update={"runtime": "torch"}))
    prep = pickle.loads(pickle.dumps(enc.preparer("image")))
    img = Image.open(flickr_images(1)[0])
    got, want = prep(img), enc.prepare("image", img)
    assert isinstance(got, np.ndarray) and np.array_equal(got, want.numpy())
    assert np.allclose(enc.encode("image", [got]), enc.encode("image", [want]), atol=1e-6)
    assert enc.preparer("text") is str and enc.preparer("audio") is None
