"""Runs queries: embed -> ANN candidates -> exact rerank -> filters and diversity -> one list ->
page -> hydrate from SQL. Queries run as a batch (a single query is a batch of one): one ANN
search per collection serves every query of the batch (a profile's recommendations, a page of
"more like this"), and each query then takes its own path through rescoring, filters and paging.

Scores are cosines. When one query searches several collections (no ``to``: images, texts and
sounds together), cosines from different spaces and modalities are not comparable, so each
list is put on one scale first: every candidate's cosine becomes a z-score against the same
query's scores over a fixed random sample of that collection (its background), and the
lists merge by that calibrated score (see docs/search.md).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any
from dataclasses import dataclass, field

import numpy as np

from mmsearch.cpus import intra_op_threads
from mmsearch.encoders.encoder_set import EncoderSet
from mmsearch.errors import BadInput, MMSearchError, ModelMismatch
from mmsearch.gc_pause import gc_paused
from mmsearch.search.live import LiveIndex, LiveIndexes
from mmsearch.search.query_embedding import QueryEmbedder
from mmsearch.search.request import Hit, Metadata, Query, SearchResponse, TotalRelation, default_target
from mmsearch.search.rerank import dot_rows, exact_rescore, exact_rescore_many, mmr
from mmsearch.search.scoring import QueryVector
from mmsearch.search.subsets import Subset, SubsetCache
from mmsearch.search.totals import TotalCache
from mmsearch.settings import Settings
from mmsearch.storage import path_filter
from mmsearch.storage.catalog import Catalog
from mmsearch.storage.filters import NO_FILTER, Filter
from mmsearch.storage.vectors import VectorStore

EXACT_SUBSET_MAX = 20_000  # a filter selecting fewer vectors is searched exactly
BROAD_SHARE = 0.05  # a filter matching more than this share of a collection (and EXACT_SUBSET_MAX) is broad
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


@dataclass(frozen=True)
class _Pass:
    """One round of candidates: what the ANN search (or a filter) gave, and it rescored."""

    candidates: np.ndarray  # ids searched, in ANN order
    exhaustive: bool  # nothing more to find
    ids: np.ndarray  # rescored, best first
    scores: np.ndarray


@dataclass(eq=False)
class _Part:
    """One query's search of one collection."""

    query: int  # its place in the batch
    collection: str
    qv: QueryVector
    store: VectorStore
    allowed: Subset | None  # a filter's selection (path, metadata, tags); broad: checked on candidates
    exclude: set[int]
    calibrate: bool  # one of several lists merged by calibrated score
    want: int  # candidates of the first ANN pass
    clock: _Clock = field(default_factory=_Clock)

    @property
    def after(self) -> Filter:
        """A broad filter, checked on the candidates as their owners are read (else NO_FILTER)."""
        return self.allowed.filter if self.allowed is not None and self.allowed.broad else NO_FILTER


