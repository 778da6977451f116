"""The CPU runtime: a torch encoder's towers exported to ONNX once and run by ONNX Runtime.

Eager PyTorch spends much of a CPU forward outside the matrix products (dispatch, small ops,
no fusion); ONNX Runtime runs the same graph fused and pre-planned. Each tower (CLIP image and
text, CLAP audio and text) is exported on first use, checked against the torch forward (cosine
at least ``MIN_COS_FP32``) and cached under ``cache_dir/onnx`` by model spec and weights checksum,
so it is exported once per model. The wrapper keeps the torch encoder's ``prepare`` (tokeniser,
image transform, audio front end) and ``spec``: its vectors are interchangeable with torch's, and
a catalog does not record which runtime built it. A tower that cannot be exported, or whose
export disagrees with torch, is refused with the reason and runs on torch instead.

Beside each export a light card (``light.json``) and the tower's inputs (open_clip's tokeniser
vocabulary, its image transform's recipe, CLAP's fast tokeniser) are saved once they reproduce the
torch encoder's exactly. ``OnnxEncoder.from_cache`` finds them by spec and weights checksum without
building the model, so a query on cached towers never imports torch (seconds on a cold start).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

import numpy as np

from mmsearch.encoders.base import (Encoder, Modality, Spec, is_local_name, l2_normalise, preparer_of,
                                    quiet_root_log)
from mmsearch.encoders.image_prep import normalise_pixels
from mmsearch.errors import BadInput, MMSearchError
from mmsearch.settings import Settings

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

EXPORT_VERSION = 1  # bump when the exported graphs change, so old cache entries are not reused
MIN_COS_FP32 = 0.9999  # an fp32 export must match the torch forward this closely on every probe
MIN_COS_INT8 = 0.99  # an int8 model must match its fp32 export this closely
OPSET = 18
BACKEND_PICK = 6  # how _pick_backend decides; a cache entry decided another way is decided again
# OpenVINO runs an image or audio tower only where its probe batch takes under this share of ONNX
# Runtime's: on the 2-core machine its 10% lead alone (ViT-B-32's image, both in lanes) was gone
# beside the decoders (photos 43.4 against 43.0 images/s, video 35.8 against 37.2 frames/s), and its
# compile made a cold CLI image query's first answer 1.1 s against 0.2 s.
OPENVINO_MARGIN = 0.85
# Exports swap sys.stdout and sys.stderr for the process: two at once would restore them wrongly.
_EXPORT_LOCK = threading.Lock()
_PROBE_TEXTS = (
    "a dog",
    "two children playing football on a wet field in the rain",
    "a red car parked outside a small white house",
    "the quick brown fox jumps over the lazy dog " * 12,  # longer than any context: truncated
)


class ExportRefused(MMSearchError):
    """A tower that cannot be exported, or whose export does not match torch: torch runs it."""


def onnx_available() -> bool:
    """Whether the CPU runtime can be used here: ONNX Runtime, and the exporter's dependencies."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx", "onnxscript"))


_OPENVINO_IMPORT = threading.Lock()


def import_openvino() -> Any:
    """``openvino``, without its model converter (``openvino.tools.ovc``), which it imports only if
    it can. ONNX files need no converter, and importing it sends a telemetry event from a forked
    process: a fork while another thread runs OpenBLAS (a CLAP decoder's spectrogram) deadlocked
    ingests. A later ``import openvino.tools.ovc`` by the caller still works."""
    import sys

    with _OPENVINO_IMPORT:  # a second thread waits for the whole module, not a half-run __init__
        if "openvino" in sys.modules:
            return sys.modules["openvino"]
        had = "openvino.tools.ovc" in sys.modules
        sys.modules.setdefault("openvino.tools.ovc", None)  # type: ignore[arg-type]  # None: "cannot import"
        try:
            import openvino
        finally:
            if not had:
                sys.modules.pop("openvino.tools.ovc", None)
        return openvino


def openvino_available() -> bool:
    """OpenVINO is optional: where it is installed, it runs an fp32 tower when it measures faster."""
    return importlib.util.find_spec("openvino") is not None


def resolve_runtime(settings: Settings) -> Literal["torch", "onnx"]:
    """``auto``: ONNX on a CPU when it is installed, torch on a GPU (where fp16 torch is fast)."""
    if settings.runtime == "torch":
        return "torch"
    if settings.runtime == "onnx":
        if settings.device == "cuda":
            raise BadInput("runtime 'onnx' runs on the CPU: use --device cpu (or auto), or --runtime torch")
        if not onnx_available():
            log.warning("runtime 'onnx' needs onnxruntime, onnx and onnxscript (pip install 'mmsearch[cpu]'); "
                        "using torch")
            return "torch"
        return "onnx"
    from mmsearch.encoders.base import pick_device

    if pick_device(settings.device) != "cpu" or not onnx_available():
        return "torch"
    return "onnx"


def intra_op_threads() -> int:
    """The process's intra-op threads (mmsearch/cpus.py): the ``threads`` setting, else the cores
    it may use, its CPU affinity capped by the cgroup quota. More threads than cores only makes
    them wait on each other."""
    from mmsearch import cpus

    return cpus.intra_op_threads()


# ---------------------------------------------------------------------------------------------
# Towers: what is exported for each modality, and how prepared items become its inputs.


@dataclass
class Tower:
    """One exportable forward of a torch encoder."""

    modality: Modality
    module: "torch.nn.Module"  # forward(*inputs) -> (n, dim) embeddings, not yet normalised
    input_names: tuple[str, ...]
    dynamic: tuple[dict[int, tuple[str, int, int]], ...]  # per input: axis -> (name, min, max)
    feeds: Callable[[Sequence[Any]], tuple[np.ndarray, ...]]  # prepared items -> inputs
    probe: Callable[[], list[Any]]  # prepared items: the export example and the check


def _forward_module(model: "torch.nn.Module", fn: Callable[..., Any]) -> "torch.nn.Module":
    """A module whose forward is ``fn``; ``model`` is registered so its weights are exported."""
    import torch

    class Forward(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: Any) -> Any:
            return fn(*inputs)

    return Forward().eval()


