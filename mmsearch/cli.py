"""The command line: a thin face over mmsearch.engine. ``--json`` prints machine-readable output."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional

import typer

from mmsearch.errors import MMSearchError, NotFound
from mmsearch.search.paging import BROWSE_MAX_LIMIT, BROWSE_MAX_OFFSET

if TYPE_CHECKING:  # imported where used: ``mmsearch --help`` stays light
    from mmsearch.settings import Settings

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Cross-modal semantic search over a media folder: images, audio and text.")

CatalogOpt = Annotated[Path, typer.Option("--catalog", "-c", help="Catalog directory.", envvar="MMSEARCH_CATALOG")]
DbOpt = Annotated[Optional[str], typer.Option("--db", help="SQLAlchemy URL (default: SQLite in the catalog).",
                                              envvar="MMSEARCH_DB_URL")]
ModelOpt = Annotated[Optional[str], typer.Option("--model", help="Image/text model spec, open_clip:ARCH@PRETRAINED.")]
AudioModelOpt = Annotated[Optional[str], typer.Option("--audio-model", help="Audio/text model spec, clap:HF_ID_OR_DIR.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
KOpt = Annotated[int, typer.Option("-k", "--k", min=1, max=1000, help="Number of results.")]
RuntimeOpt = Annotated[Optional[Literal["auto", "torch", "onnx"]], typer.Option(
    "--runtime", help="What runs the models: onnx (CPU, exported once and cached), torch, or auto (onnx on a CPU when "
    "onnxruntime is installed, torch on a GPU). Default: MMSEARCH_RUNTIME, else auto.")]
ToOpt = Annotated[Optional[Literal["image", "text", "audio", "video", "all"]], typer.Option(
    "--to", help="Return only this modality (default: all media for a text query, the query's own for a "
    "picture or a sound).")]
BrowseToOpt = Annotated[Optional[Literal["image", "text", "audio", "video", "all"]], typer.Option(
    "--to", help="Only this modality (default: all).")]
PathsOnlyOpt = Annotated[bool, typer.Option("--paths-only", "-f", help="Print only the paths, one a line, for pipes "
                                            "(a caption prints the photo it describes).")]
PreviewOpt = Annotated[bool, typer.Option("--preview", "-p", help="Show each picture inline, in terminals that can "
                                          "(iTerm2, WezTerm, kitty).")]
DeviceOpt = Annotated[Optional[Literal["auto", "cpu", "cuda"]], typer.Option(
    "--device", help="Where the models run (default: MMSEARCH_DEVICE, else auto: cuda when there is one).")]
OffsetOpt = Annotated[int, typer.Option("--offset", min=0, help="Skip this many results (paging).")]
DiversityOpt = Annotated[float, typer.Option("--diversity", min=0.0, max=1.0, help="MMR diversity, 0..1.")]
ExcludeOpt = Annotated[Optional[list[int]], typer.Option("--exclude", help="Never return this item (repeatable).")]
DEFAULT_CATALOG = Path(".mmsearch")
# Filters shared by search, similar, recommend and (those of Where) browse: each is the Query field of the
# same name (--tag fills tags, --exclude exclude_ids).
PathOpt = Annotated[Optional[str], typer.Option("--path", help="Only under this folder, or matching a glob.")]
MinScoreOpt = Annotated[Optional[float], typer.Option("--min-score", help="Drop results below this cosine.")]
DateFromOpt = Annotated[Optional[str], typer.Option(
    "--date-from", help="Only dated on or after this day (YYYY-MM-DD) or ISO time: EXIF date taken, else modified.")]
DateToOpt = Annotated[Optional[str], typer.Option("--date-to", help="... and on or before this one (a day: all of it).")]
CameraOpt = Annotated[Optional[str], typer.Option(
    "--camera", help="Camera: case-insensitive prefix of make and model ('canon eos') or of the model ('iphone').")]
NearOpt = Annotated[Optional[str], typer.Option("--near", help="LAT,LON,KM: photos taken within KM of a place.")]
MinSizeOpt = Annotated[Optional[str], typer.Option("--min-size", help="Only files of at least this size ('2MB').")]
MinDurationOpt = Annotated[Optional[float], typer.Option("--min-duration", help="Only sounds and videos at least this long (s).")]
MaxDurationOpt = Annotated[Optional[float], typer.Option("--max-duration", help="Only sounds and videos at most this long (s).")]
ExtOpt = Annotated[Optional[list[str]], typer.Option("--ext", help="Only these extensions (repeatable, or jpg,png).")]
TagOpt = Annotated[Optional[list[str]], typer.Option("--tag", help="Only items with this tag, or key=value (repeatable: all).")]
DedupOpt = Annotated[Optional[float], typer.Option("--dedup", help="Collapse results within this cosine of a better one (0.95).")]


def _print_version(value: bool) -> None:
    if value:
        from mmsearch import __version__

        typer.echo(f"mmsearch {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """Cross-modal semantic search over a media folder: images, audio and text."""


def _settings(catalog: Path, db: str | None, model: str | None = None, audio_model: str | None = None,
              **extra: Any) -> Settings:
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from mmsearch.settings import Settings

    values: dict[str, Any] = {"catalog": catalog, **{k: v for k, v in extra.items() if v is not None}}
    if db:
        values["db_url"] = db
    if model:
        values["model"] = model
    if audio_model:
        values["audio_model"] = audio_model
    try:
        return Settings(**values)
    except SettingsError as e:  # a list or a mapping in the environment that is not JSON
        field = re.search(r'field "(\w+)"', str(e))
        name = f"MMSEARCH_{field.group(1).upper()}" if field else "a setting"
        typer.echo(f"error: {name}: not valid JSON (a list is written '[\"a\", \"b\"]')", err=True)
        raise typer.Exit(2) from None
    except ValidationError as e:  # a bad flag or environment variable: named, in one line
        err = e.errors()[0]
        name = str(err["loc"][0]) if err["loc"] else ""
        flag = {"db_url": "db"}.get(name, name).replace("_", "-")
        where = f"--{flag}" if name in values else f"MMSEARCH_{name.upper()}"
        typer.echo(f"error: {where}: {err['msg'].removeprefix('Value error, ')}", err=True)
        raise typer.Exit(2) from None


@contextmanager
def _engine(settings: Settings, reembed: bool = False, create: bool = True) -> Iterator[Any]:
    from sqlalchemy.exc import DBAPIError

    from mmsearch.engine import Engine
    from mmsearch.storage.db import friendly_db_error

    try:
        with Engine.open(settings, reembed=reembed, create=create) as engine:
            yield engine
    except DBAPIError as e:  # a damaged database or a full disk is a message; anything else a bug
        friendly = friendly_db_error(e, settings.resolved_db_url())
        if friendly is None:
            raise
        typer.echo(f"error: {friendly}", err=True)
        raise typer.Exit(2) from None
    except NotFound as e:
        typer.echo(f"error: {_flagged(e)}", err=True)
        raise typer.Exit(3) from None
    except MMSearchError as e:
        typer.echo(f"error: {_flagged(e)}", err=True)
        raise typer.Exit(2) from None


# The engine names the fields of a request (as HTTP and Python callers give them); on the command
# line an error names the flag that fixes it.
_FLAGS = (("query image: ", "--image: "), ("query audio: ", "--audio: "), ("query video: ", "--video: "),
          ("like: ", "--like: "),
          ("dislike: ", "--dislike: "), ("at: ", "--at: "), ("offset: ", "--offset: "), ("limit: ", "-k: "))


def _flagged(e: object) -> str:
    text = str(e)
    for field, flag in _FLAGS:
        if text.startswith(field):
            return flag + text.removeprefix(field)
    return text


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=None) + "\n")


@app.command()
def index(
    paths: Annotated[list[Path], typer.Argument(help="Folders to index (recursively), or single files.")],
    catalog: CatalogOpt = DEFAULT_CATALOG, db: DbOpt = None, model: ModelOpt = None,
    audio_model: AudioModelOpt = None,
    audio: Annotated[Optional[bool], typer.Option("--audio/--no-audio", help="Index sound files (CLAP). "
                                                  "Default: MMSEARCH_AUDIO, else on.", show_default=False)] = None,
    reembed: Annotated[bool, typer.Option("--reembed", help="Re-embed everything with the given model(s).")] = False,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Try failed files again even if unchanged.")] = False,
    follow_links: Annotated[bool, typer.Option(
        "--follow-links", help="Follow symlinks to files outside the folders being indexed (default: skip them).")] = False,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Items per forward pass of "
                                                      "the model (default: MMSEARCH_BATCH_SIZE, else 32).")] = None,
    device: DeviceOpt = None,
    runtime: RuntimeOpt = None, as_json: JsonOpt = False,
    ray: Annotated[Optional[str], typer.Option(
        "--ray", help="Decode and embed on a Ray cluster: auto (the running one), local (start one here), "
        "or its address (HOST:6379, ray://HOST:10001); needs mmsearch[ray]. Default: MMSEARCH_RAY, else "
        "in this process.")] = None,
    ray_actors: Annotated[Optional[int], typer.Option(
        "--ray-actors", min=1, help="Encoder actors on the cluster (default: one per GPU).")] = None,
) -> None:
    """Scan folders, embed new and changed files, drop deleted ones, update the indexes."""
    from mmsearch.progress_view import IndexProgress

    settings = _settings(catalog, db, model, audio_model, audio=audio, batch_size=batch_size, device=device,
                         runtime=runtime, follow_links=follow_links or None,  # not given: MMSEARCH_FOLLOW_LINKS decides
                         ray=ray, ray_actors=ray_actors)
    with _engine(settings, reembed=reembed) as engine, IndexProgress(IndexProgress.wanted(as_json)) as shown:
        try:
            report = engine.index(paths, retry_failed=retry_failed, status=shown.update)
        except KeyboardInterrupt:
            shown.__exit__(None, None, None)
            typer.echo("interrupted: the files finished so far are kept; run the same command again to "
                       "resume", err=True)
            raise typer.Exit(130) from None
    if as_json:
        _print_json(report.as_dict())
        return
    typer.echo(f"added {report.added}, updated {report.updated}, removed {report.removed}"
               + (f", moved {report.moved}" if report.moved else "")
               + f", unchanged {report.unchanged}, failed {report.failed}"
               + (f", {report.still_failed} still failing from earlier runs (--retry-failed tries them again)"
                  if report.still_failed else "")
               + (f", skipped links {report.skipped_links}" if report.skipped_links else "")
               + (f", skipped {sum(report.skipped.values())} (not media or text)" if report.skipped else "")
               + (f", {len(report.warnings)} with decoder warnings" if report.warnings else "")
               + (f", {report.waiting_for_audio} with sound left for a run with audio on"
                  if report.waiting_for_audio else "")
               + f" ({report.items} items, {report.seconds:.1f} s)")
    for path, reason in report.failures[:20]:
        typer.echo(f"  failed: {path}: {reason}", err=True)
    if len(report.failures) > 20:
        typer.echo(f"  ... and {len(report.failures) - 20} more (see `mmsearch stats`)", err=True)
    if report.skipped_audio:
        typer.echo(f"warning: audio left out: {report.skipped_audio}", err=True)


def _read(path: Path | str | None, flag: str = "", settings: Settings | None = None) -> bytes | None:
    """A query file's bytes; with ``settings``, an http(s) URL is fetched (size-capped, timed out)."""
    if path is None:
        return None
    from mmsearch.fetch import is_url, read_url

    if settings is not None and is_url(str(path)):
        try:
            return read_url(str(path), settings.max_upload_bytes, settings.url_timeout)
        except MMSearchError as e:
            typer.echo(f"error: {flag}: {e}", err=True)
            raise typer.Exit(2) from None
    try:
        return Path(path).read_bytes()
    except OSError as e:
        typer.echo(f"error: {flag + ': ' if flag else ''}cannot read {path}: {e.strerror}", err=True)
        raise typer.Exit(2) from None


