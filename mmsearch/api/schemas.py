"""Request and response models of the HTTP API.

Search reuses the engine's own ``Query``, ``Hit`` and ``SearchResponse``: a request model is
``Query`` less its raw media fields (those arrive as multipart uploads), with tighter bounds on
what a stranger may send (ids that fit SQL integers, list lengths, text sizes), so a bad request
is a 422 with a reason and never reaches the engine.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, computed_field, model_validator

from mmsearch.engine import Embedding, Embeddings
from mmsearch.search.duplicates import DuplicatesResponse
from mmsearch.search.paging import BROWSE_MAX_LIMIT, BROWSE_MAX_OFFSET
from mmsearch.search.request import (
    CleanText,
    DateBound,
    Extensions,
    Hit,
    Metadata,
    Near,
    PathPattern,
    Profile,
    Query,
    SearchResponse,
    Seconds,
    Size,
    Target,
)
from mmsearch.search.request import Weight as FiniteWeight
from mmsearch.search.scoring import DISLIKE_WEIGHT, Scoring

MAX_ID = 2**63 - 1  # SQL BIGINT; larger ids could only be a mistake
MAX_TEXT = 4_000  # characters; CLIP/CLAP read far fewer tokens anyway
MAX_QUERY_IDS = 100


CleanStr = CleanText  # the engine's own check: NUL bytes and lone surrogates are refused
ItemId = Annotated[int, Field(ge=1, le=MAX_ID)]
Space = Literal["clip", "clap"]


Weight = Annotated[FiniteWeight, Field(ge=-100.0, le=100.0)]


def _desc(name: str) -> str | None:
    return Query.model_fields[name].description


class Where(BaseModel):
    """Which items, by what the catalog knows of them: shared by search, similar, recommend and browse."""

    model_config = ConfigDict(extra="forbid")

    path: Annotated[PathPattern, Field(max_length=4096)] | None = Field(None, description=_desc("path"))
    # the engine's own filter fields, with its validation (dates, sizes, "lat,lon,km")
    date_from: DateBound | None = Field(None, description=_desc("date_from"))
    date_to: DateBound | None = Field(None, description=_desc("date_to"))
    camera: Annotated[CleanStr, Field(min_length=1, max_length=130)] | None = Field(None, description=_desc("camera"))
    near: Near | None = Field(None, description=_desc("near"))
    min_size: Size | None = Field(None, description=_desc("min_size"))
    min_duration: Seconds | None = Field(None, description=_desc("min_duration"))
    max_duration: Seconds | None = Field(None, description=_desc("max_duration"))
    ext: Extensions = Field(default_factory=list, max_length=32, description=_desc("ext"))
    tags: list[Annotated[CleanStr, Field(min_length=1, max_length=330)]] = Field(
        default_factory=list, max_length=32, description=_desc("tags"))

    def where(self) -> dict[str, Any]:
        """The catalog filters, as the engine's fields of the same names."""
        return self.model_dump(include=set(Where.model_fields))


class Filters(Where):
    """Where to look and how many: shared by search, similar and recommend."""

    to: Target | None = Field(None, description=_desc("to"))
    k: int = Field(10, ge=1, le=1000, description="Number of results (page size).")
    offset: int = Field(0, ge=0, le=10_000, description="Results to skip: the page start.")
    min_score: float | None = Field(None, ge=-1.0, le=1.0, description="Drop results below this cosine.")
    diversity: float = Field(0.0, ge=0.0, le=1.0, description=_desc("diversity"))
    exclude_ids: list[ItemId] = Field(default_factory=list, max_length=1000, description=_desc("exclude_ids"))
    dedup: float | None = Field(None, gt=0.0, le=1.0, description=_desc("dedup"))

    def filters(self) -> dict[str, Any]:
        """The fields search and similar pass to the engine as Query fields (all but to and k)."""
        return self.model_dump(exclude={"to", "k"} | (set(type(self).model_fields) - set(Filters.model_fields)))


