"""CLIP-family image and text encoder through open_clip.

A model read from a checkpoint file is built as a skeleton (parameters on torch's ``meta``
device: no memory, no random init), and each tower's weights are read the first time that tower
embeds something: a text query never reads, allocates or runs the image tower. Seeded
``@random`` weights and checkpoints that need open_clip's conversions load whole, as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from mmsearch.cpus import apply_torch_threads
from mmsearch.encoders.base import Modality, Spec, l2_normalise, pick_device, quiet_root_log
from mmsearch.encoders.base import open_clip_canonical as canonical_spec
from mmsearch.errors import ModelUnavailable
from mmsearch.media.decode import JpegFile
from mmsearch.media.device_images import DeviceImages, StagedImages, tensor_steps
from mmsearch.settings import Settings

RANDOM = "random"
RANDOM_SEED = 0


def _register_configs(dirs: Sequence[Path]) -> None:
    import open_clip

    for d in dirs:
        open_clip.add_model_config(Path(d))


class OpenClipEncoder:
    space = "clip"
    modalities: tuple[Modality, ...] = ("image", "text")

    def __init__(self, spec: Spec, model: torch.nn.Module, preprocess: Any, tokenizer: Any,
                 device: str, batch_size: int, weights: "_Checkpoint | None" = None) -> None:
        """``weights``: where the towers of a skeleton ``model`` are read from on first use;
        None: ``model`` holds every weight already."""
        self.spec = str(spec)
        self._module = model.eval() if weights is not None else model.eval().to(device)
        self._weights = weights
        self.weights_file = weights.path if weights is not None else None  # names the CPU runtime's exports
        self._unloaded: set[Modality] = {"image", "text"} if weights is not None else set()
        self._tower_lock = threading.Lock()
        self.preprocess = preprocess
        self._pil_stage, self._norm = _split_preprocess(preprocess)
        self._device_images: DeviceImages | None = None
        self.tokenizer = tokenizer
        self.device = device
        self.batch_size = batch_size
        proj = getattr(model, "text_projection", None)
        if isinstance(proj, torch.Tensor):
            self.dim = int(proj.shape[1])
        else:
            self._tower("text")
            self.dim = _probe_dim(model, device)

    @property
    def image_side(self) -> int | None:
        """The short side an image needs for ``prepare`` to resize it without enlarging it (the
        shortest edge it resizes to, or the longer of a fixed size; None: unknown): a video's
        frames are decoded at it, so they are resized once, or not at all."""
        steps = list(getattr(self._pil_stage, "transforms", []))
        size = getattr(steps[0], "size", None) if steps else None
        sizes = [size] if isinstance(size, int) else list(size) if isinstance(size, (list, tuple)) else []
        return max(sizes) if sizes and all(isinstance(v, int) for v in sizes) else None

    @property
    def model(self) -> torch.nn.Module:
        """The whole open_clip model, both towers loaded (for callers that export or inspect it)."""
        self.load_towers()
        return self._module

    def load_towers(self) -> None:
        """Read every tower now: a server does before its port opens, not on its first query."""
        for modality in self.modalities:
            self._tower(modality)

    def load_tower(self, modality: Modality) -> None:
        """Read one tower now (the CPU runtime, before it exports that tower)."""
        self._tower(modality)

    @property
    def module(self) -> torch.nn.Module:
        """The open_clip model as far as it is read: the parameters of a tower not used yet are
        on the meta device. ``model`` reads every tower first."""
        return self._module

    def loaded_towers(self) -> set[Modality]:
        return {"image", "text"} - self._unloaded

    def _tower(self, modality: Modality) -> torch.nn.Module:
        """The model, with ``modality``'s tower read from the checkpoint if it was not yet."""
        if modality in self._unloaded:
            with self._tower_lock:
                if modality in self._unloaded:
                    assert self._weights is not None
                    self._weights.load_tower(self._module, modality, self.device)
                    self._unloaded.discard(modality)
        return self._module

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
        weights: _Checkpoint | None = None
        if pretrained == RANDOM:
            with _BUILD_LOCK, torch.random.fork_rng(devices=[]), _quiet_random_init_warning():
                torch.manual_seed(RANDOM_SEED)
                model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None)
        elif Path(pretrained).is_file():
            model, preprocess, weights = _skeleton(arch, pretrained, {}) or (*_load_file(arch, pretrained), None)
        elif os.sep in pretrained or pretrained.endswith((".pt", ".bin", ".pth", ".safetensors")):
            raise ModelUnavailable(f"checkpoint file not found: {pretrained} (the file in --model "
                                   f"open_clip:{arch}@FILE)")
        else:
            tags = open_clip.list_pretrained_tags_by_model(arch)
            if pretrained not in tags:
                raise ModelUnavailable(
                    f"{arch} has no pretrained tag {pretrained!r}; known tags: {', '.join(tags) or 'none'}"
                )
            model, preprocess, weights = _load_pretrained_tag(arch, pretrained)
        tokenizer = open_clip.get_tokenizer(arch)
        return cls(spec, model, preprocess, tokenizer, device, settings.batch_size, weights)

    def prepare(self, modality: Modality, decoded: Any) -> Any:
        """Images leave here as uint8 after the PIL steps (resize, crop); ``encode`` turns the whole
        batch into normalised floats at once, on the GPU when there is one. Small per-image torch
        ops in decode threads would fight the encoder for cores. A JpegFile (bytes checked from
        the header) passes through: it is decoded with its batch on the device (``stage_images``)."""
        if modality == "image":
            if isinstance(decoded, JpegFile):
                return decoded
            if self._pil_stage is None:
                return self.preprocess(decoded)
            return staged_pixels(self._pil_stage, decoded)
        if modality == "text":
            return str(decoded)
        raise ValueError(f"{self.spec} does not embed {modality}")

    def preparer(self, modality: Modality) -> Callable[[Any], Any] | None:
        """``prepare`` for decoded PIL images or texts as a picklable function that holds no model
        (Ray's decode tasks run it), or None where preparing needs the model."""
        if modality == "text":
            return str
        if modality == "image" and self._pil_stage is not None:  # numpy: an ONNX actor needs no torch to read it
            return partial(staged_array, self._pil_stage)
        return None

    def encode(self, modality: Modality, prepared: Sequence[Any]) -> np.ndarray:
        if not prepared:
            return np.zeros((0, self.dim), dtype=np.float32)
        if modality not in self.modalities:
            raise ValueError(f"{self.spec} does not embed {modality}")
        if modality == "image" and any(isinstance(p, JpegFile) for p in prepared):
            staged = self.stage_images(prepared)
            if staged.failed:
                raise ValueError("; ".join(f"{prepared[i].path}: {why}" for i, why in staged.failed.items()))
            return self.encode_staged(staged)
        model = self._tower(modality)
        with torch.inference_mode(), self._autocast():
            if modality == "image":
                x = torch.stack([torch.as_tensor(p) for p in prepared])  # uint8 CHW from either recipe
                if self.device.startswith("cuda"):
                    x = x.pin_memory()  # an asynchronous copy needs page-locked memory
                x = x.to(self.device, non_blocking=True)
                if x.dtype == torch.uint8:  # the ToTensor and Normalize steps, for the whole batch
                    mean, std = (torch.as_tensor(v, dtype=torch.float32, device=x.device).view(-1, 1, 1)
                                 for v in self._norm)  # type: ignore[union-attr]
                    x = x.to(torch.float32).div(255).sub_(mean).div_(std)
                out = model.encode_image(x)
            else:
                tokens = self.tokenizer(list(prepared)).to(self.device)
                out = self._encode_text(tokens)
        return l2_normalise(out.float().cpu().numpy())

    def device_images(self) -> DeviceImages | None:
        """Batched JPEG decoding and preprocessing on this encoder's device; None when its
        transform has a step that path does not reproduce (Pillow then does all of it)."""
        if self._device_images is None and self._pil_stage is not None and self._norm is not None:
            steps = tensor_steps(self._pil_stage)
            if steps is None:
                return None
            self._device_images = DeviceImages(steps, self._norm, self.device, lambda img: self.prepare("image", img))
        return self._device_images

    def stage_images(self, prepared: Sequence[Any]) -> StagedImages:
        """A batch of JpegFile and prepared tensors, decoded and normalised on the device; thread
        safe, so the pipeline stages the next batch while ``encode_staged`` runs this one."""
        stager = self.device_images()
        if stager is None:
            raise ValueError(f"{self.spec}: its image transform cannot run on the device")
        with torch.inference_mode():
            return stager(prepared)

    def encode_staged(self, staged: StagedImages) -> np.ndarray:
        """Vectors of a staged batch (its failed images left out), rows L2-normalised."""
        x = staged.pixels
        if not len(x):
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self._tower("image")
        if x.device.type == "cuda":  # made on the stager's stream: keep its memory until this one is done
            x.record_stream(torch.cuda.current_stream(x.device))
        with torch.inference_mode(), self._autocast():
            out = model.encode_image(x)
        return l2_normalise(out.float().cpu().numpy())

    def _encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """``encode_text`` on the batch trimmed to its longest text. Captions fill ~15 of CLIP's 77
        positions; under the causal mask with end-of-text pooling the padding after a text cannot
        change its vector, so trimming gives the same vectors for a fraction of the compute."""
        trimmed = self.trim_tokens(tokens)
        if trimmed is tokens:
            return self._tower("text").encode_text(tokens)
        return self.text_forward(trimmed)

    @property
    def text_trimmable(self) -> bool:
        """Plain CLIP text towers (causal mask, end-of-text pooling) may drop trailing padding.
        Asked of the skeleton: its type and causal mask are there before any weight is read."""
        import open_clip

        m = self._module
        return (type(m) is open_clip.CLIP and getattr(m, "text_pool_type", None) == "argmax"
                and isinstance(getattr(m, "attn_mask", None), torch.Tensor))

    def trim_tokens(self, tokens: Any) -> Any:
        """The batch (torch or numpy) without the padding after its longest text; itself when the
        tower cannot be trimmed or nothing would be dropped. The CPU runtime trims the same way."""
        from mmsearch.encoders.clip_tokenizer import trim_padding

        return trim_padding(tokens) if self.text_trimmable else tokens

    def text_forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """The text tower on tokens of any length up to the context (a trimmed batch); traceable,
        so the CPU runtime exports it with a dynamic sequence axis."""
        import open_clip

        m = self._tower("text")
        used = tokens.shape[1]
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


