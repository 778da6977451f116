"""Near duplicates: ``dedup`` collapsing near copies in results, and ``duplicates`` listing the
groups of a collection, on every face, checked against brute force over the stored vectors.

Near copies are real photos cropped and resized with Pillow, plus one byte-for-byte copy. The
tiny random model places unrelated photos closer than a real CLIP would, so thresholds are taken
from the copies' own cosines and the expected groups from an exact all-pairs computation: what
is checked is that the search finds every pair and groups them right, not the model.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from mmsearch import Engine, NotFound, Query
from mmsearch.api.app import create_app
from mmsearch.cli import app as cli_app
from mmsearch.search import duplicates as dup_module
from mmsearch.search.duplicates import find_duplicates
from mmsearch.search.live import LiveIndexes
from mmsearch.storage.catalog import Catalog, FileRecord, NewItem
from mmsearch.writer import CatalogWriter
from tests.conftest import CONFIG_DIR, flickr_images

COPIES = {"p0.jpg": "p0_crop.jpg", "p3.jpg": "p3_small.jpg", "p5.jpg": "p5_same.jpg"}


def near_copy(src: Path, dest: Path, crop: float, scale: float) -> None:
    img = Image.open(src).convert("RGB")
    w, h = img.size
    dx, dy = int(w * crop), int(h * crop)
    img.crop((dx, dy, w - dx, h - dy)).resize((int(w * scale), int(h * scale))).save(dest, quality=88)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, clip_spec: str) -> Iterator[dict[str, Any]]:
    from mmsearch.settings import Settings

    tmp = tmp_path_factory.mktemp("dups")
    lib = tmp / "lib"
    lib.mkdir()
    for i, src in enumerate(flickr_images(10)):
        Image.open(src).convert("RGB").save(lib / f"p{i}.jpg", quality=92)
    near_copy(lib / "p0.jpg", lib / "p0_crop.jpg", crop=0.03, scale=0.9)
    near_copy(lib / "p3.jpg", lib / "p3_small.jpg", crop=0.0, scale=0.5)
    shutil.copy(lib / "p5.jpg", lib / "p5_same.jpg")
    settings = Settings(catalog=tmp / "catalog", model=clip_spec, model_config_dirs=[CONFIG_DIR], audio=False,
                        batch_size=16, decode_workers=2, device="cpu")
    engine = Engine.open(settings)
    assert engine.index([lib]).failed == 0
    ids = {p.name: engine.lookup(p)[0] for p in lib.iterdir()}
    store = engine.indexes.store("clip.image", engine.catalog.spaces()["clip"][1])
    item_of = {i: e for e, i in ((int(e), engine.catalog.embedding_items([int(e)])[int(e)][0])
                                 for e in engine.catalog.live_ids("clip.image"))}
    vectors = {item: store.get(np.array([eid]))[0] for item, eid in item_of.items()}
    vectors = {item: v / np.linalg.norm(v) for item, v in vectors.items()}
    with TestClient(create_app(engine)) as client:
        yield {"engine": engine, "lib": lib, "ids": ids, "vectors": vectors, "client": client,
               "catalog": str(tmp / "catalog")}
    engine.close()


def cosine(world: dict[str, Any], a: int, b: int) -> float:
    return float(world["vectors"][a] @ world["vectors"][b])


def copy_threshold(world: dict[str, Any]) -> float:
    """Just below the least similar (original, copy) pair: every copy is a near duplicate."""
    ids = world["ids"]
    return min(cosine(world, ids[a], ids[b]) for a, b in COPIES.items()) - 1e-4


def brute_force_groups(vectors: dict[int, np.ndarray], threshold: float) -> set[frozenset[int]]:
    items = sorted(vectors)
    matrix = np.stack([vectors[i] for i in items])
    sims = matrix @ matrix.T
    parent = {i: i for i in items}

    def root(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in zip(*np.nonzero(np.triu(sims >= threshold, k=1))):
        parent[root(items[a])] = root(items[b])
    groups: dict[int, set[int]] = {}
    for i in items:
        groups.setdefault(root(i), set()).add(i)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def as_sets(groups: list[Any]) -> set[frozenset[int]]:
    """Groups as sets of item ids, from the engine's models or their JSON."""
    out = set()
    for g in groups:
        items = g["items"] if isinstance(g, dict) else g.items
        out.add(frozenset(it["id"] if isinstance(it, dict) else it.id for it in items))
    return out


