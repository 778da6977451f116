"""Filters on what the catalog knows about a file or an item: its path, date, camera, place, size,
duration, extension and the user's tags. Each condition is one an SQL index answers (a range or
an equality on an indexed column), so finding what a filter selects costs what it matches,
never the size of the catalog.

How a filter meets the vector search (search/subsets.py and search/runner.py use this):

* every condition is first counted on its own index, up to a cap (a bounded index scan);
* the smallest one under the cap drives one query joining files, items and the collection's
  vectors, and the others are checked on its rows only: they are written so that no index can
  serve them (``col + 0``, ``col || ''``), so the plan cannot start from a broader one. That is
  the filter's *selection*: scored exactly when small, an id selector while scanning otherwise;
* when every condition matches more than the cap (a broad filter), nothing is fetched up front:
  the vector search's candidates are checked afterwards (``matching``), a page's worth at a time.

Browsing and the totals of search pages apply the same conditions to items (``page_items``,
``count_items``): the smallest condition drives, the others are checked on its rows.

Globs and the distance to a place are finished in Python, on the rows the SQL ranges found.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import ColumnElement, Select, and_, exists, func, or_, select, text
from sqlalchemy.orm import Session

from mmsearch.storage import path_filter
from mmsearch.storage.id_lists import among
from mmsearch.storage.models import Embedding, File, Item, Root, Tag

EARTH_KM = 6371.0088  # mean radius
KM_PER_DEGREE = math.pi * EARTH_KM / 180
FIRST_PROBE = 20_000  # rows counted per condition before a larger count is tried (unbounded selections)
_FAR = 2**62  # beyond every size, date and duration (and exact as a float and as a BIGINT)


@dataclass(frozen=True)
class Filter:
    """What results must satisfy, beyond the vector search. Hashable: a cached selection's key.
    Every bound is inclusive; dates are seconds since 1970 (UTC)."""

    path: str | None = None  # a folder or a glob (path_filter)
    date_from: int | None = None  # taken, else modified
    date_to: int | None = None
    camera: str | None = None  # lower-case prefix of "make model" or of the model
    near: tuple[float, float, float] | None = None  # (lat, lon, km)
    min_size: int | None = None  # bytes
    min_duration: float | None = None  # seconds
    max_duration: float | None = None
    ext: tuple[str, ...] = ()  # any of these, lower case, no dot
    tags: tuple[str, ...] = ()  # all of these: "tag" (any value) or "key=value"

    def __bool__(self) -> bool:
        return any(v not in (None, ()) for v in self.__dict__.values())


NO_FILTER = Filter()


def parse_tag(tag: str) -> tuple[str, str | None]:
    """``"beach"`` -> ("beach", None); ``"rating=5"`` -> ("rating", "5")."""
    name, eq, value = tag.partition("=")
    return name.strip(), (value.strip() if eq else None)


@dataclass
class _Clause:
    """One condition, in the forms the two ways of applying it need."""

    probe: Select  # the rows of its own table that match, through its index (for counting)
    indexed: ColumnElement[bool]  # drives a scan of its index
    plain: ColumnElement[bool]  # the same test, which no index can serve (checked on other rows)
    columns: tuple[ColumnElement, ...] = ()  # what the Python check reads
    check: Callable[..., bool] | None = None
    start: int = field(default=0)  # where its columns sit in a result row


def select_ids(s: Session, collection: str, f: Filter, cap: int | None) -> np.ndarray | None:
    """Sorted embedding ids of ``collection`` that pass ``f``; None when every condition matches
    more than ``cap`` rows (a broad filter: check candidates with ``matching`` instead)."""
    clauses = _clauses(s, f)
    best = 0
    if cap is not None or len(clauses) > 1:  # which condition drives: the smallest under the cap
        found = _driver(s, clauses, cap)
        if found is None:
            return None
        best, count = found
        if count == 0:
            return np.zeros(0, dtype=np.int64)
    driver, others = clauses[best], clauses[:best] + clauses[best + 1:]
    checked = _place_columns(clauses)
    # ``|| ''`` keeps the collection's own index out of the plan: without statistics SQLite would
    # drive the join from it (every vector of the collection), not from the driver's range
    q = (select(Embedding.id, *(col for c in checked for col in c.columns)).select_from(File)
         .join(Item, Item.file_id == File.id).join(Embedding, Embedding.item_id == Item.id)
         .where(driver.indexed, *(c.plain for c in others), Embedding.collection + "" == collection))
    if not checked:
        ids = np.fromiter(s.scalars(q), dtype=np.int64)
    else:
        ids = np.fromiter((row[0] for row in s.execute(q) if _passes(checked, row)), dtype=np.int64)
    return np.unique(ids)


def _driver(s: Session, clauses: list[_Clause], cap: int | None) -> tuple[int, int] | None:
    """(the condition that drives a query, about how many rows it matches): the one matching
    fewest, each counted on its own index up to a limit. None when every one matches more than
    ``cap``; with no cap the limit grows until one is under it."""
    limit = cap if cap is not None else FIRST_PROBE
    while True:
        counts = [_count(s, c.probe, limit) for c in clauses]
        best = int(np.argmin(counts))
        if counts[best] <= limit:
            return best, counts[best]
        if cap is not None:
            return None
        limit *= 8


def items_query(s: Session, f: Filter, *where: ColumnElement[bool],
                ids: ColumnElement[bool] | None = None) -> tuple[Select, list[_Clause]]:
    """Item ids (over files joined to items) that pass ``f`` and ``where``, and the clauses a
    Python check finishes on each row (a glob, the distance to a place: their columns follow
    the id). How browsing and the totals of search pages apply the filter a search applies.
    The filter's smallest condition drives, as in ``select_ids``, or with ``ids`` (a condition
    on ``Item.id`` from ``id_lists.among``) those items; ``where`` is checked on the rows, so
    give it in a form no index serves when there is a filter (``Item.modality + ''``)."""
    q = select(Item.id).select_from(File).join(Item, Item.file_id == File.id).where(*where)
    if ids is not None:
        q = q.where(ids)
    if not f:
        return q, []
    clauses = _clauses(s, f)
    best = -1 if ids is not None else 0
    if ids is None and len(clauses) > 1:
        found = _driver(s, clauses, None)
        assert found is not None  # no cap: one is always under the limit
        best = found[0]
    checked = _place_columns(clauses)
    q = q.add_columns(*(col for c in checked for col in c.columns))
    return q.where(*(c.indexed if i == best else c.plain for i, c in enumerate(clauses))), checked


def count_items(s: Session, f: Filter, *where: ColumnElement[bool], ids: Sequence[int] | None = None,
                limit: int | None = None) -> int:
    """How many items pass ``f`` and ``where`` (see ``items_query``; ``ids``: of these items):
    one SQL count, or with a Python check, a read of the rows its SQL ranges find. Cost
    follows the matches; with ``limit`` it stops past that many (and returns ``limit + 1``)."""
    total = 0
    for only in [None] if ids is None else among(Item.id, ids, s.get_bind().dialect.name):
        q, checked = items_query(s, f, *where, ids=only)
        if not checked:
            total += _count(s, q, limit)
        else:
            for row in s.execute(q):
                total += _passes(checked, row)
                if limit is not None and total > limit:
                    break
        if limit is not None and total > limit:
            return limit + 1
    return total


def page_items(s: Session, f: Filter, order: Sequence[ColumnElement], offset: int, limit: int,
               *where: ColumnElement[bool]) -> tuple[list[int], int]:
    """A page of the item ids that pass ``f`` and ``where`` in ``order``, and how many pass in
    all: the page by OFFSET and LIMIT and a count, or with a Python check, one pass over the
    rows its SQL ranges find."""
    q, checked = items_query(s, f, *where)
    q = q.order_by(*order)
    if not checked:
        ids = [int(i) for i in s.scalars(q.offset(offset).limit(limit))]
        return ids, _count(s, q.order_by(None))
    ids, total = [], 0
    for row in s.execute(q):
        if _passes(checked, row):
            if offset <= total < offset + limit:
                ids.append(int(row[0]))
            total += 1
    return ids, total


def matching(s: Session, f: Filter, embedding_ids: Sequence[int]) -> dict[int, tuple[int, float | None, float | None]]:
    """embedding id -> (item id, window start, end) for the ids that exist and pass ``f``: how a
    broad filter is applied after the vector search, on its candidates only."""
    clauses = _clauses(s, f) if f else []
    checked = _place_columns(clauses, first=4)
    out: dict[int, tuple[int, float | None, float | None]] = {}
    for wanted in among(Embedding.id, embedding_ids, s.get_bind().dialect.name):
        q = select(Embedding.id, Embedding.item_id, Embedding.start_s, Embedding.end_s,
                   *(col for c in checked for col in c.columns)).where(wanted)
        if clauses:
            q = (q.join(Item, Item.id == Embedding.item_id).join(File, File.id == Item.file_id)
                 .where(*(c.plain for c in clauses)))
        rows = s.connection().execute(q).all()  # plain rows: a batch maps thousands of candidates
        out.update({row[0]: (row[1], row[2], row[3]) for row in rows if not checked or _passes(checked, row)})
    return out


def _count(s: Session, probe: Select, limit: int | None = None) -> int:
    """Rows of ``probe``, counted up to ``limit + 1`` (enough to know it is over); all without one."""
    q = probe if limit is None else probe.limit(limit + 1)
    return int(s.scalar(select(func.count()).select_from(q.subquery())) or 0)


def _place_columns(clauses: Iterable[_Clause], first: int = 1) -> list[_Clause]:
    """The clauses with a Python check, each told where its columns start in a result row."""
    checked = [c for c in clauses if c.check is not None]
    at = first
    for c in checked:
        c.start = at
        at += len(c.columns)
    return checked


def _passes(checked: list[_Clause], row: Sequence[object]) -> bool:
    return all(c.check(*row[c.start:c.start + len(c.columns)]) for c in checked)  # type: ignore[misc]


# -- the conditions -------------------------------------------------------------------------------

def _clauses(s: Session, f: Filter) -> list[_Clause]:
    out: list[_Clause] = []
    if f.path is not None:
        out.append(_path(s, f.path))
    if f.date_from is not None or f.date_to is not None:
        out.append(_range(File.id, File.date_s, f.date_from, f.date_to))
    if f.camera:
        out.append(_camera(s, f.camera))
    if f.near is not None:
        out.append(_near(*f.near))
    if f.min_size is not None:
        out.append(_range(File.id, File.size, f.min_size, None))
    if f.min_duration is not None or f.max_duration is not None:
        out.append(_range(Item.id, Item.duration, f.min_duration, f.max_duration))
    if f.ext:
        exts = sorted(set(f.ext))
        out.append(_Clause(select(File.id).where(File.ext.in_(exts)), File.ext.in_(exts),
                           (File.ext + "").in_(exts)))
    for tag in sorted(set(f.tags)):
        out.append(_tag(tag))
    if not out:
        raise ValueError("an empty filter selects everything: search without one")
    return out


def _bounded(col: ColumnElement, low: float | None, high: float | None) -> ColumnElement[bool]:
    """``low <= col <= high``, an open end given a bound beyond any value: SQLite's planner,
    without statistics, rates a one-sided range as a quarter of the table and would rather scan
    every vector, but a range bounded on both sides as a small part of it."""
    return and_(col >= (low if low is not None else -_FAR), col <= (high if high is not None else _FAR))


def _range(key: ColumnElement, col: ColumnElement, low: float | None, high: float | None) -> _Clause:
    cond = _bounded(col, low, high)
    return _Clause(select(key).where(cond), cond, _bounded(col + 0, low, high))


def _prefix(col: ColumnElement, prefix: str) -> ColumnElement[bool]:
    return and_(col >= prefix, col < path_filter.successor(prefix))


def _camera(s: Session, camera: str) -> _Clause:
    full, model = ordered(s, File.camera_key), ordered(s, File.model_key)
    cond = or_(_prefix(full, camera), _prefix(model, camera))
    plain = or_(_prefix(ordered(s, File.camera_key + ""), camera), _prefix(ordered(s, File.model_key + ""), camera))
    return _Clause(select(File.id).where(cond), cond, plain)


def _near(lat: float, lon: float, km: float) -> _Clause:
    """A box of latitudes (the index's range) and longitudes around the place, then the true
    great-circle distance."""
    dlat = km / KM_PER_DEGREE
    low, high = lat - dlat, lat + dlat
    cos = math.cos(math.radians(lat))
    dlon = 360.0 if high >= 90 or low <= -90 or cos <= 0 else min(360.0, km / (KM_PER_DEGREE * cos))

    def box(la: ColumnElement, lo: ColumnElement) -> ColumnElement[bool]:
        cond = and_(la >= low, la <= high)
        if dlon >= 180:
            return cond
        west, east = lon - dlon, lon + dlon
        if west < -180:
            return and_(cond, or_(lo >= west + 360, lo <= east))
        if east > 180:
            return and_(cond, or_(lo >= west, lo <= east - 360))
        return and_(cond, lo >= west, lo <= east)

    def within(lat2: float | None, lon2: float | None) -> bool:
        return lat2 is not None and lon2 is not None and distance_km(lat, lon, lat2, lon2) <= km

    cond = box(File.lat, File.lon)
    return _Clause(select(File.id).where(cond), cond, box(File.lat + 0, File.lon + 0),
                   columns=(File.lat, File.lon), check=within)


def _tag(tag: str) -> _Clause:
    name, value = parse_tag(tag)
    match = [Tag.tag == name] + ([Tag.value == value] if value is not None else [])
    return _Clause(select(Tag.item_id).where(*match), Item.id.in_(select(Tag.item_id).where(*match)),
                   exists(select(Tag.item_id).where(Tag.item_id == Item.id, *match)))


def _path(s: Session, pattern: str) -> _Clause:
    """A folder or a glob: range scans of the unique index on files.path (see path_filter), the
    glob's rows then matched in Python."""
    scans = path_filter.scans(pattern, lambda: s.scalars(select(Root.path)).all())

    def ranges(path: ColumnElement[str]) -> ColumnElement[bool]:
        parts = []
        for scan in scans:
            in_range: ColumnElement[bool] = and_(path >= scan.low, path < scan.high)
            parts.append(or_(path == scan.equal, in_range) if scan.equal is not None else in_range)
        return or_(*parts)

    cond = ranges(ordered(s, File.path))
    clause = _Clause(select(File.id).where(cond), cond, ranges(ordered(s, File.path + "")))
    if any(scan.regex is not None for scan in scans):
        def check(path: str) -> bool:
            return any((scan.equal == path or scan.low <= path < scan.high)
                       and (scan.regex is None or scan.regex.fullmatch(path) is not None) for scan in scans)

        clause.columns, clause.check = (File.path,), check
    return clause


def ordered(s: Session, col: ColumnElement[str]) -> ColumnElement[str]:
    """A text column as prefix ranges need it: in code point order. SQLite's BINARY collation
    is, and so is a PostgreSQL database in the C collation; under a language's collation (libc
    or ICU) ``'B' < 'a'`` is false, and there the comparison is forced to "C": correct, but the
    index cannot serve the range then."""
    code_points = s.info.get("mmsearch_code_point_order")  # asked once per session
    if code_points is None:
        code_points = s.info["mmsearch_code_point_order"] = (
            s.get_bind().dialect.name != "postgresql" or bool(s.scalar(text("SELECT 'B' < 'a' AND '~' > 'z'"))))
    return col if code_points else col.collate("C")


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_KM * math.asin(min(1.0, math.sqrt(h)))
