"""Indexing progress (issue 12): counted in items, phases in order, an ETA only once measured,
and drawn only on a terminal."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

from rich.console import Console
from typer.testing import CliRunner

from mmsearch.cli import app
from mmsearch.engine import Engine
from mmsearch.indexer.progress import IngestMeter, IngestStatus, count_rows
from mmsearch.progress_view import IndexProgress, describe
from tests.conftest import CONFIG_DIR


def test_a_captions_file_counts_its_rows_and_the_eta_waits_for_measurements(tmp_path: Path) -> None:
    captions = tmp_path / "captions.csv"
    captions.write_text("image,caption\n" + "".join(f"a{i}.jpg,a dog {i}\n" for i in range(500)))
    assert count_rows(str(captions)) == 500
    seen: list[IngestStatus] = []
    meter = IngestMeter(seen.append, every=0)
    meter.plan([("captions", str(captions), 1), ("image", "a.jpg", 1), ("image", "b.jpg", 1),
                ("audio", "x.ogg", 1000), ("audio", "y.ogg", 3000)],
               lambda modality: ["clap"] if modality == "audio" else ["clip"])
    assert seen[-1].phase == "embed" and seen[-1].files_total == 5
    assert seen[-1].items_total is None  # a sound's windows: unknown until one is decoded
    meter.embedded(("clip", "text"), 500, 1.0)
    meter.embedded(("clip", "image"), 1, 0.5)
    assert seen[-1].eta_s is None  # the sounds are not measured yet
    meter.embedded(("clap", "audio"), 4, 2.0)
    meter.media(5.0)  # the sound's windows reach 5 s, then its end
    assert seen[-1].media_seconds == 5.0 and seen[-1].files_done == 0  # live, before the file is done
    meter.media(4.5)
    windows = [SimpleNamespace(embeddings=[0] * 4, duration=9.5)]
    meter.file_done("audio", 1000, windows)
    st = seen[-1]
    assert st.media_seconds == 9.5 and st.items_total == 500 + 2 + 4 + 12  # 3000 bytes more at 4 per 1000
    assert st.eta_s is not None and st.eta_s > 0
    meter.embedded(("clip", "image"), 1, 0.5)
    meter.embedded(("clap", "audio"), 12, 6.0)
    meter.file_done("audio", 3000, windows)
    assert seen[-1].eta_s == 0 and seen[-1].items_done == seen[-1].items_total == 518
    assert "518/518 items" in describe(seen[-1]) and "ETA 0:00" in describe(seen[-1])


def test_a_failed_files_items_are_not_left_expected_when_done() -> None:
    seen: list[IngestStatus] = []
    meter = IngestMeter(seen.append, every=0)
    meter.plan([("image", "a.jpg", 1), ("image", "broken.jpg", 1)], lambda modality: ["clip"])
    meter.embedded(("clip", "image"), 1, 0.5)  # broken.jpg failed: its item never comes
    meter.file_done("image", 1, [SimpleNamespace(embeddings=[0])])
    assert (seen[-1].items_done, seen[-1].items_total) == (1, 2)
    meter.set_phase("done")
    assert (seen[-1].items_done, seen[-1].items_total) == (1, 1)



def test_videos_are_estimated_from_their_bytes_once_one_is_done() -> None:
    seen: list[IngestStatus] = []
    meter = IngestMeter(seen.append, every=0)
    meter.plan([("video", "a.mp4", 2000), ("video", "b.mp4", 4000), ("image", "c.jpg", 1)],
               lambda modality: ["clap"] if modality == "audio" else ["clip"])
    assert seen[-1].items_total is None  # frames and windows per byte: unknown until a video is done
    meter.embedded(("clip", "image"), 1 + 6, 1.0)  # the photo and the first video's 6 frames
    meter.embedded(("clap", "audio"), 4, 1.0)  # its 4 sound windows
    meter.media(12.0)
    meter.file_done("video", 2000, [SimpleNamespace(embeddings=[0] * 10, duration=12.0)])
    st = seen[-1]
    assert st.media_seconds == 12.0  # the file's end adds no time of its own: the live count is the count
    assert st.items_total == 11 + 20  # 10 vectors per 2000 bytes: 20 more for the second video
    assert st.eta_s is not None and st.eta_s > 0

def test_the_pipeline_reports_phases_in_order_and_every_item(make_settings, photo_dir: Path) -> None:  # type: ignore[no-untyped-def]
    seen: list[IngestStatus] = []
    with Engine.open(make_settings()) as engine:
        report = engine.index([photo_dir], status=seen.append)
        phases = [s.phase for s in seen]
        assert phases[0] == "scan" and phases[-2:] == ["index", "done"]
        assert [p for i, p in enumerate(phases) if i == 0 or p != phases[i - 1]] == ["scan", "embed", "index", "done"]
        last = seen[-1]
        assert last.files_done == last.files_total == 27
        assert last.items_done == last.items_total == report.items == 50  # 24 photos, 24 captions, 2 notes
        assert all(a.items_done <= b.items_done for a, b in zip(seen, seen[1:]))
        seen.clear()
        engine.index([photo_dir], status=seen.append)  # nothing changed: no embed phase
        assert [s.phase for s in seen] == ["scan", "index", "done"]


def test_progress_is_drawn_on_a_terminal_only(monkeypatch, photo_dir: Path, tmp_path: Path,  # type: ignore[no-untyped-def]
                                              clip_spec: str) -> None:
    out = io.StringIO()
    with IndexProgress(True, Console(file=out, force_terminal=True, width=140)) as shown:
        shown.update(IngestStatus("scan"))
        shown.update(IngestStatus("embed", 3, 27, 40, 50, 0.0, 12.0, 3.0))
    drawn = out.getvalue()
    assert "embedding" in drawn and "40/50 items" in drawn and "3/27 files" in drawn and "ETA 0:03" in drawn
    assert not IndexProgress.wanted(as_json=True)
    monkeypatch.setenv("MMSEARCH_MODEL_CONFIG_DIRS", json.dumps([str(CONFIG_DIR)]))
    r = CliRunner().invoke(app, ["index", str(photo_dir), "--catalog", str(tmp_path / "cat"), "--model", clip_spec,
                                 "--no-audio", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "items ·" not in r.output and "ETA" not in r.output  # not a terminal: the summary line only
    assert r.output.startswith("added 27,")
