"""The encoders of a catalog's embedding spaces: loaded on first use, checked against the model
the catalog records, injectable so tests and embedders can pass their own."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from mmsearch.encoders import load_encoder
from mmsearch.encoders.base import Encoder
from mmsearch.errors import BadInput
from mmsearch.settings import DEFAULT_AUDIO_MODEL, DEFAULT_IMAGE_MODEL, Settings
from mmsearch.storage.catalog import Catalog

if TYPE_CHECKING:
    from mmsearch.writer import CatalogWriter

# space -> (modalities it embeds, file kinds it must see again when it is (re)defined)
SPACES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "clip": (("image", "text"), ("image", "text", "captions", "video")),
    "clap": (("audio", "text"), ("audio", "text", "captions", "video")),
}


class EncoderSet:
    def __init__(self, catalog: Catalog | None, settings: Settings, preloaded: Mapping[str, Encoder] | None = None,
                 *, reembed: bool = False) -> None:
        self.catalog = catalog
        self.settings = settings
        self.reembed = reembed
        self._loaded: dict[str, Encoder] = {}
        self._checked: set[str] = set()
        self.redo: set[str] = set()  # spaces whose files must all be embedded again
        for enc in (preloaded or {}).values():
            self._loaded[enc.space] = enc

    def spec(self, space: str) -> str:
        """The user's choice, else the catalog's record, else the default."""
        if space in self._loaded:
            return self._loaded[space].spec
        explicit = self.settings.model if space == "clip" else self.settings.audio_model
        default = DEFAULT_IMAGE_MODEL if space == "clip" else DEFAULT_AUDIO_MODEL
        return explicit or (self.catalog.space_spec(space) if self.catalog else None) or default

    def enabled(self, space: str) -> bool:
        return space == "clip" or (space == "clap" and (self.settings.audio or space in self._loaded))

    def loaded(self, space: str) -> bool:
        return space in self._loaded

    def get(self, space: str) -> Encoder:
        """The space's encoder, loaded on first use. Queries only read: the query path refuses a
        model that differs from the catalog's itself."""
        if space not in SPACES:
            raise BadInput(f"unknown embedding space {space!r}")
        if space not in self._loaded:
            self._loaded[space] = load_encoder(self.spec(space), self.settings)
        return self._loaded[space]

    def record(self, space: str, writer: "CatalogWriter") -> Encoder:
        """Load the encoder and write its model into the catalog through the writer (indexing),
        or refuse a different one unless re-embedding."""
        enc = self.get(space)
        if space not in self._checked:
            if writer.record_space(space, enc.spec, enc.dim, SPACES[space][1], reembed=self.reembed):
                self.redo.add(space)
            self._checked.add(space)
        return enc

    def spaces_for(self, modality: str) -> list[str]:
        return [s for s, (mods, _) in SPACES.items() if modality in mods and self.enabled(s)]
