"""Ingestion: scan -> decode (worker threads) -> embed (batched) -> store -> index.

Durability: a batch's vectors are appended (fsync) to the vector stores before the SQL rows that
reference them commit, and a file's rows commit in one transaction. A crash leaves at worst
vectors that no row references (ignored, never reused: ids only grow), and the next run
re-does every file that did not commit. Nothing is lost and nothing is duplicated.
"""

from __future__ import annotations

import errno
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from mmsearch import cpus
from mmsearch.encoders.encoder_set import EncoderSet
from mmsearch.errors import BadInput, MMSearchError
from mmsearch.handoff import offer
from mmsearch.indexer.progress import IngestMeter, IngestStatus
from mmsearch.indexer.scan import OTHER, FoundFile, content_hash, dedupe_roots, kind_of, scan, scan_file
from mmsearch.media.decode import (JPEG_SUFFIXES, DecodeError, SoundWaits, Unit, probe_jpeg, read_captions, read_image,
                                   read_text)
from mmsearch.media.formats import SOUND_IN_VIDEO, content_kind, read_head, sniff_kind, timed_media_type
from mmsearch.media.metadata import FileFacts, extension, mime_of
from mmsearch.media.notes import FileNotes
from mmsearch.media.video import frame_unit
from mmsearch.media.video_parts import VideoParts
from mmsearch.settings import Settings
from mmsearch.storage.catalog import Catalog, FileRecord, FileState, NewItem
from mmsearch.writer import CatalogWriter

Progress = Callable[[int, int], None]  # (files done, files to do)
# causes that say nothing about the file: it is tried again on the next run, never left "failed"
PASSING_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.EAGAIN})
DEFAULT_FRAME_SIDE = 256  # video frames' short side for an image encoder that does not say its own
IDLE_SHARE = 0.25  # an idle encoder takes a part batch of at least this share of its batch size
IDLE_WAIT = 0.05  # seconds without a decoded unit before the encoder takes whatever is waiting
HASH_BESIDE_BYTES = 32 << 20  # a file this large is hashed on a thread of its own while it decodes
PASSING_SQL = ("disk is full", "out of memory", "database is locked", "no space left")


def is_passing_failure(exc: BaseException) -> bool:
    """A failure of the machine (full disk, no memory, a busy database), not of the file."""
    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, OSError):
        return exc.errno in PASSING_ERRNOS
    if isinstance(exc, SQLAlchemyError):
        text = str(getattr(exc, "orig", exc)).lower()
        return any(marker in text for marker in PASSING_SQL)
    return False


def _reason(exc: SQLAlchemyError) -> str:
    return str(getattr(exc, "orig", None) or exc)[:200]


@dataclass
class IndexReport:
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    failed: int = 0
    seconds: float = 0.0
    items: int = 0
    moved: int = 0  # recognised by content at a new path: items and vectors kept
    failures: list[tuple[str, str]] = field(default_factory=list)
    skipped_audio: str | None = None  # why audio was left out, when it was
    waiting_for_audio: int = 0  # new or changed files with sound, left as they are while audio is off
    skipped_links: int = 0  # symlinks not followed: their targets lie outside the allowed folders
    skipped: dict[str, int] = field(default_factory=dict)  # neither media nor text, by extension
    warnings: list[tuple[str, str]] = field(default_factory=list)  # indexed, with what the decoder said

    def skip(self, path: str) -> None:
        ext = extension(path) or "(none)"
        self.skipped[ext] = self.skipped.get(ext, 0) + 1
    media_seconds: float = 0.0  # seconds of sound and video embedded (a video's time counted once)
    still_failed: int = 0  # unchanged files that failed on an earlier run (--retry-failed tries them)

    def as_dict(self) -> dict[str, Any]:
        return {"added": self.added, "updated": self.updated, "removed": self.removed, "moved": self.moved,
                "unchanged": self.unchanged, "still_failed": self.still_failed, "failed": self.failed,
                "items": self.items,
                "skipped_links": self.skipped_links, "seconds": round(self.seconds, 3),
                "media_seconds": round(self.media_seconds, 3),
                "failures": [{"path": p, "reason": r} for p, r in self.failures],
                "skipped": dict(sorted(self.skipped.items(), key=lambda kv: (-kv[1], kv[0]))),
                "warnings": [{"path": p, "note": n} for p, n in self.warnings],
                "waiting_for_audio": self.waiting_for_audio,
                **({"skipped_audio": self.skipped_audio} if self.skipped_audio else {})}


