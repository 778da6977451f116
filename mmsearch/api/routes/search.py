"""Search by text, files and item ids, and "more like these": every route answers a page of hits."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Request, Response
from fastapi import Query as QueryParam
from starlette.concurrency import run_in_threadpool

from mmsearch.api.bodies import body_schemas, read_body, validate
from mmsearch.api.deps import ServiceDep, require_audio
from mmsearch.api.errors import ERRORS
from mmsearch.api.schemas import (
    Filters,
    SearchPage,
    SearchRequest,
    SimilarBatchEntry,
    SimilarBatchRequest,
    SimilarBatchResponse,
    SimilarRequest,
)
from mmsearch.api.service import Service
from mmsearch.errors import BadInput, NotFound
from mmsearch.search.request import SearchResponse

router = APIRouter(tags=["search"])


def _page(response: SearchResponse, k: int, offset: int) -> SearchPage:
    full = len(response.results) >= k
    return SearchPage(results=response.results, timings_ms=response.timings_ms, k=k, offset=offset,
                      next_offset=offset + k if full else None)


def timed(response: Response, page: SearchPage | SimilarBatchResponse) -> None:
    """Server-Timing lets a browser's devtools (and the page) show where the time went."""
    response.headers["Server-Timing"] = ", ".join(
        f"{name};dur={ms:.2f}" for name, ms in page.timings_ms.items())


def run_search(service: Service, req: SearchRequest, image: bytes | None = None,
               audio: bytes | None = None) -> SearchPage:
    """Both faces of /search: the query string and the JSON or multipart body."""
    if audio is not None:
        require_audio(service, "an audio query")
    engine = service.engine()
    for i in req.item_ids:
        engine.item(i)  # NotFound names the first unknown id
    return _page(engine.search(req.to_query(image=image, audio=audio)), req.k, req.offset)


def similar_page(service: Service, item_ids: list[int], f: Filters) -> SearchPage:
    """Both /similar and an item's own "more like this"."""
    engine = service.engine()
    result = engine.similar(item_ids, to=f.to, k=f.k, **f.filters())
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
    """Search by text, an image or audio file, item ids, or a mix of them.

    JSON for text and ids; ``multipart/form-data`` to upload an `image` or `audio` file,
    with the other fields as form fields. `to` picks the modality returned, `k` and
    `offset` page through the results; `path`, `date_from`/`date_to`, `camera`, `near`,
    `min_size`, `min_duration`/`max_duration`, `ext`, `tags`, `min_score` and `exclude_ids`
    filter, and `dedup` collapses near duplicates."""
    lists = ("item_ids", "negative_text", "exclude_ids", "ext", "tags")
    fields, files = await read_body(request, ("image", "audio"), lists, service.settings.max_upload_bytes)
    req = validate(SearchRequest, fields)
    page = await run_in_threadpool(run_search, service, req, files.get("image"), files.get("audio"))
    timed(response, page)
    return page


@router.post("/similar", response_model=SearchPage, responses=ERRORS, summary="More like these")
def similar(req: SimilarRequest, response: Response, service: ServiceDep) -> SearchPage:
    """Items like one or many items (their vectors averaged), in their own modality unless
    `to` says otherwise."""
    page = similar_page(service, req.item_ids, req)
    timed(response, page)
    return page


@router.post("/similar/batch", response_model=SimilarBatchResponse, responses=ERRORS,
             summary="More like each of these (batch)")
def similar_batch(req: SimilarBatchRequest, response: Response, service: ServiceDep) -> SimilarBatchResponse:
    """One result list per item, for recommendations: a page of items in one call. An unknown
    item gets an `error` in its entry instead of failing the whole batch."""
    t0 = time.perf_counter()
    engine = service.engine()
    entries = []
    for item_id in req.item_ids:
        try:
            hits = engine.similar([item_id], to=req.to, k=req.k, **req.filters()).results
            entries.append(SimilarBatchEntry(item_id=item_id, results=hits, error=None))
        except (NotFound, BadInput) as e:
            entries.append(SimilarBatchEntry(item_id=item_id, error=str(e)))
    out = SimilarBatchResponse(results=entries, timings_ms={"total": round((time.perf_counter() - t0) * 1000, 3)})
    timed(response, out)
    return out
