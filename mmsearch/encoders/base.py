"""What the engine needs from an encoder, whatever family it comes from.

Decoding and model-specific preprocessing (``prepare``) run in worker threads;
``encode`` runs one batched forward pass. Splitting them lets decoding overlap encoding.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol, Sequence, runtime_checkable

import numpy as np

Modality = Literal["image", "text", "audio"]
MODALITIES: tuple[Modality, ...] = ("image", "text", "audio")


@runtime_checkable
class Encoder(Protocol):
    spec: str  # canonical spec, recorded in the catalog, e.g. "open_clip:ViT-B-32@laion2b_s34b_b79k"
    space: str  # embedding space name: "clip" or "clap"
    dim: int
    modalities: tuple[Modality, ...]  # what it embeds, text included
    batch_size: int
    device: str

    def prepare(self, modality: Modality, decoded: Any) -> Any:
        """CPU preprocessing of one decoded item (PIL image, str, or mono float32 window)."""

    def encode(self, modality: Modality, prepared: Sequence[Any]) -> np.ndarray:
        """One batch -> float32 array (n, dim), rows L2-normalised."""


def preparer_of(enc: Any, modality: Modality) -> Callable[[Any], Any] | None:
    """An encoder's ``prepare`` for ``modality`` as a picklable function that holds no model (Ray's
    decode tasks run it), or None where preparing needs the model or the encoder offers none."""
    make = getattr(enc, "preparer", None)
    return make(modality) if make is not None else None


@dataclass(frozen=True)
class Spec:
    family: str  # "open_clip" or "clap"
    name: str  # architecture or HF id / local dir
    pretrained: str | None  # open_clip only: tag, checkpoint path or "random"

    @classmethod
    def parse(cls, spec: str) -> "Spec":
        from mmsearch.errors import BadInput

        family, sep, rest = spec.partition(":")
        if not sep or not rest or family not in ("open_clip", "clap"):
            raise BadInput(
                f"bad model spec {spec!r}: expected 'open_clip:ARCH@PRETRAINED' or 'clap:HF_ID_OR_DIR'"
            )
        if family == "open_clip":
            name, at, pretrained = rest.partition("@")
            if not at or not name or not pretrained:
                raise BadInput(
                    f"bad model spec {spec!r}: open_clip specs are 'open_clip:ARCH@PRETRAINED' where "
                    "PRETRAINED is a pretrained tag, a local checkpoint file, or 'random'"
                )
            return cls(family, name, pretrained)
        return cls(family, rest, None)

    def __str__(self) -> str:
        return f"{self.family}:{self.name}" + (f"@{self.pretrained}" if self.pretrained else "")


def open_clip_canonical(spec: Spec) -> Spec:
    """Local checkpoints are recorded by absolute path so the catalog can recognise them (here,
    without torch: the CPU runtime finds a cached export by this spec before loading anything)."""
    import os
    from pathlib import Path

    p = spec.pretrained or ""
    if p != "random" and (os.sep in p or p.endswith((".pt", ".bin", ".pth", ".safetensors"))):
        return Spec(spec.family, spec.name, str(Path(p).expanduser().resolve()))
    return spec


def is_local_name(name: str) -> bool:
    """A CLAP spec names a directory when one exists or it is spelled like a path, not 'org/model'."""
    import os
    from pathlib import Path

    p = Path(name).expanduser()
    return (
        p.exists()
        or p.is_absolute()
        or name.startswith((".", "~"))
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
    )


def clap_canonical(spec: Spec) -> Spec:
    """Local CLAP directories are recorded by absolute path so the catalog can recognise them."""
    from pathlib import Path

    if is_local_name(spec.name):
        return Spec(spec.family, str(Path(spec.name).expanduser().resolve()), None)
    return spec


def gpu_visible() -> bool:
    """Whether this machine shows a GPU driver at all (NVIDIA's, ROCm's or WSL's device files). Without
    one torch cannot see a GPU either, and ``auto`` is the CPU without importing torch (seconds)."""
    import glob
    import os

    return bool(glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd") or os.path.exists("/dev/dxg")
                or os.name != "posix"
                or not os.path.isdir("/dev"))


def pick_device(setting: str) -> str:
    if setting == "cpu" or (setting == "auto" and not gpu_visible()):
        return "cpu"
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        from mmsearch.errors import BadInput

        raise BadInput("device 'cuda' was asked for but torch sees no GPU: use --device cpu or auto "
                       "(MMSEARCH_DEVICE)")
    return setting


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


@contextlib.contextmanager
def quiet_root_log(fragment: str) -> Iterator[None]:
    """Drop root-logger records containing ``fragment`` for a while: libraries (open_clip, ONNX
    Runtime's quantiser) log advice there that does not apply to how we call them."""
    root = logging.getLogger()
    drop = logging.Filter()
    drop.filter = lambda record: fragment not in record.getMessage()  # type: ignore[method-assign]
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)
