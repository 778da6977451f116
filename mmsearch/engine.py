"""The engine: the functions the CLI, the HTTP service and Python callers share.

It only wires parts together; the work is done in indexer/, search/ and storage/.
Encoders, settings and the catalog are injected, so a test can pass a tiny model.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from mmsearch.encoders.base import Encoder
from mmsearch.encoders.encoder_set import EncoderSet
from mmsearch.errors import BadInput, MMSearchError, NotFound
from mmsearch.indexer.pipeline import IndexReport, Progress, index_folders
from mmsearch.search.index_set import IndexSet
from mmsearch.search.request import Hit, Query, SearchResponse
from mmsearch.search.runner import QueryRunner
from mmsearch.settings import Settings
from mmsearch.storage.catalog import Catalog, ItemRow


class Embedding(BaseModel):
    space: str
    model: str
    vector: list[float]


class Engine:
    def __init__(self, catalog: Catalog, encoders: EncoderSet, indexes: IndexSet, settings: Settings) -> None:
        self.catalog, self.encoders, self.indexes, self.settings = catalog, encoders, indexes, settings
        self.runner = QueryRunner(catalog, indexes, encoders, settings)
        self._sync_lock = threading.Lock()

    @classmethod
    def open(cls, settings: Settings | None = None, *, encoders: Mapping[str, Encoder] | None = None,
             reembed: bool = False, create: bool = True) -> "Engine":
        """Open the catalog that ``settings.catalog`` names; create it unless ``create`` is False."""
        settings = settings or Settings()
        catalog = Catalog(settings, create=create)
        return cls(catalog, EncoderSet(catalog, settings, encoders, reembed=reembed),
                   IndexSet.for_catalog(catalog), settings)

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes ---------------------------------------------------------------------------------

    def index(self, paths: Sequence[str | Path], progress: Progress | None = None,
              stop: threading.Event | None = None, retry_failed: bool = False) -> IndexReport:
        return index_folders([Path(p) for p in paths], self.catalog, self.encoders, self.indexes,
                             self.settings, progress, stop, retry_failed=retry_failed)

    def delete(self, item_id: int) -> None:
        self.catalog.delete_item(item_id)
        self.refresh()

    # -- reads ----------------------------------------------------------------------------------

    def search(self, query: Query) -> SearchResponse:
        self.refresh()
        return self.runner.run(query)

    def similar(self, item_ids: Sequence[int], *, to: str | None = None, k: int = 10, **filters: Any) -> SearchResponse:
        """More like these items; by default in their own modality."""
        if not item_ids:
            raise BadInput("give at least one item id")
        rows = [self.catalog.item(i) for i in item_ids]  # NotFound for unknown ids
        to = to or (rows[0].modality if len({r.modality for r in rows}) == 1 else None)
        return self.search(Query(item_ids=list(item_ids), to=to, k=k, **filters))  # type: ignore[arg-type]

    def embed(self, *, text: str | None = None, image: bytes | None = None, audio: bytes | None = None,
              space: str | None = None) -> Embedding:
        given = [x for x in (text, image, audio) if x is not None]
        if len(given) != 1:
            raise BadInput("embed takes exactly one of text, image or audio")
        if image is not None:
            space, vec = "clip", self.runner.embed_image(image)
        elif audio is not None:
            space, vec = "clap", self.runner.embed_audio(audio)
        else:
            space = space or "clip"
            vec = self.runner.embed_text(space, [text or ""])[0]
        return Embedding(space=space, model=self.encoders.get(space).spec, vector=[float(x) for x in vec])

    def item(self, item_id: int) -> ItemRow:
        return self.catalog.item(item_id)

    def stats(self) -> dict[str, Any]:
        counts = self.catalog.counts()
        return {
            "catalog": str(self.catalog.root),
            "database": self.catalog.engine.url.render_as_string(hide_password=True),
            "schema_version": self.catalog.schema_version,
            "models": {name: {"spec": spec, "dim": dim} for name, (spec, dim) in self.catalog.spaces().items()},
            "roots": self.catalog.roots(),
            "files": counts["files"],
            "items": counts["items"],
            "collections": self.indexes.describe(self.catalog),
            "failures": [{"path": p, "reason": r} for p, r in self.catalog.failures(20)],
        }

    def refresh(self) -> None:
        """Bring the indexes up to the catalog when a write has not been synced (e.g. after a
        crash); skipped while another process holds the write lock, whose own sync will follow."""
        if self.indexes.synced_generation() == self.catalog.generation():
            return
        with self._sync_lock:
            try:
                with self.catalog.write_lock():
                    self.indexes.sync(self.catalog)
            except MMSearchError:
                pass


__all__ = ["Engine", "Embedding", "Hit", "IndexReport", "NotFound", "Query", "SearchResponse"]
