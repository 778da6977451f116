"""The command line: a thin face over mmsearch.engine. ``--json`` prints machine-readable output."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from mmsearch.errors import MMSearchError, NotFound

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
ToOpt = Annotated[Optional[str], typer.Option("--to", help="Return only: image, text, audio (default: all media).")]
DEFAULT_CATALOG = Path(".mmsearch")


def _settings(catalog: Path, db: str | None, model: str | None = None, audio_model: str | None = None,
              **extra: Any) -> Settings:
    from mmsearch.settings import Settings

    values: dict[str, Any] = {"catalog": catalog, **{k: v for k, v in extra.items() if v is not None}}
    if db:
        values["db_url"] = db
    if model:
        values["model"] = model
    if audio_model:
        values["audio_model"] = audio_model
    return Settings(**values)


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
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(3) from None
    except MMSearchError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=None) + "\n")


@app.command()
def index(
    paths: Annotated[list[Path], typer.Argument(help="Folders to index (recursively).")],
    catalog: CatalogOpt = DEFAULT_CATALOG, db: DbOpt = None, model: ModelOpt = None,
    audio_model: AudioModelOpt = None,
    audio: Annotated[bool, typer.Option("--audio/--no-audio", help="Index sound files (CLAP).")] = True,
    reembed: Annotated[bool, typer.Option("--reembed", help="Re-embed everything with the given model(s).")] = False,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Try failed files again even if unchanged.")] = False,
    follow_links: Annotated[bool, typer.Option(
        "--follow-links", help="Follow symlinks to files outside the folders being indexed (default: skip them).")] = False,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1)] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto, cpu or cuda.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Scan folders, embed new and changed files, drop deleted ones, update the indexes."""
    from tqdm import tqdm

    settings = _settings(catalog, db, model, audio_model, audio=audio, batch_size=batch_size, device=device,
                         follow_links=follow_links or None)  # not given: MMSEARCH_FOLLOW_LINKS decides
    with _engine(settings, reembed=reembed) as engine:
        bar = tqdm(total=0, unit="file", desc="indexing", file=sys.stderr, disable=None, dynamic_ncols=True)

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        try:
            report = engine.index(paths, progress=progress, retry_failed=retry_failed)
        except KeyboardInterrupt:
            bar.close()
            typer.echo("interrupted: the files finished so far are kept; run the same command again to "
                       "resume", err=True)
            raise typer.Exit(130) from None
        finally:
            bar.close()
    if as_json:
        _print_json(report.as_dict())
        return
    typer.echo(f"added {report.added}, updated {report.updated}, removed {report.removed}"
               + (f", moved {report.moved}" if report.moved else "")
               + f", unchanged {report.unchanged}, failed {report.failed}"
               + (f", skipped links {report.skipped_links}" if report.skipped_links else "")
               + f" ({report.items} items, {report.seconds:.1f} s)")
    for path, reason in report.failures[:20]:
        typer.echo(f"  failed: {path}: {reason}", err=True)
    if len(report.failures) > 20:
        typer.echo(f"  ... and {len(report.failures) - 20} more (see `mmsearch stats`)", err=True)
    if report.skipped_audio:
        typer.echo(f"warning: audio left out: {report.skipped_audio}", err=True)


