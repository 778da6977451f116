"""HTTP API: serving an item's file and thumbnail as browsers and players ask for them.

Byte ranges (RFC 9110 §14: an invalid Range is ignored, an unsatisfiable one is a 416 problem
naming the size), conditional requests (If-None-Match, If-Range), HEAD wherever GET, the media
type the catalog recorded from the content, and the reasons a bad ``t`` gets. One small catalog
per module: a few pictures named well and badly, a note, a short video; tiny random models.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from mmsearch.settings import Settings
from tests.conftest import CONFIG_DIR, flickr_images, served
from tests.video_media import photos, write_video

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, clip_spec: str) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("api-media")
    media = tmp / "media"
    media.mkdir()
    photo = flickr_images(1)[0]
    shutil.copy2(photo, media / "photo.jpg")
    picture = Image.open(photo).convert("RGB").resize((64, 48))
    picture.save(media / "really_png.jpg", "PNG")  # a PNG under a JPEG's name
    picture.save(media / "a.sgi", "SGI")
    picture.convert("L").save(media / "a.pgm", "PPM")
    mpo = [picture, picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    mpo[0].save(media / "camera.jpg", "MPO", save_all=True, append_images=mpo[1:])  # a 3D camera's JPEG
    mpo[0].save(media / "a.mpo", "MPO", save_all=True, append_images=mpo[1:])
    (media / "notes").mkdir()
    (media / "notes" / "dogs.txt").write_text("Two dogs play fetch on a sandy beach at sunset. " * 20)
    pics = photos(2)
    write_video(media / "clip.mp4", lambda t: pics[0] if t < 2 else pics[1], [i / 2 for i in range(12)])  # 6 s
    settings = Settings(catalog=tmp / "catalog", model=clip_spec, model_config_dirs=[CONFIG_DIR], audio=False,
                        batch_size=16, decode_workers=2, device="cpu")
    with served(settings, media, read_only=True) as (engine, client):
        ids = {p.name: engine.lookup(str(p))[0] for p in media.rglob("*") if p.is_file()}
        yield {"client": client, "media": media, "ids": ids}


@pytest.fixture(scope="module")
def client(world: dict[str, Any]) -> TestClient:
    return world["client"]


@pytest.fixture(scope="module")
def photo(world: dict[str, Any]) -> tuple[str, bytes]:
    """The photo's media URL and its bytes (tens of kB: room for ranges)."""
    data = (world["media"] / "photo.jpg").read_bytes()
    assert len(data) > 10_000
    return f"/items/{world['ids']['photo.jpg']}/media", data


def _is_problem(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == PROBLEM, r.headers
    body = r.json()
    assert body["status"] == status and isinstance(body["detail"], str) and body["detail"], body
    return body


# -- byte ranges --------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["{size}-", "{size}-{end}", "{end}-", "-0"],
                         ids=["at-end", "past-end", "far-past", "empty-suffix"])
def test_unsatisfiable_range_is_a_416_problem_naming_the_size(client: TestClient, photo: tuple[str, bytes],
                                                              spec: str) -> None:
    url, data = photo
    size = len(data)
    r = client.get(url, headers={"Range": "bytes=" + spec.format(size=size, end=size + 5000)})
    body = _is_problem(r, 416)
    assert str(size) in body["detail"], body
    assert r.headers["content-range"] == f"bytes */{size}"


@pytest.mark.parametrize("header", [
    "bytes=100-50", "bytes=abc", "bytes=", "bytes=-", "bytes=,", "bytes=1-2-3", "bytes=0-9,abc", "bytes=+1-5",
    "bytes=0x10-", "bytes=1_0-20", "bytes=0-9,30-20", "items=0-9", "0-9", "bytes=" + "9" * 5000 + "-",
], ids=lambda h: h if len(h) < 20 else "bytes=9...9-")
def test_an_invalid_range_is_ignored_and_the_whole_file_sent(client: TestClient, photo: tuple[str, bytes],
                                                             header: str) -> None:
    url, data = photo
    r = client.get(url, headers={"Range": header})
    assert r.status_code == 200, (r.status_code, r.text[:200])
    assert r.content == data and "content-range" not in r.headers
    assert r.headers["accept-ranges"] == "bytes"


