"""Where a catalog's ANN indexes live, and the small JSON note saved beside each one.

``indexes/{collection}.faiss.npz`` is the index itself (written whole, by atomic replace);
``indexes/{collection}.json`` repeats its plan, size and change-log position, plus the file's
size and mtime when saved: ``stats`` reads it instead of the index, and the writer compares it with
the file to notice an index damaged or replaced behind its back without reading it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class IndexFiles:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def index_path(self, collection: str) -> Path:
        return self.folder / f"{collection}.faiss.npz"

    def note_path(self, collection: str) -> Path:
        return self.folder / f"{collection}.json"

    def read_note(self, collection: str) -> dict[str, Any] | None:
        try:
            note = json.loads(self.note_path(collection).read_text())
            return note if isinstance(note, dict) else None
        except (OSError, ValueError):
            return None

    def write_note(self, collection: str, meta: dict[str, Any]) -> None:
        st = self.index_path(collection).stat()
        note = {**meta, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
        tmp = self.folder / f".{collection}.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(note))
        os.replace(tmp, self.note_path(collection))

    def looks_intact(self, collection: str) -> bool:
        """The index file is there and is the one its note describes (size and mtime): cheap,
        so the writer runs it on every open; a full read happens only when this fails."""
        note = self.read_note(collection)
        try:
            st = self.index_path(collection).stat()
        except OSError:
            return False
        return note is not None and note.get("bytes") == st.st_size and note.get("mtime_ns") == st.st_mtime_ns

    def remove(self, collection: str) -> None:
        for path in (self.index_path(collection), self.note_path(collection)):
            path.unlink(missing_ok=True)

    def clean_temp_files(self) -> int:
        """Temp files of saves that a kill interrupted (only the writer saves here)."""
        n = 0
        if self.folder.is_dir():
            for path in self.folder.glob(".*.tmp"):
                path.unlink(missing_ok=True)
                n += 1
        return n
