"""The page at ``/``, and the server's own state: liveness, readiness, what is indexed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response, status
from fastapi.responses import HTMLResponse

from mmsearch.api.deps import ServiceDep
from mmsearch.api.schemas import CatalogInfo, Health, Readiness, Stats
from mmsearch.api.web import page_html

router = APIRouter(tags=["service"])


@router.get("/", include_in_schema=False, response_class=HTMLResponse)
def index_page() -> HTMLResponse:
    return HTMLResponse(page_html(), headers={"Cache-Control": "no-cache"})


@router.get("/healthz", response_model=Health, summary="Liveness")
def healthz() -> Health:
    """The process answers. It may still be loading models: see /readyz."""
    return Health()


@router.get("/readyz", response_model=Readiness, summary="Readiness",
            responses={503: {"model": Readiness, "description": "Not ready: models loading or failed."}})
def readyz(response: Response, service: ServiceDep) -> dict[str, Any]:
    """Ready when the encoders are loaded: send queries only then."""
    state = service.readiness()
    if not state["ready"]:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        response.headers["Retry-After"] = "5"
    return state


@router.get("/stats", response_model=Stats, summary="What is indexed")
def stats(service: ServiceDep) -> Stats:
    """Files, items, models, index types and sizes, and this server's state."""
    info = service.base.stats()
    return Stats(**info, service=service.describe())


@router.get("/catalog", response_model=CatalogInfo, summary="Catalog summary")
def catalog_info(service: ServiceDep) -> CatalogInfo:
    """Roots, item counts and models: a cheap subset of /stats, for the page."""
    catalog = service.base.catalog
    return CatalogInfo(roots=catalog.roots(), items=catalog.counts()["items"],
                       models={name: spec for name, (spec, _) in catalog.spaces().items()})