class QueryRunner(QueryEmbedder):
    """Runs queries against one catalog; caches only per-collection background samples. It is
    also the catalog's query embedder, so callers that only embed (Engine.embed) share it."""

    def __init__(self, catalog: Catalog, indexes: LiveIndexes, encoders: EncoderSet, settings: Settings) -> None:
        super().__init__(catalog, indexes, encoders, settings)
        self._background: dict[str, tuple[int, np.ndarray]] = {}
        self._subsets = SubsetCache(catalog, EXACT_SUBSET_MAX)
        self._totals = TotalCache(catalog)

    def targets(self, q: Query, query_spaces: set[str], existing: set[str] | None = None) -> list[str]:
        """Collections to search: the modality asked for, in a space the query can reach."""
        existing = set(self.indexes.stored_collections()) if existing is None else existing
        mods = ["image", "text", "audio", "video"] if default_target(q) == "all" else [default_target(q)]
        if q.to is None and mods[0] in ("image", "audio"):
            mods.append("video")  # a picture or a sound is also looked for in videos (frames, sound tracks)
        out = []
        for m in mods:
            if m == "video":  # frames in CLIP's space, the sound track in CLAP's
                cands = [f"{s}.video" for s in sorted(query_spaces)]
            elif m == "text":
                # one text collection: the space of the query's own media (CLIP unless it is audio)
                space = "clip" if "clip" in query_spaces and not q.has_audio else "clap"
                cands = [f"{space}.text"] if space in query_spaces else []
            else:
                cands = [f"{s}.{m}" for s in query_spaces if f"{s}.{m}" in {"clip.image", "clap.audio"}]
            out += [c for c in cands if c in existing]
        to = default_target(q)
        if not out and to != "all":
            if not any(f.endswith("." + to) for f in existing):
                return []
            if q.item_ids and not (q.has_text or q.has_image or q.has_audio):
                if q.at is not None:
                    raise BadInput(f"at: these items have no moment at {q.at:g} s in the space {to} is embedded "
                                   "in (a video's sound track may stop before its picture, or start after it)")
                raise BadInput(f"these items cannot find {to}: they have no vectors in the space {to} is "
                               "embedded in (a silent video has no sound track, a photo or a caption only "
                               "CLIP's vectors, a sound only CLAP's)")
            raise BadInput(f"this query cannot search {to}: its media and {to} live in different "
                           "embedding spaces (images: CLIP, sounds: CLAP); add a text query")
        return out

    def query_spaces(self, q: Query, recorded: dict[str, tuple[str, int]]) -> list[str]:
        if not (q.has_text or q.has_image or q.has_audio or q.item_ids):
            raise BadInput("empty query: give text, an image, an audio clip or (liked) item ids")
        spaces = []
        if q.has_text or q.has_image or q.item_ids:
            spaces.append("clip")
        if (q.has_text or q.has_audio or q.video is not None or q.item_ids) and self.encoders.enabled("clap"):
            if q.has_audio or q.item_ids or "clap" in recorded:  # a video's track only where sounds are
                spaces.append("clap")
        to = default_target(q)
        if to == "image" or (to == "text" and not q.has_audio and q.has_text):
            spaces = [s for s in spaces if s == "clip"] or spaces
        if to == "audio":
            spaces = [s for s in spaces if s == "clap"] or spaces
        return spaces

    def check_models(self, spaces: Sequence[str], recorded: dict[str, tuple[str, int]]) -> None:
        for space in spaces:
            enc = self.encoders.get(space)  # a first query loads its models: not part of its timings
            if space in recorded and recorded[space][0] != enc.spec:
                raise ModelMismatch(f"the catalog's {space} vectors come from {recorded[space][0]}, not "
                                    f"{enc.spec}: leave out --model (or --audio-model) to use the catalog's own (a "
                                    "running server re-embedded since it started needs a restart)")

    def run(self, q: Query) -> SearchResponse:
        answer = self.run_batch([q])[0]
        if isinstance(answer, MMSearchError):
            raise answer
        return answer

    def run_batch(self, queries: Sequence[Query], count: bool = True) -> list[SearchResponse | MMSearchError]:
        """Answer many queries as one: their items read and their texts embedded together, one ANN
        search per collection for all of them (a FAISS batch: one pass over the lists, all cores),
        then each query's own exact rescoring, filters and page, and one SQL read for every page.
        A single query is a batch of one. A query that cannot run (an unknown modality, a model
        mismatch) gets its error in its place; the others are answered.

        In a batch, ``embed`` and the shared ANN search are the whole batch's, reported in each
        response's timings. The garbage collector waits for the end of the batch (gc_pause.py).
        ``count``: give each page its total (search/totals.py); profiles answered in bulk are
        not pages a user scrolls, and go without (``total`` None)."""
        with gc_paused():
            return self._run_batch(queries, count)

    def _run_batch(self, queries: Sequence[Query], count: bool = True) -> list[SearchResponse | MMSearchError]:
        recorded = self.catalog.spaces()
        existing = set(self.indexes.stored_collections())
        answers: list[SearchResponse | MMSearchError | None] = [None] * len(queries)
        spaces: list[list[str]] = []
        images: list[Any] = [None] * len(queries)
        for i, q in enumerate(queries):
            try:
                reach = self.query_spaces(q, recorded)
                # inputs are checked before any model loads: a refusal costs milliseconds, not a load
                images[i] = self.check_inputs(q)
                _refuse_absent_sounds(q, existing, self.encoders)
                if q.path:
                    path_filter.scans(q.path, self.catalog.roots)  # BadInput for a pattern that cannot match
                if not self.targets(q, set(reach), existing):  # nothing it asks for is stored: no model
                    answers[i], reach = SearchResponse(results=[], timings_ms=dict.fromkeys(
                        ("embed", "ann", "rerank", "hydrate", "count", "total"), 0.0), total=0,
                        total_relation="eq"), []
                # stored items only (``similar``, ``recommend``): their vectors come from the store
                self.check_models([s for s in reach if self.needs_model(q, s)], recorded)
            except MMSearchError as e:
                answers[i], reach = e, []
            spaces.append(reach)
        t0 = time.perf_counter()
        vectors = self.embed_queries(queries, spaces, images)
        embed_ms = _ms(t0)
        parts: list[_Part] = []
        ranked: dict[int, tuple[list[str], Filter, set[int]]] = {}  # what each query ranks: its total
        for i, q in enumerate(queries):
            if answers[i] is not None:
                continue
            try:
                targets = self.targets(q, set(vectors[i]), existing)
            except MMSearchError as e:
                answers[i] = e
                continue
            exclude = set(q.exclude_ids) | set(q.item_ids) | set(q.negative_ids)
            where = q.filter()
            ranked[i] = (targets, where, exclude)
            for collection in targets:
                space = collection.split(".")[0]
                qv = vectors[i][space]
                # the catalog's dim, never the query's: a stale process must not reopen files wrongly
                store = self.indexes.store(collection, recorded.get(space, ("", qv.dim))[1])
                t1 = time.perf_counter()
                allowed = self._subsets.get(collection, where, store, _broad_cap(len(store))) if where else None
                part = _Part(i, collection, qv, store, allowed, exclude, len(targets) > 1,
                             min(q.offset + q.k * self.settings.rerank_factor + len(exclude), MAX_CANDIDATES))
                part.clock.ann += time.perf_counter() - t1
                parts.append(part)
        # a broad filter does not narrow the ANN search: its parts share it, and check their candidates
        first, shared_ann = self._first_passes([p for p in parts if p.allowed is None or p.allowed.broad])
        owners: dict[int, _Owner | None] = {}  # embedding id -> owner, shared by the unfiltered queries
        heads = [done.ids[:_first_slice(_need(queries[part.query]), part.exclude)]
                 for part, done in first.items() if not part.after]
        # the likely pages' owners in one read, not one per query
        self._owners(np.unique(np.concatenate(heads)).tolist() if heads else [], owners)
        merged: dict[int, list[_Candidate]] = {i: [] for i, a in enumerate(answers) if a is None}
        for part in parts:
            q = queries[part.query]
            # a broad filter maps ids to owners through itself (None: filtered out): its own mapping
            cands, cut_short = self._best_items(part, q, owners if not part.after else {}, first.get(part))
            if part.after and cut_short:
                # a broad filter whose matches the candidates missed (two broad conditions that
                # rarely meet): fetch its whole selection after all
                t2 = time.perf_counter()
                assert part.allowed is not None
                part.allowed = self._subsets.get(part.collection, part.allowed.filter, part.store, None)
                part.clock.ann += time.perf_counter() - t2
                cands, _ = self._best_items(part, q, owners, None)
            t3 = time.perf_counter()
            if part.calibrate:
                mu, sigma = self._calibration(part.collection, part.store, part.qv)
                for c in cands:
                    c.rank_score = (c.score - mu) / sigma
            if q.diversity > 0:  # keep the MMR order through the merge: best ranks go in MMR order
                for c, r in zip(cands, sorted((c.rank_score for c in cands), reverse=True)):
                    c.rank_score = r
            merged[part.query] += cands
            part.clock.rerank += time.perf_counter() - t3
        pages, more = {}, {}
        for i, cands in merged.items():
            cands.sort(key=lambda c: -c.rank_score)
            seen: set[int] = set()  # a video is in two lists (frames, sound track): its best place counts
            cands[:] = [c for c in cands if not (c.item_id in seen or seen.add(c.item_id))]  # type: ignore[func-returns-value]
            pages[i] = cands[queries[i].offset: queries[i].offset + queries[i].k]
            more[i] = len(cands) > queries[i].offset + queries[i].k
        t4 = time.perf_counter()
        rows = self.catalog.items(sorted({c.item_id for page in pages.values() for c in page}))  # only pages
        hydrate_ms = _ms(t4)
        t5 = time.perf_counter()
        totals = {i: self._totals.count(*ranked[i]) for i in pages} if count else {}
        count_ms = _ms(t5)
        by_query: dict[int, list[_Part]] = {}
        for part in parts:
            by_query.setdefault(part.query, []).append(part)
        for i, page in pages.items():
            mine = by_query.get(i, [])
            merged_list = len(mine) > 1  # ranked by the calibrated score: that is the score shown
            hits = [Hit(id=c.item_id, path=r.path, modality=r.modality,
                        score=round(c.rank_score, 4) if merged_list else round(c.score, 6), cosine=round(c.score, 6),
                        calibrated=round(c.rank_score, 4) if merged_list else None, collection=c.collection,
                        text=r.text, ref_path=r.ref_path, start=c.start, end=c.end, duration=r.duration,
                        **Metadata.of(r))
                    for c in page if (r := rows.get(c.item_id)) is not None]
            timings = {"embed": embed_ms, "ann": (shared_ann + sum(p.clock.ann for p in mine)) * 1000,
                       "rerank": sum(p.clock.rerank for p in mine) * 1000, "hydrate": hydrate_ms,
                       "count": count_ms, "total": _ms(t0)}
            total, relation = _total(queries[i], totals[i], len(hits), more[i]) if i in totals else (None, None)
            answers[i] = SearchResponse(results=hits, timings_ms={k: round(v, 3) for k, v in timings.items()},
                                        has_more=more[i], total=total, total_relation=relation)
        return [a for a in answers if a is not None]

    def _first_passes(self, parts: list[_Part]) -> tuple[dict[_Part, _Pass], float]:
        """The first pass of every part without a narrowing filter (none, or a broad one): one ANN search per collection for
        all of them (each part takes its own depth from the deepest one's rows), then each
        part's exact rescoring. Also the seconds the shared searches took."""
        out: dict[_Part, _Pass] = {}
        searching = 0.0
        for collection in sorted({p.collection for p in parts}):
            group = [p for p in parts if p.collection == collection]
            t = time.perf_counter()
            found = self._search(self.indexes.index(collection), [p.qv.probes for p in group],
                                 [p.want for p in group])
            searching += time.perf_counter() - t
            for store in {id(p.store): p.store for p in group}.values():  # one per collection, in practice
                mine = [(p, f) for p, f in zip(group, found) if p.store is store]
                t = time.perf_counter()
                rescored = exact_rescore_many([p.qv for p, _ in mine], [f[0] for _, f in mine], store,
                                               threads=intra_op_threads(self.settings))
                each = (time.perf_counter() - t) / len(mine)
                for (part, (cand_ids, exhaustive)), (ids, scores) in zip(mine, rescored):
                    out[part] = _Pass(cand_ids, exhaustive, ids, scores)
                    part.clock.rerank += each
        return out, searching

    def _pass(self, part: _Part, want: int) -> _Pass:
        """One pass of a part on its own: the whole of a small filter's selection, exactly,
        or ``want`` ANN candidates (within a large one's), rescored exactly."""
        t1 = time.perf_counter()
        allowed, qv = part.allowed, part.qv
        if allowed is not None and allowed.vectors is not None:  # few enough: all of them, exactly
            ids, scores = self._subsets.score(allowed, qv)
            part.clock.rerank += time.perf_counter() - t1
            return _Pass(allowed.ids, True, ids, scores)
        cand_ids, exhaustive = self._search(self.indexes.index(part.collection), [qv.probes], [want],
                                            allowed.ids if allowed is not None else None)[0]
        t2 = time.perf_counter()
        done = _Pass(cand_ids, exhaustive, *exact_rescore(qv, cand_ids, part.store))
        part.clock.ann += t2 - t1
        part.clock.rerank += time.perf_counter() - t2
        return done

    def _best_items(self, part: _Part, q: Query, owners: dict[int, _Owner | None],
                    first: _Pass | None) -> tuple[list[_Candidate], bool]:
        """The collection's best ``offset + k`` items that pass the filters, best first, and
        whether the search stopped at MAX_CANDIDATES with too few.

        The pool starts at ``offset + k * rerank_factor`` vectors (``first``, when the batch's
        shared search fetched it): a deep page needs the rescoring margin of one page, not of
        every page before it. It deepens while too few items pass (audio items hold many windows;
        exclusions, a broad filter, ``min_score`` and ``dedup`` drop some), and stops once every
        vector the last pass added scores below ``min_score``: the ones deeper still rank lower
        (exactly so in a flat index)."""
        need = _need(q)
        want, fetched = part.want, 0
        after = part.after  # a broad filter, checked on candidates
        while True:
            done, first = first or self._pass(part, want), None
            t = time.perf_counter()
            ids, scores = done.ids, done.scores
            passing = len(ids) if q.min_score is None else int(np.count_nonzero(scores >= q.min_score))
            below = q.min_score is not None and not np.isin(done.candidates[fetched:], ids[:passing]).any()
            ids, scores = ids[:passing], scores[:passing]  # best first, so a prefix
            if q.diversity > 0 and len(ids):
                ids, scores = mmr(part.qv.vector, ids, scores, part.store, min(len(ids), 2 * need), q.diversity)
            target = 2 * need if q.dedup else need
            while True:  # with dedup, map more of the ranking to items until a page survives it
                cands = self._by_item(part.collection, ids, scores, part.exclude, target, owners, after)
                if not q.dedup:
                    break
                kept = dedup(cands, part.store, q.dedup, need)
                if len(kept) >= need or len(cands) < target:
                    cands = kept
                    break
                target *= 4
            part.clock.rerank += time.perf_counter() - t
            if len(cands) >= need or done.exhaustive or below or want >= MAX_CANDIDATES:
                return cands[:need], len(cands) < need and not done.exhaustive and not below
            fetched = len(done.candidates)
            want = min(want * 4, MAX_CANDIDATES)

    def _search(self, idx: LiveIndex | None, probes: list[np.ndarray], wants: list[int],
                allowed: np.ndarray | None = None) -> list[tuple[np.ndarray, bool]]:
        """(ANN candidate ids, whether they are all there is to find) of each query, from one
        search of all their probe rows (one per Rocchio query, one per liked item for ``best``);
        ``allowed``: a filter's selection, too large to score exactly, applied while scanning (an id
        selector)."""
        if idx is None or idx.ntotal == 0:
            return [(np.zeros(0, dtype=np.int64), True) for _ in probes]
        k = min(max(wants), idx.ntotal)
        _, ids = idx.search(np.concatenate(probes).astype(np.float32), k, allowed_ids=allowed)
        out, row = [], 0
        for rows, want in zip(probes, wants):
            mine = ids[row:row + len(rows), :min(want, k)]
            row += len(rows)
            out.append((mine[mine >= 0], bool((np.count_nonzero(mine >= 0, axis=1) < want).all())))
        return out

    def _by_item(self, collection: str, ids: np.ndarray, scores: np.ndarray, exclude: set[int], need: int,
                 owners: dict[int, _Owner | None], after: Filter = NO_FILTER) -> list[_Candidate]:
        """Audio items have one vector per window: an item scores as its best window. Ids arrive
        best first and are mapped to items a slice at a time until ``need`` items are found, so
        SQL work follows the page, not the pool; ``owners`` keeps the mapping across passes.
        ``after``: a broad filter, checked in the same SQL (an id that fails it maps to None)."""
        best: dict[int, _Candidate] = {}
        step = _first_slice(need, exclude)
        start = 0
        while start < len(ids):
            part = ids[start:start + step].tolist()
            self._owners(part, owners, after)
            for eid, score in zip(part, scores[start:start + step].tolist()):
                owner = owners[eid]
                if owner is None or owner[0] in exclude or owner[0] in best:  # ids arrive best first
                    continue
                item_id, window_start, window_end = owner
                best[item_id] = _Candidate(item_id, eid, score, score, collection, window_start, window_end)
            if len(best) >= need:
                break
            start += step
            step *= 2  # a filter or exclusions drop many: take larger slices
        return list(best.values())

    def _owners(self, ids: list[int], owners: dict[int, _Owner | None], after: Filter = NO_FILTER) -> None:
        """Read the owners of the ids ``owners`` does not hold yet (None: deleted since the index
        was built, or failing ``after``, a broad filter: such a mapping is the filter's own)."""
        missing = [e for e in ids if e not in owners]
        found = self.catalog.embedding_items(missing, after)
        owners.update({e: found.get(e) for e in missing})

    def _calibration(self, collection: str, store: VectorStore, qv: QueryVector) -> tuple[float, float]:
        """Mean and spread of the query's cosines to a fixed sample of the collection's live vectors."""
        idx = self.indexes.index(collection)
        live = np.asarray(idx.ids() if idx is not None else store.ids())
        cached = self._background.get(collection)
        if cached is None or cached[0] != len(live):
            rng = np.random.default_rng(0)
            pick = np.sort(rng.choice(live, size=min(BACKGROUND_SAMPLE, len(live)), replace=False))
            _, vectors = store.lookup(pick)
            cached = self._background[collection] = (len(live), vectors)  # one per collection
        s = qv.score(cached[1])
        return float(s.mean()), float(max(s.std(), 1e-6))


