"""Turning a Query into one QueryVector per embedding space it reaches.

Text, image, sound and liked items are summed per space with their weights, negative texts and
disliked items are subtracted, and the sum is normalised (Rocchio), or kept per liked item
(scoring "best"): see scoring.py. The search side sees one QueryVector per space.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel

if TYPE_CHECKING:
    from PIL import Image

    from mmsearch.media.video import VideoInfo

from mmsearch.encoders.base import l2_normalise
from mmsearch.encoders.encoder_set import SPACES, EncoderSet
from mmsearch.errors import BadInput
from mmsearch.search import scoring
from mmsearch.search.live import LiveIndexes
from mmsearch.search.request import Query
from mmsearch.search.scoring import QueryVector
from mmsearch.settings import Settings
from mmsearch.storage.catalog import Catalog

MAX_QUERY_AUDIO_S = 600  # seconds of a query clip (or a query video's frames) that are read
QUERY_FRAME_SIDE = 256  # a query video's frames are scaled to this short side before the model's own prep
AT_SLACK = 0.5  # seconds past an item's last segment that still point at its end (rounded spans)
CHECK_WINDOW_S = 30.0  # window of the decode check (any length works: only the decode matters)


class Embedding(BaseModel):
    space: str
    model: str
    vector: list[float]


class Embeddings(BaseModel):
    """Vectors of several texts, in their order, from one model."""

    space: str
    model: str
    vectors: list[list[float]]

    def array(self) -> np.ndarray:
        return np.asarray(self.vectors, dtype=np.float32).reshape(len(self.vectors), -1)


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
            raise BadInput("embed takes exactly one of text, texts, image or audio")
        if text is not None and not isinstance(text, str):
            raise BadInput("text takes one string (for several, use texts=[...])")
        if image is not None:
            space, vec = "clip", self.embed_image(image)
        elif audio is not None:
            space, vec = "clap", self.embed_audio(audio)
        else:
            space = space or "clip"
            vec = self.embed_text(space, [text or ""])[0]
        return Embedding(space=space, model=self.encoders.get(space).spec, vector=[float(x) for x in vec])

    def embed_texts(self, texts: Sequence[str], space: str | None = None) -> Embeddings:
        """The raw vectors of many texts, ``batch_size`` at a time (bounded memory at any count)."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise BadInput("texts takes a list of strings (for one text, use text=)")
        space = space or "clip"
        step = self.settings.batch_size
        vecs = [self.embed_text(space, list(texts[i:i + step])) for i in range(0, len(texts), step)]
        return Embeddings(space=space, model=self.encoders.get(space).spec,
                          vectors=np.concatenate(vecs).tolist() if vecs else [])

    def check_inputs(self, q: Query) -> Image.Image | None:
        """Decode the query's media, so a bad image or sound is refused before any model loads
        (a model takes seconds; the refusal, milliseconds). Returns the decoded image."""
        for t in q.terms:
            if t.audio is not None:
                self._check_audio(t.audio)
            if t.image is not None:
                self._decode_image(t.image)
        if q.audio is not None:
            self._check_audio(q.audio)
        if q.video is not None:
            self._probe_video(q.video)
        return self._decode_image(q.image) if q.image is not None else None

    @staticmethod
    def needs_model(q: Query, space: str) -> bool:
        """Whether embedding ``q`` in ``space`` runs that space's model (stored items do not)."""
        mods = SPACES[space][0]
        return bool(((q.has_text or q.negative_text) and "text" in mods) or (q.has_image and "image" in mods)
                    or ((q.has_audio or q.video is not None) and "audio" in mods))

    def embed_queries(self, queries: Sequence[Query], spaces: Sequence[Sequence[str]],
                      images: Sequence[Any] | None = None) -> list[dict[str, QueryVector]]:
        """One QueryVector per reachable space of each query (see scoring.py). A batch reads the
        vectors of all its items at once and embeds all its texts in one forward pass per space.
        ``images``: each query's image already decoded (``check_inputs``), or None."""
        used = sorted({s for sp in spaces for s in sp})
        # a query with ``at`` likes one moment of its item: that item's mean is not read for it
        item_ids = sorted({i for q in queries for i in (*(q.item_ids if q.at is None else ()), *q.negative_ids)})
        items = {space: self.item_vectors(item_ids, space) if item_ids else {} for space in used}
        moments = {(i, space): {**items[space], **self.item_vectors(q.item_ids, space, at=q.at)}
                   for i, q in enumerate(queries) if q.at is not None for space in used}
        texts: dict[str, dict[str, np.ndarray]] = {}
        for space in used:
            wanted = sorted({t for q, sp in zip(queries, spaces) if space in sp
                             for t in ([q.text] if q.text else []) + q.negative_text
                             + [term.text for term in q.terms if term.text]})
            texts[space] = dict(zip(wanted, self.embed_text(space, wanted))) if wanted else {}
        decoded = list(images) if images is not None else [None] * len(queries)
        return [{space: qv for space in sp
                 if (qv := self._space_query(q, space, moments.get((i, space), items[space]), texts[space],
                                             image))}
                for i, (q, sp, image) in enumerate(zip(queries, spaces, decoded))]

    def _space_query(self, q: Query, space: str, items: dict[int, np.ndarray],
                     texts: dict[str, np.ndarray], image: Image.Image | None = None) -> QueryVector | None:
        """The query in one space: its text, image and sound summed with their weights, its
        liked and disliked items, its negative texts (see scoring.build)."""
        mods = SPACES[space][0]
        parts: list[np.ndarray] = []
        if q.text and "text" in mods:
            parts.append(q.text_weight * texts[q.text])
        if q.image is not None and "image" in mods:
            parts.append(q.image_weight * self.embed_image(image if image is not None else q.image))
        if q.audio is not None and "audio" in mods:
            parts.append(q.audio_weight * self.embed_audio(q.audio))
        if q.video is not None and "image" in mods:
            parts.append(self.embed_video_frames(q.video))
        if q.video is not None and "audio" in mods and self._probe_video(q.video).has_audio:
            parts.append(self.embed_audio(q.video, "query video: its sound track"))  # as a sound clip is
        for t in q.terms:  # weighted parts; a negative weight subtracts
            if t.text and "text" in mods:
                parts.append(t.weight * texts[t.text])
            elif t.image is not None and "image" in mods:
                parts.append(t.weight * self.embed_image(t.image))
            elif t.audio is not None and "audio" in mods:
                parts.append(t.weight * self.embed_audio(t.audio))
        likes = [(items[i], q.item_weights.get(i, 1.0)) for i in q.item_ids if i in items]
        dislikes = [(items[i], q.item_weights.get(i, 1.0)) for i in q.negative_ids if i in items]
        negatives = [texts[t] for t in q.negative_text] if "text" in mods else []
        return scoring.build(q.scoring, np.sum(parts, axis=0) if parts else None, likes, dislikes, negatives,
                             q.negative_weight)

    def embed_text(self, space: str, texts: list[str]) -> np.ndarray:
        enc = self.encoders.get(space)
        return enc.encode("text", [enc.prepare("text", t) for t in texts])

    def _decode_image(self, data: bytes) -> Image.Image:
        from mmsearch.media.decode import DecodeError, load_image
        from mmsearch.media.notes import FileNotes

        try:
            with FileNotes():  # what the decoder says about a query's picture stays off the terminal and log
                return load_image(io.BytesIO(data), self.settings.max_image_pixels)
        except DecodeError as e:
            raise BadInput(f"query image: {e}") from e

    def embed_image(self, data: bytes | Image.Image) -> np.ndarray:
        img = self._decode_image(data) if isinstance(data, bytes) else data  # before the model loads
        enc = self.encoders.get("clip")
        return enc.encode("image", [enc.prepare("image", img)])[0]

    @staticmethod
    def _check_audio(data: bytes, label: str = "query audio") -> None:
        """Decode at the file's own rate: the model's rate is not known before the model loads,
        and a query clip is short enough to decode twice."""
        from mmsearch.media.audio import AudioDecodeError, audio_rate, iter_windows

        try:
            for _ in iter_windows(io.BytesIO(data), audio_rate(io.BytesIO(data)), CHECK_WINDOW_S,
                                  max_seconds=MAX_QUERY_AUDIO_S):
                pass
        except AudioDecodeError as e:
            raise BadInput(f"{label}: {e}") from e

    def _probe_video(self, data: bytes) -> VideoInfo:
        from mmsearch.media.video import VideoDecodeError, probe

        try:
            info = probe(io.BytesIO(data))
        except VideoDecodeError as e:
            raise BadInput(f"query video: {e}") from e
        if not info.has_video:
            raise BadInput("query video: no video stream in the file (a sound goes in audio)")
        return info

    def embed_video_frames(self, data: bytes) -> np.ndarray:
        """A query video's frames, sampled as an indexed video's are (one per shot, at least one
        every ``video_interval`` seconds, up to MAX_QUERY_AUDIO_S in), embedded and averaged."""
        from mmsearch.media.video import VideoDecodeError, iter_frames

        enc = self.encoders.get("clip")
        try:
            frames = [f.image for f in iter_frames(io.BytesIO(data), self.settings.video_interval, QUERY_FRAME_SIDE,
                                                   until=float(MAX_QUERY_AUDIO_S))]
        except VideoDecodeError as e:
            raise BadInput(f"query video: {e}") from e
        vecs = enc.encode("image", [enc.prepare("image", f) for f in frames])
        return l2_normalise(vecs.mean(axis=0, keepdims=True))[0]

    def embed_audio(self, data: bytes, label: str = "query audio") -> np.ndarray:
        """A query clip longer than one window is the mean of its windows."""
        from mmsearch.media.audio import AudioDecodeError, iter_windows

        self._check_audio(data, label)
        enc = self.encoders.get("clap")
        try:
            windows = list(iter_windows(io.BytesIO(data), enc.sample_rate, enc.window_seconds,  # type: ignore[attr-defined]
                                        max_seconds=MAX_QUERY_AUDIO_S))
        except AudioDecodeError as e:
            raise BadInput(f"{label}: {e}") from e
        vecs = enc.encode("audio", [enc.prepare("audio", w.samples) for w in windows])
        return l2_normalise(vecs.mean(axis=0, keepdims=True))[0]

    def item_vectors(self, item_ids: Sequence[int], space: str, at: float | None = None) -> dict[int, np.ndarray]:
        """Stored items as queries: the unit mean of each item's vectors in ``space`` (audio: its
        windows), read in one pass. Items with no vector there (or whose vectors were lost: the
        next ``mmsearch index`` embeds them again) are left out. ``at``: of an item's segments
        (video frames, sound windows), only the one at that moment (see ``at_moment``)."""
        if self.catalog is None or self.indexes is None:
            raise BadInput("item ids need a catalog")
        every = self.catalog.embeddings_of(item_ids)
        rows = [r for r in every if r[2].startswith(space + ".")]
        if at is not None:
            spans = [r for r in every if r[3] is not None]  # in every space: a video's picture and track
            if rows and not spans:
                raise BadInput(f"at: item {rows[0][1]} has no moments (a photo or a text): leave out at")
            for item in {r[1] for r in spans}:
                end = max((r[4] or r[3] or 0.0) for r in spans if r[1] == item)
                if at > end + AT_SLACK:
                    raise BadInput(f"at: item {item} ends at {end:.1f} s, so {at:g} s is past its end")
            rows = at_moment(rows, at)
        if not rows:
            return {}
        dim = self.catalog.spaces()[space][1]
        out: dict[int, np.ndarray] = {}
        for collection in sorted({r[2] for r in rows}):
            eids = np.array([r[0] for r in rows if r[2] == collection], dtype=np.int64)
            owners = np.array([r[1] for r in rows if r[2] == collection], dtype=np.int64)
            found, vecs = self.indexes.store(collection, dim).lookup(eids)
            order = np.argsort(owners[found], kind="stable")
            uniq, starts = np.unique(owners[found][order], return_index=True)
            if uniq.size == order.size:  # one vector per item (photos, texts): nothing to sum
                sums = vecs[order]
            else:  # an item's windows summed (reduceat along rows is slow: only where needed)
                sums = np.add.reduceat(vecs[order], starts) if uniq.size else vecs[:0]
            out.update(zip(uniq.tolist(), l2_normalise(sums)))
        return out

    def item_vector(self, item_id: int, space: str) -> np.ndarray | None:
        """One stored item as a query (see ``item_vectors``)."""
        return self.item_vectors([item_id], space).get(item_id)


def at_moment(rows: list[tuple[int, int, str, float | None, float | None]], at: float
              ) -> list[tuple[int, int, str, float | None, float | None]]:
    """Of each item's and collection's segments (embedding id, item, collection, start, end), the
    one whose span holds ``at`` (else the nearest, up to AT_SLACK away: a video's sound track that
    ends or starts apart from its picture has no moment there); vectors without a span (a photo,
    a text) are kept as they are."""
    best: dict[tuple[int, str], tuple[float, tuple[int, int, str, float | None, float | None]]] = {}
    whole = []
    for r in rows:
        start, end = r[3], r[4]
        if start is None:
            whole.append(r)
            continue
        end = start if end is None else end
        miss = -1.0 if start <= at < end or at == start else max(start - at, at - end)  # holds it: first
        key = (r[1], r[2])
        if key not in best or miss < best[key][0]:
            best[key] = (miss, r)
    return sorted(whole + [r for miss, r in best.values() if miss <= AT_SLACK])
