"""File metadata read at ingest (EXIF date, camera, lens, GPS, orientation; pixels, media type,
size, modification time), returned with hits and item details, and the filters on it and on the
user's tags, on every face: Python, the CLI and HTTP.

One small library: photos made with Pillow carrying EXIF dates, cameras and GPS positions, a
photo without EXIF, one with a damaged EXIF block, two notes and two sounds. Filters are checked
against the files they must select (a text query with no ``to`` searches every medium), in each
of the three ways a filter meets the vector search: scored exactly, an id selector, and checked
on the candidates after the search (broad). Work is checked through SQL plans, never timings.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient
from PIL import Image, TiffImagePlugin
from sqlalchemy import event, text
from typer.testing import CliRunner

from mmsearch import BadInput, Engine, NotFound, Query
from mmsearch.api.app import create_app
from mmsearch.cli import app as cli_app
from mmsearch.search import runner as runner_module
from mmsearch.storage.filters import distance_km
from tests.conftest import CONFIG_DIR, flickr_images

KEY = "meta-key-01234"
PARIS = (48.8566, 2.3522)
VERSAILLES = (48.8049, 2.1204)  # ~18 km from PARIS
NEW_YORK = (40.7128, -74.0060)
EVERYTHING = {"paris.jpg", "versailles.jpg", "nyc.jpg", "plain.png", "broken.jpg", "beach.txt", "city.md",
              "short.wav", "long.wav"}


def _dms(degrees: float) -> tuple[TiffImagePlugin.IFDRational, ...]:
    d = abs(degrees)
    minutes = (d - int(d)) * 60
    seconds = (minutes - int(minutes)) * 60
    return (TiffImagePlugin.IFDRational(int(d), 1), TiffImagePlugin.IFDRational(int(minutes), 1),
            TiffImagePlugin.IFDRational(round(seconds * 1000), 1000))


def make_photo(src: Path, dest: Path, *, taken: str | None = None, offset: str | None = None,
               make: str | None = None, model: str | None = None, lens: str | None = None,
               gps: tuple[float, float] | None = None, orientation: int | None = None, scale: float = 1.0) -> Path:
    """A JPEG of a real photo with the EXIF tags given: DateTimeOriginal (0x9003) and
    OffsetTimeOriginal in the Exif IFD, Make (0x010F), Model (0x0110), Orientation, LensModel,
    and a GPS IFD (0x8825)."""
    img = Image.open(src).convert("RGB")
    if scale != 1.0:
        img = img.resize((int(img.width * scale), int(img.height * scale)))
    exif = Image.Exif()
    for ifd, tag, value in ((None, 0x010F, make), (None, 0x0110, model), (None, 0x0112, orientation),
                            (0x8769, 0x9003, taken), (0x8769, 0x9011, offset), (0x8769, 0xA434, lens)):
        if value:
            (exif if ifd is None else exif.get_ifd(ifd))[tag] = value
    if gps:
        g = exif.get_ifd(0x8825)
        g[1], g[2] = ("N" if gps[0] >= 0 else "S"), _dms(gps[0])
        g[3], g[4] = ("E" if gps[1] >= 0 else "W"), _dms(gps[1])
    dest.parent.mkdir(parents=True, exist_ok=True)
    img.save(dest, "JPEG", quality=90, exif=exif)
    return dest


def broken_exif() -> bytes:
    """An EXIF block whose GPS IFD pointer is negative (Pillow raises reading it), beside a
    readable Make: the photo must index, keeping what can be read."""
    entries = [(0x010F, 2, 4, b"Pen\x00"), (0x8825, 9, 1, struct.pack("<i", -5))]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHI", t, ty, n) + v for t, ty, n, v in entries)
    return b"Exif\x00\x00" + b"II*\x00\x08\x00\x00\x00" + ifd + struct.pack("<I", 0)


def _at(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=timezone.utc).timestamp())


def build_library(root: Path) -> Path:
    src = flickr_images(6)
    make_photo(src[0], root / "trips" / "paris.jpg", taken="2021:06:15 10:30:00", make="Canon",
               model="Canon EOS 5D Mark III", lens="EF24-105mm f/4L IS USM", gps=PARIS, orientation=6)
    make_photo(src[1], root / "trips" / "versailles.jpg", taken="2021:06:20 14:00:00", make="SONY",
               model="ILCE-7M3", gps=VERSAILLES)
    make_photo(src[2], root / "trips" / "nyc.jpg", taken="2023:01:02 08:00:00", offset="+02:00", make="Apple",
               model="iPhone 12", gps=NEW_YORK, scale=2.0)  # 06:00 UTC; the largest file
    plain = root / "misc" / "plain.png"
    plain.parent.mkdir(parents=True)
    Image.open(src[3]).convert("RGB").save(plain)
    os.utime(plain, (_at("2019-03-03"), _at("2019-03-03")))  # no EXIF: dated by its mtime
    Image.open(src[4]).convert("RGB").save(root / "misc" / "broken.jpg", "JPEG", exif=broken_exif())
    (root / "notes").mkdir()
    (root / "notes" / "beach.txt").write_text("Two dogs play fetch on a sandy beach at sunset.")
    (root / "notes" / "city.md").write_text("A busy city street with yellow taxis.")
    for note in (root / "notes").iterdir():
        os.utime(note, (_at("2022-05-05"), _at("2022-05-05")))
    (root / "sounds").mkdir()
    for name, seconds in (("short.wav", 2.0), ("long.wav", 12.0)):
        t = np.arange(int(16_000 * seconds)) / 16_000
        sf.write(root / "sounds" / name, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16_000)
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, clip_spec: str, tiny_clap_dir: Path) -> Iterator[dict[str, Any]]:
    from mmsearch.settings import Settings

    tmp = tmp_path_factory.mktemp("meta")
    lib = build_library(tmp / "lib")
    settings = Settings(catalog=tmp / "catalog", model=clip_spec, model_config_dirs=[CONFIG_DIR],
                        audio_model=f"clap:{tiny_clap_dir}", batch_size=16, decode_workers=2, device="cpu",
                        api_key=KEY)
    engine = Engine.open(settings)
    report = engine.index([lib])
    assert (report.added, report.failed) == (len(EVERYTHING), 0), report.failures
    ids = {Path(p).name: engine.lookup(p)[0] for p in map(str, lib.rglob("*")) if Path(p).is_file()}
    with TestClient(create_app(engine)) as client:
        yield {"engine": engine, "lib": lib, "ids": ids, "client": client, "catalog": str(tmp / "catalog"),
               "settings": settings}
    engine.close()


@pytest.fixture(scope="module")
def cli(world: dict[str, Any]) -> Any:
    runner = CliRunner()
    env = {"MMSEARCH_MODEL_CONFIG_DIRS": json.dumps([str(CONFIG_DIR)]), "MMSEARCH_DEVICE": "cpu"}

    def run(*args: str, code: int = 0) -> Any:
        result = runner.invoke(cli_app, [*args, "--catalog", world["catalog"]], env=env)
        assert result.exit_code == code, result.output
        return result

    return run


# -- facts read at ingest ---------------------------------------------------------------------

def test_exif_facts_are_stored_and_returned(world: dict[str, Any]) -> None:
    engine, ids = world["engine"], world["ids"]
    paris = engine.item(ids["paris.jpg"]).facts
    assert paris.taken_at == datetime(2021, 6, 15, 10, 30, tzinfo=timezone.utc)
    assert (paris.camera_make, paris.camera_model, paris.lens) == ("Canon", "Canon EOS 5D Mark III",
                                                                   "EF24-105mm f/4L IS USM")
    assert distance_km(paris.lat, paris.lon, *PARIS) < 0.01  # type: ignore[arg-type]
    assert paris.orientation == 6 and paris.mime == "image/jpeg"
    stored = Image.open(world["lib"] / "trips" / "paris.jpg").size
    assert (paris.width, paris.height) == (stored[1], stored[0])  # as shown: a quarter turn
    nyc = engine.item(ids["nyc.jpg"]).facts
    assert nyc.taken_at == datetime(2023, 1, 2, 6, 0, tzinfo=timezone.utc)  # the EXIF offset applied
    assert nyc.lon is not None and nyc.lon < 0 and nyc.orientation is None
    plain = engine.item(ids["plain.png"])
    assert plain.facts.mime == "image/png" and plain.facts.taken_at is None and plain.facts.width
    note = engine.item(ids["beach.txt"])
    assert note.facts.mime == "text/plain" and note.facts.width is None
    assert engine.item(ids["long.wav"]).duration == pytest.approx(12.0, abs=0.1)


def test_a_damaged_exif_block_still_indexes_the_photo(world: dict[str, Any]) -> None:
    engine, ids = world["engine"], world["ids"]
    broken = engine.item(ids["broken.jpg"])  # indexed: the fixture saw no failure
    assert broken.facts.camera_make == "Pen"  # what could be read is kept
    assert broken.facts.lat is None and broken.facts.taken_at is None
    assert broken.facts.width and broken.facts.mime == "image/jpeg"
    hits = engine.search(Query(image=(world["lib"] / "misc" / "broken.jpg").read_bytes(), k=1)).results
    assert hits[0].id == ids["broken.jpg"]


def test_hits_and_item_details_carry_the_metadata(world: dict[str, Any], cli: Any) -> None:
    engine, ids, client = world["engine"], world["ids"], world["client"]
    hit = next(h for h in engine.search(Query(text="a photo", to="image", k=10)).results if h.id == ids["paris.jpg"])
    assert (hit.camera_model, hit.lens, hit.orientation, hit.mime) == ("Canon EOS 5D Mark III",
                                                                       "EF24-105mm f/4L IS USM", 6, "image/jpeg")
    assert hit.taken_at == datetime(2021, 6, 15, 10, 30, tzinfo=timezone.utc)
    assert hit.size == (world["lib"] / "trips" / "paris.jpg").stat().st_size and hit.modified is not None
    body = client.get(f"/items/{ids['paris.jpg']}").json()
    assert body["camera_make"] == "Canon" and body["taken_at"].startswith("2021-06-15T10:30:00")
    assert body["lat"] == pytest.approx(PARIS[0], abs=1e-4) and body["width"] == hit.width
    assert body["modified"] and body["mime"] == "image/jpeg" and body["tags"] == []
    out = json.loads(cli("search", "a photo", "--to", "image", "--json", "-k", "10").stdout)
    row = next(r for r in out["results"] if r["id"] == ids["paris.jpg"])
    assert row["camera_make"] == "Canon" and row["lon"] == pytest.approx(PARIS[1], abs=1e-4)


# -- filters on every face --------------------------------------------------------------------

FILTERS: list[tuple[dict[str, Any], set[str]]] = [
    ({"date_from": "2021-06-01", "date_to": "2021-06-30"}, {"paris.jpg", "versailles.jpg"}),
    ({"date_to": "2020-12-31"}, {"plain.png"}),  # no EXIF: its modification time
    ({"date_from": "2022-05-05", "date_to": "2022-05-05"}, {"beach.txt", "city.md"}),  # a whole day
    ({"date_from": "2023-01-02T05:30:00Z", "date_to": "2023-01-02T06:30:00+00:00"}, {"nyc.jpg"}),
    ({"camera": "canon"}, {"paris.jpg"}),
    ({"camera": "EOS 5D"}, {"paris.jpg"}),  # the model alone, any case
    ({"camera": "apple iphone"}, {"nyc.jpg"}),
    ({"camera": "sony ilce-7"}, {"versailles.jpg"}),
    ({"camera": "nikon"}, set()),
    ({"near": (*PARIS, 5)}, {"paris.jpg"}),
    ({"near": (*PARIS, 25)}, {"paris.jpg", "versailles.jpg"}),
    ({"near": (*NEW_YORK, 1)}, {"nyc.jpg"}),
    ({"ext": ["png"]}, {"plain.png"}),
    ({"ext": ["TXT", ".md"]}, {"beach.txt", "city.md"}),
    ({"min_duration": 5}, {"long.wav"}),
    ({"max_duration": 5}, {"short.wav"}),
    ({"min_duration": 1, "max_duration": 20}, {"short.wav", "long.wav"}),
    ({"ext": ["jpg"], "camera": "canon", "date_from": "2021-01-01"}, {"paris.jpg"}),  # combined: all hold
    ({"ext": ["jpg"], "near": (*PARIS, 25), "date_to": "2021-06-16"}, {"paris.jpg"}),
]


def _cli_args(filters: dict[str, Any]) -> list[str]:
    args: list[str] = []
    for key, value in filters.items():
        flag = "--tag" if key == "tags" else "--" + key.replace("_", "-")
        if key == "near":
            args += [flag, ",".join(map(str, value))]
        elif isinstance(value, list):
            for v in value:
                args += [flag, str(v)]
        else:
            args += [flag, str(value)]
    return args


def _params(filters: dict[str, Any]) -> dict[str, Any]:
    return {k: ",".join(map(str, v)) if k == "near" else v for k, v in filters.items()}


def found(world: dict[str, Any], cli: Any, face: str, filters: dict[str, Any], text_query: str = "a photo") -> set[str]:
    """File names a filtered text query returns (every medium, k above the library's size)."""
    if face == "python":
        results = [h.path for h in world["engine"].search(Query(text=text_query, k=50, **filters)).results]
    elif face == "cli":
        out = cli("search", text_query, "-k", "50", "--json", *_cli_args(filters))
        results = [h["path"] for h in json.loads(out.stdout)["results"]]
    elif face == "http-get":
        r = world["client"].get("/search", params={"text": text_query, "k": 50, **_params(filters)})
        assert r.status_code == 200, r.text
        results = [h["path"] for h in r.json()["results"]]
    else:
        r = world["client"].post("/search", json={"text": text_query, "k": 50, **filters})
        assert r.status_code == 200, r.text
        results = [h["path"] for h in r.json()["results"]]
    return {Path(p).name for p in results}


@pytest.mark.parametrize("face", ["python", "cli", "http-get", "http-post"])
def test_each_filter_on_each_face(world: dict[str, Any], cli: Any, face: str) -> None:
    assert found(world, cli, face, {}) == EVERYTHING
    for filters, expected in FILTERS:
        assert found(world, cli, face, filters) == expected, (face, filters)


def browsed(world: dict[str, Any], cli: Any, face: str, filters: dict[str, Any]) -> set[str]:
    """File names browsing (no query) lists with these filters; its total must count them."""
    if face == "python":
        rows, total = world["engine"].browse(limit=200, **filters)
        paths = [r.path for r in rows]
    elif face == "cli":
        out = json.loads(cli("browse", "-k", "200", "--json", *_cli_args(filters)).stdout)
        paths, total = [it["path"] for it in out["items"]], out["total"]
    else:
        r = world["client"].get("/browse", params={"limit": 200, **_params(filters)})
        assert r.status_code == 200, r.text
        paths, total = [it["path"] for it in r.json()["items"]], r.json()["total"]
    assert total == len(paths) and paths == sorted(paths), (face, filters)  # path order
    return {Path(p).name for p in paths}


@pytest.mark.parametrize("face", ["python", "cli", "http"])
def test_browse_applies_each_filter_on_each_face(world: dict[str, Any], cli: Any, face: str) -> None:
    assert browsed(world, cli, face, {}) == EVERYTHING
    for filters, expected in FILTERS:
        assert browsed(world, cli, face, filters) == expected, (face, filters)
    assert browsed(world, cli, face, {"path": "trips/*.jpg", "camera": "sony"}) == {"versailles.jpg"}  # a glob too


def test_browse_pages_a_filter_with_its_total(world: dict[str, Any]) -> None:
    """Conditions finished in Python (a glob, a distance) page and count as the SQL ones do."""
    engine = world["engine"]
    for filters in ({"ext": ["jpg", "png"]}, {"path": "**/*.jpg"}, {"near": (*PARIS, 7000)}):
        whole, total = engine.browse(limit=200, **filters)
        pages = [engine.browse(limit=2, offset=o, **filters) for o in range(0, total + 2, 2)]
        assert all(t == total for _, t in pages) and total >= 3
        assert [r.id for page, _ in pages for r in page] == [r.id for r in whole]
    rows, total = engine.browse(to="image", near=(*PARIS, 25), limit=1)
    assert total == 2 and [Path(r.path).name for r in rows] == ["paris.jpg"]
    with pytest.raises(BadInput, match="min_szie"):
        engine.browse(min_szie=10)
    with pytest.raises(BadInput, match="near"):
        engine.browse(near=(100, 0, 1))


def totals(world: dict[str, Any], cli: Any, face: str, filters: dict[str, Any], **page: Any) -> tuple[int, str, int]:
    """(total, total_relation, results on the page) of a text query with these filters."""
    if face == "python":
        res = world["engine"].search(Query(text="a photo", **page, **filters))
        return res.total, res.total_relation, len(res.results)
    if face == "cli":
        out = json.loads(cli("search", "a photo", "--json", *_cli_args({**page, **filters})).stdout)
    else:
        r = world["client"].get("/search", params={"text": "a photo", **page, **_params(filters)})
        assert r.status_code == 200, r.text
        out = r.json()
    return out["total"], out["total_relation"], len(out["results"])


@pytest.mark.parametrize("face", ["python", "cli", "http"])
def test_search_pages_carry_the_total_the_filters_select(world: dict[str, Any], cli: Any, face: str) -> None:
    """A text query without ``to`` ranks every item: its total is what the filters select, on
    every page, however small the page."""
    assert totals(world, cli, face, {}, k=2) == (len(EVERYTHING), "eq", 2)
    for filters, expected in FILTERS:
        assert totals(world, cli, face, filters, k=1)[:2] == (len(expected), "eq"), (face, filters)
    assert totals(world, cli, face, {"ext": ["jpg"]}, k=1, offset=5) == (4, "eq", 0)  # past the end: still 4
    jpg_and_txt = {"ext": ["jpg", "txt"]}  # 4 photos (broken.jpg too) and a note
    assert totals(world, cli, face, jpg_and_txt, k=2, offset=2) == (5, "eq", 2)


def test_a_total_leaves_out_exclusions_and_bounds_what_scores_drop(world: dict[str, Any]) -> None:
    engine, ids = world["engine"], world["ids"]
    res = engine.search(Query(text="x", k=1, to="image", exclude_ids=[ids["paris.jpg"], ids["beach.txt"], 10**9]))
    assert (res.total, res.total_relation) == (4, "eq")  # 5 images, 1 excluded; the note is not an image
    liked = engine.similar([ids["paris.jpg"]], k=1, ext=["jpg"])  # the liked item is never ranked
    assert (liked.total, liked.total_relation) == (3, "eq") and liked.has_more
    # min_score drops what scores below it: until the last page the total is only a bound
    every = engine.search(Query(text="a photo", k=len(EVERYTHING)))
    floor = sorted(h.cosine for h in every.results if h.collection == "clip.image")[2]
    first = engine.search(Query(text="a photo", to="image", k=1, min_score=floor))
    assert (first.total, first.total_relation) == (5, "lte") and first.has_more
    whole = engine.search(Query(text="a photo", to="image", k=10, min_score=floor))
    assert (whole.total, whole.total_relation) == (len(whole.results), "eq") and len(whole.results) == 3
    deduped = engine.search(Query(text="a photo", to="image", k=10, dedup=0.999))
    assert deduped.total_relation == "eq" and deduped.total == len(deduped.results)  # the last page: exact
    # the count is kept per catalog state: a tag moves it at once
    assert engine.search(Query(text="x", k=1, tags=["counted"])).total == 0
    engine.tag(ids["nyc.jpg"], add=["counted"])
    try:
        assert engine.search(Query(text="x", k=1, tags=["counted"])).total == 1
    finally:
        engine.tag(ids["nyc.jpg"], remove=["counted"])
    assert engine.search(Query(text="x", k=1, tags=["counted"])).total == 0


def test_a_count_stops_at_its_cap_and_the_last_page_is_exact(world: dict[str, Any]) -> None:
    """A broad filter's count stops past the cap (a lower bound, ``gte``) so a page never pays for
    every match; the counters' exact count needs no cap; the last page's end is the total."""
    engine, ids = world["engine"], world["ids"]
    totals = engine.runner._totals
    cap, totals.cap = totals.cap, 2
    try:
        broad = engine.search(Query(text="x", k=1, ext=["jpg"]))  # 4 photos match
        assert (broad.total, broad.total_relation) == (2, "gte") and broad.has_more
        last = engine.search(Query(text="x", k=10, ext=["jpg"]))
        assert (last.total, last.total_relation) == (4, "eq") and not last.has_more
        unfiltered = engine.search(Query(text="x", k=1))  # the triggers' counters: exact at any size
        assert (unfiltered.total, unfiltered.total_relation) == (len(EVERYTHING), "eq")
        scored = engine.search(Query(text="x", k=1, ext=["jpg"], min_score=-1.0))  # capped and scored: reached
        assert (scored.total, scored.total_relation) == (2, "gte")
    finally:
        totals.cap = cap
    # profiles answered in bulk are not counted
    batch = engine.recommend_batch([{"like": [ids["paris.jpg"]], "k": 1}])
    assert (batch[0].total, batch[0].total_relation) == (None, None) and batch[0].results
    single = engine.recommend(like=[ids["paris.jpg"]], k=1)
    assert single.total_relation == "eq" and single.total is not None


def test_empty_pages_say_where_the_list_ends(world: dict[str, Any], cli: Any) -> None:
    """An empty first page is exactly 0; an empty page past the end bounds a scored total by its
    offset (the list ended before it); browsing past the end says so."""
    engine = world["engine"]
    nothing = engine.search(Query(text="a photo", to="image", k=1, min_score=1.0))
    assert (nothing.total, nothing.total_relation, nothing.results) == (0, "eq", [])
    every = engine.search(Query(text="a photo", to="image", k=10))
    floor = sorted(h.cosine for h in every.results)[-3]  # three pass
    last = engine.search(Query(text="a photo", to="image", k=1, offset=2, min_score=floor))
    assert (last.total, last.total_relation, last.has_more) == (3, "eq", False)
    past = engine.search(Query(text="a photo", to="image", k=1, offset=4, min_score=floor))
    assert (past.total, past.total_relation, past.results) == (4, "lte", [])  # 5 images counted, ended by 4
    assert "nothing from 5,000" in cli("browse", "--offset", "5000", "-k", "2").output


def test_bad_browse_pages_and_profiles_are_refused_on_every_face(world: dict[str, Any], cli: Any) -> None:
    from mmsearch.search.paging import BROWSE_MAX_LIMIT, BROWSE_MAX_OFFSET

    engine, ids = world["engine"], world["ids"]
    with pytest.raises(BadInput, match="offset"):
        engine.browse(offset=BROWSE_MAX_OFFSET + 1)
    with pytest.raises(BadInput, match="limit"):
        engine.browse(limit=BROWSE_MAX_LIMIT + 1)
    huge = cli("browse", "--offset", str(2**63), code=2)
    assert "--offset" in huge.output and "Traceback" not in huge.output
    assert world["client"].get("/browse", params={"offset": BROWSE_MAX_OFFSET + 1}).status_code == 422
    with pytest.raises(NotFound, match="no item"):  # an item that is not there is an error, not no results
        engine.search(Query(item_ids=[10**9]))
    with pytest.raises(BadInput, match="weights are positive"):
        engine.recommend(like={ids["paris.jpg"]: -1.0})
    with pytest.raises(BadInput, match="empty query"):  # only spaces: no text
        engine.search(Query(text="   "))


def test_min_size(world: dict[str, Any], cli: Any) -> None:
    sizes = {p.name: p.stat().st_size for p in world["lib"].rglob("*") if p.is_file()}
    largest, second = sorted(sizes, key=sizes.__getitem__)[-1:-3:-1]
    limit = sizes[largest] - 1
    for face in ("python", "cli", "http-get", "http-post"):
        assert found(world, cli, face, {"min_size": limit}) == {largest}
        assert found(world, cli, face, {"min_size": sizes[second]}) == {largest, second}
    kib = limit // 1024
    assert found(world, cli, "python", {"min_size": f"{kib}k"}) >= {largest}
    assert found(world, cli, "cli", {"min_size": f"{kib}KiB"}) == found(world, cli, "python", {"min_size": f"{kib}k"})


def test_filters_on_similar(world: dict[str, Any], cli: Any) -> None:
    ids, client = world["ids"], world["client"]
    like = ids["plain.png"]
    res = world["engine"].similar([like], k=10, camera="canon").results
    assert [h.id for h in res] == [ids["paris.jpg"]]
    out = json.loads(cli("similar", str(like), "--near", f"{PARIS[0]},{PARIS[1]},25", "--json").stdout)
    assert {h["id"] for h in out["results"]} == {ids["paris.jpg"], ids["versailles.jpg"]}
    r = client.post("/similar", json={"item_ids": [like], "ext": ["jpg"], "date_from": "2022-01-01"})
    assert {h["id"] for h in r.json()["results"]} == {ids["nyc.jpg"], ids["broken.jpg"]}
    r = client.get(f"/items/{like}/similar", params={"date_to": "2021-06-15"})
    assert [h["id"] for h in r.json()["results"]] == [ids["paris.jpg"]]


@pytest.mark.parametrize("mode", ["selector", "broad"])
def test_every_way_a_filter_meets_the_search_agrees(world: dict[str, Any], cli: Any, mode: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Scored exactly (the default here), through an id selector (too many to score exactly),
    or checked on the candidates after the search (broad): the same answers."""
    engine = world["engine"]
    monkeypatch.setattr(engine.runner._subsets, "exact_max", 0)
    monkeypatch.setattr(runner_module, "EXACT_SUBSET_MAX", 0)
    if mode == "broad":
        monkeypatch.setattr(runner_module, "BROAD_SHARE", 0.0)
    for filters, expected in FILTERS:
        assert found(world, cli, "python", filters) == expected, (mode, filters)
    # and paging through a broad filter's matches returns each once
    if mode == "broad":
        pages = [engine.search(Query(text="x", k=1, offset=i, ext=["jpg"])).results for i in range(4)]
        assert sorted(h.path.rsplit("/", 1)[1] for p in pages for h in p) == \
            sorted(["paris.jpg", "versailles.jpg", "nyc.jpg", "broken.jpg"])


def test_broad_conditions_that_rarely_meet_fall_back_to_their_selection(world: dict[str, Any],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two broad conditions whose intersection the candidates miss: the search stops at
    MAX_CANDIDATES, then fetches the filter's whole selection instead of answering short."""
    engine = world["engine"]
    monkeypatch.setattr(runner_module, "BROAD_SHARE", 0.0)
    monkeypatch.setattr(runner_module, "EXACT_SUBSET_MAX", 0)
    monkeypatch.setattr(runner_module, "MAX_CANDIDATES", 1)  # every pass is cut short
    res = engine.search(Query(text="a photo", k=5, ext=["jpg"], camera="sony")).results
    assert [Path(h.path).name for h in res] == ["versailles.jpg"]


def test_filters_are_index_range_scans(world: dict[str, Any]) -> None:
    """Each condition's SQL starts from its own index; in a combination, the smallest drives and
    the others are checked on its rows only."""
    engine = world["engine"]
    statements: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if "embeddings" in statement and "files" in statement and "embeddings.id IN" not in statement:
            statements.append((statement, parameters))

    def plan(filters: dict[str, Any]) -> str:
        statements.clear()
        engine.runner._subsets._entries.clear()
        event.listen(engine.catalog.engine, "before_cursor_execute", record)
        try:
            engine.search(Query(text="x", to="image", k=5, **filters))
        finally:
            event.remove(engine.catalog.engine, "before_cursor_execute", record)
        (statement, parameters), = statements
        with engine.catalog.engine.connect() as conn:
            return " | ".join(row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters))

    for filters, index in [({"date_from": "2021-01-01", "date_to": "2021-12-31"}, "ix_files_date_s (date_s>? AND date_s<?)"),
                           ({"camera": "canon"}, "ix_files_camera_key (camera_key>? AND camera_key<?)"),
                           ({"near": (*PARIS, 10)}, "ix_files_lat_lon (lat>? AND lat<?)"),
                           ({"ext": ["jpg"]}, "ix_files_ext (ext=?)"),
                           ({"min_size": 10}, "ix_files_size (size>? AND size<?)"),
                           ({"date_from": "2021-01-01"}, "ix_files_date_s (date_s>? AND date_s<?)")]:
        steps = plan(filters)
        first = next(step for step in steps.split(" | ") if step.startswith("SEARCH"))  # after MULTI-INDEX OR
        assert first.startswith("SEARCH files USING") and index in first, (filters, steps)
    assert "ix_files_model_key" in plan({"camera": "canon"})  # the model alone: the OR's other range
    assert plan({"max_duration": 5}).startswith("SEARCH items USING INDEX ix_items_duration (duration>? AND")
    engine.tag(world["ids"]["paris.jpg"], add=["planned"])
    try:
        assert plan({"tags": ["planned"]}).startswith("SEARCH items USING INTEGER PRIMARY KEY (rowid=?)")
        assert "ix_tags_tag_value (tag=?)" in plan({"tags": ["planned"]})  # items.id IN (the tag's rows)
    finally:
        engine.tag(world["ids"]["paris.jpg"], remove=["planned"])
    combined = plan({"camera": "canon", "date_from": "2000-01-01"})  # the date matches every image
    assert "ix_files_camera_key" in combined and "ix_files_date_s" not in combined
    assert " LIKE " not in combined.upper()


def test_browsing_and_totals_start_from_the_filters_index(world: dict[str, Any]) -> None:
    """A browse page, its count and a search's total read the rows of the filter's smallest
    condition (its index), the modality checked on them: not every item of the modality."""
    engine = world["engine"]
    statements: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if "FROM files JOIN items" in statement and "embeddings" not in statement:
            statements.append((statement, parameters))

    def plans(run: Any) -> list[str]:
        statements.clear()
        engine.runner._totals._entries.clear()
        event.listen(engine.catalog.engine, "before_cursor_execute", record)
        try:
            run()
        finally:
            event.remove(engine.catalog.engine, "before_cursor_execute", record)
        with engine.catalog.engine.connect() as conn:
            return [" | ".join(row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + st, params))
                    for st, params in statements]

    browsing = plans(lambda: engine.browse(to="image", camera="canon", date_from="2000-01-01", limit=1))
    counting = plans(lambda: engine.search(Query(text="x", to="image", k=1, camera="canon", date_from="2000-01-01")))
    assert len(browsing) == 2 and len(counting) == 1  # the page and its count; the total
    for steps in browsing + counting:
        first = next(step for step in steps.split(" | ") if step.startswith(("SEARCH", "SCAN")))
        assert first.startswith("SEARCH files USING INDEX ix_files_camera_key"), steps
        assert "ix_items_modality" not in steps and "ix_files_date_s" not in steps, steps
    assert plans(lambda: engine.search(Query(text="x", to="image", k=1))) == []  # no filter: the counters