def _probe_images(base: Encoder) -> list[Any]:
    from PIL import Image

    rng = np.random.default_rng(0)
    sizes = ((300, 400), (500, 333), (224, 224), (96, 160))
    return [base.prepare("image", Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
            for h, w in sizes]


def _probe_audio(base: Encoder) -> list[Any]:
    rng = np.random.default_rng(0)
    rate = int(getattr(base, "sample_rate"))
    seconds = (1.0, 10.0, 4.5, 0.25)
    return [base.prepare("audio", (0.1 * rng.standard_normal(int(rate * s))).astype(np.float32))
            for s in seconds]


def clip_towers(base: Any) -> dict[Modality, Tower]:
    """open_clip: the image tower on normalised pixels, the text tower on token ids. A plain CLIP
    text tower is exported with a dynamic sequence axis, so batches stay trimmed to their longest
    text as in torch; other text towers take the full context."""
    model = base.module  # towers not read yet stay on the meta device: each is read before its export
    norm = base._norm

    def pixels(items: Sequence[Any]) -> tuple[np.ndarray, ...]:
        if norm is None:  # the whole transform ran in prepare: float tensors already
            return (np.ascontiguousarray(np.stack([np.asarray(p) for p in items]), dtype=np.float32),)
        return (normalise_pixels(items, *norm),)  # ToTensor and Normalize, as clip.encode does

    context = int(np.asarray(base.tokenizer(["a"])).shape[1])
    trimmable = bool(base.text_trimmable)

    def tokens(items: Sequence[Any]) -> tuple[np.ndarray, ...]:
        t = np.asarray(base.tokenizer([str(s) for s in items]), dtype=np.int64)
        return (np.ascontiguousarray(base.trim_tokens(t)),)

    image = Tower("image", _forward_module(model, model.encode_image), ("pixels",),
                  ({0: ("batch", 1, 4096)},), pixels, lambda: _probe_images(base))
    text = Tower("text", _forward_module(model, base.text_forward if trimmable else model.encode_text),
                 ("tokens",), ({0: ("batch", 1, 4096), 1: ("seq", 2, context)} if trimmable
                               else {0: ("batch", 1, 4096)},),
                 tokens, lambda: list(_PROBE_TEXTS))
    return {"image": image, "text": text}


def clap_towers(base: Any) -> dict[Modality, Tower]:
    """CLAP: the audio tower on mel features (and the "longer" flags when the model fuses), the
    text tower on ids and mask padded to the batch's longest text."""
    from mmsearch.encoders.clap import _pooled

    model = base.model
    fusion = bool(getattr(model.config.audio_config, "enable_fusion", False))

    def audio_forward(features: Any, longer: Any = None) -> Any:
        return _pooled(model.get_audio_features(input_features=features, is_longer=longer))

    def audio_feeds(items: Sequence[Any]) -> tuple[np.ndarray, ...]:
        x = np.stack([p.input_features for p in items]).astype(np.float32, copy=False)
        if not fusion:
            return (x,)
        return (x, np.array([[p.is_longer] for p in items], dtype=bool))

    def text_forward(ids: Any, mask: Any) -> Any:
        return _pooled(model.get_text_features(input_ids=ids, attention_mask=mask))

    def text_feeds(items: Sequence[Any]) -> tuple[np.ndarray, ...]:
        t = base.tokens([str(s) for s in items], "np")
        return (t["input_ids"].astype(np.int64), t["attention_mask"].astype(np.int64))

    batch = {0: ("batch", 1, 4096)}
    seq = {0: ("batch", 1, 4096), 1: ("seq", 2, int(base._max_tokens))}
    audio = Tower("audio", _forward_module(model, audio_forward),
                  ("input_features", "is_longer") if fusion else ("input_features",),
                  (batch, batch) if fusion else (batch,), audio_feeds, lambda: _probe_audio(base))
    text = Tower("text", _forward_module(model, text_forward), ("input_ids", "attention_mask"), (seq, seq),
                 text_feeds, lambda: list(_PROBE_TEXTS))
    return {"audio": audio, "text": text}


def towers(base: Any) -> dict[Modality, Tower]:
    return clip_towers(base) if base.space == "clip" else clap_towers(base)


# ---------------------------------------------------------------------------------------------
# Runners: an exported model, run by ONNX Runtime (or OpenVINO, for the benchmark's comparison).


class _LaneRunner:
    """What both runtimes' runners share: the lanes, and where a lone row runs.

    ``lanes`` = 1: one model whose operators run on ``threads`` threads. ``lanes`` > 1 (towers
    that embed batches beside decoders): a batch is cut into ``lanes`` parts run side by side,
    each on one thread. No thread then waits inside an operator for another, so a
    decoding thread that takes a core for a while slows one part instead of stalling both: on 2
    cores beside a video's decoder, 2 lanes took 3.1 s where 2 intra-op threads took 3.3 s, and
    alone 2.55 s against 2.63 s (benchmarks/video.py). fp32 vectors are the same bit for bit
    either way (int8's dynamic quantisation scales each run's activations, lane or batch alike).

    A lone row (a query) runs on every thread (ViT-B-32's image: 27.5 ms against 51.7 ms on one
    lane of 2 cores), except in a process that is ``ingesting`` and not ``ready()`` for queries:
    there it takes a lane, so that an ingest holds one model. A server that also ingests holds both."""

    def __init__(self, path: Path, threads: int | None, lanes: int) -> None:
        self.path, self.threads, self.lanes = path, threads or intra_op_threads(), max(1, lanes)
        self._lock = threading.Lock()
        self._queries = False  # ready(): lone rows run on every thread, ingesting or not
        self.ingesting = False  # set by an ingest: lone rows take a lane, unless ready()
        self.input_names: list[str] = []
        if self.lanes == 1:
            self.ready()

    def ready(self) -> None:
        """Answer lone rows (queries) on every thread, from a model opened now, not on the first
        query."""
        self._open_for_queries()
        self._queries = True

    def _open_for_queries(self) -> None:
        raise NotImplementedError

    def _lone_on_lane(self) -> bool:
        return self.lanes > 1 and self.ingesting and not self._queries

    def _rows_and_lanes(self, inputs: Sequence[np.ndarray]) -> tuple[int, int]:
        """A batch's rows, and the lanes it runs on (no more than its rows)."""
        rows = len(inputs[0]) if len(inputs) else 0
        return rows, min(self.lanes, rows)

    def _feed(self, names: Sequence[str], inputs: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        return {n: x for n, x in zip(names, inputs) if n in self.input_names}  # the exporter drops unused inputs


class OrtRunner(_LaneRunner):
    """ONNX Runtime on the CPU, every graph optimisation (fusions, layout) on: a session per
    thread count (lanes run on a one-thread session)."""

    name = "onnxruntime"

    def __init__(self, path: Path, threads: int | None = None, optimisation: str = "all",
                 config: dict[str, str] | None = None, lanes: int = 1) -> None:
        self._optimisation, self._config = optimisation, dict(config or {})
        self._sessions: dict[int, Any] = {}  # intra-op threads -> session
        self._pool: ThreadPoolExecutor | None = None
        super().__init__(path, threads, lanes)

    def _open_for_queries(self) -> None:
        self._session(self.threads)

    def _session(self, threads: int) -> Any:
        import onnxruntime as ort

        with self._lock:
            if threads not in self._sessions:
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = threads
                opts.inter_op_num_threads = 1
                opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
                opts.graph_optimization_level = {
                    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                }[self._optimisation]
                opts.log_severity_level = 3
                for key, value in self._config.items():
                    opts.add_session_config_entry(key, value)
                session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
                self.input_names = [i.name for i in session.get_inputs()]
                self._sessions[threads] = session
            return self._sessions[threads]

    def __call__(self, names: Sequence[str], inputs: Sequence[np.ndarray]) -> np.ndarray:
        rows, lanes = self._rows_and_lanes(inputs)
        if lanes <= 1:
            session = self._session(1 if self._lone_on_lane() else self.threads)
            return self._run(session, self._feed(names, inputs))
        session = self._session(1)
        parts = lane_parts(self._feed(names, inputs), rows, lanes)
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.lanes - 1, thread_name_prefix="mmsearch-lane")
        others = [self._pool.submit(self._run, session, part) for part in parts[1:]]
        first = self._run(session, parts[0])  # this thread runs a part too
        return np.concatenate([first, *(f.result() for f in others)])

    @staticmethod
    def _run(session: Any, feed: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(session.run(None, feed)[0], dtype=np.float32)


class OpenVinoRunner(_LaneRunner):
    """OpenVINO on the CPU, reading the same ONNX file (fp32 inference precision: on CPUs with
    bf16 it would otherwise compute in bf16 and miss the cosine check).

    Lanes > 1 compile the model for throughput with one stream per lane, and a batch's parts run
    on as many infer requests at once (ViT-B-32's image on 2 cores: 2.35 s alone and 3.1 s beside
    a video's decoder for 120 frames, against 2.36 s and 3.35 s compiled for latency); queries run
    on the latency-compiled model."""

    name = "openvino"

    def __init__(self, path: Path, threads: int | None = None, lanes: int = 1) -> None:
        self._compiled: dict[int, Any] = {}  # streams -> compiled model
        self._idle: dict[int, list[Any]] = {}  # streams -> infer requests not in use
        super().__init__(path, threads, lanes)

    def _open_for_queries(self) -> None:
        self._model(1)

    def _model(self, streams: int) -> Any:
        ov = import_openvino()
        with self._lock:
            if streams not in self._compiled:
                config: dict[str, Any] = {"INFERENCE_NUM_THREADS": self.threads, "INFERENCE_PRECISION_HINT": "f32",
                                          "PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT"}
                if streams > 1:
                    config["NUM_STREAMS"] = streams
                compiled = ov.Core().compile_model(str(self.path), "CPU", config)
                self.input_names = [next(iter(p.get_names())) for p in compiled.inputs]
                self._compiled[streams], self._idle[streams] = compiled, []
            return self._compiled[streams]

    def __call__(self, names: Sequence[str], inputs: Sequence[np.ndarray]) -> np.ndarray:
        rows, lanes = self._rows_and_lanes(inputs)
        streams = self.lanes if lanes > 1 or self._lone_on_lane() else 1
        compiled = self._model(streams)
        parts = lane_parts(self._feed(names, inputs), rows, max(1, lanes))
        with self._lock:  # an infer request serves one call at a time
            requests = [self._idle[streams].pop() if self._idle[streams] else compiled.create_infer_request()
                        for _ in parts]
        try:
            for request, part in zip(requests, parts):
                request.start_async(part)
            out = []
            for request in requests:
                request.wait()
                out.append(np.array(request.get_output_tensor(0).data, dtype=np.float32))
        finally:
            with self._lock:
                self._idle[streams].extend(requests)
        return np.concatenate(out)


def lane_parts(feed: dict[str, np.ndarray], rows: int, lanes: int) -> list[dict[str, np.ndarray]]:
    """A batch's inputs as ``lanes`` runs of rows of nearly equal length, in order."""
    cuts = [rows * i // lanes for i in range(lanes + 1)]
    return [{n: x[a:b] for n, x in feed.items()} for a, b in zip(cuts, cuts[1:])]


Runner = Callable[[Sequence[str], Sequence[np.ndarray]], np.ndarray]


# ---------------------------------------------------------------------------------------------
# The export cache.


def weights_checksum(base: Any, cache_root: Path) -> str:
    """A checkpoint file's sha256 (remembered by path, size and mtime, so a second load does not
    read it again), else the state dict's: ``@random``, pretrained tags and CLAP directories."""
    spec = Spec.parse(base.spec)
    if spec.family == "open_clip" and spec.pretrained and Path(spec.pretrained).is_file():
        return "file:" + _file_sha256(Path(spec.pretrained), cache_root / "checksums.json")
    weights_file = getattr(base, "weights_file", None)  # a tag's file in the HF cache, read a tower at a time
    if weights_file:
        _record_weights_file(cache_root, base.spec, str(weights_file))  # found again without torch
        return "file:" + _file_sha256(Path(weights_file), cache_root / "checksums.json")
    weights_dir = getattr(base, "weights_dir", None)  # a CLAP folder: local, or a snapshot in the HF cache
    if weights_dir:
        if not is_local_name(spec.name):
            _record_weights_file(cache_root, base.spec, str(Path(weights_dir) / "config.json"))
        return "dir:" + dir_sha256(Path(weights_dir), cache_root / "checksums.json")
    return "state:" + state_dict_sha256(base.model)


def dir_sha256(folder: Path, memo_file: Path) -> str:
    """A model folder's checksum: the sha256 of each of its files (weights, config, tokeniser;
    each remembered by path, size and mtime), by name."""
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.is_file() and not f.name.startswith("."):
            h.update(f"{f.name}|{_file_sha256(f, memo_file)}|".encode())
    return h.hexdigest()


def state_dict_sha256(model: "torch.nn.Module") -> str:
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _file_sha256(path: Path, memo_file: Path) -> str:
    st = path.stat()
    key, stamp = str(path.resolve()), [st.st_size, st.st_mtime_ns]
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    if isinstance(memo.get(key), dict) and memo[key].get("stamp") == stamp:
        return str(memo[key]["sha256"])
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    memo[key] = {"stamp": stamp, "sha256": h.hexdigest()}
    with contextlib.suppress(OSError):
        _write_atomic(memo_file, json.dumps(memo, indent=1))
    return h.hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def export_dir(cache_root: Path, spec: str, modality: Modality, checksum: str) -> Path:
    """One folder per (spec, tower, weights, export format): a new checkpoint at the same path, or
    a newer exporter, gets a new folder instead of a stale graph."""
    key = hashlib.sha256(f"{EXPORT_VERSION}|{spec}|{modality}|{checksum}".encode()).hexdigest()[:20]
    family = Spec.parse(spec).family
    return cache_root / f"{family}-{modality}-{key}"


def _versions() -> dict[str, str]:
    import onnxruntime
    import torch

    return {"torch": str(torch.__version__), "onnxruntime": str(onnxruntime.__version__)}


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The smallest row-wise cosine between two batches of vectors."""
    a, b = l2_normalise(a), l2_normalise(b)
    return float(np.min(np.sum(a * b, axis=1))) if len(a) else 1.0


def export_tower(base: Any, tower: Tower, folder: Path) -> None:
    """Export ``tower`` to ``folder/model.onnx`` with its dynamic axes, quietly: the exporter prints
    progress on stdout (which would corrupt ``--json`` output) and graphs on stderr when it fails."""
    import torch
    from torch.export import Dim

    dims: dict[str, Any] = {}
    shapes = tuple({axis: dims.setdefault(name, Dim(name, min=lo, max=hi)) for axis, (name, lo, hi) in d.items()}
                   for d in tower.dynamic)
    items = tower.probe()[:2]  # batch 2: a batch of 1 would be specialised into the graph
    example = tuple(torch.from_numpy(x) for x in tower.feeds(items))
    with _EXPORT_LOCK, contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(tower.module, example, str(folder / "model.onnx"), dynamo=True,
                          dynamic_shapes=(shapes,), input_names=list(tower.input_names),
                          output_names=["vectors"], opset_version=OPSET, verbose=False)


def _short(e: BaseException) -> str:
    """One line of an exporter error: its summary when it has one (torch's run to pages), no colours."""
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(e)).splitlines() if ln.strip()]
    if "## Exception summary" in lines[:-1]:
        lines = lines[lines.index("## Exception summary") + 1:]
    return f"{type(e).__name__}: {(lines or [''])[0][:300]}"


def check_export(base: Any, tower: Tower, run: Runner) -> float:
    """The export's smallest cosine to the torch forward over the probe items: the whole batch
    (several lengths, so the dynamic axes are exercised) and the first item alone (a query)."""
    items = tower.probe()
    worst = 1.0
    for batch in (items, items[:1]):
        want = base.encode(tower.modality, batch)
        got = run(tower.input_names, tower.feeds(batch))
        worst = min(worst, min_cosine(got, want))
    return worst


def quantise_int8(src: Path, dest: Path) -> None:
    """Dynamic int8 quantisation of the matrix products (weights int8 per channel, activations
    quantised on the fly); convolutions stay fp32, where ORT's integer kernels are slower."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            quiet_root_log("consider to run pre-processing"):  # shape inference: nothing to gain here
        warnings.simplefilter("ignore")
        quantize_dynamic(str(src), str(dest), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gemm"])


class ExportCache:
    """The exported towers of one encoder, under ``cache_dir/onnx``. ``base`` gives the torch
    encoder when something must be exported or checked; a complete entry is opened without it."""

    def __init__(self, spec: str, settings: Settings, base: Callable[[], Any], checksum: str | None = None) -> None:
        from mmsearch import cpus

        self.spec = spec
        self.threads = cpus.intra_op_threads(settings)  # a Ray actor's own count, not the node's
        self._base = base
        self.root = Path(settings.cache_dir).expanduser() / "onnx"
        self.int8 = settings.int8
        self._checksum = checksum

    @property
    def base(self) -> Any:
        return self._base()

    def checksum(self) -> str:
        if self._checksum is None:
            self._checksum = weights_checksum(self.base, self.root)
        return self._checksum

    def folder(self, modality: Modality) -> Path:
        return export_dir(self.root, self.spec, modality, self.checksum())

    def runner(self, tower: Tower) -> Runner:
        """The tower's runner: from the cache, else exported and checked now. Raises
        ExportRefused when it cannot be exported or does not match torch (remembered, so it is
        not tried again until torch or onnxruntime change)."""
        folder = self.folder(tower.modality)
        meta_file, refused_file = folder / "meta.json", folder / "refused.json"
        if not meta_file.exists():
            if refused_file.exists():
                refused = json.loads(refused_file.read_text())
                if refused.get("versions") == _versions():
                    raise ExportRefused(refused["reason"])
            self._export(tower, folder)
        meta = json.loads(meta_file.read_text())
        if self.int8 and "int8_min_cos" not in meta:
            self._int8(tower, folder, meta)
        if self._needs_backend(folder, meta):
            meta.update(self._pick_backend(tower, folder / "model.onnx"))
            _write_atomic(meta_file, json.dumps(meta, indent=1))
        if not (folder / LIGHT_FILE).exists():  # an export made before light cards: written now
            with contextlib.suppress(OSError):
                save_light_card(self.base, tower.modality, folder, self.checksum())
        return self._open(folder, meta)

    def cached_runner(self, modality: Modality) -> Runner | None:
        """The runner of a complete cache entry (exported, and its backend and int8 model decided
        for these settings), opened without torch; None when torch is needed first."""
        meta_file = self.folder(modality) / "meta.json"
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            return None
        if (self.int8 and "int8_min_cos" not in meta) or self._needs_backend(meta_file.parent, meta):
            return None
        return self._open(meta_file.parent, meta)

    def _needs_backend(self, folder: Path, meta: dict[str, Any]) -> bool:
        """Whether ONNX Runtime and OpenVINO are still to be compared for this fp32 tower."""
        int8 = self.int8 and (folder / "model.int8.onnx").exists()
        return openvino_available() and meta.get("backend_pick") != BACKEND_PICK and not int8

    def _lanes(self, modality: str | None) -> int:
        """A text tower answers queries one at a time; the others embed batches beside decoders."""
        return 1 if modality == "text" else self.threads

    def _open(self, folder: Path, meta: dict[str, Any]) -> Runner:
        lanes = self._lanes(meta.get("modality"))
        if self.int8 and (folder / "model.int8.onnx").exists():
            return OrtRunner(folder / "model.int8.onnx", threads=self.threads, lanes=lanes)
        if openvino_available() and meta.get("backend") == "openvino":
            return OpenVinoRunner(folder / "model.onnx", threads=self.threads, lanes=lanes)
        return OrtRunner(folder / "model.onnx", threads=self.threads, lanes=lanes)

    def _pick_backend(self, tower: Tower, path: Path) -> dict[str, Any]:
        """ONNX Runtime or OpenVINO for an fp32 tower, once OpenVINO has passed the same check
        against torch: whichever runs the probe batch faster here (best of 3, taking turns), and for
        a text tower whichever answers one short text first from nothing (import, load and compile
        included). A text tower embeds queries one at a time, often in a process that lives for one
        query (the CLI), where OpenVINO's compile costs more than its faster batches save. On the 2-core development machine OpenVINO ran ViT-B-32's image tower about 30%
        faster (benchmarks/runtime.py) and took about 3× ONNX Runtime's time to load its text tower."""
        what = f"the {tower.modality} tower of {self.spec}"
        first: dict[str, float] = {}  # load (import and compile included) and one short text, from nothing
        runners: dict[str, Runner] = {}
        one = tower.feeds(tower.probe()[:1])
        try:
            lanes = self._lanes(tower.modality)  # ONNX Runtime as it will run this tower
            for name, make in (("onnxruntime", lambda p: OrtRunner(p, threads=self.threads, lanes=lanes)),
                               ("openvino", lambda p: OpenVinoRunner(p, threads=self.threads, lanes=lanes))):
                t0 = time.perf_counter()
                runners[name] = make(path)
                runners[name](tower.input_names, one)
                first[name] = time.perf_counter() - t0
            cos = check_export(self.base, tower, runners["openvino"])
        except Exception as e:  # noqa: BLE001 - OpenVINO is optional: ONNX Runtime runs the tower
            log.warning("OpenVINO cannot run %s (%s); ONNX Runtime runs it", what, _short(e))
            return {"backend": "onnxruntime", "openvino_min_cos": None, "backend_pick": BACKEND_PICK}
        if not cos >= MIN_COS_FP32:
            log.warning("OpenVINO does not match torch on %s (min cosine %.6f); ONNX Runtime runs it", what, cos)
            return {"backend": "onnxruntime", "openvino_min_cos": cos, "backend_pick": BACKEND_PICK}
        feeds = tower.feeds(tower.probe())
        best = dict.fromkeys(runners, float("inf"))
        for name, run in runners.items():
            run(tower.input_names, feeds)  # warm-up: first calls allocate and plan
        for _ in range(3):
            for name, run in runners.items():
                t0 = time.perf_counter()
                run(tower.input_names, feeds)
                best[name] = min(best[name], time.perf_counter() - t0)
        if tower.modality == "text":
            backend = min(first, key=lambda n: first[n])
        else:  # batches: OpenVINO only by a clear margin (see OPENVINO_MARGIN)
            backend = "openvino" if best["openvino"] < OPENVINO_MARGIN * best["onnxruntime"] else "onnxruntime"
        log.info("%s runs on %s (probe batch: %s; first answer: %s)", what, backend,
                 ", ".join(f"{n} {1000 * t:.1f} ms" for n, t in best.items()),
                 ", ".join(f"{n} {1000 * t:.1f} ms" for n, t in first.items()))
        return {"backend": backend, "openvino_min_cos": cos, "backend_pick": BACKEND_PICK,
                "backend_ms": {n: round(1000 * t, 2) for n, t in best.items()},
                "first_ms": {n: round(1000 * t, 2) for n, t in first.items()}}

    def _export(self, tower: Tower, folder: Path) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=".export-"))
        what = f"the {tower.modality} tower of {self.spec}"
        try:
            t0 = time.perf_counter()
            try:
                getattr(self.base, "load_tower", lambda modality: None)(tower.modality)  # its weights, read
                export_tower(self.base, tower, tmp)
                cos = check_export(self.base, tower, OrtRunner(tmp / "model.onnx"))
            except Exception as e:  # noqa: BLE001 - any exporter or runtime failure: torch runs the tower
                self._refuse(folder, f"could not export {what} to ONNX ({_short(e)}); using torch")
            if not cos >= MIN_COS_FP32:
                self._refuse(folder, f"the ONNX export of {what} does not match torch (min cosine {cos:.6f} "
                             f"< {MIN_COS_FP32}); using torch")
            meta = {"spec": self.spec, "modality": tower.modality, "checksum": self.checksum(),
                    "export_version": EXPORT_VERSION, "min_cos": cos, "inputs": list(tower.input_names),
                    "export_s": round(time.perf_counter() - t0, 2), **_versions()}
            _write_atomic(tmp / "meta.json", json.dumps(meta, indent=1))
            save_light_card(self.base, tower.modality, tmp, self.checksum())
            log.info("exported %s to ONNX in %.1f s (min cosine to torch %.6f)", what, meta["export_s"], cos)
            if folder.exists() and not (folder / "meta.json").exists():
                shutil.rmtree(folder, ignore_errors=True)  # an earlier refusal, with other versions
            try:
                os.rename(tmp, folder)
            except OSError:  # another process exported it first: theirs is as good
                if not (folder / "meta.json").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _refuse(self, folder: Path, reason: str) -> None:
        with contextlib.suppress(OSError):
            _write_atomic(folder / "refused.json", json.dumps({"reason": reason, "versions": _versions()}))
        raise ExportRefused(reason)

    def _int8(self, tower: Tower, folder: Path, meta: dict[str, Any]) -> None:
        """The int8 model, quantised from the fp32 export on first use and checked against it;
        left out (fp32 runs) when it is not close enough."""
        path = folder / "model.int8.onnx"
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".int8-", suffix=".onnx")
        os.close(fd)
        cos: float | None = None
        try:
            quantise_int8(folder / "model.onnx", Path(tmp))
            items = tower.probe()
            fp32 = OrtRunner(folder / "model.onnx")(tower.input_names, tower.feeds(items))
            cos = min_cosine(OrtRunner(Path(tmp))(tower.input_names, tower.feeds(items)), fp32)
            if cos >= MIN_COS_INT8:
                os.replace(tmp, path)
        except Exception as e:  # noqa: BLE001 - a quantiser failure leaves fp32 running
            log.warning("could not quantise the %s tower of %s to int8 (%s); fp32 runs it", tower.modality,
                        self.spec, _short(e))
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        meta["int8_min_cos"] = cos
        _write_atomic(folder / "meta.json", json.dumps(meta, indent=1))
        if cos is not None:
            log.warning("int8 %s tower of %s: min cosine to fp32 %.4f%s", tower.modality, self.spec, cos,
                        "" if cos >= MIN_COS_INT8 else f" < {MIN_COS_INT8}: fp32 runs it")


