"""file metadata, the user's tags, and a generation for cached filter selections

Revision ID: 0003
Revises: 0002

* ``files``: facts read at ingest (media type, size in pixels, EXIF date taken, camera, lens, GPS
  position, orientation), ``ext``, and ``date_s`` (taken, else modified: what the date filter
  reads), each indexed where a filter reads it;
* ``ix_items_duration`` for the duration filter;
* ``tags``: the user's tags and key-values, keyed by item (ids survive re-embedding);
* ``counters['filters.generation']``, moved by triggers on tags and on a file's path, so a cached
  filter selection sees changes that add or remove no vector.

Existing rows keep their EXIF facts empty (until their file changes); ``ext``, ``mime`` and
``date_s`` are filled from what the catalog already knows.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from mmsearch.media.metadata import extension, mime_of

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

FILE_COLUMNS = [
    sa.Column("ext", sa.String(16), nullable=True),
    sa.Column("mime", sa.String(64), nullable=True),
    sa.Column("width", sa.Integer(), nullable=True),
    sa.Column("height", sa.Integer(), nullable=True),
    sa.Column("taken_s", sa.BigInteger(), nullable=True),
    sa.Column("date_s", sa.BigInteger(), nullable=True),
    sa.Column("camera_make", sa.String(64), nullable=True),
    sa.Column("camera_model", sa.String(64), nullable=True),
    sa.Column("camera_key", sa.String(130), nullable=True),
    sa.Column("model_key", sa.String(64), nullable=True),
    sa.Column("lens", sa.String(64), nullable=True),
    sa.Column("lat", sa.Float(), nullable=True),
    sa.Column("lon", sa.Float(), nullable=True),
    sa.Column("orientation", sa.SmallInteger(), nullable=True),
]
FILE_INDEXES = {"ix_files_ext": ["ext"], "ix_files_date_s": ["date_s"], "ix_files_camera_key": ["camera_key"],
                "ix_files_model_key": ["model_key"], "ix_files_lat_lon": ["lat", "lon"]}
GENERATION = "filters.generation"

SQLITE_TRIGGERS = [
    f"""CREATE TRIGGER mms_tags_ins AFTER INSERT ON tags BEGIN
        UPDATE counters SET value = value + 1 WHERE key = '{GENERATION}';
    END""",
    f"""CREATE TRIGGER mms_tags_upd AFTER UPDATE ON tags BEGIN
        UPDATE counters SET value = value + 1 WHERE key = '{GENERATION}';
    END""",
    f"""CREATE TRIGGER mms_tags_del AFTER DELETE ON tags BEGIN
        UPDATE counters SET value = value + 1 WHERE key = '{GENERATION}';
    END""",
    f"""CREATE TRIGGER mms_files_path AFTER UPDATE OF path ON files WHEN OLD.path <> NEW.path BEGIN
        UPDATE counters SET value = value + 1 WHERE key = '{GENERATION}';
    END""",
]

PG_FUNCTIONS = f"""
CREATE FUNCTION mms_filters_changed() RETURNS trigger AS $$
BEGIN
    UPDATE counters SET value = value + 1 WHERE key = '{GENERATION}';
    RETURN NULL;
END $$ LANGUAGE plpgsql;

CREATE TRIGGER mms_tags AFTER INSERT OR UPDATE OR DELETE ON tags
    FOR EACH STATEMENT EXECUTE FUNCTION mms_filters_changed();
CREATE TRIGGER mms_files_path AFTER UPDATE OF path ON files
    FOR EACH STATEMENT EXECUTE FUNCTION mms_filters_changed();
"""


def upgrade() -> None:
    # plain ALTERs, never a batch "move and copy": dropping the old table would cascade its rows away
    for column in FILE_COLUMNS:
        op.add_column("files", column)
    for name, columns in FILE_INDEXES.items():
        op.create_index(name, "files", columns)
    op.create_index("ix_items_duration", "items", ["duration"])
    op.create_table(
        "tags",
        sa.Column("item_id", sa.Integer(), sa.ForeignKey("items.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("tag", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(256), nullable=True),
    )
    op.create_index("ix_tags_tag_value", "tags", ["tag", "value"])
    op.execute(f"INSERT INTO counters(key, value) VALUES ('{GENERATION}', 0)")
    if op.get_bind().dialect.name == "sqlite":
        for stmt in SQLITE_TRIGGERS:
            op.execute(stmt)
    else:
        op.execute(PG_FUNCTIONS)
    _backfill()


def _backfill(batch: int = 10_000) -> None:
    """What the catalog already knows: the extension and media type from the path, and the date
    filter's date from the modification time. Keyset pages, so memory stays bounded."""
    conn = op.get_bind()
    conn.execute(sa.text("UPDATE files SET date_s = mtime_ns / 1000000000"))
    update = sa.text("UPDATE files SET ext = :ext, mime = :mime WHERE id = :id")
    last = 0
    while True:
        rows = conn.execute(sa.text("SELECT id, path FROM files WHERE id > :last ORDER BY id LIMIT :n"),
                            {"last": last, "n": batch}).all()
        if not rows:
            return
        conn.execute(update, [{"id": i, "ext": extension(p), "mime": mime_of(p)} for i, p in rows])
        last = rows[-1][0]


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in ("tags_ins", "tags_upd", "tags_del", "files_path"):
            op.execute(f"DROP TRIGGER IF EXISTS mms_{name}")
    else:
        op.execute("DROP TRIGGER IF EXISTS mms_tags ON tags")
        op.execute("DROP TRIGGER IF EXISTS mms_files_path ON files")
        op.execute("DROP FUNCTION IF EXISTS mms_filters_changed()")
    op.execute(f"DELETE FROM counters WHERE key = '{GENERATION}'")
    op.drop_index("ix_tags_tag_value", table_name="tags")
    op.drop_table("tags")
    op.drop_index("ix_items_duration", table_name="items")
    for name in FILE_INDEXES:
        op.drop_index(name, table_name="files")
    for column in reversed(FILE_COLUMNS):
        op.execute(f"ALTER TABLE files DROP COLUMN {column.name}")  # SQLite >= 3.35 and PostgreSQL