def _need(q: Query) -> int:
    """Items a query maps its ranking to: its page and one beyond it, which says whether there
    is more (has_more)."""
    return q.offset + q.k + 1


def _first_slice(need: int, exclude: set[int]) -> int:
    """How many of the best ids ``_by_item`` maps to items first; the batch reads the owners of
    every query's first slice in one SQL read, so an ordinary page costs no read of its own."""
    return max(1, need + len(exclude))


def _broad_cap(vectors: int) -> int:
    """Matches above which a filter is broad: checked on the search's candidates, not fetched.
    ``vectors``: the collection's stored vectors (dead ones too: an estimate is enough here)."""
    return max(EXACT_SUBSET_MAX, int(BROAD_SHARE * vectors))


def dedup(cands: list[_Candidate], store: VectorStore, threshold: float, need: int) -> list[_Candidate]:
    """clip-retrieval's dedup: walking down the ranking, a result within ``threshold`` (cosine) of
    one already kept is dropped. Stops once ``need`` are kept."""
    if not cands:
        return cands
    found, vectors = store.lookup(np.array([c.embedding_id for c in cands], dtype=np.int64))
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    rows = np.cumsum(found) - 1
    kept: list[_Candidate] = []
    kept_rows: list[int] = []
    for c, present, row in zip(cands, found.tolist(), rows.tolist()):
        if not present:
            continue
        if kept_rows and float(np.max(dot_rows(vectors[kept_rows], vectors[row]))) >= threshold:
            continue
        kept.append(c)
        kept_rows.append(row)
        if len(kept) >= need:
            break
    return kept