# ---------------------------------------------------------------------------------------------
# Light cards: what a cached tower needs beside its graph to run without torch.

LIGHT_FILE = "light.json"
FAMILY_MODALITIES: dict[str, tuple[Modality, ...]] = {"open_clip": ("image", "text"), "clap": ("audio", "text")}
_CHECK_TEXTS = (*_PROBE_TEXTS, "", "  Café crème, naïve FAÇADE!  ", "&amp;lt;b&amp;gt; &quot;quoted&quot; &#39;x&#39;",
                "🐶🐱 emoji 👨\u200d👩\u200d👧", "日本語のテキスト, 中文", "3.14159 and 1,000,000 it's we'll",
                "tabs\tand\nnew lines\r\n", "<start_of_text> <end_of_text>", "x" * 400)


@dataclass
class LightTower:
    """A cached tower whose inputs are made without torch, from the files saved beside its export
    (open_clip's tokeniser vocabulary, its image transform's recipe)."""

    modality: Modality
    input_names: tuple[str, ...]
    feeds: Callable[[Sequence[Any]], tuple[np.ndarray, ...]]
    prepare: Callable[[Any], Any]


def _check_images() -> list[Any]:
    """Sizes, aspect ratios and colour modes the recipe must reproduce exactly."""
    from PIL import Image

    rng = np.random.default_rng(1)
    rgb = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in
           ((300, 400), (333, 500), (224, 224), (17, 900), (96, 160))]
    return [*rgb, rgb[0].convert("RGBA"), rgb[1].convert("L"), rgb[2].convert("P"), rgb[3].convert("CMYK")]


