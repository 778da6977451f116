"""Ingest through a Ray cluster: decoding in Ray tasks, the encoders in a pool of Ray actors.

The driver (this process) keeps what must happen in one place: planning (index_folders, only new
and changed files) and every write, through the catalog's one writer, with the durability of a
local ingest (vectors appended and fsynced, then one SQL transaction per batch of files). Ray
Data streams the work with backpressure: files -> decode tasks (the pipeline's own per-file
decoder, then the encoders' model-free preparation: resize and crop, log-mel features) -> encoder
actors (each builds its model from the spec; one GPU each where there are GPUs) -> vectors back
to the driver, which stores and commits them as `_Ingest` does.

Ray retries what dies: a decode task is re-run, an actor is restarted and its batch re-sent. A
retry can deliver a unit twice; the driver keeps the first copy. A killed driver leaves what it
had committed; the next run plans the rest, as a local run does.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np

from mmsearch.encoders.base import preparer_of
from mmsearch.errors import BadInput, MMSearchError
from mmsearch.indexer.pipeline import _Ingest, _Pending, decode_file, is_passing_failure
from mmsearch.indexer.scan import content_hash
from mmsearch.media.decode import DecodeError, SoundWaits, Unit
from mmsearch.settings import Settings

log = logging.getLogger(__name__)

INSTALL_HINT = "indexing through Ray needs the 'ray' extra: pip install 'mmsearch[ray]'"
_SCALARS = (bool, int, float, str, type(None))
DECODE_BATCH = 8  # files per decode task
DECODE_MEMORY = 256 * 2**20  # bytes a decode task reserves: its files decoded


def require_ray() -> Any:
    """The ray module, or a clear error saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - the extra is ray[data]
    except ImportError as e:
        raise MMSearchError(f"{INSTALL_HINT} ({e})") from None
    return ray


def connect(address: str) -> bool:
    """Join the cluster ``address`` names ('auto', 'local', HOST:PORT or ray://HOST:PORT) unless this
    process is already connected. Returns whether we connected (and so must disconnect)."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    # Ray's own lines (its C++ core's included) go to its session logs, not to the caller's
    # terminal; an explicit RAY_BACKEND_LOG_LEVEL is kept.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    try:
        with _held_stderr(drop=("Set ray log level from environment variable",)):
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise MMSearchError(f"cannot reach the Ray cluster {address!r}: {str(e).rstrip('.')}. Start one with `ray start --head`, "
                            "pass its address (HOST:6379 or ray://HOST:10001), or use --ray local") from None
    return True


@contextmanager
def _held_stderr(drop: tuple[str, ...]) -> Iterator[None]:
    """What is written to file descriptor 2 meanwhile (by C++ too) is held, then written out
    without the lines that contain one of ``drop``: nothing else is lost."""
    import sys
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            for line in held.read().decode(errors="replace").splitlines(keepends=True):
                if not any(d in line for d in drop):
                    sys.stderr.write(line)


@contextmanager
def quiet_console(logger_name: str = "ray.data", level: int = logging.ERROR) -> Iterator[None]:
    """Ray Data's notes on the terminal ("execution finished", "progress bars disabled") are raised
    to ``level`` for a run, then restored; its session log file keeps them. The caller shows its
    own progress."""
    handlers = [h for h in logging.getLogger(logger_name).handlers if isinstance(h, logging.StreamHandler)
                and not isinstance(h, logging.FileHandler)]
    levels = [h.level for h in handlers]
    for h in handlers:
        h.setLevel(max(h.level, level))
    try:
        yield
    finally:
        for h, old in zip(handlers, levels):
            h.setLevel(old)


# -- what runs on the cluster ---------------------------------------------------------------------

@dataclass(frozen=True)
class DecodePlan:
    """What a decode task needs: settings, where caption rows may link, the spaces each modality
    goes to, the scalar facts of the driver's encoders that decoding reads (a CLAP's sample rate
    and window length), and their model-free preparation steps (resize and crop, log-mel
    features), never the models themselves: the actors only run forward passes."""

    settings: Settings
    area: list[Any] | None
    targets: dict[str, list[str]]  # modality -> spaces
    encoder_facts: dict[str, dict[str, Any]]
    preparers: dict[tuple[str, str], Callable[[Any], Any]] = field(default_factory=dict)  # (space, modality)
    sound_waits: bool = False  # audio is off over a catalog with sound: files with sound wait (SoundWaits)

    def get(self, space: str) -> SimpleNamespace:  # EncoderSet.get, as far as decoding goes
        return SimpleNamespace(**self.encoder_facts[space])


def encoder_facts(enc: Any) -> dict[str, Any]:
    """An encoder's plain attributes (a wrapped CPU-runtime encoder's base included)."""
    out: dict[str, Any] = {}
    for obj in (getattr(enc, "base", None), enc):
        if obj is not None:
            out.update({k: v for k, v in vars(obj).items() if not k.startswith("_") and isinstance(v, _SCALARS)})
    return out


def preparers(encoders: Any, spaces: list[str]) -> dict[tuple[str, str], Callable[[Any], Any]]:
    """Each encoder's model-free preparation per modality, where it has one."""
    out = {}
    for space in spaces:
        enc = encoders.get(space)
        for modality in enc.modalities:
            fn = preparer_of(enc, modality)
            if fn is not None:
                out[(space, modality)] = fn
    return out


