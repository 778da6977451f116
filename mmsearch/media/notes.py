"""What a decoder says about one file goes into that file's record, not onto the terminal:
Python warnings (Pillow's DecompressionBombWarning, "Corrupt EXIF data", "Truncated File Read"),
log records of Pillow, pillow-heif and rawpy at WARNING and above, and libtiff's error messages
(which it would print on stderr itself).

Decode workers are threads, while warnings, loggers and libtiff's handler are process-wide. So one
dispatcher is installed for each (once; again if something, such as ``warnings.catch_warnings``,
put the original back), and it hands a message to the ``FileNotes`` open in the thread that
caused it; a message from any other thread goes where it would have gone. One "always" filter,
appended after every other so that an ``ignore`` or ``error`` of the application still wins,
lets a warning repeated by the next file reach that file's notes instead of being shown once.
"""

from __future__ import annotations

import ctypes
import logging
import sys
import threading
import warnings
from types import TracebackType
from typing import Any

DECODER_LOGGERS = ("PIL", "pillow_heif", "rawpy")
_DECODER_MODULES = r"(PIL|pillow_heif|rawpy|mmsearch\.media)(\..*)?$"
MAX_NOTE = 1000  # characters kept of one file's notes
MAX_LINES = 20

_local = threading.local()
_lock = threading.Lock()
_state: dict[str, Any] = {"previous": None, "loggers": -1, "tiff": None}


class FileNotes:
    """Collects, while open, what decoders in this thread report; ``text`` is the file's note."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._outer: FileNotes | None = None

    def __enter__(self) -> FileNotes:
        _install()
        self._outer = getattr(_local, "notes", None)
        _local.notes = self
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        _local.notes = self._outer

    def add(self, line: str) -> None:
        line = " ".join(line.split())
        if line and line not in self.lines and len(self.lines) < MAX_LINES:
            self.lines.append(line)

    @property
    def text(self) -> str | None:
        """The notes in one line (None: the decoder said nothing)."""
        joined = "; ".join(self.lines)
        return (joined[:MAX_NOTE - 1] + "…" if len(joined) > MAX_NOTE else joined) or None


def current_notes() -> FileNotes | None:
    """The notes open in this thread, if any (a thread helping with a file adds to its notes)."""
    return getattr(_local, "notes", None)


def _install() -> None:
    with _lock:
        if warnings.showwarning is not _show_warning:
            _state["previous"] = warnings.showwarning
            warnings.showwarning = _show_warning
        if not any(f[0] == "always" and f[3] is not None and f[3].pattern == _DECODER_MODULES
                   for f in warnings.filters):
            warnings.filterwarnings("always", module=_DECODER_MODULES, append=True)
        if _state["loggers"] != len(logging.root.manager.loggerDict):
            _filter_loggers()
        if _state["tiff"] is None:
            _state["tiff"] = _hook_libtiff() or False


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    notes = current_notes()
    if notes is not None:
        notes.add(f"{category.__name__}: {message}")
        return
    previous = _state["previous"]
    if previous is None or previous is _show_warning or getattr(_local, "passing", False):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))
        return
    _local.passing = True  # a wrapper of ours that calls us back must not loop
    try:
        previous(message, category, filename, lineno, file, line)
    finally:
        _local.passing = False


class _DecoderLogFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        notes = current_notes()
        if notes is None or record.levelno < logging.WARNING:
            return True
        notes.add(record.getMessage())
        return False  # kept in the file's record, not printed


_LOG_FILTER = _DecoderLogFilter()


def _filter_loggers() -> None:
    """A logger's filters see only its own records, not its children's: each decoder module's
    logger gets the filter (Pillow's plugins are imported first, so theirs exist)."""
    from PIL import Image

    Image.init()
    names = list(logging.root.manager.loggerDict)
    for name in names:
        if name.split(".")[0] in DECODER_LOGGERS:
            logger = logging.getLogger(name)
            if _LOG_FILTER not in logger.filters:
                logger.addFilter(_LOG_FILTER)
    _state["loggers"] = len(logging.root.manager.loggerDict)


_TIFF_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p)


def _hook_libtiff() -> Any:
    """Install an error handler in the libtiff Pillow runs (found among the loaded libraries; Linux):
    libtiff's default one prints on stderr. Returns the handler (kept alive), None where it cannot."""
    try:
        from PIL import _imaging  # noqa: F401 - loads libtiff
        with open("/proc/self/maps") as fh:
            path = next((ln.split()[-1] for ln in fh if "libtiff" in ln and ".so" in ln), None)
        if path is None:
            return None
        tiff, libc = ctypes.CDLL(path), ctypes.CDLL(None)
        libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
        tiff.TIFFSetErrorHandler.argtypes = [_TIFF_HANDLER]
        tiff.TIFFSetErrorHandler.restype = ctypes.c_void_p
    except (OSError, AttributeError, ImportError):
        return None

    def on_error(module: bytes | None, fmt: bytes | None, args: int | None) -> None:
        buf = ctypes.create_string_buffer(512)
        if fmt:
            libc.vsnprintf(buf, len(buf), fmt, args)
        text = ((module or b"").decode("utf-8", "replace") + ": " if module else "") + \
            buf.value.decode("utf-8", "replace")
        notes = current_notes()
        if notes is not None:
            notes.add(text)
        else:
            sys.stderr.write(text + "\n")

    handler = _TIFF_HANDLER(on_error)
    tiff.TIFFSetErrorHandler(handler)
    return handler