@dataclass
class _Pending:
    found: FoundFile
    root_id: int
    is_update: bool
    decoded: bool = False  # the decoder has sent every unit of this file
    queued: int = 0  # vectors asked for (a unit is embedded once per target space)
    embedded: int = 0
    ready: bool = False
    error: str | None = None
    retry: bool = False  # the error was a passing one (see is_passing_failure)
    content_hash: str | None = None
    facts: FileFacts | None = None  # read by the decode worker
    note: str | None = None  # what the decoder warned about (media/notes.py)
    waiting: bool = False  # it holds sound and audio is off: left as it is (SoundWaits)
    frames_span: float = 0.0  # its video frames' spans added up (they tile the video)
    sound_end: float = 0.0  # the end of its last sound window
    items: dict[tuple[str, int], NewItem] = field(default_factory=dict)

    @property
    def covered(self) -> float:
        """Seconds of its sound or video embedded so far: a file's time once, whichever embeds it."""
        return max(self.frames_span, self.sound_end)


def index_folders(paths: Sequence[Path], writer: CatalogWriter, encoders: EncoderSet, settings: Settings,
                  progress: Progress | None = None, stop: threading.Event | None = None,
                  retry_failed: bool = False, allowed_roots: Sequence[Path] | None = None,
                  status: Callable[[IngestStatus], None] | None = None) -> IndexReport:
    """Bring the catalog in line with the folders: add new files, re-embed changed ones (their
    items keep their ids), recognise moved ones by content (nothing re-embedded), drop deleted
    ones; then let the writer's index upkeep catch up. Files that failed are tried again only
    when they change, or with ``retry_failed``; files that failed for a passing cause (disk
    full, out of memory) are tried again on every run.

    Symlinks and caption rows may reach only into ``allowed_roots`` (the service's index roots,
    whatever ``follow_links`` says), else into these folders unless ``settings.follow_links``.
    ``status`` hears the phase, items done and an ETA as the run goes (indexer/progress.py)."""
    t0 = time.perf_counter()
    if settings.ray:  # before any work: without the extra, say how to install it
        from mmsearch.indexer.ray_ingest import require_ray

        require_ray()
    report = IndexReport()
    meter = IngestMeter(status)
    meter.set_phase("scan")
    roots = dedupe_roots([Path(p).expanduser().resolve() for p in paths])
    for r in roots:
        if r.is_file() and kind_of(r.name) is None and _sniffed_kind(str(r)) is None:
            raise BadInput(f"not a kind of file mmsearch indexes: {r} (images, videos, sounds, .txt/.md notes, "
                           "captions .csv/.jsonl)")
        if not r.is_dir() and not r.is_file():
            raise BadInput(f"no such folder or file: {r}")
    area = ([Path(p).expanduser().resolve() for p in allowed_roots] if allowed_roots is not None
            else None if settings.follow_links else [r if r.is_dir() else r.parent for r in roots])
    catalog = writer.catalog
    # With no model named, or the one the catalog records, there is nothing to check, so the
    # models load only if there is work (an unchanged folder re-scans in a fraction of a second).
    eager = encoders.reembed or not catalog.spaces() or not _named_models_recorded(settings, catalog.spaces())
    spaces = _load_spaces(encoders, writer, report) if eager else None
    work = _plan(roots, writer, encoders, spaces, report, retry_failed, area)
    if work and spaces is None:
        spaces = _load_spaces(encoders, writer, report)
        if encoders.redo:  # a space was added: its files must all be embedded again
            report.unchanged = report.failed = report.skipped_links = report.still_failed = 0  # recounted; removals stay
            report.waiting_for_audio = 0
            report.failures = []
            report.skipped = {}
            work = _plan(roots, writer, encoders, spaces, report, retry_failed, area)
        elif "clap" not in spaces:  # audio is unavailable after all: what CLAP embeds waits
            waits = _waiting_kinds(catalog)
            report.waiting_for_audio += sum(p.found.kind in waits for p in work)
            work = [p for p in work if p.found.kind not in waits]
    if work:
        meter.plan([(p.found.kind, p.found.path, p.found.size) for p in work],
                   lambda modality: [s for s in encoders.spaces_for(modality) if s in (spaces or [])])
        if any(p.found.kind == "video" for p in work):  # else the image model's transform is not read
            settings = settings.model_copy(update={"video_frame_side": frame_side(settings, encoders)})
        ingest = _Ingest
        if settings.ray:  # decode and embed on a Ray cluster; planning and commits stay here
            from mmsearch.indexer.ray_ingest import RayIngest as ingest  # type: ignore[assignment]
        ingest(writer, encoders, settings, spaces or [], report, progress, stop, area, meter).run(work)
    meter.set_phase("index")
    writer.upkeep(wait=True)
    report.seconds = time.perf_counter() - t0
    writer.record_run(run_summary(roots, report, bool(settings.ray)))
    meter.set_phase("done")
    return report