def save_light_card(base: Any, modality: Modality, folder: Path, checksum: str) -> None:
    """Write ``light.json`` (and the tokeniser's vocabulary or the image recipe) beside a tower's
    export, once they give exactly the torch encoder's inputs on the check items; a tower whose
    inputs are not reproduced gets a card saying so (``feeds: null``) and torch prepares them."""
    card: dict[str, Any] = {"spec": base.spec, "space": base.space, "dim": int(base.dim),
                            "modalities": list(base.modalities), "checksum": checksum, "modality": modality,
                            "feeds": None}
    try:
        card.update(_light_inputs(base, modality, folder))
    except Exception as e:  # noqa: BLE001 - an unusual tokeniser or transform: torch prepares its inputs
        log.info("the %s inputs of %s are prepared by torch (%s)", modality, base.spec, _short(e))
    _write_atomic(folder / LIGHT_FILE, json.dumps(card, indent=1))


def _light_inputs(base: Any, modality: Modality, folder: Path) -> dict[str, Any]:
    """Save the tower's inputs' files into ``folder`` when they reproduce torch's; the card's
    ``feeds`` (and settings) saying how to read them, or nothing."""
    from mmsearch.encoders.clip_tokenizer import VOCAB_FILE, ClipTokenizer, TokenizerSpec, save_vocab
    from mmsearch.encoders.image_prep import ImagePrep

    card: dict[str, Any] = {}
    if base.space == "clip" and modality == "text":
        spec = TokenizerSpec.from_open_clip(base.tokenizer)
        if spec is not None:
            save_vocab(base.tokenizer, spec, folder)
            mine = ClipTokenizer.load(folder)
            if all(np.array_equal(mine([t]), np.asarray(base.tokenizer([t]))) for t in _CHECK_TEXTS):
                card.update(feeds="clip-text", trimmable=bool(base.text_trimmable))
            else:
                log.info("open_clip's tokeniser of %s is not reproduced: torch tokenises", base.spec)
                (folder / VOCAB_FILE).unlink()
    elif base.space == "clap" and modality == "text":
        if save_clap_tokenizer(base, folder):
            card["feeds"] = "clap-text"
    elif base.space == "clip" and modality == "image":
        prep = ImagePrep.from_transform(getattr(base, "_pil_stage", None), getattr(base, "_norm", None))
        if prep is not None and all(np.array_equal(prep(img), np.asarray(base.prepare("image", img)))
                                    for img in _check_images()):
            prep.save(folder)
            card["feeds"] = "clip-image"
    return card


