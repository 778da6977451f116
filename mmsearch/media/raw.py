"""Camera RAW files (CR2, CR3, NEF, ARW, DNG, ORF, RW2, RAF, PEF, SRW...) through rawpy (LibRaw),
an optional extra: ``pip install 'mmsearch[raw]'``.

The camera's own preview (the JPEG it embeds to show the shot) is what an encoder wants: the
picture as the photographer saw it, decoded in milliseconds. Only a file without a usable
preview is developed from the sensor data, at half size (no demosaicing cost, and still far
more pixels than an encoder's input).
"""

from __future__ import annotations

import io
from dataclasses import replace
from typing import Any, BinaryIO

from PIL import Image

from mmsearch.media.metadata import FileFacts, image_facts

INSTALL_HINT = "pip install 'mmsearch[raw]'"
MIN_PREVIEW_SIDE = 224  # a smaller preview (an old camera's 160x120 thumbnail) is not used: too coarse
# LibRaw's flip codes -> the turn that makes the preview upright (its sensor data it turns itself)
_FLIP = {3: Image.Transpose.ROTATE_180, 5: Image.Transpose.ROTATE_90, 6: Image.Transpose.ROTATE_270}


class RawUnavailable(Exception):
    """rawpy is not installed: the message says how to install it."""


def read_raw(source: str | BinaryIO, max_pixels: int) -> tuple[Image.Image, FileFacts]:
    """An RGB picture of a RAW file (a path, or a stream: a query's bytes) and the facts its
    metadata gives. Raises RawUnavailable without rawpy, and rawpy's own errors
    (``rawpy.LibRawError``, ``OSError``) for a bad file."""
    try:
        import rawpy
    except ImportError:
        raise RawUnavailable(f"camera RAW file, but rawpy is not installed: {INSTALL_HINT}") from None
    path = source if isinstance(source, str) else ""
    with rawpy.imread(source) as raw:
        sizes = raw.sizes
        width, height = (sizes.height, sizes.width) if sizes.flip in (5, 6) else (sizes.width, sizes.height)
        if width * height > max_pixels:
            raise ValueError(f"RAW image of {width}x{height} pixels is over the limit of {max_pixels} "
                             "(decompression bomb guard)")
        image, preview_facts = _preview(raw, rawpy, sizes.flip, max_pixels)
        if image is None:
            image = Image.fromarray(raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8))
        facts = _tiff_facts(source) or preview_facts or FileFacts()
        taken = facts.taken_s
        if taken is None:
            stamp = getattr(getattr(raw, "other", None), "timestamp", None)
            taken = int(stamp.timestamp()) if stamp is not None and stamp.year > 1970 else None
        return image, replace(facts, mime=raw_mime(path), width=width, height=height, taken_s=taken,
                              orientation=None)


def _preview(raw: Any, rawpy: Any, flip: int, max_pixels: int) -> tuple[Image.Image | None, FileFacts | None]:
    """The embedded preview, upright, when there is one of a useful size; else (None, None)."""
    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        return None, None
    except rawpy.LibRawError:
        return None, None  # a damaged preview: the sensor data may still be fine
    facts = None
    if thumb.format == rawpy.ThumbFormat.JPEG:
        try:
            with Image.open(io.BytesIO(thumb.data), formats=["JPEG"]) as img:
                if img.width * img.height > max_pixels:
                    return None, None
                img.load()
                facts = image_facts(img, "")
                image = img.convert("RGB")
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            return None, None
    else:  # a bitmap: rows of RGB
        image = Image.fromarray(thumb.data).convert("RGB")
    if min(image.size) < MIN_PREVIEW_SIDE:
        return None, None
    if flip in _FLIP:
        image = image.transpose(_FLIP[flip])
    return image, facts


def _tiff_facts(source: str | BinaryIO) -> FileFacts | None:
    """EXIF of a TIFF-based RAW (most are), read as Pillow reads a TIFF's tags; None if it cannot."""
    try:
        if not isinstance(source, str):
            source.seek(0)
        with Image.open(source, formats=["TIFF"]) as img:
            facts = image_facts(img, source if isinstance(source, str) else "")
    except Exception:  # noqa: BLE001 - not a TIFF Pillow reads: the facts come from elsewhere
        return None
    return facts if facts.camera_make or facts.camera_model or facts.taken_s is not None else None


RAW_MIME = {".dng": "image/x-adobe-dng", ".cr2": "image/x-canon-cr2", ".cr3": "image/x-canon-cr3",
            ".crw": "image/x-canon-crw", ".nef": "image/x-nikon-nef", ".nrw": "image/x-nikon-nrw",
            ".arw": "image/x-sony-arw", ".srf": "image/x-sony-srf", ".sr2": "image/x-sony-sr2",
            ".orf": "image/x-olympus-orf", ".rw2": "image/x-panasonic-rw2", ".raf": "image/x-fuji-raf",
            ".pef": "image/x-pentax-pef", ".srw": "image/x-samsung-srw", ".x3f": "image/x-sigma-x3f"}


def raw_mime(path: str) -> str:
    """The media type of a RAW file from its name ("image/x-raw" when it says nothing)."""
    from mmsearch.media.formats import ext_of

    return RAW_MIME.get(ext_of(path), "image/x-raw")
