"""What a newcomer meets on the command line: help, version, result lines, paths for pipes,
inline previews, flags named in errors (issue 12)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from mmsearch import __version__
from mmsearch.cli import app
from mmsearch.preview import detect, inline
from tests.conftest import CONFIG_DIR


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, clip_spec: str):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MMSEARCH_MODEL_CONFIG_DIRS", json.dumps([str(CONFIG_DIR)]))
    monkeypatch.setenv("MMSEARCH_DEVICE", "cpu")
    monkeypatch.setenv("MMSEARCH_AUDIO", "false")
    for name in ("TERM_PROGRAM", "LC_TERMINAL", "KITTY_WINDOW_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    catalog = str(tmp_path / "cat")

    def run(*args: str, ok: bool = True, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
        result = CliRunner().invoke(app, [*args, "--catalog", catalog], env=env)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    run.spec = clip_spec  # type: ignore[attr-defined]
    run.catalog = catalog  # type: ignore[attr-defined]
    return run


def cli_catalog(cli) -> str:  # type: ignore[no-untyped-def]
    return cli.catalog


def test_every_option_and_argument_has_help_and_choices_are_listed() -> None:
    group = typer.main.get_command(app)
    missing = [f"{name} {p.name}" for name, cmd in group.commands.items() for p in cmd.params
               if not (getattr(p, "help", None) or "").strip()]
    assert missing == []
    out = CliRunner().invoke(app, ["search", "--help"], env={"COLUMNS": "200"}).output
    assert "image|text|audio|video|all" in out
    out = CliRunner().invoke(app, ["index", "--help"], env={"COLUMNS": "200"}).output
    assert "auto|cpu|cuda" in out


def test_version() -> None:
    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"mmsearch {__version__}"


def test_result_lines_show_the_ranking_score_the_cosine_and_the_photo_of_a_caption(  # type: ignore[no-untyped-def]
        cli, photo_dir: Path) -> None:
    cli("index", str(photo_dir), "--model", cli.spec)
    hits = json.loads(cli("search", "a dog running", "-k", "30", "--json").stdout)["results"]
    assert {h["modality"] for h in hits} == {"image", "text"}  # one merged list
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)  # `score` orders the list
    assert any(h["cosine"] != h["score"] for h in hits)  # ... and is not the cosine here
    assert all(h["score"] == h["calibrated"] for h in hits)

    lines = cli("search", "a dog running", "-k", "30").stdout.splitlines()
    assert len(lines) == len(hits)
    for line, h in zip(lines, hits):
        first, _, cosine = line.split()[:3]
        assert float(first) == pytest.approx(h["score"], abs=1e-4)
        assert float(cosine) == pytest.approx(h["cosine"], abs=1e-3)
        if h.get("ref_path"):  # a caption names the photo it describes
            assert line.endswith(f"-> {h['ref_path']}")
    assert any(h.get("ref_path") for h in hits)

    single = json.loads(cli("search", "a dog", "--to", "image", "--json").stdout)["results"]
    assert all(h["score"] == h["cosine"] and "calibrated" not in h for h in single)
    line = cli("search", "a dog", "--to", "image", "-k", "1").stdout.split()
    assert float(line[0]) == pytest.approx(single[0]["score"], abs=1e-4) and line[1] == "image"


def test_paths_only_and_preview(cli, photo_dir: Path) -> None:  # type: ignore[no-untyped-def]
    cli("index", str(photo_dir), "--model", cli.spec)
    hits = json.loads(cli("search", "a dog", "-k", "20", "--json").stdout)["results"]
    want: list[str] = []
    for h in hits:
        shown = h.get("ref_path") or h["path"]
        if shown not in want:
            want.append(shown)
    r = cli("search", "a dog", "-k", "20", "--paths-only")
    assert r.stdout.splitlines() == want
    photo = next(h["id"] for h in hits if h["modality"] == "image")
    assert cli("similar", str(photo), "-f").stdout.splitlines() == [
        h["path"] for h in json.loads(cli("similar", str(photo), "--json").stdout)["results"]]

    r = cli("search", "a dog", "--to", "image", "-k", "2", "--preview")  # a terminal without pictures
    assert "\x1b" not in r.stdout and "--preview" in r.stderr and len(r.stdout.splitlines()) == 2
    for env, mark in (({"TERM_PROGRAM": "iTerm.app"}, "\x1b]1337;File=inline=1"), ({"TERM": "xterm-kitty"},
                                                                                      "\x1b_Ga=T,f=100")):
        r = cli("search", "a dog", "--to", "image", "-k", "2", "-p", env=env)
        assert r.stdout.count(mark) == 2, env


def test_inline_image_protocols_carry_the_picture() -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40  # longer than one kitty chunk
    seq = inline(png, "iterm")
    assert seq.startswith(f"\x1b]1337;File=inline=1;size={len(png)};")
    assert base64.b64decode(seq.split(":", 1)[1].rstrip("\x07\n")) == png
    seq = inline(png, "kitty")
    chunks = [c for c in seq.rstrip("\n").split("\x1b\\") if c]
    assert len(chunks) > 1 and chunks[0].startswith("\x1b_Ga=T,f=100,m=1;") and chunks[-1].startswith("\x1b_Gm=0;")
    assert base64.b64decode("".join(c.split(";", 1)[1] for c in chunks)) == png
    assert detect({"TERM": "xterm-kitty"}) == "kitty" and detect({"TERM_PROGRAM": "WezTerm"}) == "iterm"
    assert detect({"TERM": "xterm-256color"}) is None


def test_index_takes_single_files(cli, photo_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    photo = sorted(photo_dir.rglob("*.jpg"))[0]
    out = json.loads(cli("index", str(photo), "--model", cli.spec, "--json").stdout)
    assert (out["added"], out["removed"], out["failed"]) == (1, 0, 0)
    out = json.loads(cli("index", str(photo_dir), "--json").stdout)
    assert (out["added"], out["unchanged"], out["removed"]) == (26, 1, 0)
    other = sorted(photo_dir.rglob("*.jpg"))[5]
    other.write_bytes(other.read_bytes() + b"\0")  # changed: only the file named is looked at
    note = photo_dir / "notes" / "dogs.txt"
    out = json.loads(cli("index", str(note), "--json").stdout)
    assert (out["added"], out["updated"], out["unchanged"], out["removed"]) == (0, 0, 1, 0)
    out = json.loads(cli("index", str(other), "--json").stdout)
    assert (out["updated"], out["unchanged"], out["removed"]) == (1, 0, 0)
    assert json.loads(cli("stats", "--json").stdout)["items"] == {"image": 24, "text": 26}
    hit = json.loads(cli("search", "--image", str(other), "-k", "1", "--json").stdout)["results"][0]
    assert hit["path"] == str(other)
    (tmp_path / "notes.xyz").write_text("x")
    r = cli("index", str(tmp_path / "notes.xyz"), ok=False)
    assert r.exit_code == 2 and "not a kind of file" in r.output
    r = cli("index", str(tmp_path / "missing.jpg"), ok=False)
    assert r.exit_code == 2 and "no such folder or file" in r.output


def test_rerun_with_the_same_model_named_loads_no_model(cli, photo_dir: Path,  # type: ignore[no-untyped-def]
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    cli("index", str(photo_dir), "--model", cli.spec)
    loads: list[str] = []

    def refuse(spec: str, *a: object, **k: object) -> None:
        loads.append(spec)
        raise AssertionError(f"a model was loaded: {spec}")

    monkeypatch.setattr("mmsearch.encoders.encoder_set.load_encoder", refuse)
    out = json.loads(cli("index", str(photo_dir), "--model", cli.spec, "--json").stdout)  # as the README prints it
    assert (out["added"], out["updated"], out["unchanged"]) == (0, 0, 27) and loads == []
    r = cli("index", str(photo_dir), "--model", "open_clip:mmtest-tiny@random", ok=False)  # another: checked
    assert r.exit_code != 0 and loads == ["open_clip:mmtest-tiny@random"]


def test_add_and_sub_weigh_pictures_texts_and_items(cli, photo_dir: Path, make_settings) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    from mmsearch.engine import Engine

    cli("index", str(photo_dir), "--model", cli.spec)
    photos = sorted(photo_dir.rglob("*.jpg"))
    a, b = photos[2], photos[7]
    hits = lambda *args: json.loads(cli("search", *args, "--to", "image", "-k", "24", "--json").stdout)["results"]  # noqa: E731
    assert [h["id"] for h in hits("--add", str(a))] == [h["id"] for h in hits("--image", str(a))]

    with Engine.open(make_settings(catalog=Path(cli_catalog(cli)))) as engine:
        va = np.array(engine.embed(image=a.read_bytes()).vector)
        vb = np.array(engine.embed(image=b.read_bytes()).vector)
        vt = np.array(engine.embed(text="a dog").vector)
        stored = engine.vectors([h["id"] for h in hits("--image", str(a))])["clip.image"]
    by_id = dict(zip(stored.item_ids.tolist(), stored.vectors.astype(np.float64)))
    item_b = next(h["id"] for h in hits("--image", str(b)) if h["path"] == str(b))
    for args, want in (
        (["--add", f"2:{a}", "--sub", f"0.5:{b}"], 2 * va - 0.5 * vb),
        (["--add", "1.5:a dog", "--add", str(a), "--sub", str(b)], 1.5 * vt + va - vb),
        (["a dog", "--add", f"3:{a}"], vt + 3 * va),
    ):
        want = want / np.linalg.norm(want)
        brute = sorted(by_id, key=lambda i: -float(by_id[i] @ want))
        got = hits(*args)
        assert [h["id"] for h in got][:5] == brute[:5], args
        assert got[0]["cosine"] == pytest.approx(float(by_id[brute[0]] @ want), abs=2e-3), args
    got = hits("--add", str(a), "--sub", f"#{item_b}")  # a stored item subtracted, never returned
    assert item_b not in [h["id"] for h in got]
    r = cli("search", "--add", "0:beach", ok=False)
    assert r.exit_code == 2 and "--add/--sub" in r.output and "weight" in r.output


def test_a_picture_by_url(cli, photo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import functools
    import http.server
    import socket
    import threading

    cli("index", str(photo_dir), "--model", cli.spec)
    photo = sorted(photo_dir.rglob("*.jpg"))[4]
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(photo.parent))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        hit = json.loads(cli("search", "--image", f"{base}/{photo.name}", "-k", "1", "--json").stdout)["results"][0]
        assert hit["path"] == str(photo)
        r = cli("search", "--image", f"{base}/missing.jpg", ok=False)
        assert r.exit_code == 2 and "--image" in r.output and "404" in r.output
        monkeypatch.setenv("MMSEARCH_MAX_UPLOAD_BYTES", "1000")
        r = cli("search", "--image", f"{base}/{photo.name}", ok=False)
        assert r.exit_code == 2 and "over the limit of 1,000" in r.output and "max_upload_bytes" in r.output
        monkeypatch.delenv("MMSEARCH_MAX_UPLOAD_BYTES")
        monkeypatch.setenv("MMSEARCH_URL_TIMEOUT", "0.5")
        r = cli("search", "--image", f"http://127.0.0.1:{silent.getsockname()[1]}/x.jpg", ok=False)
        assert r.exit_code == 2 and ("0.5 s" in r.output or "timed out" in r.output), r.output
    finally:
        server.shutdown()
        silent.close()


def test_serve_json_announces_where_it_listens(cli, photo_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import os
    import signal
    import subprocess
    import sys
    import urllib.request

    cli("index", str(photo_dir), "--model", cli.spec)
    env = {**os.environ, "MMSEARCH_MODEL_CONFIG_DIRS": json.dumps([str(CONFIG_DIR)]), "MMSEARCH_AUDIO": "false",
           "MMSEARCH_DEVICE": "cpu"}
    proc = subprocess.Popen([sys.executable, "-m", "mmsearch.cli", "serve", "--catalog", cli.catalog, "--port", "0",
                             "--json", "--log-level", "warning", "--cors-origin", "http://localhost:5173"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        info = json.loads(line)
        assert info["url"].startswith("http://127.0.0.1:") and info["docs"] == info["url"] + "docs"
        assert info["pid"] == proc.pid and info["catalog"] == str(Path(cli.catalog).resolve())
        request = urllib.request.Request(info["url"] + "healthz", headers={"Origin": "http://localhost:5173"})
        with urllib.request.urlopen(request, timeout=30) as r:
            assert r.status == 200 and r.headers["access-control-allow-origin"] == "http://localhost:5173"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
