"""Which files are still images: by extension for the scan (a stat, no read), by content for
files whose extension says nothing (read only when such a file is new or changed).

Every format Pillow can decode counts, plus HEIF/HEIC (pillow-heif) and camera RAW (rawpy).
Left out on purpose: PostScript/EPS (decoding runs Ghostscript, an interpreter, on the file),
MPEG (Pillow only identifies it), and Pillow's stubs that need a handler of their own (BUFR,
GRIB, HDF5, WMF/EMF).
"""

from __future__ import annotations

import os
from functools import lru_cache

# Pillow formats never opened, whatever the file is called (see the module's docstring)
EXCLUDED_FORMATS = frozenset({"EPS", "MPEG", "BUFR", "GRIB", "HDF5", "WMF"})
# formats without a signature check (Pillow parses any file as one): found by extension only
_SIGNATURE_CHECKED_IN_OPEN = frozenset({"PCD"})  # no _accept, but its header check is strict

# Extensions of the formats Pillow decodes (Image.registered_extensions(), less EXCLUDED_FORMATS
# and SHARED_EXTS; plus .mpo, opened as JPEG, and .spi, SPIDER's own convention).
# Files under the names other files use too are still found by their content.
SHARED_EXTS = frozenset({".fit", ".gbr", ".msp", ".pcd"})  # Garmin activity, Gerber board, Windows patch, point cloud
PILLOW_EXTS = frozenset({
    ".apng", ".avif", ".avifs", ".blp", ".bmp", ".bw", ".cur", ".dcx", ".dds", ".dib", ".fits", ".flc",
    ".fli", ".ftc", ".ftu", ".gif", ".icb", ".icns", ".ico", ".iim", ".im", ".j2c", ".j2k", ".jfif", ".jp2",
    ".jpc", ".jpe", ".jpeg", ".jpf", ".jpg", ".jpx", ".mpo", ".pbm", ".pcx", ".pfm", ".pgm", ".png", ".pnm",
    ".ppm", ".psd", ".pxr", ".qoi", ".ras", ".rgb", ".rgba", ".sgi", ".spi", ".tga", ".tif", ".tiff", ".vda",
    ".vst", ".webp", ".xbm", ".xpm",
})
HEIF_EXTS = frozenset({".heic", ".heics", ".heif", ".heifs", ".hif"})
# camera RAW, decoded by rawpy (LibRaw)
RAW_EXTS = frozenset({
    ".3fr", ".arw", ".cr2", ".cr3", ".crw", ".dng", ".erf", ".iiq", ".kdc", ".mef", ".mos", ".mrw", ".nef",
    ".nrw", ".orf", ".pef", ".raf", ".rw2", ".rwl", ".sr2", ".srf", ".srw", ".x3f",
})
STILL_IMAGE_EXTS = PILLOW_EXTS | HEIF_EXTS | RAW_EXTS

HEAD_BYTES = 64  # enough for every signature below (Theora's sits at byte 28 of an Ogg file)
_TIFF = (b"II*\x00", b"MM\x00*")
EBML_MAGIC = b"\x1a\x45\xdf\xa3"  # Matroska and WebM start with it
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")
_VIDEO_BRANDS = (b"mp41", b"mp42", b"M4V ", b"M4VH", b"M4VP", b"M4A ", b"M4B ", b"avc1", b"dash", b"mmp4",
                 b"f4v ", b"XAVC", b"MSNV", b"NDAS", b"MiHB")  # ISO brands of videos (and M4A sounds)


def ext_of(path: str) -> str:
    return os.path.splitext(path)[1].lower()


