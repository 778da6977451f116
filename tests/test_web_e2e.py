"""The real thing: `mmsearch serve` under uvicorn on 127.0.0.1, driven by headless Chromium at a
desktop (1280 px) and a phone (390 px) width.

One server and one browser for the module: 24 Flickr photos in two folders with a caption each,
two notes and six Tux Paint sounds, indexed with the tiny models; one photo is deleted from disk
after indexing (its caption then points at a missing picture). Needs Debian's chromium
(``apt-get install chromium``; Playwright's own browser download is not used). Screenshots go to
``$MMSEARCH_SHOTS`` or a temporary folder, and their paths are printed.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest

from mmsearch.api.readiness import wait_until_ready
from mmsearch.engine import Engine
from mmsearch.settings import Settings
from tests.test_metadata import make_photo
from tests.video_media import photos, write_video

CHROMIUM = os.environ.get("MMSEARCH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CONFIG_DIR = Path(__file__).resolve().parent / "assets"
REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
FLICKR = DATA / "flickr8k-1k"
TUXPAINT = DATA / "tuxpaint"
SOUNDS = ["animals__birds__crow", "animals__birds__duck", "animals__amphibians__frog", "vehicles__emergency__firetruck",
          "hobbies__music__wind__bassoon", "animals__birds__cuckoo"]
ITEMS = 24 + 24 + 2 + 6 + 1  # photos, their captions, notes, sounds, a video
EXIF = dict(taken="2024:05:01 17:03:11", make="Canon", model="Canon EOS 80D", lens="EF-S18-135mm f/3.5-5.6",
            gps=(48.8566, 2.3522))
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_media(root: Path) -> Path:
    images = sorted((FLICKR / "images").glob("*.jpg"))[:24]
    first = {}
    for row in csv.DictReader(open(FLICKR / "captions.csv", newline="")):
        first.setdefault(row["image"], row["caption"])
    root.mkdir(parents=True)
    with open(root / "captions.csv", "w", newline="") as out:
        w = csv.writer(out)
        w.writerow(["image", "caption"])
        for i, src in enumerate(images):
            sub = "beach" if i % 2 else "city"
            (root / sub).mkdir(exist_ok=True)
            if i == 1:  # one photo says where and when it was taken, and with what
                make_photo(src, root / sub / src.name, **EXIF)
            else:
                shutil.copy2(src, root / sub / src.name)
            w.writerow([f"{sub}/{src.name}", first[src.name]])
    (root / "notes").mkdir()
    (root / "notes" / "dogs.txt").write_text("Two dogs play fetch on a sandy beach at sunset.")
    (root / "notes" / "städte.md").write_text("# Städte\n\nA busy city street with yellow taxis.")
    (root / "sounds").mkdir()
    for name in SOUNDS:
        shutil.copy2(TUXPAINT / "audio" / f"{name}.ogg", root / "sounds")
    (root / "clips").mkdir()
    shown = photos(2)  # 8 s of VP8 in WebM (what Chromium plays): one photo, then another from 4 s
    write_video(root / "clips" / "harbour.webm", lambda t: shown[t >= 4], [i / 2 for i in range(16)], codec="libvpx")
    return root


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, clip_spec: str, tiny_clap_dir: Path) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("web")
    media = build_media(tmp / "media")
    audio_model = f"clap:{tiny_clap_dir}"
    settings = Settings(catalog=tmp / "catalog", model=clip_spec, model_config_dirs=[CONFIG_DIR], audio=True,
                        audio_model=audio_model, batch_size=16, decode_workers=2, device="cpu")
    with Engine.open(settings) as engine:
        report = engine.index([media])
        assert report.failed == 0 and report.added == 24 + 1 + 2 + 6 + 1, report.as_dict()
        exif_photo = sorted((media / "beach").glob("*.jpg"))[0]
        engine.tag(engine.lookup(exif_photo)[0], add=["trip"], set={"rating": "5"})
    gone = sorted((media / "city").glob("*.jpg"))[0]
    gone.unlink()  # indexed, then deleted: its caption points at a missing picture
    port = free_port()
    env = {**os.environ, "MMSEARCH_MODEL_CONFIG_DIRS": json.dumps([str(CONFIG_DIR)]), "MMSEARCH_DEVICE": "cpu"}
    env.pop("MMSEARCH_API_KEY", None)
    log = open(tmp / "server.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmsearch.cli", "serve", "--catalog", str(settings.catalog), "--model", clip_spec,
         "--audio-model", audio_model, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: `apt-get install chromium` (or set MMSEARCH_CHROMIUM)")
    from playwright.sync_api import sync_playwright

    shots = Path(os.environ.get("MMSEARCH_SHOTS") or tmp / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    try:
        if not wait_until_ready(base, proc, timeout=90):
            log.seek(0)
            pytest.fail(f"the server did not become ready:\n{log.read()[-3000:]}")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                yield {"base": base, "browser": browser, "media": media, "gone": gone, "shots": shots, "tmp": tmp,
                       "exif_photo": exif_photo}
            finally:
                browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


class Page:
    """A browser page that records what went wrong: script errors, and HTTP errors other than the
    deleted photo's (its thumbnail and its lookup are 404s the page must show, not hide)."""

    def __init__(self, site: dict[str, Any], viewport: dict[str, int], phone: bool = False) -> None:
        self.site = site
        self.context = site["browser"].new_context(
            viewport=viewport, **({"is_mobile": True, "has_touch": True, "device_scale_factor": 2} if phone else {}))
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.expected_404: set[int] = set()
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("response", self._response)

    def _response(self, r: Any) -> None:
        if r.status >= 400 and not (r.status == 404 and self._about_gone(r.url)):
            self.problems.append(f"HTTP {r.status} {r.url}")

    def _about_gone(self, url: str) -> bool:
        m = re.search(r"/items/(\d+)/thumbnail", url)
        return bool(m and int(m.group(1)) in self.site["gone_ids"]) or "/items?path=" in url

    def shot(self, name: str) -> None:
        path = self.site["shots"] / f"{name}.png"
        self.page.screenshot(path=str(path))
        print(f"\nscreenshot: {path}")

    def fits(self) -> None:
        """No horizontal scrolling, and the search box and its button on screen."""
        p = self.page
        assert p.evaluate("document.scrollingElement.scrollWidth <= window.innerWidth"), \
            p.evaluate("[document.scrollingElement.scrollWidth, window.innerWidth]")
        width = p.evaluate("window.innerWidth")
        for sel in ("#q", "#go"):
            box = p.locator(sel).bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= width, (sel, box, width)

    def close(self) -> None:
        self.context.close()
        assert not self.problems, self.problems


