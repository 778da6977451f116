"""The catalog on PostgreSQL: migrations, ORM agreement, and a full index/search round trip.

Needs the server that scripts/setup-test-env.sh starts; set MMSEARCH_TEST_PG_URL to use another.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from mmsearch import Engine, Query
from mmsearch.storage.db import SCHEMA_HEAD
from mmsearch.storage.models import Base

ADMIN_URL = os.environ.get("MMSEARCH_TEST_PG_URL",
                           "postgresql+psycopg://mmsearch:mmsearch@127.0.0.1:5432/mmsearch_test")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh database for one test, dropped afterwards."""
    name = f"mmsearch_{uuid.uuid4().hex[:12]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"PostgreSQL is not reachable at {ADMIN_URL} (run scripts/setup-test-env.sh): {e}")
    url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_postgres_catalog_round_trip(make_settings, photo_dir: Path, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    with Engine.open(make_settings(db_url=pg_url)) as engine:
        assert engine.catalog.schema_version == SCHEMA_HEAD
        with engine.catalog.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        report = engine.index([photo_dir])
        assert (report.added, report.failed) == (27, 0)
        img = sorted(photo_dir.rglob("*.jpg"))[5]
        hit = engine.search(Query(image=img.read_bytes(), k=1)).results[0]
        assert hit.path == str(img)
        assert engine.search(Query(text="a", to="text", path="**/captions.csv", k=100)).results.__len__() == 24
        img.unlink()
        again = engine.index([photo_dir])
        assert (again.removed, again.unchanged) == (1, 26)
        assert engine.stats()["database"].startswith("postgresql")
    # the SQL lives in PostgreSQL, the vectors in the catalog folder: reopening finds both
    with Engine.open(make_settings(db_url=pg_url, model=None)) as engine:
        assert engine.stats()["items"]["image"] == 23
