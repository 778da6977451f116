"""CLAP-family audio and text encoder through transformers.

A spec names a Hugging Face id or a local directory written by ``save_pretrained``. Weights are
looked for in the local directory or the HF cache first; the hub is only asked when a quick
connection check says it can answer, so an offline machine fails in seconds, with advice,
instead of spending a minute on download retries.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from mmsearch.cpus import apply_torch_threads
from mmsearch.encoders.base import Modality, Spec, is_local_name, l2_normalise, pick_device
from mmsearch.encoders.base import clap_canonical as canonical_spec
from mmsearch.errors import ModelUnavailable
from mmsearch.settings import Settings

DEFAULT_SPEC = "clap:laion/clap-htsat-unfused"
HUB_CHECK_TIMEOUT_S = 3.0  # bounds DNS and TCP connect; a reachable hub answers far sooner
_TRUTHY = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class PreparedAudio:
    """One window's model input, computed in a decode thread so ``encode`` only stacks."""

    input_features: np.ndarray  # float32 (channels, frames, mel bins)
    is_longer: bool


class ClapEncoder:
    space = "clap"
    modalities: tuple[Modality, ...] = ("audio", "text")

    def __init__(self, spec: Spec, model: torch.nn.Module, processor: Any, device: str,
                 batch_size: int) -> None:
        self.spec = str(spec)
        self.model = model.float().eval().to(device)
        self.processor = processor
        self.feature_extractor = processor.feature_extractor
        self.tokenizer = processor.tokenizer
        self.weights_dir: str | None = None  # the folder read (names the CPU runtime's exports)
        self.device = device
        self.batch_size = batch_size
        self.dim = int(model.config.projection_dim)
        self.sample_rate = int(self.feature_extractor.sampling_rate)
        self._window_samples = int(self.feature_extractor.nb_max_samples)
        self.window_seconds = self._window_samples / self.sample_rate
        # RoBERTa positions start after the padding index, so two positions are not usable.
        max_positions = int(model.config.text_config.max_position_embeddings) - 2
        self._max_tokens = min(int(getattr(self.tokenizer, "model_max_length", max_positions)), max_positions)

    @classmethod
    def from_spec(cls, spec: Spec, settings: Settings) -> "ClapEncoder":
        spec = canonical_spec(spec)
        device = pick_device(settings.device)
        apply_torch_threads(settings)
        local = is_local_name(spec.name)
        model, processor = _load(spec.name, local=local)
        enc = cls(spec, model, processor, device, settings.batch_size)
        enc.weights_dir = spec.name if local else _cached_dir(spec.name)
        return enc

    def prepare(self, modality: Modality, decoded: Any) -> Any:
        if modality == "audio":
            return audio_features(self.feature_extractor, self._window_samples, decoded)
        if modality == "text":
            return str(decoded)
        raise ValueError(f"{self.spec} does not embed {modality}")

    def preparer(self, modality: Modality) -> Callable[[Any], Any] | None:
        """``prepare`` as a picklable function that holds no model (Ray's decode tasks run it)."""
        if modality == "audio":
            return partial(audio_features, self.feature_extractor, self._window_samples)
        return str if modality == "text" else None

    def encode(self, modality: Modality, prepared: Sequence[Any]) -> np.ndarray:
        if modality not in self.modalities:
            raise ValueError(f"{self.spec} does not embed {modality}")
        if not prepared:
            return np.zeros((0, self.dim), dtype=np.float32)
        items = list(prepared)
        out = [self._encode_batch(modality, items[i:i + self.batch_size])
               for i in range(0, len(items), self.batch_size)]
        return l2_normalise(np.concatenate(out))

    def _encode_batch(self, modality: Modality, items: list[Any]) -> np.ndarray:
        with torch.inference_mode(), self._autocast():
            if modality == "audio":
                x = torch.from_numpy(np.stack([p.input_features for p in items]))
                longer = torch.tensor([[p.is_longer] for p in items], dtype=torch.bool)
                out = self.model.get_audio_features(input_features=x.to(self.device, non_blocking=True),
                                                    is_longer=longer.to(self.device))
            else:
                tokens = self.tokens(items, "pt")
                out = self.model.get_text_features(input_ids=tokens["input_ids"].to(self.device),
                                                   attention_mask=tokens["attention_mask"].to(self.device))
        return _pooled(out).float().cpu().numpy()

    def tokens(self, texts: list[str], tensors: str = "pt") -> Any:
        """Token ids and mask padded to the batch's longest text (``tensors``: "pt" or "np", for the
        CPU runtime), so both runtimes see the same inputs."""
        return self.tokenizer(texts, padding=True, truncation=True, max_length=self._max_tokens,
                              return_tensors=tensors)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.startswith("cuda"):
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()


def _pooled(out: Any) -> torch.Tensor:
    """transformers 4 returns the projected tensor; 5 returns a model output holding it."""
    if isinstance(out, torch.Tensor):
        return out
    return out.pooler_output


