"""HTTP API: every endpoint, its errors, the safety rules, and micro-batching.

One catalog per module (24 Flickr photos, their captions, two notes, plus files planted to
test path safety), indexed once, served by an app with an API key. Models are tiny and random:
the tests check machinery (an image finds itself first), not semantics.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from mmsearch.api.app import create_app
from mmsearch.api.batching import BatchingEncoder
from mmsearch.api.security import check_bind, is_loopback
from mmsearch.engine import Engine
from mmsearch.errors import MMSearchError
from mmsearch.settings import Settings
from tests.conftest import served

TESTS = Path(__file__).resolve().parent
DATA = TESTS.parents[1] / "shared" / "data"
FLICKR = DATA / "flickr8k-1k"
TUXPAINT = DATA / "tuxpaint"
CONFIG_DIR = TESTS / "assets"
KEY = "test-key-0123"
UPLOAD_LIMIT = 400_000  # above every test photo (< 250 kB)


def build_media(root: Path, outside: Path) -> Path:
    """24 photos in two folders with one caption each, two notes, and traps: a symlink out of the
    root and a captions file whose image path climbs out of it."""
    images = sorted((FLICKR / "images").glob("*.jpg"))[:24]
    rows = {r["image"]: r["caption"] for r in csv.DictReader(open(FLICKR / "captions.csv", newline=""))}
    root.mkdir(parents=True)
    with open(root / "captions.csv", "w", newline="") as out:
        w = csv.writer(out)
        w.writerow(["image", "caption"])
        for i, src in enumerate(images):
            sub = "beach" if i % 2 else "city"
            (root / sub).mkdir(exist_ok=True)
            shutil.copy2(src, root / sub / src.name)
            w.writerow([f"{sub}/{src.name}", rows[src.name]])
    (root / "notes").mkdir()
    (root / "notes" / "dogs.txt").write_text("Two dogs play fetch on a sandy beach at sunset.")
    (root / "notes" / "städte.md").write_text("# Städte\n\nA busy city street with yellow taxis.")
    outside.mkdir(parents=True)
    secret = outside / "secret.jpg"
    shutil.copy2(sorted((FLICKR / "images").glob("*.jpg"))[30], secret)
    (root / "trap").mkdir()
    os.symlink(secret, root / "trap" / "escape.jpg")
    with open(root / "trap" / "evil.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["image", "caption"], ["../../outside/secret.jpg", "a climbing caption"]])
    return root


def settings_for(tmp: Path, clip_spec: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(catalog=tmp / "catalog", model=clip_spec, model_config_dirs=[CONFIG_DIR],
                                  audio=False, batch_size=16, decode_workers=2, device="cpu")
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, clip_spec: str) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("api")
    media = build_media(tmp / "media", tmp / "outside")
    # follow_links: the planted link and caption get into the catalog (as with `index --follow-links`),
    # so what keeps them from being served is the server's own guard.
    settings = settings_for(tmp, clip_spec, api_key=KEY, max_upload_bytes=UPLOAD_LIMIT, index_roots=[media],
                            follow_links=True)
    with served(settings, media) as (engine, client):
        yield {"client": client, "engine": engine, "media": media, "tmp": tmp, "app": client.app}


@pytest.fixture(scope="module")
def client(world: dict[str, Any]) -> TestClient:
    return world["client"]


@pytest.fixture(scope="module")
def items(world: dict[str, Any]) -> dict[str, Any]:
    """Item ids by what they are, read from the catalog."""
    engine: Engine = world["engine"]
    media: Path = world["media"]
    out: dict[str, Any] = {"images": {}, "captions": {}}
    with engine.catalog.sessions() as s:
        from sqlalchemy import select

        from mmsearch.storage.models import File, Item

        for item_id, path, modality, ref in s.execute(
                select(Item.id, File.path, Item.modality, Item.ref_path).join(File, Item.file_id == File.id)):
            if modality == "image":
                out["images"][path] = item_id
            elif ref:
                out["captions"][ref] = item_id
            if path.endswith("dogs.txt"):
                out["note"] = item_id
            if path.endswith("städte.md"):
                out["note_md"] = item_id
    out["escape"] = out["images"].pop(str(media / "trap" / "escape.jpg"))
    out["evil_caption"] = next(i for ref, i in out["captions"].items() if "outside" in ref)
    out["first_image"] = min(out["images"].items())  # (path, id)
    return out


def jpeg(path: Path) -> bytes:
    return path.read_bytes()


# -- service ------------------------------------------------------------------------------------

def test_liveness_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    for _ in range(600):  # the models load in the background from start-up: 503 until they are in
        if ready.status_code == 200:
            break
        assert ready.status_code == 503 and ready.json()["ready"] is False and ready.headers["retry-after"]
        time.sleep(0.1)
        ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["ready"] is True and body["models"]["clip"].startswith("open_clip:mmtest-tiny@")
    assert "off" in body["audio"]


def test_stats(client: TestClient) -> None:
    r = client.get("/stats")
    assert r.status_code == 200
    s = r.json()
    assert s["items"]["image"] == 25 and s["items"]["text"] >= 26
    assert s["collections"]["clip.image"]["index"]["ntotal"] == 25
    assert s["service"]["writes_need_key"] is True and s["service"]["max_upload_bytes"] == UPLOAD_LIMIT


def test_catalog_summary(client: TestClient, world: dict[str, Any]) -> None:
    info = client.get("/catalog").json()
    assert info["roots"] == [str(world["media"])] and info["items"]["image"] == 25
    assert info["models"]["clip"].startswith("open_clip:")


def test_page_and_static_assets(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="q"' in page.text and 'name="viewport"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset, ctype in (("app.js", "javascript"), ("style.css", "text/css")):
        assert f"/static/{asset}?v=" in page.text
        r = client.get(f"/static/{asset}")
        assert r.status_code == 200 and ctype in r.headers["content-type"]
        assert "immutable" in r.headers["cache-control"]
    assert client.get("/static/nope.js").status_code == 404


def test_openapi_is_complete(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path, methods in {
        "/search": {"get", "post"}, "/similar": {"post"}, "/similar/batch": {"post"}, "/embed": {"post"},
        "/items/{item_id}": {"get", "delete"}, "/items/{item_id}/similar": {"get"},
        "/items/{item_id}/media": {"get"}, "/items/{item_id}/thumbnail": {"get"}, "/stats": {"get"},
        "/healthz": {"get"}, "/readyz": {"get"}, "/catalog": {"get"},
        "/jobs": {"get", "post"}, "/jobs/{job_id}": {"get", "delete"},
    }.items():
        assert methods <= set(paths[path]), path
    body = paths["/search"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    schemas = spec["components"]["schemas"]
    for name in ("SearchRequest", "SearchForm", "SearchPage", "Hit", "EmbedRequest", "EmbedForm", "JobOut", "ItemOut"):
        assert name in schemas, name
    assert schemas["SearchForm"]["properties"]["image"]["format"] == "binary"
    assert {"APIKeyHeader", "HTTPBearer"} <= set(spec["components"]["securitySchemes"])
    assert client.get("/docs").status_code == 200


# -- search -------------------------------------------------------------------------------------

def test_search_get(client: TestClient) -> None:
    r = client.get("/search", params={"text": "a dog on the beach", "k": 5})
    assert r.status_code == 200, r.text
    page = r.json()
    assert len(page["results"]) == 5 and page["k"] == 5 and page["offset"] == 0 and page["next_offset"] == 5
    assert {"embed", "ann", "rerank", "hydrate", "total"} <= set(page["timings_ms"])
    assert "total;dur=" in r.headers["server-timing"]
    hit = page["results"][0]
    assert {"id", "path", "modality", "score", "collection"} <= set(hit)


def test_search_post_json_to_image(client: TestClient) -> None:
    r = client.post("/search", json={"text": "a red car", "to": "image", "k": 10})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 10 and {h["modality"] for h in results} == {"image"}
    scores = [h["score"] for h in results]
    assert scores == sorted(scores, reverse=True)


def test_search_by_uploaded_image_finds_itself(client: TestClient, items: dict[str, Any]) -> None:
    path, item_id = items["first_image"]
    r = client.post("/search", files={"image": ("q.jpg", jpeg(Path(path)), "image/jpeg")},
                    data={"to": "image", "k": "3"})
    assert r.status_code == 200, r.text
    first = r.json()["results"][0]
    assert first["id"] == item_id and first["score"] > 0.99


def test_search_image_and_text_together(client: TestClient, items: dict[str, Any]) -> None:
    path, _ = items["first_image"]
    r = client.post("/search", files={"image": ("q.jpg", jpeg(Path(path)), "image/jpeg")},
                    data={"text": "at night", "negative_text": ["blurry", "dark"], "k": "4"})
    assert r.status_code == 200, r.text
    assert len(r.json()["results"]) == 4


def test_search_pagination(client: TestClient) -> None:
    full = client.get("/search", params={"text": "people", "to": "image", "k": 10}).json()["results"]
    p1 = client.get("/search", params={"text": "people", "to": "image", "k": 5}).json()
    p2 = client.get("/search", params={"text": "people", "to": "image", "k": 5, "offset": p1["next_offset"]}).json()
    assert [h["id"] for h in p1["results"] + p2["results"]] == [h["id"] for h in full]
    last = client.get("/search", params={"text": "people", "to": "image", "k": 10, "offset": 20}).json()
    assert len(last["results"]) == 5 and last["next_offset"] is None


def test_search_filters(client: TestClient, world: dict[str, Any], items: dict[str, Any]) -> None:
    beach = str(world["media"] / "beach")
    r = client.get("/search", params={"text": "water", "to": "image", "k": 50, "path": beach})
    results = r.json()["results"]
    assert len(results) == 12 and all(h["path"].startswith(beach + "/") for h in results)
    path, item_id = items["first_image"]
    r = client.post("/search", json={"text": "water", "to": "image", "k": 50, "exclude_ids": [item_id]})
    assert item_id not in [h["id"] for h in r.json()["results"]]
    r = client.post("/search", json={"text": "water", "k": 50, "min_score": 0.99})
    assert all(h["score"] >= 0.99 for h in r.json()["results"])
    r = client.post("/search", json={"text": "water", "to": "image", "k": 5, "diversity": 0.5})
    assert r.status_code == 200 and len(r.json()["results"]) == 5


def test_search_by_item_ids(client: TestClient, items: dict[str, Any]) -> None:
    _, item_id = items["first_image"]
    r = client.get("/search", params={"item_ids": [item_id], "to": "image", "k": 3})
    assert r.status_code == 200, r.text
    assert item_id not in [h["id"] for h in r.json()["results"]]


@pytest.mark.parametrize("body,status,fragment", [
    ({}, 400, "empty query"),
    ({"text": ""}, 400, "empty query"),
    ({"text": "x", "to": "film"}, 422, "to"),
    ({"text": "x", "k": 0}, 422, "k"),
    ({"text": "x", "k": 5000}, 422, "k"),
    ({"text": "x", "offset": -1}, 422, "offset"),
    ({"text": "x", "min_score": 2}, 422, "min_score"),
    ({"text": "x", "colour": "red"}, 422, "colour"),
    ({"text": "a\x00b"}, 422, "NUL"),
    ({"text": "x" * 5000}, 422, "text"),
    ({"item_ids": [2**70]}, 422, "item_ids"),
    ({"item_ids": [999999]}, 404, "no item 999999"),
    ({"text": "x", "text_weight": "NaN"}, 422, "text_weight"),
    ({"text": "x", "path": ""}, 422, "path"),  # an empty path would match everything
    ({"text": "   "}, 400, "empty query"),  # only spaces: no text
])
def test_search_rejects_bad_queries(client: TestClient, body: dict, status: int, fragment: str) -> None:
    r = client.post("/search", json=body)
    assert r.status_code == status, r.text
    assert fragment in str(r.json()["detail"])


def test_search_rejects_bad_bodies(client: TestClient) -> None:
    r = client.post("/search", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["detail"]
    r = client.post("/search", json=["a", "list"])
    assert r.status_code == 400 and "object" in r.json()["detail"]
    deep = b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = client.post("/search", content=deep, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "nested" in r.json()["detail"]
    r = client.post("/search", content=b"text=dog", headers={"content-type": "text/plain"})
    assert r.status_code == 415
    r = client.post("/search", data={"text": "dog", "k": "many"})
    assert r.status_code == 422 and r.json()["errors"][0]["loc"][-1] == "k" and r.json()["detail"].startswith("k: ")
    r = client.post("/search", data={"image": "not a file"})
    assert r.status_code == 422 and "file" in r.json()["detail"]
    r = client.post("/search", files={"text": ("t.txt", b"dog", "text/plain")})
    assert r.status_code in (400, 422)
    r = client.get("/search", params={"text": "x", "k": "ten"})
    assert r.status_code == 422


def test_bad_uploads(client: TestClient) -> None:
    r = client.post("/search", files={"image": ("q.jpg", b"this is not a jpeg", "image/jpeg")})
    assert r.status_code == 400 and "query image" in r.json()["detail"]
    r = client.post("/search", files={"image": ("q.jpg", b"", "image/jpeg")})
    assert r.status_code == 400
    truncated = jpeg(sorted((FLICKR / "images").glob("*.jpg"))[0])[:3000]
    r = client.post("/search", files={"image": ("q.jpg", truncated, "image/jpeg")})
    assert r.status_code == 400
    r = client.post("/search", files={"audio": ("q.ogg", b"OggS....", "audio/ogg")})
    assert r.status_code == 400 and "audio" in r.json()["detail"]


def test_oversized_upload(client: TestClient) -> None:
    big = os.urandom(UPLOAD_LIMIT + 1000)
    r = client.post("/search", files={"image": ("big.jpg", big, "image/jpeg")})
    assert r.status_code == 413 and "limit" in r.json()["detail"]

    huge = big * 2

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies as the body streams in
        for i in range(0, len(huge), 65536):
            yield huge[i:i + 65536]

    r = client.post("/search", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = client.post("/embed", files={"image": ("big.jpg", big[:UPLOAD_LIMIT + 10], "image/jpeg")})
    assert r.status_code == 413
    r = client.post("/search", content=huge, headers={"content-type": "application/json"})
    assert r.status_code == 413  # refused from Content-Length alone


# -- similar ------------------------------------------------------------------------------------

def test_item_similar(client: TestClient, items: dict[str, Any]) -> None:
    _, item_id = items["first_image"]
    r = client.get(f"/items/{item_id}/similar", params={"k": 4})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 4 and {h["modality"] for h in results} == {"image"}
    assert item_id not in [h["id"] for h in results]
    r = client.get(f"/items/{item_id}/similar", params={"k": 4, "to": "text"})
    assert {h["modality"] for h in r.json()["results"]} == {"text"}
    assert client.get("/items/999999/similar").status_code == 404
    assert client.get(f"/items/{item_id}/similar", params={"k": 0}).status_code == 422


def test_similar_many_and_batch(client: TestClient, items: dict[str, Any]) -> None:
    ids = sorted(items["images"].values())[:3]
    r = client.post("/similar", json={"item_ids": ids, "k": 5})
    assert r.status_code == 200, r.text
    assert not set(ids) & {h["id"] for h in r.json()["results"]}
    assert client.post("/similar", json={"item_ids": []}).status_code == 422
    assert client.post("/similar", json={"item_ids": [ids[0], 999999]}).status_code == 404

    r = client.post("/similar/batch", json={"item_ids": [*ids, 999999], "k": 3, "to": "image"})
    assert r.status_code == 200, r.text
    entries = r.json()["results"]
    assert [e["item_id"] for e in entries] == [*ids, 999999]
    for e, item_id in zip(entries[:3], ids, strict=True):
        assert len(e["results"]) == 3 and item_id not in [h["id"] for h in e["results"]] and e["error"] is None
    assert entries[3]["results"] == [] and "999999" in entries[3]["error"]
    assert client.post("/similar/batch", json={"item_ids": list(range(1, 200))}).status_code == 422


# -- embed --------------------------------------------------------------------------------------

def test_embed_text(client: TestClient, world: dict[str, Any]) -> None:
    r = client.post("/embed", json={"text": "a dog"})
    assert r.status_code == 200, r.text
    e = r.json()
    assert e["space"] == "clip" and e["dim"] == len(e["vector"]) == 32
    assert abs(np.linalg.norm(e["vector"]) - 1) < 1e-4
    direct = world["engine"].embed(text="a dog").vector
    assert np.allclose(e["vector"], direct, atol=1e-5)
    form = client.post("/embed", data={"text": "a dog"})
    assert form.status_code == 200 and np.allclose(form.json()["vector"], direct, atol=1e-5)


def test_embed_image(client: TestClient, items: dict[str, Any]) -> None:
    path, _ = items["first_image"]
    r = client.post("/embed", files={"image": ("q.jpg", jpeg(Path(path)), "image/jpeg")})
    assert r.status_code == 200, r.text
    assert r.json()["space"] == "clip" and r.json()["dim"] == 32


def test_embed_errors(client: TestClient, items: dict[str, Any]) -> None:
    path, _ = items["first_image"]
    assert client.post("/embed", json={}).status_code == 422
    assert client.post("/embed", json={"text": "x", "space": "nope"}).status_code == 422
    assert client.post("/embed", json={"text": "x", "space": "clap"}).status_code == 400  # audio is off here
    r = client.post("/embed", files={"image": ("q.jpg", jpeg(Path(path)), "image/jpeg")}, data={"text": "x"})
    assert r.status_code == 400 and "exactly one" in r.json()["detail"]
    r = client.post("/embed", files={"image": ("q.jpg", b"junk", "image/jpeg")})
    assert r.status_code == 400
    assert client.post("/embed", files={"audio": ("q.ogg", b"junk", "audio/ogg")}).status_code == 400


# -- items, media, thumbnails -------------------------------------------------------------------

def test_item_metadata(client: TestClient, items: dict[str, Any]) -> None:
    path, item_id = items["first_image"]
    r = client.get(f"/items/{item_id}")
    assert r.status_code == 200
    it = r.json()
    assert it["path"] == path and it["modality"] == "image" and it["size"] == Path(path).stat().st_size
    assert it["media_url"] == f"/items/{item_id}/media" and it["thumbnail_url"] == f"/items/{item_id}/thumbnail"
    note = client.get(f"/items/{items['note']}").json()
    assert note["modality"] == "text" and note["thumbnail_url"] is None and "dogs" in note["text"]
    caption = client.get(f"/items/{items['captions'][path]}").json()
    assert caption["ref_path"] == path and caption["thumbnail_url"]


def test_browse_pages_every_item_in_path_order(client: TestClient, world: dict[str, Any],
                                               items: dict[str, Any]) -> None:
    media: Path = world["media"]
    images = sorted([*items["images"], str(media / "trap" / "escape.jpg")])
    seen: list[dict[str, Any]] = []
    offset: int | None = 0
    while offset is not None:
        r = client.get("/browse", params={"to": "image", "offset": offset, "limit": 10})
        assert r.status_code == 200
        page = r.json()
        assert page["total"] == len(images) and page["offset"] == offset and len(page["items"]) <= 10
        seen += page["items"]
        offset = page["next_offset"]
    assert [it["path"] for it in seen] == images  # every image once, in path order
    first = seen[0]
    assert first["thumbnail_url"] == f"/items/{first['id']}/thumbnail" and first["width"] and first["size"]

    beach = client.get("/browse", params={"path": "beach", "limit": 200}).json()
    assert beach["total"] == 12 and {Path(it["path"]).parent.name for it in beach["items"]} == {"beach"}
    everything = client.get("/browse", params={"limit": 200}).json()
    assert everything["next_offset"] is None and len(everything["items"]) == everything["total"]
    assert {it["modality"] for it in everything["items"]} == {"image", "text"}
    captions = [it for it in everything["items"] if it["ref_path"]]
    assert [it["ordinal"] for it in captions if it["path"].endswith("media/captions.csv")] == list(range(24))
    path, photo = items["first_image"]
    described = client.get("/browse", params={"ref": path}).json()
    assert [it["id"] for it in described["items"]] == [items["captions"][path]] and described["total"] == 1
    assert client.get("/browse", params={"to": "audio"}).json() == \
        {"items": [], "total": 0, "offset": 0, "limit": 50, "next_offset": None}
    for bad, status in [({"path": "beach/[z-a]*"}, 400), ({"limit": 0}, 422), ({"offset": -1}, 422),
                        ({"to": "nope"}, 422), ({"min_szie": 10}, 422), ({"min_size": "lots"}, 422),
                        ({"near": "100,0,1"}, 422), ({"date_from": "yesterday"}, 422)]:
        r = client.get("/browse", params=bad)
        assert r.status_code == status, (bad, r.text)
        assert r.json()["detail"]


def test_browse_applies_the_filters_a_search_takes(client: TestClient, world: dict[str, Any],
                                                   items: dict[str, Any]) -> None:
    media: Path = world["media"]
    images = {p: i for p, i in [*items["images"].items(), (str(media / "trap" / "escape.jpg"), items["escape"])]}
    sizes = {p: os.stat(p).st_size for p in images}
    mtimes = {p: os.stat(p).st_mtime for p in images}

    def browse(**params: Any) -> tuple[list[str], int]:
        page = client.get("/browse", params={"limit": 200, **params})
        assert page.status_code == 200, page.text
        body = page.json()
        assert len(body["items"]) == body["total"]
        return [it["path"] for it in body["items"]], body["total"]

    def searched(**params: Any) -> set[str]:  # what a search with the same filters can return
        r = client.get("/search", params={"text": "a photo", "k": 200, **params})
        assert r.status_code == 200, r.text
        return {h["path"] for h in r.json()["results"]}

    glob, total = browse(path="beach/*.jpg")
    assert total == 12 and glob == sorted(glob) and all(Path(p).parent.name == "beach" for p in glob)
    assert set(glob) == searched(path="beach/*.jpg")
    cut = sorted(sizes.values())[len(sizes) // 2]
    big, _ = browse(to="image", min_size=cut)
    assert set(big) == {p for p, n in sizes.items() if n >= cut} == searched(to="image", min_size=cut)
    day = datetime.fromtimestamp(sorted(mtimes.values())[5], tz=timezone.utc).date()
    older, _ = browse(to="image", date_to=day.isoformat())
    assert set(older) == {p for p, t in mtimes.items() if datetime.fromtimestamp(t, tz=timezone.utc).date() <= day}
    assert set(older) == searched(to="image", date_to=day.isoformat())
    csvs, total = browse(ext="csv", path="beach")  # two conditions: the beach captions are in the root's csv
    assert total == 0 and csvs == []
    csvs, total = browse(ext=["csv"])
    assert total == len(items["captions"]) and set(csvs) <= {str(media / "captions.csv"), str(media / "trap" / "evil.csv")}
    notes, _ = browse(ext="txt,md")
    assert notes == sorted([str(media / "notes" / "dogs.txt"), str(media / "notes" / "städte.md")])
    assert browse(camera="no such camera")[1] == 0 and browse(near="10,10,5")[1] == 0  # no EXIF in these
    assert browse(min_duration=1)[1] == 0  # no sounds or videos
    # paged: the same items a page at a time, with the total on every page
    first = client.get("/browse", params={"path": "city/*.jpg", "limit": 5}).json()
    rest = client.get("/browse", params={"path": "city/*.jpg", "limit": 20, "offset": 5}).json()
    assert first["total"] == rest["total"] == 12 and first["next_offset"] == 5 and rest["next_offset"] is None
    assert [it["path"] for it in first["items"] + rest["items"]] == browse(path="city/*.jpg")[0]


@pytest.mark.parametrize("bad", ["999999", "0", "-1", "abc", "1.5", str(2**64)])
def test_unknown_or_malformed_item_id(client: TestClient, bad: str) -> None:
    r = client.get(f"/items/{bad}")
    assert r.status_code == (404 if bad == "999999" else 422)
    assert "detail" in r.json()
    assert client.get(f"/items/{bad}/media").status_code in (404, 422)


def test_media(client: TestClient, items: dict[str, Any]) -> None:
    path, item_id = items["first_image"]
    r = client.get(f"/items/{item_id}/media")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.content == Path(path).read_bytes()
    assert r.headers["accept-ranges"] == "bytes" and r.headers["x-content-type-options"] == "nosniff"
    r = client.get(f"/items/{item_id}/media", headers={"Range": "bytes=100-199"})
    assert r.status_code == 206 and r.content == Path(path).read_bytes()[100:200]
    assert r.headers["content-range"] == f"bytes 100-199/{Path(path).stat().st_size}"
    r = client.get(f"/items/{item_id}/media", headers={"Range": "bytes=99999999-"})
    assert r.status_code == 416
    r = client.get(f"/items/{items['note_md']}/media")
    assert r.status_code == 200 and r.headers["content-type"] == "text/markdown; charset=utf-8"
    assert "Städte" in r.text


def test_thumbnails(client: TestClient, items: dict[str, Any]) -> None:
    path, item_id = items["first_image"]
    r = client.get(f"/items/{item_id}/thumbnail", params={"size": 100})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    img = Image.open(io.BytesIO(r.content))
    assert img.format == "JPEG" and max(img.size) == 128  # sizes round up to a fixed set
    again = client.get(f"/items/{item_id}/thumbnail", params={"size": 100},
                       headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304
    caption = client.get(f"/items/{items['captions'][path]}/thumbnail")
    assert caption.status_code == 200
    assert client.get(f"/items/{items['note']}/thumbnail").status_code == 404
    assert client.get(f"/items/{item_id}/thumbnail", params={"size": 5000}).status_code == 422


def test_traversal_attempts(client: TestClient, items: dict[str, Any]) -> None:
    # A symlink inside a root that points outside it: indexed, but its bytes are not served.
    r = client.get(f"/items/{items['escape']}/media")
    assert r.status_code == 403 and "outside" in r.json()["detail"]
    assert client.get(f"/items/{items['escape']}/thumbnail").status_code == 403
    # A caption whose image path climbs out of the root.
    r = client.get(f"/items/{items['evil_caption']}/thumbnail")
    assert r.status_code == 403
    # Paths in URLs go nowhere.
    for url in ("/items/..%2F..%2Fetc%2Fpasswd/media", "/items/1/../../etc/passwd", "/static/../../etc/passwd",
                "/static/%2e%2e/%2e%2e/etc/passwd", "/static/..%2F..%2Fmmsearch%2Fsettings.py",
                "/items/%2Fetc%2Fpasswd/thumbnail"):
        r = client.get(url)
        assert r.status_code in (404, 422), (url, r.status_code)
        assert "root:" not in r.text


# -- writes and keys ----------------------------------------------------------------------------

def test_writes_need_the_key(client: TestClient, items: dict[str, Any], world: dict[str, Any]) -> None:
    note = items["note"]
    r = client.delete(f"/items/{note}")
    assert r.status_code == 401 and "API key" in r.json()["detail"]
    assert client.delete(f"/items/{note}", headers={"X-API-Key": "wrong"}).status_code == 403
    assert client.post("/jobs", json={"path": str(world["media"])}).status_code == 401
    assert client.get(f"/items/{note}").status_code == 200


def test_delete_item(client: TestClient, items: dict[str, Any]) -> None:
    note = items["note"]
    before = client.post("/search", json={"text": "Two dogs play fetch on a sandy beach at sunset.", "to": "text",
                                          "k": 50}).json()["results"]
    assert note in [h["id"] for h in before]
    r = client.delete(f"/items/{note}", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 204 and r.content == b""
    assert client.get(f"/items/{note}").status_code == 404
    after = client.post("/search", json={"text": "Two dogs play fetch on a sandy beach at sunset.", "to": "text",
                                         "k": 50}).json()["results"]
    assert note not in [h["id"] for h in after]
    assert client.delete(f"/items/{note}", headers={"X-API-Key": KEY}).status_code == 404


def test_read_only_and_open_servers(world: dict[str, Any], tmp_path: Path, clip_spec: str) -> None:
    with TestClient(create_app(world["engine"], read_only=True)) as ro:
        r = ro.delete("/items/1", headers={"X-API-Key": KEY})
        assert r.status_code == 403 and "read-only" in r.json()["detail"]
        assert ro.get("/search", params={"text": "dog"}).status_code == 200
    engine = Engine.open(settings_for(tmp_path, clip_spec))  # no key, no index roots
    try:
        with TestClient(create_app(engine)) as open_client:
            r = open_client.post("/jobs", json={"path": str(tmp_path)})
            assert r.status_code == 403 and "--index-root" in r.json()["detail"]
            assert open_client.delete("/items/5").status_code == 404  # no key needed, no such item
    finally:
        engine.close()


def test_bind_safety(tmp_path: Path) -> None:
    open_settings = Settings(catalog=tmp_path / "c")
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert is_loopback(host)
        check_bind(host, open_settings)
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.org"):
        assert not is_loopback(host)
        with pytest.raises(MMSearchError, match="API key"):
            check_bind(host, open_settings)
        check_bind(host, open_settings, read_only=True)
        check_bind(host, Settings(catalog=tmp_path / "c", api_key="k"))


def test_serve_refuses_open_writes_on_the_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from mmsearch.cli import app

    monkeypatch.delenv("MMSEARCH_API_KEY", raising=False)
    r = CliRunner().invoke(app, ["serve", "--catalog", str(tmp_path / "c"), "--host", "0.0.0.0"])
    assert r.exit_code == 2 and "refusing" in r.output
    r = CliRunner().invoke(app, ["serve", "--catalog", str(tmp_path / "c"), "--index-root", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "not a folder" in r.output


def test_not_ready_is_503_with_a_reason(tmp_path: Path) -> None:
    settings = Settings(catalog=tmp_path / "c", model="open_clip:no-such-arch@random", audio=False)
    with TestClient(create_app(settings)) as c:
        t0 = time.time()
        r = c.get("/search", params={"text": "dog"})  # waits for the load in progress, then says why
        assert r.status_code == 503 and "no-such-arch" in r.json()["detail"] and time.time() - t0 < 30
        deadline = time.time() + 30
        while (r := c.get("/readyz")).json()["reason"] == "models are loading" and time.time() < deadline:
            time.sleep(0.05)
        assert r.status_code == 503 and "no-such-arch" in r.json()["reason"]
        assert c.get("/healthz").status_code == 200
        r = c.get("/search", params={"text": "dog"})
        assert r.status_code == 503 and "no-such-arch" in r.json()["detail"] and r.headers["retry-after"]


# -- concurrency --------------------------------------------------------------------------------

def test_concurrent_queries_are_consistent(client: TestClient, world: dict[str, Any]) -> None:
    """Many threads at once through the threadpool (SQLite, FAISS, the batcher): every answer
    equals the one a lone query gets."""
    texts = [f"query number {i}" for i in range(8)]
    expected = {t: [h["id"] for h in client.get("/search", params={"text": t, "k": 5}).json()["results"]]
                for t in texts}
    errors: list[str] = []

    def worker(i: int) -> None:
        for j in range(6):
            t = texts[(i + j) % len(texts)]
            r = client.get("/search", params={"text": t, "k": 5})
            if r.status_code != 200:
                errors.append(r.text)
            elif [h["id"] for h in r.json()["results"]] != expected[t]:
                errors.append(f"different results for {t!r}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors[:3]
    batching = client.get("/stats").json()["service"]["batching"]["clip"]
    assert batching["requests"] >= 72 and batching["batches"] <= batching["requests"]


class SlowEncoder:
    """Stands in for a model: one forward pass costs a fixed time, whatever the batch size."""

    spec, space, dim, modalities, batch_size, device = "fake", "clip", 4, ("text",), 8, "cpu"

    def __init__(self) -> None:
        self.batches: list[int] = []

    def prepare(self, modality: str, decoded: Any) -> Any:
        return decoded

    def encode(self, modality: str, prepared: Any) -> np.ndarray:
        time.sleep(0.05)
        self.batches.append(len(prepared))
        if "boom" in prepared:
            raise ValueError("boom")
        return np.array([[float(len(t)), float(hash(t) % 97), 0.0, 1.0] for t in prepared], dtype=np.float32)


def test_micro_batching_coalesces_concurrent_texts() -> None:
    inner = SlowEncoder()
    enc = BatchingEncoder(inner)  # type: ignore[arg-type]
    texts = [f"text {'x' * i}" for i in range(16)]
    out: dict[str, np.ndarray] = {}

    def call(t: str) -> None:
        out[t] = enc.encode("text", [t])

    threads = [threading.Thread(target=call, args=(t,)) for t in texts]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(inner.batches) < len(texts) and sum(inner.batches) == len(texts)  # shared passes
    for t in texts:  # every caller got its own row
        assert out[t].shape == (1, 4) and out[t][0, 0] == len(t)
    assert enc.encode("image", ["img"]).shape == (1, 4)  # other modalities go straight through
    with pytest.raises(ValueError, match="boom"):
        enc.encode("text", ["boom"])
    assert enc.encode("text", ["after an error"]).shape == (1, 4)
    enc.close()
    assert enc.encode("text", ["after close"]).shape == (1, 4)


class FastEncoder(SlowEncoder):
    def encode(self, modality: str, prepared: Any) -> np.ndarray:
        return np.ones((len(prepared), 4), dtype=np.float32)


def test_micro_batching_never_strands_a_request_at_close() -> None:
    """A request that arrives while the server closes is answered (unbatched), never left waiting
    for a worker that has stopped: close() is made to run at the worst moment, just before the
    request takes the batcher's lock."""
    enc = BatchingEncoder(FastEncoder())  # type: ignore[arg-type]
    enc.encode("text", ["start the worker"])
    real = enc._cond

    class CloseFirst:
        armed = True

        def __enter__(self) -> Any:
            if CloseFirst.armed and threading.current_thread() is caller:
                CloseFirst.armed = False
                closer = threading.Thread(target=enc.close)
                closer.start()
                closer.join()
            return real.__enter__()

        def __exit__(self, *exc: Any) -> Any:
            return real.__exit__(*exc)

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

    enc._cond = CloseFirst()  # type: ignore[assignment]
    caller = threading.Thread(target=enc.encode, args=("text", ["late"]), daemon=True)
    caller.start()
    caller.join(10)
    assert not CloseFirst.armed and not caller.is_alive()


