"""Still images in every format Pillow decodes, found by content where the name says nothing;
camera RAW through rawpy (a DNG written by hand); decoder warnings kept on the file's record;
files that are neither media nor text counted as skipped, by extension."""

from __future__ import annotations

import io
import json
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select

from mmsearch import Engine, Query
from mmsearch.api.app import create_app
from mmsearch.api.media import Thumbnails
from mmsearch.media import formats
from mmsearch.media.decode import read_image
from mmsearch.media.raw import read_raw
from mmsearch.storage.models import File
from tests.conftest import flickr_images
from tests.dng import make_dng
from tests.test_cli import cli  # noqa: F401 - the CLI runner fixture


def _picture(size: tuple[int, int] = (48, 40)) -> Image.Image:
    return Image.open(flickr_images(1)[0]).convert("RGB").resize(size)


def _psd(img: Image.Image) -> bytes:
    """A flattened Photoshop file: header, no colour table, resources or layers, raw RGB planes."""
    w, h = img.size
    planes = b"".join(np.asarray(img)[:, :, c].tobytes() for c in range(3))
    return (b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, h, w, 8, 3) + struct.pack(">III", 0, 0, 0)
            + struct.pack(">H", 0) + planes)


USUAL = {"JPEG": ".jpg", "JPEG2000": ".jp2", "PPM": ".ppm", "SGI": ".sgi", "TGA": ".tga", "TIFF": ".tif",
         "SPIDER": ".spi"}


def _write_every_format(folder: Path) -> list[Path]:
    """The picture in every format Pillow can write here (and decode), under its usual name, the
    other netpbm kinds, and a flattened PSD (which Pillow reads but does not write)."""
    img = _picture()
    names = {f: e for e, f in reversed(list(Image.registered_extensions().items()))} | USUAL
    jobs = [(fmt, names.get(fmt, "")) for fmt in sorted(set(Image.SAVE) & set(formats.decode_formats()))]
    written = []
    for fmt, ext in jobs + [("PPM", ".pgm"), ("PPM", ".pbm"), ("PPM", ".pnm")]:
        path = folder / f"pic-{fmt.lower()}{ext}"
        modes = {".pgm": ["L"], ".pbm": ["1"]}.get(ext, ["RGB", "L", "P", "1"])
        for mode in modes:
            try:
                img.convert(mode).save(path, fmt, **({"sizes": [(16, 16)]} if fmt == "ICO" else {}))
                break
            except (OSError, ValueError, KeyError):
                path.unlink(missing_ok=True)
        if path.exists():
            written.append(path)
    (folder / "pic-psd.psd").write_bytes(_psd(img))
    return written + [folder / "pic-psd.psd"]


@pytest.fixture
def engine(make_settings):  # type: ignore[no-untyped-def]
    with Engine.open(make_settings(runtime="torch")) as e:
        yield e


