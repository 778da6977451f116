"""The HTTP face of the engine: a FastAPI app built by ``create_app`` around one injected engine.

Every route calls the engine functions the CLI calls; the routes live in ``mmsearch.api.routes``,
one module per resource, and ``mmsearch.api.errors`` turns the engine's errors into a 4xx with a
``detail`` that says what to change. The web page at ``/`` is static HTML, CSS and JS that call
the same JSON API, with its state in the URL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmsearch import __version__
from mmsearch.api.docs import add_docs
from mmsearch.api.errors import PROBLEM_JSON, engine_error, http_error, internal_error, validation_error
from mmsearch.api.head import HeadAsGet
from mmsearch.api.routes import ROUTERS
from mmsearch.api.schemas import EmbedForm, EmbedRequest, ErrorOut, SearchForm, SearchRequest
from mmsearch.api.security import FORM_OVERHEAD, BodyLimit, SecurityHeaders
from mmsearch.api.service import Service
from mmsearch.api.web import STATIC, CachedStatic
from mmsearch.engine import Engine
from mmsearch.errors import MMSearchError
from mmsearch.settings import Settings


def create_app(source: Engine | Settings, *, read_only: bool = False, batching: bool = True) -> FastAPI:
    """An app around one engine (yours, left open) or one it opens from settings (and closes).

    Models load in the background at start-up (``/readyz`` says when), or on the first request
    when the app runs without its lifespan."""
    service = Service(source, read_only=read_only, batching=batching)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            await run_in_threadpool(service.close)

    app = FastAPI(
        title="mmsearch", version=__version__, lifespan=lifespan,
        description="Cross-modal semantic search over a media folder: images, audio and text. "
                    "Writes (indexing, deleting) need the API key when the server has one.",
        openapi_tags=[{"name": "search"}, {"name": "items"}, {"name": "embed"}, {"name": "jobs"},
                      {"name": "service"}],
        docs_url=None, redoc_url=None,  # served from the package by add_docs: they work offline
    )
    app.state.service = service  # what deps.get_service hands every route
    app.add_middleware(BodyLimit, limit=service.settings.max_upload_bytes + FORM_OVERHEAD)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(HeadAsGet)
    app.add_exception_handler(MMSearchError, engine_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/static", CachedStatic(directory=STATIC), name="static")
    add_docs(app)
    if service.settings.cors_origins:  # outermost: a preflight is answered before any other check
        app.add_middleware(CORSMiddleware, allow_origins=service.settings.cors_origins,
                           allow_methods=["GET", "HEAD", "POST", "PUT", "DELETE"],
                           allow_headers=["Content-Type", "X-API-Key", "Range", "If-None-Match"],
                           expose_headers=["Server-Timing", "Content-Range", "Accept-Ranges", "ETag", "Retry-After"])
    _custom_openapi(app, [SearchRequest, SearchForm, EmbedRequest, EmbedForm])
    return app


def _custom_openapi(app: FastAPI, extra_models: list[type[BaseModel]]) -> None:
    """Routes that read JSON or multipart themselves name their bodies' schemas in components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description,
                             routes=app.routes, tags=app.openapi_tags)
        _, defs = models_json_schema([(m, "validation") for m in extra_models],
                                     ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, body in defs.get("$defs", {}).items():
            components.setdefault(name, body)
        _problem_responses(schema)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _problem_responses(schema: dict[str, Any]) -> None:
    """Error answers are RFC 9457 problems (``application/problem+json``, schema ErrorOut): FastAPI
    lists them as JSON, and its own 422 as HTTPValidationError."""
    problem_ref = {"$ref": "#/components/schemas/ErrorOut"}
    for operations in schema.get("paths", {}).values():
        for op in operations.values():
            for status, response in op.get("responses", {}).items():
                if not str(status).isdigit() or int(status) < 400:
                    continue
                content = response.get("content", {})
                body = content.pop("application/json", None)
                if body is not None:
                    content[PROBLEM_JSON] = {"schema": problem_ref}
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    if "ErrorOut" not in components:
        _, defs = models_json_schema([(ErrorOut, "validation")], ref_template="#/components/schemas/{model}")
        components.update(defs.get("$defs", {}))


__all__ = ["create_app"]