# -- audio --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def audio_world(tmp_path_factory: pytest.TempPathFactory, clip_spec: str,
                tiny_clap_dir: Path) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("api-audio")
    media = tmp / "tux"
    (media / "audio").mkdir(parents=True)
    (media / "images").mkdir()
    names = ["animals__amphibians__frog", "animals__birds__crow", "animals__birds__duck",
             "animals__birds__gander", "vehicles__emergency__firetruck"]
    for n in names:
        shutil.copy2(TUXPAINT / "audio" / f"{n}.ogg", media / "audio")
        shutil.copy2(TUXPAINT / "images" / f"{n}.png", media / "images")
    settings = settings_for(tmp, clip_spec, audio=True, audio_model=f"clap:{tiny_clap_dir}",
                            max_upload_bytes=UPLOAD_LIMIT)
    engine = Engine.open(settings)
    report = engine.index([media])
    assert report.failed == 0, report.failures
    with TestClient(create_app(engine)) as c:
        c.app.state.service.engine()  # the warm-up runs in the background: its end, not a race with it
        yield {"client": c, "media": media, "engine": engine}
    engine.close()


def test_audio_search_media_and_embed(audio_world: dict[str, Any]) -> None:
    c: TestClient = audio_world["client"]
    media: Path = audio_world["media"]
    assert c.get("/readyz").json()["models"]["clap"].startswith("clap:")
    crow = media / "audio" / "animals__birds__crow.ogg"
    r = c.post("/search", files={"audio": ("crow.ogg", crow.read_bytes(), "audio/ogg")}, data={"to": "audio", "k": "3"})
    assert r.status_code == 200, r.text
    first = r.json()["results"][0]
    assert first["path"] == str(crow) and first["modality"] == "audio" and first["start"] is not None
    r = c.get("/search", params={"text": "a siren", "to": "audio", "k": 5})
    assert r.status_code == 200 and {h["modality"] for h in r.json()["results"]} == {"audio"}

    item_id = first["id"]
    r = c.get(f"/items/{item_id}/media")
    assert r.status_code == 200 and r.headers["content-type"] == "audio/ogg" and r.content == crow.read_bytes()
    r = c.get(f"/items/{item_id}/media", headers={"Range": "bytes=0-1023"})
    assert r.status_code == 206 and len(r.content) == 1024 and r.content[:4] == b"OggS"
    assert c.get(f"/items/{item_id}/thumbnail").status_code == 404
    assert c.get(f"/items/{item_id}").json()["duration"] > 0
    sim = c.get(f"/items/{item_id}/similar", params={"k": 2}).json()["results"]
    assert {h["modality"] for h in sim} == {"audio"} and item_id not in [h["id"] for h in sim]

    r = c.post("/embed", files={"audio": ("crow.ogg", crow.read_bytes(), "audio/ogg")})
    assert r.status_code == 200 and r.json()["space"] == "clap"
    r = c.post("/embed", json={"text": "a crow", "space": "clap"})
    assert r.status_code == 200 and r.json()["space"] == "clap"
    r = c.post("/search", files={"audio": ("x.ogg", b"not audio at all", "audio/ogg")})
    assert r.status_code == 400


