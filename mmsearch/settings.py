"""The one settings object. Every value has a default that works with no config file;
environment variables (``MMSEARCH_*``) and CLI flags override them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_IMAGE_MODEL = "open_clip:ViT-B-32@laion2b_s34b_b79k"
DEFAULT_AUDIO_MODEL = "clap:laion/clap-htsat-unfused"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MMSEARCH_", extra="ignore")

    catalog: Path = Field(Path(".mmsearch"), description="Catalog directory.")
    db_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite inside the catalog.")
    model: str | None = Field(
        None, description=f"Image/text encoder spec; default: the catalog's own, else {DEFAULT_IMAGE_MODEL}."
    )
    audio_model: str | None = Field(
        None, description=f"Audio/text encoder spec; default: the catalog's own, else {DEFAULT_AUDIO_MODEL}."
    )
    audio: bool = Field(True, description="Index and search audio (loads the audio model).")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    runtime: Literal["auto", "torch", "onnx"] = Field(
        "auto", description="What runs the models: 'onnx' exports each tower to ONNX once (cached in cache_dir) "
        "and runs it with ONNX Runtime on the CPU; 'torch' runs PyTorch; 'auto' is onnx on a CPU when "
        "onnxruntime is installed (the 'cpu' extra), torch on a GPU. Vectors are interchangeable.")
    int8: bool = Field(False, description="With the ONNX runtime, run towers quantised to int8 (dynamic): "
                       "faster, cosine to fp32 checked to be at least 0.99 (not bit-identical vectors).")
    cache_dir: Path = Field(default_factory=lambda: Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache")
                            / "mmsearch", description="Exported ONNX towers, keyed by model spec and "
                            "weights checksum, so a model is exported once.")
    batch_size: int = Field(32, ge=1, le=4096)
    decode_workers: int | None = Field(
        None, ge=1, description="Decode threads; default: up to 16 when the encoder runs on a GPU (decoding "
        "is the bottleneck there), one per 4 available cores on the CPU (more would take cores from the "
        "encoder). Available cores: CPU affinity capped by the cgroup quota (mmsearch/cpus.py). Threads with "
        "no file left to take decode a long video's parts side by side.")
    threads: int | None = Field(
        None, ge=1, description="Intra-op threads of the encoders (torch, ONNX Runtime) and of batched faiss "
        "searches; default: the available cores (CPU affinity capped by the cgroup quota), never the "
        "machine's count, which oversubscribes a container.")
    image_decode: Literal["auto", "pillow", "torch"] = Field(
        "auto", description="How ingest decodes JPEGs: 'torch' decodes them in batches with "
        "torchvision.io.decode_jpeg on the encoder's device (nvJPEG on a GPU) and resizes there; "
        "'pillow' decodes each in a worker thread; 'auto': torch when the encoder runs on CUDA, else "
        "pillow (faster on a CPU, measured: docs/benchmarks.md).")
    model_config_dirs: list[Path] = Field(
        default_factory=list, description="Extra open_clip architecture JSON files or folders."
    )

    # Ingestion guards.
    max_image_pixels: int = Field(89_478_485, description="Decompression-bomb limit (Pillow's default).")
    max_text_bytes: int = Field(1_000_000, description="Larger .txt/.md files are recorded as failed.")
    follow_links: bool = Field(False, description="Follow symlinks (and caption rows) to files outside the "
                               "folders being indexed; off, they are skipped and counted. The HTTP "
                               "service never goes outside its index roots.")
    video_interval: float = Field(2.0, gt=0, description="Videos: at least one frame every this many seconds "
                                  "(plus one per scene cut); near-identical neighbouring frames are collapsed.")
    video_frame_side: int | None = Field(None, ge=32, le=4096, description="Videos: frames are decoded scaled down to "
                                         "this short side (never enlarged) before embedding; default: the side "
                                         "the image model resizes to (224 for most CLIP models), so each frame is "
                                         "scaled once.")
    commit_every: int = Field(256, ge=1, description="Items per durable commit during ingest.")
    sync_every: float = Field(30.0, ge=0, description="Seconds between index upkeep checks during an ingest "
                              "(merges and retrains run in the background; items are searchable once committed).")
    lock_timeout: float = Field(0.0, ge=0, description="Seconds a second writer waits for the catalog's write "
                                "lock before it is refused (0: refused at once).")

    # Scale-out ingest on Ray (the 'ray' extra; docs/cluster.md).
    ray: str | None = Field(None, description="Index through a Ray cluster: 'auto' (the cluster this machine "
                            "belongs to), 'local' (start one here), or an address (HOST:6379, ray://HOST:10001). "
                            "Decoding runs in Ray tasks, the encoders in a pool of Ray actors; this process plans "
                            "the work and is the catalog's one writer. None: index in this process.")
    ray_actors: int | None = Field(None, ge=1, description="Encoder actors (one model each); default: one per GPU "
                                   "of the cluster, else half its CPUs over ray_actor_cpus, at least 1.")
    ray_actor_cpus: float = Field(1.0, gt=0, description="CPUs each encoder actor reserves (and its threads "
                                  "unless `threads` is set); with GPUs each actor also takes one GPU.")
    ray_decode_cpus: float = Field(1.0, gt=0, description="CPUs each Ray decode task reserves.")
    ray_batch_size: int | None = Field(None, ge=1, description="Units per batch sent to an encoder actor; "
                                       "default: batch_size.")

    # Index choice (see search/ann.py for the FAISS guideline rules).
    ivf_min_vectors: int = Field(50_000, ge=1, description="Below this, exact IndexFlatIP.")
    retrain_growth: float = Field(4.0, gt=1.0, description="Retrain IVF-PQ when N grows (or shrinks) by this "
                                  "factor since training, keeping nlist in the FAISS guideline range.")
    hnsw_min_vectors: int = Field(4_000_000, ge=1, description="From here up, IVF-PQ gets an HNSW coarse quantiser "
                                  "(IVF65536_HNSW32) as the FAISS wiki advises for 1M-100M vectors.")
    build_memory_mb: int = Field(384, ge=16, description="Float32 training sample cap for an index (re)build: "
                                 "a rebuild holds at most this beside the index. It also caps nlist (39 "
                                 "training points per list): 384 MB at 512-d allows 5,041 lists; the wiki's "
                                 "IVF65536_HNSW32 needs about 5 GB.")
    build_threads: int | None = Field(None, ge=1, description="Threads for an index (re)build; default: "
                                      "every core but one, so queries running beside it keep one.")
    merge_min_changes: int = Field(1_000, ge=1, description="Changes since the saved index before they are merged "
                                   "into it (until then readers apply them from the change log).")
    merge_fraction: float = Field(0.01, gt=0, description="... or this fraction of the index, if larger.")
    nprobe: int | None = Field(None, description="IVF lists probed; default from nlist.")
    faiss_gpu: bool = Field(True, description="Use a GPU for FAISS when faiss sees one.")

    # Query.
    rerank_factor: int = Field(20, ge=1, description="ANN candidates per result, rescored exactly "
                               "(20: recall@10 0.98 at 1M vectors with IVF-PQ; see docs/benchmarks.md).")

    # HTTP service.
    api_key: str | None = Field(None, description="Required for writes when set.")
    max_upload_bytes: int = Field(25 * 1024 * 1024, ge=1, description="Largest query file: an upload, or what "
                                  "`search --image URL` fetches.")
    url_timeout: float = Field(10.0, gt=0, description="Seconds `search --image URL` waits for the answer.")
    index_roots: list[Path] = Field(default_factory=list, description="Folders the API may index.")
    cors_origins: list[str] = Field(default_factory=list, description="Origins (scheme://host:port) whose pages "
                                    "may call the API from a browser (CORS); '*' for any. None: same origin only.")

    def resolved_build_threads(self) -> int:
        from mmsearch.cpus import available_cpus

        return self.build_threads or max(1, min(self.threads or available_cpus(), available_cpus()) - 1)

    def resolved_db_url(self) -> str:
        if self.db_url:
            return self.db_url
        return f"sqlite:///{(Path(self.catalog).expanduser() / 'catalog.db').resolve()}"
