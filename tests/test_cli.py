"""Every CLI command, in-process through Typer's runner, plus the console script for a kill -9."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmsearch.cli import app
from tests.conftest import CONFIG_DIR, files_committed, linked_photos


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, clip_spec: str):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MMSEARCH_MODEL_CONFIG_DIRS", json.dumps([str(CONFIG_DIR)]))
    monkeypatch.setenv("MMSEARCH_DEVICE", "cpu")
    monkeypatch.setenv("MMSEARCH_AUDIO", "false")
    catalog = str(tmp_path / "cat")
    runner = CliRunner()

    def run(*args: str, ok: bool = True):  # type: ignore[no-untyped-def]
        result = runner.invoke(app, [*args, "--catalog", catalog])
        if ok:
            assert result.exit_code == 0, result.output
        return result

    run.spec = clip_spec  # type: ignore[attr-defined]
    return run


def _json(result) -> dict:  # type: ignore[no-untyped-def]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_index_search_similar_embed_stats(cli, photo_dir: Path) -> None:  # type: ignore[no-untyped-def]
    out = _json(cli("index", str(photo_dir), "--model", cli.spec, "--json"))
    assert {k: out[k] for k in ("added", "updated", "removed", "unchanged", "failed")} == \
        {"added": 27, "updated": 0, "removed": 0, "unchanged": 0, "failed": 0}
    assert out["seconds"] > 0

    img = sorted(photo_dir.rglob("*.jpg"))[3]
    res = _json(cli("search", "--image", str(img), "--json", "-k", "5"))
    assert len(res["results"]) == 5 and res["results"][0]["path"] == str(img)
    assert {"id", "path", "modality", "score"} <= set(res["results"][0])
    assert {"embed", "ann", "rerank", "hydrate", "total"} <= set(res["timings_ms"])

    res = _json(cli("search", "a dog running on the beach", "--to", "image", "--json", "-k", "4"))
    assert [h["modality"] for h in res["results"]] == ["image"] * 4

    res = _json(cli("search", "--image", str(img), "--to", "text", "--json"))
    assert res["results"] and all(h["modality"] == "text" for h in res["results"])

    note = (photo_dir / "notes" / "dogs.txt").read_text()
    res = _json(cli("search", note, "--to", "text", "--json"))
    assert res["results"][0]["path"].endswith("dogs.txt")

    res = _json(cli("search", "street", "--to", "image", "--path", str(photo_dir / "beach"), "--json", "-k", "50"))
    assert len(res["results"]) == 12 and all("/beach/" in h["path"] for h in res["results"])
    res = _json(cli("search", "street", "--to", "image", "--path", "city/*.jpg", "--json", "-k", "50"))
    assert len(res["results"]) == 12 and all("/city/" in h["path"] for h in res["results"])

    page1 = _json(cli("search", "x", "--to", "image", "--json", "-k", "5"))["results"]
    page2 = _json(cli("search", "x", "--to", "image", "--json", "-k", "5", "--offset", "5"))["results"]
    assert not {h["id"] for h in page1} & {h["id"] for h in page2}

    first = _json(cli("search", "--image", str(img), "--json", "-k", "1"))["results"][0]
    sim = _json(cli("similar", str(first["id"]), "--json", "-k", "3"))
    assert len(sim["results"]) == 3 and first["id"] not in {h["id"] for h in sim["results"]}
    assert all(h["modality"] == "image" for h in sim["results"])

    emb = _json(cli("embed", "--text", "a dog", "--json"))
    assert emb["space"] == "clip" and emb["model"] == cli.spec and len(emb["vector"]) == 32
    emb = _json(cli("embed", "--image", str(img), "--json"))
    assert len(emb["vector"]) == 32

    st = _json(cli("stats", "--json"))
    assert st["items"] == {"image": 24, "text": 26} and st["models"]["clip"]["spec"] == cli.spec
    assert st["collections"]["clip.image"]["index"]["kind"] == "flat"

    human = cli("search", "a dog", "--to", "image", "-k", "2")
    assert "image" in human.stdout and str(photo_dir) in human.stdout
    assert "catalog" in cli("stats").stdout


def test_cli_errors_are_clear(cli, photo_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = cli("index", str(photo_dir), "--model", "nonsense", ok=False)
    assert r.exit_code == 2 and "bad model spec" in r.output
    cli("index", str(photo_dir), "--model", cli.spec)
    r = cli("index", str(photo_dir), "--model", "open_clip:mmtest-tiny@random", ok=False)
    assert r.exit_code == 2 and "--reembed" in r.output
    r = cli("search", ok=False)
    assert r.exit_code == 2 and "empty query" in r.output
    r = cli("similar", "999999", ok=False)
    assert r.exit_code == 3 and "no item" in r.output
    r = cli("search", "--image", str(tmp_path / "missing.jpg"), ok=False)
    assert r.exit_code == 2 and "cannot read" in r.output
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    r = cli("search", "--image", str(tmp_path / "bad.jpg"), ok=False)
    assert r.exit_code == 2 and "--image: not a readable image" in r.output  # the flag that fixes it
    for args, flag in ((["search", "x", "--near", "1,2"], "--near: near is lat,lon,km: three numbers"),
                       (["search", "x", "--min-size", "-5"], "--min-size: '-5' is not a size"),
                       (["recommend", "--like", "1:-1"], "--like: weights are positive"),
                       (["search", "   "], "empty query"),
                       (["browse", "--path", ""], "--path: give a folder or a glob")):
        r = cli(*args, ok=False)
        assert r.exit_code == 2 and flag in r.output and "Value error" not in r.output, (args, r.output)
    r = cli("search", "caf\udce9", ok=False)  # a Latin-1 byte from the shell
    assert r.exit_code == 2 and "UTF-8" in r.output
    r = cli("search", "x", "--to", "film", ok=False)
    assert r.exit_code == 2
    r = cli("embed", ok=False)
    assert r.exit_code == 2 and "exactly one" in r.output


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_interrupted_ingest_then_resume(tmp_path: Path, clip_spec: str, sig: signal.Signals) -> None:
    folder = tmp_path / "many"
    sources = linked_photos(folder, 300)
    catalog = tmp_path / "cat"
    env = {**os.environ, "MMSEARCH_MODEL_CONFIG_DIRS": json.dumps([str(CONFIG_DIR)]), "MMSEARCH_AUDIO": "false",
           "MMSEARCH_COMMIT_EVERY": "8", "MMSEARCH_BATCH_SIZE": "8", "MMSEARCH_DECODE_WORKERS": "1"}
    cmd = [sys.executable, "-m", "mmsearch.cli", "index", str(folder), "--catalog", str(catalog),
           "--model", clip_spec, "--follow-links", "--json"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    db = catalog / "catalog.db"
    committed = files_committed(proc, db, 16, timeout=120)
    assert proc.poll() is None, "ingest finished before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and b"run the same command again" in err
    assert 0 < committed < len(sources)

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["failed"] == 0 and report["unchanged"] >= committed
    assert report["added"] + report["unchanged"] == len(sources)
    with sqlite3.connect(db) as conn:
        assert conn.execute("select count(*) from files").fetchone()[0] == len(sources)
        assert conn.execute("select count(*) from items").fetchone()[0] == len(sources)
        assert conn.execute("select count(*), count(distinct item_id) from embeddings").fetchone() == \
            (len(sources), len(sources))
    stats = subprocess.run([*cmd[:3], "stats", "--catalog", str(catalog), "--json"], env=env,
                           capture_output=True, text=True, timeout=120)
    info = json.loads(stats.stdout)
    assert info["collections"]["clip.image"]["index"]["ntotal"] == len(sources)


def test_console_script_help() -> None:
    exe = Path(sys.executable).with_name("mmsearch")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for command in ("index", "search", "similar", "embed", "stats"):
        assert command in out.stdout


def test_read_commands_do_not_write_the_catalog(cli, photo_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = cli("search", "a dog", ok=False)
    assert r.exit_code == 3 and "no catalog" in r.output
    assert not (tmp_path / "cat").exists()  # no typo-named catalog appears
    cli("embed", "--text", "a dog", "--model", "open_clip:mmtest-tiny@random")  # records nothing
    out = _json(cli("index", str(photo_dir), "--model", cli.spec, "--json"))
    assert out["added"] == 27  # the embed did not claim the catalog for another model
    (tmp_path / "a-file").write_text("x")
    r = CliRunner().invoke(app, ["stats", "--catalog", str(tmp_path / "a-file" / "sub")])
    assert r.exit_code in (2, 3) and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["index", str(photo_dir), "--catalog", str(tmp_path / "a-file")])
    assert r.exit_code == 2 and "cannot use" in r.output


def test_a_bad_setting_is_one_line_naming_it(cli, photo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MMSEARCH_VIDEO_INTERVAL", "0")
    r = cli("index", str(photo_dir), "--model", cli.spec, ok=False)
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.stderr.strip().splitlines() == ["error: MMSEARCH_VIDEO_INTERVAL: Input should be greater than 0"]
    monkeypatch.setenv("MMSEARCH_VIDEO_INTERVAL", "2")
    monkeypatch.setenv("MMSEARCH_BATCH_SIZE", "abc")
    r = cli("stats", ok=False)
    assert r.exit_code == 2 and "MMSEARCH_BATCH_SIZE" in r.stderr and "Traceback" not in r.output
    monkeypatch.delenv("MMSEARCH_BATCH_SIZE")
    monkeypatch.setenv("MMSEARCH_CORS_ORIGINS", "http://a.b")  # a list must be JSON
    r = cli("stats", ok=False)
    assert r.exit_code == 2 and r.stderr.startswith("error: MMSEARCH_CORS_ORIGINS: not valid JSON")


def test_index_reads_audio_from_the_environment(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """MMSEARCH_AUDIO=false (set by the fixture) turns audio off for index as --no-audio does: the
    flag's default used to override it."""
    import numpy as np
    import soundfile as sf

    folder = tmp_path / "sounds"
    folder.mkdir()
    sf.write(folder / "tone.wav", np.sin(np.arange(16000) / 8.0).astype(np.float32), 16000)
    out = json.loads(cli("index", str(folder), "--model", cli.spec, "--json").stdout)
    assert (out["added"], out["waiting_for_audio"]) == (0, 1) and "skipped_audio" not in out  # no CLAP tried


