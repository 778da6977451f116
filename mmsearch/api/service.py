"""What one app instance shares between requests: the engines, the jobs, the locks.

Two ``Engine`` views share one catalog and one set of loaded models:

* the *reader* answers queries. Its text encoders are wrapped in a ``BatchingEncoder``;
* the *writer* runs indexing jobs and deletes, with its own ``IndexSet``. It syncs and saves
  indexes by atomic file replace, and the reader picks the new files up whole on its next query,
  so a query never sees an index while it is being changed.

The reader's own ``refresh`` would sync its indexes in place if it found the catalog ahead of
them; a delete therefore runs under the exclusive side of a readers-writer lock, and leaves the
indexes synced before queries resume.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mmsearch.api.batching import BatchingEncoder
from mmsearch.api.jobs import JobConflict, JobManager
from mmsearch.api.media import Forbidden, MediaGuard, Thumbnails
from mmsearch.encoders.base import Encoder
from mmsearch.encoders.encoder_set import EncoderSet
from mmsearch.engine import Engine
from mmsearch.errors import BadInput, MMSearchError, ModelUnavailable, NotFound
from mmsearch.indexer.pipeline import index_folders
from mmsearch.search.index_set import IndexSet
from mmsearch.settings import Settings

log = logging.getLogger("mmsearch.api")


class NotReady(MMSearchError):
    """The models are still loading, or failed to load."""


class RWLock:
    """Many readers or one writer; a waiting writer blocks new readers so it cannot starve."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class Service:
    def __init__(self, source: Engine | Settings, *, read_only: bool = False, batching: bool = True) -> None:
        if isinstance(source, Engine):
            self.base, self._owns_engine = source, False
        else:
            self.base, self._owns_engine = Engine.open(source), True
        self.settings: Settings = self.base.settings
        self.read_only = read_only
        self.batching = batching
        self.lock = RWLock()
        self.write_mutex = threading.Lock()
        self.jobs = JobManager(self._run_job, self.write_mutex)
        self.guard = MediaGuard(self.base.catalog)
        self.thumbnails = Thumbnails(self.settings.max_image_pixels)
        self.reader: Engine | None = None
        self.writer: Engine | None = None
        self.audio_off: str | None = None
        self.error: str | None = None
        self.started_at = time.time()
        self._ready = threading.Event()  # models loaded
        self._settled = threading.Event()  # a load finished, well or not
        self._warm_lock = threading.Lock()  # guards starting the warm-up thread
        self._build_lock = threading.Lock()  # guards loading the models
        self._warming: threading.Thread | None = None
        self._batchers: list[BatchingEncoder] = []

    # -- start-up -------------------------------------------------------------------------------

    def start(self) -> None:
        """Load the models in the background, so liveness answers while they load."""
        with self._warm_lock:
            if self._warming is None and not self._ready.is_set():
                self._warming = threading.Thread(target=self._warm_quietly, name="mmsearch-warmup", daemon=True)
                self._warming.start()

    def _warm_quietly(self) -> None:
        try:
            self.warm()
        except MMSearchError:
            pass  # kept in self.error; readiness and every query report it

    def warm(self) -> None:
        """Load each encoder once, check it against the catalog, build the reader and writer."""
        with self._build_lock:
            if self._ready.is_set():
                return
            try:
                self._build()
                self._ready.set()
            except MMSearchError as e:
                self.error = str(e)
                raise
            except Exception as e:  # noqa: BLE001 - a broken model must not kill the server
                log.exception("loading the models failed")
                self.error = f"{type(e).__name__}: {e}"
                raise NotReady(self.error) from e
            finally:
                self._settled.set()

    def _build(self) -> None:
        base = self.base
        base.refresh()  # indexes caught up before the first query, not by it
        raw: dict[str, Encoder] = {"clip": base.encoders.get("clip")}
        settings = self.settings
        if base.encoders.enabled("clap"):
            try:
                raw["clap"] = base.encoders.get("clap")
            except ModelUnavailable as e:
                if settings.audio_model:
                    raise
                self.audio_off = str(e).splitlines()[0]
                settings = settings.model_copy(update={"audio": False})
        else:
            self.audio_off = "audio is turned off (MMSEARCH_AUDIO=0)"
        if self.batching:
            self._batchers = [BatchingEncoder(e) for e in raw.values()]
            query_encoders: dict[str, Encoder] = {b.space: b for b in self._batchers}
        else:
            query_encoders = dict(raw)
        catalog = base.catalog
        self.reader = Engine(catalog, EncoderSet(catalog, settings, query_encoders), base.indexes, settings)
        self.writer = Engine(catalog, EncoderSet(catalog, settings, raw), IndexSet.for_catalog(catalog), settings)

    def engine(self, timeout: float = 60.0) -> Engine:
        """The query engine, once the models are loaded (waits for a warm-up in progress)."""
        if not self._ready.is_set():
            if not self.error:
                self.start()
                self._settled.wait(timeout)
            if self.error:
                raise NotReady(f"the models could not be loaded: {self.error}")
            if not self._ready.is_set():
                raise NotReady("the models are still loading; try again shortly")
        assert self.reader is not None
        return self.reader

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def readiness(self) -> dict[str, Any]:
        if not self.ready:
            return {"ready": False, "reason": f"models failed to load: {self.error}" if self.error
                    else "models are loading"}
        assert self.reader is not None
        models = {s: self.reader.encoders.get(s).spec for s in ("clip", "clap") if self.reader.encoders.loaded(s)}
        return {"ready": True, "models": models, "audio": self.audio_off}

    # -- writes ---------------------------------------------------------------------------------

    def index_path(self, requested: str) -> Path:
        """The folder a job may index: an existing directory under a configured index root."""
        roots = [Path(r).expanduser().resolve() for r in self.settings.index_roots]
        if not roots:
            raise Forbidden("indexing over HTTP is off: start the server with --index-root DIR "
                            "(or MMSEARCH_INDEX_ROOTS) to allow folders under DIR")
        try:
            raw = Path(requested).expanduser()
            path = (raw if raw.is_absolute() else roots[0] / raw).resolve()
            if not any(path == r or path.is_relative_to(r) for r in roots):
                raise Forbidden(f"{requested} is not under an index root ({', '.join(map(str, roots))})")
            if not path.exists():
                raise NotFound(f"no such folder: {requested}")
            if not path.is_dir():
                raise BadInput(f"not a folder: {requested}")
        except (OSError, RuntimeError) as e:  # name too long, symlink loop, unreadable
            raise BadInput(f"cannot use {requested[:200]!r}: {e}") from None
        return path

    def _run_job(self, path: Path, progress: Any, stop: threading.Event) -> dict[str, Any]:
        self.engine()
        assert self.writer is not None
        try:
            w = self.writer  # links and caption rows stay inside the index roots, whatever follow_links says
            return index_folders([path], w.catalog, w.encoders, w.indexes, w.settings, progress, stop,
                                 allowed_roots=self.settings.index_roots).as_dict()
        finally:
            # A job that failed half-way leaves rows its indexes have not caught up with; sync
            # now, while no query runs, rather than let a query's refresh do it in place.
            with self.lock.write():
                self.writer.refresh()

    def delete(self, item_id: int) -> None:
        engine = self.engine()
        if not self.write_mutex.acquire(blocking=False):
            running = self.jobs.running()
            what = f"indexing job {running.id} is running" if running else "another delete is in progress"
            raise JobConflict(f"{what}; try again when it has finished")
        try:
            assert self.writer is not None
            engine.item(item_id)  # NotFound before taking the lock
            with self.lock.write():
                self.writer.delete(item_id)
        finally:
            self.write_mutex.release()

    # -- shutdown -------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        running = self.jobs.running()
        return {
            "ready": self.ready,
            "read_only": self.read_only,
            "writes_need_key": self.settings.api_key is not None,
            "index_roots": [str(p) for p in self.settings.index_roots],
            "max_upload_bytes": self.settings.max_upload_bytes,
            "uptime_s": round(time.time() - self.started_at, 1),
            "job_running": running.id if running else None,
            "batching": {b.space: b.describe() for b in self._batchers},
            "audio_off": self.audio_off,
        }

    def close(self) -> None:
        """Stop jobs (their work so far is kept), then wait for a model load still in progress:
        a thread left inside torch while the interpreter exits can abort the process."""
        self.jobs.shutdown()
        if self._warming is not None:
            self._warming.join(timeout=300)
        for b in self._batchers:
            b.close()
        if self._owns_engine:
            self.base.close()