def frame_side(settings: Settings, encoders: EncoderSet) -> int:
    """The short side video frames are decoded at: the setting, else the side the image encoder
    resizes to, so that a frame is scaled once (in libswscale), not again by ``prepare``."""
    if settings.video_frame_side:
        return settings.video_frame_side
    side = getattr(encoders.get("clip"), "image_side", None)
    return side if isinstance(side, int) and side >= 32 else DEFAULT_FRAME_SIDE


def run_summary(roots: Sequence[Path], report: IndexReport, ray: bool) -> dict[str, Any]:
    """What the catalog keeps of a run for its history (``stats``): counts, not the file lists."""
    counts = {k: v for k, v in report.as_dict().items() if isinstance(v, (int, float))}
    return {"finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "roots": [str(r) for r in roots],
            **counts, "skipped": sum(report.skipped.values()), "ray": ray}


def _named_models_recorded(settings: Settings, spaces: dict[str, tuple[str, int]]) -> bool:
    """Whether each model the settings name is, spelled the same, the one the catalog records."""
    named = {"clip": settings.model, "clap": settings.audio_model if settings.audio else None}
    return all(spec is None or (space in spaces and spaces[space][0] == spec) for space, spec in named.items())


def _plan(roots: list[Path], writer: CatalogWriter, encoders: EncoderSet, spaces: list[str] | None,
          report: IndexReport, retry_failed: bool, area: list[Path] | None) -> list[_Pending]:
    """Scan the folders against the catalog: recognise moves, drop files that are gone, count
    the unchanged ones, and return the rest to embed. ``spaces`` None: not loaded yet, every
    kind counts as work."""
    catalog = writer.catalog
    if encoders.redo:  # a new or re-embedded space: every folder of the catalog, not just these
        roots = dedupe_roots(roots + [r for r in map(Path, catalog.roots()) if r.is_dir() or r.is_file()])
    work: list[_Pending] = []
    gone: set[str] = set()
    quiet: set[str] = set()  # gone, but never indexed (skipped): not counted as removed
    unread: list[tuple[int, FoundFile]] = []  # unchanged images whose facts were never read
    audio_on = encoders.enabled("clap") and (spaces is None or "clap" in spaces)
    wanted = {"image", "video", *(("audio",) if audio_on else ())}  # what an unnamed file may be taken as
    waiting_kinds = set() if audio_on else _waiting_kinds(catalog)
    for root in roots:
        root_id = writer.ensure_root(root)
        known = catalog.file_states(root)
        # audio files are always scanned: with audio off they are left as they are, not "gone"
        bad_names: list[str] = []
        skipped: list[str] = []
        found = {f.path: f for f in (scan_file(root) if root.is_file() else scan(
            root, exclude=catalog.root, bad_names=bad_names, allowed=area, skipped_links=skipped, others=True))}
        report.skipped_links += len(skipped)
        report.failed += len(bad_names)
        report.failures += [(name, "file name is not valid UTF-8: rename it to index it") for name in bad_names]
        gone.update(p for p in known if p not in found)
        quiet.update(p for p, old in known.items() if p not in found and old.status == "skipped")
        skips: list[FileRecord] = []
        for path, f in found.items():
            old = known.get(path)
            if f.kind in waiting_kinds:
                _left_for_audio(report, old, f)
            elif old is not None and old.size == f.size and old.mtime_ns == f.mtime_ns and old.status != "retry" \
                    and not (retry_failed and old.status in ("failed", "skipped")) \
                    and not (old.status == "skipped" and f.kind != OTHER):  # a kind this version knows
                if old.status == "skipped":
                    report.skip(path)
                else:
                    report.unchanged += 1
                    report.still_failed += old.status == "failed"
                    if old.facts_missing:
                        unread.append((old.id, f))
            elif f.kind == OTHER and (sniffed := _sniffed_kind(path)) not in wanted:
                if sniffed == "audio":  # a sound with audio off is left unrecorded, as one named .flac is
                    _left_for_audio(report, old, f)
                else:
                    report.skip(path)
                    skips.append(FileRecord(path=path, root_id=root_id, kind=OTHER, size=f.size,
                                            mtime_ns=f.mtime_ns, skipped=True))
            else:
                f = replace(f, kind=sniffed) if f.kind == OTHER else f
                work.append(_Pending(f, root_id, is_update=old is not None))
        writer.commit_files(skips)
    _fill_facts(unread, writer)
    work = [p for p in work if p.is_update or not _moved(p, writer, gone, report)]
    report.removed += writer.delete_files(sorted(gone)) and len(gone - quiet)
    return work


def _waiting_kinds(catalog: Catalog) -> set[str]:
    """The kinds of file that wait for a run with audio while audio is off: sounds, and notes and
    captions in a catalog that holds sound (embedded in CLIP's space alone, they would lose their
    CLAP vectors for good). Videos wait only where they hold sound (SoundWaits)."""
    return {"audio", *(("text", "captions") if "clap" in catalog.spaces() else ())}


