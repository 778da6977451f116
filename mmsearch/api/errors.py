"""Engine errors as HTTP: the status each one answers with, and how the OpenAPI schema lists them.

Routes raise the engine's own errors; the handlers here turn them into a status and an RFC 9457
problem (``application/problem+json``: type, title, status, a ``detail`` that says what to
change, and ``errors`` per field for a 422), the one shape of every error, so no route maps errors
itself."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmsearch.api.jobs import JobConflict
from mmsearch.api.media import Forbidden, MediaError
from mmsearch.api.schemas import ErrorOut
from mmsearch.api.service import NotReady
from mmsearch.errors import BadInput, CatalogDamaged, MMSearchError, ModelMismatch, ModelUnavailable, NotFound
from mmsearch.storage.db import friendly_db_error
from mmsearch.storage.lock import CatalogBusy

log = logging.getLogger("mmsearch.api")

# Status of each engine error: the first class that matches, so subclasses come before their base.
ERROR_STATUS: list[tuple[type[Exception], int]] = [
    (NotFound, 404), (BadInput, 400), (Forbidden, 403), (JobConflict, 409), (ModelMismatch, 409),
    (CatalogBusy, 409), (MediaError, 422), (NotReady, 503), (ModelUnavailable, 503), (CatalogDamaged, 503),
    (MMSearchError, 409),
]
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "A query or file the engine cannot use."},
    404: {"model": ErrorOut, "description": "No such item."},
    413: {"model": ErrorOut, "description": "Upload over max_upload_bytes."},
    415: {"model": ErrorOut, "description": "Send application/json or multipart/form-data."},
    422: {"model": ErrorOut, "description": "A field is missing or invalid; `errors` lists which."},
    503: {"model": ErrorOut, "description": "The models are loading or could not be loaded."},
}
WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "The server has an API key and none was sent."},
    403: {"model": ErrorOut, "description": "Wrong key, read-only server, or a path outside the index roots."},
    409: {"model": ErrorOut, "description": "Another write (an indexing job) is running."},
}


PROBLEM_JSON = "application/problem+json"


def problem(status: int, detail: str, *, errors: list[dict[str, Any]] | None = None,
            headers: Mapping[str, str] | None = None) -> JSONResponse:
    """Every error answer, in one shape: an RFC 9457 problem. ``detail`` is one sentence that says
    what to change; validation errors add ``errors``, one per field."""
    body: dict[str, Any] = {"type": "about:blank", "title": _phrase(status), "status": status, "detail": detail}
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, headers=dict(headers or {}), media_type=PROBLEM_JSON)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


async def engine_error(request: Request, exc: Exception) -> JSONResponse:
    """A 503 says when to retry: the models may finish loading in a moment."""
    code = next(c for cls, c in ERROR_STATUS if isinstance(exc, cls))
    headers = {"Retry-After": "5"} if code == 503 else None
    return problem(code, str(exc), headers=headers)


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's and the routes' own HTTPExceptions (404 no such route, 405, 401, 413, 415)."""
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else _phrase(exc.status_code)
    if exc.status_code == 405:
        detail = f"{request.method} is not allowed here (allowed: {(exc.headers or {}).get('Allow', '-')})"
    elif exc.status_code == 404 and detail == "Not Found":
        detail = f"no such endpoint: {request.url.path} (see /docs)"
    return problem(exc.status_code, detail, headers=exc.headers)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """A 422 whose ``detail`` names the first bad field and whose ``errors`` name every one; the
    inputs are never echoed (a number too large for a float reads as infinity, which JSON cannot
    write: that must not turn the 422 into a 500)."""
    assert isinstance(exc, RequestValidationError)
    errors = []
    for err in exc.errors():
        loc = [p if isinstance(p, int) else str(p) for p in err.get("loc", ())]
        field = ".".join(str(p) for p in loc[1:]) or "body"
        errors.append({"loc": loc, "field": field, "msg": str(err.get("msg", "invalid")),
                       "type": str(err.get("type", "value_error"))})
    first = errors[0] if errors else {"field": "body", "msg": "invalid request"}
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return problem(422, f"{first['field']}: {first['msg']}{more}", errors=errors)


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug answers in JSON like every other error, and its traceback goes to the log only. A
    damaged or full database is no bug: it answers 503 with what to do."""
    friendly = friendly_db_error(exc)
    if friendly is not None:
        log.error("%s %s: %s", request.method, request.url.path, friendly)
        return problem(503, str(friendly))
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(500, f"internal error ({type(exc).__name__}); see the server log")
