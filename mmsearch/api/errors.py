"""Engine errors as HTTP: the status each one answers with, and how the OpenAPI schema lists them.

Routes raise the engine's own errors; the handlers here turn them into a status and a ``detail``
that says what to change, so no route maps errors itself."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

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
    422: {"model": ErrorOut, "description": "A field is missing or invalid; `detail` lists which."},
    503: {"model": ErrorOut, "description": "The models are loading or could not be loaded."},
}
WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "The server has an API key and none was sent."},
    403: {"model": ErrorOut, "description": "Wrong key, read-only server, or a path outside the index roots."},
    409: {"model": ErrorOut, "description": "Another write (an indexing job) is running."},
}


async def engine_error(request: Request, exc: Exception) -> JSONResponse:
    """A 503 says when to retry: the models may finish loading in a moment."""
    code = next(c for cls, c in ERROR_STATUS if isinstance(exc, cls))
    headers = {"Retry-After": "5"} if code == 503 else None
    return JSONResponse({"detail": str(exc)}, status_code=code, headers=headers)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own 422; where an input cannot be written back as JSON (a number too large for a
    float reads as infinity), the inputs are left out of it rather than the 422 becoming a 500."""
    assert isinstance(exc, RequestValidationError)
    try:
        return await request_validation_exception_handler(request, exc)
    except ValueError:
        return JSONResponse({"detail": [{k: v for k, v in err.items() if k not in ("input", "ctx")}
                                        for err in exc.errors()]}, status_code=422)


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug answers in JSON like every other error, and its traceback goes to the log only. A
    damaged or full database is no bug: it answers 503 with what to do."""
    friendly = friendly_db_error(exc)
    if friendly is not None:
        log.error("%s %s: %s", request.method, request.url.path, friendly)
        return JSONResponse({"detail": str(friendly)}, status_code=503)
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"},
                        status_code=500)
