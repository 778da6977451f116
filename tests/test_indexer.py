"""Ingestion through the engine: known items, incremental runs, bad files, IVF-PQ agreement."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmsearch import Engine, Query
from mmsearch.errors import BadInput, ModelMismatch
from tests.conftest import flickr_images, linked_photos, refuse_storing


@pytest.fixture
def engine(make_settings):  # type: ignore[no-untyped-def]
    with Engine.open(make_settings()) as e:
        yield e


def _top(engine: Engine, **q) -> list:  # type: ignore[no-untyped-def]
    return engine.search(Query(**q)).results


def test_index_counts_and_known_item_retrieval(engine: Engine, photo_dir: Path) -> None:
    report = engine.index([photo_dir])
    # 24 photos + 2 notes + 1 captions file (24 caption items)
    assert (report.added, report.failed, report.updated, report.removed) == (27, 0, 0, 0)
    assert report.items == 24 + 2 + 24
    for img in sorted(photo_dir.rglob("*.jpg"))[:6]:
        hits = _top(engine, image=img.read_bytes(), to="image", k=3)
        assert hits[0].path == str(img) and hits[0].score > 0.999
    note = photo_dir / "notes" / "dogs.txt"
    hits = _top(engine, text=note.read_text(), to="text", k=3)
    assert hits[0].path == str(note) and hits[0].text == note.read_text()


def test_captions_link_to_their_images(engine: Engine, photo_dir: Path) -> None:
    engine.index([photo_dir])
    hits = _top(engine, text="a", to="text", k=50, path=str(photo_dir / "captions.csv"))
    assert len(hits) == 24
    assert all(h.ref_path and Path(h.ref_path).is_file() for h in hits)
    assert {Path(h.ref_path).parent.name for h in hits} == {"beach", "city"}


def test_unicode_names_and_hidden_files(engine: Engine, photo_dir: Path) -> None:
    src = flickr_images(30)[-1]
    shutil.copy(src, photo_dir / "Ünïcødé 写真.jpg")
    (photo_dir / ".hidden").mkdir()
    shutil.copy(src, photo_dir / ".hidden" / "secret.jpg")
    shutil.copy(src, photo_dir / ".dotfile.jpg")
    engine.index([photo_dir])
    paths = {h.path for h in _top(engine, image=src.read_bytes(), to="image", k=5)}
    assert str(photo_dir / "Ünïcødé 写真.jpg") in paths
    assert not any("/." in p for p in paths)


def test_symlink_loops_are_cut(engine: Engine, photo_dir: Path) -> None:
    os.symlink(photo_dir, photo_dir / "beach" / "loop")
    report = engine.index([photo_dir])
    assert report.added == 27  # nothing seen twice, no endless walk


def test_incremental_add_modify_delete(engine: Engine, photo_dir: Path) -> None:
    engine.index([photo_dir])
    again = engine.index([photo_dir])
    assert (again.added, again.updated, again.removed, again.unchanged) == (0, 0, 0, 27)

    new = flickr_images(40)[-1]
    shutil.copy(new, photo_dir / "beach" / new.name)
    victim = sorted((photo_dir / "city").glob("*.jpg"))[0]
    victim_bytes = victim.read_bytes()
    victim.unlink()
    changed = photo_dir / "notes" / "dogs.txt"
    changed.write_text("A cat sleeps on a warm windowsill.")
    os.utime(changed, ns=(1, 1_700_000_000_000_000_000))

    r = engine.index([photo_dir])
    assert (r.added, r.updated, r.removed, r.unchanged) == (1, 1, 1, 25)
    assert _top(engine, image=new.read_bytes(), to="image", k=1)[0].path == str(photo_dir / "beach" / new.name)
    assert all(h.path != str(victim) for h in _top(engine, image=victim_bytes, to="image", k=50))
    hits = _top(engine, text="A cat sleeps on a warm windowsill.", to="text", k=1)
    assert hits[0].path == str(changed) and hits[0].text.startswith("A cat")
    stats = engine.stats()
    assert stats["items"]["image"] == 24
    assert stats["collections"]["clip.image"]["index"]["ntotal"] == 24  # deleted vector left the index


def test_delete_item_never_comes_back(engine: Engine, photo_dir: Path) -> None:
    engine.index([photo_dir])
    img = sorted(photo_dir.rglob("*.jpg"))[0]
    first = _top(engine, image=img.read_bytes(), to="image", k=1)[0]
    engine.delete(first.id)
    assert all(h.id != first.id for h in _top(engine, image=img.read_bytes(), to="image", k=50))
    assert engine.index([photo_dir]).added == 0  # an unchanged file is not re-added


BAD_FILES = {
    "corrupt.jpg": b"\xff\xd8\xff\xe0 this is not really a jpeg",
    "zero.png": b"",
    "text-in-disguise.webp": b"hello, I am text",
    "empty.txt": b"   \n",
    "binary.md": b"\x00\x01\x02\x03" * 10,
}


def test_bad_files_are_recorded_and_the_rest_indexed(engine: Engine, photo_dir: Path) -> None:
    bad = photo_dir / "bad"
    bad.mkdir()
    for name, data in BAD_FILES.items():
        (bad / name).write_bytes(data)
    good = flickr_images(1)[0].read_bytes()
    (bad / "truncated.jpg").write_bytes(good[: len(good) // 3])
    Image.new("L", (12_000, 10_000)).save(bad / "bomb.png")  # 120 MP > the 89 MP guard
    (bad / "captions.csv").write_text("image,caption\nnothing.jpg,\n")
    report = engine.index([photo_dir])
    failed = {Path(p).name: reason for p, reason in report.failures}
    assert set(failed) == set(BAD_FILES) | {"truncated.jpg", "bomb.png", "captions.csv"}
    assert "0 bytes" in failed["zero.png"] and "bomb" in failed["bomb.png"]
    assert "truncated" in failed["truncated.jpg"] or "corrupt" in failed["truncated.jpg"]
    assert report.added == 27 and report.failed == len(failed)
    assert {f["path"] for f in engine.stats()["failures"]} == {str(bad / n) for n in failed}
    # failed files are not retried until they change
    assert engine.index([photo_dir]).failed == 0


def test_gif_bmp_tiff_png_webp_all_index(engine: Engine, tmp_path: Path) -> None:
    folder = tmp_path / "formats"
    folder.mkdir()
    img = Image.open(flickr_images(1)[0]).convert("RGB")
    for ext in ("png", "webp", "gif", "bmp", "tiff"):
        img.save(folder / f"pic.{ext}")
    import pillow_heif

    pillow_heif.register_heif_opener()
    img.save(folder / "pic.heic")
    report = engine.index([folder])
    assert report.failures == [] and report.added == 6


def test_model_mismatch_is_refused_then_reembed(make_settings, photo_dir: Path) -> None:  # type: ignore[no-untyped-def]
    with Engine.open(make_settings()) as e:
        e.index([photo_dir])
    other = "open_clip:mmtest-tiny@random"
    with Engine.open(make_settings(model=other)) as e, pytest.raises(ModelMismatch, match="--reembed"):
        e.index([photo_dir])
    with Engine.open(make_settings(model=None)) as e:  # no --model: the catalog's own model
        assert e.search(Query(text="a dog", to="image", k=1)).results
    with Engine.open(make_settings(model=other), reembed=True) as e:
        r = e.index([photo_dir])
        assert r.updated == 27 and e.stats()["models"]["clip"]["spec"] == other
        img = sorted(photo_dir.rglob("*.jpg"))[0]
        assert e.search(Query(image=img.read_bytes(), to="image", k=1)).results[0].path == str(img)


def test_reembed_with_the_same_model_embeds_every_file_again(make_settings, photo_dir: Path) -> None:  # type: ignore[no-untyped-def]
    with Engine.open(make_settings()) as e:
        first = e.index([photo_dir])
        before = e.vectors(e.lookup(sorted(photo_dir.rglob("*.jpg"))[0]))["clip.image"]
    with Engine.open(make_settings(), reembed=True) as e:  # e.g. after changing video_interval
        again = e.index([photo_dir])
        assert (again.updated, again.unchanged, again.added) == (first.added, 0, 0)
        after = e.vectors(e.lookup(sorted(photo_dir.rglob("*.jpg"))[0]))["clip.image"]
        assert after.ids[0] > before.ids[0] and np.allclose(after.vectors, before.vectors, atol=1e-3)
    with Engine.open(make_settings()) as e:
        assert e.index([photo_dir]).unchanged == first.added  # once only


def test_not_a_folder(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no such folder or file"):
        engine.index([tmp_path / "missing"])


def test_stop_event_keeps_what_was_committed(make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Stopped after 8 files, a run ends after what was already decoded (at most a queue's worth:
    64 events, however the threads were scheduled), keeps it, and the next run does the rest."""
    folder = tmp_path / "photos"
    linked_photos(folder, 120)
    stop = threading.Event()
    with Engine.open(make_settings(commit_every=4, batch_size=4, decode_workers=1, follow_links=True)) as e:
        def progress(done: int, total: int) -> None:
            if done >= 8:
                stop.set()
        first = e.index([folder], progress=progress, stop=stop)
        assert 8 <= first.added < 120
        rest = e.index([folder])
        assert first.added + rest.added == 120 and rest.unchanged == first.added
        counts = e.catalog.counts()
        assert counts["items"] == {"image": 120}
        assert sum(counts["embeddings"].values()) == 120  # no duplicates