def _read(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as e:
        typer.echo(f"error: cannot read {path}: {e.strerror}", err=True)
        raise typer.Exit(2) from None


def _show(response: Any, as_json: bool) -> None:
    if as_json:
        _print_json(response.model_dump(exclude_none=True))
        return
    if not response.results:
        typer.echo("no results")
    for h in response.results:
        where = f" [{h.start:.1f}-{h.end:.1f}s]" if h.start is not None else ""
        text = f"  \"{h.text[:80]}\"" if h.text and h.modality == "text" else ""
        typer.echo(f"{h.score:7.4f}  {h.modality:<5}  #{h.id:<7} {h.path}{where}{text}")
    t = response.timings_ms
    typer.echo(f"({len(response.results)} results in {t.get('total', 0):.1f} ms)", err=True)


@app.command()
def search(
    text: Annotated[Optional[str], typer.Argument(help="Text query.")] = None,
    image: Annotated[Optional[Path], typer.Option("--image", help="Image file as the query.")] = None,
    audio_file: Annotated[Optional[Path], typer.Option("--audio", help="Audio file as the query.")] = None,
    to: ToOpt = None, k: KOpt = 10,
    offset: Annotated[int, typer.Option("--offset", min=0, help="Skip this many results (paging).")] = 0,
    path: Annotated[Optional[str], typer.Option("--path", help="Only under this prefix, or matching a glob.")] = None,
    min_score: Annotated[Optional[float], typer.Option("--min-score", help="Drop results below this cosine.")] = None,
    negative: Annotated[Optional[list[str]], typer.Option("--not", help="Steer away from this text.")] = None,
    diversity: Annotated[float, typer.Option("--diversity", min=0.0, max=1.0, help="MMR diversity, 0..1.")] = 0.0,
    catalog: CatalogOpt = DEFAULT_CATALOG, db: DbOpt = None, model: ModelOpt = None,
    audio_model: AudioModelOpt = None, as_json: JsonOpt = False,
) -> None:
    """Search by text, an image, a sound, or a mix of them."""
    from pydantic import ValidationError

    from mmsearch.search.request import Query

    try:
        q = Query(text=text, image=_read(image), audio=_read(audio_file), to=to, k=k, offset=offset, path=path,
                  min_score=min_score, negative_text=negative or [], diversity=diversity)
    except ValidationError as e:
        typer.echo(f"error: {e.errors()[0]['loc'][0]}: {e.errors()[0]['msg']}", err=True)
        raise typer.Exit(2) from None
    with _engine(_settings(catalog, db, model, audio_model), create=False) as engine:
        response = engine.search(q)
    _show(response, as_json)


@app.command()
def similar(
    item_ids: Annotated[list[int], typer.Argument(help="Item ids (from search results).")],
    to: ToOpt = None, k: KOpt = 10,
    catalog: CatalogOpt = DEFAULT_CATALOG, db: DbOpt = None, as_json: JsonOpt = False,
) -> None:
    """Items like the given ones (by default in their own modality)."""
    with _engine(_settings(catalog, db), create=False) as engine:
        response = engine.similar(item_ids, to=to, k=k)
    _show(response, as_json)


@app.command()
def embed(
    text: Annotated[Optional[str], typer.Option("--text", help="Text to embed.")] = None,
    image: Annotated[Optional[Path], typer.Option("--image", help="Image file to embed.")] = None,
    audio_file: Annotated[Optional[Path], typer.Option("--audio", help="Audio file to embed.")] = None,
    space: Annotated[Optional[str], typer.Option("--space", help="For text: clip (default) or clap.")] = None,
    catalog: CatalogOpt = DEFAULT_CATALOG, db: DbOpt = None, model: ModelOpt = None,
    audio_model: AudioModelOpt = None, as_json: JsonOpt = False,
) -> None:
    """Print the raw embedding vector, for other systems."""
    from mmsearch.engine import embed_without_catalog
    from mmsearch.storage.catalog import catalog_exists

    settings = _settings(catalog, db, model, audio_model)
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
    with _engine(_settings(catalog, db), create=False) as engine:
        for path in paths:
            out[str(path)] = engine.lookup(path)
    if as_json:
        _print_json(out)
        return
    for path, ids in out.items():
        typer.echo(f"{path}\t{' '.join(map(str, ids))}")


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
        "--api-key", envvar="MMSEARCH_API_KEY", help="Key that writes (indexing, deleting) must send.")] = None,
    index_root: Annotated[Optional[list[Path]], typer.Option(
        "--index-root", help="A folder the API may index (repeatable); none: no indexing over HTTP.")] = None,
    read_only: Annotated[bool, typer.Option("--read-only", help="Refuse every write.")] = False,
    audio: Annotated[bool, typer.Option("--audio/--no-audio", help="Serve audio search (CLAP).")] = True,
    batching: Annotated[bool, typer.Option(
        "--batching/--no-batching", help="Embed concurrent text queries together (micro-batching).")] = True,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
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
                         index_roots=roots or None)
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
        typer.echo(f"mmsearch: http://{host if ':' not in host else f'[{host}]'}:{port}/  (API docs at /docs)",
                   err=True)
        uvicorn.run(web, host=host, port=port, log_level=log_level, workers=1)


if __name__ == "__main__":
    app()
