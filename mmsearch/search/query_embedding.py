"""Turning a Query into one unit vector per embedding space it reaches.

Text, image, sound and stored items are summed per space with their weights, negative texts are
subtracted, and the sum is normalised: the search side then sees only one vector per space.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel

if TYPE_CHECKING:
    from PIL import Image

from mmsearch.encoders.base import l2_normalise
from mmsearch.encoders.encoder_set import SPACES, EncoderSet
from mmsearch.errors import BadInput
from mmsearch.search.live import LiveIndexes
from mmsearch.search.request import Query
from mmsearch.settings import Settings
from mmsearch.storage.catalog import Catalog

MAX_QUERY_AUDIO_S = 600  # seconds of a query clip that are read
CHECK_WINDOW_S = 30.0  # window of the decode check (any length works: only the decode matters)


class Embedding(BaseModel):
    space: str
    model: str
    vector: list[float]


class QueryEmbedder:
    """Embeds queries with the catalog's encoders; item ids are read back from the vector stores.
    Without a catalog (``mmsearch embed`` before any index) it embeds text and media only."""

    def __init__(self, catalog: Catalog | None, indexes: LiveIndexes | None, encoders: EncoderSet,
                 settings: Settings) -> None:
        self.catalog, self.indexes, self.encoders, self.settings = catalog, indexes, encoders, settings

    def embed_one(self, *, text: str | None = None, image: bytes | None = None, audio: bytes | None = None,
                  space: str | None = None) -> Embedding:
        """The raw vector of one text, image or sound, for other systems."""
        given = [x for x in (text, image, audio) if x is not None]
        if len(given) != 1:
            raise BadInput("embed takes exactly one of text, image or audio")
        if image is not None:
            space, vec = "clip", self.embed_image(image)
        elif audio is not None:
            space, vec = "clap", self.embed_audio(audio)
        else:
            space = space or "clip"
            vec = self.embed_text(space, [text or ""])[0]
        return Embedding(space=space, model=self.encoders.get(space).spec, vector=[float(x) for x in vec])

    def check_inputs(self, q: Query) -> Image.Image | None:
        """Decode the query's media, so a bad image or sound is refused before any model loads
        (a model takes seconds; the refusal, milliseconds). Returns the decoded image."""
        if q.audio is not None:
            self._check_audio(q.audio)
        return self._decode_image(q.image) if q.image is not None else None

    @staticmethod
    def needs_model(q: Query, space: str) -> bool:
        """Whether embedding ``q`` in ``space`` runs that space's model (stored items do not)."""
        mods = SPACES[space][0]
        return bool(((q.text or q.negative_text) and "text" in mods) or (q.image is not None and "image" in mods)
                    or (q.audio is not None and "audio" in mods))

    def embed_query(self, q: Query, spaces: Sequence[str], image: Image.Image | None = None) -> dict[str, np.ndarray]:
        """One unit vector per reachable space; ``image``: the query image already decoded."""
        out: dict[str, np.ndarray] = {}
        for space in spaces:
            parts: list[np.ndarray] = []
            mods = set(SPACES[space][0])
            if q.text and "text" in mods:
                parts.append(q.text_weight * self.embed_text(space, [q.text])[0])
            if q.image is not None and "image" in mods:
                parts.append(q.image_weight * self.embed_image(image if image is not None else q.image))
            if q.audio is not None and "audio" in mods:
                parts.append(q.audio_weight * self.embed_audio(q.audio))
            for item_id in q.item_ids:
                vec = self.item_vector(item_id, space)
                if vec is not None:
                    parts.append(vec)
            if not parts:
                continue
            v = np.sum(parts, axis=0)
            if q.negative_text and "text" in mods:
                v = v - q.negative_weight * self.embed_text(space, q.negative_text).sum(axis=0)
            out[space] = l2_normalise(v[None, :])[0]
        return out

    def embed_text(self, space: str, texts: list[str]) -> np.ndarray:
        enc = self.encoders.get(space)
        return enc.encode("text", [enc.prepare("text", t) for t in texts])

    def _decode_image(self, data: bytes) -> Image.Image:
        from mmsearch.media.decode import DecodeError, load_image

        try:
            return load_image(io.BytesIO(data), self.settings.max_image_pixels)
        except DecodeError as e:
            raise BadInput(f"query image: {e}") from e

    def embed_image(self, data: bytes | Image.Image) -> np.ndarray:
        img = self._decode_image(data) if isinstance(data, bytes) else data  # before the model loads
        enc = self.encoders.get("clip")
        return enc.encode("image", [enc.prepare("image", img)])[0]

    @staticmethod
    def _check_audio(data: bytes) -> None:
        """Decode at the file's own rate: the model's rate is not known before the model loads,
        and a query clip is short enough to decode twice."""
        from mmsearch.media.audio import AudioDecodeError, audio_rate, iter_windows

        try:
            for _ in iter_windows(io.BytesIO(data), audio_rate(io.BytesIO(data)), CHECK_WINDOW_S,
                                  max_seconds=MAX_QUERY_AUDIO_S):
                pass
        except AudioDecodeError as e:
            raise BadInput(f"query audio: {e}") from e

    def embed_audio(self, data: bytes) -> np.ndarray:
        """A query clip longer than one window is the mean of its windows."""
        from mmsearch.media.audio import AudioDecodeError, iter_windows

        self._check_audio(data)
        enc = self.encoders.get("clap")
        try:
            windows = list(iter_windows(io.BytesIO(data), enc.sample_rate, enc.window_seconds,  # type: ignore[attr-defined]
                                        max_seconds=MAX_QUERY_AUDIO_S))
        except AudioDecodeError as e:
            raise BadInput(f"query audio: {e}") from e
        vecs = enc.encode("audio", [enc.prepare("audio", w.samples) for w in windows])
        return l2_normalise(vecs.mean(axis=0, keepdims=True))[0]

    def item_vector(self, item_id: int, space: str) -> np.ndarray | None:
        """A stored item as a query: the mean of its vectors in ``space`` (audio: its windows)."""
        if self.catalog is None or self.indexes is None:
            raise BadInput("item ids need a catalog")
        rows = [(e, c) for e, c in self.catalog.item_embeddings(item_id) if c.startswith(space + ".")]
        if not rows:
            return None
        collection = rows[0][1]
        dim = self.catalog.spaces()[space][1]
        _, vecs = self.indexes.store(collection, dim).lookup(np.array([e for e, _ in rows], dtype=np.int64))
        if not len(vecs):  # its vectors were lost: `mmsearch index` embeds them again
            return None
        return l2_normalise(vecs.mean(axis=0, keepdims=True))[0]
