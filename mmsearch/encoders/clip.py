"""CLIP-family image and text encoder through open_clip."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from mmsearch.cpus import apply_torch_threads
from mmsearch.encoders.base import Modality, Spec, l2_normalise, pick_device
from mmsearch.errors import ModelUnavailable
from mmsearch.settings import Settings

RANDOM = "random"
RANDOM_SEED = 0


def _register_configs(dirs: Sequence[Path]) -> None:
    import open_clip

    for d in dirs:
        open_clip.add_model_config(Path(d))


def canonical_spec(spec: Spec) -> Spec:
    """Local checkpoints are recorded by absolute path so the catalog can recognise them."""
    p = spec.pretrained or ""
    if p != RANDOM and (os.sep in p or p.endswith((".pt", ".bin", ".pth", ".safetensors"))):
        return Spec(spec.family, spec.name, str(Path(p).expanduser().resolve()))
    return spec


class OpenClipEncoder:
    space = "clip"
    modalities: tuple[Modality, ...] = ("image", "text")

    def __init__(self, spec: Spec, model: torch.nn.Module, preprocess: Any, tokenizer: Any,
                 device: str, batch_size: int) -> None:
        self.spec = str(spec)
        self.model = model.eval().to(device)
        self.preprocess = preprocess
        self._pil_stage, self._norm = _split_preprocess(preprocess)
        self.tokenizer = tokenizer
        self.device = device
        self.batch_size = batch_size
        self.dim = int(model.text_projection.shape[1]) if hasattr(model, "text_projection") and isinstance(
            getattr(model, "text_projection"), torch.Tensor) else _probe_dim(model, device)

    @classmethod
    def from_spec(cls, spec: Spec, settings: Settings) -> "OpenClipEncoder":
        import open_clip

        _register_configs(settings.model_config_dirs)
        spec = canonical_spec(spec)
        arch, pretrained = spec.name, spec.pretrained or ""
        if arch not in open_clip.list_models():
            raise ModelUnavailable(
                f"unknown open_clip architecture {arch!r}; see `python -c \"import open_clip; "
                "print(open_clip.list_models())\"` or add a config JSON with MMSEARCH_MODEL_CONFIG_DIRS"
            )
        device = pick_device(settings.device)
        apply_torch_threads(settings)
        if pretrained == RANDOM:
            with torch.random.fork_rng(devices=[]), _quiet_random_init_warning():
                torch.manual_seed(RANDOM_SEED)
                model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None)
        elif Path(pretrained).is_file():
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained)
            except Exception as e:  # noqa: BLE001 - any load failure is a user-facing model problem
                raise ModelUnavailable(f"could not load checkpoint {pretrained} into {arch}: {e}") from e
        elif os.sep in pretrained or pretrained.endswith((".pt", ".bin", ".pth", ".safetensors")):
            raise ModelUnavailable(f"checkpoint file not found: {pretrained}")
        else:
            tags = open_clip.list_pretrained_tags_by_model(arch)
            if pretrained not in tags:
                raise ModelUnavailable(
                    f"{arch} has no pretrained tag {pretrained!r}; known tags: {', '.join(tags) or 'none'}"
                )
            model, preprocess = _load_pretrained_tag(arch, pretrained)
        tokenizer = open_clip.get_tokenizer(arch)
        return cls(spec, model, preprocess, tokenizer, device, settings.batch_size)

    def prepare(self, modality: Modality, decoded: Any) -> Any:
        """Images leave here as uint8 after the PIL steps (resize, crop); ``encode`` turns the whole
        batch into normalised floats at once, on the GPU when there is one. Small per-image torch
        ops in decode threads would fight the encoder for cores."""
        if modality == "image":
            if self._pil_stage is None:
                return self.preprocess(decoded)
            arr = np.array(self._pil_stage(decoded), dtype=np.uint8)
            if arr.ndim == 2:
                arr = arr[:, :, None]
            return torch.from_numpy(arr).permute(2, 0, 1)
        if modality == "text":
            return str(decoded)
        raise ValueError(f"{self.spec} does not embed {modality}")

    def encode(self, modality: Modality, prepared: Sequence[Any]) -> np.ndarray:
        if not prepared:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode(), self._autocast():
            if modality == "image":
                x = torch.stack(list(prepared)).to(self.device, non_blocking=True)
                if x.dtype == torch.uint8:  # the ToTensor and Normalize steps, for the whole batch
                    mean, std = (torch.as_tensor(v, dtype=torch.float32, device=x.device).view(-1, 1, 1)
                                 for v in self._norm)  # type: ignore[union-attr]
                    x = x.to(torch.float32).div(255).sub_(mean).div_(std)
                out = self.model.encode_image(x)
            elif modality == "text":
                tokens = self.tokenizer(list(prepared)).to(self.device)
                out = self._encode_text(tokens)
            else:
                raise ValueError(f"{self.spec} does not embed {modality}")
        return l2_normalise(out.float().cpu().numpy())

    def _encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """``encode_text`` on the batch trimmed to its longest text. Captions fill ~15 of CLIP's 77
        positions; under the causal mask with end-of-text pooling the padding after a text cannot
        change its vector, so trimming gives the same vectors for a fraction of the compute."""
        m = self.model
        import open_clip

        trimmable = (type(m) is open_clip.CLIP and getattr(m, "text_pool_type", None) == "argmax"
                     and isinstance(getattr(m, "attn_mask", None), torch.Tensor))
        used = int((tokens != 0).sum(dim=1).max().item()) if tokens.numel() else 0
        if not trimmable or used >= tokens.shape[1] or used == 0:
            return m.encode_text(tokens)
        tokens = tokens[:, :used]
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(tokens).to(cast) + m.positional_embedding[:used].to(cast)
        x = m.transformer(x, attn_mask=m.attn_mask[:used, :used])
        x = open_clip.transformer.text_global_pool(m.ln_final(x), tokens, "argmax")
        proj = m.text_projection
        return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.startswith("cuda"):
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()


@contextlib.contextmanager
def _quiet_random_init_warning() -> Any:
    """open_clip warns that no weights were loaded; with ``@random`` that is what was asked for."""
    root = logging.getLogger()
    drop = logging.Filter()
    drop.filter = lambda record: "No pretrained weights loaded" not in record.getMessage()  # type: ignore[method-assign]
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _split_preprocess(preprocess: Any) -> tuple[Any, tuple[Any, Any] | None]:
    """open_clip's transform is [PIL steps..., ToTensor, Normalize]; split it there, or keep it whole."""
    from torchvision.transforms import Compose, Normalize

    steps = list(getattr(preprocess, "transforms", []))
    if len(steps) >= 2 and "ToTensor" in type(steps[-2]).__name__ and isinstance(steps[-1], Normalize):
        return Compose(steps[:-2]), (tuple(steps[-1].mean), tuple(steps[-1].std))
    return None, None


