"""Encoders are named by a spec and built by one function, as in open_clip's factory."""

from __future__ import annotations

from mmsearch.encoders.base import Encoder, Modality, Spec, l2_normalise, pick_device
from mmsearch.settings import Settings


def load_encoder(spec: str, settings: Settings | None = None) -> Encoder:
    """Build the encoder a spec names: ``open_clip:ARCH@PRETRAINED`` or ``clap:HF_ID_OR_DIR``, run
    by torch or, per ``settings.runtime``, by the CPU runtime (ONNX) around the same torch encoder."""
    from mmsearch.encoders.cpu_runtime import OnnxEncoder, resolve_runtime

    settings = settings or Settings()
    parsed = Spec.parse(spec)
    runtime = resolve_runtime(settings)
    torch_settings = settings if runtime == "torch" else settings.model_copy(update={"device": "cpu"})
    if parsed.family == "open_clip":
        from mmsearch.encoders.clip import OpenClipEncoder

        base: Encoder = OpenClipEncoder.from_spec(parsed, torch_settings)
    else:
        from mmsearch.encoders.clap import ClapEncoder

        base = ClapEncoder.from_spec(parsed, torch_settings)
    return OnnxEncoder(base, settings) if runtime == "onnx" else base


__all__ = ["Encoder", "Modality", "Spec", "load_encoder", "l2_normalise", "pick_device"]
