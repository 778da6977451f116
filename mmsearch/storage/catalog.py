"""The SQL side of a catalog directory: files, items, embeddings, and the models that made them.

A catalog directory holds ``catalog.db`` (unless ``--db`` points elsewhere), ``vectors/`` (exact
float16 vectors) and ``indexes/`` (FAISS). The schema version is Alembic's, upgraded on open.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from mmsearch.errors import MMSearchError, ModelMismatch, NotFound
from mmsearch.settings import Settings
from mmsearch.storage import path_filter
from mmsearch.storage.db import create_db_engine, migrate, schema_version
from mmsearch.storage.models import Embedding, File, Item, Meta, Root, Space

GENERATION = "generation"
ID_FLOOR = "id_floor"


@dataclass(frozen=True)
class FileState:
    id: int
    size: int
    mtime_ns: int
    status: str


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


class Catalog:
    def __init__(self, settings: Settings, *, create: bool = True) -> None:
        self.settings = settings
        self.root = Path(settings.catalog).expanduser().resolve()
        if not create and not (self.root / "catalog.db").exists() and not settings.db_url:
            raise NotFound(f"no catalog at {self.root}: index a folder first "
                           f"(`mmsearch index DIR --catalog {settings.catalog}`)")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MMSearchError(f"cannot use {self.root} as a catalog folder: {e.strerror or e}") from e
        self.vectors_dir = self.root / "vectors"
        self.indexes_dir = self.root / "indexes"
        self.engine = create_db_engine(settings.resolved_db_url())
        try:
            migrate(self.engine)
        except Exception as e:  # noqa: BLE001 - surface DB problems as a user-facing error
            raise MMSearchError(f"cannot open the catalog database {self.engine.url!r}: {e}") from e
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    @property
    def schema_version(self) -> str | None:
        return schema_version(self.engine)

    @contextmanager
    def write_lock(self) -> Iterator[None]:
        """One writer per catalog: a second `index` fails at once instead of interleaving."""
        with open(self.root / "write.lock", "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise MMSearchError(f"another process is writing to the catalog {self.root}") from None
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

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
        ``kinds`` must be embedded again (a new space over an existing catalog, or a re-embed)."""
        with self.sessions.begin() as s:
            space = s.get(Space, name)
            if space is None:
                s.add(Space(name=name, spec=spec, dim=dim))
                n = s.execute(update(File).where(File.kind.in_(list(kinds))).values(mtime_ns=-1)).rowcount
                return bool(n)
            if space.spec == spec and space.dim == dim:
                return False
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
            self._set_meta(s, ID_FLOOR, max(self._id_floor(s), int(s.scalar(select(func.max(Embedding.id))) or 0)))
            s.execute(delete(Embedding).where(Embedding.collection.like(f"{name}.%")))
            s.execute(update(File).values(mtime_ns=-1))
            self._bump(s)
        for folder in (self.vectors_dir, self.indexes_dir):
            for path in folder.glob(f"{name}.*"):
                path.unlink()
        return True

    # -- scanning state -------------------------------------------------------------------------

    def ensure_root(self, path: Path) -> int:
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
        """Known files under a folder (by path, so nested roots share their files)."""
        esc = _like_escape(str(root).rstrip("/")) + "/%"
        with self.sessions() as s:
            rows = s.execute(select(File.path, File.id, File.size, File.mtime_ns, File.status)
                             .where(File.path.like(esc, escape="\\")))
            return {p: FileState(i, sz, mt, st) for p, i, sz, mt, st in rows}

    # -- writes ---------------------------------------------------------------------------------

    def max_embedding_id(self) -> int:
        """The highest id ever given out, deleted ones included, so ids are never reused."""
        with self.sessions() as s:
            return max(int(s.scalar(select(func.max(Embedding.id))) or 0), self._id_floor(s))

    def raise_id_floor(self, value: int) -> None:
        """Ids up to ``value`` count as used even once no row or vector holds them."""
        with self.sessions.begin() as s:
            if value > self._id_floor(s):
                self._set_meta(s, ID_FLOOR, value)

    def _id_floor(self, s: Session) -> int:
        meta = s.get(Meta, ID_FLOOR)
        return int(meta.value) if meta else 0

    def _set_meta(self, s: Session, key: str, value: int) -> None:
        meta = s.get(Meta, key)
        if meta is None:
            s.add(Meta(key=key, value=str(value)))
        else:
            meta.value = str(value)

    def commit_files(self, records: Sequence[FileRecord]) -> None:
        """Replace each file's rows with its new items, all in one transaction (three bulk inserts)."""
        if not records:
            return
        with self.sessions.begin() as s:
            s.execute(delete(File).where(File.path.in_([r.path for r in records])))
            file_ids = s.scalars(
                insert(File).returning(File.id, sort_by_parameter_order=True),
                [dict(path=r.path, root_id=r.root_id, kind=r.kind, size=r.size, mtime_ns=r.mtime_ns,
                      status="failed" if r.error else "ok", error=r.error) for r in records],
            ).all()
            owned = [(fid, it) for fid, r in zip(file_ids, records) for it in r.items]
            if owned:
                item_ids = s.scalars(
                    insert(Item).returning(Item.id, sort_by_parameter_order=True),
                    [dict(file_id=fid, modality=it.modality, ordinal=it.ordinal, text=it.text,
                          ref_path=it.ref_path, duration=it.duration) for fid, it in owned],
                ).all()
                vectors = [dict(id=eid, item_id=iid, collection=c, start_s=a, end_s=b)
                           for iid, (_, it) in zip(item_ids, owned) for eid, c, a, b in it.embeddings]
                if vectors:
                    s.execute(insert(Embedding), vectors)
            self._bump(s)

    def delete_files(self, paths: Iterable[str]) -> int:
        paths = list(paths)
        if not paths:
            return 0
        with self.sessions.begin() as s:
            n = 0
            for i in range(0, len(paths), 500):
                n += s.execute(delete(File).where(File.path.in_(paths[i:i + 500]))).rowcount or 0
            self._bump(s)
            return n

    def delete_item(self, item_id: int) -> None:
        """Delete an item. Its file row stays, so a re-scan brings it back only if the file changes."""
        with self.sessions.begin() as s:
            item = s.get(Item, item_id)
            if item is None:
                raise NotFound(f"no item {item_id}")
            s.delete(item)
            s.flush()
            self._bump(s)

    def _bump(self, s: Session) -> None:
        meta = s.get(Meta, GENERATION)
        self._set_meta(s, GENERATION, int(meta.value) + 1 if meta else 1)

    def generation(self) -> int:
        with self.sessions() as s:
            meta = s.get(Meta, GENERATION)
            return int(meta.value) if meta else 0

    # -- reads ----------------------------------------------------------------------------------

    def live_ids(self, collection: str) -> np.ndarray:
        with self.sessions() as s:
            ids = s.scalars(select(Embedding.id).where(Embedding.collection == collection).order_by(Embedding.id))
            return np.fromiter(ids, dtype=np.int64)

    def ids_under(self, collection: str, pattern: str) -> np.ndarray:
        """Embedding ids whose file path is under a folder or matches a glob (see path_filter)."""
        with self.sessions() as s:
            return path_filter.embedding_ids(s, collection, pattern)

    def embedding_items(self, ids: Sequence[int]) -> dict[int, tuple[int, float | None, float | None]]:
        """embedding id -> (item id, start, end), for the ids still present."""
        if not len(ids):
            return {}
        out: dict[int, tuple[int, float | None, float | None]] = {}
        with self.sessions() as s:
            for i in range(0, len(ids), 900):
                chunk = [int(x) for x in ids[i:i + 900]]
                q = select(Embedding.id, Embedding.item_id, Embedding.start_s, Embedding.end_s).where(
                    Embedding.id.in_(chunk))
                out.update({e: (it, a, b) for e, it, a, b in s.execute(q)})
        return out

    def item_embeddings(self, item_id: int) -> list[tuple[int, str]]:
        with self.sessions() as s:
            rows = s.execute(select(Embedding.id, Embedding.collection).where(Embedding.item_id == item_id)
                             .order_by(Embedding.id))
            return [(int(e), c) for e, c in rows]

    def items(self, item_ids: Sequence[int]) -> dict[int, ItemRow]:
        if not len(item_ids):
            return {}
        out: dict[int, ItemRow] = {}
        with self.sessions() as s:
            for i in range(0, len(item_ids), 900):
                chunk = [int(x) for x in item_ids[i:i + 900]]
                q = (select(Item.id, Item.file_id, File.path, Item.modality, Item.ordinal, Item.text, Item.ref_path,
                            Item.duration, File.size, File.mtime_ns)
                     .join(File, Item.file_id == File.id).where(Item.id.in_(chunk)))
                out.update({r[0]: ItemRow(*r) for r in s.execute(q)})
        return out

    def item(self, item_id: int) -> ItemRow:
        row = self.items([item_id]).get(item_id)
        if row is None:
            raise NotFound(f"no item {item_id}")
        return row

    def items_for_path(self, path: str) -> list[int]:
        with self.sessions() as s:
            q = select(Item.id).join(File, Item.file_id == File.id).where(File.path == path).order_by(Item.id)
            return list(s.scalars(q))

    def failures(self, limit: int = 100) -> list[tuple[str, str]]:
        with self.sessions() as s:
            q = select(File.path, File.error).where(File.status == "failed").order_by(File.path).limit(limit)
            return [(p, e or "") for p, e in s.execute(q)]

    def counts(self) -> dict[str, dict[str, int]]:
        with self.sessions() as s:
            files = dict(s.execute(select(File.status, func.count()).group_by(File.status)).all())
            items = dict(s.execute(select(Item.modality, func.count()).group_by(Item.modality)).all())
            vecs = dict(s.execute(select(Embedding.collection, func.count()).group_by(Embedding.collection)).all())
        return {"files": files, "items": items, "embeddings": vecs}


def _like_escape(text: str) -> str:
    """Make LIKE's own wildcards literal (with ESCAPE '\\')."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
