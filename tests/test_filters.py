"""Filters: shell glob semantics and folder prefixes answered by a range scan of files.path,
relative patterns resolved against every root, min_score that stops early, and deep pages whose
candidate pool is sized by one page. Work is checked by counting calls and reading the SQL
plan, never by timing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import event

from mmsearch import BadInput, Engine, Query, Settings
from mmsearch.storage.path_filter import glob_regex, scans
from tests.conftest import CONFIG_DIR, flickr_images

LAYOUT = {  # root -> files (symlinks to distinct Flickr photos)
    "a": ["photos/img0.jpg", "photos/img1.jpg", "photos/img2.jpg",
          "photos/sub/deep/img3.jpg", "photos/sub/deep/img4.jpg",
          "photos2/img0.jpg", "photos2/img1.jpg", "photos2/img2.jpg"],
    "b": ["photos/img0.jpg", "photos/img1.jpg"],
}
N_IMAGES = sum(len(files) for files in LAYOUT.values())


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lib = tmp_path_factory.mktemp("lib").resolve()
    sources = iter(flickr_images(N_IMAGES))
    for root, files in LAYOUT.items():
        for rel in files:
            dest = lib / root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(next(sources), dest)
    return lib


@pytest.fixture(scope="module")
def engine(lib: Path, clip_spec: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """Two roots, one catalog; rerank_factor 2 keeps the candidate pool below the collection."""
    settings = Settings(catalog=tmp_path_factory.mktemp("catalog"), model=clip_spec, model_config_dirs=[CONFIG_DIR],
                        audio=False, batch_size=16, decode_workers=2, device="cpu", rerank_factor=2,
                        follow_links=True)  # the layout is symlinks to the shared photos
    with Engine.open(settings) as engine:
        report = engine.index([lib / "a", lib / "b"])
        assert (report.added, report.failed) == (N_IMAGES, 0)
        yield engine


def found(engine: Engine, lib: Path, pattern: str) -> set[str]:
    hits = engine.search(Query(text="a photo", to="image", k=100, path=pattern)).results
    return {str(Path(h.path).relative_to(lib)) for h in hits}


class _CountingIndex:
    """An index whose searches are recorded (their k), everything else passed through."""

    def __init__(self, index: Any, calls: list[int]) -> None:
        self._index, self._calls = index, calls

    def search(self, queries: np.ndarray, k: int, **kwargs: Any) -> Any:
        self._calls.append(k)
        return self._index.search(queries, k, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._index, name)


@pytest.fixture
def ann_calls(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The k of every ANN search the engine makes, seen through IndexSet.index."""
    calls: list[int] = []
    real = engine.indexes.index

    def index(collection: str) -> Any:
        idx = real(collection)
        return None if idx is None else _CountingIndex(idx, calls)

    monkeypatch.setattr(engine.indexes, "index", index)
    return calls


@pytest.mark.parametrize(("pattern", "path", "matches"), [
    ("/r/*.jpg", "/r/a.jpg", True),
    ("/r/*.jpg", "/r/x/a.jpg", False),  # * stays in one folder
    ("/r/?/a.jpg", "/r/x/a.jpg", True),
    ("/r/x?a.jpg", "/r/x/a.jpg", False),  # so does ?
    ("/r/**/b.jpg", "/r/b.jpg", True),  # ** spans no folder...
    ("/r/**/b.jpg", "/r/x/y/b.jpg", True),  # ...or several
    ("/r/**/b.jpg", "/rb.jpg", False),
    ("/r/**", "/r/x/y.jpg", True),
    ("/r/a**", "/r/ab/c.jpg", False),  # ** inside a name is a plain *
    ("/r/***", "/r/x/y.jpg", False),  # so is *** (only ** alone spans folders)
    ("/r/***", "/r/y.jpg", True),
    ("/r/img[0-2].jpg", "/r/img1.jpg", True),
    ("/r/img[!0-2].jpg", "/r/img1.jpg", False),
    ("/r/img[!0-2].jpg", "/r/img7.jpg", True),
    ("/r[!x]a.jpg", "/r/a.jpg", False),  # a class never matches /
    ("/r/[]]", "/r/]", True),
    ("/r/[.jpg", "/r/[.jpg", True),  # an unclosed [ is literal
    ("/r/a.jpg", "/r/aXjpg", False),
])
def test_glob_regex(pattern: str, path: str, matches: bool) -> None:
    assert bool(glob_regex(pattern).fullmatch(path)) is matches


@pytest.mark.parametrize(("pattern", "low", "high"), [
    ("/a/photos", "/a/photos/", "/a/photos0"),  # plus /a/photos itself
    ("/a/photos/", "/a/photos/", "/a/photos0"),
    ("/a/p*/x.jpg", "/a/p", "/a/q"),
    ("/a/\ud7ff*", "/a/\ud7ff", "/a/\ue000"),  # no surrogate as a bound
    ("/a\U0010ffff*", "/a\U0010ffff", "/b"),
])
def test_scan_bounds(pattern: str, low: str, high: str) -> None:
    (scan,) = scans(pattern, lambda: [])
    assert (scan.low, scan.high) == (low, high)


def test_star_and_question_mark_stay_in_one_folder(engine: Engine, lib: Path) -> None:
    direct = {"a/photos/img0.jpg", "a/photos/img1.jpg", "a/photos/img2.jpg"}
    assert found(engine, lib, f"{lib}/a/photos/*.jpg") == direct
    assert found(engine, lib, f"{lib}/a/photos/sub?deep/*.jpg") == set()
    assert found(engine, lib, f"{lib}/a/photos?/img?.jpg") == {"a/photos2/img0.jpg", "a/photos2/img1.jpg",
                                                               "a/photos2/img2.jpg"}


