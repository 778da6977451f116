"""The SQL side of a catalog directory: files, items, embeddings, the models that made them, and
the change log that index upkeep follows.

A catalog directory holds ``catalog.db`` (unless ``--db`` points elsewhere), ``catalog.json``
(the id that binds the folder to its database), ``vectors/`` (exact float16 vectors) and
``indexes/`` (FAISS). A Catalog opened for reading never writes, creates or migrates anything;
the writer (storage/writer.py) opens the one writable Catalog.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
from sqlalchemy import and_, delete, exists, func, insert, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from mmsearch.errors import BadInput, MMSearchError, ModelMismatch, NotFound
from mmsearch.media.metadata import FileFacts, camera_keys, extension, mime_of
from mmsearch.settings import Settings
from mmsearch.storage import filters
from mmsearch.storage import ids as idgen
from mmsearch.storage.id_lists import among
from mmsearch.storage.db import (
    create_db_engine,
    friendly_db_error,
    migrate,
    schema_is_current,
    schema_version,
    write_engine,
)
from mmsearch.storage.models import Change, Counter, Embedding, File, Item, Meta, Root, Space, Tag, utcnow

log = logging.getLogger(__name__)

BINDING = "catalog.json"
TRUNCATE_STEP = 20_000  # change-log positions deleted per transaction
CATALOG_ID = "catalog_id"
GENERATION = "filters.generation"  # moved by triggers on tags and file paths (migration 0003)
MAX_TAG = 64
MAX_TAG_VALUE = 256


RUNS_KEY = "index_runs"  # meta: the last runs' summaries, for stats' history
KEEP_RUNS = 50

@dataclass(frozen=True)
class FileState:
    id: int
    size: int
    mtime_ns: int
    status: str
    content_hash: str | None = None
    kind: str | None = None
    facts_missing: bool = False  # an image indexed before the catalog kept facts (migration 0003)


@dataclass
class NewItem:
    modality: str
    ordinal: int = 0
    text: str | None = None
    ref_path: str | None = None
    duration: float | None = None
    # (embedding id, collection, start_s, end_s); ids already written to the vector stores
    embeddings: list[tuple[int, str, float | None, float | None]] = field(default_factory=list)


@dataclass
class FileRecord:
    """One scanned file ready to commit: embedded items, or the reason it failed."""

    path: str
    root_id: int
    kind: str
    size: int
    mtime_ns: int
    items: list[NewItem] = field(default_factory=list)
    error: str | None = None
    retry: bool = False  # failed for a passing cause (disk full, out of memory): tried again next run
    content_hash: str | None = None
    facts: FileFacts | None = None  # read by the decode worker; None: only what the path says
    skipped: bool = False  # neither media nor text (status "skipped"): remembered, so not read again
    note: str | None = None  # what its decoder warned about, for a file indexed all the same


@dataclass(frozen=True)
class ItemRow:
    id: int
    file_id: int
    path: str
    modality: str
    ordinal: int
    text: str | None
    ref_path: str | None
    duration: float | None
    size: int
    mtime_ns: int
    facts: FileFacts = field(default_factory=FileFacts)
    tags: list[str] = field(default_factory=list)  # "tag" or "key=value", sorted


class SchemaOutdated(MMSearchError):
    """The catalog's schema is older than this version's: its writer upgrades it."""


def catalog_exists(settings: Settings) -> bool:
    """A catalog is there to read: its SQLite file, or a database URL given explicitly."""
    return bool(settings.db_url) or (Path(settings.catalog).expanduser() / "catalog.db").exists()


class Catalog:
    def __init__(self, settings: Settings, *, writable: bool = False) -> None:
        """Open the catalog that ``settings.catalog`` names. Read-only unless ``writable``, which
        only the writer asks for (it holds the write lock, creates the folder and migrates)."""
        self.settings = settings
        self.writable = writable
        self.root = Path(settings.catalog).expanduser().resolve()
        self.vectors_dir = self.root / "vectors"
        self.indexes_dir = self.root / "indexes"
        if not writable and not catalog_exists(settings):
            raise NotFound(f"no catalog at {self.root}: index a folder first "
                           f"(`mmsearch index DIR --catalog {settings.catalog}`)")
        if writable:
            self.root.mkdir(parents=True, exist_ok=True)
        self.engine = create_db_engine(settings.resolved_db_url(), read_only=not writable)
        try:
            if writable:
                migrate(self.engine)
            elif not schema_is_current(self.engine):
                raise SchemaOutdated(f"the catalog {self.root} has an older schema ({schema_version(self.engine)}): "
                                    f"run `mmsearch index --catalog {settings.catalog}` once to upgrade it")
            self.id = self._bind()
        except MMSearchError:
            self.engine.dispose()
            raise
        except Exception as e:  # noqa: BLE001 - surface DB problems as a user-facing error
            self.engine.dispose()
            raise friendly_db_error(e) or MMSearchError(
                f"cannot open the catalog database {self.engine.url!r}: {e}") from e
        # the writer's transactions take SQLite's write lock up front (BEGIN IMMEDIATE): its ingest
        # and upkeep threads read, then write, and must not find their snapshot stale
        self.sessions = sessionmaker(write_engine(self.engine) if writable else self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    @property
    def schema_version(self) -> str | None:
        return schema_version(self.engine)

    def _bind(self) -> str:
        """The folder and its database carry one catalog id: a folder paired with another
        catalog's database (or the reverse) would serve vectors under the wrong rows."""
        with self.engine.connect() as conn:
            db_id = conn.execute(select(Meta.value).where(Meta.key == CATALOG_ID)).scalar()
        binding = self.root / BINDING
        try:
            folder_id = json.loads(binding.read_text())[CATALOG_ID]
        except FileNotFoundError:
            folder_id = None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise MMSearchError(f"{binding} is unreadable ({e}): restore it or remove it to re-bind") from None
        if folder_id is not None and db_id is not None and folder_id != db_id:
            raise MMSearchError(
                f"the catalog folder {self.root} belongs to catalog {folder_id}, but the database "
                f"{self.engine.url.render_as_string(hide_password=True)} to catalog {db_id}: point --catalog "
                "and --db at the same catalog")
        if folder_id is None and self.writable and db_id is not None:
            tmp = binding.with_name(BINDING + ".tmp")
            tmp.write_text(json.dumps({CATALOG_ID: db_id}))
            os.replace(tmp, binding)
        return str(db_id or folder_id or "")

    def _require_writable(self) -> None:
        if not self.writable:
            raise RuntimeError("a read-only Catalog was asked to write: writes go through the CatalogWriter")

    # -- models ---------------------------------------------------------------------------------

    def space_spec(self, name: str) -> str | None:
        with self.sessions() as s:
            space = s.get(Space, name)
            return space.spec if space else None

    def spaces(self) -> dict[str, tuple[str, int]]:
        with self.sessions() as s:
            return {sp.name: (sp.spec, sp.dim) for sp in s.scalars(select(Space))}

    def ensure_space(self, name: str, spec: str, dim: int, kinds: Sequence[str], *, reembed: bool = False) -> bool:
        """Record the model of a space; refuse another model unless re-embedding. True if files of
        ``kinds`` must be embedded again (a new space over an existing catalog, or a re-embed, with
        this model or another)."""
        self._require_writable()
        with self.sessions.begin() as s:
            space = s.get(Space, name)
            same = space is not None and space.spec == spec and space.dim == dim
            if space is None or same:
                if same and not reembed:
                    return False
                if space is None:
                    s.add(Space(name=name, spec=spec, dim=dim))
                # a new space over files already indexed, or the same model again (new settings, such
                # as a video's interval, or vectors from an older version): files of its kinds are
                # embedded again, their old vectors serving until then
                return bool(s.execute(update(File).where(File.kind.in_(list(kinds))).values(mtime_ns=-1)).rowcount)
            if not reembed:
                flag = "--model" if name == "clip" else "--audio-model"
                raise ModelMismatch(
                    f"the catalog {self.root} was built with {space.spec} ({name} space), not {spec}. "
                    f"Leave out {flag} to use the catalog's model, or run `mmsearch index DIR --reembed "
                    f"{flag} {spec}` to re-embed everything with the new one."
                )
            space.spec, space.dim = spec, dim
            # Every file is embedded again on the next pass; the old model's vectors go, and their
            # ids stay used: the floor keeps new ids above them.
            idgen.raise_embedding_floor(s, idgen.max_embedding_id(s))
            s.execute(delete(Embedding).where(Embedding.collection.like(f"{name}.%")))
            s.execute(update(File).values(mtime_ns=-1))
        return True

    # -- scanning state -------------------------------------------------------------------------

    def ensure_root(self, path: Path) -> int:
        self._require_writable()
        with self.sessions.begin() as s:
            existing = s.scalar(select(Root.id).where(Root.path == str(path)))
            if existing is not None:
                return existing
            root = Root(path=str(path))
            s.add(root)
            s.flush()
            return root.id

    def roots(self) -> list[str]:
        with self.sessions() as s:
            return list(s.scalars(select(Root.path).order_by(Root.path)))

    def file_states(self, root: Path) -> dict[str, FileState]:
        """Known files under a folder (by path, so nested roots share their files), or the file
        itself when the root is one file."""
        esc = _like_escape(str(root).rstrip("/")) + "/%"
        where = File.path == str(root) if root.is_file() else File.path.like(esc, escape="\\")
        with self.sessions() as s:
            rows = s.execute(select(File.path, File.id, File.size, File.mtime_ns, File.status, File.content_hash,
                                    File.kind, File.width).where(where))
            # every image read since migration 0003 has a width: none means its facts were never read
            return {p: FileState(i, sz, mt, st, h, k, k == "image" and w is None and st == "ok")
                    for p, i, sz, mt, st, h, k, w in rows}

    def files_of_size(self, size: int, kind: str) -> list[tuple[str, str | None]]:
        """(path, content hash) of known files of this size and kind: the candidates a new file
        may have moved from (an index lookup, proportional to the matches)."""
        with self.sessions() as s:
            q = select(File.path, File.content_hash).where(File.size == size, File.kind == kind,
                                                           File.status == "ok")
            return [(p, h) for p, h in s.execute(q)]

    # -- writes (the writer's Catalog only) -------------------------------------------------------

    def commit_files(self, records: Sequence[FileRecord]) -> None:
        """Store each file's items in one transaction. A file seen before keeps its row and its
        items' ids (matched by modality and row); only its vectors are replaced. New files go
        in with three bulk inserts. Triggers log every vector added or removed."""
        self._require_writable()
        if not records:
            return
        with self.sessions.begin() as s:
            known: dict[str, int] = {}
            for i in range(0, len(records), 500):
                chunk = [r.path for r in records[i:i + 500]]
                known.update({p: fid for p, fid in s.execute(select(File.path, File.id).where(File.path.in_(chunk)))})
            fresh = [r for r in records if r.path not in known]
            for r in records:
                if r.path in known:
                    self._update_file(s, known[r.path], r)
            if fresh:
                file_ids = s.scalars(
                    insert(File).returning(File.id, sort_by_parameter_order=True),
                    [_file_values(r) for r in fresh],
                ).all()
                owned = [(fid, it) for fid, r in zip(file_ids, fresh) for it in r.items]
                self._insert_items(s, owned)

    def _update_file(self, s: Session, file_id: int, r: FileRecord) -> None:
        s.execute(update(File).where(File.id == file_id).values(**_file_values(r), indexed_at=utcnow()))
        s.execute(delete(Embedding).where(Embedding.item_id.in_(select(Item.id).where(Item.file_id == file_id))))
        old = {(m, o): iid for iid, m, o in s.execute(
            select(Item.id, Item.modality, Item.ordinal).where(Item.file_id == file_id))}
        kept: list[tuple[int, NewItem]] = []
        new: list[tuple[int, NewItem]] = []
        for it in r.items:
            iid = old.pop((it.modality, it.ordinal), None)
            if iid is None:
                new.append((file_id, it))
            else:
                kept.append((iid, it))
        if old:
            s.execute(delete(Item).where(Item.id.in_(list(old.values()))))
        for iid, it in kept:
            s.execute(update(Item).where(Item.id == iid).values(text=it.text, ref_path=it.ref_path,
                                                                duration=it.duration))
        _insert_embeddings(s, kept)
        self._insert_items(s, new)

    def _insert_items(self, s: Session, owned: list[tuple[int, NewItem]]) -> None:
        if not owned:
            return
        item_ids = idgen.allocate_item_ids(s, len(owned))
        s.execute(insert(Item), [dict(id=iid, file_id=fid, modality=it.modality, ordinal=it.ordinal, text=it.text,
                                      ref_path=it.ref_path, duration=it.duration)
                                 for iid, (fid, it) in zip(item_ids, owned)])
        _insert_embeddings(s, [(iid, it) for iid, (_, it) in zip(item_ids, owned)])

    def fill_facts(self, rows: Sequence[tuple[int, str, int, FileFacts]]) -> None:
        """Store facts read from unchanged files' headers, (file id, path, mtime_ns, facts) each:
        only the facts' columns change (no item, no vector), in one transaction that also moves the
        filters' generation, so readers' cached filter selections see the new dates and cameras."""
        self._require_writable()
        if not rows:
            return
        with self.sessions.begin() as s:
            for file_id, path, mtime_ns, facts in rows:
                s.execute(update(File).where(File.id == file_id).values(**_fact_values(path, mtime_ns, facts)))
            s.execute(update(Counter).where(Counter.key == GENERATION).values(value=Counter.value + 1))

    def move_file(self, old_path: str, new_path: str, root_id: int, mtime_ns: int) -> None:
        """A file that moved keeps its items and vectors; a captions file's links move with it."""
        self._require_writable()
        old_dir, new_dir = os.path.dirname(old_path) + os.sep, os.path.dirname(new_path) + os.sep
        with self.sessions.begin() as s:
            file_id = s.scalar(select(File.id).where(File.path == old_path))
            if file_id is None:
                raise NotFound(f"no file {old_path}")
            s.execute(delete(File).where(File.path == new_path))  # a failed record at the new path
            s.execute(update(File).where(File.id == file_id).values(
                path=new_path, root_id=root_id, mtime_ns=mtime_ns, ext=extension(new_path),
                date_s=func.coalesce(File.taken_s, mtime_ns // 1_000_000_000)))
            for iid, ref in s.execute(select(Item.id, Item.ref_path).where(Item.file_id == file_id,
                                                                          Item.ref_path.is_not(None))).all():
                if ref.startswith(old_dir):
                    s.execute(update(Item).where(Item.id == iid).values(ref_path=new_dir + ref[len(old_dir):]))

    def delete_files(self, paths: Iterable[str]) -> int:
        self._require_writable()
        paths = list(paths)
        if not paths:
            return 0
        with self.sessions.begin() as s:
            n = 0
            for i in range(0, len(paths), 500):
                n += s.execute(delete(File).where(File.path.in_(paths[i:i + 500]))).rowcount or 0
            return n

    def delete_item(self, item_id: int) -> None:
        """Delete an item. Its file row stays, so a re-scan brings it back only if the file changes."""
        self._require_writable()
        with self.sessions.begin() as s:
            if not s.execute(delete(Item).where(Item.id == item_id)).rowcount:
                raise NotFound(f"no item {item_id}")

    def mark_lost(self, collection: str, embedding_ids: Sequence[int]) -> int:
        """Live rows whose vectors are gone: their files are embedded again on the next scan
        (keeping their item ids). Returns how many files were marked."""
        files = self.files_of_embeddings(embedding_ids)
        log.warning("%s: %d vectors missing from the store; %d files will be embedded again",
                    collection, len(embedding_ids), len(files))
        self.mark_changed(files)
        return len(files)

    def mark_changed(self, file_ids: Sequence[int]) -> None:
        """Make the next scan embed these files again (their vectors were lost)."""
        self._require_writable()
        with self.sessions.begin() as s:
            for i in range(0, len(file_ids), 500):
                s.execute(update(File).where(File.id.in_([int(x) for x in file_ids[i:i + 500]])).values(mtime_ns=-1))

    def set_tags(self, item_id: int, add: Sequence[str] = (), remove: Sequence[str] = (),
                 values: Mapping[str, str] | None = None) -> list[str]:
        """Change an item's tags in one transaction: ``remove`` first (a name, or ``key=value`` to
        remove the key only while it has that value), then ``add`` plain tags (one already there
        keeps its value), then ``values`` sets keys. Returns the item's tags after."""
        self._require_writable()
        add = [_tag_name(t) for t in add]
        drops = [filters.parse_tag(_tag_text(t)) for t in remove]
        pairs = {_tag_name(k): _tag_value(v) for k, v in (values or {}).items()}
        with self.sessions.begin() as s:
            if s.get(Item, item_id) is None:
                raise NotFound(f"no item {item_id}")
            for name, value in drops:
                cond = [Tag.item_id == item_id, Tag.tag == name] + ([Tag.value == value] if value is not None else [])
                s.execute(delete(Tag).where(*cond))
            have = set(s.scalars(select(Tag.tag).where(Tag.item_id == item_id)))
            fresh = [t for t in dict.fromkeys(add) if t not in have and t not in pairs]
            if fresh:
                s.execute(insert(Tag), [dict(item_id=item_id, tag=t, value=None) for t in fresh])
            for name, value in pairs.items():
                if name in have:
                    s.execute(update(Tag).where(Tag.item_id == item_id, Tag.tag == name).values(value=value))
                else:
                    s.execute(insert(Tag).values(item_id=item_id, tag=name, value=value))
            return _tags_of(s, [item_id]).get(item_id, [])

    def raise_id_floor(self, value: int) -> None:
        """Ids up to ``value`` count as used even once no row or vector holds them."""
        self._require_writable()
        with self.sessions.begin() as s:
            idgen.raise_embedding_floor(s, value)

    def max_embedding_id(self) -> int:
        """The highest id ever given out, deleted ones included, so ids are never reused."""
        with self.sessions() as s:
            return idgen.max_embedding_id(s)

    # -- the change log ---------------------------------------------------------------------------

    def last_seq(self) -> int:
        """The log's last position, also once truncation emptied it (the floors remember it)."""
        with self.sessions() as s:
            return _last_seq(s)

    def changes_since(self, collection: str, seq: int) -> tuple[int, int, np.ndarray, np.ndarray]:
        """(floor, last seq, ids added, ids removed) after ``seq``, read in one snapshot. When the
        log was truncated past ``seq`` (floor > seq), the caller must reload a newer base."""
        with self.sessions() as s:
            floor_meta = s.get(Meta, f"changes_floor.{collection}")
            rows = s.execute(select(Change.seq, Change.embedding_id, Change.op)
                             .where(Change.collection == collection, Change.seq > seq).order_by(Change.seq)).all()
        floor = int(floor_meta.value) if floor_meta else 0
        if not rows:
            return floor, seq, np.empty(0, np.int64), np.empty(0, np.int64)
        arr = np.array(rows, dtype=np.int64)
        return floor, int(arr[-1, 0]), arr[arr[:, 2] > 0, 1], arr[arr[:, 2] < 0, 1]

    def record_run(self, run: Mapping[str, object]) -> None:
        """Keep the summaries of the last KEEP_RUNS index runs, whichever face ran them (CLI, HTTP
        job, Python): the history ``stats`` shows. One small JSON value, rewritten per run."""
        self._require_writable()
        with self.sessions.begin() as s:
            meta = s.get(Meta, RUNS_KEY)
            runs = (json.loads(meta.value) if meta is not None else []) + [dict(run)]
            value = json.dumps(runs[-KEEP_RUNS:])
            if meta is None:
                s.add(Meta(key=RUNS_KEY, value=value))
            else:
                meta.value = value

    def runs(self) -> list[dict[str, object]]:
        """The last index runs' summaries, oldest first (see record_run)."""
        with self.sessions() as s:
            value = s.scalar(select(Meta.value).where(Meta.key == RUNS_KEY))
        return json.loads(value) if value else []

    def truncate_changes(self, collection: str, upto: int) -> None:
        """Drop log entries a saved base index already holds. The floor moves first, so a reader
        behind it reloads the base before any entry it needs is gone; then entries go in slices
        of TRUNCATE_STEP positions, so an ingest committing beside a merge of a million changes
        waits for one slice, never for all."""
        self._require_writable()
        key = f"changes_floor.{collection}"
        with self.sessions.begin() as s:
            meta = s.get(Meta, key)
            if meta is None:
                s.add(Meta(key=key, value=str(upto)))
            elif int(meta.value) < upto:
                meta.value = str(upto)
            start = int(s.scalar(select(func.min(Change.seq)).where(Change.collection == collection)) or upto)
        for lo in range(start - 1, upto, TRUNCATE_STEP):
            with self.sessions.begin() as s:
                s.execute(delete(Change).where(Change.collection == collection, Change.seq > lo,
                                               Change.seq <= min(lo + TRUNCATE_STEP, upto)))

    # -- reads ----------------------------------------------------------------------------------

    def live_ids(self, collection: str) -> np.ndarray:
        """Every live id of a collection: for full rebuilds and checks, never per change."""
        with self.sessions() as s:
            rows = s.execute(select(Embedding.id).where(Embedding.collection == collection)
                             .order_by(Embedding.id)).scalars()
            return np.fromiter(rows, dtype=np.int64)

    def max_live_id(self, collection: str) -> int:
        with self.sessions() as s:
            return int(s.scalar(select(func.max(Embedding.id)).where(Embedding.collection == collection)) or 0)

    def collections(self) -> list[str]:
        return sorted(k.split(".", 1)[1] for k, v in self._counters().items() if k.startswith("embeddings.") and v)

    def files_of_embeddings(self, ids: Sequence[int]) -> list[int]:
        out: set[int] = set()
        with self.sessions() as s:
            for i in range(0, len(ids), 900):
                chunk = [int(x) for x in ids[i:i + 900]]
                out.update(s.scalars(select(Item.file_id).join(Embedding, Embedding.item_id == Item.id)
                                     .where(Embedding.id.in_(chunk))))
        return sorted(out)

    def ids_under(self, collection: str, pattern: str) -> np.ndarray:
        """Embedding ids whose file path is under a folder or matches a glob (see path_filter)."""
        ids = self.select_ids(collection, filters.Filter(path=pattern))
        assert ids is not None
        return ids

    def select_ids(self, collection: str, f: filters.Filter, cap: int | None = None) -> np.ndarray | None:
        """Sorted embedding ids of a collection that pass a filter; None when every condition of
        it matches more than ``cap`` rows (then check candidates with ``embedding_items``)."""
        with self.sessions() as s:
            return filters.select_ids(s, collection, f, cap)

    def filter_stamp(self) -> tuple[int, int]:
        """(change log position, filters generation): a cached filter selection is valid while
        both stay put. Two index lookups."""
        with self.sessions() as s:
            generation = s.scalar(select(Counter.value).where(Counter.key == GENERATION))
            return _last_seq(s), int(generation or 0)

    def embedding_items(self, ids: Sequence[int], f: filters.Filter = filters.NO_FILTER
                        ) -> dict[int, tuple[int, float | None, float | None]]:
        """embedding id -> (item id, start, end), for the ids still present that pass ``f``."""
        if not len(ids):
            return {}
        with self.sessions() as s:
            return filters.matching(s, f, ids)

    def item_embeddings(self, item_id: int) -> list[tuple[int, str]]:
        with self.sessions() as s:
            rows = s.execute(select(Embedding.id, Embedding.collection).where(Embedding.item_id == item_id)
                             .order_by(Embedding.id))
            return [(int(e), c) for e, c in rows]

    def embeddings_of(self, item_ids: Sequence[int]) -> list[tuple[int, int, str, float | None, float | None]]:
        """(embedding id, item id, collection, start, end) of every vector of these items, in id
        order: many items' vectors in one read (a batch of profiles, ``Engine.vectors``)."""
        out: list[tuple[int, int, str, float | None, float | None]] = []
        with self.sessions() as s:
            for wanted in among(Embedding.item_id, item_ids, s.get_bind().dialect.name):
                q = select(Embedding.id, Embedding.item_id, Embedding.collection, Embedding.start_s,
                           Embedding.end_s).where(wanted)
                out += [(int(e), int(it), c, a, b) for e, it, c, a, b in s.connection().execute(q).all()]
        out.sort()
        return out

    def embedding_rows(self, collection: str, after: int, limit: int
                       ) -> list[tuple[int, int, float | None, float | None, str, str]]:
        """(embedding id, item id, start, end, path, modality) of a collection's vectors with ids above
        ``after``, the next ``limit`` in id order: an export walks the collection a block at a time
        along the (collection, id) index, never holding a long transaction or the whole list."""
        with self.sessions() as s:
            q = (select(Embedding.id, Embedding.item_id, Embedding.start_s, Embedding.end_s, File.path, Item.modality)
                 .join(Item, Embedding.item_id == Item.id).join(File, Item.file_id == File.id)
                 .where(Embedding.collection == collection, Embedding.id > after)
                 .order_by(Embedding.id).limit(limit))
            return [(int(e), int(it), a, b, p, m) for e, it, a, b, p, m in s.execute(q)]

    def items(self, item_ids: Sequence[int]) -> dict[int, ItemRow]:
        """Items with their file's facts and their tags (a page of results, an item's details)."""
        if not len(item_ids):
            return {}
        out: dict[int, ItemRow] = {}
        with self.sessions() as s:
            conn = s.connection()  # plain rows: a batch hydrates thousands, the ORM's per-row work is not needed
            tags = _tags_of(s, item_ids)
            for wanted in among(Item.id, item_ids, s.get_bind().dialect.name):
                q = (select(Item.id, Item.file_id, File.path, Item.modality, Item.ordinal, Item.text, Item.ref_path,
                            Item.duration, File.size, File.mtime_ns, *_FACT_COLUMNS)
                     .join(File, Item.file_id == File.id).where(wanted))
                for r in conn.execute(q).all():
                    out[r[0]] = ItemRow(*r[:10], facts=FileFacts(*r[10:]), tags=tags.get(r[0], []))
        return out

    def modalities(self, item_ids: Sequence[int]) -> dict[int, str]:
        """item id -> modality, for the ids that exist: a batch of profiles checks its items and
        picks their default modality with one narrow read (no join)."""
        out: dict[int, str] = {}
        with self.sessions() as s:
            for wanted in among(Item.id, item_ids, s.get_bind().dialect.name):
                rows = s.connection().execute(select(Item.id, Item.modality).where(wanted)).all()
                out.update({int(k): m for k, m in rows})
        return out

    def item(self, item_id: int) -> ItemRow:
        row = self.items([item_id]).get(item_id)
        if row is None:
            raise NotFound(f"no item {item_id}")
        return row

    def items_for_path(self, path: str) -> list[int]:
        """The item ids of an indexed file (one for a photo, a sound or a note; one per row of a
        captions file), in order."""
        with self.sessions() as s:
            q = (select(Item.id).join(File, Item.file_id == File.id).where(File.path == path)
                 .order_by(Item.ordinal, Item.id))
            return list(s.scalars(q))

    def browse(self, modality: str | None, f: filters.Filter, offset: int, limit: int,
               ref: str | None = None) -> tuple[list[int], int]:
        """A page of item ids in path order (then row of a captions file), and how many there
        are: browsing without a query. ``f``: a search's filters (path, date, camera, ...),
        applied as a search applies them (storage/filters.py); ``ref`` keeps the captions of that
        media file. Without a filter, modality is a range of its index (items.modality); with
        one, the filter's smallest condition drives and the modality is checked on its rows."""
        where = []
        if modality is not None:
            where.append((Item.modality + "" if f else Item.modality) == modality)
        if ref is not None:
            where.append(Item.ref_path == ref)
        with self.sessions() as s:
            return filters.page_items(s, f, (File.path, Item.ordinal, Item.id), offset, limit, *where)

    def count_items(self, collections: Sequence[str], f: filters.Filter, among: Sequence[int] | None = None,
                    limit: int | None = None, exclude: Sequence[int] = ()) -> tuple[int, bool]:
        """Items with vectors in these collections that pass ``f`` (``among``: of these ids only;
        ``exclude``: less these): what a query over the collections ranks, the total of its
        pages. A modality's items are counted by modality (without a filter, from the counters the
        triggers keep); only a video's sound track (clap.video without clip.video) asks each video
        for a vector there. Cost follows the matches (storage/filters.py): with ``limit``,
        counting stops past it. Returns the count and whether it is exact (False: it stopped,
        there are more). One session."""
        modalities = sorted({c.split(".", 1)[1] for c in collections})
        if not modalities or (among is not None and not len(among)):
            return 0, True
        kind = Item.modality + "" if f else Item.modality
        where = kind.in_(modalities)
        tracks_only = "video" in modalities and "clip.video" not in collections
        if tracks_only:  # a video without a sound track has no vector there
            track = exists(select(Embedding.id).where(Embedding.item_id == Item.id, Embedding.collection == "clap.video"))
            where = or_(kind.in_([m for m in modalities if m != "video"]), and_(kind == "video", track))
        with self.sessions() as s:
            if not f and not tracks_only and among is None:
                counters = dict(s.execute(select(Counter.key, Counter.value).where(
                    Counter.key.in_([f"items.{m}" for m in modalities]))).all())
                n, exact = sum(int(v) for v in counters.values()), True
            else:
                n = filters.count_items(s, f, where, ids=None if among is None else sorted(set(among)), limit=limit)
                n, exact = (limit, False) if limit is not None and n > limit else (n, True)
            if exclude:
                n -= filters.count_items(s, f, where, ids=sorted(set(exclude)))
        return max(0, n), exact

    def failures(self, limit: int = 100) -> list[tuple[str, str]]:
        with self.sessions() as s:
            q = (select(File.path, File.error).where(File.status.in_(["failed", "retry"]))
                 .order_by(File.path).limit(limit))
            return [(p, e or "") for p, e in s.execute(q)]

    def _counters(self) -> dict[str, int]:
        with self.sessions() as s:
            return {k: int(v) for k, v in s.execute(select(Counter.key, Counter.value))}

    def counts(self) -> dict[str, dict[str, int]]:
        """Files by status, items by modality, vectors by collection: from the counters the
        triggers keep, never a scan."""
        out: dict[str, dict[str, int]] = {"files": {}, "items": {}, "embeddings": {}}
        for key, value in self._counters().items():
            group, _, name = key.partition(".")
            if group in out and value:
                out[group][name] = value
        return out


_FACT_NAMES = ("mime", "width", "height", "taken_s", "camera_make", "camera_model", "lens", "lat", "lon",
               "orientation")
_FACT_COLUMNS = tuple(getattr(File, name) for name in _FACT_NAMES)
# ``items`` builds FileFacts from these columns by position
assert _FACT_NAMES == tuple(f.name for f in fields(FileFacts)), "_FACT_NAMES must follow FileFacts' fields"


def _file_values(r: FileRecord) -> dict[str, object]:
    status = "skipped" if r.skipped else "ok" if not r.error else ("retry" if r.retry else "failed")
    values = _fact_values(r.path, r.mtime_ns, r.facts or FileFacts())
    values.update(path=r.path, root_id=r.root_id, kind=r.kind, size=r.size, mtime_ns=r.mtime_ns, status=status,
                  error=r.error or r.note, content_hash=r.content_hash, ext=extension(r.path))
    return values


def _fact_values(path: str, mtime_ns: int, facts: FileFacts) -> dict[str, object]:
    """The columns a file's facts fill, the filters' keys (date, camera) included."""
    camera_key, model_key = camera_keys(facts.camera_make, facts.camera_model)
    values: dict[str, object] = {name: getattr(facts, name) for name in _FACT_NAMES}
    values.update(mime=facts.mime or mime_of(path),
                  date_s=facts.taken_s if facts.taken_s is not None else mtime_ns // 1_000_000_000,
                  camera_key=camera_key, model_key=model_key)
    return values


def _last_seq(s: Session) -> int:
    last = int(s.scalar(select(func.max(Change.seq))) or 0)
    if last:
        return last
    floors = s.scalars(select(Meta.value).where(Meta.key.like("changes\\_floor.%", escape="\\")))
    return max((int(v) for v in floors), default=0)


def _tags_of(s: Session, item_ids: Sequence[int]) -> dict[int, list[str]]:
    """item id -> its tags as "tag" and "key=value", sorted."""
    out: dict[int, list[str]] = {}
    for wanted in among(Tag.item_id, item_ids, s.get_bind().dialect.name):
        q = select(Tag.item_id, Tag.tag, Tag.value).where(wanted).order_by(Tag.item_id, Tag.tag)
        for item_id, tag, value in s.connection().execute(q).all():
            out.setdefault(item_id, []).append(tag if value is None else f"{tag}={value}")
    return out


def _tag_text(tag: object) -> str:
    """Tags are stored and matched as given, less surrounding blanks; NUL and lone surrogates cannot be."""
    try:
        ok = isinstance(tag, str) and "\x00" not in tag and bool(tag.encode("utf-8"))
    except UnicodeEncodeError:
        ok = False
    if not ok:
        raise BadInput(f"a tag is valid UTF-8 text without NUL characters, not {tag!r}")
    return str(tag).strip()


def _tag_name(tag: object) -> str:
    name = _tag_text(tag)
    if not name or len(name) > MAX_TAG or "=" in name:
        raise BadInput(f"bad tag {name!r}: 1 to {MAX_TAG} characters, no '=' (use set for key=value)")
    return name


def _tag_value(value: object) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # set={"rating": 5} from Python means "5"
    text = _tag_text(value)
    if len(text) > MAX_TAG_VALUE:
        raise BadInput(f"a tag's value is at most {MAX_TAG_VALUE} characters")
    return text


def _insert_embeddings(s: Session, owned: list[tuple[int, NewItem]]) -> None:
    vectors = [dict(id=eid, item_id=iid, collection=c, start_s=a, end_s=b)
               for iid, it in owned for eid, c, a, b in it.embeddings]
    if vectors:
        s.execute(insert(Embedding), vectors)


def _like_escape(text: str) -> str:
    """Make LIKE's own wildcards literal (with ESCAPE '\\')."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