@pytest.mark.parametrize("spec,start,end", [
    ("100-199", 100, 200), ("0-0", 0, 1), ("-100", -100, None), ("100-", 100, None), ("100-99999999", 100, None),
    ("0-9, {size}-", 0, 10), ("{size}-, 5-14", 5, 15), ("-99999999", 0, None),
], ids=["int", "one-byte", "suffix", "open", "end-clipped", "one-of-two-satisfiable", "first-unsatisfiable",
        "suffix-over-size"])
def test_a_satisfiable_range_is_a_206(client: TestClient, photo: tuple[str, bytes], spec: str, start: int,
                                      end: int | None) -> None:
    url, data = photo
    size = len(data)
    r = client.get(url, headers={"Range": "bytes=" + spec.format(size=size)})
    assert r.status_code == 206, (r.status_code, r.text[:200])
    first, stop = range(size)[start], size if end is None else end
    assert r.content == data[first:stop]
    assert r.headers["content-range"] == f"bytes {first}-{stop - 1}/{size}"
    assert r.headers["content-length"] == str(stop - first)


def test_several_ranges_are_a_multipart_206(client: TestClient, photo: tuple[str, bytes]) -> None:
    url, data = photo
    r = client.get(url, headers={"Range": "bytes=0-9,20-29"})
    assert r.status_code == 206 and r.headers["content-type"].startswith("multipart/byteranges; boundary=")
    assert data[0:10] in r.content and data[20:30] in r.content
    assert f"Content-Range: bytes 20-29/{len(data)}".encode() in r.content


