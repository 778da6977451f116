"""What a search asks for and what it answers: the models the CLI, the HTTP API and Python share."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field

Target = Literal["image", "text", "audio", "all"]


def clean_text(value: str | None) -> str | None:
    """NUL bytes and lone surrogates (undecodable bytes from a shell) cannot be stored, tokenised
    or matched: every face refuses them through this one check."""
    if value is None:
        return value
    if "\x00" in value:
        raise ValueError("text must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid UTF-8 (no lone surrogates)") from None
    return value


CleanText = Annotated[str, AfterValidator(clean_text)]


class Query(BaseModel):
    """What to look for and where. Positive parts are summed per space, negatives subtracted."""

    text: CleanText | None = Field(None, description="Text query.")
    image: bytes | None = Field(None, description="Image file content.", exclude=True)
    audio: bytes | None = Field(None, description="Audio file content.", exclude=True)
    item_ids: list[int] = Field(default_factory=list, description="Items whose vectors are the query.")
    negative_text: list[CleanText] = Field(default_factory=list, description="Texts to steer away from.")
    text_weight: float = 1.0
    image_weight: float = 1.0
    audio_weight: float = 1.0
    negative_weight: float = 0.5
    to: Target | None = Field(None, description="Modality to return. Default: all media for a text "
                              "query (one calibrated list), the query's own modality for an image or sound.")
    k: int = Field(10, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=10_000)
    path: CleanText | None = Field(None, description="Only files under this folder, or matching this glob "
                                   "(`*`, `?`, `[...]` within a folder, `**` across folders); "
                                   "relative ones start at each indexed root.")
    min_score: float | None = Field(None, ge=-1.0, le=1.0)
    diversity: float = Field(0.0, ge=0.0, le=1.0, description="0: pure relevance; >0: MMR diversity.")
    exclude_ids: list[int] = Field(default_factory=list, description="Items never returned.")


class Hit(BaseModel):
    id: int
    path: str
    modality: str
    score: float = Field(description="Cosine similarity in the result's embedding space.")
    calibrated: float | None = Field(None, description="Score on the cross-collection scale, when merged.")
    collection: str
    text: str | None = None
    ref_path: str | None = Field(None, description="For captions: the media file they describe.")
    start: float | None = Field(None, description="Audio: where the best-matching window starts (s).")
    end: float | None = None
    duration: float | None = None


class SearchResponse(BaseModel):
    results: list[Hit]
    timings_ms: dict[str, float]


def default_target(q: Query) -> str:
    """Without ``to``, a text query searches all media and a media query its own modality."""
    if q.to is not None:
        return q.to
    if q.text:
        return "all"
    if q.image is not None:
        return "image"
    if q.audio is not None:
        return "audio"
    return "all"