def _show(response: Any, as_json: bool, paths_only: bool = False, preview: bool = False) -> None:
    """Every result list prints here: JSON, bare paths for pipes, or one line per hit (with its
    picture inline where the terminal shows pictures). The first number is what the list is
    ranked by; where images, texts and sounds were merged, the cosine follows it."""
    if as_json:
        _print_json(response.model_dump(mode="json", exclude_none=True))
        return
    if paths_only:  # a caption stands for the photo it describes
        seen: set[str] = set()
        for h in response.results:
            shown = h.ref_path or h.path
            if shown not in seen:
                seen.add(shown)
                typer.echo(shown)
        return
    protocol = None
    if preview:
        from mmsearch.preview import detect

        protocol = detect()
        if protocol is None:
            typer.echo("warning: --preview: this terminal shows no pictures (iTerm2, WezTerm or kitty do); "
                       "listing without them", err=True)
    if not response.results:
        typer.echo("no results")
    merged = any(h.calibrated is not None for h in response.results)
    for h in response.results:
        where = f" [{h.start:.1f}-{h.end:.1f}s]" if h.start is not None else ""
        text = f"  \"{h.text[:80]}\"" if h.text and h.modality == "text" else ""
        about = f"  -> {h.ref_path}" if h.ref_path else ""
        cosine = f"  cos {h.cosine:6.3f}" if merged else ""
        typer.echo(f"{h.score:7.4f}{cosine}  {h.modality:<5}  #{h.id:<7} {h.path}{where}{text}{about}")
        picture = h.path if h.modality == "image" else h.ref_path if h.ref_path else None
        if protocol and picture:
            from mmsearch.preview import inline, thumbnail_png

            png = thumbnail_png(picture)
            if png:
                sys.stdout.write(inline(png, protocol))
    t = response.timings_ms
    bound = {"lte": "at most ", "gte": "at least "}.get(response.total_relation or "", "")
    of = f" of {bound}{response.total:,}" if response.total is not None else ""
    typer.echo(f"({len(response.results)}{of} results in {t.get('total', 0):.1f} ms"
               + ("; ranked by calibrated score, cosine beside it" if merged else "") + ")", err=True)


