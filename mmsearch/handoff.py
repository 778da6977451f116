"""Handing items from producer threads to a reader through a bounded queue."""

from __future__ import annotations

import queue
import threading
from typing import TypeVar

T = TypeVar("T")


def offer(q: queue.Queue[T], item: T, stop: threading.Event, poll: float = 0.1) -> bool:
    """Put ``item``, waiting while the queue is full, unless ``stop`` is set meanwhile (False):
    a reader that stopped reading must not leave its producers blocked forever."""
    while True:
        try:
            q.put(item, timeout=poll)
            return True
        except queue.Full:
            if stop.is_set():
                return False