@pytest.fixture
def desktop(site: dict[str, Any]) -> Iterator[Page]:
    page = Page(site, DESKTOP)
    yield page
    page.close()


@pytest.fixture
def phone(site: dict[str, Any]) -> Iterator[Page]:
    page = Page(site, PHONE, phone=True)
    yield page
    page.close()


@pytest.fixture(scope="module", autouse=True)
def gone_ids(site: dict[str, Any]) -> None:
    import httpx

    gone = site["gone"]
    caption = [it["id"] for it in httpx.get(site["base"] + "/browse", params={"ref": str(gone)}).json()["items"]]
    photo = [it["id"] for it in httpx.get(site["base"] + "/browse", params={"path": str(gone)}).json()["items"]]
    assert len(caption) == 1 and len(photo) == 1
    site["gone_ids"] = set(caption + photo)
    site["gone_caption"], site["gone_photo"] = caption[0], photo[0]


def wait_for_pictures(page: Any, n: int = 8) -> None:
    """The first n thumbnails have loaded, or turned into a placeholder (no broken image)."""
    page.wait_for_function(f"""() => [...document.querySelectorAll('#results .pic')].slice(0, {n}).every(p =>
        !p.classList.contains('loading') && (p.querySelector('.missing') || p.querySelector('img').naturalWidth > 0))""")


def cosines(page: Any) -> list[float]:
    """The cosine of every result: the score shown, or beside a calibrated one ("2.31 cos 0.28")."""
    return [float(s.split("cos")[-1]) for s in page.locator("#results .score").all_inner_texts()]


