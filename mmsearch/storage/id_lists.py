""""This column is one of these ids", for the thousands of ids a query batch reads at once (its
items, the owners of its candidates, its pages).

An ``IN`` list binds one parameter per id, and SQLAlchemy renders each of them on every
execution: about half a microsecond an id, and lists of at most 900 (SQLite's old limit of 999
variables). On SQLite 3.38 and later (JSON built in) the ids go as one JSON array read by
``json_each``: one parameter, one query, whatever the count (18,000 owners: 25 -> 16 ms).
Other databases keep the ``IN`` lists.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import ColumnElement, String, bindparam, func, literal_column, select

CHUNK = 900  # ids per IN list: under SQLite's old 999-variable limit
_SQLITE_JSON = sqlite3.sqlite_version_info >= (3, 38, 0)  # json_each built in, not an option


def among(column: ColumnElement[Any], ids: Sequence[int], dialect: str) -> Iterator[ColumnElement[bool]]:
    """Conditions that together select the rows whose ``column`` is one of ``ids``: one query to
    run per condition (one on SQLite, one per 900 ids elsewhere). None for no ids."""
    values = [int(x) for x in ids]
    if not values:
        return
    if dialect == "sqlite" and _SQLITE_JSON:
        array = bindparam(None, json.dumps(values), type_=String)
        yield column.in_(select(literal_column("value")).select_from(func.json_each(array)).scalar_subquery())
        return
    for i in range(0, len(values), CHUNK):
        yield column.in_(values[i:i + CHUNK])
