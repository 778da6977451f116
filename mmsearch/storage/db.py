"""SQLAlchemy engine for a catalog, and the Alembic migrations applied when one is opened.

On SQLite the engine takes over transaction control from pysqlite (SQLAlchemy's documented recipe):
pysqlite emits BEGIN only before INSERT/UPDATE/DELETE, so DDL ran outside any transaction, and Alembic
(whose SQLite dialect declares no transactional DDL) could not make a migration atomic. A migration
that failed half way (an error, a full disk) then left tables behind, and every later open failed
with ``table meta already exists``. Here every transaction starts with an explicit BEGIN, so a
migration commits whole or not at all.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from sqlalchemy import URL, Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import DBAPIError

from mmsearch.errors import CatalogDamaged, MMSearchError

SCHEMA_HEAD = "0003"  # the newest migration; bump with each new revision

_IMMEDIATE = "mmsearch_begin_immediate"  # execution option read by _sqlite_begin
_PG_MIGRATION_LOCK = 0x6D6D736561726368  # "mmsearch": the advisory lock migrations of one database queue on

# SQLite result codes by name (Python >= 3.11 names them; 3.10 has only the message to go by).
_SQLITE_DAMAGED = ("SQLITE_CORRUPT", "SQLITE_NOTADB")
_SQLITE_FULL = "SQLITE_FULL"
_SQLITE_IO = "SQLITE_IOERR"  # e.g. SQLITE_IOERR_SHMSIZE: no room for the WAL index on a full disk
_SQLITE_MESSAGES = {"malformed": "SQLITE_CORRUPT", "not a database": "SQLITE_NOTADB", "disk is full": _SQLITE_FULL,
                    "disk I/O error": _SQLITE_IO}
# PostgreSQL SQLSTATEs: data_corrupted, index_corrupted; disk_full.
_PG_DAMAGED = ("XX001", "XX002")
_PG_FULL = "53100"


def create_db_engine(url: str, *, read_only: bool = False) -> Engine:
    """An engine for a catalog database. ``read_only`` opens it for searching only: SQLite never
    creates, migrates or writes catalog.db, and PostgreSQL transactions are read-only."""
    sa_url = make_url(url)
    if sa_url.get_backend_name() != "sqlite":
        args = {"options": "-c default_transaction_read_only=on"} if read_only else {}
        return create_engine(sa_url, pool_pre_ping=True, connect_args=args)
    if read_only:
        sa_url = _read_only_sqlite_url(sa_url)
    engine = create_engine(sa_url, connect_args={"timeout": 30})
    event.listen(engine, "connect", partial(_sqlite_connect, read_only=read_only))
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def _read_only_sqlite_url(url: URL) -> URL:
    """``mode=ro`` opens the file without ever creating or writing it. A WAL reader also needs the
    -shm file readers and writers share; where the folder cannot be written (read-only media) SQLite
    cannot make it and refuses to open, so a catalog closed cleanly (no -wal left) is opened
    ``immutable=1`` instead: nothing can change it there. A -wal left behind holds committed
    transactions that immutable would skip, so it is read through its -shm with plain ``mode=ro``."""
    if not url.database or url.database == ":memory:":
        raise MMSearchError("a read-only catalog needs a database file, not an in-memory one")
    path = Path(url.database).expanduser().resolve()
    query = {"mode": "ro", "uri": "true"}
    wal = path.with_name(path.name + "-wal")
    if not os.access(path.parent, os.W_OK) and not (wal.exists() and wal.stat().st_size):
        query["immutable"] = "1"
    return url.set(database="file:" + quote(str(path))).update_query_dict(query)


def _sqlite_connect(dbapi_conn: Any, _record: Any, *, read_only: bool) -> None:
    dbapi_conn.isolation_level = None  # pysqlite emits no BEGIN of its own; _sqlite_begin does
    cur = dbapi_conn.cursor()
    if not read_only:  # a reader takes the file as it is: switching to WAL writes its header
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA case_sensitive_like=ON")  # paths differ by case, as in PostgreSQL
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    """A plain BEGIN takes no lock until the transaction reads, and the write lock only at its first
    write, so reads never block writers; BEGIN IMMEDIATE (see write_engine) takes the write lock at once."""
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_IMMEDIATE) else "BEGIN")


def write_engine(engine: Engine) -> Engine:
    """The same engine (pool, events) whose SQLite transactions take the write lock when they begin.
    Use it for transactions that read, then write: a plain BEGIN whose snapshot another process
    changed before its first write fails at once with ``database is locked`` instead of waiting."""
    return engine.execution_options(**{_IMMEDIATE: True})


ALEMBIC_VERSION_TABLE = "alembic_version"  # Alembic's default, which alembic/env.py keeps


def alembic_dir() -> Path:
    """The migrations: packaged as mmsearch/_alembic in a wheel, the repo's alembic/ in a checkout."""
    packaged = Path(str(resources.files("mmsearch"))) / "_alembic"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "alembic"


