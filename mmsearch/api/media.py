"""Serving indexed files and their thumbnails, and nothing else.

Files go out as HTTP wants them: as the type the catalog read from their content, in the byte
ranges a player asks for (RFC 9110 §14), and not at all when the client's copy is current (§13).

A path is served only when (1) it is spelled normally (absolute, no ``..``, no NUL), (2) the
catalog has items for it, i.e. it was indexed, and (3) after symlinks it still lies under one of
the catalog's roots. The item-id routes are the main door; the check matters for what the
catalog itself holds, e.g. a captions file naming ``../../etc/passwd`` as its image, or a
symlink inside a root that points out of it.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError
from starlette.responses import FileResponse
from starlette.types import Receive, Scope, Send

from mmsearch.errors import MMSearchError, NotFound
from mmsearch.media.decode import to_rgb
from mmsearch.media.formats import decode_formats, is_raw
from mmsearch.media.metadata import media_type
from mmsearch.media.notes import FileNotes
from mmsearch.storage.catalog import Catalog, ItemRow

THUMB_SIZES = (64, 128, 256, 384, 512, 768, 1024)  # requested sizes round up to one of these
# Types the catalog records (Pillow's names) that browsers know by another: an MPO (a 3D or
# phone camera's JPEG with more pictures after the first) shows as the JPEG it starts with.
BROWSER_TYPES = {"image/mpo": "image/jpeg"}
_RANGE_SPEC = re.compile(r"([0-9]*)-([0-9]*)")  # RFC 9110 §14.1.1: int-range or suffix-range
_ETAG = re.compile(r'(?:W/)?("[^"]*")')


class Forbidden(MMSearchError):
    """A path outside what the server may serve."""


class MediaError(MMSearchError):
    """An indexed file that cannot be read now (changed or damaged since it was indexed)."""


def _is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class MediaGuard:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def check(self, path: str) -> Path:
        """The real path of an indexed file under a root; Forbidden or NotFound otherwise."""
        if "\x00" in path or not os.path.isabs(path) or os.path.normpath(path) != path:
            raise Forbidden("not a plain absolute path")
        real = os.path.realpath(path)
        roots = [os.path.realpath(r) for r in self.catalog.roots()]
        if not any(_is_under(real, r) for r in roots):
            raise Forbidden("the file is outside the catalog's roots")
        if not self.catalog.items_for_path(path):
            raise NotFound("the file is not in the catalog")
        if not os.path.isfile(real):
            raise NotFound("the file is gone since it was indexed")
        return Path(real)

    def picture_of(self, item: ItemRow) -> Path:
        """The image that shows an item: itself (a photo, a video), or the indexed image a
        caption describes."""
        if item.modality in ("image", "video"):
            return self.check(item.path)
        if item.ref_path and media_type(item.ref_path).startswith("image/"):
            return self.check(item.ref_path)
        raise NotFound(f"item {item.id} ({item.modality}) has no picture")


class Thumbnails:
    """JPEG thumbnails made on demand, kept in a bounded in-memory LRU keyed by file identity."""

    def __init__(self, max_pixels: int, cache_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_pixels = max_pixels
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple[str, int, int, int], bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    @staticmethod
    def bucket(size: int) -> int:
        return next((s for s in THUMB_SIZES if s >= size), THUMB_SIZES[-1])

    def get(self, path: Path, size: int, at: float | None = None) -> tuple[bytes, str]:
        """(jpeg bytes, etag); ``at``: a video's frame at this many seconds (to the millisecond)."""
        try:
            st = path.stat()
        except OSError:
            raise NotFound(f"{path.name} is gone since it was indexed") from None
        size = self.bucket(size)
        key = (str(path), st.st_mtime_ns, st.st_size, size) + (() if at is None else (round(at * 1000),))
        etag = f'"t{hashlib.blake2b(repr(key).encode(), digest_size=8).hexdigest()}"'  # the same after a restart
        with self._lock:
            data = self._cache.get(key)
            if data is not None:
                self._cache.move_to_end(key)
                return data, etag
        with FileNotes():  # a decoder's warnings about one picture stay off the server's log
            data = self._make(path, size) if at is None else self._frame(path, size, at)
        with self._lock:
            if key not in self._cache:
                self._cache[key] = data
                self._size += len(data)
            while self._size > self.cache_bytes and self._cache:
                _, old = self._cache.popitem(last=False)
                self._size -= len(old)
        return data, etag

    def _frame(self, path: Path, size: int, at: float) -> bytes:
        """A video's frame at ``at`` seconds, decoded at the thumbnail's size in libswscale."""
        from mmsearch.media.video import VideoDecodeError, frame_at

        try:
            img = frame_at(path, at, size)
        except VideoDecodeError as e:
            raise MediaError(f"cannot make a thumbnail of {path.name}: {e}") from e
        return _jpeg(img, size)

    def _make(self, path: Path, size: int) -> bytes:
        if is_raw(str(path)):  # Pillow cannot read it: rawpy's picture (the camera's preview)
            return self._from_decoder(path, size)
        try:
            # Pillow's decompression-bomb warning is only a note (max_pixels decides, as when indexing)
            with Image.open(path, formats=decode_formats()) as source:
                w, h = source.size
                if w * h > self.max_pixels:
                    raise MediaError(f"image of {w}x{h} pixels is over the limit of {self.max_pixels}")
                source.draft("RGB", (size, size))  # JPEG: decode at a fraction of the size
                img: Image.Image = ImageOps.exif_transpose(source)
                if img.mode in ("I", "F") or img.mode.startswith("I;"):  # 16-bit and float grey
                    img = to_rgb(img)
                if img.mode not in ("RGB", "L"):
                    img = img.convert("RGBA")
                    flat = Image.new("RGB", img.size, (255, 255, 255))
                    flat.paste(img, mask=img.getchannel("A"))
                    img = flat
                return _jpeg(img, size)
        except MediaError:
            raise
        except UnidentifiedImageError:  # a RAW or a format Pillow's plain open does not try: the indexer's way
            return self._from_decoder(path, size)
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
            raise MediaError(f"cannot make a thumbnail of {path.name}: {e}") from e

    def _from_decoder(self, path: Path, size: int) -> bytes:
        """A thumbnail through the indexer's decoder (camera RAW, HEIF, any Pillow format)."""
        from mmsearch.media.decode import DecodeError, load_image

        try:
            img = load_image(str(path), self.max_pixels)
        except DecodeError as e:
            raise MediaError(f"cannot make a thumbnail of {path.name}: {e}") from e
        return _jpeg(img, size)


