"""SQL schema of a catalog. Changed only through Alembic migrations (alembic/versions)."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import BigInteger, DateTime, Float, ForeignKey, Index, Integer, SmallInteger, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Meta(Base):
    """Key/value facts about the catalog, e.g. the write generation that indexes sync against."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Space(Base):
    """An embedding space and the model that defines it; vectors of two models never mix."""

    __tablename__ = "spaces"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    spec: Mapped[str] = mapped_column(Text)
    dim: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Root(Base):
    """A folder the user indexed; the API serves media only from under these."""

    __tablename__ = "roots"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(Text, unique=True)
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class File(Base):
    __tablename__ = "files"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    root_id: Mapped[int] = mapped_column(ForeignKey("roots.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(Text, unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # image | text | audio | video | captions | other (skipped)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    # ok | failed | retry (failed for a passing cause) | skipped (neither media nor text)
    status: Mapped[str] = mapped_column(String(16))
    # why it failed; for a file indexed all the same, what its decoder warned about (media/notes.py)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    indexed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # blake2b of the content: a file that moved is recognised and keeps its items and vectors
    content_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # facts read at ingest (media/metadata.py), each indexed where a filter reads it (migration 0003)
    ext: Mapped[str | None] = mapped_column(String(16), nullable=True)  # lower case, no dot
    mime: Mapped[str | None] = mapped_column(String(64), nullable=True)
    width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    taken_s: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # EXIF date taken, epoch seconds
    date_s: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # taken, else modified: the date filter
    camera_make: Mapped[str | None] = mapped_column(String(64), nullable=True)
    camera_model: Mapped[str | None] = mapped_column(String(64), nullable=True)
    camera_key: Mapped[str | None] = mapped_column(String(130), nullable=True)  # "make model", lower case
    model_key: Mapped[str | None] = mapped_column(String(64), nullable=True)  # the model alone, lower case
    lens: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lat: Mapped[float | None] = mapped_column(Float, nullable=True)
    lon: Mapped[float | None] = mapped_column(Float, nullable=True)
    orientation: Mapped[int | None] = mapped_column(SmallInteger, nullable=True)

    __table_args__ = (Index("ix_files_size", "size"), Index("ix_files_status", "status"),
                      Index("ix_files_ext", "ext"), Index("ix_files_date_s", "date_s"),
                      Index("ix_files_camera_key", "camera_key"), Index("ix_files_model_key", "model_key"),
                      Index("ix_files_lat_lon", "lat", "lon"))


class Item(Base):
    """A searchable thing: an image, a text (file or caption row) or a sound. Ids are given by
    the catalog from a high-water mark, never reused, and survive a re-embed of their file."""

    __tablename__ = "items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"), index=True)
    modality: Mapped[str] = mapped_column(String(16), index=True)
    ordinal: Mapped[int] = mapped_column(Integer, default=0)  # row of a captions file
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    ref_path: Mapped[str | None] = mapped_column(Text, nullable=True)  # the media a caption describes
    duration: Mapped[float | None] = mapped_column(Float, nullable=True)  # seconds, audio and video

    __table_args__ = (Index("ix_items_duration", "duration"),)


class Tag(Base):
    """The user's own labels on an item: a plain tag (``value`` null) or a key with a value.
    Keyed by the item, whose id survives re-embedding; indexed by tag for the tag filter."""

    __tablename__ = "tags"
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str | None] = mapped_column(String(256), nullable=True)

    __table_args__ = (Index("ix_tags_tag_value", "tag", "value"),)


class Embedding(Base):
    """One vector; its id is the FAISS id. Audio items have one per window, video items one per
    sampled frame (clip.video) and one per window of their sound track (clap.video)."""

    __tablename__ = "embeddings"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=False)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    collection: Mapped[str] = mapped_column(String(32))  # "<space>.<modality>", e.g. clip.image, clap.video
    start_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    end_s: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (Index("ix_embeddings_collection_id", "collection", "id"),)


class Change(Base):
    """The log of vectors added (+1) and removed (-1), written by triggers in the same transaction
    as the rows: index upkeep and readers apply what came after the seq they hold, so their cost
    follows the change, not the catalog."""

    __tablename__ = "changes"
    __table_args__ = (Index("ix_changes_collection_seq", "collection", "seq"), {"sqlite_autoincrement": True})
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    collection: Mapped[str] = mapped_column(String(32))
    embedding_id: Mapped[int] = mapped_column(BigInteger)
    op: Mapped[int] = mapped_column(SmallInteger)


class Counter(Base):
    """Row counts kept by triggers (files.<status>, items.<modality>, embeddings.<collection>):
    ``stats`` reads them instead of counting a million rows. ``filters.generation`` moves with every
    change a filter can see that adds or removes no vector (tags, a moved file), so a cached
    selection knows it is stale."""

    __tablename__ = "counters"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)
