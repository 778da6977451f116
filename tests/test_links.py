"""What indexing may read: symlinks and caption rows stay inside the folders being indexed unless
``follow_links`` says otherwise, and the HTTP service never leaves its index roots."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from mmsearch import Engine, Query
from mmsearch.api.app import create_app
from mmsearch.cli import app
from mmsearch.indexer.scan import dedupe_roots
from tests.conftest import CONFIG_DIR, flickr_images
from tests.test_api_jobs import wait_for

SECRET = "SECRET-PASSWD root:x:0:0:root:/root:/bin/bash"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder next to the media folder, never named as a root: a secret note and a photo."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "passwd.txt").write_text(SECRET)
    shutil.copy2(flickr_images(30)[-1], folder / "secret.jpg")
    return folder


def _plant(kind: str, photo_dir: Path, outside: Path) -> None:
    if kind == "file":
        (photo_dir / "notes" / "passwd.txt").symlink_to(outside / "passwd.txt")
    else:
        (photo_dir / "elsewhere").symlink_to(outside)


def _leaks(client: TestClient) -> list[str]:
    """Every answer that shows something from outside: any item's metadata, or a search."""
    answers = {f"/items/{i}": client.get(f"/items/{i}") for i in range(1, 120)}
    for to in ("text", "image"):
        answers[f"/search to {to}"] = r = client.get("/search", params={"text": SECRET, "to": to, "k": 100})
        assert r.status_code == 200 and r.json()["results"]
    return [url for url, r in answers.items() if SECRET in r.text or "secret.jpg" in r.text]


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_links_out_of_the_root_are_skipped_and_counted(make_settings: Any, photo_dir: Path, outside: Path,
                                                       kind: str) -> None:
    _plant(kind, photo_dir, outside)
    with Engine.open(make_settings()) as engine:
        report = engine.index([photo_dir])
        with TestClient(create_app(engine)) as client:
            assert _leaks(client) == []
        assert (report.added, report.failed, report.skipped_links) == (27, 0, 1)
        assert report.as_dict()["skipped_links"] == 1


def test_links_inside_the_root_are_followed_once(make_settings: Any, photo_dir: Path) -> None:
    (photo_dir / "zz-beach").symlink_to(photo_dir / "beach")  # listed after beach, entered first by the old walk
    (photo_dir / "notes" / "see-also.txt").symlink_to(photo_dir / "notes" / "dogs.txt")
    with Engine.open(make_settings()) as engine:
        report = engine.index([photo_dir])
        images = {h.path for h in engine.search(Query(text="x", to="image", k=100)).results}
        assert images == {str(p) for sub in ("beach", "city") for p in (photo_dir / sub).glob("*.jpg")}  # by real path
        assert (report.added, report.skipped_links) == (28, 0)
        captions = engine.search(Query(text="a", to="text", k=100, path=str(photo_dir / "captions.csv"))).results
        assert {h.ref_path for h in captions} == images
        note = engine.search(Query(text="x", to="text", k=100, path=str(photo_dir / "notes" / "see-also.txt")))
        assert [h.text for h in note.results] == [(photo_dir / "notes" / "dogs.txt").read_text()]


def test_follow_links_reads_outside_targets(monkeypatch: pytest.MonkeyPatch, make_settings: Any, clip_spec: str,
                                            photo_dir: Path, outside: Path) -> None:
    monkeypatch.setenv("MMSEARCH_MODEL_CONFIG_DIRS", json.dumps([str(CONFIG_DIR)]))
    monkeypatch.setenv("MMSEARCH_DEVICE", "cpu")
    _plant("file", photo_dir, outside)
    _plant("folder", photo_dir, outside)
    settings = make_settings()
    base = ["index", str(photo_dir), "--catalog", str(settings.catalog), "--model", clip_spec, "--no-audio"]
    plain = CliRunner().invoke(app, base)
    assert plain.exit_code == 0 and "skipped links 2" in plain.stdout, plain.output
    followed = CliRunner().invoke(app, [*base, "--follow-links", "--json"])
    assert followed.exit_code == 0, followed.output
    report = json.loads(followed.stdout.strip().splitlines()[-1])
    assert (report["added"], report["unchanged"], report["skipped_links"]) == (3, 27, 0)
    with Engine.open(settings) as engine:
        hits = engine.search(Query(text=SECRET, to="text", k=100)).results
        assert {h.path for h in hits if h.text == SECRET} == {
            str(photo_dir / "notes" / "passwd.txt"), str(photo_dir / "elsewhere" / "passwd.txt")}


