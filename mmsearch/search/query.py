"""query -> embed -> ANN -> exact rerank -> filters and diversity -> hydrate from SQL.

Scores are cosines. When one query searches several collections (no ``to``: images, texts and
sounds together), cosines from different spaces and modalities are not comparable, so each
list is put on one scale first: every candidate's cosine becomes a z-score against the same
query's scores over a fixed random sample of that collection (its background), and the
lists merge by that calibrated score (see docs/search.md).
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from pydantic import AfterValidator, BaseModel, Field

from mmsearch.encoders.base import l2_normalise
from mmsearch.encoders.encoder_set import EncoderSet
from mmsearch.errors import BadInput, ModelMismatch
from mmsearch.search.live import LiveIndexes
from mmsearch.search.rerank import exact_rescore, mmr
from mmsearch.settings import Settings
from mmsearch.storage.catalog import Catalog

Target = Literal["image", "text", "audio", "all"]
EXACT_SUBSET_MAX = 20_000  # a path filter selecting fewer vectors is searched exactly
MAX_CANDIDATES = 50_000  # per collection and query: bounds the cost of deep pages
BACKGROUND_SAMPLE = 1_000


def clean_text(value: str | None) -> str | None:
    """NUL bytes and lone surrogates (undecodable bytes from a shell) cannot be stored, tokenised
    or matched: every face refuses them through this one check."""
    if value is None:
        return value
    if "\x00" in value:
        raise ValueError("text must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid UTF-8 (no lone surrogates)") from None
    return value


CleanText = Annotated[str, AfterValidator(clean_text)]


class Query(BaseModel):
    """What to look for and where. Positive parts are summed per space, negatives subtracted."""

    text: CleanText | None = Field(None, description="Text query.")
    image: bytes | None = Field(None, description="Image file content.", exclude=True)
    audio: bytes | None = Field(None, description="Audio file content.", exclude=True)
    item_ids: list[int] = Field(default_factory=list, description="Items whose vectors are the query.")
    negative_text: list[CleanText] = Field(default_factory=list, description="Texts to steer away from.")
    text_weight: float = 1.0
    image_weight: float = 1.0
    audio_weight: float = 1.0
    negative_weight: float = 0.5
    to: Target | None = Field(None, description="Modality to return. Default: all media for a text "
                              "query (one calibrated list), the query's own modality for an image or sound.")
    k: int = Field(10, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=10_000)
    path: CleanText | None = Field(None, description="Only files under this prefix or matching this glob.")
    min_score: float | None = Field(None, ge=-1.0, le=1.0)
    diversity: float = Field(0.0, ge=0.0, le=1.0, description="0: pure relevance; >0: MMR diversity.")
    exclude_ids: list[int] = Field(default_factory=list, description="Items never returned.")


class Hit(BaseModel):
    id: int
    path: str
    modality: str
    score: float = Field(description="Cosine similarity in the result's embedding space.")
    calibrated: float | None = Field(None, description="Score on the cross-collection scale, when merged.")
    collection: str
    text: str | None = None
    ref_path: str | None = Field(None, description="For captions: the media file they describe.")
    start: float | None = Field(None, description="Audio: where the best-matching window starts (s).")
    end: float | None = None
    duration: float | None = None


class SearchResponse(BaseModel):
    results: list[Hit]
    timings_ms: dict[str, float]


@dataclass
class _Candidate:
    item_id: int
    embedding_id: int
    score: float
    rank_score: float
    collection: str
    start: float | None
    end: float | None


class QueryRunner:
    """Runs queries against one catalog; caches only per-collection background samples."""

    def __init__(self, catalog: Catalog, indexes: LiveIndexes, encoders: EncoderSet, settings: Settings) -> None:
        self.catalog, self.indexes, self.encoders, self.settings = catalog, indexes, encoders, settings
        self._background: dict[str, tuple[int, np.ndarray]] = {}

    # -- embedding ------------------------------------------------------------------------------

    def embed_query(self, q: Query, spaces: Sequence[str]) -> dict[str, np.ndarray]:
        """One unit vector per reachable space."""
        out: dict[str, np.ndarray] = {}
        for space in spaces:
            parts: list[np.ndarray] = []
            mods = set(self._space_modalities(space))
            if q.text and "text" in mods:
                parts.append(q.text_weight * self.embed_text(space, [q.text])[0])
            if q.image is not None and "image" in mods:
                parts.append(q.image_weight * self.embed_image(q.image))
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

    def _space_modalities(self, space: str) -> tuple[str, ...]:
        from mmsearch.encoders.encoder_set import SPACES

        return SPACES[space][0]

    def embed_text(self, space: str, texts: list[str]) -> np.ndarray:
        enc = self.encoders.get(space)
        return enc.encode("text", [enc.prepare("text", t) for t in texts])

    def embed_image(self, data: bytes) -> np.ndarray:
        from mmsearch.media.decode import DecodeError, load_image

        enc = self.encoders.get("clip")
        try:
            img = load_image(io.BytesIO(data), self.settings.max_image_pixels)
        except DecodeError as e:
            raise BadInput(f"query image: {e}") from e
        return enc.encode("image", [enc.prepare("image", img)])[0]

    def embed_audio(self, data: bytes) -> np.ndarray:
        """A query clip longer than one window is the mean of its windows."""
        from mmsearch.media.audio import AudioDecodeError, iter_windows

        enc = self.encoders.get("clap")
        try:
            windows = list(iter_windows(io.BytesIO(data), enc.sample_rate, enc.window_seconds,  # type: ignore[attr-defined]
                                        max_seconds=600))
        except AudioDecodeError as e:
            raise BadInput(f"query audio: {e}") from e
        vecs = enc.encode("audio", [enc.prepare("audio", w.samples) for w in windows])
        return l2_normalise(vecs.mean(axis=0, keepdims=True))[0]

    def item_vector(self, item_id: int, space: str) -> np.ndarray | None:
        rows = [(e, c) for e, c in self.catalog.item_embeddings(item_id) if c.startswith(space + ".")]
        if not rows:
            return None
        collection = rows[0][1]
        dim = self.catalog.spaces()[space][1]
        vecs = self.indexes.store(collection, dim).get(np.array([e for e, _ in rows], dtype=np.int64))
        return l2_normalise(vecs.mean(axis=0, keepdims=True))[0]

    # -- search ---------------------------------------------------------------------------------

    def targets(self, q: Query, query_spaces: set[str]) -> list[str]:
        """Collections to search: the modality asked for, in a space the query can reach."""
        existing = set(self.indexes.stored_collections())
        mods = ["image", "text", "audio"] if default_target(q) == "all" else [default_target(q)]
        out = []
        for m in mods:
            if m == "text":
                # one text collection: the space of the query's own media (CLIP unless it is audio)
                space = "clip" if "clip" in query_spaces and q.audio is None else "clap"
                cands = [f"{space}.text"] if space in query_spaces else []
            else:
                cands = [f"{s}.{m}" for s in query_spaces if f"{s}.{m}" in {"clip.image", "clap.audio"}]
            out += [c for c in cands if c in existing]
        to = default_target(q)
        if not out and to != "all":
            if not any(f.endswith("." + to) for f in existing):
                return []
            raise BadInput(f"this query cannot search {to}: its media and {to} live in different "
                           "embedding spaces (images: CLIP, sounds: CLAP); add a text query")
        return out

    def query_spaces(self, q: Query, recorded: dict[str, tuple[str, int]]) -> list[str]:
        if not (q.text or q.image is not None or q.audio is not None or q.item_ids):
            raise BadInput("empty query: give text, an image, an audio clip or item ids")
        spaces = []
        if q.text or q.image is not None or q.item_ids:
            spaces.append("clip")
        if (q.text or q.audio is not None or q.item_ids) and self.encoders.enabled("clap"):
            if q.audio is not None or q.item_ids or "clap" in recorded:
                spaces.append("clap")
        to = default_target(q)
        if to == "image" or (to == "text" and q.audio is None and q.text):
            spaces = [s for s in spaces if s == "clip"] or spaces
        if to == "audio":
            spaces = [s for s in spaces if s == "clap"] or spaces
        return spaces

    def run(self, q: Query) -> SearchResponse:
        recorded = self.catalog.spaces()
        spaces = self.query_spaces(q, recorded)
        for space in spaces:
            enc = self.encoders.get(space)  # a first query loads its models: not part of its timings
            if space in recorded and recorded[space][0] != enc.spec:
                raise ModelMismatch(f"the catalog's {space} vectors come from {recorded[space][0]}, not "
                                    f"{enc.spec}: leave out the model option to use the catalog's own (a "
                                    "running server re-embedded since it started needs a restart)")
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        vectors = self.embed_query(q, spaces)
        timings["embed"] = _ms(t0)
        targets = self.targets(q, set(vectors))
        need = q.offset + q.k
        exclude = set(q.exclude_ids) | set(q.item_ids)
        merged: list[_Candidate] = []
        t_ann = t_rerank = 0.0
        for collection in targets:
            space = collection.split(".")[0]
            qv = vectors[space]
            # the catalog's dim, never the query's: a stale process must not reopen files wrongly
            store = self.indexes.store(collection, recorded.get(space, ("", qv.shape[0]))[1])
            want = min(need * self.settings.rerank_factor + len(exclude), MAX_CANDIDATES)
            t1 = time.perf_counter()
            allowed = self.catalog.ids_under(collection, q.path) if q.path else None  # once per query
            t_ann += time.perf_counter() - t1
            while True:
                t1 = time.perf_counter()
                cand_ids, exhaustive = self._candidates(collection, qv, want, allowed)
                t_ann += time.perf_counter() - t1
                t2 = time.perf_counter()
                ids, scores = exact_rescore(qv, cand_ids, store)
                if q.diversity > 0 and len(ids):
                    ids, scores = mmr(qv, ids, scores, store, min(len(ids), 2 * need), q.diversity)
                cands = self._by_item(collection, ids, scores, exclude, q.min_score)
                t_rerank += time.perf_counter() - t2
                # audio items hold many windows: fetch deeper until enough items or nothing more
                if len(cands) >= need or exhaustive or want >= MAX_CANDIDATES:
                    break
                want = min(want * 4, MAX_CANDIDATES)
            t2 = time.perf_counter()
            if len(targets) > 1:
                mu, sigma = self._calibration(collection, store, qv)
                for c in cands:
                    c.rank_score = (c.score - mu) / sigma
            if q.diversity > 0:  # keep the MMR order through the merge: best ranks go in MMR order
                for c, r in zip(cands, sorted((c.rank_score for c in cands), reverse=True)):
                    c.rank_score = r
            merged += cands
            t_rerank += time.perf_counter() - t2
        timings["ann"] = t_ann * 1000
        timings["rerank"] = t_rerank * 1000
        merged.sort(key=lambda c: -c.rank_score)
        page = merged[q.offset: q.offset + q.k]
        t3 = time.perf_counter()
        rows = self.catalog.items([c.item_id for c in page])
        hits = [Hit(id=c.item_id, path=r.path, modality=r.modality, score=round(c.score, 6),
                    calibrated=round(c.rank_score, 4) if len(targets) > 1 else None, collection=c.collection,
                    text=r.text, ref_path=r.ref_path, start=c.start, end=c.end, duration=r.duration)
                for c in page if (r := rows.get(c.item_id)) is not None]
        timings["hydrate"] = _ms(t3)
        timings["total"] = _ms(t0)
        return SearchResponse(results=hits, timings_ms={k: round(v, 3) for k, v in timings.items()})

    def _candidates(self, collection: str, qv: np.ndarray, want: int,
                    allowed: np.ndarray | None) -> tuple[np.ndarray, bool]:
        """(candidate ids, whether they are all there is to find); ``allowed``: a path filter's ids."""
        if allowed is not None and len(allowed) <= EXACT_SUBSET_MAX:
            return allowed, True  # exact_rescore scores them all
        idx = self.indexes.index(collection)
        if idx is None or idx.ntotal == 0:
            return np.zeros(0, dtype=np.int64), True
        _, ids = idx.search(qv[None, :].astype(np.float32), min(want, idx.ntotal), allowed_ids=allowed)
        found = ids[0][ids[0] >= 0]
        return found, len(found) < want

    def _by_item(self, collection: str, ids: np.ndarray, scores: np.ndarray, exclude: set[int],
                 min_score: float | None) -> list[_Candidate]:
        """Audio items have one vector per window: an item scores as its best window."""
        owners = self.catalog.embedding_items(ids.tolist())
        best: dict[int, _Candidate] = {}
        for eid, score in zip(ids.tolist(), scores.tolist()):
            owner = owners.get(eid)
            if owner is None:
                continue  # deleted since the index was built
            item_id, start, end = owner
            if item_id in exclude or (min_score is not None and score < min_score):
                continue
            if item_id not in best:  # ids arrive best first
                best[item_id] = _Candidate(item_id, eid, score, score, collection, start, end)
        return list(best.values())

    def _calibration(self, collection: str, store, qv: np.ndarray) -> tuple[float, float]:  # type: ignore[no-untyped-def]
        """Mean and spread of the query's cosines to a fixed sample of the collection's live vectors."""
        idx = self.indexes.index(collection)
        live = np.asarray(idx.ids() if idx is not None else store.ids())
        cached = self._background.get(collection)
        if cached is None or cached[0] != len(live):
            rng = np.random.default_rng(0)
            pick = np.sort(rng.choice(live, size=min(BACKGROUND_SAMPLE, len(live)), replace=False))
            _, vectors = store.lookup(pick)
            cached = self._background[collection] = (len(live), vectors)  # one per collection
        s = cached[1] @ qv
        return float(s.mean()), float(max(s.std(), 1e-6))


def default_target(q: Query) -> str:
    """Without ``to``, a text query searches all media and a media query its own modality."""
    if q.to is not None:
        return q.to
    if q.text:
        return "all"
    if q.image is not None:
        return "image"
    if q.audio is not None:
        return "audio"
    return "all"


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000
