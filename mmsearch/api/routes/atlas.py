"""The atlas: a 2-D map of a collection (``/atlas.json``) and the page that draws it (``/atlas``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from fastapi import Query as QueryParam
from fastapi.responses import HTMLResponse

from mmsearch.api.deps import ServiceDep
from mmsearch.api.errors import ERRORS
from mmsearch.api.routes.duplicates import Collection
from mmsearch.api.web import page_html
from mmsearch.search.atlas import MAX_POINTS, AtlasResponse

router = APIRouter(tags=["atlas"])


@router.get("/atlas", include_in_schema=False, response_class=HTMLResponse)
def atlas_page() -> HTMLResponse:
    return HTMLResponse(page_html("atlas.html"), headers={"Cache-Control": "no-cache"})


@router.get("/atlas.json", response_model=AtlasResponse, responses={404: ERRORS[404], 422: ERRORS[422]},
            summary="A 2-D map of a collection")
def atlas(service: ServiceDep, collection: Collection = "clip.image",
          limit: Annotated[int, QueryParam(ge=1, le=MAX_POINTS, description="Points at most: an even "
                                           "sample of the collection.")] = 2000) -> AtlasResponse:
    """An even sample of the collection's items on its two principal axes, x and y in [0, 1].
    Ask `/similar` with the items of a region to search there."""
    return service.base.atlas(collection=collection, limit=limit)
