"""A tiny but valid DNG written by hand: a TIFF whose raw IFD holds 16-bit Bayer (RGGB) sensor data
with the DNG tags LibRaw needs, optionally behind a JPEG preview in IFD0, the way cameras and
Adobe's converter lay them out. The tests check that rawpy opens and develops it."""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image

_TYPES = {"BYTE": (1, "B"), "ASCII": (2, "s"), "SHORT": (3, "H"), "LONG": (4, "I"), "SRATIONAL": (10, "ii")}
Entry = tuple[int, str, object]


def _ifd(entries: list[Entry], start: int, next_ifd: int = 0) -> bytes:
    """An IFD written at offset ``start``, with the values that do not fit in 4 bytes after it."""
    entries = sorted(entries, key=lambda e: e[0])
    extra_at = start + 2 + 12 * len(entries) + 4
    out, extra = bytearray(struct.pack("<H", len(entries))), bytearray()
    for tag, typ, values in entries:
        code, fmt = _TYPES[typ]
        if typ == "ASCII":
            data = str(values).encode() + b"\0"
            count = len(data)
        elif typ == "SRATIONAL":
            data = b"".join(struct.pack("<ii", *v) for v in values)  # type: ignore[union-attr]
            count = len(values)  # type: ignore[arg-type]
        else:
            data = struct.pack(f"<{len(values)}{fmt}", *values)  # type: ignore[arg-type]
            count = len(values)  # type: ignore[arg-type]
        if len(data) <= 4:
            out += struct.pack("<HHI", tag, code, count) + data.ljust(4, b"\0")
        else:
            out += struct.pack("<HHII", tag, code, count, extra_at + len(extra))
            extra += data + b"\0" * (len(data) % 2)
    return bytes(out + struct.pack("<I", next_ifd) + extra)


def make_dng(width: int = 64, height: int = 48, preview: Image.Image | None = None,
             make: str = "Mmsearch", model: str = "Test DNG") -> bytes:
    """The bytes of a DNG: sensor data only, or with ``preview`` as a JPEG in IFD0 (raw in a SubIFD)."""
    rng = np.random.default_rng(0)
    cfa = rng.integers(200, 3800, size=(height, width)).astype("<u2").tobytes()
    common: list[Entry] = [
        (271, "ASCII", make), (272, "ASCII", model), (50706, "BYTE", [1, 4, 0, 0]),
        (50708, "ASCII", f"{make} {model}"), (50778, "SHORT", [21]),
        (50721, "SRATIONAL", [(1, 1), (0, 1), (0, 1), (0, 1), (1, 1), (0, 1), (0, 1), (0, 1), (1, 1)])]

    def raw_ifd(data_at: int) -> list[Entry]:
        return [(254, "LONG", [0]), (256, "LONG", [width]), (257, "LONG", [height]), (258, "SHORT", [16]),
                (259, "SHORT", [1]), (262, "SHORT", [32803]), (273, "LONG", [data_at]), (277, "SHORT", [1]),
                (278, "LONG", [height]), (279, "LONG", [len(cfa)]), (284, "SHORT", [1]),
                (33421, "SHORT", [2, 2]), (33422, "BYTE", [0, 1, 1, 2]), (50717, "SHORT", [4095])]

    if preview is None:
        ifd_at = 8 + len(cfa)
        return b"II*\0" + struct.pack("<I", ifd_at) + cfa + _ifd(raw_ifd(8) + common, ifd_at)
    buf = io.BytesIO()
    preview.convert("RGB").save(buf, "JPEG", quality=90)
    jpeg = buf.getvalue() + b"\0" * (len(buf.getvalue()) % 2)
    jpeg_at, ifd0_at = 8 + len(cfa), 8 + len(cfa) + len(jpeg)

    def ifd0(sub_at: int) -> list[Entry]:
        return [(254, "LONG", [1]), (256, "LONG", [preview.width]), (257, "LONG", [preview.height]),
                (258, "SHORT", [8, 8, 8]), (259, "SHORT", [7]), (262, "SHORT", [6]), (273, "LONG", [jpeg_at]),
                (277, "SHORT", [3]), (278, "LONG", [preview.height]), (279, "LONG", [len(jpeg)]),
                (284, "SHORT", [1]), (330, "LONG", [sub_at])] + common

    sub_at = ifd0_at + len(_ifd(ifd0(0), ifd0_at))
    return (b"II*\0" + struct.pack("<I", ifd0_at) + cfa + jpeg + _ifd(ifd0(sub_at), ifd0_at)
            + _ifd(raw_ifd(8), sub_at))
