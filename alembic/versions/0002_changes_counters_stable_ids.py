"""change log, counters, stable item ids, content hashes, catalog id

Revision ID: 0002
Revises: 0001

* ``changes``: every vector added or removed, written by triggers in the transaction that adds or
  removes its row, so index upkeep and readers follow the change instead of diffing the catalog;
* ``counters``: row counts kept by the same triggers, so ``stats`` reads a few rows;
* ``counters['ids.items']``: the highest item id ever given, so ids are never reused (the catalog
  assigns them; SQLite would otherwise hand out a deleted maximum again);
* ``files.content_hash`` recognises a moved file; ``ix_files_size`` finds its candidates;
* ``meta.catalog_id`` binds the SQL database to its catalog folder.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SQLITE_TRIGGERS = [
    """CREATE TRIGGER mms_embeddings_ins AFTER INSERT ON embeddings BEGIN
        INSERT INTO changes(collection, embedding_id, op) VALUES (NEW.collection, NEW.id, 1);
        INSERT INTO counters(key, value) VALUES ('embeddings.' || NEW.collection, 1)
            ON CONFLICT(key) DO UPDATE SET value = value + 1;
    END""",
    """CREATE TRIGGER mms_embeddings_del AFTER DELETE ON embeddings BEGIN
        INSERT INTO changes(collection, embedding_id, op) VALUES (OLD.collection, OLD.id, -1);
        UPDATE counters SET value = value - 1 WHERE key = 'embeddings.' || OLD.collection;
    END""",
    """CREATE TRIGGER mms_items_ins AFTER INSERT ON items BEGIN
        INSERT INTO counters(key, value) VALUES ('items.' || NEW.modality, 1)
            ON CONFLICT(key) DO UPDATE SET value = value + 1;
    END""",
    """CREATE TRIGGER mms_items_del AFTER DELETE ON items BEGIN
        UPDATE counters SET value = value - 1 WHERE key = 'items.' || OLD.modality;
    END""",
    """CREATE TRIGGER mms_files_ins AFTER INSERT ON files BEGIN
        INSERT INTO counters(key, value) VALUES ('files.' || NEW.status, 1)
            ON CONFLICT(key) DO UPDATE SET value = value + 1;
    END""",
    """CREATE TRIGGER mms_files_del AFTER DELETE ON files BEGIN
        UPDATE counters SET value = value - 1 WHERE key = 'files.' || OLD.status;
    END""",
    """CREATE TRIGGER mms_files_upd AFTER UPDATE OF status ON files WHEN OLD.status <> NEW.status BEGIN
        UPDATE counters SET value = value - 1 WHERE key = 'files.' || OLD.status;
        INSERT INTO counters(key, value) VALUES ('files.' || NEW.status, 1)
            ON CONFLICT(key) DO UPDATE SET value = value + 1;
    END""",
]

PG_FUNCTIONS = """
CREATE FUNCTION mms_count(k text, d bigint) RETURNS void AS $$
BEGIN
    INSERT INTO counters(key, value) VALUES (k, d) ON CONFLICT (key) DO UPDATE SET value = counters.value + d;
END $$ LANGUAGE plpgsql;

CREATE FUNCTION mms_embeddings_changed() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO changes(collection, embedding_id, op) VALUES (NEW.collection, NEW.id, 1);
        PERFORM mms_count('embeddings.' || NEW.collection, 1);
        RETURN NEW;
    END IF;
    INSERT INTO changes(collection, embedding_id, op) VALUES (OLD.collection, OLD.id, -1);
    PERFORM mms_count('embeddings.' || OLD.collection, -1);
    RETURN OLD;
END $$ LANGUAGE plpgsql;

CREATE FUNCTION mms_items_changed() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM mms_count('items.' || NEW.modality, 1);
        RETURN NEW;
    END IF;
    PERFORM mms_count('items.' || OLD.modality, -1);
    RETURN OLD;
END $$ LANGUAGE plpgsql;

CREATE FUNCTION mms_files_changed() RETURNS trigger AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM mms_count('files.' || OLD.status, -1);
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
        PERFORM mms_count('files.' || NEW.status, 1);
        RETURN NEW;
    END IF;
    RETURN OLD;
END $$ LANGUAGE plpgsql;

CREATE TRIGGER mms_embeddings AFTER INSERT OR DELETE ON embeddings
    FOR EACH ROW EXECUTE FUNCTION mms_embeddings_changed();
CREATE TRIGGER mms_items AFTER INSERT OR DELETE ON items
    FOR EACH ROW EXECUTE FUNCTION mms_items_changed();
CREATE TRIGGER mms_files_ins_del AFTER INSERT OR DELETE ON files
    FOR EACH ROW EXECUTE FUNCTION mms_files_changed();
CREATE TRIGGER mms_files_status AFTER UPDATE OF status ON files
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION mms_files_changed();
"""

BACKFILL = [
    "INSERT INTO counters(key, value) SELECT 'files.' || status, count(*) FROM files GROUP BY status",
    "INSERT INTO counters(key, value) SELECT 'items.' || modality, count(*) FROM items GROUP BY modality",
    "INSERT INTO counters(key, value) SELECT 'embeddings.' || collection, count(*) FROM embeddings "
    "GROUP BY collection",
    "INSERT INTO counters(key, value) SELECT 'ids.items', coalesce(max(id), 0) FROM items",
]


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.create_table(
        "changes",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
                  autoincrement=True),
        sa.Column("collection", sa.String(32), nullable=False),
        sa.Column("embedding_id", sa.BigInteger(), nullable=False),
        sa.Column("op", sa.SmallInteger(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_changes_collection_seq", "changes", ["collection", "seq"])
    op.create_table(
        "counters",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.BigInteger(), nullable=False),
    )
    # plain ALTERs, never a batch "move and copy": dropping the old table would cascade its rows away
    op.add_column("files", sa.Column("content_hash", sa.String(64), nullable=True))
    op.create_index("ix_files_size", "files", ["size"])
    op.create_index("ix_files_status", "files", ["status"])
    for stmt in BACKFILL:
        op.execute(stmt)
    if dialect == "sqlite":
        for stmt in SQLITE_TRIGGERS:
            op.execute(stmt)
    else:
        op.execute(PG_FUNCTIONS)
    meta = sa.table("meta", sa.column("key", sa.String), sa.column("value", sa.Text))
    op.bulk_insert(meta, [{"key": "catalog_id", "value": uuid.uuid4().hex}])


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for name in ("embeddings_ins", "embeddings_del", "items_ins", "items_del", "files_ins", "files_del",
                     "files_upd"):
            op.execute(f"DROP TRIGGER IF EXISTS mms_{name}")
    else:
        for trigger, table in (("mms_embeddings", "embeddings"), ("mms_items", "items"),
                               ("mms_files_ins_del", "files"), ("mms_files_status", "files")):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON {table}")
        for fn in ("mms_embeddings_changed()", "mms_items_changed()", "mms_files_changed()",
                   "mms_count(text, bigint)"):
            op.execute(f"DROP FUNCTION IF EXISTS {fn}")
    op.execute("DELETE FROM meta WHERE key = 'catalog_id'")
    op.drop_index("ix_files_status", table_name="files")
    op.drop_index("ix_files_size", table_name="files")
    op.execute("ALTER TABLE files DROP COLUMN content_hash")  # SQLite >= 3.35 and PostgreSQL
    op.drop_table("counters")
    op.drop_index("ix_changes_collection_seq", table_name="changes")
    op.drop_table("changes")