def _terms(add: list[str] | None, sub: list[str] | None, settings: Settings) -> tuple[list[dict], dict[str, Any]]:
    """``--add``/``--sub`` values as Query terms (texts, pictures, sounds) and weighted item ids:
    ``[W:]VALUE``, where VALUE is ``#ID``, an http(s) URL or an existing picture or sound file, else
    a text."""
    from mmsearch.fetch import is_url
    from mmsearch.indexer.scan import kind_of

    terms: list[dict] = []
    items: dict[str, Any] = {"item_ids": [], "negative_ids": [], "item_weights": {}}
    for flag, sign, values in (("--add", 1.0, add or []), ("--sub", -1.0, sub or [])):
        for value in values:
            head, colon, rest = value.partition(":")
            try:
                weight, value = (float(head), rest) if colon and head.strip() else (1.0, value)
            except ValueError:
                weight = 1.0
            if value.startswith("#") and value[1:].isdigit():
                item = int(value[1:])
                items["item_ids" if sign > 0 else "negative_ids"].append(item)
                if weight != 1.0:
                    items["item_weights"][item] = weight
                continue
            kind = kind_of(value.split("?")[0]) if is_url(value) or Path(value).is_file() else None
            if kind == "video":  # a video is a query of its own, in two spaces: not a weighted term
                typer.echo(f"error: {flag}: {value} is a video: give it as --video", err=True)
                raise typer.Exit(2)
            if is_url(value) and kind not in ("image", "audio"):
                kind = "image"
            if kind in ("image", "audio"):
                terms.append({kind: _read(value, flag, settings), "weight": sign * weight})
            else:
                terms.append({"text": value, "weight": sign * weight})
    return terms, {k: v for k, v in items.items() if v}