class BrowseRequest(Where):
    """Items without a query, in path order: a page of them, with the catalog filters of a search."""

    to: Target | None = Field(None, description="One modality; none (or `all`): every item.")
    ref: Annotated[CleanStr, Field(max_length=4096)] | None = Field(
        None, description="A media file's absolute path: the captions that describe it.")
    offset: int = Field(0, ge=0, le=BROWSE_MAX_OFFSET, description="Items to skip.")
    limit: int = Field(50, ge=1, le=BROWSE_MAX_LIMIT, description="Page size.")


class SearchRequest(Filters):
    """A query: text, item ids, or both (the multipart form adds an image or audio file)."""

    text: Annotated[CleanStr, Field(max_length=MAX_TEXT)] | None = Field(None, description=_desc("text"))
    item_ids: list[ItemId] = Field(default_factory=list, max_length=MAX_QUERY_IDS, description=_desc("item_ids"))
    negative_text: list[Annotated[CleanStr, Field(max_length=MAX_TEXT)]] = Field(
        default_factory=list, max_length=16, description=_desc("negative_text"))
    text_weight: Weight = 1.0
    image_weight: Weight = 1.0
    audio_weight: Weight = 1.0
    negative_weight: Weight = 0.5

    def to_query(self, image: bytes | None = None, audio: bytes | None = None, video: bytes | None = None) -> Query:
        """The engine's Query; a check only the Query makes is still a 400 with its reason, never a 500."""
        from mmsearch.engine import _checked

        with _checked():
            return Query(**self.model_dump(), image=image, audio=audio, video=video)


# An optional upload: a plain binary string in the schema, absent when not sent.
Upload = Annotated[bytes | None, WithJsonSchema({"type": "string", "format": "binary"})]


class SearchForm(SearchRequest):
    """``multipart/form-data`` search: the JSON fields as form fields, plus at most one file each."""

    image: Upload = Field(None, description="Image file as the query (or part of it).")
    audio: Upload = Field(None, description="Audio file as the query (or part of it).")
    video: Upload = Field(None, description="Video file as the query (or part of it): its frames and its sound "
                          "track, each averaged.")


class SearchPage(SearchResponse):
    """One page of results; ``has_more`` says whether another follows, and ``next_offset`` is its
    start (null on the last page)."""

    k: int
    offset: int
    next_offset: int | None = None


class SimilarFilters(Filters):
    """The filters of "more like this", and the moment of a sound or video it starts from."""

    at: Seconds | None = Field(None, le=1e7, description=Profile.model_fields["at"].description)


class SimilarRequest(SimilarFilters):
    """Items like these: their vectors are averaged into one query."""

    item_ids: list[ItemId] = Field(min_length=1, max_length=MAX_QUERY_IDS)


class SimilarBatchRequest(Filters):
    """One result list per item: e.g. recommendations for a page of items at once."""

    item_ids: list[ItemId] = Field(min_length=1, max_length=MAX_QUERY_IDS)
    k: int = Field(10, ge=1, le=100, description="Results per item.")


IdList = Annotated[list[ItemId], Field(max_length=MAX_QUERY_IDS)]
IdWeights = Annotated[dict[ItemId, Weight], Field(max_length=MAX_QUERY_IDS)]


def _pdesc(name: str) -> str | None:
    return Profile.model_fields[name].description


class RecommendRequest(Filters):
    """A profile: liked and disliked items (a list of ids, or an object of ids to weights, e.g.
    `{"12": 2.0, "40": 1}`), optionally a text, and the filters of a search."""

    like: IdList | IdWeights = Field(default_factory=list, description=_pdesc("like"))
    dislike: IdList | IdWeights = Field(default_factory=list, description=_pdesc("dislike"))
    text: Annotated[CleanStr, Field(max_length=MAX_TEXT)] | None = Field(None, description=_pdesc("text"))
    text_weight: Weight = 1.0
    dislike_weight: Weight = Field(DISLIKE_WEIGHT, description=_pdesc("dislike_weight"))
    scoring: Scoring = Field("rocchio", description=_pdesc("scoring"))
    at: Seconds | None = Field(None, le=1e7, description=_pdesc("at"))

    def profile(self) -> dict[str, Any]:
        return self.model_dump()