def test_lookup_and_delete_by_path(cli, photo_dir: Path) -> None:  # type: ignore[no-untyped-def]
    cli("index", str(photo_dir), "--model", cli.spec)
    note = photo_dir / "notes" / "dogs.txt"
    r = cli("lookup", str(note), "--json")
    ids = json.loads(r.stdout)[str(note)]
    assert len(ids) == 1
    assert cli("lookup", str(photo_dir / "nope.txt"), ok=False).exit_code == 3
    both = cli("lookup", str(photo_dir / "nope.txt"), str(note), "--json", ok=False)  # one missing: the rest still
    assert both.exit_code == 3 and json.loads(both.stdout) == {str(photo_dir / "nope.txt"): [], str(note): ids}
    assert "nope.txt is not in the catalog" in both.stderr
    r = cli("browse", "--path", str(photo_dir / "notes"), "--json")
    page = json.loads(r.stdout)
    assert (page["total"], page["offset"], page["next_offset"]) == (2, 0, None)
    assert [{k: it[k] for k in ("id", "path", "modality", "ordinal", "ref_path", "text")} for it in page["items"]] == [
        {"id": ids[0], "path": str(note), "modality": "text", "ordinal": 0, "ref_path": None,
         "text": note.read_text()},
        {"id": json.loads(cli("lookup", str(photo_dir / "notes" / "städte.md"), "--json").stdout)[
            str(photo_dir / "notes" / "städte.md")][0], "path": str(photo_dir / "notes" / "städte.md"),
         "modality": "text", "ordinal": 0, "ref_path": None, "text": (photo_dir / "notes" / "städte.md").read_text()}]
    assert all(it["size"] > 0 and it["modified"] and "tags" in it for it in page["items"])  # as GET /browse has them
    first = json.loads(cli("browse", "--path", str(photo_dir / "notes"), "-k", "1", "--json").stdout)
    assert (len(first["items"]), first["next_offset"]) == (1, 1)
    r = cli("browse", "--path", "notes/*.md", "--json")  # a glob, relative to the root, as search takes it
    assert [it["path"] for it in json.loads(r.stdout)["items"]] == [str(photo_dir / "notes" / "städte.md")]
    assert cli("browse", "--path", "notes/[z-a]*", ok=False).exit_code == 2  # bad pattern
    assert cli("browse", "--min-size", "lots", ok=False).exit_code == 2
    r = cli("delete", "--path", str(note), "--json")
    assert json.loads(r.stdout) == {"deleted": ids}
    r = cli("search", "Two dogs play fetch on a sandy beach at sunset.", "--to", "text", "-k", "30", "--json")
    assert ids[0] not in [h["id"] for h in json.loads(r.stdout)["results"]]
    r = cli("check", "--json")
    assert json.loads(r.stdout)["ok"] is True