@pytest.mark.parametrize("small_blocks", [False, True])
def test_duplicates_finds_every_group(world: dict[str, Any], small_blocks: bool,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    if small_blocks:  # several blocks, and vectors whose first neighbours all pass: asked again, deeper
        monkeypatch.setattr(dup_module, "BLOCK", 3)
        monkeypatch.setattr(dup_module, "FIRST_K", 1)
    ids, engine = world["ids"], world["engine"]
    threshold = copy_threshold(world)
    res = engine.duplicates(threshold=threshold)
    expected = brute_force_groups(world["vectors"], threshold)
    assert as_sets(res.groups) == expected
    for original, copy in COPIES.items():  # every copy sits with its original
        assert any({ids[original], ids[copy]} <= g for g in expected)
    sizes = [len(g.items) for g in res.groups]
    assert sizes == sorted(sizes, reverse=True)
    group = next(g for g in res.groups if ids["p5.jpg"] in {it.id for it in g.items})
    assert group.score == pytest.approx(1.0, abs=1e-3)  # the byte-for-byte copy
    assert all(it.path and it.size and it.width for it in group.items)
    assert [it.id for it in group.items] == sorted(it.id for it in group.items)
    # only the exact copy at a threshold near 1
    strict = engine.duplicates(threshold=0.99999)
    assert {ids["p5.jpg"], ids["p5_same.jpg"]} in [{it.id for it in g.items} for g in strict.groups]


def test_duplicates_on_every_face(world: dict[str, Any]) -> None:
    threshold = copy_threshold(world)
    expected = as_sets(world["engine"].duplicates(threshold=threshold).groups)
    runner = CliRunner()
    env = {"MMSEARCH_MODEL_CONFIG_DIRS": json.dumps([str(CONFIG_DIR)]), "MMSEARCH_DEVICE": "cpu"}
    out = runner.invoke(cli_app, ["duplicates", "--threshold", repr(threshold), "--collection", "clip.image",
                                  "--json", "--catalog", world["catalog"]], env=env)
    assert out.exit_code == 0, out.output
    assert as_sets(json.loads(out.stdout)["groups"]) == expected
    human = runner.invoke(cli_app, ["duplicates", "--threshold", repr(threshold), "--catalog", world["catalog"]],
                          env=env)
    assert human.exit_code == 0 and "group 1:" in human.stdout and str(world["lib"]) in human.stdout
    r = world["client"].get("/duplicates", params={"threshold": threshold})
    assert r.status_code == 200 and as_sets(r.json()["groups"]) == expected
    one = world["client"].get("/duplicates", params={"threshold": threshold, "limit": 1}).json()["groups"]
    assert len(one) == 1 and len(one[0]["items"]) == max(len(g) for g in expected)
    assert world["client"].get("/duplicates", params={"threshold": 1.5}).status_code == 422
    assert world["client"].get("/duplicates", params={"collection": "clap.audio"}).status_code == 404
    with pytest.raises(NotFound, match="no collection"):
        world["engine"].duplicates(collection="clap.audio")
    bad = runner.invoke(cli_app, ["duplicates", "--collection", "clip.audio", "--catalog", world["catalog"]], env=env)
    assert bad.exit_code == 3


def greedy_dedup(world: dict[str, Any], ranked: list[int], threshold: float) -> list[int]:
    kept: list[int] = []
    for item in ranked:
        if all(cosine(world, item, k) < threshold for k in kept):
            kept.append(item)
    return kept


def test_dedup_collapses_near_copies_in_results_on_every_face(world: dict[str, Any]) -> None:
    engine, ids, client = world["engine"], world["ids"], world["client"]
    threshold = copy_threshold(world)
    query = (world["lib"] / "p0.jpg").read_bytes()
    ranked = [h.id for h in engine.search(Query(image=query, k=50)).results]
    assert ranked[0] == ids["p0.jpg"] and ids["p0_crop.jpg"] in ranked
    expected = greedy_dedup(world, ranked, threshold)
    assert ids["p0_crop.jpg"] not in expected and len(expected) < len(ranked)

    deduped = [h.id for h in engine.search(Query(image=query, k=50, dedup=threshold)).results]
    assert deduped == expected
    assert [h.id for h in engine.search(Query(image=query, k=3, dedup=threshold)).results] == expected[:3]
    page = engine.search(Query(image=query, k=2, offset=2, dedup=threshold)).results
    assert [h.id for h in page] == expected[2:4]
    r = client.post("/search", files={"image": ("q.jpg", query, "image/jpeg")},
                    data={"k": "50", "dedup": str(threshold)})
    assert r.status_code == 200 and [h["id"] for h in r.json()["results"]] == expected
    runner = CliRunner()
    env = {"MMSEARCH_MODEL_CONFIG_DIRS": json.dumps([str(CONFIG_DIR)]), "MMSEARCH_DEVICE": "cpu"}
    out = runner.invoke(cli_app, ["search", "--image", str(world["lib"] / "p0.jpg"), "-k", "50", "--dedup",
                                  repr(threshold), "--json", "--catalog", world["catalog"]], env=env)
    assert out.exit_code == 0, out.output
    assert [h["id"] for h in json.loads(out.stdout)["results"]] == expected
    # similar, with the same option
    like = [h.id for h in engine.similar([ids["p3.jpg"]], k=50).results]
    assert ids["p3_small.jpg"] in like
    like_dedup = [h.id for h in engine.similar([ids["p3.jpg"]], k=50, dedup=threshold).results]
    assert like_dedup == greedy_dedup(world, like, threshold)
    r = client.post("/similar", json={"item_ids": [ids["p3.jpg"]], "k": 50, "dedup": threshold})
    assert [h["id"] for h in r.json()["results"]] == like_dedup


# -- an IVF-PQ index, with changes not yet merged into it ----------------------------------------

DIM = 32
COLL = "clip.text"


def test_duplicates_over_ivfpq_and_the_change_log(make_settings) -> None:  # type: ignore[no-untyped-def]
    """3,000 random vectors with planted near copies, an IVF-PQ index (scores are estimates: the
    pairs are confirmed exactly), then copies and deletions only the change log holds."""
    rng = np.random.default_rng(7)
    writer = CatalogWriter(make_settings(ivf_min_vectors=1_000, merge_min_changes=10_000, nprobe=64,
                                         faiss_gpu=False))
    try:
        writer.record_space("clip", "test:random-32", DIM, ["text"], reembed=False)
        root = writer.ensure_root(Path("/data"))
        vectors: dict[int, np.ndarray] = {}

        def add(x: np.ndarray) -> list[int]:
            x = x / np.linalg.norm(x, axis=1, keepdims=True)
            start = writer.next_embedding_id()
            eids = list(range(start, start + len(x)))
            writer.append_vectors(COLL, np.array(eids, dtype=np.int64), x.astype(np.float32))
            writer.commit_files([FileRecord(path=f"/data/{e}.txt", root_id=root, kind="text", size=1, mtime_ns=1,
                                            items=[NewItem(modality="text", embeddings=[(e, COLL, None, None)])])
                                 for e in eids])
            for e, v in zip(eids, x.astype(np.float16).astype(np.float32)):
                vectors[e] = v / np.linalg.norm(v)
            return eids

        base = add(rng.standard_normal((3_000, DIM)))
        planted = rng.choice(3_000, 60, replace=False)
        noise = rng.uniform(0.005, 0.04, (60, 1))  # cosines from about 0.975 to 0.9996
        add(rng.standard_normal((60, DIM)) * noise + np.stack([vectors[base[i]] for i in planted]))
        writer.upkeep(wait=True)  # an IVF-PQ base holds all of it
        late = add(rng.standard_normal((5, DIM)) * 0.01 + np.stack([vectors[base[i]] for i in range(5)]))
        assert writer.delete_files([f"/data/{base[planted[0]]}.txt"]) == 1  # in the base: a dead id
        del vectors[base[planted[0]]]
        reader_catalog = Catalog(writer.settings)
        indexes = LiveIndexes(reader_catalog)
        live = indexes.index(COLL)
        assert live is not None and live.approximate
        for threshold in (0.97, 0.99):
            res = find_duplicates(reader_catalog, live, indexes.store(COLL, DIM), COLL, threshold)
            owners = reader_catalog.embedding_items(sorted(vectors))
            expected = {frozenset(owners[e][0] for e in g)
                        for g in brute_force_groups(vectors, threshold)}
            assert as_sets(res.groups) == expected and len(expected) > 20, threshold
            assert any(owners[late[0]][0] in g for g in expected)  # the change log's copies are found
        reader_catalog.close()
    finally:
        writer.close()
