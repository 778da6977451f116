"""The catalog's indexing history: every run, whichever face ran it, is summarised for `stats`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from PIL import Image

from mmsearch import Engine
from mmsearch.api.app import create_app
from mmsearch.storage import catalog as catalog_module
from tests.conftest import flickr_images


def test_each_run_is_kept_newest_first_and_the_history_is_bounded(tmp_path: Path, make_settings: Any,
                                                                   monkeypatch: Any) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    for i, src in enumerate(flickr_images(3)):
        Image.open(src).convert("RGB").resize((96, 72)).save(lib / f"p{i}.jpg")
    (lib / "notes.bin").write_bytes(b"\x00\x01 not media")
    with Engine.open(make_settings(audio=False)) as engine:
        engine.index([lib])
        (lib / "p0.jpg").unlink()
        engine.index([lib])
        runs = engine.stats()["runs"]
        assert [(r["added"], r["removed"], r["unchanged"], r["failed"], r["skipped"]) for r in runs] == \
            [(0, 1, 2, 0, 1), (3, 0, 0, 0, 1)]  # newest first
        assert runs[0]["roots"] == [str(lib.resolve())] and runs[0]["ray"] is False
        assert runs[0]["finished"] >= runs[1]["finished"] and runs[1]["seconds"] > 0
        with TestClient(create_app(engine)) as client:
            assert client.get("/stats").json()["runs"] == runs

        monkeypatch.setattr(catalog_module, "KEEP_RUNS", 3)
        for _ in range(3):
            engine.index([lib])
        kept = engine.catalog.runs()
        assert len(kept) == 3 and all(r["unchanged"] == 2 and r["added"] == 0 for r in kept)
