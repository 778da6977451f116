"""An indexed item: its metadata, its file, its thumbnail, items like it, and deleting it."""

from __future__ import annotations

import math
from email.utils import formatdate
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi import Query as QueryParam
from fastapi.responses import FileResponse

from mmsearch.api.deps import ItemIdPath, ServiceDep
from mmsearch.api.errors import ERRORS, WRITE_ERRORS
from mmsearch.api.media import FileParts, byte_ranges, etag_matches, media_type, served_type
from mmsearch.api.routes.search import similar_page, timed
from mmsearch.api.schemas import (
    BrowsePage,
    BrowseRequest,
    ErrorOut,
    ItemOut,
    ItemVectorsOut,
    LookupOut,
    SearchPage,
    SegmentVector,
    SimilarFilters,
    TagsOut,
    TagsRequest,
)
from mmsearch.api.security import require_writer
from mmsearch.search.request import Metadata
from mmsearch.storage.catalog import ItemRow

router = APIRouter(tags=["items"])

MEDIA_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The file, with its media type.",
          "content": {"image/*": {}, "audio/*": {}, "video/*": {}, "text/plain": {}, "application/octet-stream": {}}},
    206: {"description": "Part of the file (Range request, e.g. audio and video seeking); a Range that is "
                         "not a valid bytes range is ignored (RFC 9110 §14.2): the whole file."},
    304: {"description": "Not modified (If-None-Match)."},
    403: {"model": ErrorOut, "description": "The file is outside the catalog's roots."},
    404: ERRORS[404],
    416: {"model": ErrorOut, "description": "No part of the range is in the file; `Content-Range: bytes */SIZE`."},
}


@router.get("/items", response_model=LookupOut, responses={404: ERRORS[404]}, summary="Item ids of a file")
def lookup(service: ServiceDep, path: Annotated[str, QueryParam(min_length=1, max_length=4096, pattern=r"^/[^\x00]*$",
                                                               description="Absolute path of an indexed file.")]
           ) -> LookupOut:
    """Path to ids: the items an indexed file holds (404 when the catalog does not have it)."""
    return LookupOut(path=path, item_ids=service.base.lookup(path))


@router.get("/browse", response_model=BrowsePage, responses={400: ERRORS[400], 422: ERRORS[422]},
            summary="Items without a query")
def browse(service: ServiceDep, q: Annotated[BrowseRequest, QueryParam()]) -> BrowsePage:
    """Every item in path order, a page at a time, with their count: the page's view before a
    query, and a photo's captions (`ref`). The catalog filters of a search apply the same way
    (`path` folder or glob, `date_from`/`date_to`, `camera`, `near`, `min_size`,
    `min_duration`/`max_duration`, `ext`, `tags`; lists repeat: `ext=jpg&ext=png`). Read-only."""
    rows, total = service.base.browse(to=q.to, ref=q.ref, offset=q.offset, limit=q.limit, **q.where())
    end = q.offset + len(rows)
    return BrowsePage(items=[item_out(row) for row in rows], total=total, offset=q.offset, limit=q.limit,
                      next_offset=end if end < total and rows else None)


def item_out(row: ItemRow) -> ItemOut:
    """An item as GET /items/{id} and /browse show it."""
    pictured = row.modality in ("image", "video") or bool(row.ref_path and media_type(row.ref_path).startswith("image/"))
    return ItemOut(
        id=row.id, path=row.path, modality=row.modality, ordinal=row.ordinal, text=row.text,
        ref_path=row.ref_path, duration=row.duration, **Metadata.of(row),
        media_url=f"/items/{row.id}/media", similar_url=f"/items/{row.id}/similar",
        thumbnail_url=f"/items/{row.id}/thumbnail" if pictured else None)


@router.head("/items/{item_id}", response_model=ItemOut, include_in_schema=False)
@router.get("/items/{item_id}", response_model=ItemOut, responses={404: ERRORS[404]}, summary="Item metadata")
def item(item_id: ItemIdPath, service: ServiceDep) -> ItemOut:
    return item_out(service.base.item(item_id))


@router.put("/items/{item_id}/tags", response_model=TagsOut, dependencies=[Depends(require_writer)],
            responses={400: ERRORS[400], 404: ERRORS[404], 422: ERRORS[422], **WRITE_ERRORS},
            summary="Change an item's tags")
def put_tags(item_id: ItemIdPath, req: TagsRequest, service: ServiceDep) -> TagsOut:
    """Remove, then add plain tags, then set `key=value` pairs: `{"add": ["beach"], "remove":
    ["todo"], "set": {"rating": "5"}}`. Answers the item's tags after; search with `tags`."""
    return TagsOut(id=item_id, tags=service.tag(item_id, add=req.add, remove=req.remove, set=req.set))


@router.delete("/items/{item_id}", status_code=204, response_class=Response,
               dependencies=[Depends(require_writer)], responses={404: ERRORS[404], **WRITE_ERRORS},
               summary="Delete an item")
def delete_item(item_id: ItemIdPath, service: ServiceDep) -> Response:
    """Remove an item from the catalog and the indexes. Its file stays on disk, and a later
    scan brings it back only if the file changes."""
    service.delete(item_id)
    return Response(status_code=204)