class RecommendBatchRequest(BaseModel):
    """Many profiles answered together (one batched ANN search): e.g. a page of users."""

    model_config = ConfigDict(extra="forbid")

    profiles: list[RecommendRequest] = Field(min_length=1, max_length=1000)


class BatchEntry(BaseModel):
    results: list[Hit] = Field(default_factory=list)
    error: str | None = Field(None, description="Why this entry got no list (e.g. an unknown item id).")


class RecommendBatchResponse(BaseModel):
    results: list[BatchEntry]
    timings_ms: dict[str, float]


class SimilarBatchEntry(BaseModel):
    item_id: int
    results: list[Hit] = Field(default_factory=list)
    error: str | None = Field(None, description="Why this item got no list (e.g. unknown id).")


class SimilarBatchResponse(BaseModel):
    results: list[SimilarBatchEntry]
    timings_ms: dict[str, float]


class EmbedRequest(BaseModel):
    """One text, or a list of them (``texts``) embedded together."""

    model_config = ConfigDict(extra="forbid")

    text: Annotated[CleanStr, Field(max_length=MAX_TEXT)] | None = None
    texts: list[Annotated[CleanStr, Field(max_length=MAX_TEXT)]] | None = Field(None, min_length=1, max_length=256)
    space: Space = Field("clip", description="clip: compare with images; clap: compare with sounds.")

    @model_validator(mode="after")
    def _one(self) -> "EmbedRequest":
        if (self.text is None) == (self.texts is None):
            raise ValueError("give text (one string) or texts (a list), not both")
        return self


class EmbedForm(BaseModel):
    """``multipart/form-data`` embed: exactly one of a text field, an image file or an audio file."""

    model_config = ConfigDict(extra="forbid")

    text: Annotated[CleanStr, Field(max_length=MAX_TEXT)] | None = None
    space: Space | None = None
    image: Upload = Field(None, description="Image file to embed (CLIP).")
    audio: Upload = Field(None, description="Audio file to embed (CLAP).")


class EmbeddingOut(Embedding):
    @computed_field  # type: ignore[prop-decorator]
    @property
    def dim(self) -> int:
        return len(self.vector)


class EmbeddingsOut(Embeddings):
    @computed_field  # type: ignore[prop-decorator]
    @property
    def dim(self) -> int:
        return len(self.vectors[0]) if self.vectors else 0


class SegmentVector(BaseModel):
    collection: str
    embedding_id: int = Field(description="Also the FAISS id.")
    start: float | None = Field(None, description="Audio: the window's start (s); null for a whole item.")
    end: float | None = None
    vector: list[float]


class ItemVectorsOut(BaseModel):
    item_id: int
    vectors: list[SegmentVector] = Field(description="One per collection the item is in; an audio item has "
                                         "one per window.")


class _ItemFields(BaseModel):
    id: int
    path: str
    modality: str
    ordinal: int = Field(description="Row of a captions file; 0 otherwise.")
    text: str | None = None
    ref_path: str | None = Field(None, description="For captions: the media file they describe.")
    duration: float | None = Field(None, description="Audio: length in seconds.")
    media_url: str
    thumbnail_url: str | None = Field(None, description="Null when the item has no picture.")
    similar_url: str


class ItemOut(Metadata, _ItemFields):
    """An item, then what its file says (size, dates, camera, place...) and its tags."""


class BrowsePage(BaseModel):
    """A page of items without a query (path order), and how many there are."""

    items: list[ItemOut]
    total: int = Field(description="Items that match, on every page.")
    offset: int
    limit: int
    next_offset: int | None = Field(None, description="The next page's start; null on the last page.")


