"""The core's invariants: one writer, readers that never write, upkeep that follows the change,
self-repair, stable ids, bookkeeping instead of scans, and faults that lose nothing."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import delete, func, select

from mmsearch import Engine, Query
from mmsearch.errors import MMSearchError, NotFound
from mmsearch.indexer import pipeline
from mmsearch.search.ann import AnnIndex
from mmsearch.storage.catalog import Catalog
from mmsearch.storage.lock import CatalogBusy
from mmsearch.storage.models import Embedding, File, Item
from mmsearch.writer import CatalogWriter


def _image_query(path: Path) -> Query:
    return Query(image=path.read_bytes(), to="image", k=1)


def _tree_state(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under the catalog folder but SQLite's -wal/-shm: size, mtime and content hash."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.name.endswith(("-wal", "-shm")):
            st = p.stat()
            out[str(p.relative_to(folder))] = (st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


@pytest.fixture
def indexed(make_settings, photo_dir: Path):  # type: ignore[no-untyped-def]
    settings = make_settings()
    with Engine.open(settings) as e:
        e.index([photo_dir])
    return settings


# -- one writer ---------------------------------------------------------------------------------

def test_a_second_writer_is_refused_naming_the_holder(indexed, photo_dir: Path) -> None:  # type: ignore[no-untyped-def]
    with CatalogWriter(indexed):
        with pytest.raises(CatalogBusy, match=f"pid {os.getpid()}"):
            CatalogWriter(indexed)
        with Engine.open(indexed, create=False) as e, pytest.raises(CatalogBusy):
            e.index([photo_dir])
        with Engine.open(indexed) as e:  # reads go on meanwhile (an existing catalog needs no writer)
            assert e.search(Query(text="a dog", k=3)).results
    with CatalogWriter(indexed):  # released on close
        pass


def test_a_second_writer_may_wait_for_the_first(indexed) -> None:  # type: ignore[no-untyped-def]
    first = CatalogWriter(indexed)
    threading.Timer(0.3, first.close).start()
    with CatalogWriter(indexed.model_copy(update={"lock_timeout": 30.0})):
        pass


def test_read_commands_never_write(indexed, photo_dir: Path) -> None:  # type: ignore[no-untyped-def]
    root = Path(indexed.catalog)
    (root / "indexes" / "clip.image.faiss.npz").unlink()  # damage that a reader must not "repair"
    before = _tree_state(root)
    with Engine.open(indexed, create=False) as e:
        img = sorted(photo_dir.rglob("*.jpg"))[3]
        assert e.search(_image_query(img)).results[0].path == str(img)
        e.stats()
        e.similar([e.lookup(img)[0]], k=3)
        e.embed(text="a dog")
        e.check()
    assert _tree_state(root) == before


def test_read_only_opening_never_creates_a_catalog(make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(catalog=tmp_path / "typo")
    with pytest.raises(NotFound, match="no catalog"):
        Engine.open(settings, create=False)
    assert not (tmp_path / "typo").exists()


# -- upkeep proportional to the change ----------------------------------------------------------

def test_adding_and_deleting_one_item_rewrites_no_index(indexed, photo_dir: Path) -> None:  # type: ignore[no-untyped-def]
    index_file = Path(indexed.catalog) / "indexes" / "clip.text.faiss.npz"
    stamp = index_file.stat().st_mtime_ns
    with Engine.open(indexed) as e:
        (photo_dir / "notes" / "cats.txt").write_text("A cat sleeps on a warm windowsill.")
        e.index([photo_dir])
        new_id = e.lookup(photo_dir / "notes" / "cats.txt")[0]
        hits = e.search(Query(text="A cat sleeps on a warm windowsill.", to="text", k=30)).results
        assert new_id in [h.id for h in hits]
        e.delete(new_id)
        hits = e.search(Query(text="A cat sleeps on a warm windowsill.", to="text", k=30)).results
        assert new_id not in [h.id for h in hits]
    assert index_file.stat().st_mtime_ns == stamp  # the change log carried both


def test_stats_come_from_counters_and_notes(indexed, photo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    def no_loading(*a, **k):  # type: ignore[no-untyped-def]
        raise AssertionError("stats loaded an index")

    with Engine.open(indexed) as e:
        (photo_dir / "notes" / "dogs.txt").write_text("changed text")
        sorted(photo_dir.rglob("*.jpg"))[0].unlink()
        e.index([photo_dir])
        e.delete(e.lookup(photo_dir / "captions.csv")[0])
        monkeypatch.setattr(AnnIndex, "load", no_loading)
        info = e.stats()
        with e.catalog.sessions() as s:
            items = dict(s.execute(select(Item.modality, func.count()).group_by(Item.modality)).all())
            files = dict(s.execute(select(File.status, func.count()).group_by(File.status)).all())
            vectors = dict(s.execute(select(Embedding.collection, func.count()).group_by(Embedding.collection)).all())
    assert info["items"] == items == {"image": 23, "text": 25}
    assert info["files"] == files
    assert {c: v["live"] for c, v in info["collections"].items()} == vectors


# -- self-repair --------------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["delete", "truncate", "overwrite"])
def test_a_damaged_index_still_answers_and_index_rebuilds_it(indexed, photo_dir: Path, damage: str) -> None:  # type: ignore[no-untyped-def]
    path = Path(indexed.catalog) / "indexes" / "clip.image.faiss.npz"
    if damage == "delete":
        path.unlink()
    elif damage == "truncate":
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)
    else:
        size = path.stat().st_size
        path.write_bytes(os.urandom(size))
    img = sorted(photo_dir.rglob("*.jpg"))[7]
    with Engine.open(indexed, create=False) as e:
        assert e.search(_image_query(img)).results[0].path == str(img)  # exact fallback, not []
        assert e.check()["collections"]["clip.image"]["problems"]
    with Engine.open(indexed) as e:
        report = e.index([photo_dir])
        assert (report.added, report.updated, report.unchanged) == (0, 0, 27)
        assert e.check()["ok"]
        assert e.search(_image_query(img)).results[0].path == str(img)
    assert AnnIndex.load(path) is not None


def test_lost_vectors_are_embedded_again_keeping_their_items(indexed, photo_dir: Path) -> None:  # type: ignore[no-untyped-def]
    img = sorted(photo_dir.rglob("*.jpg"))[5]
    with Engine.open(indexed, create=False) as e:
        item_id = e.lookup(img)[0]
    for suffix in (".f16", ".ids"):
        (Path(indexed.catalog) / "vectors" / f"clip.image{suffix}").unlink()
    with Engine.open(indexed, create=False) as e:
        e.search(_image_query(img))  # no traceback while vectors are missing
        assert e.check()["collections"]["clip.image"]["lost_vectors"] == 24
    with Engine.open(indexed) as e:
        report = e.index([photo_dir])
        assert report.updated == 24 and report.added == 0
        hit = e.search(_image_query(img)).results[0]
        assert (hit.id, hit.path) == (item_id, str(img))
        assert e.check()["ok"]


def test_check_repair_rebuilds_a_missing_index(indexed, photo_dir: Path) -> None:  # type: ignore[no-untyped-def]
    path = Path(indexed.catalog) / "indexes" / "clip.text.faiss.npz"
    path.unlink()
    with Engine.open(indexed, create=False) as e:
        assert not e.check()["ok"]
        e.check(repair=True)
        assert e.check()["ok"]
    assert path.exists()


def test_orphan_temp_files_are_cleaned_when_the_writer_opens(indexed) -> None:  # type: ignore[no-untyped-def]
    orphan = Path(indexed.catalog) / "indexes" / ".clip.image.faiss.npz.99999.tmp"
    orphan.write_bytes(b"half a save")
    with CatalogWriter(indexed) as w:
        assert w.recovered["temp_files"] == 1
    assert not orphan.exists()


def test_a_crash_between_commit_and_upkeep_loses_nothing(indexed, photo_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    (photo_dir / "notes" / "new.txt").write_text("A red kite over the hills.")

    def crash(self, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt  # the process dies right after the SQL commit

    monkeypatch.setattr(CatalogWriter, "upkeep", crash)
    with Engine.open(indexed) as e, pytest.raises(KeyboardInterrupt):
        e.index([photo_dir])
    monkeypatch.undo()
    with Engine.open(indexed, create=False) as e:  # readers follow the log: the note is there
        assert e.search(Query(text="A red kite over the hills.", to="text", k=1)).results[0].path.endswith("new.txt")
    with Engine.open(indexed) as e:
        report = e.index([photo_dir])
        assert (report.added, report.unchanged) == (0, 28)
        assert e.stats()["items"]["text"] == 27


def test_the_catalog_folder_and_its_database_are_bound(make_settings, photo_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a, b = make_settings(catalog=tmp_path / "a"), make_settings(catalog=tmp_path / "b")
    for s in (a, b):
        with Engine.open(s) as e:
            e.index([photo_dir / "notes"])
    mixed = make_settings(catalog=tmp_path / "a", db_url=f"sqlite:///{tmp_path / 'b' / 'catalog.db'}")
    with pytest.raises(MMSearchError, match="belongs to catalog"):
        Engine.open(mixed, create=False)


# -- stable ids ---------------------------------------------------------------------------------

def test_item_ids_are_never_reused(indexed, photo_dir: Path) -> None:  # type: ignore[no-untyped-def]
    with Engine.open(indexed) as e:
        newest = e.lookup(photo_dir / "notes" / "städte.md")[0]
        with e.catalog.sessions() as s:
            top = s.scalar(select(func.max(Item.id)))
        e.delete(top)
        (photo_dir / "notes" / "more.txt").write_text("another note")
        e.index([photo_dir])
        assert e.lookup(photo_dir / "notes" / "more.txt")[0] > top >= newest


def test_a_modified_file_keeps_its_item_ids(indexed, photo_dir: Path) -> None:  # type: ignore[no-untyped-def]
    note, captions = photo_dir / "notes" / "dogs.txt", photo_dir / "captions.csv"
    with Engine.open(indexed) as e:
        note_id, caption_ids = e.lookup(note), e.lookup(captions)
        note.write_text("Three cats watch the rain from a porch.")
        rows = captions.read_text().splitlines()
        captions.write_text("\n".join(rows[:-1] + [rows[-1] + " at dusk"]) + "\n")
        report = e.index([photo_dir])
        assert report.updated == 2
        assert e.lookup(note) == note_id and e.lookup(captions) == caption_ids
        assert e.item(note_id[0]).text == "Three cats watch the rain from a porch."
        hit = e.search(Query(text="Three cats watch the rain from a porch.", to="text", k=1)).results[0]
        assert hit.id == note_id[0]


def test_a_moved_file_and_a_renamed_folder_keep_items_and_vectors(indexed, photo_dir: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    img = sorted((photo_dir / "beach").glob("*.jpg"))[0]
    with Engine.open(indexed) as e:
        img_id, caption_ids = e.lookup(img)[0], e.lookup(photo_dir / "captions.csv")
        e.search(Query(text="warm-up", k=1))  # models loaded before encoding is forbidden

        def no_encoding(*a, **k):  # type: ignore[no-untyped-def]
            raise AssertionError("a moved file was embedded again")

        monkeypatch.setattr(e.encoders.get("clip"), "encode", no_encoding)
        moved = photo_dir / "city" / ("moved-" + img.name)
        img.rename(moved)
        report = e.index([photo_dir])
        assert (report.moved, report.removed, report.added) == (1, 0, 0)
        assert e.lookup(moved) == [img_id]
        renamed = photo_dir.parent / "renamed-media"
        photo_dir.rename(renamed)
        report = e.index([renamed])
        assert report.moved == 27 and report.added == 0
        assert e.lookup(renamed / "city" / moved.name) == [img_id]
        assert e.lookup(renamed / "captions.csv") == caption_ids
        assert e.item(caption_ids[0]).ref_path.startswith(str(renamed))


def test_overlapping_roots_are_embedded_once(make_settings, photo_dir: Path) -> None:  # type: ignore[no-untyped-def]
    with Engine.open(make_settings()) as e:
        report = e.index([photo_dir, photo_dir / "beach"])
        assert report.added == 27
        assert e.stats()["items"]["image"] == 24


def test_lookup_on_every_face(indexed, photo_dir: Path) -> None:  # type: ignore[no-untyped-def]
    with Engine.open(indexed, create=False) as e:
        assert len(e.lookup(photo_dir / "captions.csv")) == 24
        with pytest.raises(NotFound):
            e.lookup(photo_dir / "nope.jpg")


# -- faults -------------------------------------------------------------------------------------

def test_a_delete_in_progress_never_blocks_queries(indexed, photo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    in_transaction, release = threading.Event(), threading.Event()

    def slow_delete(self: Catalog, item_id: int) -> None:
        with self.sessions.begin() as s:
            s.execute(delete(Item).where(Item.id == item_id))
            in_transaction.set()
            assert release.wait(30)

    monkeypatch.setattr(Catalog, "delete_item", slow_delete)
    with Engine.open(indexed) as e:
        img = sorted(photo_dir.rglob("*.jpg"))[2]
        victim = e.lookup(img)[0]
        e.search(_image_query(img))  # models and indexes loaded
        worker = threading.Thread(target=e.delete, args=(victim,))
        worker.start()
        assert in_transaction.wait(30)
        hit = e.search(_image_query(img)).results[0]  # runs while the delete holds the writer
        assert worker.is_alive() and hit.id == victim  # answered first, from the committed state
        release.set()
        worker.join(30)
        assert victim not in [h.id for h in e.search(Query(image=img.read_bytes(), to="image", k=24)).results]


@pytest.mark.parametrize("beside", [False, True], ids=["after-decoding", "beside-decoding"])
def test_a_passing_failure_is_retried_on_the_next_run(indexed, photo_dir: Path, beside: bool,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    # large files are hashed on a thread of their own: its failure reaches the record the same way
    monkeypatch.setattr(pipeline, "HASH_BESIDE_BYTES", 0 if beside else 1 << 62)
    note = photo_dir / "notes" / "later.txt"
    note.write_text("written when the disk was full")
    real = pipeline.content_hash

    def full_disk(path: str) -> str:
        if path == str(note):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path)

    monkeypatch.setattr(pipeline, "content_hash", full_disk)
    with Engine.open(indexed) as e:
        report = e.index([photo_dir])
        assert report.failed == 1 and "No space left" in report.failures[0][1]
    monkeypatch.undo()
    with Engine.open(indexed) as e:  # unchanged file, but its failure was the machine's
        report = e.index([photo_dir])
        assert (report.failed, report.updated) == (0, 1)
        assert e.lookup(note)


def test_large_files_are_hashed_while_they_decode(make_settings, photo_dir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """A long video's hash is read beside its decoding, not after its last frame; small files keep
    theirs after their units (no thread each). Either way the catalog holds the file's real hash."""
    threads: dict[str, str] = {}
    real = pipeline.content_hash

    def recorded(path: str) -> str:
        threads[path] = threading.current_thread().name
        return real(path)

    monkeypatch.setattr(pipeline, "content_hash", recorded)
    big = sorted(photo_dir.rglob("*.jpg"))[0]
    monkeypatch.setattr(pipeline, "HASH_BESIDE_BYTES", big.stat().st_size)
    with Engine.open(make_settings()) as e:
        assert e.index([photo_dir]).failed == 0
        with e.catalog.sessions() as s:
            stored = dict(s.execute(select(File.path, File.content_hash)).all())
    small = [p for p in stored if Path(p).stat().st_size < big.stat().st_size]
    assert threads[str(big)] == "mmsearch-hash" and small
    assert all(threads[p] != "mmsearch-hash" for p in small)
    assert all(h == hashlib.blake2b(Path(p).read_bytes(), digest_size=16).hexdigest() for p, h in stored.items())


