"""What a search asks for and what it answers: the models the CLI, the HTTP API and Python share."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta, timezone
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from mmsearch.search.scoring import DISLIKE_WEIGHT, Scoring
from mmsearch.storage.filters import Filter

Target = Literal["image", "text", "audio", "video", "all"]
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", re.IGNORECASE)
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


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


def _blank_is_none(value: str | None) -> str | None:
    """Text of only spaces is no text: a query of it is an empty query."""
    return value if value is None or value.strip() else None


QueryText = Annotated[CleanText | None, AfterValidator(_blank_is_none)]


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


Weight = Annotated[float, AfterValidator(_finite)]
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]  # a time or a length: NaN is "not finite", not "< 0"


def _date_bound(value: Any) -> Any:
    """"2024-05-01" is a day; anything longer an ISO date-time ("2024-05-01T18:00", "...Z")."""
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            return date.fromisoformat(text)
        try:
            return datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{value!r} is not a day (2024-05-01) or an ISO date-time (2024-05-01T18:00, "
                             "...Z, ...+02:00)") from None
    return value


def _near(value: Any) -> Any:
    """"lat,lon,km" (a query string, a CLI option) or three numbers."""
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")]
    if isinstance(value, (list, tuple)) and len(value) != 3:
        raise ValueError("near is lat,lon,km: three numbers, e.g. 48.85,2.35,5")
    return value


def _check_near(value: tuple[float, float, float]) -> tuple[float, float, float]:
    lat, lon, km = value
    if not (-90 <= lat <= 90 and -180 <= lon <= 180 and 0 < km <= 20_040):
        raise ValueError("near is lat,lon,km: lat in -90..90, lon in -180..180, km in (0, 20040]")
    return value


def _nonempty_path(value: str) -> str:
    if not value.strip():
        raise ValueError("give a folder or a glob (an empty path would match everything)")
    return value


PathPattern = Annotated[CleanText, AfterValidator(_nonempty_path)]


def _size(value: Any) -> Any:
    """Bytes, or a size with a unit: "500k", "2MB", "1.5 GiB" (powers of 1024)."""
    if isinstance(value, str):
        match = _SIZE.fullmatch(value)
        if match is None:
            raise ValueError(f"{value!r} is not a size: bytes, or a number with k, M, G or T (powers of 1024), "
                             "e.g. 2MB")
        return int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    return value


def _extensions(value: Any) -> Any:
    """"jpg,png" or ["jpg", ".PNG"]: lower case, without dots."""
    if isinstance(value, str):
        value = value.split(",")
    if isinstance(value, (list, tuple)):
        value = [p.strip().lower().lstrip(".") if isinstance(p, str) else p for item in value
                 for p in (item.split(",") if isinstance(item, str) else [item])]
        value = [p for p in value if p != ""]
    return value


DateBound = Annotated[datetime | date, BeforeValidator(_date_bound)]
Near = Annotated[tuple[float, float, float], BeforeValidator(_near), AfterValidator(_check_near)]
Size = Annotated[int, BeforeValidator(_size), Field(ge=0, le=2**62)]
Extensions = Annotated[list[Annotated[str, Field(min_length=1, max_length=16, pattern=r"^[a-z0-9_+-]+$")]],
                       BeforeValidator(_extensions)]


def epoch(value: date | datetime, *, end: bool = False) -> int:
    """Seconds since 1970 (UTC; a naive date-time is UTC). A day starts at midnight, or with
    ``end`` is taken through its last second."""
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day, tzinfo=timezone.utc) + (
            timedelta(days=1, seconds=-1) if end else timedelta())
    elif value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return int(value.timestamp() // 1)


class Where(BaseModel):
    """Which items, by what the catalog knows of them (path, date, camera, place, size, duration,
    extension, tags): every query form and browsing take these, on every face, and they compile to
    one SQL filter (storage/filters.py). Unknown fields are refused, so a typo (``min_szie=``) is
    an error."""

    model_config = ConfigDict(extra="forbid")

    path: PathPattern | None = Field(
        None, description="Only files under this folder, or matching this glob (`*`, `?`, `[...]` within a "
        "folder, `**` across folders); relative ones start at each indexed root.")
    date_from: DateBound | None = Field(None, description="Only items dated on or after this day or ISO date-time "
                                        "(UTC): the EXIF date taken, else the file's modification time.")
    date_to: DateBound | None = Field(None, description="... and on or before this one (a day: through its end).")
    camera: CleanText | None = Field(None, min_length=1, max_length=130, description="Camera: a case-insensitive "
                                     "prefix of its make and model ('canon', 'canon eos 5d') or of the model "
                                     "alone ('eos 5d', 'iphone').")
    near: Near | None = Field(None, description="`lat,lon,km`: only photos taken within km of this place "
                              "(EXIF GPS).")
    min_size: Size | None = Field(None, description="Only files of at least this size: bytes, or '500k', '2MB'.")
    min_duration: Seconds | None = Field(None, description="Only sounds and videos at least this long (seconds).")
    max_duration: Seconds | None = Field(None, description="Only sounds and videos at most this long (seconds).")
    ext: Extensions = Field(default_factory=list, max_length=32,
                            description="Only files with one of these extensions ('jpg', 'png').")
    tags: list[Annotated[CleanText, Field(min_length=1, max_length=330)]] = Field(
        default_factory=list, max_length=32, description="Only items with all of these tags: `tag` (any "
        "value), or `key=value`.")

    @model_validator(mode="after")
    def _lengths_meet(self) -> Where:
        if self.min_duration is not None and self.max_duration is not None and self.min_duration > self.max_duration:
            raise ValueError(f"min_duration ({self.min_duration:g} s) is more than max_duration "
                             f"({self.max_duration:g} s): nothing could match")
        return self

    def filter(self) -> Filter:
        """The SQL side of the query's filters (storage/filters.py)."""
        return Filter(
            path=self.path,
            date_from=epoch(self.date_from) if self.date_from is not None else None,
            date_to=epoch(self.date_to, end=True) if self.date_to is not None else None,
            camera=self.camera.strip().lower() if self.camera else None, near=self.near,
            min_size=self.min_size, min_duration=self.min_duration, max_duration=self.max_duration,
            ext=tuple(sorted(set(self.ext))), tags=tuple(sorted({t.strip() for t in self.tags})))