def test_lookup_by_path(client: TestClient, world: dict[str, Any], items: dict[str, Any]) -> None:
    media: Path = world["media"]
    note = next(p for p in media.rglob("städte.md"))
    r = client.get("/items", params={"path": str(note)})
    assert r.status_code == 200 and r.json() == {"path": str(note), "item_ids": [items["note_md"]]}
    assert client.get("/items", params={"path": str(media / "nope.jpg")}).status_code == 404
    assert client.get("/items", params={"path": "relative.jpg"}).status_code == 422


# -- issue 12: one error shape, HEAD, CORS, offline docs, has_more --------------------------------

def test_every_error_is_an_rfc9457_problem(client: TestClient, items: dict[str, Any]) -> None:
    answers = {
        400: client.post("/search", json={}),  # the engine's BadInput
        404: client.get("/items/999999"),  # the engine's NotFound
        401: client.delete("/items/1"),  # the routes' own HTTPException
        405: client.put("/search", json={}),  # Starlette's
        413: client.post("/search", content=b"x" * (UPLOAD_LIMIT + 70_000),
                         headers={"content-type": "application/json"}),  # the body-limit middleware
        415: client.post("/search", content=b"text=dog", headers={"content-type": "text/plain"}),
        422: client.get("/search", params={"text": "dog", "k": 0, "offset": -1}),  # validation
    }
    answers[-404] = client.get("/no/such/endpoint")
    for status, r in answers.items():
        body = r.json()
        assert r.status_code == abs(status), (status, r.text)
        assert r.headers["content-type"] == "application/problem+json", status
        assert body["type"] == "about:blank" and body["status"] == abs(status) and body["title"], body
        assert isinstance(body["detail"], str) and body["detail"], body
    assert "GET" in answers[405].json()["detail"] and "/docs" in answers[-404].json()["detail"]
    invalid = answers[422].json()
    assert {e["field"] for e in invalid["errors"]} == {"k", "offset"}
    assert all(e["loc"][0] == "query" and e["msg"] and e["type"] for e in invalid["errors"])
    assert invalid["detail"].startswith(invalid["errors"][0]["field"] + ": ") and "1 more" in invalid["detail"]
    schema = client.get("/openapi.json").json()
    error = schema["paths"]["/search"]["post"]["responses"]["422"]["content"]
    assert list(error) == ["application/problem+json"]
    assert set(schema["components"]["schemas"]["ErrorOut"]["properties"]) >= {"type", "title", "status", "detail"}


