"""Turn a file into the units an encoder embeds: an image, a text, caption rows, audio windows.

Every failure becomes ``DecodeError`` with a reason a person can read; the pipeline records it
against the file and carries on with the rest.
"""

from __future__ import annotations

import csv
import io
import json
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from mmsearch.media.formats import (HEAD_BYTES, HEIF_EXTS, PILLOW_EXTS, RAW_EXTS, decode_formats, ext_of,
                                    heif_signature, raw_signature, read_head, tiff_signature)
from mmsearch.media.metadata import FileFacts, image_facts

MEDIA_COLUMNS = ("image", "file", "filename", "path", "audio")
CAPTION_COLUMNS = ("caption", "text", "description")


def caption_columns(fields: list[str]) -> tuple[str, str] | None:
    lower = {f.strip().lower(): f for f in fields}
    media = next((lower[c] for c in MEDIA_COLUMNS if c in lower), None)
    text = next((lower[c] for c in CAPTION_COLUMNS if c in lower), None)
    return (media, text) if media and text else None


class DecodeError(Exception):
    """A file that cannot be indexed; the message is recorded as the reason."""


class SoundWaits(DecodeError):
    """A file that holds sound while this run embeds none (audio is off): left as it is, for a run
    with audio on. Indexed without it, a video would lose its sound track's vectors, and an
    unchanged file is not read again."""


@dataclass
class Unit:
    """One thing to embed, with what the catalog stores about it."""

    modality: str  # what is embedded: image | text | audio
    payload: Any  # PIL image, str, or mono float32 window
    ordinal: int = 0
    text: str | None = None
    ref_path: str | None = None
    start: float | None = None
    end: float | None = None
    duration: float | None = None
    item: str | None = None  # the item's modality and collection when not ``modality`` (a video's frames)


def _enable_heif() -> bool:
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


HEIF = _enable_heif()


def load_image(source: str | Path | Any, max_pixels: int) -> Image.Image:
    """Decode fully (so truncation is caught here, not in a worker later), first frame, upright, RGB."""
    return read_image(source, max_pixels)[0]


def read_image(source: str | Path | Any, max_pixels: int) -> tuple[Image.Image, FileFacts]:
    """``load_image`` and the file's facts (EXIF date, camera, place...), read from the same open
    file. A damaged EXIF block costs its facts and the turn upright, never the image. Any format
    Pillow decodes (``formats.decode_formats``); camera RAW through rawpy, from a file or from
    bytes (a query). What the decoder warns about is left to the caller's ``notes.FileNotes``."""
    path = str(source) if isinstance(source, (str, Path)) else None
    head = _head(source)
    if (path is not None and ext_of(path) in RAW_EXTS) or raw_signature(head):
        return _read_raw(source, max_pixels)
    try:
        return _read_pillow(source, max_pixels)
    except DecodeError as e:
        if tiff_signature(head) and (path is None or ext_of(path) not in PILLOW_EXTS) \
                and not _opens_as_tiff(source):
            # a TIFF Pillow cannot read, under a name that says nothing: most likely a camera RAW
            return _read_raw(source, max_pixels, otherwise=e)
        if (heif_signature(head) or (path is not None and ext_of(path) in HEIF_EXTS)) and not HEIF:
            raise DecodeError("HEIF/HEIC image, but pillow-heif is not installed: "
                              "pip install 'mmsearch[heic]'") from None
        raise


def _head(source: str | Path | Any) -> bytes:
    """The first bytes of a file or of a seekable stream (left where it was); b"" if unreadable."""
    try:
        if isinstance(source, (str, Path)):
            return read_head(str(source))
        at = source.tell()
        head = source.read(HEAD_BYTES)
        source.seek(at)
        return head if isinstance(head, bytes) else b""
    except (OSError, AttributeError, ValueError):
        return b""


