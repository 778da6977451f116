"""Path filters: a folder prefix or a shell glob, answered from the unique index on ``files.path``.

Every pattern becomes range scans of that index (``low <= path < high``, from the pattern's
literal start), joined to the collection's embeddings through ``items.file_id`` and
``embeddings.item_id``: the cost follows the number of files in the range, never the size of
the collection, which a ``LIKE`` with a leading wildcard would scan in full. A glob's rows are
then matched against its regex in Python.

Semantics are a shell's: ``*``, ``?`` and ``[...]`` (``[!...]`` negated) stay within one folder,
``**`` as a whole path segment spans any number of folders, none included. A pattern without
wildcards is a folder (or one file): ``/a/photos`` matches ``/a/photos/x.jpg``, not
``/a/photos2/x.jpg``. ``~`` expands; a relative pattern is resolved against every root of the
catalog, so ``images/1*`` is ``ROOT/images/1*`` for each ``ROOT`` and still scans one range.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from sqlalchemy import ColumnElement, and_, or_, select, text
from sqlalchemy.orm import Session

from mmsearch.errors import BadInput
from mmsearch.storage.models import Embedding, File, Item, Root

_WILDCARD = re.compile(r"[*?[]")


@dataclass(frozen=True)
class PathScan:
    """One range of the files.path index and what the rows in it must satisfy."""

    low: str
    high: str
    equal: str | None = None  # a folder filter also matches the file of that exact name
    regex: re.Pattern[str] | None = None  # a glob's rows must match it


def scans(pattern: str, roots: Callable[[], Iterable[str]]) -> list[PathScan]:
    """The range scans answering ``pattern``: one, or one per root for a relative pattern
    (``roots`` is only called then)."""
    pattern = os.path.expanduser(pattern)
    if os.path.isabs(pattern):
        absolute = [os.path.normpath(pattern)]
    else:
        absolute = [os.path.normpath(os.path.join(root, pattern)) for root in roots()]
    return [_scan(p) for p in absolute]


def _scan(pattern: str) -> PathScan:
    wildcard = _WILDCARD.search(pattern)
    if wildcard is None:
        folder = pattern.rstrip("/") + "/"
        return PathScan(folder, _successor(folder), equal=pattern)
    literal = pattern[:wildcard.start()]  # absolute, so never empty
    return PathScan(literal, _successor(literal), regex=glob_regex(pattern))


def _successor(prefix: str) -> str:
    """The smallest string above every string that starts with ``prefix`` (code point order,
    which is UTF-8 byte order). A last character without a successor is dropped first, and
    surrogates (never in a stored path) are skipped."""
    stem = prefix.rstrip("\U0010ffff")
    after = ord(stem[-1]) + 1
    return stem[:-1] + chr(0xE000 if 0xD800 <= after <= 0xDFFF else after)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A shell glob as a regex over whole paths (fnmatch's ``*`` would cross folders)."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            j = i
            while j < n and pattern[j] == "*":
                j += 1
            segment = (i == 0 or pattern[i - 1] == "/") and (j == n or pattern[j] == "/")
            if j - i >= 2 and segment:  # ** alone in a segment: any number of folders
                out.append(".*" if j == n else "(?:[^/]+/)*")
                j += j < n  # the folder part above takes the slash with it
            else:
                out.append("[^/]*")
            i = j
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[" and (end := _class_end(pattern, i)) > 0:
            body = pattern[i + 1:end]
            negate = body[:1] in ("!", "^")
            body = body[1:] if negate else body
            escaped = "".join("\\" + ch if ch in "\\[]^" else ch for ch in body)
            out.append(f"(?!/)[{'^' if negate else ''}{escaped}]")
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    try:
        return re.compile("".join(out), re.DOTALL)
    except re.error as e:
        raise BadInput(f"bad path pattern {pattern!r}: {e}") from None


def _class_end(pattern: str, start: int) -> int:
    """Index of the ``]`` closing the class opened at ``start``, or -1: then ``[`` is literal.
    A ``]`` right after ``[`` or ``[!`` belongs to the class, as in a shell."""
    j = start + 1
    if j < len(pattern) and pattern[j] in "!^":
        j += 1
    if j < len(pattern) and pattern[j] == "]":
        j += 1
    return pattern.find("]", j)


def embedding_ids(s: Session, collection: str, pattern: str) -> np.ndarray:
    """Sorted embedding ids of ``collection`` whose file path matches ``pattern``."""
    path = _ordered_path(s)
    found: list[np.ndarray] = []
    for scan in scans(pattern, lambda: s.scalars(select(Root.path)).all()):
        in_range: ColumnElement[bool] = and_(path >= scan.low, path < scan.high)
        if scan.equal is not None:
            in_range = or_(path == scan.equal, in_range)
        cols = (Embedding.id,) if scan.regex is None else (Embedding.id, File.path)
        # ``|| ''`` keeps the collection's own index out of the plan: without statistics SQLite
        # would drive the join from it (every vector of the collection), not from the path range
        q = (select(*cols).select_from(File).join(Item, Item.file_id == File.id)
             .join(Embedding, Embedding.item_id == Item.id)
             .where(in_range, Embedding.collection + "" == collection))
        if scan.regex is None:
            found.append(np.fromiter(s.scalars(q), dtype=np.int64))
        else:
            match = scan.regex.fullmatch
            found.append(np.fromiter((e for e, p in s.execute(q) if match(p)), dtype=np.int64))
    return np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)


def _ordered_path(s: Session) -> ColumnElement[str]:
    """``files.path`` as the range bounds need it: in code point order. SQLite's BINARY collation
    is, and so is a PostgreSQL database in the C collation; under a language's collation (libc
    or ICU) ``'B' < 'a'`` is false, and there the comparison is forced to "C": correct, but the
    index cannot serve the range then."""
    if s.get_bind().dialect.name != "postgresql" or s.scalar(text("SELECT 'B' < 'a' AND '~' > 'z'")):
        return File.path
    return File.path.collate("C")
