"""Request bodies that may be JSON or a multipart upload, on one URL.

FastAPI binds one content type per body, so the routes that take both (search, embed) read the
body here and validate it against their model themselves."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

T = TypeVar("T", bound=BaseModel)


async def read_body(request: Request, files: tuple[str, ...], lists: tuple[str, ...],
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


def validate(model: type[T], data: Any, where: str = "body") -> T:
    """Errors come back as FastAPI's own 422, located in ``where`` like those it finds itself."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        errors = e.errors(include_url=False, include_context=False, include_input=False)
        raise RequestValidationError([{**err, "loc": (where, *err["loc"])} for err in errors]) from None


def body_schemas(json_model: str, form_model: str) -> dict[str, Any]:
    """The OpenAPI request body of such a route, which FastAPI cannot see in its signature."""
    ref = "#/components/schemas/{}".format
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": ref(json_model)}},
        "multipart/form-data": {"schema": {"$ref": ref(form_model)}},
    }}}
