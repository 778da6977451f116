from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from mmsearch.settings import Settings
from mmsearch.storage.catalog import Catalog
from mmsearch.storage.db import SCHEMA_HEAD, alembic_config, create_db_engine, migrate
from mmsearch.storage.models import Base


def test_orm_models_and_migrations_agree(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'm.db'}")
    migrate(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_head_constant_matches_scripts(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'm.db'}")
    assert ScriptDirectory.from_config(alembic_config(engine)).get_current_head() == SCHEMA_HEAD


def test_catalog_open_applies_migrations_and_is_idempotent(tmp_path: Path) -> None:
    settings = Settings(catalog=tmp_path / "cat")
    cat = Catalog(settings, writable=True)
    assert cat.schema_version == SCHEMA_HEAD
    assert {"files", "items", "embeddings", "spaces", "roots", "meta"} <= set(inspect(cat.engine).get_table_names())
    cat.close()
    again = Catalog(settings, writable=True)  # a second open is a no-op upgrade
    assert again.schema_version == SCHEMA_HEAD
    with again.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    again.close()


def test_downgrade_to_base_and_back(tmp_path: Path) -> None:
    from alembic import command

    engine = create_db_engine(f"sqlite:///{tmp_path / 'm.db'}")
    migrate(engine)
    cfg = alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    migrate(engine)
    assert "embeddings" in inspect(engine).get_table_names()
