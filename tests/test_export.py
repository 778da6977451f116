"""Vectors out: ``Engine.vectors``, ``mmsearch export`` to Parquet and .npy, and items with several
segments (a long sound's windows) as profiles; over a real catalog of photos, notes and sounds
(one of them long enough for several windows), with the tiny CLIP and CLAP models."""

from __future__ import annotations

import csv
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from mmsearch import BadInput, Engine, NotFound
from mmsearch.cli import app
from tests.conftest import CONFIG_DIR, TUXPAINT, flickr_images


def long_sound(dest: Path, sources: list[Path], sr: int = 48_000) -> None:
    """Real sounds end to end, 25 s and more: several 10 s windows."""
    import soxr

    parts, total = [], 0.0
    for src in sources:
        data, rate = sf.read(src, dtype="float32", always_2d=True)
        parts.append(soxr.resample(data.mean(axis=1), rate, sr))
        total += len(parts[-1]) / sr
        if total > 25:
            break
    sf.write(dest, np.concatenate(parts), sr)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, clip_spec: str, tiny_clap_dir: Path) -> Iterator[dict[str, Any]]:
    from mmsearch.settings import Settings

    tmp = tmp_path_factory.mktemp("export")
    root = tmp / "media"
    for sub in ("photos", "sounds", "notes"):
        (root / sub).mkdir(parents=True)
    for src in flickr_images(6):
        shutil.copy2(src, root / "photos" / src.name)
    sounds = sorted((TUXPAINT / "audio").glob("*.ogg"))
    for src in sounds[:6]:
        shutil.copy2(src, root / "sounds" / src.name)
    long_sound(root / "sounds" / "long, with a comma.wav", sounds[6:])
    (root / "notes" / "dogs.txt").write_text("Two dogs play fetch on a sandy beach at sunset.")
    settings = Settings(catalog=tmp / "catalog", model=clip_spec, model_config_dirs=[CONFIG_DIR], audio=True,
                        audio_model=f"clap:{tiny_clap_dir}", batch_size=16, decode_workers=2, device="cpu")
    engine = Engine.open(settings)
    assert engine.index([root]).failed == 0
    yield {"engine": engine, "root": root, "settings": settings, "tmp": tmp,
           "long": engine.lookup(root / "sounds" / "long, with a comma.wav")[0],
           "photo": engine.lookup(sorted((root / "photos").iterdir())[0])[0],
           "note": engine.lookup(root / "notes" / "dogs.txt")[0],
           "sounds": [engine.lookup(p)[0] for p in sorted((root / "sounds").glob("*.ogg"))]}
    engine.close()


def all_items(engine: Engine) -> list[int]:
    from sqlalchemy import select

    from mmsearch.storage.models import Item

    with engine.catalog.sessions() as s:
        return sorted(s.scalars(select(Item.id)))


# -- Engine.vectors -----------------------------------------------------------------------------

def test_vectors_of_items_with_their_collections_and_spans(world: dict[str, Any]) -> None:
    engine: Engine = world["engine"]
    out = engine.vectors([world["photo"], world["note"], world["long"]])
    assert set(out) == {"clip.image", "clip.text", "clap.text", "clap.audio"}  # a note is in both spaces
    image = out["clip.image"]
    assert image.item_ids.tolist() == [world["photo"]] and image.vectors.shape == (1, 32)
    assert np.isnan(image.start).all() and np.isnan(image.end).all()
    assert np.linalg.norm(image.vectors[0]) == pytest.approx(1.0, abs=2e-3)
    sound = out["clap.audio"]
    assert len(sound) >= 4 and set(sound.item_ids.tolist()) == {world["long"]}
    assert sound.start.tolist() == sorted(sound.start.tolist()) and sound.start[0] == 0.0
    assert (sound.end > sound.start).all()
    store = engine.indexes.store("clap.audio", sound.vectors.shape[1])
    assert np.array_equal(store.get(sound.ids), sound.vectors)  # what is stored, with its FAISS ids
    assert list(engine.vectors([world["photo"]], collection="clip.text")) == []
    with pytest.raises(NotFound, match="99999"):
        engine.vectors([world["photo"], 99_999])


def test_a_long_sound_as_a_profile_is_the_mean_of_its_windows(world: dict[str, Any]) -> None:
    engine: Engine = world["engine"]
    windows = engine.vectors([world["long"]])["clap.audio"].vectors
    mean = windows.mean(axis=0)
    mean /= np.linalg.norm(mean)
    assert np.allclose(engine.runner.item_vector(world["long"], "clap"), mean, atol=1e-5)
    hits = engine.recommend(like=[world["long"]], k=3).results
    assert hits and all(h.modality == "audio" and h.id != world["long"] for h in hits)  # its own modality
    top = engine.vectors([hits[0].id])["clap.audio"]
    unit = top.vectors / np.linalg.norm(top.vectors, axis=1, keepdims=True)
    assert hits[0].score == pytest.approx(float((unit @ mean).max()), abs=1e-4)  # an item scores as its best window
    # and the other way: a short sound liked, the long one found, with the best window's span
    found = engine.recommend(like=[world["sounds"][0]], to="audio", k=10).results
    long_hit = next(h for h in found if h.id == world["long"])
    assert long_hit.start is not None and long_hit.end is not None and long_hit.end > long_hit.start


