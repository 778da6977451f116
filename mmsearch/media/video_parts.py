"""A long video decoded by several threads at once, in parts cut at key frames as threads join.

One decoder thread reaches about 85x real time on 1080p H.264 at a frame per 2 s, less than an
encoder on a GPU takes, so a long video should keep every idle decode thread busy. One thread
decodes the video from its start. A thread with nothing else to do joins: it takes the part with
the most left to decode, cuts it at the key frame before the middle of what is left (found by
seeking: an index lookup, not a read), and decodes the back half; the part's own thread stops at
the cut. Threads join whenever they fall idle (an elastic pool), so a film that started while
every thread was busy is shared out as the others finish their files.

Spans still tile the video: a part's last span ends where the next part begins. A part starts
with a sample at its key frame, so where a cut does not fall on a sample of a one-thread decode,
the samples near it differ from that decode's (a still shot crossing a cut is two frames); which
key frames become cuts depends on when threads join.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Iterator
from typing import Any

from mmsearch.handoff import offer
from mmsearch.media.notes import FileNotes, current_notes
from mmsearch.media.video import Damage, FrameSample, VideoInfo, _time, clock_start, iter_frames, probe, video_stream

MIN_PART_SECONDS = 30.0  # no part is cut shorter than this: a cut costs a seek and a restarted clock
SPLIT_TRIES = 3  # a part may pass the cut while it is being found: find another


class Part:
    """A stretch of the video from the key frame at ``start`` to ``until`` (None: the end), and
    the last key frame its thread reached. ``until`` moves earlier when a joining thread takes
    the back of it, always to a key frame the thread has not reached (both under one lock)."""

    def __init__(self, start: float, until: float | None, lock: threading.Lock) -> None:
        self.start, self.until, self.reached = start, until, start
        self.finished = self.stopped = False
        self._lock = lock

    def passes(self, t: float) -> bool:
        """Asked at each key frame, in order: whether the part ends before it."""
        with self._lock:
            if self.stopped or (self.until is not None and t >= self.until - 1e-6):
                return True
            self.reached = max(self.reached, t)
            return False

    def end(self) -> float | None:
        with self._lock:
            return self.until


class VideoParts:
    """The parts of one video and the threads decoding them. ``take`` gives a thread its part;
    ``frames`` decodes it; ``wait`` returns once every part taken is decoded."""

    def __init__(self, source: str | os.PathLike[str], interval: float, side: int, info: VideoInfo) -> None:
        self.source, self.interval, self.side, self.info = str(source), interval, side, info
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)
        self._parts: list[Part] = []
        self._running = 0
        self._error: Exception | None = None
        self._stopped = False
        self._seeker: Any = None  # one container kept open to find cuts
        self._seek_lock = threading.Lock()
        self._closed = False  # settled: no container is opened again
        self._damage = Damage()  # the file's damaged packets, over all its parts
        self._notes = current_notes()  # the file's record, where other threads' decoder messages go too

    def take(self) -> Part | None:
        """The whole video for the first caller; then the back half of the part with the most left
        (at least two parts' worth), or None: none is long enough, seeking for a cut failed, the
        parts went on past three cuts in a row, or the video was stopped."""
        with self._lock:
            if self._stopped:
                return None
            if not self._parts:
                return self._add(Part(0.0, None, self._lock))
        for _ in range(SPLIT_TRIES):
            with self._lock:
                left, part = max(((self._left(p), p) for p in self._parts if not p.finished),
                                 key=lambda x: x[0], default=(0.0, None))
                if part is None or left < 2 * MIN_PART_SECONDS or self._stopped:
                    return None
                aim = part.reached + left / 2
            cut = self._key_frame_before(aim)
            if cut is None:
                return None
            with self._lock:
                if not part.finished and not self._stopped and cut - part.reached >= MIN_PART_SECONDS - 1e-6 \
                        and self._end(part) - cut >= MIN_PART_SECONDS - 1e-6:
                    back = Part(cut, part.until, self._lock)
                    part.until = cut
                    return self._add(back)
        return None

    def frames(self, part: Part) -> Iterator[FrameSample]:
        """The part's samples. A failure stops every part and is raised here; ``wait`` raises the
        first part's."""
        with contextlib.ExitStack() as stack:  # another thread's decoder messages go on the file's record too
            own = stack.enter_context(FileNotes()) if current_notes() is None else None
            try:
                yield from iter_frames(self.source, self.interval, self.side,
                                       self.info if part.start == 0 else VideoInfo(), part.start, part,
                                       self._damage)
            except Exception as e:
                self.stop(e)
                raise
            finally:
                with self._lock:
                    if own is not None and self._notes is not None:
                        for line in own.lines:
                            self._notes.add(line)
                    part.finished = True
                    self._running -= 1
                    self._settled.notify_all()

    def stop(self, error: Exception | None = None) -> None:
        """Every part stops at its next key frame and no part is cut any more; ``error``, the
        first one given, fails the video."""
        with self._lock:
            self._stopped = True
            self._error = self._error or error
            for p in self._parts:
                p.stopped = True

    def check(self) -> None:
        """Raise the first part's failure, if a part has failed."""
        with self._lock:
            error = self._error
        if error is not None:
            raise error

    def settle(self) -> Exception | None:
        """Until every part taken is decoded; the first part's failure, if any."""
        with self._lock:
            while self._running:
                self._settled.wait()
            error = self._error
        self.close()
        return error

    def wait(self) -> None:
        """``settle``, raising the failure."""
        error = self.settle()
        if error is not None:
            raise error

    def close(self) -> None:
        with self._seek_lock:
            self._closed = True
            if self._seeker is not None:
                self._seeker.close()
                self._seeker = None

    @property
    def splittable(self) -> bool:
        """Long enough for two parts at all: worth offering to idle threads."""
        return (self.info.duration or 0.0) >= 2 * MIN_PART_SECONDS

    def _add(self, part: Part) -> Part:
        self._parts.append(part)
        self._running += 1
        return part

    def _end(self, part: Part) -> float:
        return part.until if part.until is not None else self.info.duration or 0.0

    def _left(self, part: Part) -> float:
        return self._end(part) - part.reached

    def _key_frame_before(self, t: float) -> float | None:
        """The time of the key frame at or before ``t``; None where seeking fails."""
        import av

        with self._seek_lock:
            if self._closed:  # a thread that found the video finished while it took a part
                return None
            try:
                if self._seeker is None:
                    self._seeker = av.open(self.source, "r")
                c = self._seeker
                vs = video_stream(c)
                if vs is None or not vs.time_base:
                    return None
                tb = float(vs.time_base)
                base = clock_start(c, vs)
                c.seek(round((t + base) / tb), stream=vs, backward=True, any_frame=False)
                packet = next((p for p in c.demux(vs) if p.size), None)
            except (av.error.FFmpegError, ValueError, StopIteration):
                return None
            return _time(packet, tb, base) if packet is not None and packet.is_keyframe else None


def own_frames(parts: VideoParts, part: Part | None) -> Iterator[FrameSample]:
    """The samples of the thread that opened the video: its first ``part``, then any other part
    it can take once that is done (``wait`` then waits for the other threads' parts)."""
    while part is not None:
        yield from parts.frames(part)
        part = parts.take()


def iter_parts(source: str | os.PathLike[str], interval: float, side: int, info: VideoInfo,
               threads: int) -> Iterator[FrameSample]:
    """The samples of a video decoded by ``threads`` threads that take parts as above, as they
    come: not in time order. The first failure stops every part and is raised."""
    if info.duration is None:  # what parts are cut by
        info.__dict__.update(probe(source).__dict__)
    parts = VideoParts(source, interval, side, info)
    out: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=4 * threads)
    stop = threading.Event()

    def put(kind: str, value: Any) -> bool:
        return offer(out, (kind, value), stop)

    def work() -> None:
        try:
            while not stop.is_set() and (part := parts.take()) is not None:
                for sample in parts.frames(part):
                    if not put("frame", sample):
                        return
        except Exception as e:  # noqa: BLE001 - raised in the caller's thread
            put("error", e)
        finally:
            put("done", None)  # whatever ended it: the caller never waits on a thread that is gone

    workers = [threading.Thread(target=work, name=f"mmsearch-video-part-{k}", daemon=True) for k in range(threads)]
    for w in workers:
        w.start()
    error: Exception | None = None
    try:
        left = len(workers)
        while left:
            kind, value = out.get()
            if kind == "frame":
                yield value
            elif kind == "done":
                left -= 1
            else:
                error = value
                break
    finally:
        stop.set()
        parts.stop()
        for w in workers:
            w.join()
        first = parts.settle()
    if error is not None:
        raise first or error  # the first part to fail says why, not one stopped after it
