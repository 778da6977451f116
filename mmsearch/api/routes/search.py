"""Search by text, files and item ids, and "more like these": every route answers a page of hits."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from fastapi import Query as QueryParam
from starlette.concurrency import run_in_threadpool

from mmsearch.api.bodies import body_schemas, read_body, validate
from mmsearch.api.deps import ServiceDep, require_audio
from mmsearch.api.errors import ERRORS
from mmsearch.api.schemas import (
    BatchEntry,
    Filters,
    RecommendBatchRequest,
    RecommendBatchResponse,
    RecommendRequest,
    SearchPage,
    SearchRequest,
    SimilarBatchEntry,
    SimilarBatchRequest,
    SimilarBatchResponse,
    SimilarRequest,
)
from mmsearch.api.service import Service
from mmsearch.errors import MMSearchError
from mmsearch.search.request import SearchResponse

router = APIRouter(tags=["search"])


def _page(response: SearchResponse, k: int, offset: int) -> SearchPage:
    return SearchPage(**response.model_dump(exclude={"results"}), results=response.results, k=k, offset=offset,
                      next_offset=offset + k if response.has_more else None)


def timed(response: Response, page: SearchPage | SimilarBatchResponse | RecommendBatchResponse) -> None:
    """Server-Timing lets a browser's devtools (and the page) show where the time went."""
    response.headers["Server-Timing"] = ", ".join(
        f"{name};dur={ms:.2f}" for name, ms in page.timings_ms.items())


def run_search(service: Service, req: SearchRequest, image: bytes | None = None,
               audio: bytes | None = None, video: bytes | None = None) -> SearchPage:
    """Both faces of /search: the query string and the JSON or multipart body."""
    if audio is not None:
        require_audio(service, "an audio query")
    engine = service.engine()
    for i in req.item_ids:
        engine.item(i)  # NotFound names the first unknown id
    return _page(engine.search(req.to_query(image=image, audio=audio, video=video)), req.k, req.offset)


def similar_page(service: Service, item_ids: list[int], f: Filters) -> SearchPage:
    """Both /similar and an item's own "more like this"."""
    engine = service.engine()
    result = engine.similar(item_ids, to=f.to, k=f.k, at=getattr(f, "at", None), **f.filters())
    return _page(result, f.k, f.offset)


@router.get("/search", response_model=SearchPage, responses=ERRORS, summary="Search (query string)")
def search_get(q: Annotated[SearchRequest, QueryParam()], response: Response,
               service: ServiceDep) -> SearchPage:
    """Search by text and/or item ids; the same fields as the JSON body, e.g.
    `/search?text=a+red+car&to=image&k=10`. List fields repeat: `item_ids=3&item_ids=7`."""
    page = run_search(service, q)
    timed(response, page)
    return page


@router.post("/search", response_model=SearchPage, responses=ERRORS, summary="Search",
             openapi_extra=body_schemas("SearchRequest", "SearchForm"))
async def search_post(request: Request, response: Response, service: ServiceDep) -> SearchPage:
    """Search by text, an image, audio or video file, item ids, or a mix of them.

    JSON for text and ids; ``multipart/form-data`` to upload an `image`, `audio` or `video` file,
    with the other fields as form fields. `to` picks the modality returned, `k` and
    `offset` page through the results; `path`, `date_from`/`date_to`, `camera`, `near`,
    `min_size`, `min_duration`/`max_duration`, `ext`, `tags`, `min_score` and `exclude_ids`
    filter, and `dedup` collapses near duplicates."""
    lists = ("item_ids", "negative_text", "exclude_ids", "ext", "tags")
    fields, files = await read_body(request, ("image", "audio", "video"), lists, service.settings.max_upload_bytes)
    req = validate(SearchRequest, fields)
    page = await run_in_threadpool(run_search, service, req, files.get("image"), files.get("audio"),
                                   files.get("video"))
    timed(response, page)
    return page


@router.post("/similar", response_model=SearchPage, responses=ERRORS, summary="More like these")
def similar(req: SimilarRequest, response: Response, service: ServiceDep) -> SearchPage:
    """Items like one or many items (their vectors averaged), in their own modality (all media where
    they are of several) unless `to` says otherwise."""
    page = similar_page(service, req.item_ids, req)
    timed(response, page)
    return page


@router.post("/similar/batch", response_model=SimilarBatchResponse, responses=ERRORS,
             summary="More like each of these (batch)")
def similar_batch(req: SimilarBatchRequest, response: Response, service: ServiceDep) -> SimilarBatchResponse:
    """One result list per item, for recommendations: a page of items in one call, answered by
    one batched ANN search. An unknown item gets an `error` in its entry instead of failing the
    whole batch."""
    profiles = [{"like": [item_id], "to": req.to, "k": req.k, **req.filters()} for item_id in req.item_ids]
    answers, timings = _batch(service, profiles)
    out = SimilarBatchResponse(results=[SimilarBatchEntry(item_id=i, **e.model_dump())
                                        for i, e in zip(req.item_ids, answers)], timings_ms=timings)
    timed(response, out)
    return out


@router.post("/recommend", response_model=SearchPage, responses=ERRORS, summary="Recommend for a profile")
def recommend(req: RecommendRequest, response: Response, service: ServiceDep) -> SearchPage:
    """Items for a profile: liked and disliked items with weights, optionally a text. Liked and
    disliked items are never returned; `exclude_ids` leaves out more (those already seen).
    `scoring`: `rocchio` (default) or `best` (see docs/search.md)."""
    page = _page(service.engine().recommend(**req.profile()), req.k, req.offset)
    timed(response, page)
    return page


@router.post("/recommend/batch", response_model=RecommendBatchResponse, responses=ERRORS,
             summary="Recommend for many profiles (batch)")
def recommend_batch(req: RecommendBatchRequest, response: Response,
                    service: ServiceDep) -> RecommendBatchResponse:
    """One result list per profile, from one batched ANN search. A profile that cannot run (an
    unknown item) gets an `error` in its entry; the others are answered."""
    answers, timings = _batch(service, [p.profile() for p in req.profiles])
    out = RecommendBatchResponse(results=answers, timings_ms=timings)
    timed(response, out)
    return out


def _batch(service: Service, profiles: list[dict[str, Any]]) -> tuple[list[BatchEntry], dict[str, float]]:
    t0 = time.perf_counter()
    entries = [BatchEntry(error=str(a)) if isinstance(a, MMSearchError) else BatchEntry(results=a.results)
               for a in service.engine().recommend_batch(profiles, errors="return")]
    return entries, {"total": round((time.perf_counter() - t0) * 1000, 3)}
