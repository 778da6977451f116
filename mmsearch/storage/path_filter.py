"""Path filters: a folder prefix or a shell glob, answered from the unique index on ``files.path``.

Every pattern becomes range scans of that index (``low <= path < high``, from the pattern's
literal start), joined to the collection's embeddings through ``items.file_id`` and
``embeddings.item_id`` (storage/filters.py, beside the other filters): the cost follows the
number of files in the range, never the size of the collection, which a ``LIKE`` with a leading
wildcard would scan in full. A glob's rows are then matched against its regex in Python.

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

from mmsearch.errors import BadInput

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
        return PathScan(folder, successor(folder), equal=pattern)
    literal = pattern[:wildcard.start()]  # absolute, so never empty
    return PathScan(literal, successor(literal), regex=glob_regex(pattern))


def successor(prefix: str) -> str:
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
            if j - i == 2 and segment:  # ** alone in a segment: any number of folders (*** is a plain *)
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