def fixed(x: float, digits: int) -> str:
    """JavaScript's x.toFixed(digits): the double's exact value, a tie rounded away from zero."""
    return str(Decimal(x).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def score_text(hit: dict[str, Any]) -> str:
    """A result's score as a card shows it: the calibrated score and the cosine beside it where
    lists were merged, else the cosine."""
    if hit["calibrated"] is not None:
        return f"{fixed(hit['calibrated'], 2)} cos {fixed(hit['cosine'], 2)}"
    return fixed(hit["cosine"], 3)


def test_search_scores_reasons_and_infinite_scroll(desktop: Page) -> None:
    from playwright.sync_api import expect

    page = desktop.page
    page.goto(desktop.site["base"] + "/")
    expect(page.locator("#catalog-info")).to_contain_text("Indexed:")
    page.keyboard.press("/")  # `/` goes to the search box
    assert page.evaluate("document.activeElement.id") == "q"
    page.keyboard.type("a dog running on the beach")
    with page.expect_response(lambda r: "/search?" in r.url) as answer:
        page.keyboard.press("Enter")
    hits = answer.value.json()["results"]
    cards = page.locator("#results .card")
    expect(cards).to_have_count(24)
    expect(page.locator("#status")).to_contain_text(f"24 of {ITEMS} results · scroll for more")  # the total
    assert "q=a+dog+running+on+the+beach" in page.url
    # "All" merges lists by the calibrated score: it is the one shown, in order, with the cosine beside it
    shown = [float(s.split()[0]) for s in page.locator("#results .score").all_inner_texts()]
    assert shown == sorted(shown, reverse=True)
    assert all("cos" in s for s in page.locator("#results .score").all_inner_texts())
    # ... and that cosine is the API's `cosine`, not its `score` (the calibrated one) again; the tooltip says which is which
    assert [int(i) for i in cards.evaluate_all("cs => cs.map(c => c.dataset.id)")] == [h["id"] for h in hits]
    assert all(h["calibrated"] is not None and h["score"] == h["calibrated"] for h in hits)
    assert any(fixed(h["calibrated"], 2) != fixed(h["cosine"], 2) for h in hits)  # so a mix-up would show
    assert [" ".join(s.split()) for s in page.locator("#results .score").all_inner_texts()] == [score_text(h) for h in hits]
    titles = page.locator("#results .score").evaluate_all("ss => ss.map(s => s.title)")
    for title, h in zip(titles, hits):
        assert title.startswith(f"Calibrated score {fixed(h['calibrated'], 2)}, the list is ranked by it") \
            and title.endswith(f"Cosine similarity {fixed(h['cosine'], 3)}"), (title, h)
    # a caption hit shows its photo and why it matched
    caption = page.locator("#results .card[data-modality=text]").filter(has_text="matched caption:").first
    expect(caption.locator(".open .pic")).to_have_count(1)
    wait_for_pictures(page)
    desktop.shot("search")

    page.mouse.wheel(0, 20000)  # infinite scroll: the next pages come as the end nears
    expect(cards).to_have_count(48)
    page.mouse.wheel(0, 20000)
    expect(cards).to_have_count(ITEMS)
    expect(page.locator("#status")).to_contain_text(f"All {ITEMS} results")
    expect(page.locator("#more")).to_be_hidden()

    page.click("label:has-text('Audio')")
    expect(cards).to_have_count(6)
    assert set(page.locator("#results .badge").all_inner_texts()) == {"AUDIO"}
    for why in page.locator("#results .why").all_inner_texts():
        assert re.fullmatch(r"best match: \d+\.\d–\d+\.\d s of \d+\.\d s", why), why
    duration = page.locator("#results audio").first.evaluate(
        """a => new Promise(done => {
               a.onloadedmetadata = () => done(a.duration);
               a.onerror = () => done(-1);
               a.preload = "metadata";
               a.load();
           })""")
    assert duration > 0  # Chromium fetched and decoded it (range requests, audio/ogg)
    desktop.shot("search-audio")


def test_file_and_like_queries_replace_the_text_and_survive_a_reload(desktop: Page) -> None:
    from playwright.sync_api import expect

    page, media = desktop.page, desktop.site["media"]
    page.goto(desktop.site["base"] + "/?q=a+red+car")
    cards = page.locator("#results .card")
    expect(cards).to_have_count(24)
    # a sound replaces the typed words: the query is the sound alone, and sounds come back
    page.set_input_files("#file", str(media / "sounds" / f"{SOUNDS[0]}.ogg"))
    expect(page.locator("#query-label")).to_have_text(f"{SOUNDS[0]}.ogg")
    expect(page.locator("#q")).to_have_value("")
    expect(cards).to_have_count(6)
    assert set(page.locator("#results .badge").all_inner_texts()) == {"AUDIO"}
    assert "file=" in page.url and "q=" not in page.url
    # an image; the link keeps it (in this browser): a reload runs the same query
    query = sorted((media / "beach").glob("*.jpg"))[0]
    page.set_input_files("#file", str(query))
    expect(page.locator("#query-label")).to_have_text(query.name)
    expect(cards.first.locator(".path")).to_have_attribute("title", str(query))
    expect(page.locator("#query-preview")).to_be_visible()
    before = page.locator("#results .path").evaluate_all("ps => ps.map(p => p.title)")
    page.reload()
    expect(page.locator("#query-label")).to_have_text(query.name)
    expect(cards).to_have_count(len(before))
    assert page.locator("#results .path").evaluate_all("ps => ps.map(p => p.title)") == before
    # the same link in a browser without the file says so
    other = desktop.site["browser"].new_page()
    other.goto(page.url)
    expect(other.locator("#status")).to_contain_text("not stored in this browser")
    other.close()

    # "more like this" replaces the file; its link restores it, named
    page.locator("#results .card[data-modality=image] .like").nth(1).click()
    page.wait_for_url(re.compile(r"like=\d+"))
    assert "file=" not in page.url
    expect(page.locator("#query-label")).to_have_text(re.compile(r"^like .+\.jpg$"))
    expect(cards).to_have_count(23)  # every other image
    label = page.locator("#query-label").inner_text()
    page.reload()
    expect(page.locator("#query-label")).to_have_text(label)
    expect(cards).to_have_count(23)
    # and words replace "like"
    page.fill("#q", "people in a city")
    page.press("#q", "Enter")
    expect(page.locator("#query-chip")).to_be_hidden()
    page.wait_for_url(re.compile(r"\?q=people\+in\+a\+city$"))
    expect(cards).to_have_count(24)


def test_detail_view_and_keyboard(desktop: Page) -> None:
    from playwright.sync_api import expect

    page, site = desktop.page, desktop.site
    page.goto(site["base"] + "/?q=a+dog&to=image&path=beach")  # beach/: every photo is there
    cards = page.locator("#results .card")
    expect(cards).to_have_count(12)
    page.focus("#q")
    page.keyboard.press("ArrowDown")
    assert page.evaluate("document.activeElement.closest('.card').dataset.index") == "0"
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowDown")  # a row further down: one row holds as many cards as fit
    cols = page.evaluate("Math.round(document.querySelector('#results').clientWidth / "
                         "document.querySelector('#results .card').offsetWidth)")
    assert page.evaluate("document.activeElement.closest('.card').dataset.index") == str(1 + cols)
    page.keyboard.press("ArrowUp")
    second = cards.nth(1)
    item_id = second.get_attribute("data-id")
    page.keyboard.press("Enter")
    dialog = page.locator("#detail")
    expect(dialog).to_be_visible()
    page.wait_for_url(re.compile(rf"item={item_id}"))
    facts = dict(zip(dialog.locator("dt").all_inner_texts(), dialog.locator("dd").all_inner_texts()))
    path = Path(second.locator(".path").get_attribute("title"))
    assert facts["File"] == path.name and facts["Kind"] == "image · image/jpeg"
    assert re.fullmatch(r"\d+ × \d+ px", facts["Dimensions"]) and facts["Size"].endswith("KB")
    expect(dialog.locator("#detail-captions li")).to_have_count(1)  # the photo's caption
    page.wait_for_function("() => document.querySelector('#detail-media img')?.naturalWidth > 0")
    desktop.shot("detail")
    page.keyboard.press("ArrowRight")  # the next result
    expect(page.locator("#detail-title")).to_have_text(Path(cards.nth(2).locator(".path").get_attribute("title")).name)
    page.wait_for_url(re.compile(rf"item={cards.nth(2).get_attribute('data-id')}$"))
    page.reload()  # the open detail view is part of the link
    expect(dialog).to_be_visible()
    expect(page.locator("#detail-title")).to_have_text(Path(cards.nth(2).locator(".path").get_attribute("title")).name)
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    page.wait_for_url(re.compile(r"\?q=a\+dog&to=image&path=beach$"))
    page.wait_for_function("() => document.activeElement.closest('.card')?.dataset.index === '2'")  # focus is back

    # every control is reached by Tab, in order, from the top
    page.click("#filters-toggle")
    page.focus("a.skip")  # the first stop
    reached: list[str] = []
    for _ in range(60):
        page.keyboard.press("Tab")
        el = page.evaluate("(e => e.id || e.name || e.className)(document.activeElement)")
        reached.append(el)
        if el == "open":
            break
    for control in ["q", "attach", "go", "to", "filters-toggle", "f-path", "f-from", "f-to", "f-camera", "f-min",
                    "f-dedup", "filters-clear", "open"]:
        assert control in reached, (control, reached)
    # the caption of the photo deleted from disk: a placeholder, no broken image, in the card and here
    page.goto(site["base"] + f"/?item={site['gone_caption']}")
    expect(dialog.locator(".missing")).to_have_attribute("aria-label", "Photo not available")
    page.click("#detail-photo")  # the photo's own item: still in the catalog, its file gone
    expect(page.locator("#detail-title")).to_have_text(site["gone"].name)
    expect(dialog.locator(".missing")).to_have_attribute("aria-label", "Picture not available")
    expect(dialog.locator("#detail-captions li")).to_have_count(1)


def test_what_a_photo_says_and_its_tags(desktop: Page) -> None:
    from playwright.sync_api import expect

    page, site = desktop.page, desktop.site
    page.goto(site["base"] + "/?q=a+photo&to=image&camera=canon")
    cards = page.locator("#results .card")
    expect(cards).to_have_count(1)  # the one photo with a camera in its EXIF
    card = cards.first
    expect(card.locator(".path")).to_have_attribute("title", str(site["exif_photo"]))
    expect(card.locator(".why")).to_have_text(re.compile(r"^2024-05-01 · Canon EOS 80D · \d+×\d+$"))
    expect(card.locator(".tags .tag")).to_have_text(["rating=5", "trip"])
    card.locator(".open").click()
    dialog = page.locator("#detail")
    expect(dialog.locator("dt")).to_contain_text(["Taken", "Camera", "Lens", "Place", "Tags"])
    facts = dict(zip(dialog.locator("dt").all_inner_texts(), dialog.locator("dd").all_inner_texts()))
    assert facts["Taken"] == "2024-05-01 17:03" and facts["Camera"] == "Canon EOS 80D"
    assert facts["Lens"] == EXIF["lens"] and facts["Place"] == "48.85660, 2.35220"
    assert dialog.locator("dd a").get_attribute("href").startswith("https://www.openstreetmap.org/?mlat=48.85660&mlon=2.35220")
    expect(dialog.locator("dd .tag")).to_have_text(["rating=5", "trip"])
    desktop.shot("detail-exif")


def test_filters_and_browsing(desktop: Page) -> None:
    from playwright.sync_api import expect

    page, site = desktop.page, desktop.site
    page.goto(site["base"] + "/")
    cards = page.locator("#results .card")
    expect(cards).to_have_count(24)  # no query: every item, a page at a time, and how many
    expect(page.locator("#status")).to_have_text(f"Showing 24 of {ITEMS} items")
    page.click("label:has-text('Images')")
    expect(page.locator("#status")).to_have_text("All 24 images")
    # the deleted photo and its caption: a clear placeholder each
    gone = page.locator(f"#results .card[data-id='{site['gone_photo']}'] .missing")
    expect(gone).to_have_attribute("aria-label", "Picture not available")
    wait_for_pictures(page, 24)
    assert page.evaluate("[...document.querySelectorAll('#results img')].every(i => i.naturalWidth > 0)")
    desktop.shot("browse")

    page.click("#filters-toggle")
    expect(page.locator("#filters")).to_be_visible()
    page.fill("#f-path", "beach")
    page.press("#f-path", "Enter")
    expect(page.locator("#status")).to_have_text("All 12 images under beach")
    page.wait_for_url(re.compile(r"path=beach"))
    page.fill("#q", "a dog")
    page.press("#q", "Enter")
    expect(cards).to_have_count(12)
    assert all(p.startswith("beach/") for p in page.locator("#results .path").all_inner_texts())
    page.check("#f-dedup")
    page.wait_for_url(re.compile(r"dedup=1"))
    expect(page.locator("#filter-count")).to_have_text("2")
    expect(page.locator("#status")).not_to_contain_text("Searching")
    scores = sorted(cosines(page))
    floor = scores[len(scores) // 2]  # half of them pass a minimum score at the median
    page.fill("#f-min", f"{floor:.2f}")
    page.press("#f-min", "Enter")
    page.wait_for_url(re.compile(rf"min={floor:.2f}"))
    expect(cards).not_to_have_count(len(scores))
    assert cosines(page) and all(s >= floor - 0.005 for s in cosines(page))
    desktop.shot("filters")
    kept = cards.count()
    page.fill("#f-to", "2001-01-01")  # the files' dates (no EXIF date here: modified) are all later
    page.press("#f-to", "Enter")
    page.wait_for_url(re.compile(r"until=2001-01-01"))
    expect(page.locator("#status")).to_contain_text("No results")
    page.fill("#f-to", "")
    page.fill("#f-from", "2001-01-01")
    page.press("#f-from", "Enter")
    page.wait_for_url(re.compile(r"from=2001-01-01"))
    expect(cards).to_have_count(kept)
    assert "until=" not in page.url
    page.fill("#f-camera", "no such camera")
    page.press("#f-camera", "Enter")
    expect(page.locator("#status")).to_contain_text("No results")
    page.reload()  # filters are part of the link
    expect(page.locator("#filter-count")).to_have_text("5")  # folder, date, duplicates, score, camera
    page.click("#filters-toggle")
    expect(page.locator("#f-camera")).to_have_value("no such camera")
    expect(page.locator("#f-dedup")).to_be_checked()
    page.click("#filters-clear")
    expect(cards).to_have_count(24)
    assert "camera=" not in page.url and "path=" not in page.url

    # browsing (no query) applies the folder, date and camera filters as a search does
    page.goto(site["base"] + "/?to=image&path=beach&camera=canon")
    expect(cards).to_have_count(1)
    expect(page.locator("#status")).to_have_text("1 image under beach matching the filters")
    expect(cards.first.locator(".path")).to_have_attribute("title", str(site["exif_photo"]))
    page.goto(site["base"] + "/?to=image&from=2024-05-01&until=2024-05-01")  # the EXIF date taken
    expect(cards).to_have_count(1)
    page.goto(site["base"] + "/?path=beach&min=0.2")
    expect(page.locator("#status")).to_have_text("All 12 items under beach · score filters apply to searches")
    # a search with a minimum score: until its last page the total is a bound
    page.goto(site["base"] + "/?q=a+dog&min=-1")
    expect(cards).to_have_count(24)
    expect(page.locator("#status")).to_contain_text(f"24 of at most {ITEMS} results · scroll for more")


def test_phone_width_never_scrolls_sideways(phone: Page) -> None:
    from playwright.sync_api import expect

    page, site = phone.page, phone.site
    page.goto(site["base"] + "/?q=people+in+a+city&to=image")
    cards = page.locator("#results .card")
    expect(cards).to_have_count(24)
    wait_for_pictures(page, 4)
    phone.fits()
    phone.shot("phone-search")
    long_name = site["tmp"] / ("a-photo-with-a-very-long-file-name-from-a-camera-roll-" * 3 + ".jpg")
    shutil.copy2(sorted((site["media"] / "beach").glob("*.jpg"))[0], long_name)
    page.set_input_files("#file", str(long_name))
    expect(page.locator("#query-chip")).to_be_visible()
    expect(cards.first).to_be_visible()
    phone.fits()
    phone.shot("phone-file")
    page.locator("#results .like").first.click()
    page.wait_for_url(re.compile(r"like=\d+"))
    expect(page.locator("#query-label")).to_contain_text("like")
    phone.fits()
    page.click("#filters-toggle")
    expect(page.locator("#filters")).to_be_visible()
    phone.fits()
    phone.shot("phone-filters")
    page.click("#filters-toggle")
    cards.first.locator(".open").click()
    expect(page.locator("#detail")).to_be_visible()
    page.wait_for_function("() => document.querySelector('#detail-media img')?.naturalWidth > 0")
    phone.fits()
    assert page.evaluate("document.querySelector('#detail').getBoundingClientRect().right <= innerWidth")
    phone.shot("phone-detail")
    page.click("#detail-close")
    page.goto(site["base"] + "/?to=audio")
    expect(cards).to_have_count(6)
    phone.fits()
    page.goto(site["base"] + "/?q=a+dog&min=-1")  # the total, as a bound, in the status line
    expect(page.locator("#status")).to_contain_text(f"24 of at most {ITEMS} results")
    phone.fits()
    page.goto(site["base"] + "/?to=image&path=beach&camera=canon")  # browsing with filters
    expect(page.locator("#status")).to_have_text("1 image under beach matching the filters")
    phone.fits()
    page.goto(site["base"] + "/?view=stats")
    expect(page.locator("#stats .health")).to_have_count(5)
    phone.fits()


def test_thumbnails_show_a_loading_state(desktop: Page) -> None:
    from playwright.sync_api import expect

    page = desktop.page
    held: list[Any] = []
    page.route("**/items/*/thumbnail*", lambda route: held.append(route))  # answered later, by hand
    page.goto(desktop.site["base"] + "/?to=image&path=beach")
    pics = page.locator("#results .pic")
    expect(pics).to_have_count(12)
    expect(page.locator("#results .pic.loading")).to_have_count(12)
    assert page.evaluate("getComputedStyle(document.querySelector('#results .pic.loading')).animationName") == "shimmer"
    for _ in range(100):  # the route handler hears a request only while Playwright is waited on
        if held:
            break
        page.wait_for_timeout(50)
    assert held  # the page asked for them, and waits
    for route in held:
        route.continue_()
    page.unroute("**/items/*/thumbnail*")
    expect(page.locator("#results .pic.loading")).to_have_count(0)
    wait_for_pictures(page, 12)


def test_catalog_and_health(desktop: Page) -> None:
    from playwright.sync_api import expect

    page = desktop.page
    page.goto(desktop.site["base"] + "/?q=a+dog")
    expect(page.locator("#results .card")).to_have_count(24)
    page.click("#stats-open")
    stats = page.locator("#stats")
    expect(stats).to_be_visible()
    page.wait_for_url(re.compile(r"view=stats"))
    expect(stats.locator(".tile")).to_have_text(["24images", "26texts", "6sounds", "1video"])
    rows = stats.locator("section:has(h3:text('Indexes')) tbody tr")
    expect(rows).to_have_count(5)
    vectors = dict(zip(rows.locator("td:first-child").all_inner_texts(), rows.locator("td:nth-child(3)").all_inner_texts()))
    assert {k: v for k, v in vectors.items() if k != "clip.video"} == \
        {"clap.audio": "7", "clap.text": "26", "clip.image": "24", "clip.text": "26"}  # a sound: a vector per window
    assert int(vectors["clip.video"]) >= 2  # the video shows two photos: a frame of each at least
    expect(stats.locator(".health.ok")).to_have_count(5)
    history = stats.locator("section:has(h3:text('Indexing history')) tbody tr")  # the fixture's run, by Python
    expect(history).to_have_count(1)
    assert history.locator("td").nth(2).inner_text() == "34 · 0 · 0 · 0"
    desktop.shot("stats")
    page.keyboard.press("Escape")
    expect(stats).to_be_hidden()
    page.wait_for_url(re.compile(r"\?q=a\+dog$"))


def test_video_results_show_a_poster_and_play_from_the_match(desktop: Page) -> None:
    """Videos come from another branch: the page renders the contract (modality "video", start and
    end in seconds, a frame at ?t=, the file with a media fragment) through its own functions."""
    from playwright.sync_api import expect

    page, site = desktop.page, desktop.site
    page.goto(site["base"] + "/?to=image")
    expect(page.locator("label:has-text('Videos') input")).to_have_attribute("value", "video")
    first = page.locator("#results .card").first
    image_id = int(first.get_attribute("data-id"))
    root = str(site["media"])
    out = page.evaluate("""([id, root]) => {
        const hit = {id, path: root + "/clips/harbour.mp4", modality: "video", score: 0.31, start: 72.5, end: 77.5,
                     duration: 300, tags: []};
        const card = window.mmsearch.card(hit, 0);
        document.querySelector('#results').prepend(card);
        window.mmsearch.detailMedia(hit);
        return {poster: card.querySelector('.open img').getAttribute('src'), stamp: card.querySelector('.stamp').textContent,
                why: card.querySelector('.why').textContent, path: card.querySelector('.path').textContent,
                video: document.querySelector('#detail-media video').getAttribute('src'),
                frame: document.querySelector('#detail-media video').getAttribute('poster')};
    }""", [image_id, root])
    assert out == {"poster": f"/items/{image_id}/thumbnail?size=384&t=72.50", "stamp": "1:12.5–1:17.5",
                   "why": "matched: 1:12.5–1:17.5 of 5:00", "path": "clips/harbour.mp4",
                   "video": f"/items/{image_id}/media#t=72.50,77.50",
                   "frame": f"/items/{image_id}/thumbnail?size=1024&t=72.50"}
    # a span's two ends at one precision, whole seconds or not (was "0:00–0:02.0" beside "0:03–0:06"), rounded first
    spans = page.evaluate("""() => [[0, 2.04], [3, 6], [4, 4.5], [59.97, 61.2]].map(([start, end]) =>
        window.mmsearch.whyOf({modality: "video", score: 0.3, start, end, duration: 90})[1])""")
    assert spans == ["0:00.0–0:02.0 of 1:30", "0:03.0–0:06.0 of 1:30", "0:04.0–0:04.5 of 1:30", "1:00.0–1:01.2 of 1:30"]
    # a calibrated hit (the trial's numbers): the cosine is `cosine`; an answer without it falls back on `score`
    scores = page.evaluate("""() => [{score: 2.3809, cosine: 0.269, calibrated: 2.3809}, {score: 0.31}]
        .map(h => { const s = window.mmsearch.scoreOf(h); return [s.text, s.sub, s.title]; })""")
    assert scores[0][:2] == ["2.38", "cos 0.27"] and scores[1][:2] == ["0.310", ""]
    assert scores[0][2].startswith("Calibrated score 2.38") and scores[0][2].endswith("Cosine similarity 0.269")
    assert scores[1][2].startswith("Cosine similarity 0.310")
    expect(page.locator("#results .card").first.locator(".pic img")).to_be_visible()


def test_a_video_found_at_its_moment_plays_from_there(desktop: Page) -> None:
    from playwright.sync_api import expect

    page, site = desktop.page, desktop.site
    page.goto(site["base"] + "/?to=video")
    with page.expect_response(lambda r: r.url.endswith("/search") and r.request.method == "POST") as answer:
        page.set_input_files("#file", str(sorted((FLICKR / "images").glob("*.jpg"))[1]))  # what it shows from 4 s
    [hit] = answer.value.json()["results"]
    card = page.locator("#results .card")
    expect(card).to_have_count(1)
    expect(card.locator(".stamp")).to_have_text(re.compile(r"^0:0[4-7]\.\d–0:0\d\.\d$"))  # both ends in tenths
    expect(card.locator(".score")).to_have_text(score_text(hit))
    start = float(page.evaluate("() => new URL(document.querySelector('#results .pic img').src).searchParams.get('t')"))
    assert start >= 4
    expect(card.locator(".why")).to_have_text(re.compile(r"^matched: .* of 0:0[78](\.\d)?$"))  # about 8 s long
    wait_for_pictures(page, 1)  # the frame at the matched moment, from /items/{id}/thumbnail?t=
    assert card.locator(".pic img").evaluate("i => i.naturalWidth") > 0
    card.locator(".open").click()
    shown = (f"Calibrated score {fixed(hit['calibrated'], 2)} (cos {fixed(hit['cosine'], 2)})"
             if hit["calibrated"] is not None else f"Cosine {fixed(hit['cosine'], 3)}")  # says which it is
    expect(page.locator("#detail-why")).to_have_text(f"{shown} · {card.locator('.why').text_content()}")
    video = page.locator("#detail-media video")
    expect(video).to_have_attribute("src", re.compile(rf"/media#t={start:.2f},\d+\.\d\d$"))
    played = video.evaluate("""v => new Promise(done => {
        const report = () => done({duration: v.duration, at: v.currentTime});
        if (v.readyState >= 1) report(); else { v.onloadedmetadata = report; v.onerror = () => done(null); }
    })""")
    assert played and played["duration"] > 7 and abs(played["at"] - start) < 0.5, played
    desktop.shot("detail-video")