def _filters(**given: Any) -> dict[str, Any]:
    """The filter options given, as Query (and Profile) fields (lists left out when empty)."""
    out = {k: v for k, v in given.items() if v is not None and v != []}
    if "tag" in out:
        out["tags"] = out.pop("tag")
    if "exclude" in out:
        out["exclude_ids"] = out.pop("exclude")
    return out


def _query(model: str = "Query", **fields: Any) -> Any:
    """A Query (or a Profile), or exit 2 with the first field error."""
    from pydantic import ValidationError

    from mmsearch.search import request

    try:
        return getattr(request, model)(**fields)
    except ValidationError as e:
        err = e.errors()[0]
        if not err["loc"]:  # the model's own check (e.g. a profile with nothing liked)
            typer.echo(f"error: {_flagged(err['msg'].removeprefix('Value error, '))}", err=True)
            raise typer.Exit(2) from None
        name = str(err["loc"][0])
        label = {"text": "--text" if model == "Profile" else "text", "negative_text": "--not", "tags": "--tag",
                 "image": "--image", "audio": "--audio", "exclude_ids": "--exclude", "terms": "--add/--sub",
                 "item_ids": "--add", "negative_ids": "--sub", "item_weights": "--add/--sub"}.get(
                     name, "--" + name.replace("_", "-"))
        typer.echo(f"error: {label}: {err['msg'].removeprefix('Value error, ')}", err=True)
        raise typer.Exit(2) from None


@app.command()
def search(
    text: Annotated[Optional[str], typer.Argument(help="Text query.")] = None,
    image: Annotated[Optional[str], typer.Option("--image", help="Image file, or an http(s) URL, as the "
                                                 "query.")] = None,
    audio_file: Annotated[Optional[str], typer.Option("--audio", help="Audio file, or an http(s) URL, as the "
                                                      "query.")] = None,
    video: Annotated[Optional[str], typer.Option("--video", help="Video file, or an http(s) URL, as the query: "
                                                 "its frames and its sound track, each averaged.")] = None,
    negative: Annotated[Optional[list[str]], typer.Option("--not", help="Steer away from this text.")] = None,
    add: Annotated[Optional[list[str]], typer.Option(
        "--add", help="Add to the query, with an optional weight: [W:]TEXT, [W:]FILE or URL (a picture or a "
        "sound), or [W:]#ID (an item). Repeatable: --add 2:beach --add dog.jpg.")] = None,
    sub: Annotated[Optional[list[str]], typer.Option(
        "--sub", help="Subtract from the query, the same forms as --add: --sub 0.5:night --sub '#12'.")] = None,
    to: ToOpt = None, k: KOpt = 10, offset: OffsetOpt = 0, path: PathOpt = None, min_score: MinScoreOpt = None,
    diversity: DiversityOpt = 0.0, exclude: ExcludeOpt = None,
    date_from: DateFromOpt = None, date_to: DateToOpt = None, camera: CameraOpt = None, near: NearOpt = None,
    min_size: MinSizeOpt = None, min_duration: MinDurationOpt = None, max_duration: MaxDurationOpt = None,
    ext: ExtOpt = None, tag: TagOpt = None, dedup: DedupOpt = None,
    catalog: CatalogOpt = DEFAULT_CATALOG, db: DbOpt = None, model: ModelOpt = None,
    audio_model: AudioModelOpt = None, runtime: RuntimeOpt = None, as_json: JsonOpt = False,
    paths_only: PathsOnlyOpt = False, preview: PreviewOpt = False,
) -> None:
    """Search by text, an image, a sound, a video, or a mix of them."""
    filters = _filters(k=k, offset=offset, path=path, min_score=min_score, diversity=diversity, exclude=exclude,
                       date_from=date_from, date_to=date_to, camera=camera, near=near, min_size=min_size,
                       min_duration=min_duration, max_duration=max_duration, ext=ext, tag=tag, dedup=dedup)
    settings = _settings(catalog, db, model, audio_model, runtime=runtime)
    terms, items = _terms(add, sub, settings)
    q = _query(text=text, image=_read(image, "--image", settings), audio=_read(audio_file, "--audio", settings),
               video=_read(video, "--video", settings), negative_text=negative or [], to=to, terms=terms, **items,
               **filters)
    with _engine(settings, create=False) as engine:
        response = engine.search(q)
    _show(response, as_json, paths_only, preview)