class TagsRequest(BaseModel):
    """Changes to an item's tags, applied in this order: remove, add, set."""

    model_config = ConfigDict(extra="forbid")

    add: list[Annotated[CleanStr, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=100, description="Plain tags to add.")
    remove: list[Annotated[CleanStr, Field(min_length=1, max_length=330)]] = Field(
        default_factory=list, max_length=100, description="Tags or keys to remove (`key=value`: only with that value).")
    set: dict[Annotated[CleanStr, Field(min_length=1, max_length=64)], Annotated[CleanStr, Field(max_length=256)]] = \
        Field(default_factory=dict, max_length=100, description="Keys to set to values.")


class TagsOut(BaseModel):
    id: int
    tags: list[str] = Field(description="The item's tags after the change: `tag` or `key=value`.")


class LookupOut(BaseModel):
    path: str
    item_ids: list[int] = Field(description="One for a photo, a note or a sound; one per row of a captions file.")


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Annotated[CleanStr, Field(min_length=1, max_length=4096)] = Field(
        description="Folder to index: absolute, or relative to the first configured index root.")


JobState = Literal["queued", "running", "done", "failed", "cancelled"]


class JobOut(BaseModel):
    id: str
    path: str
    state: JobState
    done: int = Field(description="Files embedded so far.")
    total: int = Field(description="Files to embed (known once the scan is over; 0 before).")
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    report: dict[str, Any] | None = Field(None, description="The indexing report, when done.")
    error: str | None = None
    status: dict[str, Any] | None = Field(None, description="Progress as the CLI shows it: phase (scan, embed, "
                                          "index, done), files and items done and expected (items_total: null "
                                          "while unknown), media_seconds, elapsed_s and eta_s.")
    url: str


class JobList(BaseModel):
    jobs: list[JobOut]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    ready: bool
    reason: str | None = None
    models: dict[str, str] = Field(default_factory=dict, description="Loaded encoders by space.")
    audio: str | None = Field(None, description="Why audio search is off, when it is.")


class Stats(BaseModel):
    model_config = ConfigDict(extra="allow")

    catalog: str
    catalog_id: str = Field(description="Binds the catalog folder to its database.")
    database: str
    schema_version: str | None
    models: dict[str, dict[str, Any]]
    roots: list[str]
    files: dict[str, int]
    items: dict[str, int]
    collections: dict[str, Any]
    failures: list[dict[str, str]]
    runs: list[dict[str, Any]] = Field(default_factory=list, description="The last index runs, newest first "
                                       "(any face: CLI, HTTP job, Python): finished, roots and their counts.")
    service: dict[str, Any] = Field(default_factory=dict, description="This server: jobs, batching, limits.")


class CatalogInfo(BaseModel):
    roots: list[str] = Field(description="Indexed folders; media are served only from under these.")
    items: dict[str, int] = Field(description="Items by modality.")
    models: dict[str, str] = Field(description="Model spec of each embedding space.")


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="Where: the part of the request (body, query, path) and the field.")
    field: str = Field(description="The field, as a dotted name ('k', 'near', 'like.12').")
    msg: str = Field(description="What is wrong with it.")
    type: str = Field(description="pydantic's error type, e.g. less_than_equal.")


class ErrorOut(BaseModel):
    """Every error, in one shape: an RFC 9457 problem (``application/problem+json``)."""

    type: str = Field("about:blank", description="A URI naming the kind of problem; about:blank: the status says it.")
    title: str = Field(description="The HTTP status phrase, e.g. Bad Request.")
    status: int = Field(description="The HTTP status code.")
    detail: str = Field(description="Why the request failed, and what to change: one sentence.")
    errors: list[FieldError] | None = Field(None, description="Validation problems (422): one per field.")


__all__ = [
    "BatchEntry", "CatalogInfo", "DuplicatesResponse", "EmbedForm", "EmbedRequest", "EmbeddingOut",
    "EmbeddingsOut", "ErrorOut", "FieldError", "Filters", "Health", "Hit", "ItemOut", "ItemVectorsOut", "JobList", "JobOut",
    "JobRequest", "Readiness", "RecommendBatchRequest", "RecommendBatchResponse", "RecommendRequest", "SearchForm",
    "SearchPage", "SearchRequest", "SegmentVector", "SimilarBatchEntry", "SimilarBatchRequest",
    "SimilarBatchResponse", "SimilarRequest", "Stats", "TagsOut", "TagsRequest",
]
