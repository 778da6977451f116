"""The GPU ingestion path (JPEGs decoded in batches by torchvision on the encoder's device, resized
and normalised there), run on its CPU fallback: the same vectors as the Pillow path."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from mmsearch.encoders import load_encoder
from mmsearch.engine import Engine
from mmsearch.media.decode import JpegFile, load_image, probe_jpeg
from mmsearch.media.device_images import orient
from mmsearch.settings import Settings
from tests.conftest import CONFIG_DIR, flickr_images

MIN_COSINE = 0.99  # measured on CPU: 0.99999 (tiny model), 0.999996 (ViT-B-32); nvJPEG differs more


def _both_paths(spec: str, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    enc = load_encoder(spec, Settings(model_config_dirs=[CONFIG_DIR], device="cpu", runtime="torch"))
    pillow = enc.encode("image", [enc.prepare("image", load_image(p, 10**9)) for p in paths])
    jpegs = [probe_jpeg(str(p), 10**9) for p in paths]
    assert all(isinstance(j, JpegFile) for j in jpegs)
    staged = enc.stage_images([enc.prepare("image", j) for j in jpegs])
    assert not staged.failed and staged.pixels.device.type == "cpu"
    return pillow, enc.encode_staged(staged)


def test_device_path_matches_pillow_tiny_model(clip_spec: str) -> None:
    pillow, device = _both_paths(clip_spec, flickr_images(12))
    assert ((pillow * device).sum(axis=1) >= MIN_COSINE).all()


@pytest.mark.slow
def test_device_path_matches_pillow_vit_b_32() -> None:
    pillow, device = _both_paths("open_clip:ViT-B-32@random", flickr_images(4))
    assert ((pillow * device).sum(axis=1) >= MIN_COSINE).all()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(orientation: int) -> None:
    rng = np.random.default_rng(orientation)
    img = Image.fromarray(rng.integers(0, 255, (5, 7, 3), dtype=np.uint8))
    exif = img.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format="PNG", exif=exif)  # lossless: the turn alone is compared
    want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))))
    got = orient(torch.from_numpy(np.array(img)).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(got, want)


def test_probe_leaves_non_jpegs_and_oversized_ones_to_pillow(tmp_path: Path) -> None:
    src = flickr_images(1)[0]
    assert probe_jpeg(str(src), 10) is None  # over the pixel limit: Pillow's path says so
    Image.open(src).save(tmp_path / "x.png")
    assert probe_jpeg(str(tmp_path / "x.png"), 10**9) is None
    Image.open(src).convert("CMYK").save(tmp_path / "cmyk.jpg")
    assert probe_jpeg(str(tmp_path / "cmyk.jpg"), 10**9) is None
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8\xffjunk")
    assert probe_jpeg(str(tmp_path / "junk.jpg"), 10**9) is None


def test_ingest_through_the_device_path(make_settings, tmp_path: Path,  # type: ignore[no-untyped-def]
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole pipeline with ``image_decode=torch`` on the CPU (torch runs the model: the CPU
    runtime takes Pillow's tensors): JPEGs, a PNG, a grey JPEG, a rotated one and a truncated one;
    vectors as the Pillow pipeline's, the bad file failed."""
    media = tmp_path / "media"
    media.mkdir()
    photos = flickr_images(20)
    for p in photos:
        shutil.copy(p, media / p.name)
    Image.open(photos[0]).save(media / "still.png")
    Image.open(photos[1]).convert("L").save(media / "grey.jpg")
    turned = Image.open(photos[2])
    exif = turned.getexif()
    exif[0x0112] = 6
    turned.save(media / "turned.jpg", exif=exif)
    (media / "cut.jpg").write_bytes(photos[3].read_bytes()[:2000])
    from mmsearch.indexer import pipeline

    staged: list[int] = []
    stage = pipeline._Ingest._finish_staged

    def counting(self: pipeline._Ingest) -> None:
        staged.append(1 if self.staged is not None else 0)
        stage(self)

    monkeypatch.setattr(pipeline._Ingest, "_finish_staged", counting)
    vectors = {}
    for mode in ("pillow", "torch"):
        settings = make_settings(catalog=tmp_path / f"cat-{mode}", image_decode=mode, batch_size=8, runtime="torch")
        with Engine.open(settings) as engine:
            report = engine.index([media])
            assert report.added == 23 and report.failed == 1, report.failures
            assert report.failures[0][0].endswith("cut.jpg")
            vectors[mode] = _stored(engine, media)
        assert (sum(staged) > 0) == (mode == "torch")  # batches went through the device path, or none did
    names = sorted(vectors["pillow"])
    a = np.stack([vectors["pillow"][n] for n in names])
    b = np.stack([vectors["torch"][n] for n in names])
    assert ((a * b).sum(axis=1) >= MIN_COSINE).all()


def _stored(engine: Engine, media: Path) -> dict[str, np.ndarray]:
    """Each image's stored vector, by file name."""
    out = {}
    store = engine.indexes.store("clip.image", engine.catalog.spaces()["clip"][1])
    for f in sorted(media.iterdir()):
        if f.name == "cut.jpg":
            continue
        (item,) = engine.lookup(f)
        (eid, _), = [(e, c) for e, c in engine.catalog.item_embeddings(item) if c == "clip.image"]
        _, vec = store.lookup(np.array([eid], dtype=np.int64))
        out[f.name] = vec[0] / np.linalg.norm(vec[0])
    return out