def test_ivfpq_path_agrees_with_exact_search(make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "many"
    linked_photos(folder, 600)
    with Engine.open(make_settings(ivf_min_vectors=300, batch_size=64, follow_links=True)) as e:
        e.index([folder])
        desc = e.stats()["collections"]["clip.image"]["index"]
        assert desc["kind"] == "ivfpq" and desc["ntotal"] == 600
        store = e.indexes.store("clip.image", 32)
        ids = np.asarray(store.ids())
        vecs = store.get(ids)
        rng = np.random.default_rng(0)
        recalls = []
        for qi in rng.choice(len(ids), 20, replace=False):
            q = vecs[qi] + rng.normal(0, 0.05, vecs.shape[1]).astype(np.float32)
            q /= np.linalg.norm(q)
            exact = ids[np.argsort(-(vecs @ q))[:10]]
            got = _vector_query(e, q)
            recalls.append(len(set(exact.tolist()) & set(got)) / 10)
        assert np.mean(recalls) >= 0.9
        # and a real query path: every image finds itself through IVF-PQ + rerank, at the top up
        # to near-ties (the tiny random model maps some photos almost onto each other, and a
        # first place decided by the last digits flipped between runs)
        for src in flickr_images(600)[::100]:
            hits = _top(e, image=src.read_bytes(), to="image", k=5)
            mine = [h for h in hits if h.path == str(folder / src.name)]
            assert mine and mine[0].score >= hits[0].score - 1e-3


def _vector_query(e: Engine, q: np.ndarray) -> list[int]:
    """Top-10 embedding ids for a raw vector through the engine's own ANN + rerank path."""
    from mmsearch.search.rerank import exact_rescore

    idx = e.indexes.index("clip.image")
    _, cand = idx.search(q[None, :], 10 * e.settings.rerank_factor)
    ids, _ = exact_rescore(q, cand[0], e.indexes.store("clip.image", 32))
    return ids[:10].tolist()



def test_jsonl_captions(engine: Engine, tmp_path: Path) -> None:
    import json

    folder = tmp_path / "j"
    folder.mkdir()
    imgs = flickr_images(3)
    for p in imgs:
        shutil.copy(p, folder / p.name)
    with open(folder / "notes.jsonl", "w") as fh:
        for i, p in enumerate(imgs):
            fh.write(json.dumps({"file": p.name, "text": f"caption number {i}"}) + "\n")
    (folder / "other.csv").write_text("a,b\n1,2\n")  # not a captions file: ignored, not failed
    report = engine.index([folder])
    assert (report.added, report.failed) == (4, 0)
    hit = _top(engine, text="caption number 1", to="text", k=1)[0]
    assert hit.text == "caption number 1" and hit.ref_path == str(folder / imgs[1].name)


def test_combined_query_with_weights_and_negatives(engine: Engine, photo_dir: Path) -> None:
    engine.index([photo_dir])
    a, b = sorted(photo_dir.rglob("*.jpg"))[:2]
    only_a = _top(engine, image=a.read_bytes(), to="image", k=1)[0]
    assert only_a.path == str(a)
    # an image plus a heavily weighted text: the text now steers the ranking
    text = "an unrelated description"
    mixed = [h.path for h in _top(engine, image=a.read_bytes(), text=text, text_weight=50.0, to="image", k=5)]
    text_only = [h.path for h in _top(engine, text=text, to="image", k=5)]
    assert mixed == text_only
    # a negative steers away: the results resemble the negative text less
    negative = np.array(engine.embed(text="a crowded city street at night").vector, dtype=np.float32)
    store = engine.indexes.store("clip.image", 32)

    def closeness(hits) -> float:  # type: ignore[no-untyped-def]
        ids = [engine.catalog.item_embeddings(h.id)[0][0] for h in hits]
        return float((store.get(np.array(ids)) @ negative).mean())

    plain = _top(engine, text="a dog", to="image", k=5)
    steered = _top(engine, text="a dog", negative_text=["a crowded city street at night"],
                   negative_weight=1.0, to="image", k=5)
    assert closeness(steered) < closeness(plain)
    with pytest.raises(BadInput, match="empty query"):
        engine.search(Query(to="image"))


def test_a_bad_name_or_unstorable_file_does_not_stop_the_run(engine: Engine, photo_dir: Path) -> None:
    bad = os.fsencode(photo_dir) + b"/caf\xe9.txt"  # Latin-1 name: not valid UTF-8
    with open(bad, "wb") as fh:
        fh.write(b"a note with a Latin-1 name")
    (photo_dir / "late-nul.txt").write_bytes(b"x" * 5000 + b"\x00tail")
    report = engine.index([photo_dir])
    assert report.added == 27 and report.failed == 2  # the bad name and late-nul.txt
    reasons = dict(report.failures)
    assert any("not valid UTF-8" in r for r in reasons.values())
    assert reasons[str(photo_dir / "late-nul.txt")] == "binary content in a text file"


def test_unstorable_rows_fail_one_file_not_the_batch(engine: Engine, photo_dir: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    refuse_storing(monkeypatch, "dogs.txt")
    report = engine.index([photo_dir])
    assert report.added == 26 and report.failed == 1
    assert "could not be stored" in dict(report.failures)[str(photo_dir / "notes" / "dogs.txt")]


def test_reembed_covers_every_folder_and_never_reuses_ids(make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a, b = tmp_path / "a", tmp_path / "b"
    linked_photos(a, 4)
    b.mkdir()
    for src in flickr_images(8)[4:]:
        os.symlink(src, b / src.name)
    with Engine.open(make_settings(follow_links=True)) as e:
        e.index([a])
        e.index([b])
        old_max = e.catalog.max_embedding_id()
    with Engine.open(make_settings(model="open_clip:mmtest-tiny@random", follow_links=True), reembed=True) as e:
        report = e.index([a])  # only a is named; b is re-embedded too
        assert report.updated == 8
        hits = e.search(Query(image=(b / flickr_images(8)[5].name).read_bytes(), to="image", k=8)).results
        assert len(hits) == 8 and hits[0].path == str(b / flickr_images(8)[5].name)
        ids = np.asarray(e.indexes.store("clip.image", 32).ids())
        assert ids.min() > old_max


def test_folders_that_differ_only_by_case_stay_apart(make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    linked_photos(tmp_path / "Photos", 3)
    linked_photos(tmp_path / "photos", 2)
    with Engine.open(make_settings(follow_links=True)) as engine:
        engine.index([tmp_path / "Photos"])
        engine.index([tmp_path / "photos"])
        again = engine.index([tmp_path / "Photos"])
        assert (again.removed, again.unchanged) == (0, 3)
        assert engine.stats()["items"]["image"] == 5
        hits = engine.search(Query(text="x", to="image", k=10, path=str(tmp_path / "photos"))).results
        assert len(hits) == 2


def test_retry_failed(make_settings, photo_dir: Path) -> None:  # type: ignore[no-untyped-def]
    with Engine.open(make_settings(max_image_pixels=1000)) as e:
        assert e.index([photo_dir]).failed == 24  # every photo is over a tiny pixel limit
    with Engine.open(make_settings(model=None)) as e:
        again = e.index([photo_dir])  # unchanged: kept, and said to be still failing
        assert (again.failed, again.still_failed) == (0, 24) and e.stats()["files"]["failed"] == 24
        report = e.index([photo_dir], retry_failed=True)
        assert (report.updated, report.failed, report.still_failed) == (24, 0, 0)


def test_diversity_changes_the_list(engine: Engine, photo_dir: Path) -> None:
    engine.index([photo_dir])
    img = sorted(photo_dir.rglob("*.jpg"))[0].read_bytes()
    plain = _top(engine, image=img, to="image", k=6)
    diverse = _top(engine, image=img, to="image", k=6, diversity=0.9)
    assert diverse[0].id == plain[0].id and [h.id for h in diverse] != [h.id for h in plain]
    store = engine.indexes.store("clip.image", 32)

    def redundancy(hits) -> float:  # type: ignore[no-untyped-def]
        v = store.get(np.array([engine.catalog.item_embeddings(h.id)[0][0] for h in hits]))
        s = v @ v.T
        return float(s[np.triu_indices(len(hits), 1)].mean())

    assert redundancy(diverse) < redundancy(plain)


def test_a_stale_process_after_a_reembed_gets_a_clear_error(make_settings, photo_dir: Path) -> None:  # type: ignore[no-untyped-def]
    from mmsearch.errors import ModelMismatch

    stale = Engine.open(make_settings())
    stale.index([photo_dir])
    img = sorted(photo_dir.rglob("*.jpg"))[0].read_bytes()
    stale.search(Query(image=img, k=1))
    with Engine.open(make_settings(model="open_clip:mmtest-tiny@random"), reembed=True) as other:
        other.index([photo_dir])
    with pytest.raises(ModelMismatch, match="restart"):
        stale.search(Query(image=img, to="image", k=1))
    with pytest.raises(ModelMismatch):
        stale.search(Query(text="a dog", to="text", path=str(photo_dir), k=1))
    stale.close()
    with Engine.open(make_settings(model=None)) as fresh:  # nothing was truncated
        assert fresh.search(Query(image=img, to="image", k=1)).results[0].score > 0.999
        assert len(fresh.search(Query(text="a", to="text", k=50)).results) == 26


def test_dead_vectors_are_compacted_and_their_ids_stay_used(engine: Engine, tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    for i in range(1100):
        (folder / f"n{i:04d}.txt").write_text(f"note {i}")
    engine.index([folder])
    old_max = engine.catalog.max_embedding_id()
    for i in range(600):
        (folder / f"n{i:04d}.txt").unlink()
    engine.index([folder])
    store = engine.indexes.store("clip.text", 32)
    assert len(store) == 500  # 1,100 stored, 500 live: rewritten with the live ones only
    assert engine.search(Query(text="note 900", to="text", k=1)).results[0].text == "note 900"
    (folder / "new.txt").write_text("a new note")
    engine.index([folder])
    assert int(np.asarray(store.ids()).max()) > old_max  # no id handed out twice


def test_items_become_searchable_while_a_long_ingest_runs(make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "many"
    linked_photos(folder, 40)
    seen: list[int] = []
    with Engine.open(make_settings(commit_every=8, batch_size=8, sync_every=0, follow_links=True)) as writer, \
            Engine.open(make_settings(model=None)) as reader:
        probe = flickr_images(1)[0].read_bytes()

        def progress(done: int, total: int) -> None:
            if done in (16, 32):
                seen.append(len(reader.runner.run(Query(image=probe, to="image", k=100)).results))

        writer.index([folder], progress=progress)
        assert len(reader.search(Query(image=probe, to="image", k=100)).results) == 40
    assert seen and 0 < seen[0] < 40 and seen == sorted(seen)


def test_syncs_during_an_ingest_keep_vectors_still_in_flight(make_settings, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """A big captions file commits only when all its rows are embedded; syncs before that must
    not take its stored vectors for dead ones (the README's main job hit exactly this)."""
    from mmsearch.search import upkeep

    monkeypatch.setattr(upkeep, "COMPACT_MIN", 10)  # compaction in reach of a small test
    folder = tmp_path / "media"
    images = linked_photos(folder / "images", 40)
    with open(folder / "captions.csv", "w", newline="") as fh:
        fh.write("image,caption\n")
        for i in range(1300):
            fh.write(f"{images[i % 40].name},caption number {i}\n")
    with Engine.open(make_settings(commit_every=1, batch_size=8, sync_every=0, decode_workers=2,
                                   follow_links=True)) as e:
        report = e.index([folder])
        assert report.failed == 0 and report.items == 40 + 1300
        assert e.search(Query(text="caption number 1299", to="text", k=1)).results[0].text == "caption number 1299"


def test_an_unchanged_rescan_loads_no_model(make_settings, photo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from mmsearch.encoders import encoder_set

    with Engine.open(make_settings()) as e:
        e.index([photo_dir])

    def no_loading(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("a model was loaded for an unchanged folder")

    monkeypatch.setattr(encoder_set, "load_encoder", no_loading)
    victim = sorted(photo_dir.rglob("*.jpg"))[0]
    victim.unlink()
    with Engine.open(make_settings(model=None)) as e:  # the catalog's own model: nothing to check
        r = e.index([photo_dir])
        assert (r.unchanged, r.removed, r.added) == (26, 1, 0)
        assert e.stats()["collections"]["clip.image"]["live"] == 23
    monkeypatch.undo()
    shutil.copy(flickr_images(30)[-1], photo_dir / "new.jpg")
    with Engine.open(make_settings(model=None)) as e:  # work to do: the model loads then
        assert e.index([photo_dir]).added == 1


def test_an_idle_encoder_takes_a_part_batch(make_settings, tmp_path: Path,  # type: ignore[no-untyped-def]
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """At the start of a run (or behind one slow file) the encoder does not wait for a full batch:
    it embeds what is there once that is a quarter batch, and batches grow back as decoding gets ahead."""
    import time

    from mmsearch.indexer import pipeline

    folder = tmp_path / "photos"
    linked_photos(folder, 40)
    real = pipeline.read_image

    def slow(*args, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(0.02)  # a decoder slower than the loop that takes its units
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "read_image", slow)
    monkeypatch.setattr(pipeline, "IDLE_WAIT", 5.0)  # a loaded machine's slow decode is not a stalled one
    with Engine.open(make_settings(batch_size=16, decode_workers=1, follow_links=True)) as e:
        enc = e.encoders.get("clip")
        sizes: list[int] = []
        encode = enc.encode

        def counting(modality, prepared):  # type: ignore[no-untyped-def]
            sizes.append(len(prepared))
            return encode(modality, prepared)

        monkeypatch.setattr(enc, "encode", counting)
        assert e.index([folder]).added == 40
        assert e.catalog.counts()["items"] == {"image": 40}
    assert 16 // 4 <= sizes[0] < 16 and sum(sizes) == 40 and max(sizes) <= 16, sizes


def test_a_runs_last_rows_are_cut_into_even_batches(make_settings, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """What is left once decoding ends goes in even batches, not full ones and a lone row behind
    them: a batch of one keeps one lane busy for about a batch's time."""
    import threading

    from mmsearch.indexer import pipeline

    folder = tmp_path / "photos"
    linked_photos(folder, 50)  # with their end-of-file events, all fit the queue
    decoded = threading.Event()
    worker = pipeline._Ingest._decode_worker

    def decode_all(self, files, events):  # type: ignore[no-untyped-def]
        try:
            worker(self, files, events)
        finally:
            decoded.set()

    monkeypatch.setattr(pipeline._Ingest, "_decode_worker", decode_all)
    with Engine.open(make_settings(batch_size=32, decode_workers=1, follow_links=True)) as e:
        enc = e.encoders.get("clip")
        sizes: list[int] = []
        encode = enc.encode

        def counting(modality, prepared):  # type: ignore[no-untyped-def]
            assert decoded.wait(60)  # every unit is queued before the first batch is embedded
            sizes.append(len(prepared))
            return encode(modality, prepared)

        monkeypatch.setattr(enc, "encode", counting)
        assert e.index([folder]).added == 50
    rest = sizes[1:]  # after the first (part) batch, whose size depends on the decoder's pace
    assert sum(sizes) == 50 and max(sizes) <= 32 and max(rest) - min(rest) <= 1, sizes


def test_a_stopped_ingest_leaves_no_decode_thread_behind(make_settings, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped after its first batch while a decoder waits on a full events queue: every decode
    thread ends (one used to wait forever to say it had exited, to a loop that no longer read)."""
    import threading
    import time

    from mmsearch.indexer import pipeline

    folder = tmp_path / "photos"
    linked_photos(folder, 150)  # more events than the queue holds (64 at batch 16)
    stop, blocked = threading.Event(), threading.Event()
    real_put, real_store = pipeline._Ingest._put, pipeline._Ingest._store

    def put(self, events, ev):  # type: ignore[no-untyped-def]
        if events.full():
            blocked.set()
        real_put(self, events, ev)

    def store_then_stop(self, key, batch, vectors):  # type: ignore[no-untyped-def]
        real_store(self, key, batch, vectors)
        assert blocked.wait(60)  # the decoder is held by the full queue
        stop.set()

    monkeypatch.setattr(pipeline._Ingest, "_put", put)
    monkeypatch.setattr(pipeline._Ingest, "_store", store_then_stop)
    with Engine.open(make_settings(batch_size=16, decode_workers=1, follow_links=True)) as e:
        e.index([folder], stop=stop)
        deadline = time.monotonic() + 30
        while any(t.is_alive() for t in threading.enumerate() if "_decode_worker" in t.name) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [t.name for t in threading.enumerate() if "_decode_worker" in t.name]


def test_an_ingest_holds_one_session_of_its_image_tower(make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """One new photo is a batch of one: it takes one of the tower's lanes (one-thread sessions)
    instead of opening a second session, on every core, beside them."""
    folder = tmp_path / "one"
    linked_photos(folder, 1)
    with Engine.open(make_settings(follow_links=True)) as e:
        assert e.index([folder]).added == 1
        runner = e.encoders.get("clip").runner("image")  # type: ignore[attr-defined]
        assert set(runner._sessions) == {1}