def _help(name: str, reason: str) -> str:
    return (
        f"could not get the CLAP weights for clap:{name} ({reason}).\n"
        "Without network access, use a local directory: --audio-model clap:/path/to/dir "
        "(a downloaded snapshot of the model, or what ClapModel.save_pretrained and "
        "ClapProcessor.save_pretrained wrote), or populate the Hugging Face cache on a connected "
        "machine and set HF_HUB_OFFLINE=1 here. To index without audio: --no-audio (or MMSEARCH_AUDIO=false)."
    )


def _load(name: str, local: bool) -> tuple[torch.nn.Module, Any]:
    if local:
        d = Path(name)
        if not d.is_dir():
            raise ModelUnavailable(_help(name, "no such directory"))
        try:
            return _from_pretrained(str(d), local_files_only=True)
        except Exception as e:  # noqa: BLE001 - any load failure is a user-facing model problem
            raise ModelUnavailable(
                f"could not load a CLAP model from {d} ({type(e).__name__}: {e}); the directory "
                "needs config.json, the weights and the processor files that save_pretrained writes"
            ) from e
    if _in_hf_cache(name):
        try:
            return _from_pretrained(name, local_files_only=True)
        except Exception:  # noqa: BLE001 - a partial cache: the hub may complete it
            pass
    if _offline():
        raise ModelUnavailable(_help(name, "not in the Hugging Face cache and HF_HUB_OFFLINE is set"))
    reachable, why = _hub_reachable()
    if not reachable:
        raise ModelUnavailable(_help(name, f"not in the Hugging Face cache and the hub is unreachable: {why}"))
    try:
        return _from_pretrained(name, local_files_only=False)
    except Exception as e:  # noqa: BLE001 - network, hub and file errors all mean "no weights"
        raise ModelUnavailable(_help(name, f"{type(e).__name__}: {e}")) from e


def _from_pretrained(source: str, local_files_only: bool) -> tuple[torch.nn.Module, Any]:
    """transformers draws a "Loading weights" bar on stderr for a second's read from disk: off
    then (a download's bars stay), so ``--json`` and piped runs print only what mmsearch prints."""
    from transformers import ClapModel, ClapProcessor
    from transformers.utils import logging as hf_logging

    quiet = local_files_only and hf_logging.is_progress_bar_enabled()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        model = ClapModel.from_pretrained(source, local_files_only=local_files_only)
        processor = ClapProcessor.from_pretrained(source, local_files_only=local_files_only)
    finally:
        if quiet:
            hf_logging.enable_progress_bar()
    return model, processor


def _cached_dir(repo_id: str) -> str | None:
    """The Hugging Face cache's snapshot folder of ``repo_id`` (what a load reads), if cached."""
    from huggingface_hub import try_to_load_from_cache

    try:
        path = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # noqa: BLE001 - an id the hub would reject is simply not cached
        return None
    return str(Path(path).parent) if isinstance(path, str) else None


def _in_hf_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - an id the hub would reject is simply not cached
        return False


def _offline() -> bool:
    from huggingface_hub import constants

    env = any(os.environ.get(v, "").strip().lower() in _TRUTHY for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return env or bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _hub_reachable(timeout: float = HUB_CHECK_TIMEOUT_S) -> tuple[bool, str]:
    """One HEAD request to the hub through huggingface_hub's own session (its proxies and
    certificates), in a thread so that slow DNS cannot stall us either. Any HTTP answer counts:
    a sandbox proxy may accept TCP connections and still never reach the hub."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    url = constants.ENDPOINT
    result: list[str] = []

    def probe() -> None:
        try:
            get_session().head(url, timeout=timeout)
            result.append("")
        except Exception as e:  # noqa: BLE001 - every failure means "not reachable"
            result.append(f"{url}: {type(e).__name__}: {e}")

    t = threading.Thread(target=probe, name="mmsearch-hub-check", daemon=True)
    t.start()
    t.join(timeout + 0.5)
    if not result:
        return False, f"{url}: no answer within {timeout:.0f} s"
    return result[0] == "", result[0]


def audio_features(extractor: Any, window_samples: int, decoded: Any) -> PreparedAudio:
    """One mono window's log-mel features, as CLAP's feature extractor makes them."""
    window = np.asarray(decoded, dtype=np.float32)
    if window.ndim != 1 or window.size == 0:
        raise ValueError(f"CLAP expects a non-empty mono window, got shape {window.shape}")
    feats = extractor(window, sampling_rate=int(extractor.sampling_rate), return_tensors="np")
    # The extractor marks a random clip "longer" when none is (a training trick to feed the
    # fusion branch); at inference a window no longer than the model's is never longer.
    return PreparedAudio(np.asarray(feats["input_features"][0], dtype=np.float32), bool(window.size > window_samples))