def decode_batch(batch: dict[str, np.ndarray], plan: DecodePlan) -> dict[str, np.ndarray]:
    """A Ray task: decode and prepare each file of the batch into rows ("unit", idx, seq, unit,
    spaces, prepared per space) and one ("done", idx, units, vectors asked for, error, retry,
    facts, hash, waiting) per file. Failures are classified as the local decode workers classify them."""
    out: list[bytes] = []
    for blob in batch["file"]:
        idx, found = pickle.loads(blob)
        p = _Pending(found, 0, False)
        n, queued, error, retry, waiting = 0, 0, None, False, False
        try:
            p.content_hash = content_hash(found.path)
            for unit in decode_file(p, plan.settings, plan, plan.area, plan.targets, plan.sound_waits):
                spaces = plan.targets.get(unit.modality, [])
                if spaces:
                    prepared = {s: plan.preparers[(s, unit.modality)](unit.payload)
                                for s in spaces if (s, unit.modality) in plan.preparers}
                    if len(prepared) == len(spaces):
                        unit.payload = None  # the actor needs only the prepared inputs
                    out.append(pickle.dumps(("unit", idx, n, unit, spaces, prepared), protocol=5))
                    n, queued = n + 1, queued + len(spaces)
        except SoundWaits:
            waiting = True
        except DecodeError as e:
            error = str(e)
        except (MemoryError, OSError) as e:
            error, retry = f"{type(e).__name__}: {e}", is_passing_failure(e)
        except Exception as e:  # noqa: BLE001 - one bad file must not stop the run
            error = f"{type(e).__name__}: {e}"
        out.append(pickle.dumps(("done", idx, n, queued, error, retry, p.facts, p.content_hash, waiting), protocol=5))
    return {"row": np.array(out, dtype=object)}


class EmbedActor:
    """One encoder actor: builds its models from their specs (local checkpoints by path) and embeds
    the batches Ray sends it, grouped by space and modality; items arrive prepared by the decode
    tasks, except where preparing needs the model. Subclassable for tests."""

    def __init__(self, specs: dict[str, str], settings: Settings) -> None:
        from mmsearch.encoders import load_encoder

        self.encoders = {space: load_encoder(spec, settings) for space, spec in specs.items()}
        for enc in self.encoders.values():  # it only embeds batches
            getattr(enc, "for_ingest", lambda: None)()
        self.batches = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.batches += 1
        out: list[bytes] = []
        groups: dict[tuple[str, str], list[tuple[int, int, Unit, Any]]] = {}
        for blob in batch["row"]:
            row = pickle.loads(blob)
            if row[0] != "unit":
                out.append(blob)
                continue
            _, idx, seq, unit, spaces, ready = row
            try:
                prepared = {s: ready[s] if s in ready else self.encoders[s].prepare(unit.modality, unit.payload)
                            for s in spaces}
            except Exception as e:  # noqa: BLE001 - as in the local decode workers: the file fails
                out.append(pickle.dumps(("failed", idx, f"{type(e).__name__}: {e}"), protocol=5))
                continue
            unit.payload = None
            for s, prep in prepared.items():
                groups.setdefault((s, unit.modality), []).append((idx, seq, unit, prep))
        for (space, modality), rows in groups.items():
            t = time.perf_counter()
            vectors = self.encoders[space].encode(modality, [r[3] for r in rows])  # type: ignore[arg-type]
            seconds = time.perf_counter() - t
            meta = [(idx, seq, unit) for idx, seq, unit, _ in rows]
            out.append(pickle.dumps(("vectors", space, modality, meta, np.asarray(vectors, np.float32), seconds),
                                    protocol=5))
        return {"row": np.array(out, dtype=object)}


def pool_size(resources: dict[str, float], s: Settings) -> tuple[int, float, int]:
    """(GPUs used, CPUs, encoder actors) for this cluster, refusing a pool that would leave the
    decode tasks no CPU (Ray would wait for one forever) or ask for GPUs the cluster lacks."""
    gpus = int(resources.get("GPU", 0)) if s.device != "cpu" else 0
    cpus = float(resources.get("CPU", 0))
    actors = s.ray_actors or (gpus or max(1, int(cpus / 2 / s.ray_actor_cpus)))
    if gpus and actors > gpus:
        raise BadInput(f"{actors} encoder actors need a GPU each; the Ray cluster has {gpus}: ask for fewer actors")
    need = actors * s.ray_actor_cpus + s.ray_decode_cpus
    if need > cpus:
        raise BadInput(f"{actors} encoder actors of {s.ray_actor_cpus:g} CPUs and decode tasks of "
                       f"{s.ray_decode_cpus:g} CPUs need {need:g} CPUs; the Ray cluster has {cpus:g}: lower "
                       "ray_actors or ray_actor_cpus, or add nodes")
    return gpus, cpus, actors