def _left_for_audio(report: IndexReport, old: FileState | None, f: FoundFile) -> None:
    """A file CLAP embeds while audio is off: left as it is, counted as waiting where it is new or changed."""
    if old is not None and old.size == f.size and old.mtime_ns == f.mtime_ns:
        report.unchanged += 1
        report.still_failed += old.status == "failed"
    else:
        report.waiting_for_audio += 1


def _sniffed_kind(path: str) -> str | None:
    """What a new or changed file whose extension names no kind holds (an image, a video, a
    sound): its header is read here (the scan only stats), and what the decoder says about it is
    left to decoding."""
    with FileNotes():
        return sniff_kind(path)


def _fill_facts(unread: list[tuple[int, FoundFile]], writer: CatalogWriter, batch: int = 500) -> None:
    """Images indexed before the catalog kept file facts (migration 0003) are unchanged, so they
    are not decoded again: their facts (size, EXIF date, camera, place) are read from their
    headers alone, no pixels and no vectors, and stored through the writer ``batch`` at a time.
    Work follows those files: once stored, a file has a width and is never read again (one whose
    header cannot be opened now keeps empty facts, and is tried on the next run)."""
    from mmsearch.media.metadata import header_facts

    for start in range(0, len(unread), batch):
        writer.fill_facts([(file_id, f.path, f.mtime_ns, facts) for file_id, f in unread[start:start + batch]
                           if (facts := header_facts(f.path)) is not None])


def _hashed_beside(path: str) -> Future[str]:
    """The file's content hash, read on a thread of its own: a long video's read (a second for a
    1 GB film) overlaps its decoding instead of delaying its commit after the last frame."""
    digest: Future[str] = Future()

    def read() -> None:
        try:
            digest.set_result(content_hash(path))
        except BaseException as e:  # noqa: BLE001 - raised where the hash is asked for
            digest.set_exception(e)

    threading.Thread(target=read, name="mmsearch-hash", daemon=True).start()
    return digest


def _moved(p: _Pending, writer: CatalogWriter, gone: set[str], report: IndexReport) -> bool:
    """A new file with the content of a known file that is no longer where it was (gone in this
    scan, or outside the folders scanned: a renamed folder) takes over that file's row, items
    and vectors. Hashes are computed only when a same-size candidate has vanished."""
    f = p.found
    digest: str | None = None
    for old_path, old_hash in writer.catalog.files_of_size(f.size, f.kind):
        if old_hash is None or (old_path not in gone and os.path.lexists(old_path)):
            continue
        digest = digest or content_hash(f.path)
        if digest == old_hash:
            writer.move_file(old_path, f.path, p.root_id, f.mtime_ns)
            gone.discard(old_path)
            report.moved += 1
            return True
    return False


def _load_spaces(encoders: EncoderSet, writer: CatalogWriter, report: IndexReport) -> list[str]:
    """Load the encoders up front: model mismatches and missing weights fail before any work.
    A default audio model that cannot be loaded leaves audio out with a warning."""
    from mmsearch.errors import ModelUnavailable

    spaces = ["clip"]
    encoders.record("clip", writer)
    if encoders.enabled("clap"):
        try:
            encoders.record("clap", writer)
            spaces.append("clap")
        except ModelUnavailable as e:
            if encoders.settings.audio_model and not encoders.loaded("clap"):
                raise
            report.skipped_audio = str(e).splitlines()[0]
    return spaces


