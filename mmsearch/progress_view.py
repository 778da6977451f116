"""``mmsearch index`` progress on a terminal, drawn with rich from the IngestStatus the pipeline
reports: the phase, items (not files: a captions file holds thousands), seconds of sound, and the
run's own ETA. Nothing is drawn with ``--json`` or when stderr is not a terminal."""

from __future__ import annotations

import os
import sys
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from mmsearch.indexer.progress import IngestStatus

PHASES = {"scan": "scanning", "embed": "embedding", "index": "indexing", "done": "done"}


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def describe(st: IngestStatus) -> str:
    """The counts part of the line, e.g. '1,200/6,000 items · 40/1,001 files · 12.5 s of sound · ETA 2:31'."""
    parts = []
    if st.phase != "scan":
        total = f"{st.items_total:,}" if st.items_total is not None else "?"
        parts += [f"{st.items_done:,}/{total} items", f"{st.files_done:,}/{st.files_total:,} files"]
    if st.media_seconds:
        parts.append(f"{st.media_seconds:,.1f} s of sound and video")
    if st.phase == "embed":
        parts.append(f"ETA {_clock(st.eta_s)}" if st.eta_s is not None else "ETA ?")
    parts.append(f"{_clock(st.elapsed_s)} elapsed")
    return " · ".join(parts)


class IndexProgress:
    """A context manager whose ``update`` is the pipeline's ``status`` callback. ``enabled``
    False draws nothing (and ``update`` does nothing)."""

    def __init__(self, enabled: bool, console: Console | None = None) -> None:
        self.enabled = enabled
        self.console = console
        self._progress: Any = None
        self._task: Any = None

    @staticmethod
    def wanted(as_json: bool) -> bool:
        return not as_json and sys.stderr.isatty()

    def __enter__(self) -> IndexProgress:
        if not self.enabled:
            return self
        # model loading must not leave its own bars and notices between the lines drawn here
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        from rich.console import Console
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn

        self._progress = Progress(SpinnerColumn(), TextColumn("{task.description:<9}"), BarColumn(),
                                  TextColumn("{task.fields[counts]}"),
                                  console=self.console or Console(stderr=True), transient=False)
        self._progress.__enter__()
        self._task = self._progress.add_task(PHASES["scan"], total=None, counts="")
        return self

    def update(self, st: IngestStatus) -> None:
        if self._progress is None:
            return
        if st.phase == "embed":
            total, done = st.items_total, st.items_done
        elif st.phase == "scan":
            total, done = None, 0
        else:  # index upkeep and done: the embedding is complete
            total = done = max(st.items_done, 1)
        self._progress.update(self._task, description=PHASES.get(st.phase, st.phase), total=total,
                              completed=done, counts=describe(st))

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.__exit__(kind, exc, tb)
            self._progress = None