def _refuse_absent_sounds(q: Query, existing: set[str], encoders: EncoderSet) -> None:
    """A sound query, or sounds asked for, in a catalog without sounds (or with audio off here):
    refused before the audio model loads (or is fetched), with what to do instead of an empty list."""
    has_sounds = any(c.startswith("clap.") for c in existing)
    if default_target(q) == "audio" and not encoders.enabled("clap") and has_sounds:
        raise BadInput("audio is off here (--no-audio, MMSEARCH_AUDIO=false, or the server's setting): "
                       "sounds cannot be searched")
    sounds = {"clap.audio"} if q.to == "audio" else {"clap.audio", "clap.video"}  # unasked, tracks too
    if (q.has_audio and not has_sounds) or \
            (default_target(q) == "audio" and not sounds & existing):
        raise BadInput("no sounds are indexed in this catalog (indexed without audio, or no sound files): "
                       "index a folder with sounds, with audio on (leave out --no-audio; over HTTP the "
                       "server's audio setting), then search them")


def _total(q: Query, counted: tuple[int, bool], shown: int, has_more: bool) -> tuple[int, TotalRelation]:
    """The pages' total and how it relates to the truth. A page where the list ends (results and
    no ``has_more``, or none at all from the start) gives it: ``eq``, whatever the count said (an
    approximate index may reach fewer items than it ranks). Before that: the count (``eq``), or
    past the count's cap a lower bound (``gte``); ``min_score`` and ``dedup`` drop ranked items
    after scoring, so then the count is an upper bound (``lte``), and a capped one bounds nothing:
    the items reached so far are the lower bound (``gte``). An empty page past the end says the
    list ended before its offset."""
    n, capped = counted
    scored = q.min_score is not None or q.dedup is not None
    if not has_more and (shown or not q.offset):
        return q.offset + shown, "eq"
    if not has_more:  # past the end
        return (n, "eq") if not (scored or capped) else (min(n, q.offset), "lte")
    reached = q.offset + shown + 1
    if not scored:
        return (max(n, reached), "gte") if capped else (n, "eq")
    return (reached, "gte") if capped else (max(n, reached), "lte")


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000