def test_head_with_a_range_has_the_206_headers_and_no_body(client: TestClient, photo: tuple[str, bytes]) -> None:
    url, data = photo
    r = client.head(url, headers={"Range": "bytes=100-199"})
    assert r.status_code == 206 and r.content == b""
    assert r.headers["content-range"] == f"bytes 100-199/{len(data)}" and r.headers["content-length"] == "100"
    r = client.head(url, headers={"Range": f"bytes={len(data)}-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(data)}" and r.content == b""


def test_if_range_decides_between_part_and_whole(client: TestClient, photo: tuple[str, bytes]) -> None:
    url, data = photo
    first = client.get(url)
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    for validator in (etag, modified):  # still current: the part
        r = client.get(url, headers={"Range": "bytes=0-9", "If-Range": validator})
        assert r.status_code == 206 and r.content == data[:10], validator
    for stale in ('"stale"', "W/" + etag, "Thu, 01 Jan 1970 00:00:00 GMT"):  # changed since: the whole file
        r = client.get(url, headers={"Range": "bytes=0-9", "If-Range": stale})
        assert r.status_code == 200 and r.content == data, stale
        r = client.get(url, headers={"Range": f"bytes={len(data)}-", "If-Range": stale})
        assert r.status_code == 200 and r.content == data, stale  # no 416 for a range it would not use


# -- conditional requests -----------------------------------------------------------------------

def _matching(etag: str) -> list[str]:
    """If-None-Match values that match ``etag`` under weak comparison (RFC 9110 §13.1.2)."""
    return [etag, "W/" + etag, "*", f'"nope", {etag}', f'"a",W/{etag} , "b"', f' {etag} ']


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("form", range(6), ids=["same", "weak", "star", "listed", "listed-weak", "spaced"])
def test_a_current_etag_is_304_without_a_body(client: TestClient, photo: tuple[str, bytes], method: str,
                                              form: int) -> None:
    url, _ = photo
    etag = client.get(url).headers["etag"]
    r = client.request(method, url, headers={"If-None-Match": _matching(etag)[form]})
    assert r.status_code == 304 and r.content == b"", (r.status_code, r.headers)
    assert r.headers["etag"] == etag and "private" in r.headers["cache-control"]
    assert "content-length" not in r.headers


def test_if_none_match_wins_over_range(client: TestClient, photo: tuple[str, bytes]) -> None:
    url, data = photo
    etag = client.get(url).headers["etag"]
    for rng in ("bytes=0-9", f"bytes={len(data)}-", "bytes=abc"):
        assert client.get(url, headers={"If-None-Match": etag, "Range": rng}).status_code == 304, rng


@pytest.mark.parametrize("value", ['"nope"', 'W/"nope"', '"a", "b"', "garbage"])
def test_another_etag_gets_the_file(client: TestClient, photo: tuple[str, bytes], value: str) -> None:
    url, data = photo
    r = client.get(url, headers={"If-None-Match": value})
    assert r.status_code == 200 and r.content == data


def test_the_etag_changes_with_the_file(client: TestClient, world: dict[str, Any]) -> None:
    note = world["media"] / "notes" / "dogs.txt"
    url = f"/items/{world['ids']['dogs.txt']}/media"
    before = os.stat(note)
    etag = client.get(url).headers["etag"]
    try:
        os.utime(note, ns=(before.st_atime_ns, before.st_mtime_ns + 5_000_000_000))
        r = client.get(url, headers={"If-None-Match": etag})
        assert r.status_code == 200 and r.headers["etag"] != etag
        assert client.get(url, headers={"If-None-Match": r.headers["etag"]}).status_code == 304
    finally:
        os.utime(note, ns=(before.st_atime_ns, before.st_mtime_ns))


@pytest.mark.parametrize("params", [{"size": 100}, {"t": 3}], ids=["image", "video-frame"])
def test_thumbnail_etags_compare_weakly_and_in_lists(client: TestClient, world: dict[str, Any],
                                                     params: dict[str, Any]) -> None:
    name = "photo.jpg" if "size" in params else "clip.mp4"
    url = f"/items/{world['ids'][name]}/thumbnail"
    first = client.get(url, params=params)
    assert first.status_code == 200 and first.content
    for value in _matching(first.headers["etag"]):
        for method in ("GET", "HEAD"):
            r = client.request(method, url, params=params, headers={"If-None-Match": value})
            assert r.status_code == 304 and r.content == b"", (method, value, r.status_code)
    assert client.get(url, params=params, headers={"If-None-Match": '"nope"'}).status_code == 200


# -- HEAD ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("path,params", [
    ("/items/{photo}", {}), ("/items/{video}", {}), ("/items/{photo}/media", {}), ("/items/{video}/media", {}),
    ("/items/{photo}/thumbnail", {}), ("/items/{video}/thumbnail", {"t": 3}), ("/items/{video}/thumbnail", {}),
], ids=["item", "video-item", "media", "video-media", "thumbnail", "frame", "video-thumbnail"])
def test_head_answers_what_get_would_without_the_body(client: TestClient, world: dict[str, Any], path: str,
                                                      params: dict[str, Any]) -> None:
    url = path.format(photo=world["ids"]["photo.jpg"], video=world["ids"]["clip.mp4"])
    get, head = client.get(url, params=params), client.head(url, params=params)
    assert get.status_code == 200 and get.content, get.text[:200]
    assert head.status_code == 200 and head.content == b"", (head.status_code, head.headers)
    for name in ("content-type", "content-length", "etag", "cache-control"):
        assert head.headers.get(name) == get.headers.get(name), name
    assert int(head.headers["content-length"]) == len(get.content)


@pytest.mark.parametrize("url", ["/healthz", "/stats", "/catalog", "/jobs", "/search?text=a+dog&k=3", "/openapi.json", "/"])
def test_head_on_every_other_get_route_is_its_get_without_the_body(client: TestClient, url: str) -> None:
    get, head = client.get(url), client.head(url)
    assert get.status_code == head.status_code == 200 and get.content and head.content == b""
    timed = url.startswith("/search")  # its timings_ms differ from one answer to the next
    for name in ("content-type", "x-content-type-options", *(() if timed else ("content-length",))):
        assert head.headers.get(name) == get.headers.get(name), name
    assert int(head.headers["content-length"]) > 0


def test_head_where_there_is_no_get_is_405(client: TestClient) -> None:
    r = client.head("/embed")
    assert r.status_code == 405 and r.content == b""


