"""``among``: the rows whose column is one of many ids, as one JSON array on SQLite or as IN lists
of 900 elsewhere; both select the same rows, at any count."""

from __future__ import annotations

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, insert, select

from mmsearch.storage import id_lists
from mmsearch.storage.id_lists import among


@pytest.fixture()
def table() -> tuple[object, Table]:
    engine = create_engine("sqlite://")
    t = Table("t", MetaData(), Column("id", Integer, primary_key=True), Column("v", Integer))
    t.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(t), [{"id": i, "v": i * 3} for i in range(0, 5000, 2)])  # even ids only
    return engine, t


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
@pytest.mark.parametrize("asked", [[], [4], [3], [2, 2, 4, 5], list(range(-10, 4100, 3)), [2**62, -1, 0]])
def test_among_selects_the_rows_with_those_ids(table: tuple[object, Table], dialect: str, asked: list[int]) -> None:
    engine, t = table
    conditions = list(among(t.c.id, asked, dialect))
    assert len(conditions) == (0 if not asked else 1 if dialect == "sqlite" else -(-len(asked) // id_lists.CHUNK))
    with engine.connect() as conn:  # type: ignore[attr-defined]
        got = sorted(v for cond in conditions for v in conn.execute(select(t.c.v).where(cond)).scalars())
    assert got == sorted(3 * i for i in set(asked) if 0 <= i < 5000 and i % 2 == 0)


def test_an_old_sqlite_gets_in_lists(table: tuple[object, Table], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(id_lists, "_SQLITE_JSON", False)
    assert len(list(among(table[1].c.id, range(1000), "sqlite"))) == 2