class _Ingest:
    """One run's moving parts: decode workers feed a bounded queue; this thread embeds and writes."""

    def __init__(self, writer: CatalogWriter, encoders: EncoderSet, settings: Settings,
                 spaces: list[str], report: IndexReport, progress: Progress | None,
                 stop: threading.Event | None, area: list[Path] | None,
                 meter: IngestMeter | None = None) -> None:
        self.writer, self.encoders, self.settings = writer, encoders, settings
        self.meter = meter or IngestMeter(None)
        self.area = area  # where caption rows may link to
        self.spaces = spaces
        self.report = report
        self.progress = progress
        self.stop = stop or threading.Event()
        self.next_id = writer.next_embedding_id()
        self.buffers: dict[tuple[str, str], list[tuple[int, Unit, Any]]] = {}
        self.ready: list[int] = []
        self.ready_items = 0
        self.done = 0
        self.synced_at = time.monotonic()
        self.jpegs_on_device = False  # JPEGs decoded in batches on the encoder's device (run decides)
        self.stager: ThreadPoolExecutor | None = None
        self.staged: tuple[tuple[str, str], list[tuple[int, Unit, Any]], Future] | None = None
        self.helping = threading.Condition()  # guards in_hand and shared
        self.in_hand = 0  # files a decode thread holds
        self.shared: dict[int, VideoParts] = {}  # long videos whose parts idle threads may take
        # audio is off, but the catalog holds sound tracks: a video with sound waits for audio
        self.sound_waits = "clap" not in spaces and "clap" in writer.catalog.spaces()

    def targets(self, modality: str) -> list[str]:
        return [s for s in self.encoders.spaces_for(modality) if s in self.spaces]

    def run(self, work: list[_Pending]) -> None:
        self.work = work
        for space in self.spaces:  # batches from here on: a lone row need not open a session of its own
            getattr(self.encoders.get(space), "for_ingest", lambda: None)()
        self.jpegs_on_device = self._device_decode()
        if self.jpegs_on_device:  # one thread stages the next image batch on the device while one encodes
            self.stager = ThreadPoolExecutor(1, thread_name_prefix="mmsearch-stage")
        files: queue.Queue[int] = queue.Queue()
        for i in range(len(work)):
            files.put(i)
        events: queue.Queue[tuple] = queue.Queue(maxsize=max(64, 4 * self.settings.batch_size))
        on_gpu = any(self.encoders.get(s).device.startswith("cuda") for s in self.spaces)
        decoders = cpus.decode_workers(self.settings, on_gpu)
        # every decode thread where a video may need them: those with no file decode its parts
        n_workers = decoders if any(p.found.kind == "video" for p in work) else min(decoders, len(work))
        workers = [threading.Thread(target=self._decode_worker, args=(files, events), daemon=True)
                   for _ in range(n_workers)]
        for w in workers:
            w.start()
        alive = n_workers
        try:
            while alive and not self.stop.is_set():
                try:
                    ev = events.get_nowait()
                except queue.Empty:
                    if self._flush(IDLE_SHARE):  # the encoder would wait: embed a part batch
                        continue
                    try:
                        ev = events.get(timeout=IDLE_WAIT)
                    except queue.Empty:
                        self._flush(0)  # the decoders are behind: embed what is waiting
                        continue
                alive -= self._take(ev)
                while alive:  # what is queued already, so a batch is cut knowing it: a run's last is even
                    try:
                        alive -= self._take(events.get_nowait())
                    except queue.Empty:
                        break
                if alive:
                    self._flush()
            if not self.stop.is_set():
                self._flush(0)
            self._commit()
        finally:
            self.stop.set()
            for w in workers:
                w.join(timeout=5)
            if self.stager is not None:
                self.stager.shutdown(wait=True, cancel_futures=True)
            self._commit()  # what finished before an interrupt is kept

    def _take(self, ev: tuple) -> int:
        """Buffer a decoded unit or record a file's end; 1 when ``ev`` says a decoder exited."""
        if ev[0] == "exit":
            return 1
        if ev[0] == "unit":
            _, idx, unit, prepared = ev
            for space, prep in prepared.items():
                self.buffers.setdefault((space, unit.modality), []).append((idx, unit, prep))
            self.work[idx].queued += len(prepared)
        else:
            _, idx, n, error = ev
            p = self.work[idx]
            p.decoded, p.error = True, error or p.error or (None if n else "nothing to index in this file")
            self._maybe_ready(idx)
        return 0

    def _device_decode(self) -> bool:
        """Whether JPEGs go to the encoder's device undecoded (``image_decode``; auto: on CUDA)."""
        if "clip" not in self.spaces or self.settings.image_decode == "pillow":
            return False
        enc = self.encoders.get("clip")
        if getattr(enc, "runtime", "torch") != "torch":  # the CPU runtime takes Pillow's tensors
            return False
        wanted = self.settings.image_decode == "torch" or enc.device.startswith("cuda")
        return wanted and getattr(enc, "device_images", lambda: None)() is not None

    def _decode_worker(self, files: queue.Queue[int], events: queue.Queue[tuple]) -> None:
        try:
            while not self.stop.is_set():
                with self.helping:  # taken and counted at once: a helper never sees a file in between
                    try:
                        idx = files.get_nowait()
                    except queue.Empty:
                        break
                    self.in_hand += 1
                try:
                    self._decode_file(idx, events)
                finally:
                    with self.helping:
                        self.in_hand -= 1
                        self.shared.pop(idx, None)
                        self.helping.notify_all()
            self._help(events)  # no file left to take: a long video's parts may use this thread
        finally:
            self._put(events, ("exit",))

    def _decode_file(self, idx: int, events: queue.Queue[tuple]) -> None:
        n, error = 0, None
        with FileNotes() as notes:  # what the decoder says about this file goes on its record
            found = self.work[idx].found
            digest: Future[str] | None = None
            try:
                try:
                    for unit in self._decode(self.work[idx], partial(self._share, idx)):
                        if digest is None and found.size >= HASH_BESIDE_BYTES:  # once it is read at all
                            digest = _hashed_beside(found.path)
                        if self._queue_unit(idx, unit, events):
                            n += 1
                        if self.stop.is_set():
                            return
                except SoundWaits:
                    self.work[idx].waiting = True
                except DecodeError as e:
                    error = str(e)
                # a small file is hashed once its units are out: the encoder does not wait on its read
                if not self.work[idx].waiting:
                    self.work[idx].content_hash = digest.result() if digest else content_hash(found.path)
            except (MemoryError, OSError) as e:
                if error is None:  # a file that failed to decode keeps that reason
                    error = f"{type(e).__name__}: {e}"
                    self.work[idx].retry = is_passing_failure(e)  # tried again on the next run
            except Exception as e:  # noqa: BLE001 - one bad file must not stop the run
                error = f"{type(e).__name__}: {e}"
        if self.stop.is_set():  # a part may be missing (a helper stopped): done next run, not now
            return
        if notes.text and error:
            error = f"{error} ({notes.text})"
        self.work[idx].note = notes.text
        self._put(events, ("done", idx, n, error))

    def _queue_unit(self, idx: int, unit: Unit, events: queue.Queue[tuple]) -> bool:
        """Prepare a unit for the spaces that embed it and hand it to the encoder; False when no
        space takes it."""
        prepared = {s: self.encoders.get(s).prepare(unit.modality, unit.payload) for s in self.targets(unit.modality)}
        unit.payload = None
        if prepared:
            self._put(events, ("unit", idx, unit, prepared))
        return bool(prepared)

    def _share(self, idx: int, parts: VideoParts) -> None:
        """Offer a long video's parts to the threads that run out of files (``_help``)."""
        with self.helping:
            self.shared[idx] = parts
            self.helping.notify_all()

    def _help(self, events: queue.Queue[tuple]) -> None:
        """Decode parts of the long videos other threads hold, until no file is in hand. A video
        that gives no part is offered no more (its parts only shrink; one that might have given
        one after a failed seek or a race loses at most a cut). The frames go to the encoder as
        the file's own; a failure is the file's (its thread raises it)."""
        while not self.stop.is_set():
            with self.helping:
                while not self.shared and self.in_hand and not self.stop.is_set():
                    self.helping.wait(0.5)
                offered = list(self.shared.items())
            if not offered:
                return
            for idx, parts in offered:
                part = parts.take()
                if part is None:
                    with self.helping:
                        if self.shared.get(idx) is parts:
                            del self.shared[idx]
                    continue
                try:
                    for sample in parts.frames(part):
                        self._queue_unit(idx, frame_unit(sample, parts.info), events)
                        if self.stop.is_set():  # the file is not finished: its thread puts no "done"
                            return
                except Exception as e:  # noqa: BLE001 - the file's: its own thread fails it (``parts.wait``)
                    parts.stop(e)
                break

    def _put(self, events: queue.Queue[tuple], ev: tuple) -> None:
        offer(events, ev, self.stop)  # once stopped nobody reads on (run counts no exit then)

    def _decode(self, p: _Pending, share: Callable[[VideoParts], None] | None = None) -> Iterator[Unit]:
        """The units to embed; an image's facts (EXIF date, camera, place) are kept on ``p``.
        ``share``: where a long video's parts are offered to idle threads."""
        s, f = self.settings, p.found
        named = kind_of(f.path)
        p.facts = FileFacts(mime=mime_of(f.path))
        if f.size == 0:
            raise DecodeError("empty file (0 bytes)")
        kind = content_kind(f.path, f.kind)  # a picture named .mp4 is a photo, a video named .jpg a video
        if kind != f.kind:  # recorded as what it is: counted, re-embedded and served as that
            p.found = f = replace(f, kind=kind)
        if kind in ("audio", "video") and (kind != named or not p.facts.mime.startswith(("audio/", "video/"))):
            # known by its content (no extension, or a wrong one): served as what it is
            p.facts = FileFacts(mime=timed_media_type(read_head(f.path)) or p.facts.mime)
        if kind == "image":
            jpeg = probe_jpeg(f.path, s.max_image_pixels) if self.jpegs_on_device and \
                f.path.lower().endswith(JPEG_SUFFIXES) else None
            if jpeg is not None:  # decoded with its batch on the encoder's device
                p.facts = jpeg.facts or p.facts
                yield Unit("image", jpeg)
            else:
                image, p.facts = read_image(f.path, s.max_image_pixels)
                yield Unit("image", image)
        elif kind == "text":
            text = read_text(f.path, s.max_text_bytes)
            yield Unit("text", text, text=text)
        elif kind == "captions":
            yield from read_captions(f.path, s.max_text_bytes, self.area)
        elif kind == "audio":
            from mmsearch.media.audio import AudioDecodeError, iter_windows

            clap = self.encoders.get("clap")
            try:
                for w in iter_windows(Path(f.path), clap.sample_rate, clap.window_seconds):  # type: ignore[attr-defined]
                    yield Unit("audio", w.samples, start=w.start, end=w.end)
            except AudioDecodeError as e:
                raise DecodeError(str(e)) from e
        elif kind == "video":
            from mmsearch.media.video import VideoInfo, video_units

            clap = self.encoders.get("clap") if self.targets("audio") else None
            info = VideoInfo()
            yield from video_units(f.path, s.video_interval, s.video_frame_side or DEFAULT_FRAME_SIDE,
                                   (clap.sample_rate, clap.window_seconds) if clap else None,  # type: ignore[attr-defined]
                                   info, share, self.sound_waits)
            mime = p.facts.mime
            if not info.has_video and mime in SOUND_IN_VIDEO:  # a sound item: served as a sound
                mime = SOUND_IN_VIDEO[mime]
            p.facts = replace(p.facts, width=info.width, height=info.height, mime=mime)

    def _flush(self, share: float = 1.0) -> bool:
        """Embed what is buffered in batches of at least ``share`` of a batch: 1, full batches;
        less, a part batch too (the encoder would otherwise sit idle while the decoders catch up:
        at the start of a run, or behind one slow file); 0, everything, the staged batch included.
        Whether anything was embedded."""
        embedded = False
        for key in list(self.buffers):
            buf = self.buffers[key]
            bs = self.encoders.get(key[0]).batch_size
            if share <= 0 and buf:  # the rest in even batches: a lone row costs a whole batch's time
                k = -(-len(buf) // bs)
                for i in range(k):
                    self._embed(key, buf[i * len(buf) // k: (i + 1) * len(buf) // k])
                self.buffers[key], embedded = [], True
                continue
            least = max(1, min(bs, int(bs * share)))
            while len(buf) >= least:
                batch, self.buffers[key] = buf[:bs], buf[bs:]
                buf = self.buffers[key]
                self._embed(key, batch)
                embedded = True
        if share <= 0:
            self._finish_staged()
        return embedded

    def _embed(self, key: tuple[str, str], batch: list[tuple[int, Unit, Any]]) -> None:
        space, modality = key
        enc = self.encoders.get(space)
        if self.stager is not None and key == ("clip", "image"):
            future = self.stager.submit(enc.stage_images, [prep for _, _, prep in batch])  # type: ignore[attr-defined]
            self._finish_staged()  # the previous batch encodes while this one is staged
            self.staged = (key, batch, future)
            return
        t = time.perf_counter()
        vectors = enc.encode(modality, [prep for _, _, prep in batch])
        self.meter.embedded(key, len(batch), time.perf_counter() - t)
        self._store(key, batch, vectors)

    def _finish_staged(self) -> None:
        """Encode and store the staged image batch; images the device could not decode fail."""
        if self.staged is None:
            return
        key, batch, future = self.staged
        self.staged = None
        t = time.perf_counter()
        staged = future.result()
        vectors = self.encoders.get(key[0]).encode_staged(staged)  # type: ignore[attr-defined]
        self.meter.embedded(key, len(batch), time.perf_counter() - t)
        for i, reason in staged.failed.items():
            idx = batch[i][0]
            self.work[idx].error = reason
            self._maybe_ready(idx)
        self._store(key, [b for i, b in enumerate(batch) if i not in staged.failed], vectors)

    def _store(self, key: tuple[str, str], batch: list[tuple[int, Unit, Any]], vectors: np.ndarray) -> None:
        space, modality = key
        if not batch:
            return
        ids = np.arange(self.next_id, self.next_id + len(batch), dtype=np.int64)
        self.next_id += len(batch)
        # a video's frames are embedded with the images and stored apart from them (clip.video)
        collections = [f"{space}.{unit.item or modality}" for _, unit, _ in batch]
        for collection in dict.fromkeys(collections):
            rows = np.array([c == collection for c in collections])
            self.writer.append_vectors(collection, ids[rows], vectors[rows])
        touched = set()
        for eid, collection, (idx, unit, _) in zip(ids.tolist(), collections, batch):
            p = self.work[idx]
            kind = unit.item or unit.modality
            item = p.items.setdefault((kind, unit.ordinal), NewItem(
                modality=kind, ordinal=unit.ordinal, text=unit.text, ref_path=unit.ref_path))
            item.embeddings.append((eid, collection, unit.start, unit.end))
            if unit.duration is not None:
                item.duration = unit.duration
            elif unit.end is not None:
                item.duration = max(item.duration or 0.0, unit.end)
            if unit.end is not None:  # the live count of seconds of media
                # a video's frames add their spans (parts decoded side by side come in any order),
                # other units (sound windows, a track's too) reach as far as their end
                before = p.covered
                if unit.item == "video" and unit.modality == "image" and unit.start is not None:
                    p.frames_span += unit.end - unit.start
                else:
                    p.sound_end = max(p.sound_end, unit.end)
                if p.covered > before:
                    self.meter.media(p.covered - before)
            p.embedded += 1
            touched.add(idx)
        for idx in touched:
            self._maybe_ready(idx)

    def _maybe_ready(self, idx: int) -> None:
        p = self.work[idx]
        if not p.decoded or (p.error is None and p.embedded < p.queued) or p.ready:
            return
        p.ready = True
        self.ready.append(idx)
        self.ready_items += len(p.items)
        self.done += 1
        self.meter.file_done(p.found.kind, p.found.size, list(p.items.values()))
        if self.progress:
            self.progress(self.done, len(self.work))
        if self.ready_items >= self.settings.commit_every:
            self._commit()

    def _commit(self) -> None:
        if not self.ready:
            return
        records, owners = [], []  # a record, and its file's place in the work
        for idx in self.ready:
            p = self.work[idx]
            f = p.found
            if p.waiting:  # nothing written: an old record stays as it was, and the file changed since
                continue
            owners.append(idx)
            records.append(FileRecord(path=f.path, root_id=p.root_id, kind=f.kind, size=f.size,
                                      mtime_ns=f.mtime_ns, items=[] if p.error else list(p.items.values()),
                                      error=p.error, retry=p.retry, content_hash=p.content_hash,
                                      facts=p.facts, note=p.note))
        try:
            self.writer.commit_files(records)
        except SQLAlchemyError as e:
            if is_passing_failure(e):
                raise MMSearchError(f"the catalog could not be written ({_reason(e)}): the files finished so far "
                                    "are kept; free space and run the same command again") from e
            # something in the batch is unstorable: commit file by file, recording the culprits
            for i, r in enumerate(records):
                try:
                    self.writer.commit_files([r])
                except SQLAlchemyError as e:
                    if is_passing_failure(e):
                        raise MMSearchError(f"the catalog could not be written ({_reason(e)}): run the same "
                                            "command again once that is fixed") from e
                    reason = f"could not be stored: {_reason(e)}"
                    self.work[owners[i]].error = reason
                    self.writer.commit_files([FileRecord(path=r.path, root_id=r.root_id, kind=r.kind, size=r.size,
                                                         mtime_ns=r.mtime_ns, error=reason)])
        for idx in self.ready:
            p = self.work[idx]
            if p.waiting:
                self.report.waiting_for_audio += 1
            elif p.error:
                self.report.failed += 1
                self.report.failures.append((p.found.path, p.error))
            else:
                self.report.items += len(p.items)
                if p.note:
                    self.report.warnings.append((p.found.path, p.note))
                self.report.media_seconds += p.covered
                if p.is_update:
                    self.report.updated += 1
                else:
                    self.report.added += 1
            p.items = {}
        self.ready, self.ready_items = [], 0
        if time.monotonic() - self.synced_at >= self.settings.sync_every:
            # merges and retrains run beside the ingest; vectors in flight look dead: no compaction
            self.writer.upkeep(wait=False, compact=False)
            self.synced_at = time.monotonic()


@dataclass
class _DecodeOnly:
    """What ``_Ingest._decode`` reads of its ingest, to decode a file outside one (Ray's tasks)."""

    settings: Settings
    encoders: Any  # .get(space): what decoding reads of an encoder (a CLAP's sample rate and window)
    area: list[Path] | None
    spaces_of: Mapping[str, list[str]] = field(default_factory=dict)  # modality -> spaces it goes to
    jpegs_on_device: bool = False
    sound_waits: bool = False  # see _Ingest

    def targets(self, modality: str) -> list[str]:
        return list(self.spaces_of.get(modality, []))


def decode_file(p: _Pending, settings: Settings, encoders: Any, area: list[Path] | None,
                targets: Mapping[str, list[str]] | None = None, sound_waits: bool = False) -> Iterator[Unit]:
    """One file's units exactly as an ingest decodes them (its facts are kept on ``p``): the one
    per-file decoder, shared by Ray's decode tasks (mmsearch/indexer/ray_ingest.py). ``targets``:
    the spaces each modality is embedded in (a video's sound track is decoded only if audio is)."""
    return _Ingest._decode(_DecodeOnly(settings, encoders, area, targets or {}, False, sound_waits),  # type: ignore[arg-type]
                           p)