def alembic_config(engine: Engine):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(alembic_dir()))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the schema to head; a no-op when it is there already. For writers only.

    All revisions run in one transaction, so a failure (a full disk, a crash) leaves the schema as
    it was. Processes migrating one database at once queue on its write lock (SQLite's BEGIN
    IMMEDIATE, a PostgreSQL advisory lock), and the later ones find the schema at head."""
    from alembic import command

    if schema_is_current(engine):  # the usual case, without taking the write lock
        return
    cfg = alembic_config(engine)
    with _friendly_errors(engine.url), write_engine(engine).begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def schema_version(engine: Engine) -> str | None:
    """The Alembic revision the database is at; None for an empty database. Read from Alembic's
    version table with one query: importing Alembic would cost every reader ~0.4 s (a cold ``stats``)."""
    from sqlalchemy import inspect

    with _friendly_errors(engine.url), engine.connect() as conn:
        if not inspect(conn).has_table(ALEMBIC_VERSION_TABLE):
            return None
        versions = list(conn.execute(text(f"SELECT version_num FROM {ALEMBIC_VERSION_TABLE}")).scalars())
    if len(versions) > 1:
        raise MMSearchError(f"the catalog database has several schema heads ({', '.join(versions)})")
    return versions[0] if versions else None


def schema_is_current(engine: Engine) -> bool:
    """Whether the schema is at SCHEMA_HEAD. Readers check this instead of migrating, so a catalog
    made by an older mmsearch is refused with a message (``run `mmsearch index` once to upgrade
    it``) rather than upgraded behind the back of whoever owns it."""
    return schema_version(engine) == SCHEMA_HEAD


def friendly_db_error(exc: BaseException, url: URL | str | None = None) -> MMSearchError | None:
    """The error to show for a database failure the user has to act on: a damaged database
    (CatalogDamaged), a full disk or a failing one; ``url`` names the database in the message.
    None for anything else, which stays a bug with its traceback."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    problem = _problem(orig)
    if problem is None:
        return None
    where = f"the catalog database {_describe(url)}" if url is not None else "the catalog database"
    reason = str(orig).splitlines()[0] if str(orig) else type(orig).__name__
    if problem == "damaged":
        return CatalogDamaged(
            f"{where} is damaged ({reason}). Restore it from a backup, or move the catalog away "
            "and run `mmsearch index` on your folders again to rebuild it.")
    if problem == "full":
        return MMSearchError(f"the disk holding {where} is full ({reason}); the unfinished change was "
                             "rolled back. Free some space and try again.")
    return MMSearchError(f"reading or writing {where} failed ({reason}): check that its disk has free "
                         "space and works, then try again.")


def _problem(err: BaseException) -> str | None:
    """'damaged', 'full', 'io' or None, from a DB-API error of SQLite or PostgreSQL."""
    sqlstate = getattr(err, "sqlstate", None) or getattr(err, "pgcode", None)  # psycopg 3, psycopg2
    if sqlstate:
        return "damaged" if sqlstate in _PG_DAMAGED else "full" if sqlstate == _PG_FULL else None
    if type(err).__module__ != "sqlite3":
        return None
    name = getattr(err, "sqlite_errorname", None)
    if name is None:
        name = next((n for msg, n in _SQLITE_MESSAGES.items() if msg in str(err)), "")
    if name.startswith(_SQLITE_DAMAGED):  # extended names too, e.g. SQLITE_CORRUPT_INDEX
        return "damaged"
    if name == _SQLITE_FULL:
        return "full"
    return "io" if name.startswith(_SQLITE_IO) else None


def _describe(url: URL | str) -> str:
    """A SQLite database by its file path; any other by its URL, password hidden."""
    sa_url = make_url(url)
    if sa_url.get_backend_name() == "sqlite" and sa_url.database:
        return unquote(sa_url.database.removeprefix("file:"))
    return sa_url.render_as_string(hide_password=True)


@contextmanager
def _friendly_errors(url: URL) -> Iterator[None]:
    try:
        yield
    except DBAPIError as e:
        friendly = friendly_db_error(e, url)
        if friendly is None:
            raise
        raise friendly from e
