"""Walk media folders: which files exist, what kind they are, and their size and mtime.

A re-scan of an unchanged folder costs one stat per file (os.scandir caches it), so
incremental runs are fast.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mmsearch.media.decode import caption_columns, inside
from mmsearch.media.formats import STILL_IMAGE_EXTS

OTHER = "other"  # a file whose extension names no kind: its content decides (indexer/pipeline.py)

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif"})
IMAGE_EXTS = IMAGE_EXTS | STILL_IMAGE_EXTS  # every still image Pillow decodes, HEIF, camera RAW
# libsndfile reads the first five; the others (AAC, Opus, Matroska sound) go through PyAV
AUDIO_EXTS = frozenset({".wav", ".flac", ".ogg", ".oga", ".mp3", ".m4a", ".aac", ".opus", ".mka"})
VIDEO_EXTS = frozenset({".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi"})
TEXT_EXTS = frozenset({".txt", ".md"})
CAPTION_EXTS = frozenset({".csv", ".jsonl"})


@dataclass(frozen=True)
class FoundFile:
    path: str  # absolute
    kind: str  # image | audio | video | text | captions | other (see OTHER)
    size: int
    mtime_ns: int


def kind_of(name: str, *, audio: bool = True) -> str | None:
    ext = os.path.splitext(name)[1].lower()
    if ext in IMAGE_EXTS:
        return "image"
    if ext in TEXT_EXTS:
        return "text"
    if ext in AUDIO_EXTS:
        return "audio" if audio else None
    if ext in VIDEO_EXTS:
        return "video"
    if ext in CAPTION_EXTS:
        return "captions"
    return None


def scan(root: Path, *, audio: bool = True, exclude: Path | None = None,
         bad_names: list[str] | None = None, allowed: Sequence[Path] | None = (),
         skipped_links: list[str] | None = None, others: bool = False) -> Iterator[FoundFile]:
    """Yield media files under root, recursively; hidden entries are skipped. Names that are not
    valid UTF-8 cannot be stored as text: they are skipped and listed in ``bad_names``.

    A symlink is followed only when its real target lies under root or a folder of ``allowed``
    (real paths; None: anywhere), so a link planted in an indexed folder cannot pull in files from
    elsewhere; the others are listed in ``skipped_links``. Linked folders are entered after the
    real ones, so a folder reachable without links keeps its real path, and each folder is
    entered once (a loop is cut where it would be visited twice).

    ``others``: files whose extension names no kind are yielded too, as kind ``other``, still
    with one stat and no read: what they hold is looked at only if they are new or changed."""
    area = None if allowed is None else [Path(os.path.realpath(root)), *allowed]
    seen: set[tuple[int, int]] = set()
    stack = [str(root)]
    linked: list[str] = []  # linked folders, entered when the real ones are done
    excluded = str(exclude) if exclude else None
    while stack or linked:
        folder = stack.pop() if stack else linked.pop()
        try:
            st = os.stat(folder)
        except OSError:
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen or folder == excluded:
            continue
        seen.add(key)
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            try:
                entry.path.encode("utf-8")
            except UnicodeEncodeError:
                if bad_names is not None and kind_of(entry.name.encode("utf-8", "surrogateescape")
                                                     .decode("utf-8", "replace"), audio=audio):
                    bad_names.append(entry.path.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
                continue
            try:
                link = entry.is_symlink()
                if link and not inside(entry.path, area):
                    if skipped_links is not None and (entry.is_dir() or entry.is_file() and kind_of(entry.name)):
                        skipped_links.append(entry.path)
                    continue
                if entry.is_dir(follow_symlinks=True):
                    (linked if link else stack).append(entry.path)
                    continue
                if not entry.is_file(follow_symlinks=True):
                    continue
                kind = kind_of(entry.name, audio=audio)
                if kind is None and others and kind_of(entry.name) is None:
                    kind = OTHER
                if kind is None:
                    continue
                info = entry.stat(follow_symlinks=True)
            except OSError:
                continue  # vanished or unreadable between listing and stat
            if kind == "captions" and not is_captions_file(entry.path):
                continue
            yield FoundFile(entry.path, kind, info.st_size, info.st_mtime_ns)


def scan_file(path: Path) -> Iterator[FoundFile]:
    """One file given by name (``mmsearch index photo.jpg``): itself, when it is a kind mmsearch
    indexes. The path is already resolved, so a link given by name was followed on purpose."""
    kind = kind_of(path.name) or OTHER  # known by its content, or not, where it is decoded
    if kind == "captions" and not is_captions_file(str(path)):
        return
    try:
        info = path.stat()
    except OSError:
        return
    yield FoundFile(str(path), kind, info.st_size, info.st_mtime_ns)


def dedupe_roots(paths: Sequence[Path]) -> list[Path]:
    """The roots of one run without repeats and without roots inside another of them, whose files
    would otherwise be embedded twice. Paths are compared as given: resolve them first."""
    unique = list(dict.fromkeys(paths))
    return [p for p in unique if not any(p != q and p.is_relative_to(q) for q in unique)]


def is_captions_file(path: str) -> bool:
    """A CSV with a header, or JSONL whose first record, names a media column and a caption column."""
    try:
        with open(path, encoding="utf-8", errors="replace", newline="") as fh:
            if path.lower().endswith(".jsonl"):
                first = json.loads(fh.readline() or "null")
                return isinstance(first, dict) and caption_columns(list(first)) is not None
            header = next(csv.reader(fh), [])
            return caption_columns(header) is not None
    except (OSError, ValueError, csv.Error):
        return True  # let decoding record it as failed, with the reason


def content_hash(path: str, block: int = 1 << 20) -> str:
    """What a file holds, so a file that moved is recognised and keeps its items and vectors."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()