@pytest.mark.parametrize("path", ["/items/999999", "/items/999999/media", "/items/999999/thumbnail"])
def test_head_of_a_missing_item_is_404(client: TestClient, path: str) -> None:
    r = client.head(path)
    assert r.status_code == 404 and r.headers["content-type"] == PROBLEM and r.content == b""


def test_head_of_a_note_thumbnail_is_404_like_get(client: TestClient, world: dict[str, Any]) -> None:
    url = f"/items/{world['ids']['dogs.txt']}/thumbnail"
    assert client.get(url).status_code == 404 and client.head(url).status_code == 404


# -- media types --------------------------------------------------------------------------------

@pytest.mark.parametrize("name,served", [
    ("really_png.jpg", "image/png"), ("a.sgi", "image/sgi"), ("a.pgm", "image/x-portable-anymap"),
    ("photo.jpg", "image/jpeg"), ("dogs.txt", "text/plain; charset=utf-8"), ("clip.mp4", "video/mp4"),
])
def test_a_file_is_served_as_the_type_the_catalog_recorded(client: TestClient, world: dict[str, Any], name: str,
                                                           served: str) -> None:
    item_id = world["ids"][name]
    recorded = client.get(f"/items/{item_id}").json()["mime"]
    assert served.split(";")[0] == recorded, recorded  # the catalog read it from the content
    for r in (client.get(f"/items/{item_id}/media"), client.head(f"/items/{item_id}/media"),
              client.get(f"/items/{item_id}/media", headers={"Range": "bytes=0-9"})):
        assert r.headers["content-type"] == served, (r.request.method, r.headers)
        assert r.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("name", ["camera.jpg", "a.mpo"])
def test_a_multi_picture_jpeg_is_served_as_a_jpeg(client: TestClient, world: dict[str, Any], name: str) -> None:
    """Pillow calls a 3D camera's JPEG "MPO" (image/mpo, unknown to browsers); its first picture
    is a plain JPEG, which is what a browser shows."""
    item_id = world["ids"][name]
    assert client.get(f"/items/{item_id}").json()["mime"] == "image/mpo"
    r = client.get(f"/items/{item_id}/media")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.content[:3] == b"\xff\xd8\xff"


# -- thumbnail times ----------------------------------------------------------------------------

@pytest.mark.parametrize("t,reason", [
    ("nan", "finite"), ("NaN", "finite"), ("inf", "finite"), ("-inf", "finite"), ("1e400", "finite"),
    ("-1", "greater than or equal to 0"), ("-0.5", "greater than or equal to 0"), ("abc", "valid number"),
    ("", "valid number"), ("1e8", "less than or equal to"),
])
def test_a_bad_time_is_a_422_that_says_why(client: TestClient, world: dict[str, Any], t: str, reason: str) -> None:
    r = client.get(f"/items/{world['ids']['clip.mp4']}/thumbnail", params={"t": t})
    body = _is_problem(r, 422)
    assert body["detail"].startswith("t: ") and reason in body["detail"], body["detail"]
    if reason != "less than or equal to":
        assert "10000000" not in body["detail"], body["detail"]


@pytest.mark.parametrize("t", ["0", "2.5", "1e3"])
def test_a_good_time_is_a_frame(client: TestClient, world: dict[str, Any], t: str) -> None:
    r = client.get(f"/items/{world['ids']['clip.mp4']}/thumbnail", params={"t": t})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(r.content)).size == (96, 64)


def test_a_thumbnails_etag_outlives_the_process() -> None:
    """A browser's cached thumbnail is still current after a server restart: the tag is a digest
    of what the thumbnail is made of, not Python's per-process hash."""
    import subprocess
    import sys

    code = ("from pathlib import Path; from mmsearch.api.media import Thumbnails; "
            f"print(Thumbnails(10**8).get(Path({str(flickr_images(1)[0])!r}), 128)[1])")
    tags = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           cwd=Path(__file__).resolve().parents[1]).stdout for _ in range(2)}
    assert len(tags) == 1 and tags.pop().startswith('"t')
