"""Micro-batching of query text embeddings.

Under load, many requests each embed one short text. A forward pass over N texts costs far less
than N passes (weights are read once, the matrix products are wider, and on a few CPU cores N
threads running torch at once only fight over them), so one worker thread per encoder takes
every text waiting when it becomes free and embeds them together. There is no timer: an idle
server runs a lone query at once, and a busy one forms batches by itself while the previous
batch runs. Images and audio go straight through: query media are rare and costly to batch.

The wrapper is an ``Encoder`` like any other, so the engine's own query path uses it unchanged.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from mmsearch.encoders.base import Encoder, Modality


class _Request:
    __slots__ = ("texts", "done", "result", "error")

    def __init__(self, texts: list[Any]) -> None:
        self.texts = texts
        self.done = threading.Event()
        self.result: np.ndarray | None = None
        self.error: BaseException | None = None


class BatchingEncoder:
    """Coalesces concurrent ``encode("text", ...)`` calls into shared forward passes."""

    def __init__(self, inner: Encoder, max_batch: int = 64) -> None:
        self.inner = inner
        self.spec, self.space, self.dim = inner.spec, inner.space, inner.dim
        self.modalities, self.batch_size, self.device = inner.modalities, inner.batch_size, inner.device
        self.max_batch = max_batch
        self._pending: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.calls = 0  # encode("text") requests served
        self.batches = 0  # forward passes they took
        self.largest = 0  # most requests in one pass

    def __getattr__(self, name: str) -> Any:  # family-specific attributes (sample_rate, ...)
        return getattr(self.inner, name)

    def prepare(self, modality: Modality, decoded: Any) -> Any:
        return self.inner.prepare(modality, decoded)

    def encode(self, modality: Modality, prepared: Sequence[Any]) -> np.ndarray:
        if modality != "text" or not prepared or len(prepared) >= self.max_batch:
            return self.inner.encode(modality, prepared)
        req = _Request(list(prepared))
        with self._cond:
            if self._closed:  # checked under the lock: a request never queues behind a stopped worker
                return self.inner.encode(modality, prepared)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=f"mmsearch-batch-{self.space}",
                                                daemon=True)
                self._thread.start()
            self._pending.append(req)
            self._cond.notify()
        req.done.wait()
        if req.error is not None:
            raise req.error
        assert req.result is not None
        return req.result

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                batch = [self._pending.popleft()]
                n = len(batch[0].texts)
                while self._pending and n + len(self._pending[0].texts) <= self.max_batch:
                    req = self._pending.popleft()
                    batch.append(req)
                    n += len(req.texts)
            self._run(batch)

    def _run(self, batch: list[_Request]) -> None:
        try:
            vectors = self.inner.encode("text", [t for r in batch for t in r.texts])
        except BaseException as e:  # noqa: BLE001 - handed to every waiting caller
            for r in batch:
                r.error = e
                r.done.set()
            return
        self.calls += len(batch)
        self.batches += 1
        self.largest = max(self.largest, len(batch))
        start = 0
        for r in batch:
            r.result = vectors[start:start + len(r.texts)]
            start += len(r.texts)
            r.done.set()

    def describe(self) -> dict[str, Any]:
        return {"requests": self.calls, "batches": self.batches, "largest_batch": self.largest,
                "mean_batch": round(self.calls / self.batches, 2) if self.batches else 0.0}

    def close(self) -> None:
        """Finish what is queued, then stop the worker; later calls run unbatched."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=30)