# -- the driver -----------------------------------------------------------------------------------

class RayIngest(_Ingest):
    """A local ingest whose decode and embed steps run on Ray; storing and committing are
    `_Ingest`'s own (``_store``, ``_maybe_ready``, ``_commit``). ``actor`` is the actor class."""

    actor: type = EmbedActor

    def run(self, work: list[_Pending]) -> None:
        self.work = work
        self.seen: dict[int, set[tuple[int, str]]] = {}  # units stored per file: a retry may resend one
        connected = connect(self.settings.ray or "auto")
        with quiet_console():
            results = self._results(work)
            try:
                for row in results:
                    if self.stop.is_set():
                        break
                    self._take(pickle.loads(row))
            finally:
                results.close()  # stops the dataset's executor
                self._commit()  # what finished before an interrupt is kept
                if connected:
                    require_ray().shutdown()

    def _take(self, row: tuple) -> None:
        kind, work = row[0], self.work
        if kind == "vectors":
            _, space, modality, meta, vectors, seconds = row
            keep = []
            for i, (idx, seq, unit) in enumerate(meta):
                got = self.seen.setdefault(idx, set())
                if work[idx].ready or (seq, space) in got:
                    continue
                got.add((seq, space))
                keep.append(i)
            if keep:  # the progress meter's counts and rates, as a local run's
                self.meter.embedded((space, modality), len(keep), seconds * len(keep) / len(meta))
            self._store((space, modality), [(meta[i][0], meta[i][2], None) for i in keep], vectors[keep])
        elif kind == "failed":
            _, idx, reason = row
            work[idx].error = work[idx].error or reason
            self._maybe_ready(idx)
        elif kind == "done":
            _, idx, n, queued, error, retry, facts, digest, waiting = row
            p = work[idx]
            if p.decoded:  # a retried decode task sent it again
                return
            p.queued, p.decoded, p.retry, p.facts, p.content_hash = queued, True, retry, facts, digest
            p.waiting = waiting
            p.error = error or p.error or (None if n or waiting else "nothing to index in this file")
            self._maybe_ready(idx)

    def _maybe_ready(self, idx: int) -> None:
        super()._maybe_ready(idx)
        if self.work[idx].ready:
            self.seen.pop(idx, None)

    def _results(self, work: list[_Pending]) -> Iterator[bytes]:
        """Rows streamed back from the cluster as its actors finish them."""
        ray = require_ray()
        s = self.settings
        ctx = ray.data.DataContext.get_current()  # a dataset keeps the context it was made in
        ctx.enable_progress_bars = ctx.print_on_execution_start = False  # the caller shows its own progress
        plan = DecodePlan(s.model_copy(), self.area,
                          {m: self.targets(m) for m in ("image", "text", "audio")},
                          {space: encoder_facts(self.encoders.get(space)) for space in self.spaces},
                          preparers(self.encoders, self.spaces), self.sound_waits)
        specs = {space: self.encoders.get(space).spec for space in self.spaces}
        gpus, cpus, actors = pool_size(ray.cluster_resources(), s)
        actor_settings = s.model_copy(update={"threads": s.threads or max(1, int(s.ray_actor_cpus)),
                                              "device": s.device if gpus else "cpu"})
        files = [pickle.dumps((i, p.found), protocol=5) for i, p in enumerate(work)]
        blocks = max(1, min(math.ceil(len(files) / DECODE_BATCH), 4096))
        ds = ray.data.from_items([{"file": f} for f in files], override_num_blocks=blocks)
        # The memory a task's decoded files take; asking for it also keeps Ray Data from fusing the
        # decode tasks into the encoder actors (their resources differ), so decoding scales apart.
        ds = ds.map_batches(decode_batch, fn_kwargs={"plan": plan}, batch_size=DECODE_BATCH,
                            num_cpus=s.ray_decode_cpus, memory=DECODE_MEMORY, batch_format="numpy")
        ds = ds.map_batches(self.actor, fn_constructor_kwargs={"specs": specs, "settings": actor_settings},
                            batch_size=s.ray_batch_size or s.batch_size,
                            compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=s.ray_actor_cpus,
                            num_gpus=1 if gpus else None, batch_format="numpy")
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
            yield from batch["row"]


__all__ = ["EmbedActor", "RayIngest", "connect", "pool_size", "require_ray"]
