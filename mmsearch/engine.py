"""The engine: the functions the CLI, the HTTP service and Python callers share.

It only wires parts together; the work is done in indexer/, search/ and storage/.
Encoders, settings and the catalog are injected, so a test can pass a tiny model.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any


from mmsearch import cpus
from mmsearch.encoders.base import Encoder
from mmsearch.encoders.encoder_set import EncoderSet
from mmsearch.errors import BadInput, NotFound
from mmsearch.search.live import LiveIndexes
from mmsearch.search.query_embedding import Embedding, QueryEmbedder
from mmsearch.search.request import Hit, Query, SearchResponse
from mmsearch.search.runner import QueryRunner
from mmsearch.settings import Settings
from mmsearch.storage.catalog import Catalog, ItemRow, SchemaOutdated

if TYPE_CHECKING:  # imported where used: reading commands (stats, similar) never load the indexer or faiss
    from mmsearch.indexer.pipeline import IndexReport, Progress
    from mmsearch.writer import CatalogWriter


class Engine:
    """A catalog's reader, plus its one writer while a write runs. Queries read the SQL rows,
    the float16 vectors and the saved indexes with the change log applied in memory; they never
    write. ``index`` and ``delete`` open the CatalogWriter (the catalog's write lock) for their
    duration, or use the one ``writing()`` holds."""

    def __init__(self, catalog: Catalog, encoders: EncoderSet, indexes: LiveIndexes, settings: Settings) -> None:
        self.catalog, self.encoders, self.indexes, self.settings = catalog, encoders, indexes, settings
        self.runner = QueryRunner(catalog, indexes, encoders, settings)
        self._writer: CatalogWriter | None = None
        self._writer_users = 0
        self._writer_lock = threading.Lock()

    @classmethod
    def open(cls, settings: Settings | None = None, *, encoders: Mapping[str, Encoder] | None = None,
             reembed: bool = False, create: bool = True) -> "Engine":
        """Open the catalog that ``settings.catalog`` names. With ``create`` (the default) a new
        catalog is made, or an old one upgraded, by briefly opening its writer; without it a
        missing catalog is NotFound and nothing is written."""
        settings = settings or Settings()
        cpus.apply(settings)
        try:
            catalog = Catalog(settings)
        except (NotFound, SchemaOutdated):
            if not create:
                raise
            from mmsearch.writer import CatalogWriter

            CatalogWriter(settings).close()  # creates or upgrades it, under the write lock
            catalog = Catalog(settings)
        return cls(catalog, EncoderSet(catalog, settings, encoders, reembed=reembed), LiveIndexes(catalog), settings)

    def close(self) -> None:
        with self._writer_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer, self._writer_users = None, 0
        self.catalog.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes ---------------------------------------------------------------------------------

    @contextmanager
    def writing(self) -> Iterator[CatalogWriter]:
        """The catalog's writer for the block. Blocks in this process share one writer (a delete
        during an indexing job goes through the job's writer, whose mutex orders the two); it
        closes when the last one ends. A second writer process is refused with CatalogBusy."""
        from mmsearch.writer import CatalogWriter

        with self._writer_lock:
            if self._writer is None:
                self._writer = CatalogWriter(self.settings)
            self._writer_users += 1
            writer = self._writer
        try:
            yield writer
        finally:
            with self._writer_lock:
                self._writer_users -= 1
                if self._writer_users == 0:
                    self._writer = None
                    writer.close()

    def with_query_encoders(self, encoders: Mapping[str, Encoder]) -> "Engine":
        """This engine's catalog, indexes and models, with queries embedded through ``encoders``
        (the service's micro-batching wrappers); indexing keeps the models themselves."""
        view = Engine(self.catalog, self.encoders, self.indexes, self.settings)
        view.runner = QueryRunner(self.catalog, self.indexes, EncoderSet(self.catalog, self.settings, encoders),
                                  self.settings)
        return view

    def index(self, paths: Sequence[str | Path], progress: Progress | None = None,
              stop: threading.Event | None = None, retry_failed: bool = False,
              allowed_roots: Sequence[Path] | None = None) -> IndexReport:
        """Scan, embed and store the folders; see indexer/pipeline.py. ``allowed_roots`` bounds
        where symlinks and caption rows may reach (the HTTP service passes its index roots)."""
        from mmsearch.indexer.pipeline import index_folders

        with self.writing() as writer:
            return index_folders([Path(p) for p in paths], writer, self.encoders, self.settings, progress, stop,
                                 retry_failed=retry_failed, allowed_roots=allowed_roots)

    def delete(self, item_id: int) -> None:
        """Delete an item (its file stays on disk; a later re-scan brings it back only if the
        file changes). Milliseconds at any size: no index is rewritten."""
        with self.writing() as writer:
            writer.delete_item(item_id)

    def check(self, *, repair: bool = False) -> dict[str, Any]:
        """What is damaged: index files missing, unreadable or replaced, and live rows whose
        vectors are gone. With ``repair``, indexes are rebuilt and the files of lost vectors
        marked, so the next ``index`` run embeds them again."""
        from mmsearch.search.ann import AnnIndex

        report: dict[str, Any] = {"collections": {}, "repaired": repair}
        spaces = self.catalog.spaces()
        for collection in self.catalog.collections():
            space = spaces.get(collection.split(".")[0])
            if space is None:
                continue
            store = self.indexes.store(collection, space[1])
            live = self.catalog.live_ids(collection)
            lost = int((store.rows(live) < 0).sum())
            idx = AnnIndex.load(self.indexes.files.index_path(collection))
            index_problem = None
            if idx is None:
                index_problem = "index missing or unreadable"
            elif not self.indexes.files.looks_intact(collection):
                index_problem = "index file replaced since it was saved"
            problems = [p for p in (index_problem, lost and f"{lost} vectors missing from the store") if p]
            report["collections"][collection] = {"live": int(live.size), "lost_vectors": lost, "problems": problems}
            if repair and (lost or index_problem):
                with self.writing() as writer:
                    if lost:
                        writer.lost_vectors(collection, writer.store(collection, space[1]))
                    if index_problem:
                        writer.files.remove(collection)  # upkeep rebuilds it
        if repair:
            with self.writing() as writer:
                writer.upkeep(wait=True)
        report["ok"] = not any(c["problems"] for c in report["collections"].values())
        return report

    # -- reads ----------------------------------------------------------------------------------

    def search(self, query: Query) -> SearchResponse:
        self.indexes.refresh()
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
        return self.runner.embed_one(text=text, image=image, audio=audio, space=space)

    def item(self, item_id: int) -> ItemRow:
        return self.catalog.item(item_id)

    def lookup(self, path: str | Path) -> list[int]:
        """The item ids of an indexed file (one for a photo or a sound, one per row of a captions
        file); NotFound if the file is not in the catalog."""
        resolved = str(Path(path).expanduser().absolute())
        ids = self.catalog.items_for_path(resolved) or self.catalog.items_for_path(str(Path(resolved).resolve()))
        if not ids:
            raise NotFound(f"{path} is not in the catalog")
        return ids

    def stats(self) -> dict[str, Any]:
        """From counters and the notes beside the index files: milliseconds at any size."""
        counts = self.catalog.counts()
        return {
            "catalog": str(self.catalog.root),
            "catalog_id": self.catalog.id,
            "database": self.catalog.engine.url.render_as_string(hide_password=True),
            "schema_version": self.catalog.schema_version,
            "models": {name: {"spec": spec, "dim": dim} for name, (spec, dim) in self.catalog.spaces().items()},
            "roots": self.catalog.roots(),
            "files": counts["files"],
            "items": counts["items"],
            "collections": self.indexes.describe(),
            "failures": [{"path": p, "reason": r} for p, r in self.catalog.failures(20)],
        }


def embed_without_catalog(settings: Settings, *, text: str | None = None, image: bytes | None = None,
                          audio: bytes | None = None, space: str | None = None) -> Embedding:
    """``mmsearch embed`` where no catalog exists: the model named (or the default), and nothing
    is created or recorded."""
    return QueryEmbedder(None, None, EncoderSet(None, settings), settings).embed_one(
        text=text, image=image, audio=audio, space=space)




def __getattr__(name: str) -> Any:
    if name == "IndexReport":  # still importable from here, loaded on first use
        from mmsearch.indexer.pipeline import IndexReport

        return IndexReport
    raise AttributeError(f"module 'mmsearch.engine' has no attribute {name!r}")


__all__ = ["Engine", "Embedding", "Hit", "IndexReport", "NotFound", "Query", "SearchResponse"]
