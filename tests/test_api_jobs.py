"""Indexing jobs over HTTP: start, follow, cancel, conflicts, path rules, and queries that keep
answering (with whole indexes only) while a job runs."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from mmsearch.api.app import create_app
from mmsearch.engine import Engine

FLICKR = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k-1k"


def wait_for(client: TestClient, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still running after {timeout} s")


@pytest.fixture
def library(tmp_path: Path, photo_dir: Path) -> Path:
    """The index root: the photo folder, and a larger folder for a job long enough to cancel."""
    lib = tmp_path / "library"
    lib.mkdir()
    shutil.move(str(photo_dir), lib / "photos")
    many = lib / "many"
    many.mkdir()
    for src in sorted((FLICKR / "images").glob("*.jpg"))[100:220]:
        shutil.copy2(src, many / src.name)
    (lib / "a-file.txt").write_text("not a folder")
    return lib


@pytest.fixture
def client(make_settings: Any, library: Path) -> Any:
    engine = Engine.open(make_settings(index_roots=[library]))
    with TestClient(create_app(engine)) as c:
        yield c
    engine.close()


def test_job_indexes_while_queries_answer(client: TestClient, library: Path) -> None:
    photos = library / "photos"
    # Half the photos are in the catalog already; a job brings in the other half.
    first = client.post("/jobs", json={"path": str(photos / "city")})
    assert first.status_code == 202
    assert wait_for(client, first.json()["id"])["state"] == "done"
    assert len(client.get("/search", params={"text": "x", "to": "image", "k": 100}).json()["results"]) == 12

    seen: list[tuple[str, int]] = []
    errors: list[str] = []
    stop = threading.Event()
    job_state = {"state": "queued"}

    def query() -> None:
        while not stop.is_set():
            state = job_state["state"]
            r = client.get("/search", params={"text": "a photo", "to": "image", "k": 100})
            if r.status_code != 200:
                errors.append(r.text)
                continue
            seen.append((state, len(r.json()["results"])))

    threads = [threading.Thread(target=query) for _ in range(3)]
    for th in threads:
        th.start()
    try:
        r = client.post("/jobs", json={"path": "photos"})  # relative to the first index root
        assert r.status_code == 202, r.text
        job = r.json()
        assert r.headers["location"] == job["url"] == f"/jobs/{job['id']}"
        assert job["path"] == str(photos)
        progress = set()
        while job["state"] in ("queued", "running"):
            job = client.get(job["url"]).json()
            job_state["state"] = job["state"]
            progress.add((job["done"], job["total"]))
            time.sleep(0.02)
        time.sleep(0.3)  # a few queries after the end
    finally:
        stop.set()
        for th in threads:
            th.join()

    assert not errors, errors[:3]
    assert job["state"] == "done" and job["error"] is None
    assert job["report"]["added"] == 15 and job["report"]["unchanged"] == 12 and job["report"]["failed"] == 0
    assert job["done"] == job["total"] == 15 and job["finished_at"] >= job["started_at"]
    st = job["status"]  # the same progress the CLI draws: phase, items, ETA
    assert st["phase"] == "done" and st["files_done"] == st["files_total"] == 15
    assert st["items_done"] == st["items_total"] >= 15 and st["elapsed_s"] > 0  # vectors: a note has two
    assert any(state == "running" for state, _ in seen), "no query ran while the job did"
    # Whole indexes only: before the job's sync 12 images, after it 24, never anything between.
    assert {n for _, n in seen} <= {12, 24} and seen[-1][1] == 24
    listed = client.get("/jobs").json()["jobs"]
    assert [j["id"] for j in listed][:2] == [job["id"], first.json()["id"]]


def test_one_write_at_a_time_and_cancel(client: TestClient, library: Path) -> None:
    r = client.post("/jobs", json={"path": str(library / "many")})
    assert r.status_code == 202
    job_id = r.json()["id"]
    second = client.post("/jobs", json={"path": str(library / "photos")})
    assert second.status_code == 409 and job_id in second.json()["detail"]
    assert client.delete("/items/999999").status_code == 404  # a delete is not refused: it shares the job's writer
    r = client.delete(f"/jobs/{job_id}")
    assert r.status_code == 202
    job = wait_for(client, job_id)
    assert job["state"] == "cancelled", job
    assert job["report"]["added"] < 120
    kept = job["report"]["added"]
    hits = client.get("/search", params={"text": "x", "to": "image", "k": 500}).json()["results"]
    assert len(hits) == kept  # what was embedded before the cancel is searchable
    # The catalog is free again.
    r = client.post("/jobs", json={"path": str(library / "photos")})
    assert r.status_code == 202
    assert wait_for(client, r.json()["id"])["state"] == "done"
    assert client.delete(f"/jobs/{job_id}").json()["state"] == "cancelled"  # cancelling a finished job: no-op


@pytest.mark.parametrize("path,status,fragment", [
    ("/etc", 403, "not under an index root"),
    ("..", 403, "not under an index root"),
    ("photos/../../..", 403, "not under an index root"),
    ("nope", 404, "no such folder"),
    ("a-file.txt", 400, "not a folder"),
    ("a\x00b", 422, "NUL"),
    ("", 422, "path"),
    ("x" * 300, 400, "cannot use"),
    ("photos/" + "y" * 300 + "/z", 400, "cannot use"),
])
def test_job_path_rules(client: TestClient, path: str, status: int, fragment: str) -> None:
    r = client.post("/jobs", json={"path": path})
    assert r.status_code == status, r.text
    assert fragment in str(r.json()["detail"])


def test_symlink_out_of_the_root_is_refused(client: TestClient, library: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (library / "link").symlink_to(outside)
    r = client.post("/jobs", json={"path": "link"})
    assert r.status_code == 403


def test_unknown_jobs(client: TestClient) -> None:
    assert client.get("/jobs/0123456789ab").status_code == 404
    assert client.delete("/jobs/0123456789ab").status_code == 404
    assert client.get("/jobs/bad.id").status_code == 422
    assert client.post("/jobs", json={"path": "photos", "extra": 1}).status_code == 422
    assert client.post("/jobs", json={}).status_code == 422
    assert client.get("/jobs").json() == {"jobs": []}