def _quiet_random_init_warning() -> contextlib.AbstractContextManager:
    """open_clip warns that no weights were loaded; with ``@random`` that is what was asked for."""
    return quiet_root_log("No pretrained weights loaded")


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


def _load_pretrained_tag(arch: str, tag: str) -> tuple[torch.nn.Module, Any, "_Checkpoint | None"]:
    """Load a pretrained tag from the HF cache (as a skeleton when it can), or download it when
    the hub answers; else fail fast."""
    import open_clip

    from mmsearch.encoders.hub import cached_file, hub_reachable

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    norm = {"image_mean": cfg.get("mean"), "image_std": cfg.get("std")}
    repo = (cfg.get("hf_hub") or "").strip("/")
    local = cached_file(repo, ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")) if repo else None
    try:
        if local:
            lazy = _skeleton(arch, local, norm)
            if lazy is not None:
                return lazy
            with _BUILD_LOCK:
                model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=local, **norm)
            return model, preprocess, None
        if not hub_reachable():
            raise ConnectionError("the Hugging Face hub cannot be reached and the weights are not cached")
        with _BUILD_LOCK:
            model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=tag)
    except Exception as e:  # noqa: BLE001 - network, hub and file errors all mean "no weights"
        raise ModelUnavailable(
            f"could not get the weights for open_clip:{arch}@{tag} ({type(e).__name__}: {e}).\n"
            "Without network access, use a local checkpoint file: "
            f"--model open_clip:{arch}@/path/to/open_clip_model.safetensors, or populate the "
            "Hugging Face cache on a connected machine and set HF_HUB_OFFLINE=1 here. "
            f"For a demo without weights: --model open_clip:{arch}@random"
        ) from e
    return model, preprocess, None