@router.get("/items/{item_id}/similar", response_model=SearchPage, responses=ERRORS, summary="More like this")
def item_similar(item_id: ItemIdPath, f: Annotated[SimilarFilters, QueryParam()], response: Response,
                 service: ServiceDep) -> SearchPage:
    """Items like this one: the page's "more like this"; `at` starts from a moment of a sound or video."""
    page = similar_page(service, [item_id], f)
    timed(response, page)
    return page


@router.get("/items/{item_id}/vector", response_model=ItemVectorsOut, responses={404: ERRORS[404]},
            summary="The item's stored vectors")
def item_vector(item_id: ItemIdPath, service: ServiceDep) -> ItemVectorsOut:
    """The item's vectors as stored, with their collection and embedding (FAISS) id: one per
    collection it is in (a note is in clip.text and clap.text), one per window for a sound."""
    found = service.base.vectors([item_id])
    return ItemVectorsOut(item_id=item_id, vectors=[
        SegmentVector(collection=c, embedding_id=e, start=None if math.isnan(a) else a, end=None if math.isnan(b) else b,
                      vector=v)
        for c, part in found.items()
        for e, a, b, v in zip(part.ids.tolist(), part.start.tolist(), part.end.tolist(), part.vectors.tolist())])


@router.head("/items/{item_id}/media", response_class=FileResponse, responses=MEDIA_RESPONSES,
             summary="The item's file: headers only")
def item_media_head(item_id: ItemIdPath, request: Request, service: ServiceDep) -> Response:
    """What GET would send, without the body: type, length, `Accept-Ranges` (players probe with it)."""
    return item_media(item_id, request, service)


@router.get("/items/{item_id}/media", response_class=FileResponse, responses=MEDIA_RESPONSES,
            summary="The item's file")
def item_media(item_id: ItemIdPath, request: Request, service: ServiceDep) -> Response:
    """The indexed file itself, as the type the catalog read from its content, with HTTP range
    requests (so audio and video players can seek) and If-None-Match (so a browser's copy is reused)."""
    row = service.base.item(item_id)
    real = service.guard.check(row.path)
    st = real.stat()
    etag, modified = f'"{st.st_mtime_ns:x}-{st.st_size:x}"', formatdate(st.st_mtime, usegmt=True)
    headers = {"ETag": etag, "Last-Modified": modified, "Cache-Control": "private, max-age=3600",
               "Content-Security-Policy": "sandbox; default-src 'none'"}
    if not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    asked, if_range = request.headers.get("range"), request.headers.get("if-range")
    ranges = byte_ranges(asked, st.st_size) if asked is not None and if_range in (None, etag, modified) else None
    if ranges == []:
        raise HTTPException(416, f"no part of the range asked for is in the file, which has {st.st_size} bytes",
                            headers={"Content-Range": f"bytes */{st.st_size}"})
    return FileParts(real, ranges, stat_result=st, media_type=served_type(row.path, row.facts.mime),
                     content_disposition_type="inline", filename=real.name, headers=headers)


def not_modified(request: Request, etag: str) -> bool:
    """The client's copy is current: If-None-Match names ``etag`` (a 304 for GET and HEAD)."""
    header = ", ".join(request.headers.getlist("if-none-match"))
    return bool(header) and etag_matches(header, etag)


@router.head("/items/{item_id}/thumbnail", response_class=Response, include_in_schema=False)
@router.get("/items/{item_id}/thumbnail", response_class=Response, summary="Thumbnail",
            responses={200: {"content": {"image/jpeg": {}}, "description": "A JPEG thumbnail."},
                       304: {"description": "Not modified (If-None-Match)."},
                       403: MEDIA_RESPONSES[403], 404: ERRORS[404],
                       422: {"model": ErrorOut, "description": "A bad `size` or `t`, or the image or video "
                                                               "cannot be read any more."}})
def item_thumbnail(item_id: ItemIdPath, request: Request, service: ServiceDep,
                   size: Annotated[int, QueryParam(ge=16, le=1024, description="Longest side, px.")] = 256,
                   # allow_inf_nan: NaN is refused as not finite (it fails the bounds with a misleading reason)
                   t: Annotated[float | None, QueryParam(ge=0, le=1e7, allow_inf_nan=False,
                                                         description="Videos: the frame shown at this "
                                                         "many seconds (a result's `start`); default: the "
                                                         "video's most representative frame.")] = None
                   ) -> Response:
    """A JPEG of an image item, of the indexed image a caption describes, or of a video's frame."""
    row = service.base.item(item_id)
    picture = service.guard.picture_of(row)
    at = None
    if row.modality == "video":
        at = t if t is not None else representative_time(service.base, item_id)
    data, etag = service.thumbnails.get(picture, size, at)
    headers = {"ETag": etag, "Cache-Control": "private, max-age=86400"}
    if not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type="image/jpeg", headers=headers)


def representative_time(engine: Any, item_id: int) -> float:
    """The start of the video's frame nearest the mean of its frames (its medoid in CLIP's space):
    a frame that looks like the video as a whole, not a title card. 0 for a video without frames."""
    import numpy as np

    frames = engine.vectors([item_id], collection="clip.video").get("clip.video")
    if frames is None or not len(frames.ids):
        return 0.0
    scores = frames.vectors @ frames.vectors.mean(axis=0)
    start = float(frames.start[int(np.argmax(scores))])
    return 0.0 if math.isnan(start) else start
