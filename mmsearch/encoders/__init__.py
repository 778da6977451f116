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

    def torch_encoder() -> Encoder:
        if parsed.family == "open_clip":
            from mmsearch.encoders.clip import OpenClipEncoder

            return OpenClipEncoder.from_spec(parsed, torch_settings)
        from mmsearch.encoders.clap import ClapEncoder

        return ClapEncoder.from_spec(parsed, torch_settings)

    if runtime == "torch":
        return torch_encoder()
    cached = OnnxEncoder.from_cache(spec, settings, torch_encoder)  # exports cached: no torch until needed
    return cached if cached is not None else OnnxEncoder(torch_encoder(), settings)


__all__ = ["Encoder", "Modality", "Spec", "load_encoder", "l2_normalise", "pick_device"]
