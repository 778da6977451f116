"""SQLAlchemy engine for a catalog, and the Alembic migrations applied when one is opened."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from sqlalchemy import Engine, create_engine, event

SCHEMA_HEAD = "0002"  # the newest migration; bump with each new revision


def create_db_engine(url: str, *, read_only: bool = False) -> Engine:
    if url.startswith("sqlite"):
        if read_only and url.startswith("sqlite:///"):
            url = f"sqlite:///file:{url[len('sqlite:///'):]}?mode=ro&uri=true"
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            if not read_only:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA case_sensitive_like=ON")  # paths differ by case, as in PostgreSQL
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


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
    """Bring the schema to head; a no-op when it is there already."""
    from alembic import command

    cfg = alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def schema_version(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def schema_is_current(engine: Engine) -> bool:
    return schema_version(engine) == SCHEMA_HEAD


def friendly_db_error(exc: BaseException) -> Exception | None:
    """Placeholder until the database-faults work lands."""
    return None
