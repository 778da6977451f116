"""Faults around the catalog database: a migration that fails or runs out of disk, processes creating
one catalog at once, a damaged file, a read-only one, and transactions under the BEGIN recipe.

Full disks are real where the tests run as root (a small tmpfs); SQLite's max_page_count stands in
everywhere else. Read-only media is a read-only bind mount, for the same reason: root ignores
permission bits, so chmod would test nothing.
"""

from __future__ import annotations

import gc
import hashlib
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, event, func, insert, select, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from mmsearch.cli import app
from mmsearch.errors import CatalogDamaged, MMSearchError
from mmsearch.storage.db import (SCHEMA_HEAD, alembic_config, create_db_engine, friendly_db_error, migrate,
                                 schema_is_current, schema_version, write_engine)
from mmsearch.storage.models import File, Root
from tests.test_postgres import pg_url  # noqa: F401 - the fixture: a fresh PostgreSQL database

REPO = Path(__file__).resolve().parents[1]
PAGE = 4096  # SQLite's default page size


def _url(db: Path) -> str:
    return f"sqlite:///{db}"


def _tables(db: Path) -> set[str]:
    with closing(sqlite3.connect(db)) as conn:
        return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _integrity(engine: Engine) -> str:
    with engine.connect() as conn:
        return conn.exec_driver_sql("PRAGMA integrity_check").scalar()


def _add_files(engine: Engine, n: int, *, start: int = 0, pad: int = 0) -> list[int]:
    """n file rows in one transaction, with a bulk INSERT ... RETURNING as the catalog writes them."""
    with Session(write_engine(engine)) as s, s.begin():
        root = s.scalar(select(Root.id)) or s.scalar(insert(Root).returning(Root.id), [{"path": "/media"}])
        return list(s.scalars(
            insert(File).returning(File.id, sort_by_parameter_order=True),
            [dict(root_id=root, path=f"/media/{i:08d}{'x' * pad}", kind="image", size=1, mtime_ns=1, status="ok")
             for i in range(start, start + n)]))


def _file_count(engine: Engine) -> int:
    with Session(engine) as s:
        return s.scalar(select(func.count()).select_from(File))


def _catalog_with_files(db: Path, n: int = 300) -> None:
    engine = create_db_engine(_url(db))
    migrate(engine)
    _add_files(engine, n, pad=200)
    engine.dispose()  # the last connection checkpoints the WAL into catalog.db and removes it


def _garble(db: Path, page: int) -> None:
    """Overwrite one page (1-based, as SQLite counts them) with fixed random bytes."""
    with open(db, "r+b") as fh:
        fh.seek((page - 1) * PAGE)
        fh.write(random.Random(page).randbytes(PAGE))


def _root_page(db: Path, table: str) -> int:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]


# -- migrations are atomic ------------------------------------------------------------------------

