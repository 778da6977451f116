"""open_clip's image transform without torch or torchvision: the same Pillow calls, in the same
order, with the sizes torchvision would compute, written down beside the image tower's export.

torchvision's Resize and CenterCrop on a PIL image are Pillow's ``resize`` and ``crop`` with sizes
computed in Python; reproducing that arithmetic gives the very same pixels without importing
torchvision (and torch), which a cold image query on the CPU runtime cannot afford.
``ImagePrep.from_transform`` reads the steps off a live transform when the export is made; the
export compares the two on probe images before saving the recipe.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

PREP_FILE = "image_prep.json"


@dataclass(frozen=True)
class ImagePrep:
    """Resize (shortest edge, or to a fixed size), centre crop and colour mode, then the
    normalisation (ToTensor's /255, mean and std) applied to a whole batch."""

    resize: tuple[int, ...]  # one side: the shortest edge; two: (height, width) exactly
    interpolation: int  # Pillow's resampling filter
    crop: tuple[int, int]  # (height, width)
    mode: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_transform(cls, pil_stage: Any, norm: tuple[Any, Any] | None) -> "ImagePrep | None":
        """The recipe of open_clip's eval transform (Resize, CenterCrop, convert to RGB, split
        from ToTensor and Normalize); None for any other step (it keeps torchvision)."""
        if pil_stage is None or norm is None:
            return None
        from torchvision.transforms import CenterCrop, Resize
        from torchvision.transforms.functional import pil_modes_mapping

        steps = list(getattr(pil_stage, "transforms", []))
        if len(steps) != 3 or type(steps[0]) is not Resize or type(steps[1]) is not CenterCrop:
            return None
        convert = steps[2]
        if type(convert).__name__ == "MaybeConvertMode":
            mode = str(getattr(convert, "mode", ""))
        elif getattr(convert, "__name__", "") == "_convert_to_rgb":
            mode = "RGB"
        else:
            return None
        resize, crop = steps[0], steps[1]
        if resize.max_size is not None or resize.interpolation not in pil_modes_mapping or not mode:
            return None
        size = (resize.size,) if isinstance(resize.size, int) else tuple(int(s) for s in resize.size)
        ch, cw = int(crop.size[0]), int(crop.size[1])
        if ch > size[0] or cw > size[-1]:  # torchvision would pad: not reproduced
            return None
        return cls(size, int(pil_modes_mapping[resize.interpolation]), (ch, cw), mode,
                   tuple(float(m) for m in norm[0]), tuple(float(s) for s in norm[1]))

    def save(self, folder: Path) -> None:
        (folder / PREP_FILE).write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, folder: Path) -> "ImagePrep":
        d = json.loads((folder / PREP_FILE).read_text())
        return cls(tuple(d["resize"]), int(d["interpolation"]), (int(d["crop"][0]), int(d["crop"][1])),
                   str(d["mode"]), tuple(d["mean"]), tuple(d["std"]))

    @property
    def side(self) -> int:
        """The short side an image needs to be resized without enlarging it: the shortest edge it
        is resized to, or the longer of a fixed size (squashed to it whatever its shape)."""
        return max(self.resize)

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize, as torchvision computes it."""
        if len(self.resize) == 2:
            return self.resize[1], self.resize[0]
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.resize[0], int(self.resize[0] * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def pil(self, img: Any) -> Any:
        """The Pillow steps: the image resized, cropped and converted (a PIL image)."""
        size = self.resized_size(*img.size)
        if size != img.size:
            img = img.resize(size, self.interpolation)
        w, h = img.size
        ch, cw = self.crop  # never larger than the resized image (from_transform)
        if (w, h) != (cw, ch):
            top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
            img = img.crop((left, top, left + cw, top + ch))
        return img.convert(self.mode)

    def __call__(self, img: Any) -> np.ndarray:
        """One image as (channels, height, width) uint8, what the torch encoder's ``prepare`` gives."""
        arr = np.array(self.pil(img), dtype=np.uint8)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def normalise(self, items: Sequence[Any]) -> np.ndarray:
        return normalise_pixels(items, self.mean, self.std)


def normalise_pixels(items: Sequence[Any], mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A batch of uint8 (channels, height, width) images as a tower's float32 input: ToTensor's
    /255, then Normalize's mean and std, in float32 as torch computes them. Float input passes."""
    x = np.stack([np.asarray(p) for p in items])
    if x.dtype == np.uint8:
        m, s = (np.asarray(v, dtype=np.float32).reshape(-1, 1, 1) for v in (mean, std))
        x = (x.astype(np.float32) / np.float32(255) - m) / s
    return np.ascontiguousarray(x, dtype=np.float32)