def _read_pillow(source: str | Path | Any, max_pixels: int) -> tuple[Image.Image, FileFacts]:
    try:
        with Image.open(source, formats=decode_formats()) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise DecodeError(f"image of {w}x{h} pixels is over the limit of {max_pixels} "
                                  "(decompression bomb guard)")
            img.load()  # the first frame, or a PSD's composite (open leaves it there; seek(0) would not)
            facts = image_facts(img, str(source) if isinstance(source, (str, Path)) else "")
            try:
                img = ImageOps.exif_transpose(img)
            except Exception:  # noqa: BLE001 - an unreadable orientation: keep the pixels as stored
                pass
            return to_rgb(img), facts
    except DecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DecodeError(f"decompression bomb: {e}") from e
    except UnidentifiedImageError:
        raise DecodeError("not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError, EOFError, TypeError, struct.error) as e:
        raise DecodeError(f"corrupt or truncated image: {e}") from e
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - a plugin tripping over a damaged file: still the file's fault
        raise DecodeError(f"corrupt image: {type(e).__name__}: {e}") from e


def to_rgb(img: Image.Image) -> Image.Image:
    """Three 8-bit channels, whatever the mode: palettes with transparency, 16- and 32-bit grey
    (netpbm, PNG, TIFF, FITS), floating point (PFM) and CMYK (PSD, JPEG, TIFF) included."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # what Pillow asks for before dropping alpha
    elif img.mode in ("I", "F") or img.mode.startswith("I;"):
        import numpy as np

        a = np.asarray(img, dtype=np.float64)
        finite = a[np.isfinite(a)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        scaled = (np.nan_to_num(a, nan=lo) - lo) * (255.0 / (hi - lo) if hi > lo else 0.0)
        img = Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), "L")
    return img.convert("RGB")


def _opens_as_tiff(source: str | Path | Any) -> bool:
    try:
        if not isinstance(source, (str, Path)):
            source.seek(0)
        with Image.open(source, formats=["TIFF"]):
            return True
    except Exception:  # noqa: BLE001 - anything Pillow's TIFF reader refuses may be LibRaw's
        return False


def _read_raw(source: str | Path | Any, max_pixels: int,
              otherwise: DecodeError | None = None) -> tuple[Image.Image, FileFacts]:
    """rawpy's picture; ``otherwise``: the error to raise if LibRaw does not know the file either."""
    from mmsearch.media.raw import RawUnavailable, read_raw

    try:
        if not isinstance(source, (str, Path)):
            source.seek(0)
        return read_raw(source if not isinstance(source, Path) else str(source), max_pixels)
    except RawUnavailable as e:
        raise DecodeError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - LibRaw's errors: a damaged or unsupported RAW
        if otherwise is not None and type(e).__name__ == "LibRawFileUnsupportedError":
            raise otherwise from None
        reason = e.args[0] if e.args else e
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise DecodeError(f"unreadable camera RAW file: {reason}") from e


JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")


@dataclass
class JpegFile:
    """A JPEG's bytes, checked from its header only: it is decoded later, in a batch, on the
    encoder's device (mmsearch/media/device_images.py)."""

    data: bytes
    orientation: int  # EXIF orientation, 1 (upright) to 8
    path: str  # for messages
    facts: FileFacts | None = None  # read from the header, as read_image reads them


def probe_jpeg(path: str, max_pixels: int) -> JpegFile | None:
    """The file's bytes when the batched decoder can take it: a JPEG in RGB or grey within the
    pixel limit, read from its header (with the file's facts). None: Pillow decodes it (and
    words any problem)."""
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format != "JPEG" or img.mode not in ("RGB", "L") or img.width * img.height > max_pixels:
                return None
            facts = image_facts(img, path)
    except Exception:  # noqa: BLE001 - whatever it is, Pillow's path finds and words it
        return None
    return JpegFile(data, facts.orientation or 1, path, facts)


def read_text(path: str, max_bytes: int) -> str:
    size = os.path.getsize(path)
    if size > max_bytes:
        raise DecodeError(f"text file of {size} bytes is over the limit of {max_bytes}")
    with open(path, "rb") as fh:
        raw = fh.read()
    if b"\x00" in raw:
        raise DecodeError("binary content in a text file")
    text = raw.decode("utf-8", errors="replace").strip()
    if not text:
        raise DecodeError("empty text file")
    return text


def read_captions(path: str, max_bytes: int, allowed: Sequence[Path] | None = ()) -> Iterator[Unit]:
    """Caption rows become text items linked to the media file they describe. A row naming a file
    whose real path (after ``..`` and symlinks) lies outside the captions file's folder and the
    real folders of ``allowed`` (None: anywhere) keeps its text but links to nothing, so a
    captions file cannot make the service show a file from elsewhere."""
    if os.path.getsize(path) > max_bytes * 100:
        raise DecodeError("captions file too large")
    base = Path(path).parent
    area = None if allowed is None else [Path(os.path.realpath(base)), *allowed]
    try:
        with open(path, encoding="utf-8", errors="replace", newline="") as fh:
            if path.lower().endswith(".jsonl"):
                rows: Iterator[dict] = (json.loads(line) for line in fh if line.strip())
                first = next(rows, None)
                if not isinstance(first, dict):
                    raise DecodeError("JSONL captions file with no records")
                cols = caption_columns(list(first))
                rows = _chain(first, rows)
            else:
                reader = csv.DictReader(fh)
                cols = caption_columns(list(reader.fieldnames or []))
                rows = reader
            if cols is None:
                raise DecodeError("captions file without a media column and a caption column")
            media_col, text_col = cols
            n = 0
            for i, row in enumerate(rows):
                if not isinstance(row, dict):
                    continue
                text = str(row.get(text_col) or "").replace("\x00", "").strip()
                media = str(row.get(media_col) or "").replace("\x00", "").strip()
                if not text:
                    continue
                n += 1
                ref = resolve_ref(base, media) if media else None
                if ref and not inside(ref, area):
                    ref = None
                yield Unit("text", text, ordinal=i, text=text, ref_path=ref)
            if n == 0:
                raise DecodeError("captions file with no captions")
    except (OSError, ValueError, csv.Error) as e:
        raise DecodeError(f"unreadable captions file: {e}") from e


def _chain(first: dict, rest: Iterator[dict]) -> Iterator[dict]:
    yield first
    yield from rest


def resolve_ref(base: Path, media: str) -> str:
    """A caption names its media relative to the captions file, or to an images/ or audio/ folder
    beside it (the Flickr8k and Tux Paint layouts)."""
    candidates = [base / media, base / "images" / media, base / "audio" / media]
    for c in candidates:
        if c.is_file():
            return str(c)
    return str(candidates[0])


def inside(path: str | Path, area: Sequence[Path] | None) -> bool:
    """Whether path, after ``..`` and symlinks, lies in one of the real folders of area (None: anywhere)."""
    if area is None:
        return True
    real = Path(os.path.realpath(path))
    return any(real.is_relative_to(a) for a in area)