class Filters(Where):
    """Which results and how many: every query form (search, similar, recommend) takes these, on
    every face: the catalog filters of Where, and those that need scores."""

    to: Target | None = Field(None, description="Modality to return. Default: all media for a text "
                              "query (one calibrated list), the query's own modality (and videos) for an "
                              "image or sound.")
    k: int = Field(10, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=10_000)
    min_score: float | None = Field(None, ge=-1.0, le=1.0)
    diversity: float = Field(0.0, ge=0.0, le=1.0, description="0: pure relevance; >0: MMR diversity.")
    exclude_ids: list[int] = Field(default_factory=list, description="Items never returned (e.g. already seen).")
    dedup: float | None = Field(None, gt=0.0, le=1.0, description="Collapse results within this cosine of a "
                                "better one (near duplicates), e.g. 0.95.")


class Term(BaseModel):
    """One weighted part of a query: a text, a picture or a sound. A negative weight steers away
    from it (``mmsearch search --add 2:beach --add dog.jpg --sub 0.5:night``)."""

    model_config = ConfigDict(extra="forbid")

    text: CleanText | None = None
    image: bytes | None = Field(None, exclude=True)
    audio: bytes | None = Field(None, exclude=True)
    weight: Weight = Field(1.0, description="Its weight in the sum; negative: subtracted.")

    @model_validator(mode="after")
    def _one_thing(self) -> "Term":
        if sum(x is not None for x in (self.text, self.image, self.audio)) != 1:
            raise ValueError("a term is exactly one of text, image or audio")
        if self.weight == 0:
            raise ValueError("a term's weight must not be 0")
        return self


AT_DESC = ("Seconds into the liked video or sound: its frame or window at that moment is the query, "
           "not the mean of all of them (one liked item only).")

