"""What one app instance shares between requests: one engine, its jobs and its batchers.

Queries go through the engine's reader: the saved indexes plus the change log applied in
memory, so they never wait for a write. Indexing jobs and deletes go through the engine's one
writer (``Engine.writing``): a delete during a job shares the job's writer, and no index file is
rewritten for either, so queries see both as soon as they commit.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from mmsearch.api.batching import BatchingEncoder
from mmsearch.api.jobs import JobManager
from mmsearch.api.media import Forbidden, MediaGuard, Thumbnails
from mmsearch.encoders.base import Encoder
from mmsearch.engine import Engine
from mmsearch.errors import BadInput, MMSearchError, ModelUnavailable, NotFound
from mmsearch.settings import Settings

log = logging.getLogger("mmsearch.api")


class NotReady(MMSearchError):
    """The models are still loading, or failed to load."""


class Service:
    def __init__(self, source: Engine | Settings, *, read_only: bool = False, batching: bool = True) -> None:
        if isinstance(source, Engine):
            self.base, self._owns_engine = source, False
        else:
            self.base, self._owns_engine = Engine.open(source), True
        self.settings: Settings = self.base.settings
        self.read_only = read_only
        self.batching = batching
        self.jobs = JobManager(self._run_job, threading.Lock())
        self.guard = MediaGuard(self.base.catalog)
        self.thumbnails = Thumbnails(self.settings.max_image_pixels)
        self.audio_off: str | None = None
        self.error: str | None = None
        self.started_at = time.time()
        self._ready = threading.Event()  # models loaded
        self._settled = threading.Event()  # a load finished, well or not
        self._warm_lock = threading.Lock()  # guards starting the warm-up thread
        self._build_lock = threading.Lock()  # guards loading the models
        self._warming: threading.Thread | None = None
        self._batchers: list[BatchingEncoder] = []
        self.view: Engine | None = None  # the engine as queries and jobs see it, once models are loaded

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
        """Load each encoder once and wrap the text ones for micro-batched queries."""
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
        base.indexes.refresh()  # indexes loaded before the first query, not by it
        raw: dict[str, Encoder] = {"clip": base.encoders.get("clip")}
        if base.encoders.enabled("clap"):
            try:
                raw["clap"] = base.encoders.get("clap")
            except ModelUnavailable as e:
                if self.settings.audio_model:
                    raise
                self.audio_off = str(e).splitlines()[0]
        else:
            self.audio_off = "audio is turned off (--no-audio)"
        for enc in raw.values():  # towers read on first use (a CLI query) are all read here
            getattr(enc, "load_towers", lambda: None)()
        if self.batching:
            self._batchers = [BatchingEncoder(e) for e in raw.values()]
            self.view = base.with_query_encoders({b.space: b for b in self._batchers})
        else:
            self.view = base.with_query_encoders(raw)

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
        assert self.view is not None
        return self.view

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def readiness(self) -> dict[str, Any]:
        if not self.ready:
            return {"ready": False, "reason": f"models failed to load: {self.error}" if self.error
                    else "models are loading"}
        models = {s: self.base.encoders.get(s).spec for s in ("clip", "clap") if self.base.encoders.loaded(s)}
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

    def _run_job(self, path: Path, progress: Any, status: Any, stop: threading.Event) -> dict[str, Any]:
        # links and caption rows stay inside the index roots, whatever follow_links says
        return self.engine().index([path], progress=progress, stop=stop, status=status,
                                   allowed_roots=self.settings.index_roots).as_dict()

    def delete(self, item_id: int) -> None:
        engine = self.engine()
        engine.item(item_id)  # NotFound before taking the writer
        engine.delete(item_id)

    def tag(self, item_id: int, **changes: Any) -> list[str]:
        engine = self.engine()
        engine.item(item_id)  # NotFound before taking the writer
        return engine.tag(item_id, **changes)

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