@app.command()
def similar(
    item_ids: Annotated[list[int], typer.Argument(help="Item ids (from search results).")],
    to: ToOpt = None, k: KOpt = 10, offset: OffsetOpt = 0, path: PathOpt = None, min_score: MinScoreOpt = None,
    diversity: DiversityOpt = 0.0, exclude: ExcludeOpt = None,
    date_from: DateFromOpt = None, date_to: DateToOpt = None, camera: CameraOpt = None, near: NearOpt = None,
    min_size: MinSizeOpt = None, min_duration: MinDurationOpt = None, max_duration: MaxDurationOpt = None,
    ext: ExtOpt = None, tag: TagOpt = None, dedup: DedupOpt = None,
    catalog: CatalogOpt = DEFAULT_CATALOG, db: DbOpt = None, runtime: RuntimeOpt = None, as_json: JsonOpt = False,
    paths_only: PathsOnlyOpt = False, preview: PreviewOpt = False,
    at: Annotated[Optional[float], typer.Option("--at", min=0.0, help="Seconds into the video or sound: its "
                                                "frame or window at that moment is the query (one item id).")] = None,
) -> None:
    """Items like the given ones (by default in their own modality; all media if they are of
    several); with --at, like one moment of a video (its frame and sound) or of a sound."""
    filters = _filters(k=k, offset=offset, path=path, min_score=min_score, diversity=diversity, exclude=exclude,
                       date_from=date_from, date_to=date_to, camera=camera, near=near, min_size=min_size,
                       min_duration=min_duration, max_duration=max_duration, ext=ext, tag=tag, dedup=dedup)
    _query(item_ids=item_ids, to=to, at=at, **filters)  # a bad option exits 2 before the catalog opens
    with _engine(_settings(catalog, db, runtime=runtime), create=False) as engine:
        response = engine.similar(item_ids, to=to, at=at, **filters)
    _show(response, as_json, paths_only, preview)


def _weighted(values: list[str] | None, flag: str) -> list[int] | dict[int, float]:
    """``--like 12 --like 40:2.5``: ids, or ids to weights once any weight is given."""
    out: dict[int, float] = {}
    for value in values or []:
        item, _, weight = value.partition(":")
        try:
            out[int(item)] = float(weight) if weight else 1.0
        except ValueError:
            typer.echo(f"error: {flag} {value!r}: give an item id, or ID:WEIGHT", err=True)
            raise typer.Exit(2) from None
    return out if any(":" in v for v in values or []) else list(out)


@app.command()
def recommend(
    like: Annotated[Optional[list[str]], typer.Option("--like", help="A liked item id, or ID:WEIGHT (repeatable).")] = None,
    dislike: Annotated[Optional[list[str]], typer.Option(
        "--dislike", help="A disliked item id, or ID:WEIGHT (repeatable).")] = None,
    text: Annotated[Optional[str], typer.Option("--text", help="Text to steer by (e.g. 'at night').")] = None,
    text_weight: Annotated[float, typer.Option("--text-weight", help="Weight of the text.")] = 1.0,
    dislike_weight: Annotated[float, typer.Option("--dislike-weight", help="Strength of the dislikes.")] = 0.25,
    scoring: Annotated[str, typer.Option("--scoring", help="rocchio (one blended vector) or best (each result by "
                                         "its best liked item, less its closest disliked one).")] = "rocchio",
    to: ToOpt = None, k: KOpt = 10, offset: OffsetOpt = 0, path: PathOpt = None, min_score: MinScoreOpt = None,
    diversity: DiversityOpt = 0.0, exclude: ExcludeOpt = None,
    date_from: DateFromOpt = None, date_to: DateToOpt = None, camera: CameraOpt = None, near: NearOpt = None,
    min_size: MinSizeOpt = None, min_duration: MinDurationOpt = None, max_duration: MaxDurationOpt = None,
    ext: ExtOpt = None, tag: TagOpt = None, dedup: DedupOpt = None,
    catalog: CatalogOpt = DEFAULT_CATALOG, db: DbOpt = None, runtime: RuntimeOpt = None, as_json: JsonOpt = False,
    paths_only: PathsOnlyOpt = False, preview: PreviewOpt = False,
) -> None:
    """Items for a profile: liked and disliked items (never returned themselves), optionally a text;
    --exclude leaves out more (those already seen)."""
    liked, disliked = _weighted(like, "--like"), _weighted(dislike, "--dislike")
    filters = _filters(k=k, offset=offset, path=path, min_score=min_score, diversity=diversity, exclude=exclude,
                       date_from=date_from, date_to=date_to, camera=camera, near=near, min_size=min_size,
                       min_duration=min_duration, max_duration=max_duration, ext=ext, tag=tag, dedup=dedup)
    profile = dict(like=liked, dislike=disliked, text=text, text_weight=text_weight, dislike_weight=dislike_weight,
                   scoring=scoring, to=to, **filters)
    _query(model="Profile", **profile)  # a bad option exits 2 before the catalog opens
    with _engine(_settings(catalog, db, runtime=runtime), create=False) as engine:
        response = engine.recommend(**profile)
    _show(response, as_json, paths_only, preview)


@app.command()
def export(
    out: Annotated[Path, typer.Option("--out", help="Parquet file, or the folder for npy files.")],
    format: Annotated[str, typer.Option("--format", help="parquet (one file) or npy (a .npy and a .csv per "
                                        "collection).")] = "parquet",
    collection: Annotated[Optional[list[str]], typer.Option(
        "--collection", help="Only this collection, e.g. clip.image (repeatable; default: all).")] = None,
    catalog: CatalogOpt = DEFAULT_CATALOG, db: DbOpt = None, as_json: JsonOpt = False,
) -> None:
    """Write every stored vector, with its item id, path, modality and span, in bounded memory."""
    with _engine(_settings(catalog, db), create=False) as engine:
        counts = engine.export(out, format=format, collections=collection)  # type: ignore[arg-type]
    if as_json:
        _print_json({"out": str(out), "format": format, "vectors": counts})
    else:
        typer.echo(f"exported {sum(counts.values())} vectors ("
                   + ", ".join(f"{c}: {n}" for c, n in counts.items()) + f") to {out}")


