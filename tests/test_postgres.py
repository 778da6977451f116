"""The catalog on PostgreSQL: migrations, ORM agreement, and a full index/search round trip.

Needs the server that scripts/setup-test-env.sh starts; set MMSEARCH_TEST_PG_URL to use another.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import make_url

from mmsearch import Engine, Query
from mmsearch.storage.db import SCHEMA_HEAD
from mmsearch.storage.catalog import Catalog
from mmsearch.storage.models import Base, Embedding, File, Item, Root

ADMIN_URL = os.environ.get("MMSEARCH_TEST_PG_URL",
                           "postgresql+psycopg://mmsearch:mmsearch@127.0.0.1:5432/mmsearch_test")


@contextmanager
def fresh_database(options: str = "") -> Iterator[str]:
    """A new database (``CREATE DATABASE name options``) for one test, dropped afterwards."""
    name = f"mmsearch_{uuid.uuid4().hex[:12]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}" {options}'))
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"cannot create a database on the PostgreSQL at {ADMIN_URL} "
                    f"(run scripts/setup-test-env.sh): {e}")
    try:
        yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


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


def test_path_filter_under_a_language_collation(make_settings) -> None:  # type: ignore[no-untyped-def]
    """ICU's English collation sorts 'P' with 'p', so a plain range of files.path would put
    /a/Photos/y.jpg under /a/photos: the filter must still answer in code point terms."""
    paths = ["/a/photos/x.jpg", "/a/photos/sub/v.jpg", "/a/Photos/y.jpg", "/a/photos-old/z.jpg", "/a/photos2/w.jpg"]
    with fresh_database("TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en' LOCALE 'C.UTF-8'") as url:
        catalog = Catalog(make_settings(db_url=url), writable=True)
        try:
            with catalog.sessions.begin() as s:
                s.execute(insert(Root), [{"id": 1, "path": "/a"}])
                s.execute(insert(File), [dict(id=i, root_id=1, path=p, kind="image", size=1, mtime_ns=1, status="ok")
                                         for i, p in enumerate(paths, 1)])
                s.execute(insert(Item), [dict(id=i, file_id=i, modality="image") for i in range(1, len(paths) + 1)])
                s.execute(insert(Embedding), [dict(id=i, item_id=i, collection="clip.image")
                                              for i in range(1, len(paths) + 1)])

            def under(pattern: str) -> list[str]:
                return sorted(paths[i - 1] for i in catalog.ids_under("clip.image", pattern))

            assert under("/a/photos") == ["/a/photos/sub/v.jpg", "/a/photos/x.jpg"]
            assert under("photos/*.jpg") == ["/a/photos/x.jpg"]
            assert under("/a/[P]hotos/*") == ["/a/Photos/y.jpg"]
        finally:
            catalog.close()


def test_recommendations_vectors_and_exports_on_postgres(make_settings, photo_dir: Path, pg_url: str,  # type: ignore[no-untyped-def]
                                                         tmp_path: Path) -> None:
    import numpy as np

    with Engine.open(make_settings(db_url=pg_url)) as engine:
        engine.index([photo_dir])
        photos = [engine.lookup(p)[0] for p in sorted(photo_dir.rglob("*.jpg"))[:6]]
        profiles = [{"like": photos[:2], "dislike": [photos[2]]}, {"like": {photos[3]: 2.0}, "scoring": "best"},
                    {"like": [photos[4]], "exclude_ids": photos[5:]}]
        batch = engine.recommend_batch(profiles)
        assert [[h.id for h in r.results] for r in batch] == \
            [[h.id for h in engine.recommend(**p).results] for p in profiles]
        got = engine.vectors(photos)["clip.image"]
        assert sorted(got.item_ids.tolist()) == sorted(photos)
        counts = engine.export(tmp_path / "npy", format="npy", collections=["clip.image"])
        assert counts == {"clip.image": 24}
        assert np.load(tmp_path / "npy" / "clip.image.npy").shape == (24, 32)