def test_bad_filters_are_refused_on_every_face(world: dict[str, Any], cli: Any) -> None:
    for bad in ({"near": "48.8,2.3"}, {"near": (91, 0, 1)}, {"min_size": "lots"}, {"date_from": "yesterday"},
                {"ext": ["j p g"]}, {"dedup": 1.5}, {"min_duration": -1}):
        with pytest.raises(ValueError):
            Query(text="x", **bad)
        key, value = next(iter(bad.items()))
        r = world["client"].post("/search", json={"text": "x", key: value})
        assert r.status_code == 422, (bad, r.text)
    r = cli("search", "x", "--near", "1,2", code=2)
    assert "--near" in r.output
    r = cli("search", "x", "--date-from", "June", code=2)
    assert "--date-from" in r.output


# -- tags ---------------------------------------------------------------------------------------

def test_tags_add_remove_set_and_filter_on_every_face(world: dict[str, Any], cli: Any) -> None:
    engine, ids, client = world["engine"], world["ids"], world["client"]
    paris, nyc, beach = ids["paris.jpg"], ids["nyc.jpg"], ids["beach.txt"]
    assert found(world, cli, "python", {"tags": ["trip"]}) == set()  # cached as empty...
    assert engine.tag(paris, add=["trip", "france"], set={"rating": "5"}) == ["france", "rating=5", "trip"]
    assert found(world, cli, "python", {"tags": ["trip"]}) == {"paris.jpg"}  # ...and no longer: tags move it
    out = json.loads(cli("tag", str(nyc), "--add", "trip", "--set", "rating=4", "--set", "city=New York",
                         "--json").stdout)
    assert out == {"id": nyc, "tags": ["city=New York", "rating=4", "trip"]}
    r = client.put(f"/items/{beach}/tags", json={"add": ["trip", "todo"], "set": {"rating": "5"}},
                   headers={"X-API-Key": KEY})
    assert r.status_code == 200 and r.json() == {"id": beach, "tags": ["rating=5", "todo", "trip"]}

    for face in ("python", "cli", "http-get", "http-post"):
        assert found(world, cli, face, {"tags": ["trip"]}) == {"paris.jpg", "nyc.jpg", "beach.txt"}
        assert found(world, cli, face, {"tags": ["rating=5"]}) == {"paris.jpg", "beach.txt"}
        assert found(world, cli, face, {"tags": ["trip", "rating=4"]}) == {"nyc.jpg"}  # all of them
        assert found(world, cli, face, {"tags": ["city=New York"], "camera": "apple"}) == {"nyc.jpg"}
        assert found(world, cli, face, {"tags": ["rating"]}) == {"paris.jpg", "nyc.jpg", "beach.txt"}  # any value
    for face in ("python", "cli", "http"):  # browsing applies them as a search does
        assert browsed(world, cli, face, {"tags": ["trip", "rating=4"]}) == {"nyc.jpg"}
        assert browsed(world, cli, face, {"tags": ["rating"], "ext": ["jpg"]}) == {"paris.jpg", "nyc.jpg"}

    # remove: a name, or key=value only while it has that value; set replaces a value
    assert engine.tag(beach, remove=["todo", "rating=4"]) == ["rating=5", "trip"]
    assert engine.tag(beach, remove=["rating=5"], set={"mood": "calm"}) == ["mood=calm", "trip"]
    assert engine.tag(beach, set={"n": 3}) == ["mood=calm", "n=3", "trip"]  # a number is its text
    assert engine.tag(beach, remove=["n"]) == ["mood=calm", "trip"]
    assert cli("tag", str(beach)).stdout.split() == ["mood=calm", "trip"]
    assert client.get(f"/items/{beach}").json()["tags"] == ["mood=calm", "trip"]
    hit = next(h for h in engine.search(Query(text="x", k=50, tags=["trip"])).results if h.id == beach)
    assert hit.tags == ["mood=calm", "trip"]
    assert found(world, cli, "python", {"tags": ["rating=5"]}) == {"paris.jpg"}

    # errors: unknown item, bad tags, no key
    with pytest.raises(NotFound):
        engine.tag(10**9, add=["x"])
    for bad in ({"add": ["a=b"]}, {"add": [""]}, {"add": ["x" * 65]}, {"set": {"k": "v" * 257}}):
        with pytest.raises(BadInput):
            engine.tag(paris, **bad)
    assert client.put(f"/items/{paris}/tags", json={"add": ["x"]}).status_code == 401
    assert client.put(f"/items/{paris}/tags", json={"add": ["x"], "bogus": 1},
                      headers={"X-API-Key": KEY}).status_code == 422
    assert client.put("/items/999999999/tags", json={"add": ["x"]}, headers={"X-API-Key": KEY}).status_code == 404
    cli("tag", str(paris), "--set", "novalue", code=2)
    engine.tag(paris, remove=["trip", "france", "rating"])
    engine.tag(nyc, remove=["trip", "rating", "city"])
    engine.tag(beach, remove=["trip", "mood"])


