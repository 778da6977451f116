"""Ingestion: scan -> decode (worker threads) -> embed (batched) -> store -> index.

Durability: a batch's vectors are appended (fsync) to the vector stores before the SQL rows that
reference them commit, and a file's rows commit in one transaction. A crash leaves at worst
vectors that no row references (ignored, never reused: ids only grow), and the next run
re-does every file that did not commit. Nothing is lost and nothing is duplicated.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from mmsearch.encoders.encoder_set import EncoderSet
from mmsearch.errors import BadInput
from mmsearch.media.decode import DecodeError, Unit, load_image, read_captions, read_text
from mmsearch.indexer.scan import FoundFile, dedupe_roots, scan
from mmsearch.search.index_set import IndexSet
from mmsearch.settings import Settings
from mmsearch.storage.catalog import Catalog, FileRecord, NewItem

Progress = Callable[[int, int], None]  # (files done, files to do)



@dataclass
class IndexReport:
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    failed: int = 0
    seconds: float = 0.0
    items: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    skipped_audio: str | None = None  # why audio was left out, when it was
    skipped_links: int = 0  # symlinks not followed: their targets lie outside the allowed folders

    def as_dict(self) -> dict[str, Any]:
        return {"added": self.added, "updated": self.updated, "removed": self.removed,
                "unchanged": self.unchanged, "failed": self.failed, "items": self.items,
                "skipped_links": self.skipped_links, "seconds": round(self.seconds, 3),
                "failures": [{"path": p, "reason": r} for p, r in self.failures],
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
    items: dict[tuple[str, int], NewItem] = field(default_factory=dict)


def index_folders(paths: Sequence[Path], catalog: Catalog, encoders: EncoderSet, indexes: IndexSet,
                  settings: Settings, progress: Progress | None = None,
                  stop: threading.Event | None = None, retry_failed: bool = False,
                  allowed_roots: Sequence[Path] | None = None) -> IndexReport:
    """Bring the catalog in line with the folders: add new files, re-embed changed ones, drop
    deleted ones; then sync the ANN indexes. Files that failed are tried again only when they
    change, or with ``retry_failed`` (after installing a codec or raising a limit).

    Symlinks and caption rows may reach only into ``allowed_roots`` (the service's index roots,
    whatever ``follow_links`` says), else into these folders unless ``settings.follow_links``."""
    t0 = time.perf_counter()
    report = IndexReport()
    roots = dedupe_roots([Path(p).expanduser().resolve() for p in paths])
    for r in roots:
        if not r.is_dir():
            raise BadInput(f"not a folder: {r}")
    area = ([Path(p).expanduser().resolve() for p in allowed_roots] if allowed_roots is not None
            else None if settings.follow_links else roots)
    with catalog.write_lock():
        # With no model named, the catalog's own are used: nothing to check, so the models load
        # only if there is work (an unchanged folder re-scans in a fraction of a second).
        eager = encoders.reembed or bool(settings.model or settings.audio_model) or not catalog.spaces()
        spaces = _load_spaces(encoders, report) if eager else None
        work = _plan(roots, catalog, encoders, spaces, report, retry_failed, area)
        if work and spaces is None:
            spaces = _load_spaces(encoders, report)
            if encoders.redo:  # a space was added: its files must all be embedded again
                report.unchanged = report.failed = report.skipped_links = 0  # recounted; removals stay counted
                report.failures = []
                work = _plan(roots, catalog, encoders, spaces, report, retry_failed, area)
            elif "clap" not in spaces:  # audio is unavailable after all: sounds stay as they are
                report.unchanged += sum(p.is_update for p in work if p.found.kind == "audio")
                work = [p for p in work if p.found.kind != "audio"]
        if work:
            _Ingest(catalog, encoders, indexes, settings, spaces or [], report, progress, stop, area).run(work)
        if indexes.synced_generation() != catalog.generation():
            indexes.sync(catalog)
    report.seconds = time.perf_counter() - t0
    return report


def _plan(roots: list[Path], catalog: Catalog, encoders: EncoderSet, spaces: list[str] | None,
          report: IndexReport, retry_failed: bool, area: list[Path] | None) -> list[_Pending]:
    """Scan the folders against the catalog: drop files that are gone, count the unchanged ones,
    and return the rest to embed. ``spaces`` None: not loaded yet, every kind counts as work."""
    if encoders.redo:  # a new or re-embedded space: every folder of the catalog, not just these
        roots = dedupe_roots(roots + [r for r in map(Path, catalog.roots()) if r.is_dir()])
    work: list[_Pending] = []
    for root in roots:
        root_id = catalog.ensure_root(root)
        known = catalog.file_states(root)
        # audio files are always scanned: with audio off they are left as they are, not "gone"
        bad_names: list[str] = []
        skipped: list[str] = []
        found = {f.path: f for f in scan(root, exclude=catalog.root, bad_names=bad_names, allowed=area,
                                         skipped_links=skipped)}
        report.skipped_links += len(skipped)
        report.failed += len(bad_names)
        report.failures += [(name, "file name is not valid UTF-8: rename it to index it") for name in bad_names]
        gone = [p for p in known if p not in found]
        report.removed += catalog.delete_files(gone) and len(gone)
        for path, f in found.items():
            old = known.get(path)
            if f.kind == "audio" and (not encoders.enabled("clap") or (spaces is not None and "clap" not in spaces)):
                report.unchanged += old is not None
            elif old is not None and old.size == f.size and old.mtime_ns == f.mtime_ns and not (
                    retry_failed and old.status == "failed"):
                report.unchanged += 1
            else:
                work.append(_Pending(f, root_id, is_update=old is not None))
    return work


def _load_spaces(encoders: EncoderSet, report: IndexReport) -> list[str]:
    """Load the encoders up front: model mismatches and missing weights fail before any work.
    A default audio model that cannot be loaded leaves audio out with a warning."""
    from mmsearch.errors import ModelUnavailable

    spaces = ["clip"]
    encoders.get("clip", record=True)
    if encoders.enabled("clap"):
        try:
            encoders.get("clap", record=True)
            spaces.append("clap")
        except ModelUnavailable as e:
            if encoders.settings.audio_model and not encoders.loaded("clap"):
                raise
            report.skipped_audio = str(e).splitlines()[0]
    return spaces


class _Ingest:
    """One run's moving parts: decode workers feed a bounded queue; this thread embeds and writes."""

    def __init__(self, catalog: Catalog, encoders: EncoderSet, indexes: IndexSet, settings: Settings,
                 spaces: list[str], report: IndexReport, progress: Progress | None,
                 stop: threading.Event | None, area: list[Path] | None) -> None:
        self.catalog, self.encoders, self.indexes, self.settings = catalog, encoders, indexes, settings
        self.area = area  # where caption rows may link to
        self.spaces = spaces
        self.report = report
        self.progress = progress
        self.stop = stop or threading.Event()
        self.next_id = max(catalog.max_embedding_id(), indexes.max_stored_id()) + 1
        self.buffers: dict[tuple[str, str], list[tuple[int, Unit, Any]]] = {}
        self.ready: list[int] = []
        self.ready_items = 0
        self.done = 0
        self.synced_at = time.monotonic()

    def targets(self, modality: str) -> list[str]:
        return [s for s in self.encoders.spaces_for(modality) if s in self.spaces]

    def run(self, work: list[_Pending]) -> None:
        self.work = work
        files: queue.Queue[int] = queue.Queue()
        for i in range(len(work)):
            files.put(i)
        events: queue.Queue[tuple] = queue.Queue(maxsize=max(64, 4 * self.settings.batch_size))
        n_workers = min(self.settings.decode_workers or self._auto_decode_workers(), len(work))
        workers = [threading.Thread(target=self._decode_worker, args=(files, events), daemon=True)
                   for _ in range(n_workers)]
        for w in workers:
            w.start()
        alive = n_workers
        try:
            while alive and not self.stop.is_set():
                try:
                    ev = events.get(timeout=0.05)
                except queue.Empty:
                    self._flush(partial=True)  # the decoders are behind: embed what is waiting
                    continue
                if ev[0] == "exit":
                    alive -= 1
                elif ev[0] == "unit":
                    _, idx, unit, prepared = ev
                    for space, prep in prepared.items():
                        self.buffers.setdefault((space, unit.modality), []).append((idx, unit, prep))
                    work[idx].queued += len(prepared)
                    self._flush(partial=False)
                else:
                    _, idx, n, error = ev
                    p = work[idx]
                    p.decoded, p.error = True, error or (None if n else "nothing to index in this file")
                    self._maybe_ready(idx)
            if not self.stop.is_set():
                self._flush(partial=True)
            self._commit()
        finally:
            self.stop.set()
            for w in workers:
                w.join(timeout=5)
            self._commit()  # what finished before an interrupt is kept

    def _auto_decode_workers(self) -> int:
        cores = os.cpu_count() or 2
        on_gpu = any(self.encoders.get(s).device.startswith("cuda") for s in self.spaces)
        return min(8, cores) if on_gpu else max(1, cores // 4)

    def _decode_worker(self, files: queue.Queue[int], events: queue.Queue[tuple]) -> None:
        try:
            while not self.stop.is_set():
                try:
                    idx = files.get_nowait()
                except queue.Empty:
                    return
                n, error = 0, None
                try:
                    for unit in self._decode(self.work[idx].found):
                        prepared = {s: self.encoders.get(s).prepare(unit.modality, unit.payload)
                                    for s in self.targets(unit.modality)}
                        unit.payload = None
                        if prepared:
                            self._put(events, ("unit", idx, unit, prepared))
                            n += 1
                        if self.stop.is_set():
                            return
                except DecodeError as e:
                    error = str(e)
                except Exception as e:  # noqa: BLE001 - one bad file must not stop the run
                    error = f"{type(e).__name__}: {e}"
                self._put(events, ("done", idx, n, error))
        finally:
            self._put(events, ("exit",))

    def _put(self, events: queue.Queue[tuple], ev: tuple) -> None:
        while True:
            try:
                events.put(ev, timeout=0.1)
                return
            except queue.Full:
                if self.stop.is_set() and ev[0] != "exit":
                    return

    def _decode(self, f: FoundFile) -> Iterator[Unit]:
        s = self.settings
        if f.size == 0:
            raise DecodeError("empty file (0 bytes)")
        if f.kind == "image":
            yield Unit("image", load_image(f.path, s.max_image_pixels))
        elif f.kind == "text":
            text = read_text(f.path, s.max_text_bytes)
            yield Unit("text", text, text=text)
        elif f.kind == "captions":
            yield from read_captions(f.path, s.max_text_bytes, self.area)
        elif f.kind == "audio":
            from mmsearch.media.audio import AudioDecodeError, iter_windows

            clap = self.encoders.get("clap")
            try:
                for w in iter_windows(Path(f.path), clap.sample_rate, clap.window_seconds):  # type: ignore[attr-defined]
                    yield Unit("audio", w.samples, start=w.start, end=w.end)
            except AudioDecodeError as e:
                raise DecodeError(str(e)) from e

    def _flush(self, partial: bool) -> None:
        for key in list(self.buffers):
            buf = self.buffers[key]
            bs = self.encoders.get(key[0]).batch_size
            while len(buf) >= bs or (partial and buf):
                batch, self.buffers[key] = buf[:bs], buf[bs:]
                buf = self.buffers[key]
                self._embed(key, batch)

    def _embed(self, key: tuple[str, str], batch: list[tuple[int, Unit, Any]]) -> None:
        space, modality = key
        vectors = self.encoders.get(space).encode(modality, [prep for _, _, prep in batch])
        ids = np.arange(self.next_id, self.next_id + len(batch), dtype=np.int64)
        self.next_id += len(batch)
        collection = f"{space}.{modality}"
        self.indexes.store(collection, vectors.shape[1]).append(ids, vectors)
        touched = set()
        for eid, (idx, unit, _) in zip(ids.tolist(), batch):
            p = self.work[idx]
            item = p.items.setdefault((unit.modality, unit.ordinal), NewItem(
                modality=unit.modality, ordinal=unit.ordinal, text=unit.text, ref_path=unit.ref_path))
            item.embeddings.append((eid, collection, unit.start, unit.end))
            if unit.end is not None:
                item.duration = max(item.duration or 0.0, unit.end)
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
        if self.progress:
            self.progress(self.done, len(self.work))
        if self.ready_items >= self.settings.commit_every:
            self._commit()

    def _commit(self) -> None:
        if not self.ready:
            return
        records = []
        for idx in self.ready:
            p = self.work[idx]
            f = p.found
            records.append(FileRecord(path=f.path, root_id=p.root_id, kind=f.kind, size=f.size,
                                      mtime_ns=f.mtime_ns, items=[] if p.error else list(p.items.values()),
                                      error=p.error))
        try:
            self.catalog.commit_files(records)
        except SQLAlchemyError:
            # something in the batch is unstorable: commit file by file, recording the culprits
            for i, r in enumerate(records):
                try:
                    self.catalog.commit_files([r])
                except SQLAlchemyError as e:
                    reason = f"could not be stored: {str(e.orig if hasattr(e, 'orig') else e)[:200]}"
                    self.work[self.ready[i]].error = reason
                    self.catalog.commit_files([FileRecord(path=r.path, root_id=r.root_id, kind=r.kind,
                                                          size=r.size, mtime_ns=r.mtime_ns, error=reason)])
        for idx in self.ready:
            p = self.work[idx]
            if p.error:
                self.report.failed += 1
                self.report.failures.append((p.found.path, p.error))
            else:
                self.report.items += len(p.items)
                if p.is_update:
                    self.report.updated += 1
                else:
                    self.report.added += 1
            p.items = {}
        self.ready, self.ready_items = [], 0
        if time.monotonic() - self.synced_at >= self.settings.sync_every:
            self.indexes.sync(self.catalog, compact=False)  # searchable as it goes; vectors in flight stay
            self.synced_at = time.monotonic()