def test_every_pillow_format_and_mislabelled_images_are_indexed(engine: Engine, tmp_path: Path,
                                                                 capfd: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "odd"
    folder.mkdir()
    images = _write_every_format(folder)
    written = {p.suffix for p in images}
    # what the issue names, at least: JPEG 2000, AVIF, netpbm, TGA, PSD, ICO/ICNS, SGI, DDS, QOI, PCX, XBM, MSP
    assert {".jp2", ".avif", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".psd", ".ico", ".icns", ".sgi", ".dds",
            ".qoi", ".pcx", ".xbm", ".msp", ".webp", ".tif", ".bmp", ".gif"} <= written, written
    png = io.BytesIO()
    _picture().save(png, "PNG")
    (folder / "scan.dat").write_bytes(png.getvalue())  # an image under a wrong name
    (folder / "scan").write_bytes(png.getvalue())  # and under none
    _picture().save(folder / "photo.jpg.bak", "JPEG2000")
    images += [folder / "scan.dat", folder / "scan", folder / "photo.jpg.bak"]
    (folder / "broken.qoi").write_bytes((folder / "pic-qoi.qoi").read_bytes()[:60])  # cut short
    (folder / "setup.exe").write_bytes(b"MZ\x90\x00" + b"\x00" * 200)
    (folder / "tool.exe").write_bytes(b"MZ\x90\x00" + b"\x01" * 300)
    with zipfile.ZipFile(folder / "backup.zip", "w") as z:
        z.writestr("a.txt", "hello")
    (folder / "LICENSE").write_text("Permission is hereby granted, free of charge, to any person")
    capfd.readouterr()

    report = engine.index([folder])
    assert [Path(p).name for p, _ in report.failures] == ["broken.qoi"], report.failures
    assert report.added == len(images) and report.failed == 1
    assert report.skipped == {"exe": 2, "zip": 1, "(none)": 1}
    assert report.as_dict()["skipped"] == {"exe": 2, "(none)": 1, "zip": 1}
    for path in images:
        assert len(engine.catalog.items_for_path(str(path))) == 1, path.name
    for name, mime in (("scan", "image/png"), ("scan.dat", "image/png"), ("pic-psd.psd", "image/vnd.adobe.photoshop")):
        assert engine.item(engine.catalog.items_for_path(str(folder / name))[0]).facts.mime == mime
    with TestClient(create_app(engine)) as client:  # served as what it holds, and shown
        item_id = engine.catalog.items_for_path(str(folder / "scan.dat"))[0]
        assert client.get(f"/items/{item_id}/media").headers["content-type"] == "image/png"
        item_id = engine.catalog.items_for_path(str(folder / "pic-ppm.pbm"))[0]
        r = client.get(f"/items/{item_id}/thumbnail", params={"size": 64})
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert capfd.readouterr().err == ""

    # unchanged: nothing is read again, the skipped files are still counted
    def no_reading(path: str) -> str | None:
        raise AssertionError(f"sniffed an unchanged file: {path}")

    monkeypatch.setattr("mmsearch.indexer.pipeline.sniff_kind", no_reading)
    again = engine.index([folder])
    assert (again.added, again.updated, again.unchanged, again.removed) == (0, 0, len(images) + 1, 0)
    assert again.skipped == report.skipped
    monkeypatch.undo()
    # a changed skipped file is looked at again; a deleted one was never indexed: not "removed"
    (folder / "LICENSE").write_bytes((folder / "pic-png.png").read_bytes())
    (folder / "tool.exe").unlink()
    third = engine.index([folder])
    assert (third.added, third.updated, third.removed) == (0, 1, 0)
    assert third.skipped == {"exe": 1, "zip": 1}
    assert engine.stats()["files"]["skipped"] == 2


def test_decoder_warnings_go_on_the_file_record(engine: Engine, tmp_path: Path,
                                                capfd: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "warned"
    folder.mkdir()
    for i in range(2):  # the same warning twice: each file keeps its own
        _picture((80 + i, 70)).save(folder / f"big-{i}.png")
    _picture((60, 60)).save(folder / "quiet.png")
    tif = io.BytesIO()
    _picture().save(tif, "TIFF", compression="tiff_deflate")
    data = bytearray(tif.getvalue())
    for i in range(20, 120):  # the deflate stream no longer checks out: libtiff complains
        data[i] ^= 0x5A
    (folder / "bad.tif").write_bytes(bytes(data))
    # 80x70 and 81x70 get a DecompressionBombWarning each (the tiny model's 64x64 input none)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    capfd.readouterr()

    report = engine.index([folder])
    assert report.added == 3, "\n".join(map(str, report.failures))
    assert sorted(Path(p).name for p, _ in report.warnings) == ["big-0.png", "big-1.png"]
    assert all("DecompressionBombWarning" in note for _, note in report.warnings)
    [(path, reason)] = report.failures
    assert path.endswith("bad.tif") and "ZIPDecode" in reason
    with engine.catalog.sessions() as s:
        rows = dict(s.execute(select(File.path, File.error).where(File.status == "ok")).all())
    assert "DecompressionBombWarning" in rows[str(folder / "big-1.png")] and rows[str(folder / "quiet.png")] is None
    # a query's picture, and a thumbnail, say nothing on the terminal either
    [hit] = engine.search(Query(image=(folder / "big-0.png").read_bytes(), to="image", k=1)).results
    assert hit.path == str(folder / "big-0.png")
    Thumbnails(max_pixels=10**8).get(folder / "big-1.png", 64)
    assert capfd.readouterr().err == ""


def test_camera_raw_through_rawpy(engine: Engine, tmp_path: Path) -> None:
    folder = tmp_path / "raw"
    folder.mkdir()
    preview = _picture((320, 240))
    (folder / "shot.dng").write_bytes(make_dng(preview=preview))
    (folder / "sensor.dng").write_bytes(make_dng())
    (folder / "no-name").write_bytes(make_dng(80, 60))  # a DNG Pillow cannot open, under no extension

    image, facts = read_raw(str(folder / "shot.dng"), 10**8)
    assert image.size == (320, 240)  # the camera's preview, not the 64x48 sensor data
    assert (facts.camera_make, facts.camera_model, facts.mime) == ("Mmsearch", "Test DNG", "image/x-adobe-dng")
    assert (facts.width, facts.height) == (64, 48)
    image, _ = read_image(str(folder / "sensor.dng"), 10**8)
    assert image.size == (32, 24) and image.mode == "RGB"  # developed at half size
    assert np.asarray(image).std() > 0

    report = engine.index([folder])
    assert report.failures == [] and report.added == 3 and report.skipped == {}
    jpeg = io.BytesIO()
    preview.save(jpeg, "JPEG", quality=90)  # the very bytes the DNG embeds
    [hit] = engine.search(Query(image=jpeg.getvalue(), to="image", k=1)).results
    assert hit.path == str(folder / "shot.dng") and hit.score > 0.999
    # a RAW as a query (bytes, no name) is read the same way
    [hit] = engine.search(Query(image=(folder / "sensor.dng").read_bytes(), to="image", k=1)).results
    assert hit.path == str(folder / "sensor.dng") and hit.score > 0.999
    # and the web page's thumbnails show them
    thumbs = Thumbnails(max_pixels=10**8)
    for name, size in (("shot.dng", (128, 96)), ("no-name", (40, 30))):
        with Image.open(io.BytesIO(thumbs.get(folder / name, 128)[0])) as t:
            assert (t.format, t.size) == ("JPEG", size)


def test_raw_without_rawpy_fails_with_the_install_hint(engine: Engine, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "raw"
    folder.mkdir()
    (folder / "shot.nef").write_bytes(make_dng())
    _picture().save(folder / "fine.png")
    monkeypatch.setitem(sys.modules, "rawpy", None)  # import rawpy raises ImportError
    report = engine.index([folder])
    assert report.added == 1
    [(path, reason)] = report.failures
    assert path.endswith("shot.nef") and "pip install 'mmsearch[raw]'" in reason


def test_heif_without_pillow_heif_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pillow_heif

    from mmsearch.media import decode

    pillow_heif.register_heif_opener()
    _picture().save(tmp_path / "phone.heic")
    (tmp_path / "IMG_0001").write_bytes((tmp_path / "phone.heic").read_bytes())
    assert formats.sniff_image(str(tmp_path / "IMG_0001"))  # an HEIF under no extension is an image
    monkeypatch.setattr(decode, "HEIF", False)  # as if pillow-heif were not installed
    monkeypatch.setattr(decode, "decode_formats", lambda: tuple(f for f in formats.decode_formats() if f != "HEIF"))
    for name in ("phone.heic", "IMG_0001"):
        with pytest.raises(decode.DecodeError, match=r"pip install 'mmsearch\[heic\]'"):
            read_image(str(tmp_path / name), 10**8)


def test_extension_lists_follow_pillow() -> None:
    """Every extension Pillow registers for a format it decodes is an image extension, but the ones
    other files share (found by content instead); every listed one opens as something Pillow reads."""
    fmts = formats.decode_formats()
    registered = {e for e, f in list(Image.registered_extensions().items()) if f in fmts}
    assert registered - formats.PILLOW_EXTS - formats.HEIF_EXTS <= formats.SHARED_EXTS
    excluded = {e for e, f in list(Image.registered_extensions().items()) if f in formats.EXCLUDED_FORMATS}
    assert not formats.PILLOW_EXTS & excluded  # no .eps, .mpg, .wmf...
    assert not set(formats.EXCLUDED_FORMATS) & set(fmts)
    assert "TGA" in fmts and "TGA" not in formats.sniff_formats()  # no signature: by extension only


def test_index_json_counts_skipped_files_by_extension(cli, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMSEARCH_RUNTIME", "torch")  # no export needed to count files
    folder = tmp_path / "mixed"
    folder.mkdir()
    _picture().save(folder / "a.png")
    for name in ("x.exe", "y.exe", "z.iso", "Makefile"):
        (folder / name).write_bytes(b"\x7fELF" + b"\x00" * 64)
    out = json.loads(cli("index", str(folder), "--model", cli.spec, "--json").stdout.strip().splitlines()[-1])
    assert out["added"] == 1 and out["skipped"] == {"exe": 2, "(none)": 1, "iso": 1}
    human = cli("index", str(folder)).stdout
    assert "skipped 4 (not media or text)" in human and "unchanged 1" in human



def test_notes_take_what_decoders_say_in_their_thread_only(caplog: pytest.LogCaptureFixture,
                                                           capfd: pytest.CaptureFixture[str]) -> None:
    import logging
    import threading
    import warnings

    from mmsearch.media.notes import FileNotes

    log = logging.getLogger("PIL.TiffImagePlugin")

    def decoder_speaks() -> None:  # a warning issued from Pillow's module, and a log record
        exec(compile("warnings.warn('Corrupt EXIF data', UserWarning)", "PIL/TiffImagePlugin.py", "exec"),
             {"warnings": warnings, "__name__": "PIL.TiffImagePlugin"})
        log.warning("odd tag %d", 700)

    seen: list[str | None] = []

    def one_file() -> None:
        with FileNotes() as notes:
            decoder_speaks()
        seen.append(notes.text)

    for _ in range(2):  # the same warning twice: both files keep it
        worker = threading.Thread(target=one_file)
        worker.start()
        worker.join()
    assert seen == ["UserWarning: Corrupt EXIF data; odd tag 700"] * 2
    assert "odd tag" not in caplog.text and capfd.readouterr().err == ""
    with pytest.warns(UserWarning, match="Corrupt EXIF"):  # outside any file's notes: as before
        decoder_speaks()
    assert "odd tag 700" in caplog.text


@pytest.mark.parametrize(("head", "kind"), [
    (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00", "video/mp4"),
    (b"\x00\x00\x00\x1cftypmp42\x00\x00\x00\x00", "video/mp4"),
    (b"\x00\x00\x00\x14ftypqt  \x00\x00\x02\x00", "video/quicktime"),
    (b"\x00\x00\x00\x20ftyp3gp5\x00\x00\x00\x00", "video/mp4"),
    (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01", "video/x-matroska"),
    (b"RIFF\x00\x10\x00\x00AVI LIST", "video/x-msvideo"),
    (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", None),  # HEIF pictures share the ISO box
    (b"\x00\x00\x00\x18ftypmif2\x00\x00\x00\x00", None),
    (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00", None),
    (b"\x00\x00\x00\x18ftypcrx \x00\x00\x00\x01", None),  # a Canon CR3
    (b"RIFF\x24\x00\x00\x00WAVEfmt ", None),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", None),
])
def test_video_containers_are_told_from_pictures_by_their_first_bytes(head: bytes, kind: str | None) -> None:
    from mmsearch.media.formats import video_type

    assert video_type(head) == kind
