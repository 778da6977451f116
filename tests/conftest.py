"""Shared fixtures: a tiny random CLIP built and saved by the tests, real media from ../shared/data."""

from __future__ import annotations

import csv
import gc
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
FLICKR = DATA / "flickr8k-1k"
TUXPAINT = DATA / "tuxpaint"
ANIMALS = DATA / "animals-cc0"
CONFIG_DIR = Path(__file__).parent / "assets"
# the device the shared fixtures' encoders run on: the CPU in CI; MMSEARCH_TEST_DEVICE=cuda runs the
# same tests on a GPU machine (fp16 autocast, device-side image staging), as docs/benchmarks.md does
DEVICE = os.environ.get("MMSEARCH_TEST_DEVICE", "cpu")
TINY_ARCH = "mmtest-tiny"


def pytest_configure(config: pytest.Config) -> None:
    if not FLICKR.is_dir():
        raise pytest.UsageError(f"test media missing: {DATA} (see ../shared/data/README.md)")


@pytest.fixture(scope="session", autouse=True)
def export_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One ONNX export cache for the run, for every test and every process a test starts: each
    tiny model is exported once (the CPU runtime is the default on a CPU), never into ~/.cache."""
    folder = tmp_path_factory.mktemp("export-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MMSEARCH_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="session")
def tiny_clip_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny open_clip model saved as a local checkpoint file."""
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)
    torch.manual_seed(1234)
    model = open_clip.create_model(TINY_ARCH, pretrained=None)
    path = tmp_path_factory.mktemp("clip") / "tiny-clip.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    return path


@pytest.fixture(scope="session")
def clip_spec(tiny_clip_checkpoint: Path) -> str:
    return f"open_clip:{TINY_ARCH}@{tiny_clip_checkpoint}"


@pytest.fixture(scope="session")
def tiny_clap_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_clap import make_tiny_clap

    return make_tiny_clap(tmp_path_factory.mktemp("clap"))


@pytest.fixture
def make_settings(tmp_path: Path, clip_spec: str):  # type: ignore[no-untyped-def]
    from mmsearch.settings import Settings

    def make(**overrides):  # type: ignore[no-untyped-def]
        values = dict(catalog=tmp_path / "catalog", model=clip_spec, model_config_dirs=[CONFIG_DIR],
                      audio=False, batch_size=16, decode_workers=2, device=DEVICE)
        values.update(overrides)
        return Settings(**values)

    return make


@contextmanager
def served(settings: Any, folder: Path, **app: Any) -> Iterator[tuple[Any, Any]]:
    """An engine that indexed ``folder`` with no failure, and a test client of its HTTP app
    (``app``: create_app's options); closed after."""
    from fastapi.testclient import TestClient

    from mmsearch.api.app import create_app
    from mmsearch.engine import Engine

    engine = Engine.open(settings)
    try:
        report = engine.index([folder])
        assert report.failed == 0, report.failures
        with TestClient(create_app(engine, **app)) as client:
            yield engine, client
    finally:
        engine.close()


def flickr_images(n: int) -> list[Path]:
    return sorted((FLICKR / "images").glob("*.jpg"))[:n]


def refuse_storing(monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    """The catalog refuses any batch of file records holding a successful one for a path ending
    in ``suffix``, as a database refuses a row it cannot store (a batch fails whole)."""
    from sqlalchemy.exc import StatementError

    from mmsearch.storage.catalog import Catalog

    real = Catalog.commit_files

    def picky(self, records):  # type: ignore[no-untyped-def]
        if any(r.path.endswith(suffix) and not r.error for r in records):
            raise StatementError("refused by the database", "INSERT", {}, ValueError("refused"))
        return real(self, records)

    monkeypatch.setattr(Catalog, "commit_files", picky)


def linked_photos(folder: Path, n: int) -> list[Path]:
    """A folder of n Flickr photos behind symlinks (cheap, and real files to decode). The links
    point out of the folder, so indexing it takes ``follow_links=True``."""
    folder.mkdir(parents=True)
    sources = flickr_images(n)
    for src in sources:
        os.symlink(src, folder / src.name)
    return sources


def files_committed(proc: subprocess.Popen, db: Path, at_least: int, timeout: float) -> int:
    """Files the ingest in ``proc`` has committed to the catalog ``db``, once there are
    ``at_least``, the process has ended or ``timeout`` seconds have passed: how a test catches an
    ingest half-way to interrupt it."""
    deadline, committed = time.time() + timeout, 0
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                with sqlite3.connect(db) as conn:
                    committed = conn.execute("select count(*) from files").fetchone()[0]
            except sqlite3.OperationalError:
                committed = 0
            if committed >= at_least:
                break
        time.sleep(0.05)
    return committed


@pytest.fixture
def photo_dir(tmp_path: Path) -> Path:
    """A small media folder: 24 Flickr8k photos in two sub-folders, their captions, two notes."""
    root = tmp_path / "media"
    images = flickr_images(24)
    for i, src in enumerate(images):
        dest = root / ("beach" if i % 2 else "city") / src.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
    names = {p.name for p in images}
    with open(FLICKR / "captions.csv", newline="") as fh, open(root / "captions.csv", "w", newline="") as out:
        reader = csv.DictReader(fh)
        writer = csv.writer(out)
        writer.writerow(["image", "caption"])
        seen: set[str] = set()
        for row in reader:
            if row["image"] in names and row["image"] not in seen:  # first caption of each image
                seen.add(row["image"])
                sub = "beach" if images.index(FLICKR / "images" / row["image"]) % 2 else "city"
                writer.writerow([f"{sub}/{row['image']}", row["caption"]])
    (root / "notes").mkdir()
    (root / "notes" / "dogs.txt").write_text("Two dogs play fetch on a sandy beach at sunset.")
    (root / "notes" / "städte.md").write_text("# Städte\n\nA busy city street with yellow taxis.")
    os.utime(root, None)
    return root


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Small tmpfs mounts (``tmpfs("2m")``) to fill up for real: full-disk tests. Mounting needs
    root, which the suite has in CI; elsewhere those tests are skipped."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        disk = tmp_path / f"disk{len(mounted)}"
        disk.mkdir()
        if os.geteuid() != 0 or not shutil.which("mount"):
            pytest.skip("mounting a tmpfs needs root")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                              capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(disk)
        return disk

    yield mount
    gc.collect()  # a failure's traceback may still hold a connection's open files
    for disk in mounted:
        subprocess.run(["umount", "--lazy", str(disk)], check=True)
