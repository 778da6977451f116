"""Near-duplicate groups of a collection: a photo library's clean-up list."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from fastapi import Query as QueryParam

from mmsearch.api.deps import ServiceDep
from mmsearch.api.errors import ERRORS
from mmsearch.api.schemas import DuplicatesResponse

router = APIRouter(tags=["duplicates"])

Collection = Annotated[str, QueryParam(pattern=r"^(clip|clap)\.(image|text|audio|video)$",
                                       description="Which vectors: clip.image, clip.text, clip.video (video "
                                                   "frames), clap.audio, clap.text, clap.video (sound tracks).")]


@router.get("/duplicates", response_model=DuplicatesResponse, responses={404: ERRORS[404], 422: ERRORS[422]},
            summary="Near-duplicate groups")
def duplicates(service: ServiceDep,
               threshold: Annotated[float, QueryParam(gt=0.0, le=1.0, description="Cosine at or above which two "
                                                      "items are near duplicates.")] = 0.95,
               collection: Collection = "clip.image",
               limit: Annotated[int, QueryParam(ge=1, le=100_000, description="Largest groups only.")] = 1000,
               ) -> DuplicatesResponse:
    """Groups of items within `threshold` of each other (a photo, its crops and resizes),
    largest first. A batched kNN over the whole collection: seconds at 100,000 items."""
    return service.base.duplicates(threshold=threshold, collection=collection, limit=limit)
