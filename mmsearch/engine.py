"""The engine: the functions the CLI, the HTTP service and Python callers share.

It only wires parts together; the work is done in indexer/, search/ and storage/.
Encoders, settings and the catalog are injected, so a test can pass a tiny model.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

from pydantic import ValidationError

from mmsearch import cpus
from mmsearch.encoders.base import Encoder
from mmsearch.encoders.encoder_set import EncoderSet
from mmsearch.errors import BadInput, MMSearchError, NotFound
from mmsearch.export import ExportFormat, ItemVectors, blocks, item_vectors, write_npy, write_parquet
from mmsearch.gc_pause import gc_paused
from mmsearch.search.atlas import MAX_POINTS, AtlasResponse, build_atlas
from mmsearch.search.duplicates import DuplicatesResponse, find_duplicates
from mmsearch.search.live import LiveIndex, LiveIndexes
from mmsearch.search.paging import BROWSE_MAX_LIMIT, BROWSE_MAX_OFFSET
from mmsearch.search.query_embedding import Embedding, Embeddings, QueryEmbedder
from mmsearch.search.request import Hit, Profile, Query, SearchResponse, Where, weighted
from mmsearch.search.runner import QueryRunner
from mmsearch.search.scoring import DISLIKE_WEIGHT, Scoring
from mmsearch.settings import Settings
from mmsearch.storage.catalog import Catalog, ItemRow, SchemaOutdated
from mmsearch.storage.vectors import VectorStore

if TYPE_CHECKING:  # imported where used: reading commands (stats, similar) never load the indexer or faiss
    from mmsearch.indexer.pipeline import IndexReport, Progress
    from mmsearch.indexer.progress import IngestStatus
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
              allowed_roots: Sequence[Path] | None = None,
              status: Callable[[IngestStatus], None] | None = None) -> IndexReport:
        """Scan, embed and store the folders (or single files); see indexer/pipeline.py.
        ``allowed_roots`` bounds where symlinks and caption rows may reach (the HTTP service passes
        its index roots); ``status`` hears phases, items, seconds of sound and video embedded so far
        (a long file moves it as it goes) and an ETA (indexer/progress.py)."""
        from mmsearch.indexer.pipeline import index_folders

        with self.writing() as writer:
            return index_folders([Path(p) for p in paths], writer, self.encoders, self.settings, progress, stop,
                                 retry_failed=retry_failed, allowed_roots=allowed_roots,
                                 status=status)

    def delete(self, item_id: int) -> None:
        """Delete an item (its file stays on disk; a later re-scan brings it back only if the
        file changes). Milliseconds at any size: no index is rewritten."""
        with self.writing() as writer:
            writer.delete_item(item_id)

    def tag(self, item_id: int, *, add: Sequence[str] = (), remove: Sequence[str] = (),
            set: Mapping[str, str] | None = None) -> list[str]:  # noqa: A002 - the option's name on every face
        """Change an item's own tags: ``remove`` names (or ``key=value``: only while it has that
        value), then ``add`` plain tags, then ``set`` keys to values. Returns its tags after, as
        ``tag`` and ``key=value``. Tags survive re-indexing: they belong to the item id."""
        for name, group in (("add", add), ("remove", remove)):
            if isinstance(group, str):
                raise BadInput(f"{name} takes a list of tags, not one string")
        with self.writing() as writer:
            return writer.set_tags(item_id, list(add), list(remove), set)

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
        named = [*query.item_ids, *query.negative_ids]
        if named:  # an item that is not there is an error, as in ``similar``, not a query of nothing
            _require_items(named, self.catalog.modalities(sorted(set(named))))
        self.indexes.refresh()
        return self.runner.run(query)

    def similar(self, item_ids: Sequence[int], *, to: str | None = None, k: int = 10, **filters: Any) -> SearchResponse:
        """More like these items (their mean); by default in their own modality (all media where
        they are of several). ``filters``:
        those of ``Query`` (path, min_score, exclude_ids, ...); an unknown one is refused."""
        if not item_ids:
            raise BadInput("give at least one item id")
        return self.recommend(like=item_ids, to=to, k=k, **filters)

    def recommend(self, like: Sequence[int] | Mapping[int, float] = (), dislike: Sequence[int] | Mapping[int, float] = (),
                  *, text: str | None = None, text_weight: float = 1.0, dislike_weight: float = DISLIKE_WEIGHT,
                  scoring: Scoring = "rocchio", to: str | None = None, k: int = 10, **filters: Any) -> SearchResponse:
        """Items for a profile: liked and disliked items (ids, or ids to weights), optionally a text.
        ``scoring``: "rocchio" (one blended vector) or "best" (each candidate by its best liked
        item, less its closest disliked one): see docs/search.md. Liked and disliked items are
        never returned; ``exclude_ids`` leaves out more (e.g. those already seen). By default the
        results are in the liked items' own modality."""
        fields = dict(like=like, dislike=dislike, text=text, text_weight=text_weight, dislike_weight=dislike_weight,
                      scoring=scoring, to=to, k=k, **filters)
        return self._profiles([fields], "raise", count=True)[0]

    @overload
    def recommend_batch(self, profiles: Sequence[Profile | Mapping[str, Any]],
                        errors: Literal["raise"] = "raise") -> list[SearchResponse]: ...

    @overload
    def recommend_batch(self, profiles: Sequence[Profile | Mapping[str, Any]],
                        errors: Literal["return"]) -> list[SearchResponse | MMSearchError]: ...

    def recommend_batch(self, profiles: Sequence[Profile | Mapping[str, Any]],
                        errors: Literal["raise", "return"] = "raise") -> list[Any]:
        """One result list per profile (a Profile, or a dict of ``recommend``'s arguments), from one
        batched ANN search per collection: far cheaper than a loop of ``recommend``. With
        ``errors="return"`` a profile that cannot run (an unknown item) gets its error in its place
        and the others are answered; by default the first one is raised. Answers in bulk carry
        no ``total`` (a single ``recommend`` does): counting each would cost more than its search."""
        return self._profiles(profiles, errors, count=False)

    def _profiles(self, profiles: Sequence[Profile | Mapping[str, Any]], errors: Literal["raise", "return"],
                  count: bool) -> list[Any]:
        with gc_paused():  # the profiles' checks allocate as the batch does (gc_pause.py)
            answers: list[Any] = [None] * len(profiles)
            checked: dict[int, Profile] = {}
            for i, p in enumerate(profiles):
                try:
                    with _checked():
                        checked[i] = p if isinstance(p, Profile) else Profile.model_validate(dict(p))
                except MMSearchError as e:
                    answers[i] = e
            modality = self.catalog.modalities(sorted({j for p in checked.values()
                                                       for j in (*weighted(p.like), *weighted(p.dislike))}))
            queries: list[tuple[int, Query]] = []
            for i, p in checked.items():
                try:
                    _require_items([*weighted(p.like), *weighted(p.dislike)], modality)
                    liked = {modality[j] for j in weighted(p.like)}
                    with _checked():  # e.g. an item both liked and disliked
                        queries.append((i, p.query(to=liked.pop() if len(liked) == 1 else None)))
                except MMSearchError as e:
                    answers[i] = e
            self.indexes.refresh()
            for (i, _), answer in zip(queries, self.runner.run_batch([q for _, q in queries], count=count)):
                answers[i] = answer
        if errors == "raise":
            for answer in answers:
                if isinstance(answer, MMSearchError):
                    raise answer
        return answers

    @overload
    def embed(self, *, text: str, space: str | None = None) -> Embedding: ...

    @overload
    def embed(self, *, texts: Sequence[str], space: str | None = None) -> Embeddings: ...

    @overload
    def embed(self, *, image: bytes) -> Embedding: ...

    @overload
    def embed(self, *, audio: bytes) -> Embedding: ...

    def embed(self, *, text: str | None = None, texts: Sequence[str] | None = None, image: bytes | None = None,
              audio: bytes | None = None, space: str | None = None) -> Embedding | Embeddings:
        """The raw unit vector of a text, an image or a sound; ``texts``: many texts at once."""
        return _embed(self.runner, text=text, texts=texts, image=image, audio=audio, space=space)

    def vectors(self, item_ids: Sequence[int], *, collection: str | None = None) -> dict[str, ItemVectors]:
        """The stored vectors of these items, by collection (``clip.image``, ...): numpy arrays with
        their item ids, embedding ids and spans (an audio item has a row per window)."""
        self.indexes.refresh()
        return item_vectors(self.catalog, self.indexes, list(item_ids), collection)

    def export(self, out: str | Path, *, format: ExportFormat = "parquet",
               collections: Sequence[str] | None = None) -> dict[str, int]:
        """Stream every stored vector (with item id, path, modality and span) of the collections
        (default: all) to ``out``: one Parquet file, or a folder of ``.npy`` + ``.csv`` per
        collection. Memory stays at one block of rows. Returns the rows written per collection."""
        existing = self.catalog.collections()
        chosen = list(collections) if collections else existing
        unknown = [c for c in chosen if c not in existing]
        if unknown:
            raise BadInput(f"no collection {unknown[0]!r} in this catalog (it has: {', '.join(existing) or 'none'})")
        dims = {c: self.catalog.spaces()[c.split(".")[0]][1] for c in chosen}
        parts = blocks(self.catalog, self.indexes, chosen)
        if format == "parquet":
            counts: dict[str, int] = dict.fromkeys(chosen, 0)

            def counted() -> Iterator[ItemVectors]:
                for b in parts:
                    counts[b.collection] += len(b)
                    yield b

            write_parquet(counted(), Path(out), dims)
            return counts
        if format == "npy":
            return write_npy(parts, Path(out))
        raise BadInput(f"unknown export format {format!r}: parquet or npy")

    def item(self, item_id: int) -> ItemRow:
        """An item with its file's facts (``facts``: EXIF date, camera, place, size in pixels,
        media type) and its tags."""
        return self.catalog.item(item_id)

    def browse(self, *, to: str | None = None, ref: str | None = None, offset: int = 0, limit: int = 50,
               **filters: Any) -> tuple[list[ItemRow], int]:
        """Items without a query, in path order: a page of them (``to``: one modality; ``ref``: the
        captions of this media file) and how many there are in all. ``filters``: the catalog
        filters a search takes (``path``, ``date_from``, ``camera``, ``near``, ``min_size``,
        ``ext``, ``tags``...: ``Where``), applied the same way; an unknown one is refused."""
        if to == "all":
            to = None
        if to not in (None, "image", "text", "audio", "video"):
            raise BadInput(f"unknown modality {to!r}: image, text, audio, video or all")
        if not 0 <= offset <= BROWSE_MAX_OFFSET:
            raise BadInput(f"offset: from 0 to {BROWSE_MAX_OFFSET:,}")
        if not 1 <= limit <= BROWSE_MAX_LIMIT:
            raise BadInput(f"limit: from 1 to {BROWSE_MAX_LIMIT}")
        with _checked():
            where = Where.model_validate(filters)
        ids, total = self.catalog.browse(to, where.filter(), offset, limit, ref=ref)
        rows = self.catalog.items(ids)
        return [rows[i] for i in ids if i in rows], total

    def duplicates(self, *, threshold: float = 0.95, collection: str = "clip.image",
                   limit: int | None = None) -> DuplicatesResponse:
        """Groups of near-duplicate items of a collection (cosine >= ``threshold``), largest
        first; ``limit`` caps the groups returned. See search/duplicates.py."""
        if not 0 < threshold <= 1:
            raise BadInput("threshold is a cosine in (0, 1], e.g. 0.95")
        if limit is not None and limit < 1:
            raise BadInput("limit is at least 1")
        index, store = self._collection(collection)
        return find_duplicates(self.catalog, index, store, collection, threshold, limit)

    def atlas(self, *, collection: str = "clip.image", limit: int = 2000) -> AtlasResponse:
        """A 2-D map of a collection: an even sample of at most ``limit`` items projected on its
        two principal axes (search/atlas.py). Cost follows ``limit``, not the catalog."""
        if not 1 <= limit <= MAX_POINTS:
            raise BadInput(f"limit is between 1 and {MAX_POINTS}")
        index, store = self._collection(collection)
        return build_atlas(self.catalog, index, store, collection, limit)

    def _collection(self, collection: str) -> tuple[LiveIndex, VectorStore]:
        """The live index and vector store of a collection this catalog holds; NotFound names
        the ones it does hold."""
        self.indexes.refresh()
        space = self.catalog.spaces().get(collection.split(".")[0])
        index = self.indexes.index(collection) if space is not None else None
        if space is None or index is None or collection not in self.catalog.collections():
            known = ", ".join(self.catalog.collections()) or "none"
            raise NotFound(f"no collection {collection!r} in this catalog (it has: {known})")
        return index, self.indexes.store(collection, space[1])

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
            "runs": self.catalog.runs()[::-1][:20],
        }