CLAP_TOKENIZER_FILE = "clap_tokenizer.json"


def save_clap_tokenizer(base: Any, folder: Path) -> bool:
    """CLAP's fast tokeniser (RoBERTa BPE) as the ``tokenizers`` library saves it, with the
    padding and truncation ``ClapEncoder.tokens`` asks for; kept when it gives the same ids and
    masks as transformers on the check texts, one at a time and as a batch."""
    backend = getattr(base.tokenizer, "backend_tokenizer", None)
    if backend is None or getattr(base.tokenizer, "padding_side", "right") != "right":
        return False
    settings = {"max_length": int(base._max_tokens), "pad_id": int(base.tokenizer.pad_token_id),
                "pad_token": str(base.tokenizer.pad_token)}
    path = folder / CLAP_TOKENIZER_FILE
    path.write_text(json.dumps({"settings": settings, "tokenizer": json.loads(backend.to_str())}))
    ours = load_clap_tokenizer(folder)
    for batch in ([list(_CHECK_TEXTS)] + [[t] for t in _CHECK_TEXTS]):
        want = base.tokens(batch, "np")
        got = ours(batch)
        if not (np.array_equal(got[0], want["input_ids"]) and np.array_equal(got[1], want["attention_mask"])):
            log.info("the tokeniser of %s is not reproduced: transformers tokenises", base.spec)
            path.unlink()
            return False
    return True


