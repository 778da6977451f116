"""What a file says about itself, read at ingest by the decode workers: media type, picture size,
and for photos the EXIF date taken, camera, lens, GPS position and orientation.

EXIF blocks are often damaged (editors, phones, truncated copies): every field is read on its own
and a field that cannot be read is left empty, so a bad EXIF block never fails the file.
"""

from __future__ import annotations

import math
import mimetypes
import os
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from PIL import ExifTags, Image

# Browsers need exact types to play or show a file; mimetypes' table varies between systems.
MEDIA_TYPES = {
    ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
    ".gif": "image/gif", ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff",
    ".heic": "image/heic", ".heif": "image/heif",
    ".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg", ".oga": "audio/ogg", ".mp3": "audio/mpeg",
    ".m4a": "audio/mp4", ".aac": "audio/aac", ".opus": "audio/ogg", ".mka": "audio/x-matroska",
    ".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime", ".mkv": "video/x-matroska",
    ".webm": "video/webm", ".avi": "video/x-msvideo",
    ".txt": "text/plain; charset=utf-8", ".md": "text/markdown; charset=utf-8",
    ".csv": "text/csv; charset=utf-8", ".jsonl": "application/jsonl; charset=utf-8",
}
MAX_TEXT = 64  # characters kept of a camera make, model or lens (EXIF strings are padded, some are junk)
_GPS = ExifTags.GPS
_TAG = ExifTags.Base


@dataclass(frozen=True)
class FileFacts:
    """One file's facts, stored on its ``files`` row. ``None``: unknown (not a photo, no EXIF, or
    an EXIF field that could not be read)."""

    mime: str | None = None
    width: int | None = None  # as shown, after the EXIF orientation
    height: int | None = None
    taken_s: int | None = None  # EXIF DateTimeOriginal, seconds since 1970 (UTC if no offset given)
    camera_make: str | None = None
    camera_model: str | None = None
    lens: str | None = None
    lat: float | None = None
    lon: float | None = None
    orientation: int | None = None  # EXIF 1-8

    @property
    def taken_at(self) -> datetime | None:
        return None if self.taken_s is None else datetime.fromtimestamp(self.taken_s, tz=timezone.utc)


def extension(path: str) -> str:
    """The file name's extension, lower case, without the dot ('' for none): the ``ext`` filter's key."""
    return os.path.splitext(path)[1].lower().lstrip(".")[:16]


def media_type(path: str) -> str:
    """The type a browser needs for a file, from its name (``application/octet-stream`` if unknown)."""
    ext = os.path.splitext(path)[1].lower()
    return MEDIA_TYPES.get(ext) or mimetypes.guess_type(path)[0] or "application/octet-stream"


def mime_of(path: str) -> str:
    """The bare media type stored in the catalog (no charset parameter)."""
    return media_type(path).split(";")[0]


def camera_keys(make: str | None, model: str | None) -> tuple[str | None, str | None]:
    """The lower-case names the camera filter matches by prefix: "make model" and the model alone,
    with the make dropped where the model repeats it ("Canon" + "Canon EOS 5D" is "canon eos 5d",
    and "eos 5d" alone)."""
    make_l = (make or "").strip().lower()
    model_l = (model or "").strip().lower()
    if make_l and model_l.startswith(make_l):
        model_l = model_l[len(make_l):].strip()
    full = " ".join(p for p in (make_l, model_l) if p)
    return full or None, model_l or None


def image_facts(img: Image.Image, path: str) -> FileFacts:
    """Facts of an opened image (before it is turned upright). Never raises."""
    mime = Image.MIME.get(img.format or "") or mime_of(path)
    width, height = img.size
    try:
        exif = img.getexif()
    except Exception:  # noqa: BLE001 - a damaged EXIF block leaves the facts empty, never fails the file
        return FileFacts(mime=mime, width=width, height=height)
    orientation = _read(lambda: int(exif[_TAG.Orientation]))
    if orientation not in range(1, 9):
        orientation = None
    if orientation in (5, 6, 7, 8):  # a quarter turn: shown the other way round
        width, height = height, width
    sub = _read(lambda: exif.get_ifd(ExifTags.IFD.Exif)) or {}
    gps = _read(lambda: exif.get_ifd(ExifTags.IFD.GPSInfo)) or {}
    lat, lon = _read(lambda: _position(gps)) or (None, None)
    taken = _read(lambda: _date(sub.get(_TAG.DateTimeOriginal) or sub.get(_TAG.DateTimeDigitized)
                                or exif.get(_TAG.DateTime), sub.get(_TAG.OffsetTimeOriginal)))
    return FileFacts(
        mime=mime, width=width, height=height, taken_s=taken,
        camera_make=_read(lambda: _text(exif.get(_TAG.Make))),
        camera_model=_read(lambda: _text(exif.get(_TAG.Model))),
        lens=_read(lambda: _text(sub.get(_TAG.LensModel))),
        lat=lat, lon=lon, orientation=orientation)


def header_facts(path: str) -> FileFacts | None:
    """An image's facts from its header alone, no pixels decoded: for files indexed before the
    catalog kept facts, which re-indexing does not decode again. None when it cannot be opened."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a decompression bomb's warning: its header is all we read
            with Image.open(path) as img:
                return image_facts(img, path)
    except Exception:  # noqa: BLE001 - unreadable now: its facts stay empty, the file as indexed
        return None


def _read(get: Any) -> Any:
    """One EXIF field, or None when it is missing or damaged."""
    try:
        return get()
    except Exception:  # noqa: BLE001 - see image_facts
        return None


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = value.replace("\x00", "").strip()
    return value[:MAX_TEXT] or None


def _date(value: Any, offset: Any) -> int | None:
    """EXIF's "YYYY:MM:DD HH:MM:SS" (with OffsetTimeOriginal's "+02:00" when given) as epoch seconds."""
    text = _text(value)
    if not text:
        return None
    stamp = datetime.strptime(text[:19], "%Y:%m:%d %H:%M:%S").replace(tzinfo=timezone.utc)
    shift = _text(offset)
    if shift and len(shift) == 6 and shift[0] in "+-" and shift[3] == ":":
        sign = 1 if shift[0] == "+" else -1
        stamp -= sign * timedelta(hours=int(shift[1:3]), minutes=int(shift[4:6]))
    return int(stamp.timestamp())


def _position(gps: Any) -> tuple[float, float] | None:
    lat = _degrees(gps.get(_GPS.GPSLatitude), gps.get(_GPS.GPSLatitudeRef), "S")
    lon = _degrees(gps.get(_GPS.GPSLongitude), gps.get(_GPS.GPSLongitudeRef), "W")
    if lat is None or lon is None or abs(lat) > 90 or abs(lon) > 180:
        return None
    return round(lat, 7), round(lon, 7)


def _degrees(dms: Any, ref: Any, negative: str) -> float | None:
    if dms is None:
        return None
    parts = [float(x) for x in (dms if isinstance(dms, (tuple, list)) else (dms,))][:3]
    value = sum(p / 60 ** i for i, p in enumerate(parts))
    if not math.isfinite(value):  # a rational over zero
        return None
    ref_text = _text(ref) or ""
    return -value if ref_text.upper().startswith(negative) else value
