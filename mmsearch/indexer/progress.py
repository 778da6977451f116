"""What an indexing run reports while it works: its phase, files and items done, seconds of sound,
and an ETA from what this run has measured.

Items, not files, are the unit: a captions file is one file but thousands of texts. The ETA sums,
for each kind of vector (CLIP images, CLIP texts, CLAP windows...), what is left times the encode
seconds one took so far in this run, scaled by the run's wall time over its encode time (decoding
and storing). Where a kind has work left and no measurement yet, there is no ETA: none is better
than a wrong one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

Phase = str  # "scan" (and models loading), "embed" (embedding and storing), "index" (index upkeep), "done"


@dataclass
class IngestStatus:
    phase: Phase
    files_done: int = 0
    files_total: int = 0
    items_done: int = 0  # vectors embedded and stored (an audio window is one)
    items_total: int | None = None  # expected; None while a sound's windows cannot be estimated yet
    media_seconds: float = 0.0  # seconds of sound and video embedded so far: a long video moves it
    elapsed_s: float = 0.0
    eta_s: float | None = None


@dataclass
class _Kind:
    expected: float = 0.0
    done: int = 0
    encode_s: float = 0.0


@dataclass
class _Stream:
    """Sound or video files: how many vectors one holds is known only once it is decoded, so the
    rest are estimated from the vectors per byte of the files finished so far."""

    keys: list[tuple[str, str]] = field(default_factory=list)  # (space, modality) its vectors go to
    bytes_left: float = 0.0
    bytes_done: float = 0.0
    units_done: int = 0


@dataclass
class IngestMeter:
    """Counts an ingest as it runs and hands an IngestStatus to ``report`` (at most every
    ``every`` seconds, and at once on a phase change)."""

    report: Callable[[IngestStatus], None] | None
    every: float = 0.2
    phase: Phase = "scan"
    files_total: int = 0
    files_done: int = 0
    media_seconds: float = 0.0
    kinds: dict[tuple[str, str], _Kind] = field(default_factory=dict)
    # sounds and videos not decoded yet: their windows and frames are estimated from their bytes
    streams: dict[str, _Stream] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    embed_started: float | None = None
    _sent: float = 0.0

    def plan(self, files: Sequence[tuple[str, str, int]], spaces_for: Callable[[str], list[str]]) -> None:
        """The work: (kind, path, size) of each file to embed; captions files are counted by row."""
        self.files_total = len(files)
        for kind, path, size in files:
            if kind in STREAM_KEYS:
                stream = self.streams.setdefault(kind, _Stream())
                stream.bytes_left += size
                for modality, space_of in STREAM_KEYS[kind]:
                    for space in spaces_for(space_of):
                        key = (space, modality)
                        self.kinds.setdefault(key, _Kind())
                        if key not in stream.keys:
                            stream.keys.append(key)
                continue
            modality = "image" if kind == "image" else "text"
            units = count_rows(path) if kind == "captions" else 1
            for space in spaces_for(modality):
                self.kinds.setdefault((space, modality), _Kind()).expected += units
        self.set_phase("embed")

    def set_phase(self, phase: Phase) -> None:
        self.phase = phase
        if phase == "embed" and self.embed_started is None:
            self.embed_started = time.monotonic()
        self._emit(force=True)

    def embedded(self, key: tuple[str, str], n: int, seconds: float) -> None:
        k = self.kinds.setdefault(key, _Kind())
        k.done += n
        k.encode_s += seconds
        self._emit()

    def media(self, seconds: float) -> None:
        """More of a sound's or a video's time embedded (its windows or frames reached further),
        as the file goes: the one channel for seconds of media, so a long video shows progress
        before it ends. Files that fail later keep what they embedded first."""
        self.media_seconds += seconds
        self._emit()

    def file_done(self, kind: str, size: int, items: Sequence[Any]) -> None:
        self.files_done += 1
        stream = self.streams.get(kind)
        if stream is not None:
            stream.bytes_left = max(0.0, stream.bytes_left - size)
            stream.bytes_done += size
            stream.units_done += sum(len(it.embeddings) for it in items)
        self._emit()

    def status(self) -> IngestStatus:
        now = time.monotonic()
        expected = self._expected()
        items_done = sum(k.done for k in self.kinds.values())
        total = None if expected is None else int(round(max(sum(expected.values()), items_done)))
        if self.phase == "done":  # what was embedded is the whole: a failed file's items never come
            total = items_done
        return IngestStatus(phase=self.phase, files_done=self.files_done, files_total=self.files_total,
                            items_done=items_done, items_total=total, media_seconds=self.media_seconds,
                            elapsed_s=now - self.started, eta_s=self._eta(expected, now))

    def _expected(self) -> dict[tuple[str, str], float] | None:
        streamed = {key for stream in self.streams.values() for key in stream.keys}
        out = {key: k.expected for key, k in self.kinds.items() if key not in streamed}
        for key in streamed:
            out[key] = out.get(key, 0.0) + self.kinds[key].done
        for stream in self.streams.values():
            if stream.bytes_left > 0:
                if not stream.bytes_done:
                    return None  # none of these finished yet: their vectors per byte are unknown
                left = stream.bytes_left * stream.units_done / stream.bytes_done / max(1, len(stream.keys))
                for key in stream.keys:
                    out[key] += left
        return out

    def _eta(self, expected: dict[tuple[str, str], float] | None, now: float) -> float | None:
        if self.phase != "embed" or expected is None or self.embed_started is None:
            return None
        left_s, encode_s = 0.0, 0.0
        for key, k in self.kinds.items():
            encode_s += k.encode_s
            left = max(0.0, expected.get(key, 0.0) - k.done)
            if left and not k.done:
                return None  # not measured yet
            if left:
                left_s += left * k.encode_s / k.done
        wall = now - self.embed_started
        return left_s * (wall / encode_s) if encode_s > 0 else None

    def _emit(self, force: bool = False) -> None:
        if self.report is None:
            return
        now = time.monotonic()
        if force or now - self._sent >= self.every:
            self._sent = now
            self.report(self.status())


# what a sound's or a video's vectors are: (modality of the vectors, modality whose spaces embed them)
STREAM_KEYS: dict[str, tuple[tuple[str, str], ...]] = {
    "audio": (("audio", "audio"),),
    "video": (("image", "image"), ("audio", "audio")),
}


def count_rows(path: str) -> int:
    """Records in a captions file, about (a CSV's quoted line breaks count twice): for the ETA
    only. Counting lines reads the file at disk speed: milliseconds for thousands of rows."""
    try:
        with open(path, "rb") as fh:
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
    except OSError:
        return 1
    return max(1, lines - (0 if path.lower().endswith(".jsonl") else 1))