def test_a_failed_first_migration_leaves_no_tables(tmp_path: Path) -> None:
    db = tmp_path / "catalog.db"
    engine = create_db_engine(_url(db))

    @event.listens_for(engine, "before_cursor_execute")
    def fail_midway(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().startswith("CREATE TABLE items"):  # after meta, roots, spaces, files
            raise RuntimeError("injected failure")

    with pytest.raises(RuntimeError, match="injected failure"):
        migrate(engine)
    engine.dispose()
    assert _tables(db) == set()  # before the fix: meta, roots, spaces and files, at no revision

    engine = create_db_engine(_url(db))
    migrate(engine)
    assert schema_version(engine) == SCHEMA_HEAD and _integrity(engine) == "ok"


def test_a_database_full_during_the_first_migration_rolls_back(tmp_path: Path) -> None:
    """Without a small disk: max_page_count caps the file, so SQLite reports SQLITE_FULL part way."""
    db = tmp_path / "catalog.db"
    engine = create_db_engine(_url(db))
    event.listen(engine, "connect", lambda dbapi_conn, _record: dbapi_conn.execute("PRAGMA max_page_count = 8"))
    with pytest.raises(MMSearchError, match="is full"):
        migrate(engine)
    engine.dispose()
    assert _tables(db) == set()

    engine = create_db_engine(_url(db))  # "space freed": no cap
    migrate(engine)
    assert schema_version(engine) == SCHEMA_HEAD and _integrity(engine) == "ok"


def test_schema_is_current(tmp_path: Path) -> None:
    engine = create_db_engine(_url(tmp_path / "catalog.db"))
    assert not schema_is_current(engine)
    migrate(engine)
    assert schema_is_current(engine)
    cfg = alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert not schema_is_current(engine)


# -- processes creating one catalog at once -------------------------------------------------------

CREATE = """
import sys, time
from pathlib import Path
from mmsearch.storage.db import create_db_engine, migrate, schema_version
url, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
engine = create_db_engine(url)
ready.touch()
while not go.exists():
    time.sleep(0.001)
migrate(engine)
print(schema_version(engine))
"""


def _create_at_once(url: str, folder: Path, processes: int = 3) -> None:
    """Start processes that migrate ``url``, release them together, and check they all reach head."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    go = folder / "go"
    procs = [subprocess.Popen([sys.executable, "-c", CREATE, url, str(folder / f"ready{i}"), str(go)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(processes)]
    deadline = time.time() + 120
    while len(list(folder.glob("ready*"))) < processes and time.time() < deadline:
        time.sleep(0.01)
    go.touch()
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert out.strip() == SCHEMA_HEAD


@pytest.mark.slow
def test_processes_creating_one_sqlite_catalog_at_once_all_succeed(tmp_path: Path) -> None:
    for attempt in range(5):  # before the fix, about a third of the processes failed: table meta already exists
        folder = tmp_path / f"try{attempt}"
        folder.mkdir()
        db = folder / "catalog.db"
        _create_at_once(_url(db), folder)
        engine = create_db_engine(_url(db))
        assert schema_version(engine) == SCHEMA_HEAD and _integrity(engine) == "ok"
        engine.dispose()


@pytest.mark.slow
def test_processes_migrating_one_postgres_database_at_once_all_succeed(tmp_path: Path, pg_url: str) -> None:
    _create_at_once(pg_url, tmp_path)
    engine = create_db_engine(pg_url)
    assert schema_is_current(engine)
    engine.dispose()


# -- a full disk, for real ------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmpfs) -> Path:  # type: ignore[no-untyped-def]
    return tmpfs("2m")


def _fill(disk: Path, leave: int) -> Path:
    """Fill the disk up to ``leave`` free bytes."""
    stat = os.statvfs(disk)
    filler = disk / "filler"
    with open(filler, "wb") as fh:
        fh.write(bytes(stat.f_bavail * stat.f_frsize - leave))
    return filler


# The free space decides where the migration fails: creating the -wal, sizing the -shm (an I/O
# error), or writing the schema's pages to the -wal.
@pytest.mark.parametrize("free_kib", [0, 16, 48, 96])
def test_a_full_disk_during_the_first_migration_rolls_back(small_disk: Path, free_kib: int) -> None:
    db = small_disk / "catalog.db"
    filler = _fill(small_disk, free_kib * 1024)
    engine = create_db_engine(_url(db))
    with pytest.raises(MMSearchError, match="full|free space") as failure:
        migrate(engine)
    assert failure.value.__cause__ is not None  # the SQLite error stays on the chain for a bug report
    del failure
    engine.dispose()

    filler.unlink()
    assert _tables(db) == set()
    engine = create_db_engine(_url(db))
    migrate(engine)
    assert schema_version(engine) == SCHEMA_HEAD and _integrity(engine) == "ok"
    engine.dispose()


def test_a_full_disk_mid_ingest_loses_only_the_open_transaction(small_disk: Path) -> None:
    db = small_disk / "catalog.db"
    engine = create_db_engine(_url(db))
    migrate(engine)
    filler = _fill(small_disk, 512 * 1024)
    batch, committed = 10, 0
    with pytest.raises(OperationalError) as failure:
        while True:
            _add_files(engine, batch, start=committed, pad=200)
            committed += batch
    friendly = friendly_db_error(failure.value, engine.url)
    assert friendly is not None and "is full" in str(friendly) and str(db) in str(friendly)
    del failure
    engine.dispose()
    assert committed > 0  # it failed mid-ingest, not at the first write

    filler.unlink()
    engine = create_db_engine(_url(db))
    migrate(engine)
    assert _integrity(engine) == "ok"
    assert _file_count(engine) == committed  # every committed batch, none of the failed one
    _add_files(engine, batch, start=committed)  # and the catalog takes writes again
    assert _file_count(engine) == committed + batch
    engine.dispose()


# -- a damaged database ---------------------------------------------------------------------------

def test_a_damaged_header_is_reported_on_open(tmp_path: Path) -> None:
    db = tmp_path / "catalog.db"
    _catalog_with_files(db)
    _garble(db, 1)
    engine = create_db_engine(_url(db))
    for open_it in (migrate, schema_version, schema_is_current):
        with pytest.raises(CatalogDamaged, match="is damaged") as failure:
            open_it(engine)
        message = str(failure.value)
        assert str(db) in message and "backup" in message and "mmsearch index" in message


def test_a_damaged_table_is_reported_when_read(tmp_path: Path) -> None:
    db = tmp_path / "catalog.db"
    _catalog_with_files(db)
    _garble(db, _root_page(db, "files"))
    engine = create_db_engine(_url(db))
    migrate(engine)  # the schema and alembic_version are intact
    with pytest.raises(DBAPIError) as failure, Session(engine) as s:
        s.scalars(select(File.error)).all()  # a column no index covers: the table itself is read
    assert isinstance(friendly_db_error(failure.value, engine.url), CatalogDamaged)


def test_friendly_db_error_leaves_other_errors_alone(tmp_path: Path) -> None:
    engine = create_db_engine(_url(tmp_path / "catalog.db"))
    with pytest.raises(DBAPIError) as failure, engine.connect() as conn:
        conn.execute(text("SELECT * FROM no_such_table"))
    assert friendly_db_error(failure.value) is None


def test_friendly_db_error_knows_postgres() -> None:
    from psycopg import errors

    assert isinstance(friendly_db_error(errors.DataCorrupted("bad page")), CatalogDamaged)
    assert "is full" in str(friendly_db_error(errors.DiskFull("no space left on device")))
    assert friendly_db_error(errors.UniqueViolation("duplicate key")) is None


# A damaged header fails the open; a damaged table the first query that reads it (stats reads
# files; search would need a model before it reads any).
@pytest.mark.parametrize(("args", "garbled"), [(["stats"], "header"), (["stats"], "counters"),
                                               (["search", "a dog"], "header")])
def test_cli_on_a_damaged_catalog_exits_2_with_a_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           args: list[str], garbled: str) -> None:
    monkeypatch.setenv("MMSEARCH_AUDIO", "false")
    catalog = tmp_path / "cat"
    catalog.mkdir()
    db = catalog / "catalog.db"
    _catalog_with_files(db)
    _garble(db, 1 if garbled == "header" else _root_page(db, garbled))
    result = CliRunner().invoke(app, [*args, "--catalog", str(catalog)])
    assert isinstance(result.exception, SystemExit), result.exception  # not an uncaught error
    assert result.exit_code == 2 and "is damaged" in result.output and "Traceback" not in result.output


# -- read-only catalogs ---------------------------------------------------------------------------

def _digest(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def test_a_read_only_engine_reads_and_never_writes_the_file(tmp_path: Path) -> None:
    db = tmp_path / "catalog.db"
    _catalog_with_files(db, 10)
    before = _digest(db)
    engine = create_db_engine(_url(db), read_only=True)
    assert schema_is_current(engine) and _file_count(engine) == 10
    with pytest.raises(OperationalError, match="readonly"):
        _add_files(engine, 1, start=10)
    engine.dispose()
    assert _digest(db) == before
    # In a folder that can be written SQLite still makes its -wal/-shm, which a reader shares with a
    # live writer; catalog.db itself is untouched.


def test_a_read_only_engine_creates_no_database(tmp_path: Path) -> None:
    engine = create_db_engine(_url(tmp_path / "catalog.db"), read_only=True)
    with pytest.raises(OperationalError, match="unable to open"):
        schema_version(engine)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def read_only_view(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(source, view): ``view`` is a read-only bind mount of ``source``; needs root."""
    source, view = tmp_path / "source", tmp_path / "view"
    source.mkdir()
    view.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("a read-only bind mount needs root")
    done = subprocess.run(["mount", "--bind", str(source), str(view)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot bind-mount here: {done.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)
        yield source, view
    finally:
        gc.collect()
        subprocess.run(["umount", "--lazy", str(view)], check=True)


def test_a_catalog_on_read_only_media_can_be_read(read_only_view: tuple[Path, Path]) -> None:
    source, view = read_only_view
    _catalog_with_files(source / "catalog.db", 10)
    engine = create_db_engine(_url(view / "catalog.db"), read_only=True)  # immutable=1: no -shm possible
    assert schema_is_current(engine) and _file_count(engine) == 10
    engine.dispose()
    assert sorted(p.name for p in view.iterdir()) == ["catalog.db"]
    writer = create_db_engine(_url(view / "catalog.db"))
    with pytest.raises(OperationalError):
        _file_count(writer)  # a normal engine cannot even open it there
    writer.dispose()


def test_a_read_only_copy_with_a_left_over_wal_shows_its_transactions(read_only_view: tuple[Path, Path]) -> None:
    """A catalog copied while a writer had it open: committed rows still in the -wal must be seen."""
    source, view = read_only_view
    live = source / "live"
    live.mkdir()
    _catalog_with_files(live / "catalog.db", 10)
    with closing(sqlite3.connect(live / "catalog.db", isolation_level=None)) as writer:
        writer.execute("PRAGMA wal_autocheckpoint = 0")
        writer.execute("UPDATE files SET size = 2")  # in the -wal only
        for suffix in ("", "-wal", "-shm"):
            shutil.copyfile(live / f"catalog.db{suffix}", source / f"catalog.db{suffix}")
    engine = create_db_engine(_url(view / "catalog.db"), read_only=True)
    with Session(engine) as s:
        assert set(s.scalars(select(File.size))) == {2}
    engine.dispose()


def test_a_read_only_postgres_engine_refuses_writes(pg_url: str) -> None:
    migrate(create_db_engine(pg_url))
    engine = create_db_engine(pg_url, read_only=True)
    assert schema_is_current(engine)
    with pytest.raises(DBAPIError, match="read-only transaction"):
        _add_files(engine, 1)
    engine.dispose()


# -- transactions under the BEGIN recipe ----------------------------------------------------------

def test_reads_hold_no_write_lock_and_write_engine_takes_it_at_begin(tmp_path: Path) -> None:
    db = tmp_path / "catalog.db"
    engine = create_db_engine(_url(db))
    migrate(engine)
    _add_files(engine, 3)

    def other_writer_commits() -> bool:
        with closing(sqlite3.connect(db, timeout=0.2, isolation_level=None)) as other:
            try:
                other.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:
                return False
            other.execute("UPDATE files SET size = size + 1")
            other.execute("COMMIT")
            return True

    with Session(engine) as reader:
        assert reader.scalar(select(func.count()).select_from(File)) == 3  # a read transaction is open
        assert other_writer_commits()
        assert reader.scalar(select(func.count()).select_from(File)) == 3
    with Session(write_engine(engine)) as writer, writer.begin():
        writer.scalar(select(func.count()).select_from(File))
        assert not other_writer_commits()
    with Session(engine) as s, s.begin():  # savepoints work now that the driver leaves BEGIN alone
        with s.begin_nested() as nested:
            s.execute(insert(Root), [{"path": "/gone"}])
            nested.rollback()
        assert s.scalar(select(func.count()).select_from(Root)) == 1
    engine.dispose()


def test_migrate_at_head_takes_no_write_lock(tmp_path: Path) -> None:
    db = tmp_path / "catalog.db"
    migrate(create_db_engine(_url(db)))
    with closing(sqlite3.connect(db, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")  # another process is writing
        engine = create_db_engine(_url(db))
        started = time.monotonic()
        migrate(engine)
        assert time.monotonic() - started < 5
        other.execute("ROLLBACK")
    engine.dispose()