def read_head(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(HEAD_BYTES)


def raw_signature(head: bytes) -> bool:
    """A camera RAW that is not a plain TIFF (which Pillow may read): CR2, CR3, CRW, ORF, RW2, RAF, X3F."""
    return (head[:4] in (b"IIRO", b"IIRS", b"MMOR", b"IIU\x00") or head.startswith(b"FUJIFILMCCD-RAW")
            or head.startswith(b"FOVb") or head[6:14] == b"HEAPCCDR"
            or (head[:4] in _TIFF and head[8:10] == b"CR") or (head[4:8] == b"ftyp" and head[8:12] == b"crx "))


def tiff_signature(head: bytes) -> bool:
    return head[:4] in _TIFF


def heif_signature(head: bytes) -> bool:
    return head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS


def video_type(head: bytes) -> str | None:
    """The media type of a video container FFmpeg reads, from its first bytes: MP4/M4V/3GP and
    QuickTime (by their ISO brands: HEIF and AVIF pictures share the box), Matroska/WebM, AVI."""
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand == b"qt  ":
            return "video/quicktime"
        if brand in _VIDEO_BRANDS or brand[:3] in (b"iso", b"3gp", b"3g2"):
            return "video/mp4"
        return None
    if head[:4] == EBML_MAGIC:
        return "video/x-matroska"
    return "video/x-msvideo" if head[:4] == b"RIFF" and head[8:12] == b"AVI " else None


_SOUND_BRANDS = (b"M4A ", b"M4B ", b"M4P ")  # iTunes sounds, audiobooks, protected sounds


def _theora(head: bytes) -> bool:
    """An Ogg file whose first packet is a Theora header: a video, where other Ogg files are sounds."""
    return head[:4] == b"OggS" and b"\x80theora" in head


def audio_type(head: bytes) -> str | None:
    """The media type of a sound container by its first bytes: Ogg (not Theora video), FLAC, WAV,
    AIFF, an M4A, or an ID3-tagged MP3 (strong signatures only: a bare MPEG sync word is too
    common elsewhere)."""
    if head[:4] == b"OggS":
        return None if _theora(head) else "audio/ogg"
    if head[4:8] == b"ftyp":
        return "audio/mp4" if head[8:12] in _SOUND_BRANDS else None
    if head[:4] == b"fLaC":
        return "audio/flac"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "audio/aiff"
    return "audio/mpeg" if head[:3] == b"ID3" and head[3:4] < b"\x05" else None


def timed_media_type(head: bytes) -> str | None:
    """The media type of a sound or a video by its first bytes; None where they do not say."""
    return audio_type(head) or video_type(head) or ("video/ogg" if _theora(head) else None)


def sniff_kind(path: str) -> str | None:
    """What a file whose extension names no kind holds: "image" (:func:`sniff_image`), "audio" or
    "video" (:func:`timed_media_type`; a video container with sound only becomes a sound item when
    decoded), or None. Reads a few bytes to a few KiB; never raises."""
    try:
        head = read_head(path)
    except OSError:
        return None
    if sniff_image(path, head):
        return "image"
    media_type = timed_media_type(head)
    return media_type.split("/")[0] if media_type else None


def content_kind(path: str, named: str) -> str:
    """What a picture or a video is by its content where its name says the other (a JPEG named
    .mp4 is a photo, an MP4 named .jpg a video); ``named`` otherwise, and for unreadable files."""
    if named == "video" and sniff_image(path):
        return "image"
    if named == "image":
        try:
            return "video" if video_type(read_head(path)) else named
        except OSError:
            return named
    return named


def is_raw(path: str, head: bytes | None = None) -> bool:
    """Decoded by rawpy: a RAW extension, or a RAW signature under another name."""
    if ext_of(path) in RAW_EXTS:
        return True
    try:
        return raw_signature(head if head is not None else read_head(path))
    except OSError:
        return False


@lru_cache(maxsize=1)
def decode_formats() -> tuple[str, ...]:
    """The Pillow formats an image may be opened as (``Image.open(..., formats=...)``): every
    registered one (pillow-heif's included) but the excluded."""
    from PIL import Image

    import mmsearch.media.decode  # noqa: F401 - registers pillow-heif where it is installed

    Image.init()
    return tuple(f for f in Image.OPEN if f not in EXCLUDED_FORMATS)


@lru_cache(maxsize=1)
def sniff_formats() -> tuple[str, ...]:
    """The decodable formats that check a signature before parsing: a file of another kind is
    never taken for one of them (TGA, for one, would accept almost any file)."""
    from PIL import Image

    return tuple(f for f in decode_formats() if Image.OPEN[f][1] is not None or f in _SIGNATURE_CHECKED_IN_OPEN)


def sniff_image(path: str, head: bytes | None = None) -> bool:
    """Whether a file with an extension that says nothing holds a still image: its first bytes
    (RAW, TIFF, HEIF signatures; ``head`` where the caller read them), else Pillow identifying it
    from its header without decoding the pixels. Reads a few bytes to a few KiB; never raises for
    an unreadable file."""
    from PIL import Image

    if head is None:
        try:
            head = read_head(path)
        except OSError:
            return False
    if raw_signature(head) or tiff_signature(head) or heif_signature(head):
        return True
    try:
        with Image.open(path, formats=sniff_formats()):
            return True
    except Image.DecompressionBombError:
        return True  # an image all the same: decoding records why it is refused
    except Exception:  # noqa: BLE001 - not an image Pillow knows: skipped, with its extension counted
        return False


# a video container's type for the same container holding a sound alone (a sound item)
SOUND_IN_VIDEO = {"video/mp4": "audio/mp4", "video/webm": "audio/webm", "video/x-matroska": "audio/x-matroska",
                  "video/ogg": "audio/ogg"}