def test_jobs_stay_inside_the_index_roots_even_when_following_links(make_settings: Any, tmp_path: Path,
                                                                     photo_dir: Path, outside: Path) -> None:
    library = tmp_path / "library"
    library.mkdir()
    shutil.move(str(photo_dir), library / "photos")
    (library / "shared").mkdir()
    (library / "shared" / "memo.txt").write_text("A memo kept beside the photos.")
    (library / "photos" / "shared").symlink_to(library / "shared")  # out of the job's folder, inside the roots
    _plant("folder", library / "photos", outside)
    engine = Engine.open(make_settings(index_roots=[library], follow_links=True))
    try:
        with TestClient(create_app(engine)) as client:
            r = client.post("/jobs", json={"path": "photos"})
            assert r.status_code == 202, r.text
            job = wait_for(client, r.json()["id"])
            assert job["state"] == "done" and job["report"]["added"] == 28, job  # the 27 files and the memo
            assert _leaks(client) == []
            assert job["report"]["skipped_links"] == 1
    finally:
        engine.close()


def test_caption_rows_naming_files_outside_the_root_link_to_nothing(make_settings: Any, photo_dir: Path,
                                                                    outside: Path) -> None:
    (photo_dir / "trap").mkdir()
    (photo_dir / "trap" / "link.jpg").symlink_to(outside / "secret.jpg")
    climb = "../" * len(photo_dir.parts) + "etc/passwd"
    rows = [("beach/" + next((photo_dir / "beach").glob("*.jpg")).name, "a row that stays inside"),
            (climb, "a row that climbs to the password file"),
            ("/etc/passwd", "a row naming an absolute path"),
            (str(outside / "secret.jpg"), "a row naming a photo outside"),
            ("../outside/secret.jpg", "a row climbing to a photo outside"),
            ("trap/link.jpg", "a row naming a link out of the root")]
    with open(photo_dir / "trap" / "evil.jsonl", "w") as fh:
        fh.writelines(json.dumps({"image": "../" + m if not m.startswith("/") else m, "caption": c}) + "\n"
                      for m, c in rows)
    with Engine.open(make_settings()) as engine:
        report = engine.index([photo_dir])
        hits = engine.search(Query(text="x", to="text", k=100, path=str(photo_dir / "trap" / "evil.jsonl"))).results
        refs = {h.text: h.ref_path for h in hits}
        assert sorted(refs) == sorted(c for _, c in rows)  # every row's text is indexed
        kept = refs.pop(rows[0][1])
        assert kept and Path(kept).resolve() == photo_dir / rows[0][0]
        assert set(refs.values()) == {None}
        assert report.failed == 0 and report.skipped_links == 1  # trap/link.jpg


def test_overlapping_roots_embed_each_file_once(make_settings: Any, photo_dir: Path) -> None:
    with Engine.open(make_settings()) as engine:
        report = engine.index([photo_dir, photo_dir / "beach", photo_dir])
        assert (report.added, report.items) == (27, 50)
        assert sum(engine.catalog.counts()["embeddings"].values()) == 50
        assert engine.catalog.roots() == [str(photo_dir)]


def test_dedupe_roots() -> None:
    a, b = Path("/data/a"), Path("/data/b")
    assert dedupe_roots([a / "x", a, b, a, Path("/data/ab"), b / "y" / "z"]) == [a, b, Path("/data/ab")]
    assert dedupe_roots([]) == []
