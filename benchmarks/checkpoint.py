"""A checkpoint file of randomly initialised weights, made once, for benchmarks that should load a
model as a user's run does: from a file (a local checkpoint, or a pretrained tag the Hugging Face
cache resolves to one), whose checksum lets a cached ONNX export be used without importing torch.
``@random`` weights exist only inside torch, so every process that names them imports it."""

from __future__ import annotations

import os
from pathlib import Path


def random_checkpoint(arch: str = "ViT-B-32", seed: int = 0) -> Path:
    """The path of ``arch``'s seeded random weights under the user's cache, written on first use."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mmsearch" / "bench"
    path = root / f"{arch}-random-{seed}.pt"
    if not path.exists():
        import open_clip
        import torch

        torch.manual_seed(seed)
        model = open_clip.create_model(arch, pretrained=None)
        root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(path)
    return path


def model_spec(given: str | None, arch: str = "ViT-B-32") -> str:
    """``given``, or ``arch`` with weights from a checkpoint file (see the module's docstring)."""
    return given or f"open_clip:{arch}@{random_checkpoint(arch)}"
