"""The HTTP face of the engine: a FastAPI app built by ``create_app`` around one injected engine.

Every route calls the engine functions the CLI calls; this module only translates HTTP to them
and their errors back to HTTP (a 4xx with a ``detail`` that says what to change). The web page
at ``/`` is static HTML, CSS and JS that call the same JSON API, with its state in the URL.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, HTTPException, Request, Response, status
from fastapi import Path as PathParam
from fastapi import Query as QueryParam
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from mmsearch import __version__
from mmsearch.api.jobs import JobConflict
from mmsearch.api.media import Forbidden, MediaError, media_type
from mmsearch.api.schemas import (
    MAX_ID,
    CatalogInfo,
    EmbeddingOut,
    EmbedForm,
    EmbedRequest,
    ErrorOut,
    Filters,
    Health,
    ItemOut,
    JobList,
    JobOut,
    JobRequest,
    Readiness,
    SearchForm,
    SearchPage,
    SearchRequest,
    SimilarBatchEntry,
    SimilarBatchRequest,
    SimilarBatchResponse,
    SimilarRequest,
    Stats,
)
from mmsearch.api.security import FORM_OVERHEAD, BodyLimit, SecurityHeaders, require_writer
from mmsearch.api.service import NotReady, Service
from mmsearch.engine import Engine
from mmsearch.errors import BadInput, MMSearchError, ModelMismatch, ModelUnavailable, NotFound
from mmsearch.search.request import SearchResponse
from mmsearch.settings import Settings

log = logging.getLogger("mmsearch.api")
STATIC = Path(__file__).parent / "static"
T = TypeVar("T", bound=BaseModel)

ItemIdPath = Annotated[int, PathParam(ge=1, le=MAX_ID, description="Item id, from search results.")]
JobIdPath = Annotated[str, PathParam(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]

# Status of each engine error: the first class that matches, so subclasses come before their base.
ERROR_STATUS: list[tuple[type[Exception], int]] = [
    (NotFound, 404), (BadInput, 400), (Forbidden, 403), (JobConflict, 409), (ModelMismatch, 409),
    (MediaError, 422), (NotReady, 503), (ModelUnavailable, 503), (MMSearchError, 409),
]
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "A query or file the engine cannot use."},
    404: {"model": ErrorOut, "description": "No such item."},
    413: {"model": ErrorOut, "description": "Upload over max_upload_bytes."},
    415: {"model": ErrorOut, "description": "Send application/json or multipart/form-data."},
    422: {"model": ErrorOut, "description": "A field is missing or invalid; `detail` lists which."},
    503: {"model": ErrorOut, "description": "The models are loading or could not be loaded."},
}
WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "The server has an API key and none was sent."},
    403: {"model": ErrorOut, "description": "Wrong key, read-only server, or a path outside the index roots."},
    409: {"model": ErrorOut, "description": "Another write (an indexing job) is running."},
}


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
    )
    app.state.service = service
    upload_limit = service.settings.max_upload_bytes
    app.add_middleware(BodyLimit, limit=upload_limit + FORM_OVERHEAD)
    app.add_middleware(SecurityHeaders)
    _add_error_handlers(app)
    _add_routes(app, service)
    app.mount("/static", CachedStatic(directory=STATIC), name="static")
    _custom_openapi(app, [SearchRequest, SearchForm, EmbedRequest, EmbedForm])
    return app


# -- errors --------------------------------------------------------------------------------------

def _add_error_handlers(app: FastAPI) -> None:
    async def engine_error(request: Request, exc: Exception) -> JSONResponse:
        code = next(c for cls, c in ERROR_STATUS if isinstance(exc, cls))
        headers = {"Retry-After": "5"} if code == 503 else None
        return JSONResponse({"detail": str(exc)}, status_code=code, headers=headers)

    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"},
                            status_code=500)

    app.add_exception_handler(MMSearchError, engine_error)
    app.add_exception_handler(Exception, internal_error)


def _invalid(e: ValidationError, where: str) -> RequestValidationError:
    errors = e.errors(include_url=False, include_context=False, include_input=False)
    return RequestValidationError([{**err, "loc": (where, *err["loc"])} for err in errors])


def _validate(model: type[T], data: Any, where: str = "body") -> T:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise _invalid(e, where) from None


# -- request bodies ------------------------------------------------------------------------------

async def _read_body(request: Request, files: tuple[str, ...], lists: tuple[str, ...],
                     file_limit: int) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A JSON object, or a form whose ``files`` fields are uploads and ``lists`` repeat."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json" or ctype.endswith("+json"):
        raw = await request.body()
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise HTTPException(400, f"the body is not valid JSON: {e}") from None
        except RecursionError:
            raise HTTPException(400, "the JSON body is nested too deeply") from None
        if not isinstance(data, dict):
            raise HTTPException(400, "the JSON body must be an object")
        return data, {}
    if ctype not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise HTTPException(415, "send application/json, or multipart/form-data with files")
    form = await request.form(max_files=len(files), max_fields=64, max_part_size=64 * 1024)
    fields: dict[str, Any] = {}
    uploads: dict[str, bytes] = {}
    try:
        for key in set(form.keys()):
            values = form.getlist(key)
            if key in files:
                if len(values) != 1 or not isinstance(values[0], UploadFile):
                    if values == [""]:
                        continue  # an empty file input of an HTML form
                    raise HTTPException(422, f"{key}: send one file (multipart/form-data upload)")
                data = await values[0].read(file_limit + 1)
                if len(data) > file_limit:
                    raise HTTPException(413, f"{key}: file over the limit of {file_limit} bytes (max_upload_bytes)")
                uploads[key] = data
                continue
            if any(isinstance(v, UploadFile) for v in values):
                raise HTTPException(422, f"{key}: a form field, not a file")
            strings = [v for v in values if v != ""]  # HTML forms send empty inputs
            if key in lists:
                fields[key] = strings
            elif len(strings) > 1:
                raise HTTPException(422, f"{key}: give it once")
            elif strings:
                fields[key] = strings[0]
    finally:
        await form.close()
    return fields, uploads


def _page(response: SearchResponse, k: int, offset: int) -> SearchPage:
    full = len(response.results) >= k
    return SearchPage(results=response.results, timings_ms=response.timings_ms, k=k, offset=offset,
                      next_offset=offset + k if full else None)


def _timed(response: Response, page: SearchPage | SimilarBatchResponse) -> None:
    """Server-Timing lets a browser's devtools (and the page) show where the time went."""
    response.headers["Server-Timing"] = ", ".join(
        f"{name};dur={ms:.2f}" for name, ms in page.timings_ms.items())