@app.command()
def tag(
    item_id: Annotated[int, typer.Argument(help="Item id (from search results).")],
    add: Annotated[Optional[list[str]], typer.Option("--add", help="Add a tag (repeatable).")] = None,
    remove: Annotated[Optional[list[str]], typer.Option(
        "--remove", help="Remove a tag or key (repeatable; key=value: only with that value).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Set key=value (repeatable).")] = None,
    catalog: CatalogOpt = DEFAULT_CATALOG, db: DbOpt = None, as_json: JsonOpt = False,
) -> None:
    """Change an item's own tags and key-values, then print them (none given: just print them)."""
    values: dict[str, str] = {}
    for pair in set_ or []:
        key, eq, value = pair.partition("=")
        if not eq:
            typer.echo(f"error: --set takes key=value, not {pair!r}", err=True)
            raise typer.Exit(2)
        values[key] = value
    with _engine(_settings(catalog, db), create=False) as engine:
        if add or remove or values:
            tags = engine.tag(item_id, add=add or [], remove=remove or [], set=values)
        else:
            tags = engine.item(item_id).tags
    if as_json:
        _print_json({"id": item_id, "tags": tags})
    else:
        typer.echo(" ".join(tags) if tags else "(no tags)")


@app.command()
def duplicates(
    threshold: Annotated[float, typer.Option("--threshold", min=0.0, max=1.0,
                                             help="Cosine at or above which two items are near duplicates.")] = 0.95,
    collection: Annotated[str, typer.Option("--collection", help="Which vectors: clip.image, clap.audio, clip.text, "
                                                                 "clap.text.")] = "clip.image",
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Largest groups only.")] = None,
    catalog: CatalogOpt = DEFAULT_CATALOG, db: DbOpt = None, as_json: JsonOpt = False,
) -> None:
    """Groups of near-duplicate items (a photo, its crops and resizes), largest first."""
    with _engine(_settings(catalog, db), create=False) as engine:
        response = engine.duplicates(threshold=threshold, collection=collection, limit=limit)
    if as_json:
        _print_json(response.model_dump(mode="json", exclude_none=True))
        return
    for n, group in enumerate(response.groups, 1):
        typer.echo(f"group {n}: {len(group.items)} items, best cosine {group.score:.4f}")
        for it in group.items:
            typer.echo(f"  #{it.id:<7} {it.path}")
    typer.echo(f"({len(response.groups)} groups in {response.timings_ms['total'] / 1000:.1f} s)", err=True)


@app.command()
def atlas(
    collection: Annotated[str, typer.Option("--collection", help="Which vectors: clip.image, clap.audio, clip.text, "
                                                                 "clap.text.")] = "clip.image",
    limit: Annotated[int, typer.Option("--limit", min=1, help="Points at most: an even sample of the "
                                                              "collection.")] = 2000,
    catalog: CatalogOpt = DEFAULT_CATALOG, db: DbOpt = None, as_json: JsonOpt = False,
) -> None:
    """A 2-D map of a collection (its two principal axes): item id, x, y, modality and path per
    line, as tab-separated values or JSON; `mmsearch serve` draws it at /atlas."""
    with _engine(_settings(catalog, db), create=False) as engine:
        response = engine.atlas(collection=collection, limit=limit)
    if as_json:
        _print_json(response.model_dump(mode="json", exclude_none=True))
        return
    for p in response.points:
        typer.echo(f"{p.id}\t{p.x:.5f}\t{p.y:.5f}\t{p.modality}\t{p.path}")
    typer.echo(f"({len(response.points)} of {response.total} vectors, "
               f"{100 * sum(response.explained):.0f}% of the variance shown)", err=True)


@app.command()
def embed(
    text: Annotated[Optional[str], typer.Option("--text", help="Text to embed.")] = None,
    image: Annotated[Optional[Path], typer.Option("--image", help="Image file to embed.")] = None,
    audio_file: Annotated[Optional[Path], typer.Option("--audio", help="Audio file to embed.")] = None,
    space: Annotated[Optional[str], typer.Option("--space", help="For text: clip (default) or clap.")] = None,
    catalog: CatalogOpt = DEFAULT_CATALOG, db: DbOpt = None, model: ModelOpt = None,
    audio_model: AudioModelOpt = None, runtime: RuntimeOpt = None, as_json: JsonOpt = False,
) -> None:
    """Print the raw embedding vector, for other systems."""
    from mmsearch.engine import embed_without_catalog
    from mmsearch.storage.catalog import catalog_exists

    settings = _settings(catalog, db, model, audio_model, runtime=runtime)
    if catalog_exists(settings):
        with _engine(settings, create=False) as engine:
            result = engine.embed(text=text, image=_read(image), audio=_read(audio_file), space=space)
    else:  # no catalog here: the model named (or the default) embeds, and nothing is created
        try:
            result = embed_without_catalog(settings, text=text, image=_read(image), audio=_read(audio_file),
                                           space=space)
        except MMSearchError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
    if as_json:
        _print_json(result.model_dump())
    else:
        typer.echo(f"# {result.space} {result.model} dim={len(result.vector)}", err=True)
        typer.echo(" ".join(f"{x:.6f}" for x in result.vector))