def test_a_full_disk_mid_ingest_loses_and_duplicates_nothing(make_settings, photo_dir: Path, tmpfs,
                                                             tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    small_disk = tmpfs("4m")
    notes = tmp_path / "notes"
    notes.mkdir()
    for i in range(400):
        (notes / f"n{i:03d}.txt").write_text(f"note number {i} " + "x" * 200)
    settings = make_settings(catalog=small_disk / "cat", commit_every=16, batch_size=16)
    with Engine.open(settings) as e:
        e.index([photo_dir / "notes"])
    stat = os.statvfs(small_disk)
    filler = small_disk / "filler"
    filler.write_bytes(bytes(max(0, stat.f_bavail * stat.f_frsize - 96 * 1024)))
    with Engine.open(settings, create=False) as e, pytest.raises(MMSearchError, match="(?i)full|space"):
        e.index([notes])
    filler.unlink()
    with Engine.open(settings) as e:
        report = e.index([notes])
        assert report.failed == 0
        with e.catalog.sessions() as s:
            paths = list(s.scalars(select(File.path).where(File.path.like(f"{notes}/%"))))
        assert sorted(paths) == sorted(str(p) for p in notes.iterdir())  # each once
        assert e.stats()["items"]["text"] == 402
        hit = e.search(Query(text="note number 399 " + "x" * 200, to="text", k=1)).results[0]
        assert hit.path.endswith("n399.txt")


def test_an_old_catalog_is_upgraded_by_the_writer_and_refused_by_readers(make_settings, photo_dir: Path,
                                                                         tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from alembic import command

    from mmsearch.storage.db import alembic_config, create_db_engine

    settings = make_settings()
    with Engine.open(settings) as e:
        e.index([photo_dir])
    engine = create_db_engine(settings.resolved_db_url())
    cfg = alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0001")
    engine.dispose()
    (Path(settings.catalog) / "catalog.json").unlink()
    with pytest.raises(MMSearchError, match="older schema"):
        Engine.open(settings, create=False)
    with Engine.open(settings) as e:  # the writer upgrades; counters come from the rows
        assert e.stats()["items"] == {"image": 24, "text": 26}
        report = e.index([photo_dir])
        assert report.unchanged == 27
        img = sorted(photo_dir.rglob("*.jpg"))[1]
        assert e.search(_image_query(img)).results[0].path == str(img)


def test_vectors_stay_float16_truth(indexed) -> None:  # type: ignore[no-untyped-def]
    store_file = Path(indexed.catalog) / "vectors" / "clip.image.f16"
    assert store_file.stat().st_size == 24 * 32 * 2  # 24 photos x 32-d tiny model x float16
    assert np.fromfile(store_file, dtype="<f2").shape == (24 * 32,)
    shutil.rmtree(Path(indexed.catalog) / "indexes")
    with Engine.open(indexed) as e:  # everything derived comes back from the vectors
        e.index([])
        assert e.check()["ok"]


def test_a_damaged_database_is_a_503_with_a_reason_over_http(indexed) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from mmsearch.api.app import create_app
    from tests.test_db_faults import _garble, _root_page

    db = Path(indexed.catalog) / "catalog.db"
    _garble(db, _root_page(db, "counters"))
    with Engine.open(indexed, create=False) as e:
        r = TestClient(create_app(e), raise_server_exceptions=False).get("/stats")
    assert r.status_code == 503 and "damaged" in r.json()["detail"]
