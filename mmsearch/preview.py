"""Pictures inline in a terminal that can show them (``search --preview``): the iTerm2 protocol
(iTerm2, WezTerm) or kitty's graphics protocol. The terminal is named by its own environment
variables; there is no reliable way to ask it, so an unknown one is refused rather than
flooded with escape codes."""

from __future__ import annotations

import base64
import io
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

Protocol = Literal["iterm", "kitty"]
KITTY_CHUNK = 4096  # kitty takes base64 payloads in chunks of at most 4096 bytes


def detect(env: Mapping[str, str] | None = None) -> Protocol | None:
    """The image protocol the terminal speaks, from its environment; None: no known one."""
    env = os.environ if env is None else env
    if env.get("TERM") == "xterm-kitty" or env.get("KITTY_WINDOW_ID") or env.get("TERM_PROGRAM") == "ghostty":
        return "kitty"
    if env.get("TERM_PROGRAM") in ("iTerm.app", "WezTerm") or env.get("LC_TERMINAL") == "iTerm2":
        return "iterm"
    return None


def thumbnail_png(path: str | Path, size: int = 256, max_pixels: int = 89_478_485) -> bytes | None:
    """A small PNG of a picture, or None when it cannot be read (a preview never stops a listing)."""
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as src:
                if src.size[0] * src.size[1] > max_pixels:
                    return None
                src.draft("RGB", (size, size))
                img = ImageOps.exif_transpose(src).convert("RGB")
                img.thumbnail((size, size))
                out = io.BytesIO()
                img.save(out, "PNG")
                return out.getvalue()
    except Exception:  # noqa: BLE001 - any unreadable picture just has no preview
        return None


def inline(png: bytes, protocol: Protocol) -> str:
    """The escape sequence that draws ``png`` at the cursor, followed by a newline."""
    data = base64.b64encode(png).decode("ascii")
    if protocol == "iterm":
        return f"\x1b]1337;File=inline=1;size={len(png)};preserveAspectRatio=1:{data}\x07\n"
    chunks = [data[i:i + KITTY_CHUNK] for i in range(0, len(data), KITTY_CHUNK)] or [""]
    out = []
    for n, chunk in enumerate(chunks):
        more = int(n < len(chunks) - 1)
        head = f"a=T,f=100,m={more}" if n == 0 else f"m={more}"
        out.append(f"\x1b_G{head};{chunk}\x1b\\")
    return "".join(out) + "\n"