class Query(Filters):
    """What to look for and where. Positive parts are summed per space, negatives subtracted."""

    text: QueryText = Field(None, description="Text query.")
    image: bytes | None = Field(None, description="Image file content.", exclude=True)
    audio: bytes | None = Field(None, description="Audio file content.", exclude=True)
    video: bytes | None = Field(None, description="Video file content: its frames (CLIP) and its sound track "
                                "(CLAP), each averaged, as an indexed video is sampled.", exclude=True)
    item_ids: list[int] = Field(default_factory=list, description="Items whose vectors are the query (liked).")
    negative_ids: list[int] = Field(default_factory=list, description="Items to steer away from (disliked).")
    item_weights: dict[int, Weight] = Field(default_factory=dict, description="Weight of a liked or disliked "
                                            "item (default 1).")
    negative_text: list[CleanText] = Field(default_factory=list, description="Texts to steer away from.")
    terms: list[Term] = Field(default_factory=list, max_length=32, description="More texts, pictures and sounds, "
                              "each with its own weight (negative: steer away), added to the sum.")
    text_weight: Weight = 1.0
    image_weight: Weight = 1.0
    audio_weight: Weight = 1.0
    negative_weight: Weight = Field(0.5, description="Strength of negative texts and disliked items.")
    scoring: Scoring = Field("rocchio", description="rocchio: one blended vector; best: each candidate "
                             "scored by its best liked item less its closest disliked one.")
    at: Seconds | None = Field(None, description=AT_DESC)

    @property
    def has_text(self) -> bool:
        return bool(self.text) or any(t.text for t in self.terms)

    @property
    def has_image(self) -> bool:
        """Pictures to embed in CLIP's space: an image, image terms, or a video's frames."""
        return self.image is not None or self.video is not None or any(t.image is not None for t in self.terms)

    @property
    def has_audio(self) -> bool:
        return self.audio is not None or any(t.audio is not None for t in self.terms)

    @model_validator(mode="after")
    def _items_agree(self) -> "Query":
        self.negative_text = [t for t in self.negative_text if t.strip()]  # only spaces: no text
        both = set(self.item_ids) & set(self.negative_ids)
        if both:
            raise ValueError(f"item {min(both)} is both liked and disliked")
        stray = set(self.item_weights) - set(self.item_ids) - set(self.negative_ids)
        if stray:
            raise ValueError(f"item_weights names item {min(stray)}, which is neither liked nor disliked")
        if self.at is not None and len(self.item_ids) != 1:
            raise ValueError("at (seconds into a video or a sound) needs exactly one item id")
        return self


ItemsWithWeights = list[int] | dict[int, Weight]


class Profile(Filters):
    """A recommendation: liked and disliked items (a list of ids, or ids to weights), optionally a
    text, and the usual filters. It runs as a Query whose vector comes from the items."""

    like: ItemsWithWeights = Field(default_factory=list, description="Liked item ids, or ids to weights.")
    dislike: ItemsWithWeights = Field(default_factory=list, description="Disliked item ids, or ids to weights.")
    text: QueryText = Field(None, description="Text to steer by (e.g. \"at night\").")
    text_weight: Weight = 1.0
    dislike_weight: Weight = Field(DISLIKE_WEIGHT, description="Strength of the disliked items (Rocchio's "
                                    "gamma over beta; see docs/search.md).")
    scoring: Scoring = Field("rocchio", description=Query.model_fields["scoring"].description)
    at: Seconds | None = Field(None, description=AT_DESC)

    @model_validator(mode="after")
    def _something_liked(self) -> "Profile":
        if not self.like and not self.text:
            raise ValueError("give at least one liked item or a text")
        for name in ("like", "dislike"):  # a negative weight would turn a like into a dislike
            if any(w <= 0 for w in weighted(getattr(self, name)).values()):
                raise ValueError(f"{name}: weights are positive (a disliked item goes in dislike)")
        return self

    def query(self, to: str | None = None) -> Query:
        """The profile as a Query; ``to`` fills in a default modality when the profile has none."""
        like, dislike = weighted(self.like), weighted(self.dislike)
        weights = {i: w for i, w in {**like, **dislike}.items() if w != 1.0}
        fields = self.model_dump(include=set(Filters.model_fields))
        fields["to"] = self.to or to
        return Query(**fields, text=self.text, text_weight=self.text_weight, item_ids=list(like),
                     negative_ids=list(dislike), item_weights=weights, negative_weight=self.dislike_weight,
                     scoring=self.scoring, at=self.at)