def served_type(path: str, recorded: str | None) -> str:
    """The Content-Type of an indexed file: the type the catalog recorded from its content (a PNG
    named .jpg is image/png; with nosniff, a wrong type breaks the file in a browser), else its
    name's. The name's type is kept when the two agree: it carries a text's charset."""
    named = media_type(path)
    if not recorded or named.split(";")[0] == recorded:
        return named
    return BROWSER_TYPES.get(recorded, recorded)


def byte_ranges(header: str, size: int) -> list[tuple[int, int]] | None:
    """The byte ranges (start, stop) a Range header asks of a file of ``size`` bytes, those in it
    (stop clipped to its end); [] when none is (a 416). None for a header that is not a valid
    bytes range: RFC 9110 §14.2 lets a server ignore it and send the whole file."""
    unit, _, specs = header.partition("=")
    parts = [p.strip() for p in specs.split(",") if p.strip()]
    if unit.strip().lower() != "bytes" or not parts:
        return None
    ranges: list[tuple[int, int]] = []
    try:
        for part in parts:
            m = _RANGE_SPEC.fullmatch(part)
            if m is None or not (m[1] or m[2]) or (m[1] and m[2] and int(m[2]) < int(m[1])):
                return None
            start = int(m[1]) if m[1] else max(size - int(m[2]), 0)
            stop = min(int(m[2]) + 1, size) if m[1] and m[2] else size
            if start < stop:
                ranges.append((start, stop))
    except ValueError:  # a number over Python's 4300-digit limit: taken as invalid
        return None
    return ranges


def etag_matches(header: str, etag: str) -> bool:
    """If-None-Match: ``*``, or a listed tag equal to ``etag`` in weak comparison (RFC 9110
    §13.1.2: W/ ignored on either side)."""
    return header.strip() == "*" or etag.removeprefix("W/") in _ETAG.findall(header)


class FileParts(FileResponse):
    """A file, sent whole or in the byte ranges the route chose. The request's Range and If-Range
    go unread here: Starlette's own reading answers a Range it cannot parse with a text/plain 400,
    where RFC 9110 lets a server ignore it, and the route has weighed both already."""

    def __init__(self, path: Path, ranges: list[tuple[int, int]] | None, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.ranges = ranges

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"range", b"if-range")]
        if self.ranges:
            headers.append((b"range", ("bytes=" + ",".join(f"{a}-{b - 1}" for a, b in self.ranges)).encode()))
        await super().__call__({**scope, "headers": headers}, receive, send)


def _jpeg(img: Image.Image, size: int) -> bytes:
    """The thumbnail every picture source ends in: at most ``size`` px a side, as a JPEG."""
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=82, optimize=True)
    return out.getvalue()


__all__ = ["FileParts", "Forbidden", "MediaError", "MediaGuard", "Thumbnails", "byte_ranges", "etag_matches",
           "media_type", "served_type"]