def test_tags_survive_reindexing_a_changed_file(world: dict[str, Any]) -> None:
    engine, ids, lib = world["engine"], world["ids"], world["lib"]
    note = lib / "notes" / "city.md"
    engine.tag(ids["city.md"], add=["keep"])
    note.write_text("A busy city street with yellow taxis, at night.")
    os.utime(note, (_at("2022-05-05"), _at("2022-05-05") + 60))
    report = engine.index([lib])
    assert report.updated == 1
    assert engine.lookup(note) == [ids["city.md"]]  # the item keeps its id...
    assert engine.item(ids["city.md"]).tags == ["keep"]  # ...and its tags
    assert found(world, None, "python", {"tags": ["keep"]}) == {"city.md"}
    engine.tag(ids["city.md"], remove=["keep"])


# -- an old catalog ------------------------------------------------------------------------------

def test_a_0002_catalog_upgrades_with_empty_metadata_and_stays_searchable(world: dict[str, Any],
                                                                          tmp_path: Path) -> None:
    """A catalog made before metadata (schema 0002): opening its writer migrates it; EXIF facts
    stay empty until the next index (see the next test), while the extension, media type and
    date (modification time) are filled from what it knew, and every filter works."""
    from alembic import command

    from mmsearch.storage.db import SCHEMA_HEAD, alembic_config, create_db_engine

    catalog = tmp_path / "old"
    shutil.copytree(world["catalog"], catalog)
    settings = world["settings"].model_copy(update={"catalog": catalog})
    db = create_db_engine(settings.resolved_db_url())
    cfg = alembic_config(db)
    with db.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0002")
    with db.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0002"
        columns = {row[1] for row in conn.execute(text("PRAGMA table_info(files)"))}
        assert "camera_key" not in columns and "tags" not in {
            r[0] for r in conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'"))}
    db.dispose()
    with Engine.open(settings) as old:
        assert old.catalog.schema_version == SCHEMA_HEAD
        ids = world["ids"]
        paris = old.item(ids["paris.jpg"])
        assert paris.facts.camera_make is None and paris.facts.taken_at is None and paris.facts.mime == "image/jpeg"
        assert len(old.search(Query(text="a photo", k=50)).results) == len(EVERYTHING)
        names = {Path(h.path).name for h in old.search(Query(text="x", k=50, ext=["png", "jpg"])).results}
        assert names == {"paris.jpg", "versailles.jpg", "nyc.jpg", "plain.png", "broken.jpg"}
        dated = {Path(h.path).name for h in old.search(Query(text="x", k=50, date_to="2020-01-01")).results}
        assert dated == {"plain.png"}  # by modification time now
        assert old.search(Query(text="x", k=50, camera="canon")).results == []
        assert old.tag(ids["paris.jpg"], add=["old"]) == ["old"]
        assert [h.id for h in old.search(Query(text="x", k=5, tags=["old"])).results] == [ids["paris.jpg"]]


def test_reindexing_reads_the_facts_an_old_catalog_never_read(world: dict[str, Any], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Files indexed before migration 0003 have empty facts (it fills only the extension, media
    type and date from what the catalog knew), and re-indexing skips them as unchanged. The
    next index reads their facts from the headers, through the writer: nothing re-embedded (same
    items, embedding ids and stored vectors), the filters see them at once, and only those files
    are read, once."""
    from mmsearch.media import metadata

    catalog = tmp_path / "old"
    shutil.copytree(world["catalog"], catalog)
    settings = world["settings"].model_copy(update={"catalog": catalog})
    ids, lib = world["ids"], world["lib"]
    with Engine.open(settings) as old:
        with old.writing() as writer, writer.catalog.sessions.begin() as s:  # what migration 0003 leaves
            s.execute(text("UPDATE files SET width = NULL, height = NULL, taken_s = NULL, camera_make = NULL, "
                           "camera_model = NULL, camera_key = NULL, model_key = NULL, lens = NULL, lat = NULL, "
                           "lon = NULL, orientation = NULL, date_s = mtime_ns / 1000000000"))
        assert old.item(ids["paris.jpg"]).facts.camera_make is None
        assert old.search(Query(text="x", k=50, camera="canon")).results == []  # a cached selection, now stale
        before = {c: (len(old.indexes.store(c, d)), old.indexes.store(c, d).ids().copy())
                  for c, d in (("clip.image", 32), ("clip.text", 32))}
        embeddings = {name: old.catalog.item_embeddings(i) for name, i in ids.items()}
        read: list[str] = []
        header_facts = metadata.header_facts
        monkeypatch.setattr(metadata, "header_facts", lambda path: read.append(Path(path).name) or header_facts(path))

        report = old.index([lib])
        assert (report.added, report.updated, report.unchanged) == (0, 0, len(EVERYTHING))
        assert sorted(read) == sorted(n for n in EVERYTHING if n.endswith((".jpg", ".png")))  # images only
        for name, i in ids.items():
            assert old.item(i).facts == world["engine"].item(i).facts, name  # what ingest had read
            assert old.catalog.item_embeddings(i) == embeddings[name]
        for c, d in (("clip.image", 32), ("clip.text", 32)):
            store = old.indexes.store(c, d)
            assert len(store) == before[c][0] and np.array_equal(store.ids(), before[c][1])
        assert [h.id for h in old.search(Query(text="x", k=50, camera="canon")).results] == [ids["paris.jpg"]]
        dated = {Path(h.path).name for h in old.search(Query(text="x", k=50, date_to="2021-12-31", to="image")).results}
        assert dated == {"paris.jpg", "versailles.jpg", "plain.png"}  # by EXIF date again

        read.clear()
        assert old.index([lib]).unchanged == len(EVERYTHING) and read == []  # never read twice


# -- PostgreSQL ---------------------------------------------------------------------------------

def test_metadata_filters_and_tags_on_postgres(make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The same columns, indexes and triggers on PostgreSQL (a language collation, where prefix
    ranges are compared in "C"), and the migration's ORM agreement there."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from mmsearch.storage.models import Base
    from tests.test_postgres import fresh_database

    lib = tmp_path / "lib"
    src = flickr_images(3)
    make_photo(src[0], lib / "paris.jpg", taken="2021:06:15 10:30:00", make="Canon", model="Canon EOS 5D Mark III",
               gps=PARIS)
    make_photo(src[1], lib / "versailles.jpg", taken="2021:06:20 14:00:00", make="SONY", model="ILCE-7M3",
               gps=VERSAILLES)
    make_photo(src[2], lib / "nyc.jpg", taken="2023:01:02 08:00:00", make="Apple", model="iPhone 12", gps=NEW_YORK)
    with fresh_database("TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en' LOCALE 'C.UTF-8'") as url:
        with Engine.open(make_settings(db_url=url)) as engine:
            with engine.catalog.engine.connect() as conn:
                assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
            assert engine.index([lib]).failed == 0

            def names(**filters: Any) -> set[str]:
                return {Path(h.path).name for h in engine.search(Query(text="x", k=10, **filters)).results}

            assert names(camera="CANON EOS") == {"paris.jpg"}
            assert names(camera="iphone") == {"nyc.jpg"}
            assert names(near=(*PARIS, 25)) == {"paris.jpg", "versailles.jpg"}
            assert names(date_from="2021-06-16", date_to="2021-12-31") == {"versailles.jpg"}
            assert names(min_size=1, ext=["jpg"], path=str(lib)) == {"paris.jpg", "versailles.jpg", "nyc.jpg"}
            # browsing and the totals of search pages: the same filters, the same SQL there
            rows, total = engine.browse(to="image", camera="CANON EOS", path="*.jpg")
            assert [Path(r.path).name for r in rows] == ["paris.jpg"] and total == 1
            assert engine.browse(near=(*PARIS, 25), limit=1)[1] == 2
            found = engine.search(Query(text="x", k=1, to="image", camera="sony", exclude_ids=[10**9]))
            assert (found.total, found.total_relation) == (1, "eq")
            assert engine.search(Query(text="x", k=1, to="image")).total == 3
            nyc = engine.lookup(lib / "nyc.jpg")[0]
            assert names(tags=["x"]) == set()
            assert engine.tag(nyc, add=["x"], set={"k": "v"}) == ["k=v", "x"]
            assert names(tags=["x", "k=v"]) == {"nyc.jpg"}  # the trigger moved the cached selection on
            assert engine.item(nyc).facts.camera_model == "iPhone 12"