def test_double_star_spans_any_number_of_folders(engine: Engine, lib: Path) -> None:
    under_photos = {"a/photos/img0.jpg", "a/photos/img1.jpg", "a/photos/img2.jpg",
                    "a/photos/sub/deep/img3.jpg", "a/photos/sub/deep/img4.jpg"}
    assert found(engine, lib, f"{lib}/a/photos/**/*.jpg") == under_photos
    assert found(engine, lib, f"{lib}/a/photos/**") == under_photos
    assert found(engine, lib, f"{lib}/a/**/img4.jpg") == {"a/photos/sub/deep/img4.jpg"}


def test_character_classes(engine: Engine, lib: Path) -> None:
    assert found(engine, lib, f"{lib}/a/photos2/img[01].jpg") == {"a/photos2/img0.jpg", "a/photos2/img1.jpg"}
    assert found(engine, lib, f"{lib}/a/photos2/img[!0].jpg") == {"a/photos2/img1.jpg", "a/photos2/img2.jpg"}
    assert found(engine, lib, f"{lib}/a/photos[0-9]/*") == {"a/photos2/img0.jpg", "a/photos2/img1.jpg",
                                                            "a/photos2/img2.jpg"}
    with pytest.raises(BadInput, match="bad path pattern"):
        found(engine, lib, f"{lib}/a/photos[z-a]/*")


def test_relative_patterns_start_at_every_root(engine: Engine, lib: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    direct = {"a/photos/img0.jpg", "a/photos/img1.jpg", "a/photos/img2.jpg", "b/photos/img0.jpg", "b/photos/img1.jpg"}
    assert found(engine, lib, "photos/*.jpg") == direct
    assert found(engine, lib, "photos") == direct | {"a/photos/sub/deep/img3.jpg", "a/photos/sub/deep/img4.jpg"}
    assert found(engine, lib, "**/img1.jpg") == {"a/photos/img1.jpg", "a/photos2/img1.jpg", "b/photos/img1.jpg"}
    assert found(engine, lib, "*.jpg") == set()  # no photo lies directly in a root
    monkeypatch.setenv("HOME", str(lib))
    assert found(engine, lib, "~/b/photos/img[1]*") == {"b/photos/img1.jpg"}


def test_folder_filter_is_not_a_string_prefix(engine: Engine, lib: Path, ann_calls: list[int]) -> None:
    photos = {"a/photos/img0.jpg", "a/photos/img1.jpg", "a/photos/img2.jpg",
              "a/photos/sub/deep/img3.jpg", "a/photos/sub/deep/img4.jpg"}
    assert found(engine, lib, f"{lib}/a/photos") == photos  # not a/photos2
    assert found(engine, lib, f"{lib}/a/photos/") == photos
    assert found(engine, lib, f"{lib}/a/photos2/img0.jpg") == {"a/photos2/img0.jpg"}  # one file
    assert ann_calls == []  # a filter selecting few vectors is scored exactly, without the ANN index


def test_path_filter_is_a_range_scan_of_the_path_index(engine: Engine, lib: Path) -> None:
    """The filter's SQL starts from the unique index on files.path, inside the pattern's range:
    no LIKE over every row of the collection."""
    statements: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if "embeddings" in statement and "files" in statement:
            statements.append((statement, parameters))

    event.listen(engine.catalog.engine, "before_cursor_execute", record)
    try:
        assert len(found(engine, lib, f"{lib}/a/photos2/*.jpg")) == 3
    finally:
        event.remove(engine.catalog.engine, "before_cursor_execute", record)
    (statement, parameters), = statements
    assert " LIKE " not in statement.upper()
    with engine.catalog.engine.connect() as conn:
        plan = [row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)]
    assert plan[0].startswith("SEARCH files USING") and "(path>? AND path<?)" in plan[0], plan


def test_min_score_that_filters_everything_does_not_deepen(engine: Engine, ann_calls: list[int]) -> None:
    res = engine.search(Query(text="a photo", to="image", k=1, min_score=1.0))
    assert res.results == []
    assert ann_calls == [2]  # one pass of k * rerank_factor: its best were below min_score already
    ranked = engine.search(Query(text="a photo", to="image", k=N_IMAGES)).results
    threshold = ranked[3].score - 1e-5  # scores are reported rounded
    res = engine.search(Query(text="a photo", to="image", k=N_IMAGES, min_score=threshold))
    assert [h.id for h in res.results] == [h.id for h in ranked if h.score >= threshold]


def test_deep_page_is_a_slice_of_one_big_page(engine: Engine, ann_calls: list[int],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    full = engine.search(Query(text="a photo", to="image", k=6)).results
    hydrated: list[int] = []
    real_items = engine.catalog.items

    def items(item_ids: list[int]) -> Any:
        hydrated.extend(item_ids)
        return real_items(item_ids)

    monkeypatch.setattr(engine.catalog, "items", items)
    ann_calls.clear()
    page = engine.search(Query(text="a photo", to="image", k=2, offset=4)).results
    assert [h.id for h in page] == [h.id for h in full[4:6]]
    assert ann_calls == [4 + 2 * 2]  # offset + k * rerank_factor, not (offset + k) * rerank_factor
    assert sorted(hydrated) == sorted(h.id for h in page)  # only the page is read from SQL