def test_head_on_media(client: TestClient, items: dict[str, Any]) -> None:
    path, item_id = items["first_image"]
    r = client.head(f"/items/{item_id}/media")
    assert r.status_code == 200 and r.content == b""
    assert int(r.headers["content-length"]) == Path(path).stat().st_size
    assert r.headers["content-type"] == "image/jpeg" and r.headers["accept-ranges"] == "bytes"
    assert client.head("/items/999999/media").status_code == 404


def test_docs_pages_work_offline(client: TestClient) -> None:
    for page, marker in (("/docs", "SwaggerUIBundle"), ("/redoc", "<redoc")):
        html = client.get(page).text
        assert marker in html and "cdn." not in html and "fonts.googleapis" not in html, page
        assets = re.findall(r'(?:src|href)="(/static/vendor/[^"]+)"', html)
        assert assets, page
        for url in assets:
            r = client.get(url)
            assert r.status_code == 200 and len(r.content) > 100, url
    assert "swagger-ui-bundle.js" in client.get("/docs").text


def test_cors_is_off_unless_an_origin_is_named(client: TestClient, world: dict[str, Any]) -> None:
    origin = "http://localhost:5173"
    r = client.get("/healthz", headers={"Origin": origin})
    assert "access-control-allow-origin" not in r.headers
    settings = world["engine"].settings.model_copy(update={"cors_origins": [origin]})
    engine = Engine.open(settings, create=False)
    try:
        with TestClient(create_app(engine)) as c:
            r = c.options("/search", headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                              "Access-Control-Request-Headers": "content-type,x-api-key"})
            assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
            assert "x-api-key" in r.headers["access-control-allow-headers"].lower()
            r = c.get("/search", params={"text": "dog", "k": 1}, headers={"Origin": origin})
            assert r.headers["access-control-allow-origin"] == origin
            assert "server-timing" in r.headers["access-control-expose-headers"].lower()
            r = c.get("/healthz", headers={"Origin": "http://elsewhere.example"})
            assert "access-control-allow-origin" not in r.headers
    finally:
        engine.close()


def test_has_more_is_exact_at_the_end(client: TestClient, world: dict[str, Any]) -> None:
    n = world["engine"].stats()["items"]["image"]
    for k, offset, more in ((5, 0, True), (5, n - 6, True), (5, n - 5, False), (10, n - 5, False)):
        page = client.get("/search", params={"text": "people", "to": "image", "k": k, "offset": offset}).json()
        assert len(page["results"]) == min(k, n - offset), (k, offset)
        assert page["has_more"] is more and page["next_offset"] == (offset + k if more else None), (k, offset)