@app.command()
def stats(catalog: CatalogOpt = DEFAULT_CATALOG, db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """What is indexed: files, items, models, index types and sizes."""
    with _engine(_settings(catalog, db), create=False) as engine:
        info = engine.stats()
    if as_json:
        _print_json(info)
        return
    typer.echo(f"catalog   {info['catalog']}  (schema {info['schema_version']})")
    typer.echo(f"database  {info['database']}")
    for name, m in info["models"].items():
        typer.echo(f"model     {name}: {m['spec']} (dim {m['dim']})")
    typer.echo(f"roots     {', '.join(info['roots']) or '-'}")
    typer.echo("files     " + ", ".join(f"{v} {k}" for k, v in info["files"].items()))
    typer.echo("items     " + ", ".join(f"{v} {k}" for k, v in info["items"].items()))
    for name, c in info["collections"].items():
        idx = c["index"] or {}
        typer.echo(f"index     {name}: {c['live']} live; {idx.get('factory', 'none (searched exactly)')} "
                   f"ntotal={idx.get('ntotal', 0)} {(idx.get('bytes') or 0) / 1e6:.1f} MB; vectors "
                   f"{c['vectors']['stored']} ({c['vectors']['bytes'] / 1e6:.1f} MB float16)")
    for f in info["failures"]:
        typer.echo(f"failed    {f['path']}: {f['reason']}")


@app.command()
def lookup(
    paths: Annotated[list[Path], typer.Argument(help="Indexed files.")],
    catalog: CatalogOpt = DEFAULT_CATALOG, db: DbOpt = None, as_json: JsonOpt = False,
) -> None:
    """Item ids of indexed files (a captions file has one per row)."""
    out: dict[str, list[int]] = {}
    missing: list[str] = []
    with _engine(_settings(catalog, db), create=False) as engine:
        for path in paths:
            try:
                out[str(path)] = engine.lookup(path)
            except NotFound as e:  # the others are still looked up
                out[str(path)] = []
                missing.append(str(e))
    if as_json:
        _print_json(out)
    else:
        for path, ids in out.items():
            if ids:
                typer.echo(f"{path}\t{' '.join(map(str, ids))}")
    for reason in missing:
        typer.echo(f"error: {reason}", err=True)
    if missing:
        raise typer.Exit(3)


BrowseKOpt = Annotated[int, typer.Option("-k", "--k", min=1, max=BROWSE_MAX_LIMIT, help="Items on the page.")]
BrowseOffsetOpt = Annotated[int, typer.Option("--offset", min=0, max=BROWSE_MAX_OFFSET,
                                              help="Skip this many items (paging).")]


@app.command()
def browse(
    to: BrowseToOpt = None, path: PathOpt = None, k: BrowseKOpt = 50, offset: BrowseOffsetOpt = 0,
    date_from: DateFromOpt = None, date_to: DateToOpt = None, camera: CameraOpt = None, near: NearOpt = None,
    min_size: MinSizeOpt = None, min_duration: MinDurationOpt = None, max_duration: MaxDurationOpt = None,
    ext: ExtOpt = None, tag: TagOpt = None,
    catalog: CatalogOpt = DEFAULT_CATALOG, db: DbOpt = None, as_json: JsonOpt = False,
) -> None:
    """Indexed items without a query, in path order (a page of them), and how many there are; the
    catalog filters of a search apply the same way."""
    where = _filters(path=path, date_from=date_from, date_to=date_to, camera=camera, near=near, min_size=min_size,
                     min_duration=min_duration, max_duration=max_duration, ext=ext, tag=tag)
    _query(model="Where", **where)  # a bad option exits 2 before the catalog opens
    with _engine(_settings(catalog, db), create=False) as engine:
        rows, total = engine.browse(to=to, offset=offset, limit=k, **where)
    if as_json:  # as GET /browse gives it, less the URLs
        from mmsearch.search.request import Metadata

        end = offset + len(rows)
        _print_json({"items": [{"id": r.id, "path": r.path, "modality": r.modality, "ordinal": r.ordinal,
                                "text": r.text, "ref_path": r.ref_path, "duration": r.duration,
                                **Metadata(**Metadata.of(r)).model_dump(mode="json")} for r in rows],
                     "total": total, "offset": offset, "limit": k, "next_offset": end if rows and end < total else None})
        return
    for r in rows:
        text = f"  \"{r.text[:80]}\"" if r.text and r.modality == "text" else ""
        typer.echo(f"{r.modality:<5}  #{r.id:<7} {r.path}{text}")
    typer.echo(f"({offset + 1}-{offset + len(rows)} of {total})" if rows else
               f"(nothing from {offset:,}: {total:,} in all)", err=True)


@app.command()
def delete(
    item_ids: Annotated[Optional[list[int]], typer.Argument(help="Item ids to delete.")] = None,
    path: Annotated[Optional[list[Path]], typer.Option("--path", help="Delete every item of this indexed file.")] = None,
    catalog: CatalogOpt = DEFAULT_CATALOG, db: DbOpt = None, as_json: JsonOpt = False,
) -> None:
    """Remove items from the catalog (the files stay on disk; a re-scan brings an item back only
    if its file changes)."""
    if not item_ids and not path:
        typer.echo("error: give item ids or --path FILE", err=True)
        raise typer.Exit(2)
    with _engine(_settings(catalog, db), create=False) as engine:
        ids = list(item_ids or []) + [i for p in path or [] for i in engine.lookup(p)]
        for item_id in ids:
            engine.delete(item_id)
    if as_json:
        _print_json({"deleted": ids})
    else:
        typer.echo(f"deleted {len(ids)} item(s)")


@app.command()
def check(
    repair: Annotated[bool, typer.Option("--repair", help="Rebuild damaged indexes and mark files whose vectors "
                                         "are lost (the next `index` embeds them again).")] = False,
    catalog: CatalogOpt = DEFAULT_CATALOG, db: DbOpt = None, as_json: JsonOpt = False,
) -> None:
    """Report damage: index files missing, unreadable or replaced, vectors lost. Exit 1 if any."""
    with _engine(_settings(catalog, db), create=False) as engine:
        report = engine.check(repair=repair)
    if as_json:
        _print_json(report)
    else:
        for name, info in report["collections"].items():
            state = "; ".join(info["problems"]) or "ok"
            typer.echo(f"{name:<12} {info['live']:>9} live  {state}")
        if not report["ok"]:
            typer.echo("repaired: run `mmsearch index` on your folders to re-embed lost vectors" if repair
                       else "run `mmsearch check --repair` (or `mmsearch index`) to repair", err=True)
    if not report["ok"] and not repair:
        raise typer.Exit(1)


@app.command()
def serve(
    catalog: CatalogOpt = DEFAULT_CATALOG, db: DbOpt = None, model: ModelOpt = None,
    audio_model: AudioModelOpt = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on.")] = 8000,
    api_key: Annotated[Optional[str], typer.Option(
        "--api-key", envvar="MMSEARCH_API_KEY", help="Key that writes (indexing, deleting, tagging) must send.")] = None,
    cors_origin: Annotated[Optional[list[str]], typer.Option(
        "--cors-origin", help="An origin whose web pages may call this API (repeatable; '*' for any), e.g. "
        "http://localhost:5173. Default: MMSEARCH_CORS_ORIGINS, else none (same origin only).")] = None,
    index_root: Annotated[Optional[list[Path]], typer.Option(
        "--index-root", help="A folder the API may index (repeatable); none: no indexing over HTTP.")] = None,
    read_only: Annotated[bool, typer.Option("--read-only", help="Refuse every write.")] = False,
    audio: Annotated[Optional[bool], typer.Option("--audio/--no-audio", help="Serve audio search (CLAP). "
                                                  "Default: MMSEARCH_AUDIO, else on.", show_default=False)] = None,
    batching: Annotated[bool, typer.Option(
        "--batching/--no-batching", help="Embed concurrent text queries together (micro-batching).")] = True,
    log_level: Annotated[Literal["critical", "error", "warning", "info", "debug", "trace"], typer.Option(
        "--log-level", help="uvicorn log level.")] = "info",
    runtime: RuntimeOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Once listening, print one JSON line on stdout: url, docs, "
                                          "openapi, catalog, pid (for scripts that start the server).")] = False,
) -> None:
    """Run the HTTP API and the search page (http://HOST:PORT/, API docs at /docs)."""
    import uvicorn

    from mmsearch.api.app import create_app
    from mmsearch.api.security import check_bind

    roots = [p.expanduser().resolve() for p in index_root or []]
    for r in roots:
        if not r.is_dir():
            typer.echo(f"error: --index-root {r} is not a folder", err=True)
            raise typer.Exit(2)
    settings = _settings(catalog, db, model, audio_model, api_key=api_key, audio=audio,
                         index_roots=roots or None, runtime=runtime, cors_origins=cors_origin or None)
    try:
        check_bind(host, settings, read_only=read_only)
    except MMSearchError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    with _engine(settings, create=False) as engine:
        web = create_app(engine, read_only=read_only, batching=batching)
        try:
            web.state.service.warm()  # load the models once, before the port opens
        except MMSearchError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        import gc

        gc.collect()
        gc.freeze()  # the models' ~10^6 long-lived objects leave the GC's scans: no full-collection stalls
        config = uvicorn.Config(web, host=host, port=port, log_level=log_level, workers=1)
        server = uvicorn.Server(config)
        if as_json:
            _announce_when_listening(server, host, str(engine.catalog.root))
        else:
            typer.echo(f"mmsearch: http://{_host(host)}:{port}/  (API docs at /docs)", err=True)
        server.run()


def _host(host: str) -> str:
    return host if ":" not in host else f"[{host}]"


def _announce_when_listening(server: Any, host: str, catalog: str) -> None:
    """``serve --json``: one line on stdout once the socket listens, with the port it got (0: any)."""
    import os

    startup = server.startup

    async def started(*args: Any, **kwargs: Any) -> None:
        await startup(*args, **kwargs)
        if not server.started:
            return
        port = next((s.getsockname()[1] for srv in server.servers for s in srv.sockets), server.config.port)
        base = f"http://{_host(host)}:{port}"
        _print_json({"url": base + "/", "docs": base + "/docs", "openapi": base + "/openapi.json",
                     "catalog": catalog, "pid": os.getpid()})
        sys.stdout.flush()

    server.startup = started


if __name__ == "__main__":
    app()
