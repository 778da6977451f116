"""The real thing: `mmsearch serve` under uvicorn on 127.0.0.1, driven by headless Chromium.

Needs Debian's chromium (``apt-get install chromium``; Playwright's own browser download is not
used). Screenshots are saved under the test's tmp_path and their paths printed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mmsearch.api.readiness import wait_until_ready
from mmsearch.engine import Engine

CHROMIUM = os.environ.get("MMSEARCH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CONFIG_DIR = Path(__file__).resolve().parent / "assets"
REPO = Path(__file__).resolve().parents[1]
TUXPAINT = REPO.parent / "shared" / "data" / "tuxpaint"

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SOUNDS = ["animals__birds__crow", "animals__birds__duck", "animals__amphibians__frog", "vehicles__emergency__firetruck",
          "hobbies__music__wind__bassoon", "animals__birds__cuckoo"]


@pytest.fixture
def server(make_settings: Any, photo_dir: Path, clip_spec: str, tiny_clap_dir: Path, tmp_path: Path) -> Iterator[str]:
    sounds = photo_dir / "sounds"
    sounds.mkdir()
    for name in SOUNDS:
        shutil.copy2(TUXPAINT / "audio" / f"{name}.ogg", sounds)
    audio_model = f"clap:{tiny_clap_dir}"
    settings = make_settings(audio=True, audio_model=audio_model)
    with Engine.open(settings) as engine:
        report = engine.index([photo_dir])
        assert report.failed == 0 and report.added == 33, report.as_dict()
    port = free_port()
    env = {**os.environ, "MMSEARCH_MODEL_CONFIG_DIRS": json.dumps([str(CONFIG_DIR)]), "MMSEARCH_DEVICE": "cpu"}
    env.pop("MMSEARCH_API_KEY", None)
    log = open(tmp_path / "server.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmsearch.cli", "serve", "--catalog", str(settings.catalog), "--model", clip_spec,
         "--audio-model", audio_model, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        if not wait_until_ready(base, proc, timeout=90):
            log.seek(0)
            pytest.fail(f"the server did not become ready:\n{log.read()[-3000:]}")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_search_page_in_chromium(server: str, photo_dir: Path, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: `apt-get install chromium` (or set MMSEARCH_CHROMIUM)")
    from playwright.sync_api import expect, sync_playwright

    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("response", lambda r: problems.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None)

            page.goto(server + "/")
            expect(page.locator("#catalog-info")).to_contain_text("Indexed:")
            page.fill("#q", "a dog running on the beach")
            page.press("#q", "Enter")
            cards = page.locator("#results .card")
            expect(cards).to_have_count(24)  # one page; the catalog holds 50 items
            expect(page.locator("#status")).to_contain_text("24 results")
            expect(page.locator("#status")).to_contain_text("ms round trip")
            expect(page.locator("#more")).to_be_visible()
            expect(page.locator("#query-chip")).to_be_hidden()
            assert "q=a+dog+running+on+the+beach" in page.url
            page.wait_for_function(
                "() => [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)")
            shot = tmp_path / "search.png"
            page.screenshot(path=str(shot))
            print(f"\nscreenshot: {shot}")

            page.click("#more")
            expect(cards).to_have_count(48)
            page.click("#more")
            expect(cards).to_have_count(56)  # 24 photos, 26 texts, 6 sounds
            expect(page.locator("#more")).to_be_hidden()

            page.click("label:has-text('Audio')")
            expect(cards).to_have_count(6)
            assert set(page.locator("#results .badge").all_inner_texts()) == {"AUDIO"}
            duration = page.locator("#results audio").first.evaluate(
                """a => new Promise(done => {
                       a.onloadedmetadata = () => done(a.duration);
                       a.onerror = () => done(-1);
                       a.preload = "metadata";
                       a.load();
                   })""")
            assert duration > 0  # Chromium fetched and decoded it (range requests, audio/ogg)
            page.screenshot(path=str(tmp_path / "search-audio.png"))

            page.click("label:has-text('Images')")
            expect(cards).to_have_count(24)
            assert set(page.locator("#results .badge").all_inner_texts()) == {"IMAGE"}
            assert "to=image" in page.url

            first_path = page.locator("#results .card .path").first.get_attribute("title")
            assert page.locator("#results .card .path").first.inner_text().startswith(("beach/", "city/"))
            page.locator("#results .card .like").first.click()
            expect(page.locator("#query-chip")).to_be_visible()
            page.wait_for_url("**like=*")
            expect(cards).to_have_count(23)  # every other image
            assert first_path not in [p.get_attribute("title") for p in page.locator("#results .path").all()]

            query = sorted((photo_dir / "beach").glob("*.jpg"))[0]
            page.set_input_files("#file", str(query))
            expect(page.locator("#query-label")).to_have_text(query.name)
            expect(page.locator("#results .card .path").first).to_have_attribute("title", str(query))
            page.screenshot(path=str(tmp_path / "search-by-image.png"))

            phone = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                                     device_scale_factor=2)
            phone.goto(server + "/?q=people+in+a+city&to=image")
            expect(phone.locator("#results .card")).to_have_count(24)
            phone.wait_for_function("() => [...document.querySelectorAll('#results img')].slice(0, 4)"
                                    ".every(i => i.complete && i.naturalWidth > 0)")
            assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
            phone.screenshot(path=str(tmp_path / "search-phone.png"))
            print(f"phone screenshot: {tmp_path / 'search-phone.png'}")
        finally:
            browser.close()
    assert not problems, problems