def _probe_dim(model: torch.nn.Module, device: str) -> int:
    import open_clip  # noqa: F401

    with torch.inference_mode():
        return int(model.encode_text(torch.zeros((1, 77), dtype=torch.long, device=device)).shape[1])


def _load_pretrained_tag(arch: str, tag: str) -> tuple[torch.nn.Module, Any]:
    """Load a pretrained tag from the HF cache, or download it when the hub answers; else fail fast."""
    import open_clip

    from mmsearch.encoders.hub import cached_file, hub_reachable

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    norm = {"image_mean": cfg.get("mean"), "image_std": cfg.get("std")}
    repo = (cfg.get("hf_hub") or "").strip("/")
    local = cached_file(repo, ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")) if repo else None
    try:
        if local:
            model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=local, **norm)
            return model, preprocess
        if not hub_reachable():
            raise ConnectionError("the Hugging Face hub cannot be reached and the weights are not cached")
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=tag)
    except Exception as e:  # noqa: BLE001 - network, hub and file errors all mean "no weights"
        raise ModelUnavailable(
            f"could not get the weights for open_clip:{arch}@{tag} ({type(e).__name__}: {e}).\n"
            "Without network access, use a local checkpoint file: "
            f"--model open_clip:{arch}@/path/to/open_clip_model.safetensors, or populate the "
            "Hugging Face cache on a connected machine and set HF_HUB_OFFLINE=1 here. "
            f"For a demo without weights: --model open_clip:{arch}@random"
        ) from e
    return model, preprocess