# -- export -------------------------------------------------------------------------------------

def expected(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Per collection, (embedding id, item id, path, modality, start, end) from Engine.vectors."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    for coll, part in engine.vectors(all_items(engine)).items():
        out[coll] = [(e, i, engine.item(i).path, engine.item(i).modality, None if math.isnan(a) else a,
                      None if math.isnan(b) else b)
                     for e, i, a, b in zip(part.ids.tolist(), part.item_ids.tolist(), part.start.tolist(),
                                           part.end.tolist())]
    return out


def test_parquet_export_round_trips(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow.parquet as pq

    from mmsearch import export as export_module

    engine: Engine = world["engine"]
    monkeypatch.setattr(export_module, "BLOCK_ROWS", 4)  # several blocks: the stream, not one read
    out = world["tmp"] / "all.parquet"
    counts = engine.export(out)
    want = expected(engine)
    assert counts == {c: len(rows) for c, rows in want.items()}
    assert pq.ParquetFile(out).metadata.num_row_groups > len(want)
    table = pq.read_table(out).to_pydict()
    vectors = engine.vectors(all_items(engine))
    for coll, rows in want.items():
        mine = {k: [v for v, c in zip(col, table["collection"]) if c == coll] for k, col in table.items()}
        got = list(zip(mine["embedding_id"], mine["item_id"], mine["path"], mine["modality"], mine["start"],
                       mine["end"]))
        assert got == rows
        assert np.array_equal(np.array(mine["vector"], dtype=np.float32), vectors[coll].vectors)
    assert pq.read_schema(out).field("vector").type.value_type.bit_width == 32  # CLIP 32-d, CLAP 24-d: lists
    engine.export(out, collections=["clip.image", "clip.text"])  # one dimension: fixed-size lists
    assert pq.read_schema(out).field("vector").type.list_size == 32
    assert np.array(pq.read_table(out)["vector"].to_pylist()).shape == (7, 32)


def test_npy_export_round_trips(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from mmsearch import export as export_module

    engine: Engine = world["engine"]
    monkeypatch.setattr(export_module, "BLOCK_ROWS", 3)
    out = world["tmp"] / "npy"
    counts = engine.export(out, format="npy", collections=["clap.audio", "clip.image"])
    want = expected(engine)
    assert counts == {"clap.audio": len(want["clap.audio"]), "clip.image": len(want["clip.image"])}
    assert sorted(p.name for p in out.iterdir()) == ["clap.audio.csv", "clap.audio.npy", "clip.image.csv",
                                                     "clip.image.npy"]
    vectors = engine.vectors(all_items(engine))
    for coll in counts:
        matrix = np.load(out / f"{coll}.npy")
        assert matrix.dtype == np.float32 and np.array_equal(matrix, vectors[coll].vectors)
        with open(out / f"{coll}.csv", newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        got = [(int(r["embedding_id"]), int(r["item_id"]), r["path"], r["modality"],
                float(r["start"]) if r["start"] else None, float(r["end"]) if r["end"] else None) for r in rows]
        assert got == want[coll]


def test_export_refuses_unknown_collections_and_formats(world: dict[str, Any]) -> None:
    engine: Engine = world["engine"]
    with pytest.raises(BadInput, match="no collection 'clip.audio'"):
        engine.export(world["tmp"] / "x.parquet", collections=["clip.audio"])
    with pytest.raises(BadInput, match="format"):
        engine.export(world["tmp"] / "x.csv", format="csv")  # type: ignore[arg-type]


def test_cli_export_and_recommend(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    engine: Engine = world["engine"]
    settings = world["settings"]
    monkeypatch.setenv("MMSEARCH_MODEL_CONFIG_DIRS", json.dumps([str(CONFIG_DIR)]))
    monkeypatch.setenv("MMSEARCH_DEVICE", "cpu")
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> Any:
        result = runner.invoke(app, [*args, "--catalog", str(settings.catalog)])
        assert result.exit_code == code, result.output
        return result

    out = world["tmp"] / "cli-npy"
    done = json.loads(run("export", "--format", "npy", "--out", str(out), "--collection", "clip.image",
                          "--json").stdout)
    assert done["vectors"] == {"clip.image": 6}
    assert np.load(out / "clip.image.npy").shape == (6, 32)
    assert "exported 6 vectors" in run("export", "--out", str(world["tmp"] / "cli.parquet"), "--collection",
                                       "clip.image").stdout
    assert "no collection" in run("export", "--out", str(out), "--collection", "nope", code=2).output

    sounds = world["sounds"]
    got = json.loads(run("recommend", "--like", str(sounds[0]), "--like", f"{sounds[1]}:2", "--dislike",
                         str(sounds[2]), "--exclude", str(sounds[3]), "-k", "4", "--json").stdout)
    want = engine.recommend(like={sounds[0]: 1.0, sounds[1]: 2.0}, dislike=[sounds[2]], exclude_ids=[sounds[3]], k=4)
    assert [h["id"] for h in got["results"]] == [h.id for h in want.results]
    assert "ID:WEIGHT" in run("recommend", "--like", "x7", code=2).output
    assert "no item 99999" in run("recommend", "--like", "99999", code=3).output
    assert "scoring" in run("recommend", "--like", str(sounds[0]), "--scoring", "worst", code=2).output