# -- routes --------------------------------------------------------------------------------------

def _add_routes(app: FastAPI, service: Service) -> None:  # noqa: C901 - one place for every route
    page_html = _page_html()
    limit = service.settings.max_upload_bytes

    def require_audio(what: str) -> None:
        engine = service.engine()
        if not engine.encoders.enabled("clap"):
            raise BadInput(f"{what} needs audio, which is off on this server: {service.audio_off}")

    def check_items(engine: Engine, ids: list[int]) -> None:
        for i in ids:
            engine.item(i)  # NotFound names the first unknown id

    def run_search(req: SearchRequest, image: bytes | None = None, audio: bytes | None = None) -> SearchPage:
        if audio is not None:
            require_audio("an audio query")
        engine = service.engine()
        with service.lock.read():
            check_items(engine, req.item_ids)
            return _page(engine.search(req.to_query(image=image, audio=audio)), req.k, req.offset)

    # page and service ---------------------------------------------------------------------------

    @app.get("/", include_in_schema=False, response_class=HTMLResponse)
    def index_page() -> HTMLResponse:
        return HTMLResponse(page_html, headers={"Cache-Control": "no-cache"})

    @app.get("/healthz", tags=["service"], response_model=Health, summary="Liveness")
    def healthz() -> Health:
        """The process answers. It may still be loading models: see /readyz."""
        return Health()

    @app.get("/readyz", tags=["service"], response_model=Readiness, summary="Readiness",
             responses={503: {"model": Readiness, "description": "Not ready: models loading or failed."}})
    def readyz(response: Response) -> dict[str, Any]:
        """Ready when the encoders are loaded: send queries only then."""
        state = service.readiness()
        if not state["ready"]:
            response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
            response.headers["Retry-After"] = "5"
        return state

    @app.get("/stats", tags=["service"], response_model=Stats, summary="What is indexed")
    def stats() -> Stats:
        """Files, items, models, index types and sizes, and this server's state."""
        with service.lock.read():
            info = service.base.stats()
        return Stats(**info, service=service.describe())

    @app.get("/catalog", tags=["service"], response_model=CatalogInfo, summary="Catalog summary")
    def catalog_info() -> CatalogInfo:
        """Roots, item counts and models: a cheap subset of /stats, for the page."""
        catalog = service.base.catalog
        return CatalogInfo(roots=catalog.roots(), items=catalog.counts()["items"],
                           models={name: spec for name, (spec, _) in catalog.spaces().items()})

    # search -------------------------------------------------------------------------------------

    @app.get("/search", tags=["search"], response_model=SearchPage, responses=ERRORS, summary="Search (query string)")
    def search_get(q: Annotated[SearchRequest, QueryParam()], response: Response) -> SearchPage:
        """Search by text and/or item ids; the same fields as the JSON body, e.g.
        `/search?text=a+red+car&to=image&k=10`. List fields repeat: `item_ids=3&item_ids=7`."""
        page = run_search(q)
        _timed(response, page)
        return page

    @app.post("/search", tags=["search"], response_model=SearchPage, responses=ERRORS, summary="Search",
              openapi_extra=_bodies("SearchRequest", "SearchForm"))
    async def search_post(request: Request, response: Response) -> SearchPage:
        """Search by text, an image or audio file, item ids, or a mix of them.

        JSON for text and ids; ``multipart/form-data`` to upload an `image` or `audio` file,
        with the other fields as form fields. `to` picks the modality returned, `k` and
        `offset` page through the results, `path`, `min_score` and `exclude_ids` filter."""
        lists = ("item_ids", "negative_text", "exclude_ids")
        fields, files = await _read_body(request, ("image", "audio"), lists, limit)
        req = _validate(SearchRequest, fields)
        page = await run_in_threadpool(run_search, req, files.get("image"), files.get("audio"))
        _timed(response, page)
        return page

    # similar ------------------------------------------------------------------------------------

    @app.post("/similar", tags=["search"], response_model=SearchPage, responses=ERRORS, summary="More like these")
    def similar(req: SimilarRequest, response: Response) -> SearchPage:
        """Items like one or many items (their vectors averaged), in their own modality unless
        `to` says otherwise."""
        engine = service.engine()
        with service.lock.read():
            result = engine.similar(req.item_ids, to=req.to, k=req.k, **req.filters())
        page = _page(result, req.k, req.offset)
        _timed(response, page)
        return page

    @app.post("/similar/batch", tags=["search"], response_model=SimilarBatchResponse, responses=ERRORS,
              summary="More like each of these (batch)")
    def similar_batch(req: SimilarBatchRequest, response: Response) -> SimilarBatchResponse:
        """One result list per item, for recommendations: a page of items in one call. An unknown
        item gets an `error` in its entry instead of failing the whole batch."""
        t0 = time.perf_counter()
        engine = service.engine()
        entries = []
        with service.lock.read():
            for item_id in req.item_ids:
                try:
                    hits = engine.similar([item_id], to=req.to, k=req.k, **req.filters()).results
                    entries.append(SimilarBatchEntry(item_id=item_id, results=hits, error=None))
                except (NotFound, BadInput) as e:
                    entries.append(SimilarBatchEntry(item_id=item_id, error=str(e)))
        out = SimilarBatchResponse(results=entries, timings_ms={"total": round((time.perf_counter() - t0) * 1000, 3)})
        _timed(response, out)
        return out

    @app.get("/items/{item_id}/similar", tags=["items"], response_model=SearchPage, responses=ERRORS,
             summary="More like this")
    def item_similar(item_id: ItemIdPath, f: Annotated[Filters, QueryParam()], response: Response) -> SearchPage:
        """Items like this one: the page's "more like this"."""
        engine = service.engine()
        with service.lock.read():
            result = engine.similar([item_id], to=f.to, k=f.k, **f.filters())
        page = _page(result, f.k, f.offset)
        _timed(response, page)
        return page

    # embed --------------------------------------------------------------------------------------

    @app.post("/embed", tags=["embed"], response_model=EmbeddingOut, responses=ERRORS, summary="Embed",
              openapi_extra=_bodies("EmbedRequest", "EmbedForm"))
    async def embed(request: Request) -> EmbeddingOut:
        """The raw unit vector of a text (JSON or form), an image or an audio file (form), for
        other systems. Text is embedded in `space` clip (to compare with images) or clap (sounds)."""
        fields, files = await _read_body(request, ("image", "audio"), (), limit)
        if files:
            form = _validate(EmbedForm, {**fields, **files})
            if len(files) + (form.text is not None) != 1:
                raise BadInput("embed takes exactly one of text, an image or an audio file")
            if form.space is not None:
                raise BadInput("space applies to text only: images are CLIP, sounds are CLAP")
            text, space = None, None
        else:
            req = _validate(EmbedRequest, fields)
            text, space = req.text, req.space
        image, audio = files.get("image"), files.get("audio")
        if audio is not None or space == "clap":
            require_audio("embedding in the clap space")

        def run() -> EmbeddingOut:
            engine = service.engine()
            with service.lock.read():
                e = engine.embed(text=text, image=image, audio=audio, space=space)
            return EmbeddingOut(**e.model_dump())

        return await run_in_threadpool(run)

    # items --------------------------------------------------------------------------------------

    @app.get("/items/{item_id}", tags=["items"], response_model=ItemOut, responses={404: ERRORS[404]},
             summary="Item metadata")
    def item(item_id: ItemIdPath) -> ItemOut:
        row = service.base.item(item_id)
        pictured = row.modality == "image" or bool(row.ref_path and media_type(row.ref_path).startswith("image/"))
        return ItemOut(
            id=row.id, path=row.path, modality=row.modality, ordinal=row.ordinal, text=row.text,
            ref_path=row.ref_path, duration=row.duration, size=row.size,
            modified=datetime.fromtimestamp(row.mtime_ns / 1e9, tz=timezone.utc),
            media_url=f"/items/{row.id}/media", similar_url=f"/items/{row.id}/similar",
            thumbnail_url=f"/items/{row.id}/thumbnail" if pictured else None)

    @app.delete("/items/{item_id}", tags=["items"], status_code=204, response_class=Response,
                dependencies=[Depends(require_writer)], responses={404: ERRORS[404], **WRITE_ERRORS},
                summary="Delete an item")
    def delete_item(item_id: ItemIdPath) -> Response:
        """Remove an item from the catalog and the indexes. Its file stays on disk, and a later
        scan brings it back only if the file changes."""
        service.delete(item_id)
        return Response(status_code=204)

    media_responses: dict[int | str, dict[str, Any]] = {
        200: {"description": "The file, with its media type.",
              "content": {"image/*": {}, "audio/*": {}, "text/plain": {}, "application/octet-stream": {}}},
        206: {"description": "Part of the file (Range request, e.g. audio seeking)."},
        403: {"model": ErrorOut, "description": "The file is outside the catalog's roots."},
        404: ERRORS[404],
        416: {"description": "Range not satisfiable."},
    }

    @app.get("/items/{item_id}/media", tags=["items"], response_class=FileResponse, responses=media_responses,
             summary="The item's file")
    def item_media(item_id: ItemIdPath) -> FileResponse:
        """The indexed file itself, with HTTP range requests (so audio players can seek)."""
        row = service.base.item(item_id)
        real = service.guard.check(row.path)
        return FileResponse(real, media_type=media_type(row.path), content_disposition_type="inline",
                            filename=real.name,
                            headers={"Cache-Control": "private, max-age=3600",
                                     "Content-Security-Policy": "sandbox; default-src 'none'"})

    @app.get("/items/{item_id}/thumbnail", tags=["items"], response_class=Response, summary="Thumbnail",
             responses={200: {"content": {"image/jpeg": {}}, "description": "A JPEG thumbnail."},
                        304: {"description": "Not modified (If-None-Match)."},
                        403: media_responses[403], 404: ERRORS[404],
                        422: {"model": ErrorOut, "description": "The image cannot be read any more."}})
    def item_thumbnail(item_id: ItemIdPath, request: Request,
                       size: Annotated[int, QueryParam(ge=16, le=1024, description="Longest side, px.")] = 256
                       ) -> Response:
        """A JPEG of an image item, or of the indexed image a caption describes."""
        row = service.base.item(item_id)
        picture = service.guard.picture_of(row)
        data, etag = service.thumbnails.get(picture, size)
        headers = {"ETag": etag, "Cache-Control": "private, max-age=86400"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(data, media_type="image/jpeg", headers=headers)

    # jobs ---------------------------------------------------------------------------------------

    @app.post("/jobs", tags=["jobs"], status_code=202, response_model=JobOut,
              dependencies=[Depends(require_writer)],
              responses={400: ERRORS[400], 404: {"model": ErrorOut, "description": "No such folder."},
                         **WRITE_ERRORS}, summary="Start indexing a folder")
    def start_job(req: JobRequest, response: Response) -> dict[str, Any]:
        """Index a folder under a configured index root, in the background: new, changed and
        deleted files. Queries keep answering; new items appear when the job finishes.
        Follow it at the returned `url`."""
        job = service.jobs.start(service.index_path(req.path))
        response.headers["Location"] = f"/jobs/{job.id}"
        return job.as_dict()

    @app.get("/jobs", tags=["jobs"], response_model=JobList, summary="Recent jobs")
    def list_jobs() -> dict[str, Any]:
        return {"jobs": [j.as_dict() for j in service.jobs.list()]}

    @app.get("/jobs/{job_id}", tags=["jobs"], response_model=JobOut, responses={404: ERRORS[404]},
             summary="A job's progress")
    def get_job(job_id: JobIdPath) -> dict[str, Any]:
        """`state` goes queued, running, then done, failed or cancelled; `done`/`total` count files."""
        return service.jobs.get(job_id).as_dict()

    @app.delete("/jobs/{job_id}", tags=["jobs"], status_code=202, response_model=JobOut,
                dependencies=[Depends(require_writer)], responses={404: ERRORS[404], **WRITE_ERRORS},
                summary="Cancel a job")
    def cancel_job(job_id: JobIdPath) -> dict[str, Any]:
        """Stop a running job: files embedded so far are kept and the indexes synced."""
        return service.jobs.cancel(job_id).as_dict()


# -- static files and OpenAPI --------------------------------------------------------------------

class CachedStatic(StaticFiles):
    """Assets are linked with a content hash (``?v=``), so browsers may keep them for good."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        return response


def _page_html() -> str:
    """index.html with each asset's content hash in its URL."""
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    for name in ("app.js", "style.css"):
        digest = hashlib.sha256((STATIC / name).read_bytes()).hexdigest()[:10]
        html = html.replace(f"/static/{name}", f"/static/{name}?v={digest}")
    return html


def _bodies(json_model: str, form_model: str) -> dict[str, Any]:
    ref = "#/components/schemas/{}".format
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": ref(json_model)}},
        "multipart/form-data": {"schema": {"$ref": ref(form_model)}},
    }}}


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
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


__all__ = ["create_app"]