_BUILD_LOCK = threading.Lock()  # model builds patch torch and open_clip for their own thread: one at a time


def _load_file(arch: str, path: str) -> tuple[torch.nn.Module, Any]:
    """The whole model from a checkpoint file, through open_clip (its format conversions included)."""
    import open_clip

    try:
        with _BUILD_LOCK:
            model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=path)
    except Exception as e:  # noqa: BLE001 - any load failure is a user-facing model problem
        raise ModelUnavailable(f"could not load checkpoint {path} into {arch}: {e}") from e
    return model, preprocess


def _tower_of(key: str) -> Modality:
    """Which tower a state-dict key belongs to; the shared scalars (logit scale) go with text."""
    return "image" if key.startswith("visual.") else "text"


class _Checkpoint:
    """A checkpoint file read one tower at a time: safetensors by key, torch zip files memory-mapped,
    so the other tower's bytes are never read."""

    def __init__(self, path: str, expected: dict[str, tuple[torch.Size, torch.dtype]]) -> None:
        self.path = path
        self.expected = expected  # the skeleton's state-dict keys: shape and dtype

    def _state_dict(self) -> Any:
        if self.path.endswith(".safetensors"):
            from safetensors import safe_open

            return safe_open(self.path, framework="pt", device="cpu")
        try:
            checkpoint = torch.load(self.path, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError:  # the legacy (non-zip) format cannot be mapped
            checkpoint = torch.load(self.path, map_location="cpu", weights_only=True)
        sd = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else checkpoint
        if not isinstance(sd, dict) or not sd:
            raise ValueError("no state dict in the checkpoint")
        if next(iter(sd)).startswith("module."):  # saved from DataParallel, as open_clip strips it
            sd = {k[len("module."):]: v for k, v in sd.items()}
        return sd

    def matches(self) -> bool:
        """Whether every key of the model is in the file with its shape (else open_clip's own
        loader, which converts other layouts, is needed)."""
        sd = self._state_dict()
        if hasattr(sd, "get_slice"):  # safetensors: shapes from the header, nothing read
            keys = set(sd.keys())
            return keys >= set(self.expected) and all(
                tuple(sd.get_slice(k).get_shape()) == tuple(shape) for k, (shape, _) in self.expected.items())
        return set(sd) >= set(self.expected) and all(
            isinstance(sd[k], torch.Tensor) and sd[k].shape == shape for k, (shape, _) in self.expected.items())

    def load_tower(self, model: torch.nn.Module, modality: Modality, device: str) -> None:
        """Read one tower's tensors into the skeleton (assigned, not copied into meta tensors) and
        move them to ``device``."""
        sd = self._state_dict()
        mapped = not hasattr(sd, "get_tensor")  # torch.load's tensors live in the mapped file: copy them
        tensors = {}
        for key, (_, dtype) in self.expected.items():
            if _tower_of(key) == modality:
                t = sd[key] if mapped else sd.get_tensor(key)
                tensors[key] = t.to(device=device, dtype=dtype, copy=mapped)
        model.load_state_dict(tensors, strict=False, assign=True)
        for module in model.modules():  # buffers (the causal mask) were built for real, on the CPU
            for name, buf in list(module._buffers.items()):
                if buf is not None and not buf.is_meta:
                    module._buffers[name] = buf.to(device)


@contextlib.contextmanager
def _parameters_on_meta() -> Any:
    """Parameters registered by this thread are put on the meta device: building the model
    allocates and initialises nothing; buffers (the causal mask) stay real. open_clip's final
    ``model.to(device)`` is skipped: the towers are moved as they are read."""
    import open_clip.factory

    owner = threading.get_ident()
    register = torch.nn.Module.register_parameter

    def on_meta(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        if param is not None and not param.is_meta and threading.get_ident() == owner:
            param = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    place = open_clip.factory._set_model_device_and_precision
    torch.nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    open_clip.factory._set_model_device_and_precision = lambda *a, **k: None
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register  # type: ignore[method-assign]
        open_clip.factory._set_model_device_and_precision = place


def _skeleton(arch: str, path: str, norm: dict[str, Any]) -> tuple[torch.nn.Module, Any, _Checkpoint] | None:
    """The model without weights and a reader for its towers, when the file holds exactly this
    model's keys and shapes; None (load it whole) otherwise, or if this open_clip cannot be
    built on the meta device."""
    import open_clip
    import open_clip.factory

    if not hasattr(open_clip.factory, "_set_model_device_and_precision"):
        return None
    try:
        with _BUILD_LOCK, _parameters_on_meta(), _quiet_random_init_warning():
            model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None, **norm)
        expected = {k: (t.shape, t.dtype) for k, t in model.state_dict().items()}
        if not all(t.is_meta for t in model.parameters()):
            return None
        weights = _Checkpoint(path, expected)
        if not weights.matches():
            return None
    except Exception:  # noqa: BLE001 - anything unusual: open_clip's own loader decides
        logging.getLogger(__name__).debug("open_clip:%s@%s: loading whole", arch, path, exc_info=True)
        return None
    return model, preprocess, weights


def _pil_pixels(pil_stage: Any, decoded: Any) -> np.ndarray:
    """The PIL steps (resize, crop) as uint8 height x width x channels."""
    arr = np.array(pil_stage(decoded), dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def staged_pixels(pil_stage: Any, decoded: Any) -> torch.Tensor:
    """The PIL steps as uint8 CHW (a view): ``encode`` normalises the batch at once."""
    return torch.from_numpy(_pil_pixels(pil_stage, decoded)).permute(2, 0, 1)


def staged_array(pil_stage: Any, decoded: Any) -> np.ndarray:
    """The same pixels as a contiguous numpy array, to ship to another process."""
    return np.ascontiguousarray(_pil_pixels(pil_stage, decoded).transpose(2, 0, 1))