def weighted(items: Sequence[int] | Mapping[int, float]) -> dict[int, float]:
    """Ids to weights, from a list of ids (weight 1 each) or a mapping."""
    if isinstance(items, Mapping):
        return {int(i): float(w) for i, w in items.items()}
    return {int(i): 1.0 for i in items}


class Metadata(BaseModel):
    """What the catalog knows about an item's file, and the user's tags: returned with every hit
    and by an item's details. Null: unknown (not a photo, no EXIF, an unreadable field)."""

    size: int | None = Field(None, description="File size in bytes.")
    modified: datetime | None = Field(None, description="The file's modification time (UTC).")
    mime: str | None = Field(None, description="Media type, e.g. image/jpeg.")
    width: int | None = Field(None, description="Pictures: width in pixels, as shown (after the EXIF orientation).")
    height: int | None = None
    taken_at: datetime | None = Field(None, description="EXIF date taken (UTC when the photo gives no offset).")
    camera_make: str | None = None
    camera_model: str | None = None
    lens: str | None = None
    lat: float | None = Field(None, description="EXIF GPS latitude, degrees north.")
    lon: float | None = Field(None, description="EXIF GPS longitude, degrees east.")
    orientation: int | None = Field(None, description="EXIF orientation, 1-8.")
    tags: list[str] = Field(default_factory=list, description="The user's tags: `tag` or `key=value`.")

    @staticmethod
    def of(row: Any) -> dict[str, Any]:
        """The fields, from a catalog ItemRow."""
        f = row.facts
        return dict(size=row.size, modified=datetime.fromtimestamp(row.mtime_ns / 1e9, tz=timezone.utc)
                    if row.mtime_ns >= 0 else None, mime=f.mime, width=f.width, height=f.height,
                    taken_at=f.taken_at, camera_make=f.camera_make, camera_model=f.camera_model, lens=f.lens,
                    lat=f.lat, lon=f.lon, orientation=f.orientation, tags=row.tags)


class _Found(BaseModel):
    id: int
    path: str
    modality: str
    score: float = Field(description="What the list is ordered by: the cosine, or where images, texts and "
                         "sounds are merged into one list, the calibrated score (a z-score against the "
                         "query's background in each collection; see docs/search.md).")
    cosine: float = Field(description="Cosine similarity in the result's embedding space (with scoring "
                          "`best`: the best liked item's cosine less the closest disliked one's); "
                          "`min_score` compares this.")
    calibrated: float | None = Field(None, description="The calibrated score, when lists were merged (then "
                                     "equal to `score`).")
    collection: str
    text: str | None = None
    ref_path: str | None = Field(None, description="For captions: the media file they describe.")
    start: float | None = Field(None, description="Audio and video: where the best-matching window or "
                                "frame's span starts (s).")
    end: float | None = Field(None, description="... and where it ends (s).")
    duration: float | None = Field(None, description="Audio and video: the item's length (s).")


class Hit(Metadata, _Found):
    """One result: the item, its score, and what its file says (Metadata, after the item's own fields)."""


TotalRelation = Literal["eq", "lte", "gte"]


class SearchResponse(BaseModel):
    results: list[Hit]
    timings_ms: dict[str, float]
    has_more: bool = Field(False, description="Whether a next page (offset + k) has results: the search "
                           "looks one result beyond the page, so this costs nothing.")
    total: int | None = Field(None, description="How many items the query ranks, over all its pages: those "
                              "of the modalities it searches that pass its filters, less the excluded (and "
                              "liked or disliked) ones. Counted in SQL up to 10,000, never by scoring; see "
                              "`total_relation`. None in batch answers (profiles in bulk are not counted).")
    total_relation: TotalRelation | None = Field(None, description="`eq`: `total` is exact. `gte`: a lower bound "
                                                 "(over 10,000 matches the count stops). `lte`: an upper bound: "
                                                 "`min_score` or `dedup` drop ranked items after scoring, and how "
                                                 "many is known only on the last page (there `total` is exact).")


def default_target(q: Query) -> str:
    """Without ``to``, a text query searches all media and a media query its own modality."""
    if q.to is not None:
        return q.to
    if q.has_text:
        return "all"
    if q.video is not None:
        return "video"
    if q.has_image:
        return "image"
    if q.has_audio:
        return "audio"
    return "all"
