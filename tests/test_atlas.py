"""The atlas: a 2-D map of a collection, on every face, and its page driven in Chromium.

The projection is checked on vectors whose two main directions are known; the map of a real
catalog is checked for what must hold whatever the model: one point per item, a byte-for-byte
copy on its original's spot, a deleted item gone, the sample bounded by ``limit``.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from mmsearch import BadInput, Engine, NotFound
from mmsearch.api.app import create_app
from mmsearch.cli import app as cli_app
from mmsearch.search.atlas import even_sample, project
from tests.conftest import CONFIG_DIR, flickr_images
from tests.test_web_e2e import CHROMIUM, CHROMIUM_ARGS, free_port


def test_projection_recovers_the_two_main_directions() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 64))
    a /= np.linalg.norm(a)
    b -= (b @ a) * a
    b /= np.linalg.norm(b)
    along_a = np.linspace(-3, 3, 40)
    along_b = rng.uniform(-1, 1, 40)
    vectors = along_a[:, None] * a + along_b[:, None] * b + rng.normal(scale=0.01, size=(40, 64))
    coords, explained = project(vectors)
    assert coords.shape == (40, 2) and coords.min() >= 0 and coords.max() <= 1
    assert abs(np.corrcoef(coords[:, 0], along_a)[0, 1]) > 0.999  # the widest direction is x
    assert abs(np.corrcoef(coords[:, 1], along_b)[0, 1]) > 0.99
    assert explained[0] > explained[1] > 0 and sum(explained) > 0.99
    order = rng.permutation(40)  # the sign convention: the same points in another order, the same map
    assert np.allclose(project(vectors[order])[0], coords[order], atol=1e-9)


def test_projection_of_degenerate_samples() -> None:
    assert project(np.empty((0, 8)))[0].shape == (0, 2)
    assert np.allclose(project(np.ones((1, 8)))[0], 0.5)
    assert np.allclose(project(np.ones((5, 8)))[0], 0.5)  # all alike: every point in the middle


def test_even_sample_spans_the_ids() -> None:
    ids = np.arange(10, 1010, dtype=np.int64)
    sample = even_sample(ids, 7)
    assert sample.size == 7 and sample[0] == 10 and sample[-1] == 1009 and np.all(np.diff(sample) > 0)
    assert even_sample(ids[:5], 7).tolist() == ids[:5].tolist()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, clip_spec: str) -> Iterator[dict[str, Any]]:
    from mmsearch.settings import Settings

    tmp = tmp_path_factory.mktemp("atlas")
    lib = tmp / "lib"
    lib.mkdir()
    for i, src in enumerate(flickr_images(12)):
        Image.open(src).convert("RGB").resize((160, 120)).save(lib / f"p{i:02d}.jpg", quality=90)
    shutil.copy(lib / "p03.jpg", lib / "p03_copy.jpg")
    (lib / "note.txt").write_text("a red bicycle against a wall")
    settings = Settings(catalog=tmp / "catalog", model=clip_spec, model_config_dirs=[CONFIG_DIR], audio=False,
                        batch_size=16, decode_workers=1, device="cpu")
    with Engine.open(settings) as engine:
        assert engine.index([lib]).failed == 0
    engine = Engine.open(settings)
    ids = {p.name: engine.lookup(p)[0] for p in lib.iterdir()}
    yield {"engine": engine, "ids": ids, "settings": settings, "lib": lib}
    engine.close()


def test_engine_atlas_maps_every_item_once(world: dict[str, Any]) -> None:
    engine, ids = world["engine"], world["ids"]
    atlas = engine.atlas()
    images = {v for k, v in ids.items() if k.endswith(".jpg")}
    assert {p.id for p in atlas.points} == images and len(atlas.points) == len(images) == atlas.total
    at = {p.id: (p.x, p.y) for p in atlas.points}
    assert np.allclose(at[ids["p03.jpg"]], at[ids["p03_copy.jpg"]], atol=1e-4)  # same pixels, same spot
    assert all(0 <= p.x <= 1 and 0 <= p.y <= 1 and p.modality == "image" for p in atlas.points)
    assert max(p.x for p in atlas.points) == 1 and min(p.x for p in atlas.points) == 0
    assert atlas.model_dump() == engine.atlas().model_dump(exclude={"timings_ms"}) | {
        "timings_ms": atlas.timings_ms}  # the same map twice

    small = engine.atlas(limit=5)
    assert len(small.points) <= 5 and small.total == len(images)
    texts = engine.atlas(collection="clip.text")
    assert [p.text for p in texts.points] == ["a red bicycle against a wall"]

    with pytest.raises(NotFound, match="clip.image"):
        engine.atlas(collection="clap.audio")
    with pytest.raises(BadInput, match="limit"):
        engine.atlas(limit=0)


def test_atlas_follows_deletes(tmp_path: Path, make_settings: Any) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    for i, src in enumerate(flickr_images(4)):
        Image.open(src).convert("RGB").resize((96, 72)).save(lib / f"q{i}.jpg")
    with Engine.open(make_settings(audio=False)) as engine:
        engine.index([lib])
        gone = engine.lookup(lib / "q1.jpg")[0]
        engine.delete(gone)
        assert gone not in {p.id for p in engine.atlas().points} and engine.atlas().total == 3


def test_atlas_over_http_and_the_cli(world: dict[str, Any]) -> None:
    engine, settings = world["engine"], world["settings"]
    expected = engine.atlas(limit=6).model_dump(mode="json", exclude={"timings_ms"})
    with TestClient(create_app(engine)) as client:
        got = client.get("/atlas.json", params={"limit": 6}).json()
        assert {k: v for k, v in got.items() if k != "timings_ms"} == expected
        assert client.get("/atlas.json", params={"collection": "clap.audio"}).status_code == 404
        assert client.get("/atlas.json", params={"limit": 0}).status_code == 422
        assert client.get("/atlas.json", params={"collection": "nope"}).status_code == 422
        page = client.get("/atlas")
        assert page.status_code == 200 and "/static/atlas.js?v=" in page.text and "/static/atlas.css?v=" in page.text
    result = CliRunner().invoke(cli_app, ["atlas", "--catalog", str(settings.catalog), "--limit", "6", "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)  # the CLI's JSON leaves out nulls, as every command's does
    assert {k: v for k, v in printed.items() if k != "timings_ms"} == engine.atlas(limit=6).model_dump(
        mode="json", exclude={"timings_ms"}, exclude_none=True)
    result = CliRunner().invoke(cli_app, ["atlas", "--catalog", str(settings.catalog), "--limit", "6"])
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [int(r[0]) for r in rows] == [p["id"] for p in expected["points"]]


@pytest.fixture
def live_server(world: dict[str, Any]) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(world["engine"]), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        thread.join(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.mark.slow
def test_atlas_page_in_chromium(live_server: str, world: dict[str, Any], tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            for width in (1280, 390):
                page = browser.new_page(viewport={"width": width, "height": 860})
                page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
                page.on("response", lambda r: problems.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None)
                page.goto(live_server + "/atlas")
                expect(page.locator("#atlas-status")).to_contain_text("13 vectors")
                assert page.locator("#collection option").all_inner_texts() == ["clip.image", "clip.text"]
                page.wait_for_function("() => performance.getEntriesByType('resource')"
                                       ".some(e => e.name.includes('/thumbnail?size=128'))")
                box = page.locator("#map").bounding_box()
                assert box and box["width"] <= width
                page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
                cards = page.locator("#found .atlas-card")
                expect(cards.first).to_be_visible()
                assert cards.count() > 0 and "collection=clip.image" in page.url and "x=" in page.url
                assert all(h.startswith("/?like=") for h in [c.get_attribute("href") for c in cards.all()])
                page.screenshot(path=str(tmp_path / f"atlas-{width}.png"), full_page=True)
                assert page.evaluate("document.scrollingElement.scrollWidth <= innerWidth")

                url = page.url  # a shared map position opens on the same search
                page.goto(url)
                expect(cards.first).to_be_visible()

                page.locator("#map").focus()  # the keyboard path: arrows move the cross, Enter searches
                page.keyboard.press("ArrowLeft")
                page.keyboard.press("Enter")
                page.wait_for_url("**x=0.48*")
                page.select_option("#collection", "clip.text")
                expect(page.locator("#atlas-status")).to_contain_text("1 vectors")
                assert page.locator(".brand").is_visible()
                page.close()
        finally:
            browser.close()
    print(f"\nscreenshots: {tmp_path}")
    assert not problems, problems
