"""Runs a query: embed -> ANN candidates -> exact rerank -> filters and diversity -> one list ->
page -> hydrate from SQL.

Scores are cosines. When one query searches several collections (no ``to``: images, texts and
sounds together), cosines from different spaces and modalities are not comparable, so each
list is put on one scale first: every candidate's cosine becomes a z-score against the same
query's scores over a fixed random sample of that collection (its background), and the
lists merge by that calibrated score (see docs/search.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from mmsearch.encoders.encoder_set import EncoderSet
from mmsearch.errors import BadInput, ModelMismatch
from mmsearch.search.live import LiveIndexes
from mmsearch.search.query_embedding import QueryEmbedder
from mmsearch.search.request import Hit, Query, SearchResponse, default_target
from mmsearch.search.rerank import exact_rescore, mmr
from mmsearch.search.subsets import Subset, SubsetCache
from mmsearch.settings import Settings
from mmsearch.storage import path_filter
from mmsearch.storage.catalog import Catalog
from mmsearch.storage.vectors import VectorStore

EXACT_SUBSET_MAX = 20_000  # a path filter selecting fewer vectors is searched exactly
MAX_CANDIDATES = 50_000  # per collection and query: bounds the cost of deep pages
BACKGROUND_SAMPLE = 1_000

_Owner = tuple[int, float | None, float | None]  # an embedding's item id, window start and end


@dataclass
class _Candidate:
    item_id: int
    embedding_id: int
    score: float
    rank_score: float
    collection: str
    start: float | None
    end: float | None


@dataclass
class _Clock:
    """Seconds per stage of one query, summed over its collections."""

    ann: float = 0.0
    rerank: float = 0.0


class QueryRunner(QueryEmbedder):
    """Runs queries against one catalog; caches only per-collection background samples. It is
    also the catalog's query embedder, so callers that only embed (Engine.embed) share it."""

    def __init__(self, catalog: Catalog, indexes: LiveIndexes, encoders: EncoderSet, settings: Settings) -> None:
        super().__init__(catalog, indexes, encoders, settings)
        self._background: dict[str, tuple[int, np.ndarray]] = {}
        self._subsets = SubsetCache(catalog, EXACT_SUBSET_MAX)

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
        # inputs are checked before any model loads: a refusal costs milliseconds, not a model load
        image = self.check_inputs(q)
        if q.path:
            path_filter.scans(q.path, self.catalog.roots)  # BadInput for a pattern that cannot match
        if not self.targets(q, set(spaces)):  # BadInput, or nothing of what it asks for is stored
            return SearchResponse(results=[], timings_ms=dict.fromkeys(("embed", "ann", "rerank", "hydrate",
                                                                        "total"), 0.0))
        for space in spaces:
            if not self.needs_model(q, space):
                continue  # stored items only (``similar``): their vectors come from the store
            enc = self.encoders.get(space)  # a first query loads its models: not part of its timings
            if space in recorded and recorded[space][0] != enc.spec:
                raise ModelMismatch(f"the catalog's {space} vectors come from {recorded[space][0]}, not "
                                    f"{enc.spec}: leave out the model option to use the catalog's own (a "
                                    "running server re-embedded since it started needs a restart)")
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        vectors = self.embed_query(q, spaces, image)
        timings["embed"] = _ms(t0)
        targets = self.targets(q, set(vectors))
        exclude = set(q.exclude_ids) | set(q.item_ids)
        clock = _Clock()
        merged: list[_Candidate] = []
        for collection in targets:
            space = collection.split(".")[0]
            qv = vectors[space]
            # the catalog's dim, never the query's: a stale process must not reopen files wrongly
            store = self.indexes.store(collection, recorded.get(space, ("", qv.shape[0]))[1])
            t1 = time.perf_counter()
            allowed = self._subsets.get(collection, q.path, store) if q.path else None  # once per query
            clock.ann += time.perf_counter() - t1
            cands = self._best_items(collection, qv, store, q, allowed, exclude, clock)
            t2 = time.perf_counter()
            if len(targets) > 1:
                mu, sigma = self._calibration(collection, store, qv)
                for c in cands:
                    c.rank_score = (c.score - mu) / sigma
            if q.diversity > 0:  # keep the MMR order through the merge: best ranks go in MMR order
                for c, r in zip(cands, sorted((c.rank_score for c in cands), reverse=True)):
                    c.rank_score = r
            merged += cands
            clock.rerank += time.perf_counter() - t2
        timings["ann"] = clock.ann * 1000
        timings["rerank"] = clock.rerank * 1000
        merged.sort(key=lambda c: -c.rank_score)
        page = merged[q.offset: q.offset + q.k]
        t3 = time.perf_counter()
        rows = self.catalog.items([c.item_id for c in page])  # only the page is hydrated
        hits = [Hit(id=c.item_id, path=r.path, modality=r.modality, score=round(c.score, 6),
                    calibrated=round(c.rank_score, 4) if len(targets) > 1 else None, collection=c.collection,
                    text=r.text, ref_path=r.ref_path, start=c.start, end=c.end, duration=r.duration)
                for c in page if (r := rows.get(c.item_id)) is not None]
        timings["hydrate"] = _ms(t3)
        timings["total"] = _ms(t0)
        return SearchResponse(results=hits, timings_ms={k: round(v, 3) for k, v in timings.items()})

    def _best_items(self, collection: str, qv: np.ndarray, store: VectorStore, q: Query,
                    allowed: Subset | None, exclude: set[int], clock: _Clock) -> list[_Candidate]:
        """The collection's best ``offset + k`` items that pass the filters, best first.

        The pool starts at ``offset + k * rerank_factor`` vectors: a deep page needs the rescoring
        margin of one page, not of every page before it. It deepens while too few items pass
        (audio items hold many windows; exclusions and ``min_score`` drop some), and stops once
        every vector the last pass added scores below ``min_score``: the ones deeper still rank
        lower (exactly so in a flat index)."""
        need = q.offset + q.k
        want = min(q.offset + q.k * self.settings.rerank_factor + len(exclude), MAX_CANDIDATES)
        owners: dict[int, _Owner | None] = {}
        fetched = 0
        while True:
            t1 = time.perf_counter()
            if allowed is not None and allowed.vectors is not None:  # few enough: all of them, exactly
                cand_ids, exhaustive = allowed.ids, True
                t2 = time.perf_counter()
                ids, scores = self._subsets.score(allowed, qv)
            else:
                cand_ids, exhaustive = self._candidates(collection, qv, want, allowed)
                t2 = time.perf_counter()
                ids, scores = exact_rescore(qv, cand_ids, store)
            passing = len(ids) if q.min_score is None else int(np.count_nonzero(scores >= q.min_score))
            below = q.min_score is not None and not np.isin(cand_ids[fetched:], ids[:passing]).any()
            ids, scores = ids[:passing], scores[:passing]  # best first, so a prefix
            if q.diversity > 0 and len(ids):
                ids, scores = mmr(qv, ids, scores, store, min(len(ids), 2 * need), q.diversity)
            cands = self._by_item(collection, ids, scores, exclude, need, owners)
            clock.ann += t2 - t1
            clock.rerank += time.perf_counter() - t2
            if len(cands) >= need or exhaustive or below or want >= MAX_CANDIDATES:
                return cands
            fetched = len(cand_ids)
            want = min(want * 4, MAX_CANDIDATES)

    def _candidates(self, collection: str, qv: np.ndarray, want: int,
                    allowed: Subset | None) -> tuple[np.ndarray, bool]:
        """(ANN candidate ids, whether they are all there is to find); ``allowed``: a path
        filter's selection, too large to score exactly, applied while scanning."""
        idx = self.indexes.index(collection)
        if idx is None or idx.ntotal == 0:
            return np.zeros(0, dtype=np.int64), True
        _, ids = idx.search(qv[None, :].astype(np.float32), min(want, idx.ntotal),
                            allowed_ids=allowed.ids if allowed is not None else None)
        found = ids[0][ids[0] >= 0]
        return found, len(found) < want

    def _by_item(self, collection: str, ids: np.ndarray, scores: np.ndarray, exclude: set[int], need: int,
                 owners: dict[int, _Owner | None]) -> list[_Candidate]:
        """Audio items have one vector per window: an item scores as its best window. Ids arrive
        best first and are mapped to items a slice at a time until ``need`` items are found, so
        SQL work follows the page, not the pool; ``owners`` keeps the mapping across passes."""
        best: dict[int, _Candidate] = {}
        step = need + len(exclude)
        for start in range(0, len(ids), step):
            part = ids[start:start + step].tolist()
            missing = [e for e in part if e not in owners]
            found = self.catalog.embedding_items(missing)
            owners.update({e: found.get(e) for e in missing})  # None: deleted since the index was built
            for eid, score in zip(part, scores[start:start + step].tolist()):
                owner = owners[eid]
                if owner is None or owner[0] in exclude or owner[0] in best:  # ids arrive best first
                    continue
                item_id, window_start, window_end = owner
                best[item_id] = _Candidate(item_id, eid, score, score, collection, window_start, window_end)
            if len(best) >= need:
                break
        return list(best.values())

    def _calibration(self, collection: str, store: VectorStore, qv: np.ndarray) -> tuple[float, float]:
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


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000
