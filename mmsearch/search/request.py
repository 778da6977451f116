"""What a search asks for and what it answers: the models the CLI, the HTTP API and Python share."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from mmsearch.search.scoring import DISLIKE_WEIGHT, Scoring

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


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


Weight = Annotated[float, AfterValidator(_finite)]


class Filters(BaseModel):
    """Which results and how many: every query form (search, similar, recommend) takes these, on
    every face. Unknown fields are refused, so a typo (``tpo=``, ``min_szie=``) is an error."""

    model_config = ConfigDict(extra="forbid")

    to: Target | None = Field(None, description="Modality to return. Default: all media for a text "
                              "query (one calibrated list), the query's own modality for an image or sound.")
    k: int = Field(10, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=10_000)
    path: CleanText | None = Field(None, description="Only files under this folder, or matching this glob "
                                   "(`*`, `?`, `[...]` within a folder, `**` across folders); "
                                   "relative ones start at each indexed root.")
    min_score: float | None = Field(None, ge=-1.0, le=1.0)
    diversity: float = Field(0.0, ge=0.0, le=1.0, description="0: pure relevance; >0: MMR diversity.")
    exclude_ids: list[int] = Field(default_factory=list, description="Items never returned (e.g. already seen).")


class Query(Filters):
    """What to look for and where. Positive parts are summed per space, negatives subtracted."""

    text: CleanText | None = Field(None, description="Text query.")
    image: bytes | None = Field(None, description="Image file content.", exclude=True)
    audio: bytes | None = Field(None, description="Audio file content.", exclude=True)
    item_ids: list[int] = Field(default_factory=list, description="Items whose vectors are the query (liked).")
    negative_ids: list[int] = Field(default_factory=list, description="Items to steer away from (disliked).")
    item_weights: dict[int, Weight] = Field(default_factory=dict, description="Weight of a liked or disliked "
                                            "item (default 1).")
    negative_text: list[CleanText] = Field(default_factory=list, description="Texts to steer away from.")
    text_weight: Weight = 1.0
    image_weight: Weight = 1.0
    audio_weight: Weight = 1.0
    negative_weight: Weight = Field(0.5, description="Strength of negative texts and disliked items.")
    scoring: Scoring = Field("rocchio", description="rocchio: one blended vector; best: each candidate "
                             "scored by its best liked item less its closest disliked one.")

    @model_validator(mode="after")
    def _items_agree(self) -> "Query":
        both = set(self.item_ids) & set(self.negative_ids)
        if both:
            raise ValueError(f"item {min(both)} is both liked and disliked")
        stray = set(self.item_weights) - set(self.item_ids) - set(self.negative_ids)
        if stray:
            raise ValueError(f"item_weights names item {min(stray)}, which is neither liked nor disliked")
        return self


ItemsWithWeights = list[int] | dict[int, Weight]


class Profile(Filters):
    """A recommendation: liked and disliked items (a list of ids, or ids to weights), optionally a
    text, and the usual filters. It runs as a Query whose vector comes from the items."""

    like: ItemsWithWeights = Field(default_factory=list, description="Liked item ids, or ids to weights.")
    dislike: ItemsWithWeights = Field(default_factory=list, description="Disliked item ids, or ids to weights.")
    text: CleanText | None = Field(None, description="Text to steer by (e.g. \"at night\").")
    text_weight: Weight = 1.0
    dislike_weight: Weight = Field(DISLIKE_WEIGHT, description="Strength of the disliked items (Rocchio's "
                                    "gamma over beta; see docs/search.md).")
    scoring: Scoring = Field("rocchio", description=Query.model_fields["scoring"].description)

    @model_validator(mode="after")
    def _something_liked(self) -> "Profile":
        if not self.like and not self.text:
            raise ValueError("give at least one liked item or a text")
        return self

    def query(self, to: str | None = None) -> Query:
        """The profile as a Query; ``to`` fills in a default modality when the profile has none."""
        like, dislike = weighted(self.like), weighted(self.dislike)
        weights = {i: w for i, w in {**like, **dislike}.items() if w != 1.0}
        fields = self.model_dump(include=set(Filters.model_fields))
        fields["to"] = self.to or to
        return Query(**fields, text=self.text, text_weight=self.text_weight, item_ids=list(like),
                     negative_ids=list(dislike), item_weights=weights, negative_weight=self.dislike_weight,
                     scoring=self.scoring)


def weighted(items: Sequence[int] | Mapping[int, float]) -> dict[int, float]:
    """Ids to weights, from a list of ids (weight 1 each) or a mapping."""
    if isinstance(items, Mapping):
        return {int(i): float(w) for i, w in items.items()}
    return {int(i): 1.0 for i in items}


class Hit(BaseModel):
    id: int
    path: str
    modality: str
    score: float = Field(description="Cosine similarity in the result's embedding space (with scoring "
                         "`best`: the best liked item's cosine less the closest disliked one's).")
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