def load_clap_tokenizer(folder: Path) -> Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]:
    """Ids and attention mask, padded to the batch's longest text and cut at the model's length."""
    from tokenizers import Tokenizer

    data = json.loads((folder / CLAP_TOKENIZER_FILE).read_text())
    s = data["settings"]
    tok = Tokenizer.from_str(json.dumps(data["tokenizer"]))
    tok.enable_truncation(max_length=int(s["max_length"]))
    tok.enable_padding(pad_id=int(s["pad_id"]), pad_token=str(s["pad_token"]))

    def tokens(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        out = tok.encode_batch(list(texts))
        return (np.array([e.ids for e in out], dtype=np.int64).reshape(len(out), -1),
                np.array([e.attention_mask for e in out], dtype=np.int64).reshape(len(out), -1))

    return tokens


def read_card(folder: Path) -> dict[str, Any] | None:
    """A tower's light card, when its export is there and can be fed without torch."""
    try:
        card = json.loads((folder / LIGHT_FILE).read_text())
    except (OSError, ValueError):
        return None
    return card if card.get("feeds") and (folder / "meta.json").exists() else None


def light_tower(folder: Path) -> LightTower | None:
    """The tower cached in ``folder``, fed without torch; None when it cannot be."""
    card = read_card(folder)
    if card is None:
        return None
    names = tuple(json.loads((folder / "meta.json").read_text())["inputs"])
    if card["feeds"] == "clip-text":
        from mmsearch.encoders.clip_tokenizer import ClipTokenizer, trim_padding

        tokenizer = ClipTokenizer.load(folder)
        trim = trim_padding if card.get("trimmable") else (lambda t: t)
        return LightTower("text", names, lambda items: (np.ascontiguousarray(trim(tokenizer([str(t) for t in items]))),),
                          str)
    if card["feeds"] == "clap-text":
        tokens = load_clap_tokenizer(folder)
        return LightTower("text", names, lambda items: tokens([str(t) for t in items]), str)
    if card["feeds"] == "clip-image":
        from mmsearch.encoders.image_prep import ImagePrep

        prep = ImagePrep.load(folder)
        return LightTower("image", names, lambda items: (prep.normalise(items),), prep)
    return None


def cached_checksum(spec: Spec, root: Path) -> str | None:
    """The weights checksum ``weights_checksum`` would give, found without building the model: a
    checkpoint file's sha256 (remembered by path, size and mtime), or for a pretrained tag that of
    the file an earlier load read, while the Hugging Face cache still resolves the tag to it.
    A CLAP folder's is that of its files (``dir_sha256``). None when only the model itself can tell
    (``@random``), or for a tag or hub id not loaded here yet."""
    memo = root / "checksums.json"
    if spec.family == "clap" and is_local_name(spec.name):
        return "dir:" + dir_sha256(Path(spec.name), memo) if Path(spec.name).is_dir() else None
    if spec.family == "open_clip" and (not spec.pretrained or spec.pretrained == "random"):
        return None
    if spec.family == "open_clip" and Path(spec.pretrained or "").is_file():
        return "file:" + _file_sha256(Path(spec.pretrained or ""), memo)
    try:
        path = json.loads((root / WEIGHTS_FILE).read_text()).get(str(spec))
    except (OSError, ValueError):
        return None
    if not path or not _hub_cache_current(Path(path)):
        return None
    if spec.family == "clap":
        return "dir:" + dir_sha256(Path(path).parent, memo)
    return "file:" + _file_sha256(Path(path), memo)


WEIGHTS_FILE = "weights.json"  # tag or hub id spec -> the file it was read from (CLAP: its config.json)


def _hub_cache_current(path: Path) -> bool:
    """Whether a file in the Hugging Face cache (``.../snapshots/REV/NAME``) is still what the
    cache gives for its repository's main branch (``refs/main`` names REV), as a load would read."""
    if not path.is_file() or path.parent.parent.name != "snapshots":
        return False
    try:
        return (path.parents[2] / "refs" / "main").read_text().strip() == path.parent.name
    except OSError:
        return False


def _record_weights_file(root: Path, spec: str, path: str) -> None:
    try:
        known = json.loads((root / WEIGHTS_FILE).read_text())
    except (OSError, ValueError):
        known = {}
    if known.get(spec) != path:
        known[spec] = path
        with contextlib.suppress(OSError):
            _write_atomic(root / WEIGHTS_FILE, json.dumps(known, indent=1))


# ---------------------------------------------------------------------------------------------
# The encoder.


class OnnxEncoder:
    """An Encoder whose forwards run on ONNX Runtime; preprocessing, spec and dimensions are the
    wrapped torch encoder's, so its vectors can be mixed with torch's in one catalog. Each tower is
    exported (or loaded from the cache) on its first use: a text query never loads the image tower.

    Built by ``from_cache`` when the model's exports are cached with their light cards, it has no
    torch encoder at all until a tower needs one (to be exported, or fed by torch): a text query
    then imports neither torch nor open_clip."""

    runtime = "onnx"

    def __init__(self, base: Any | None, settings: Settings, *, load_base: Callable[[], Any] | None = None,
                 card: dict[str, Any] | None = None) -> None:
        if base is None and (load_base is None or card is None):
            raise ValueError("an OnnxEncoder needs its torch encoder, or a light card and a way to load it")
        self._base = base
        self._load_base = load_base
        self._base_lock = threading.Lock()
        info = card or {}
        self.spec: str = base.spec if base is not None else info["spec"]
        self.space: str = base.space if base is not None else info["space"]
        self.dim: int = int(base.dim if base is not None else info["dim"])
        self.modalities: tuple[Modality, ...] = tuple(base.modalities if base is not None else info["modalities"])
        self.batch_size: int = base.batch_size if base is not None else settings.batch_size
        self.device = "cpu"
        self.cache = ExportCache(self.spec, settings, lambda: self.base, None if base is not None else info["checksum"])
        self._towers: dict[Modality, Tower | LightTower] = {}
        self._light: dict[Modality, LightTower | None] = {}
        self._runners: dict[Modality, Runner | None] = {}
        self._ingesting = False
        self._lock = threading.Lock()

    @classmethod
    def from_cache(cls, spec: str, settings: Settings, load_base: Callable[[], Any]) -> "OnnxEncoder | None":
        """The encoder of a model whose exports are cached with light cards, built without torch:
        the cache is found by spec and weights checksum, the checksum by hashing the checkpoint file
        (see ``cached_checksum``). None when nothing usable is cached: build the torch encoder."""
        from mmsearch.encoders.base import clap_canonical, open_clip_canonical

        parsed = Spec.parse(spec)
        parsed = open_clip_canonical(parsed) if parsed.family == "open_clip" else clap_canonical(parsed)
        root = Path(settings.cache_dir).expanduser() / "onnx"
        checksum = cached_checksum(parsed, root)
        if checksum is None:
            return None
        for modality in FAMILY_MODALITIES[parsed.family]:
            card = read_card(export_dir(root, str(parsed), modality, checksum))
            if card is not None and card.get("checksum") == checksum and card.get("spec") == str(parsed):
                return cls(None, settings, load_base=load_base, card=card)
        return None

    @property
    def base(self) -> Any:
        """The torch encoder, built on first use when this one came from the cache."""
        if self._base is None:
            with self._base_lock:
                if self._base is None:
                    assert self._load_base is not None
                    log.info("%s: loading the torch model", self.spec)
                    self._base = self._load_base()
        return self._base

    def __getattr__(self, name: str) -> Any:
        """Family-specific attributes (``sample_rate``, ``window_seconds``, ...) are the base's."""
        if name.startswith("_") or name in ("base", "cache"):
            raise AttributeError(name)
        return getattr(self.base, name)

    def _light_tower(self, modality: Modality) -> LightTower | None:
        """The modality's tower fed without torch, when its export and light card are cached; decided
        once, so items are prepared the way ``encode`` feeds them."""
        if modality not in self._light:
            self._light[modality] = light_tower(self.cache.folder(modality))
        return self._light[modality]

    @property
    def image_side(self) -> int | None:
        """The short side ``prepare`` resizes an image to, read off the light recipe (no torch)."""
        if "image" not in self.modalities:
            return None
        light = self._light_tower("image")
        if light is not None:
            return getattr(light.prepare, "side", None)
        return getattr(self.base, "image_side", None)

    def prepare(self, modality: Modality, decoded: Any) -> Any:
        light = self._light_tower(modality) if modality in self.modalities else None
        if light is not None and (modality != "image" or _is_pil(decoded)):
            return light.prepare(decoded)
        return self.base.prepare(modality, decoded)

    def preparer(self, modality: Modality) -> Callable[[Any], Any] | None:
        """``prepare`` for decoded items as a picklable function that holds no model (Ray's decode
        tasks run it): the light tower's recipe where there is one, else the torch encoder's."""
        light = self._light_tower(modality) if modality in self.modalities else None
        if light is not None:
            return light.prepare
        return preparer_of(self.base, modality)

    def load_towers(self) -> None:
        """Every tower's runner now (a server, before its port opens), not on its first query."""
        for modality in self.modalities:
            getattr(self.runner(modality), "ready", lambda: None)()

    def for_ingest(self) -> None:
        """This process embeds batches: a lone row takes one of a batch tower's lanes rather than
        opening a session on every thread beside the lanes' one (unless towers were loaded for
        queries: a server keeps answering them on every thread)."""
        with self._lock:
            self._ingesting = True
            for run in self._runners.values():
                if hasattr(run, "ingesting"):
                    run.ingesting = True  # type: ignore[union-attr]

    def runner(self, modality: Modality) -> Runner | None:
        """The modality's runner, None when torch runs it (export refused, reason logged)."""
        light = self._light_tower(modality)
        with self._lock:
            if modality not in self._runners:
                run = self.cache.cached_runner(modality) if light is not None else None
                if run is None:
                    tower = towers(self.base)[modality]
                    try:
                        run = self.cache.runner(tower)
                    except ExportRefused as e:
                        log.warning("%s", e)
                    self._towers[modality] = tower
                if light is not None:
                    self._towers[modality] = light  # the items were prepared for its feeds
                if hasattr(run, "ingesting"):
                    run.ingesting = self._ingesting  # type: ignore[union-attr]
                self._runners[modality] = run
            return self._runners[modality]

    def encode(self, modality: Modality, prepared: Sequence[Any]) -> np.ndarray:
        if modality not in self.modalities:
            raise ValueError(f"{self.spec} does not embed {modality}")
        if not prepared:
            return np.zeros((0, self.dim), dtype=np.float32)
        run = self.runner(modality)
        if run is None:
            return self.base.encode(modality, prepared)
        tower = self._towers[modality]
        items = list(prepared)
        out = [run(tower.input_names, tower.feeds(items[i:i + self.batch_size]))
               for i in range(0, len(items), self.batch_size)]
        return l2_normalise(np.concatenate(out))


def _is_pil(x: Any) -> bool:
    """A decoded PIL image (not a JPEG left for the device to decode): what the recipe takes."""
    from PIL import Image

    return isinstance(x, Image.Image)