def embed_without_catalog(settings: Settings, *, text: str | None = None, texts: Sequence[str] | None = None,
                          image: bytes | None = None, audio: bytes | None = None,
                          space: str | None = None) -> Embedding | Embeddings:
    """``mmsearch embed`` where no catalog exists: the model named (or the default), and nothing
    is created or recorded."""
    return _embed(QueryEmbedder(None, None, EncoderSet(None, settings), settings), text=text, texts=texts,
                  image=image, audio=audio, space=space)


def _embed(embedder: QueryEmbedder, *, text: str | None, texts: Sequence[str] | None, image: bytes | None,
           audio: bytes | None, space: str | None) -> Embedding | Embeddings:
    if texts is None:
        return embedder.embed_one(text=text, image=image, audio=audio, space=space)
    if text is not None or image is not None or audio is not None:
        raise BadInput("embed takes exactly one of text, texts, image or audio")
    return embedder.embed_texts(texts, space)


@contextmanager
def _checked() -> Iterator[None]:
    """Pydantic's field errors as one BadInput: a typo such as ``min_szie=`` is refused, and
    reads the same on every face."""
    try:
        yield
    except ValidationError as e:
        raise BadInput("; ".join(_message(err) for err in e.errors())) from None


def _require_items(ids: Sequence[int], known: Mapping[int, str]) -> None:
    """NotFound for the first of ``ids`` the catalog does not hold (``known``: id -> modality)."""
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise NotFound(f"no item {unknown[0]}")


def _message(err: Any) -> str:
    """``field: what is wrong``, or for a check of the whole request just what is wrong."""
    msg = str(err["msg"]).removeprefix("Value error, ")
    where = ".".join(map(str, err["loc"]))
    return f"{where}: {msg}" if where else msg


def __getattr__(name: str) -> Any:
    if name == "IndexReport":  # still importable from here, loaded on first use
        from mmsearch.indexer.pipeline import IndexReport

        return IndexReport
    raise AttributeError(f"module 'mmsearch.engine' has no attribute {name!r}")


__all__ = ["Embedding", "Embeddings", "Engine", "Hit", "IndexReport", "ItemVectors", "NotFound", "Profile", "Query",
           "SearchResponse"]
