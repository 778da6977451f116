"""Encoders are named by a spec and built by one function, as in open_clip's factory."""

from __future__ import annotations

from mmsearch.encoders.base import Encoder, Modality, Spec, l2_normalise, pick_device
from mmsearch.settings import Settings


def load_encoder(spec: str, settings: Settings | None = None) -> Encoder:
    """Build the encoder a spec names: ``open_clip:ARCH@PRETRAINED`` or ``clap:HF_ID_OR_DIR``."""
    settings = settings or Settings()
    parsed = Spec.parse(spec)
    if parsed.family == "open_clip":
        from mmsearch.encoders.clip import OpenClipEncoder

        return OpenClipEncoder.from_spec(parsed, settings)
    from mmsearch.encoders.clap import ClapEncoder

    return ClapEncoder.from_spec(parsed, settings)


__all__ = ["Encoder", "Modality", "Spec", "load_encoder", "l2_normalise", "pick_device"]