def test_search_similar_and_recommend_take_the_same_filters(cli, photo_dir: Path) -> None:  # type: ignore[no-untyped-def]
    cli("index", str(photo_dir), "--model", cli.spec)
    first = _json(cli("search", "a dog", "--to", "image", "--json", "-k", "1"))["results"][0]
    for cmd in (["search", "a dog"], ["similar", str(first["id"])], ["recommend", "--like", str(first["id"])]):
        res = _json(cli(*cmd, "--to", "all", "--ext", "txt", "--min-size", "1", "--date-from", "1970-01-02",
                        "--dedup", "0.999", "--json", "-k", "5"))
        assert res["results"] and all(h["path"].endswith(".txt") for h in res["results"]), cmd
        assert all(h["size"] >= 1 for h in res["results"]), cmd
        res = _json(cli(*cmd, "--to", "image", "--path", str(photo_dir / "beach"), "--tag", "nowhere", "--json"))
        assert res["results"] == [], cmd
        r = cli(*cmd, "--min-size", "2XB", ok=False)
        assert r.exit_code == 2 and "--min-size" in r.output, (cmd, r.output)
        r = cli(*cmd, "--near", "100,0,5", ok=False)
        assert r.exit_code == 2 and "--near" in r.output, (cmd, r.output)
    r = cli("recommend", "--dislike", str(first["id"]), ok=False)
    assert r.exit_code == 2 and "liked item or a text" in r.output
