"""Video files through PyAV: the frames worth embedding, with the span of video each stands for.

Decoding every frame of a video at full size costs far more than embedding a few of them, so
frames are chosen before they are decoded where possible:

* Packets are demuxed, not decoded. A key frame is decoded (it starts a group of pictures, and
  encoders put one at a scene cut); the frames between key frames are decoded only when a
  sample is due among them (``interval`` seconds after the last one), and then only that group's
  packets, from its key frame on.
* A candidate frame is scaled down in libswscale (short side ``side`` pixels, never enlarged)
  and compared with the last frame kept through a 16x16 grey thumbnail: a scene cut (a key frame
  far from it) or a due sample that is not near-identical to it is kept; near-identical ones
  are collapsed into it, so a still shot of a minute is one frame spanning the minute.
* Each kept frame spans from its own time to the next kept frame's (the last one to the end),
  is turned upright by the stream's display matrix (phones record sideways and say so), and
  timestamps are the frames' own (variable frame rates stay right).

Memory stays bounded by one group of pictures' packets up to the due time plus a frame. Every
failure surfaces as :class:`VideoDecodeError` whose message is the reason recorded for the file.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from mmsearch.media.decode import Unit
    from mmsearch.media.video_parts import VideoParts

NEAR_IDENTICAL = 0.02  # mean absolute difference (0-1) of 16x16 grey thumbnails: collapsed
SCENE_CUT = 0.12  # ... from here on a key frame starts a new shot
MIN_GAP_FRACTION = 0.25  # key frames closer than this share of the interval to the last candidate are not decoded
MAX_DECODE_ERRORS = 5  # damaged packets tolerated (concealed by the decoder) before the file fails
SHORTFALL = 0.9  # a file whose packets stop before this share of its declared duration is truncated
FRAME_AT_SEEKS = 4  # a thumbnail's seeks back (a demuxer that seeks by decoding time) before one from the start
PRIMING = 0.05  # seconds a sound track may start before or after the picture as encoders make it


class VideoDecodeError(Exception):
    """A file that cannot be decoded as video; the message is the human reason."""


class UnreadableMedia(VideoDecodeError):
    """FFmpeg cannot open the file at all (unknown format, or damaged beyond its headers)."""


@dataclass(frozen=True)
class FrameSample:
    start: float  # seconds on the video's timeline
    end: float  # the next kept frame's start, or the end of the video
    image: Image.Image  # RGB, upright, short side at most ``side``


@dataclass
class VideoInfo:
    """What the container says, and what decoding found (``rotation`` after the first frame)."""

    width: int | None = None  # as shown, after the display rotation
    height: int | None = None
    duration: float | None = None  # seconds
    has_video: bool = False
    has_audio: bool = False
    rotation: int = 0  # degrees, counter-clockwise, as PyAV reads the display matrix
    audio_delay: float = 0.0  # seconds from the file's start to its sound's (a track that starts late)


def quiet_libav() -> None:
    """libav's warnings (damaged packets, odd headers) must not reach the terminal: failures
    surface as exceptions with a reason instead."""
    import av.logging

    av.logging.set_level(None)


@contextmanager
def open_media(source: str | os.PathLike[str] | BinaryIO) -> Iterator[Any]:
    """A PyAV input container, with every failure to open turned into a reason."""
    import av

    quiet_libav()
    if isinstance(source, (str, os.PathLike)):
        try:
            if os.path.getsize(source) == 0:
                raise VideoDecodeError("empty file (0 bytes)")
        except OSError as e:
            raise VideoDecodeError(f"cannot read the file: {e.strerror or e}") from None
        source = str(source)
    try:
        container = av.open(source, "r")
    except av.error.FFmpegError as e:
        raise UnreadableMedia(f"corrupt, truncated or unknown media file ({libav_reason(e)})") from None
    except Exception as e:  # noqa: BLE001 - PyAV raises several types for a bad file
        raise VideoDecodeError(f"cannot open as media: {type(e).__name__}: {e}") from None
    try:
        yield container
    finally:
        container.close()


def video_stream(container: Any) -> Any | None:
    """The first real video stream: a cover picture in a sound file (attached_pic) is not one."""
    import av

    for s in container.streams.video:
        if not (s.disposition & av.stream.Disposition.attached_pic):
            return s
    return None


def probe(source: str | os.PathLike[str] | BinaryIO) -> VideoInfo:
    """Streams, size and duration from the headers, without decoding a frame."""
    with open_media(source) as c:
        return _info(c, video_stream(c))


def clock_start(c: Any, vs: Any) -> float:
    """Where a video's timeline starts, in seconds of its video stream: its first picture, or the
    earliest sound track's start where that is earlier by more than an encoder's priming. A player
    shows the file from there, so the times of samples and windows are the times it seeks to."""
    v = float(vs.start_time * vs.time_base) if vs.start_time is not None and vs.time_base else 0.0
    sound = min((float(a.start_time * a.time_base) for a in c.streams.audio
                 if a.start_time is not None and a.time_base), default=v)  # any track: the file's length counts all
    return sound if v - sound > PRIMING else v


def _length(c: Any, vs: Any, clock: float) -> float | None:
    """The file's length on its timeline (``clock``: its ``clock_start``). MP4 and most containers
    count their duration from the file's first timestamp, Matroska and WebM from 0: a file whose
    streams all start at 5 s would otherwise look 5 s longer than its frames, and truncated."""
    end = c.duration / 1_000_000 if c.duration else None
    if end is not None and "matroska" not in (c.format.name or ""):
        end += (c.start_time or 0) / 1_000_000
    if vs.duration and vs.time_base:  # the picture's own end
        start = float(vs.start_time * vs.time_base) if vs.start_time is not None else clock
        end = max(end or 0.0, start + float(vs.duration * vs.time_base))
    return max(0.0, end - clock) if end is not None else None


def _info(c: Any, vs: Any | None) -> VideoInfo:
    clock = clock_start(c, vs) if vs is not None else 0.0
    if vs is None:
        duration = c.duration / 1_000_000 if c.duration else None
    else:
        duration = _length(c, vs, clock)
    info = VideoInfo(duration=duration, has_video=vs is not None, has_audio=bool(c.streams.audio))
    if vs is not None:
        info.width, info.height = vs.codec_context.width or None, vs.codec_context.height or None
        a = c.streams.audio[0] if c.streams.audio else None
        if a is not None and a.start_time is not None and a.time_base:
            delay = float(a.start_time * a.time_base) - clock
            info.audio_delay = delay if delay > PRIMING else 0.0
    return info


class Damage:
    """Damaged packets counted over a whole file: decoded in parts by several threads, it fails
    past MAX_DECODE_ERRORS as it would decoded by one."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    def add(self) -> int:
        with self._lock:
            self._count += 1
            return self._count


class PartEnd(Protocol):
    """Where a part of a video ends, asked as decoding goes (video_parts.Part: it can move)."""

    def passes(self, t: float) -> bool: ...  # at each key frame, in order: the part ends before it

    def end(self) -> float | None: ...  # once decoding stopped: where its last span ends (None: the end)

    @property
    def stopped(self) -> bool: ...  # called off (another part failed): no last span, no verdict on the end


@dataclass
class _FixedEnd:
    until: float | None
    stopped: bool = False

    def passes(self, t: float) -> bool:
        return self.until is not None and t >= self.until - 1e-6

    def end(self) -> float | None:
        return self.until


def iter_frames(source: str | os.PathLike[str] | BinaryIO, interval: float = 2.0, side: int = 256,
                info: VideoInfo | None = None, start: float = 0.0,
                until: float | PartEnd | None = None, damage: Damage | None = None) -> Iterator[FrameSample]:
    """Yield the frames worth embedding (see the module's docstring), lazily, each with its span.
    ``info``, when given, is filled in as decoding finds things out (size as shown, rotation).
    ``start`` and ``until`` (key frame times; ``until`` may move earlier while decoding, see
    video_parts.py) keep to one part of the video: its first sample is the key frame at
    ``start``, its last span ends at ``until``; ``damage`` counts the damaged packets of all parts.
    Damage found while reading raises after the frames decoded so far were yielded: callers
    treat the whole file as failed then."""
    import av

    if interval <= 0 or side < 16:
        raise ValueError("interval must be positive and side at least 16 pixels")
    bound: PartEnd = _FixedEnd(until) if until is None or isinstance(until, (int, float)) else until
    with open_media(source) as c:
        vs = video_stream(c)
        found = _info(c, vs)
        if info is not None:
            info.__dict__.update(found.__dict__)
        info = found if info is None else info
        if vs is None:
            raise VideoDecodeError("no video stream in the file")
        # one thread: references decode in a chain (B-frames are skipped), so frame threads
        # only delay each frame's output and the verdict on a key frame with it
        vs.codec_context.thread_count = 1
        tb = float(vs.time_base or 0)  # seconds per tick, as a float: Fractions per packet cost a frame's scaling
        sampler = _Sampler(interval, side, info, tb)
        base = clock_start(c, vs)
        decoder = _Decoder(vs, tb, base, damage or Damage())
        group = _Group()
        last_packet = 0.0
        last_key: float | None = None  # the last key frame's time: groups' lengths repeat
        try:
            if start > 0:  # lands on the key frame at ``start``: the cut was read by the same seek
                sampler.due = start
                c.seek(round((start + base) / tb), stream=vs, backward=True, any_frame=False)
            for packet in c.demux(vs):
                if packet.size == 0:
                    continue
                t = _time(packet, tb, base)
                if start > 0 and group.head is None and not (packet.is_keyframe and t is not None
                                                             and t >= start - 1e-6):
                    continue  # before the part's first key frame: the part before has it
                if t is not None:
                    last_packet = max(last_packet, t + (packet.duration or 0) * tb)
                if packet.is_keyframe:  # a new group: what the last one did not send is never needed
                    yield from group.close(decoder, sampler, base)
                    if t is not None and bound.passes(t):
                        break  # the next part's first key frame
                    gap = t - last_key if t is not None and last_key is not None else None
                    last_key = t if t is not None else last_key
                    group = _Group(packet, t, sampler, gap)
                    if group.decided:  # whether it starts a shot moves the clock: decoded now
                        yield from sampler.take(group.send(decoder, sampler), base)
                    continue
                group.pending.append(packet)
                if group.due(t, sampler):  # a sample may be due here: decode up to here, from the group's start
                    yield from sampler.take(group.send(decoder, sampler), base)
            yield from group.close(decoder, sampler, base)
        except av.error.FFmpegError as e:
            raise VideoDecodeError(f"corrupt or truncated video after {last_packet:.2f} s "
                                   f"({libav_reason(e)})") from None
        if bound.stopped:  # the file has failed elsewhere: where this part stopped says nothing
            return
        if sampler.kept is None:
            raise VideoDecodeError("no video frame could be decoded (corrupt or truncated video)" if start <= 0 else
                                   f"corrupt or truncated video: no frame could be decoded from {start:.2f} s on")
        last = sampler.kept
        final = bound.end()
        if final is not None:
            yield FrameSample(last.start, final, last.image)
            return
        end = max(sampler.last_frame_end, last_packet)
        if info.duration and end < SHORTFALL * info.duration - 1.0:  # a short picture track, or a cut file?
            end = max(end, _other_streams_end(c, vs, base, end))
        if info.duration and end < SHORTFALL * info.duration - 1.0:
            raise VideoDecodeError(f"truncated video: it declares {info.duration:.2f} s, its frames stop at "
                                   f"{end:.2f} s")
        yield FrameSample(last.start, max(last.start, info.duration or end, end), last.image)


class _Group:
    """One group of pictures as it is demuxed: its key frame and the packets not sent to the
    decoder yet, sent from the key frame on once a sample falls due inside the group.

    A key frame before the due time is decoded at once (``decided``): whether it starts a shot
    decides when the next sample is due, so the packets after it are sent too until it comes out
    of the decoder (which holds a frame or two back to reorder them). Where the group looks to
    end before the due time (``gap``: the last group's length; phones put a key frame every
    second), no sample is due inside it, and the key frame is decoded alone instead, costing no
    frames after it; should a sample fall due inside after all, the group is sent again from
    its key frame. One at or past the due time is the due sample whatever it shows, so it waits:
    decoded with its group if another sample falls due inside it, else alone when the group
    ends. Either way it is decoded once."""

    def __init__(self, head: Any = None, start: float | None = None, sampler: _Sampler | None = None,
                 gap: float | None = None) -> None:
        self.head, self.start = head, start
        self.pending: list[Any] = [] if head is None else [head]
        self.live = head is None  # the decoder holds this group's state (a stream may not open on a key)
        waits = start is not None and sampler is not None and start >= sampler.due - 1e-6
        near = (start is not None and sampler is not None
                and start - sampler.last_candidate < MIN_GAP_FRACTION * sampler.interval - 1e-6)
        self.decided = head is not None and not waits and not near
        self.waiting = head is not None and waits and not near
        self.alone = (self.decided and gap is not None and start is not None and sampler is not None
                      and start + gap <= sampler.due + 1e-6)
        self.held = self.decided and not self.alone  # the key frame was sent and has not come out yet

    def due(self, t: float | None, sampler: _Sampler) -> bool:
        if t is None or self.held:
            return True
        if self.waiting and not self.live:  # the key frame is the due sample: the next is an interval on
            return t >= (self.start or 0.0) + sampler.interval - 1e-6
        return t >= sampler.due - 1e-6

    def send(self, decoder: _Decoder, sampler: _Sampler) -> list[Any]:
        if self.alone:  # out now; ``pending`` keeps the key frame, should a sample fall due inside
            self.alone = False
            return decoder.drain([self.head], sampler.due)
        out = decoder.send(self.pending, sampler.due)
        self.pending, self.live = [], True
        self.held = self.held and not out
        return out

    def close(self, decoder: _Decoder, sampler: _Sampler, base: float) -> Iterator[FrameSample]:
        """The samples among the frames still inside the decoder, or the waiting key frame's; the
        decoder is reset. A waiting key frame that gives no sample (damaged, say) leaves the sample
        to the group's next frames, which are decoded then."""
        if self.live:
            yield from sampler.take(decoder.drain([]), base)
        elif self.waiting:
            due = sampler.due
            yield from sampler.take(decoder.drain([self.head]), base)
            if sampler.due == due and len(self.pending) > 1:
                yield from sampler.take(decoder.drain(self.pending, due), base)


class _Decoder:
    """Sends packets, tolerating a few damaged ones (the decoder conceals them), returns frames.

    A frame no other frame refers to (most B-frames) is skipped when it is shown before the next
    sample's due time: nothing needs it, neither a sample nor a later frame. From the due time on,
    every frame is decoded, so samples are the frames they would be if all were decoded."""

    def __init__(self, stream: Any, tb: float, base: float, damage: Damage) -> None:
        self.stream, self.tb, self.base, self.damage = stream, tb, base, damage

    def drain(self, packets: list[Any], due: float = float("inf")) -> list[Any]:
        """Send the packets, then take every frame still inside the decoder and reset it: a key
        frame decoded alone comes out now, not a few packets later."""
        out = self.send([*packets, None], due)
        self.stream.codec_context.flush_buffers()
        return out

    def send(self, packets: list[Any], due: float = float("inf")) -> list[Any]:
        import av

        out = []
        codec = self.stream.codec_context
        for packet in packets:
            if packet is not None:
                t = _time(packet, self.tb, self.base, shown=True)
                codec.skip_frame = "NONREF" if t is not None and t < due - 1e-6 else "DEFAULT"
            try:
                out += codec.decode(packet)
            except av.error.EOFError:
                pass
            except (av.error.InvalidDataError, ValueError) as e:  # ArgumentError is a ValueError
                errors = self.damage.add()
                if errors > MAX_DECODE_ERRORS:
                    raise VideoDecodeError(f"corrupt video: {errors} damaged packets ({libav_reason(e)})") from None
        return out


@dataclass
class _Kept:
    start: float
    image: Image.Image
    signature: np.ndarray


class _Sampler:
    """Chooses, among decoded frames, those to keep; holds the last kept one until the next is
    known (its span ends there)."""

    def __init__(self, interval: float, side: int, info: VideoInfo, time_base: float = 0.0) -> None:
        self.interval, self.side, self.info, self.time_base = interval, side, info, time_base
        self.due = 0.0  # the next sample time
        self.last_candidate = -float("inf")
        self.last_frame_end = 0.0
        self.kept: _Kept | None = None
        self.seen = -float("inf")  # the last frame's time: a key frame decoded again is not seen twice
        self.count = 0
        self.rotation: int | None = None
        self._scaler: Any = None  # one libswscale context, reused while frames keep their size

    def take(self, frames: list[Any], base: float) -> Iterator[FrameSample]:
        for frame in frames:
            self.count += 1
            # the stream's time base: frames drained from the decoder carry none of their own
            pts = frame.pts if frame.pts is not None else getattr(frame, "dts", None)
            tb = self.time_base or float(frame.time_base or 0)
            t = pts * tb - base if pts is not None and tb else None
            if t is None or not math.isfinite(t):  # no timestamps at all: count frames at the nominal rate
                t = (self.count - 1) / 25.0
            t = max(0.0, t)
            if t <= self.seen:
                continue
            self.seen = t
            frame_end = t + (frame.duration * tb if frame.duration and tb else 0.0)
            self.last_frame_end = max(self.last_frame_end, frame_end, t)
            due = t >= self.due - 1e-6
            if not (frame.key_frame or due) or (frame.is_corrupt and self.kept is not None):
                continue
            self.last_candidate = t
            if due:
                self.due = t + self.interval
            image = self._picture(frame)
            sig = _signature(image)
            if self.kept is not None:
                diff = float(np.abs(sig - self.kept.signature).mean())
                if diff < NEAR_IDENTICAL or (not due and diff < SCENE_CUT):
                    continue
                yield FrameSample(self.kept.start, t, self.kept.image)
            self.kept = _Kept(t, image, sig)
            self.due = t + self.interval  # a new shot restarts the clock: its next sample is an interval on

    def _picture(self, frame: Any) -> Image.Image:
        if self.rotation is None:
            self.rotation = int(round((getattr(frame, "rotation", 0) or 0) / 90)) * 90 % 360
            self.info.rotation = self.rotation
            w, h = frame.width, frame.height
            self.info.width, self.info.height = (h, w) if self.rotation in (90, 270) else (w, h)
        w, h = frame.width, frame.height
        scale = min(1.0, self.side / max(1, min(w, h)))
        size = (max(2, round(w * scale)), max(2, round(h * scale)))
        if self._scaler is None:  # a frame's own reformat builds a new context each time: twice the cost
            from av.video.reformatter import VideoReformatter

            self._scaler = VideoReformatter()
        # swscale's bilinear widens its kernel with the reduction: no aliasing
        arr = self._scaler.reformat(frame, width=size[0], height=size[1], format="rgb24",
                                    interpolation="BILINEAR" if scale < 1 else None).to_ndarray()
        if self.rotation:  # counter-clockwise by the matrix's angle turns the stored picture upright
            arr = np.ascontiguousarray(np.rot90(arr, k=self.rotation // 90))
        return Image.fromarray(arr, "RGB")


def _other_streams_end(c: Any, vs: Any, base: float, since: float) -> float:
    """Where the file's other streams end, read from ``since`` on: a song with one still picture
    or a clip whose picture stops before its sound is whole; a cut file stops every stream."""
    import av

    others = [s for s in c.streams if s is not vs and s.type in ("audio", "video")]
    end = 0.0
    if not others:
        return end
    try:
        c.seek(max(0, int((since + base) * 1_000_000)), backward=True, any_frame=False)
        for packet in c.demux(*others):
            if packet.pts is not None and packet.time_base:
                end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base) - base)
    except av.error.FFmpegError:
        pass  # damage there: what was read counts
    return end


def _signature(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L").resize((16, 16), Image.Resampling.BOX), dtype=np.float32) / 255.0


def _time(packet: Any, tb: float, base: float, shown: bool = False) -> float | None:
    """A packet's time on the video's timeline (``tb``: its stream's seconds per tick): its pts,
    else its dts; ``shown``: its pts only (when the frame is shown: a dts is earlier)."""
    ts = packet.pts if packet.pts is not None or shown else packet.dts
    if ts is None or not tb:
        return None
    return ts * tb - base


def libav_reason(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or str(e)
    return str(text).strip().rstrip(".")[:160]


def frame_unit(sample: FrameSample, info: VideoInfo) -> Unit:
    """A sampled frame as the unit the image encoder embeds, stored as the video's."""
    from mmsearch.media.decode import Unit

    return Unit("image", sample.image, start=round(sample.start, 3), end=round(sample.end, 3),
                duration=info.duration, item="video")


def video_units(path: str, interval: float, side: int, audio: tuple[int, float] | None,
                info: VideoInfo, share: Callable[[VideoParts], None] | None = None,
                sound_waits: bool = False) -> Iterator[Unit]:
    """What a video file gives the encoders: its sampled frames (embedded as images, stored as
    the video's), then its sound track's windows when ``audio`` = (sample rate, window seconds)
    is given, cut exactly as a sound file's (a file without pictures is a sound item). ``info``
    is filled in (size as shown, duration). ``share``: a long video's parts are offered to it,
    for idle threads to decode (video_parts.py); their frames are theirs to hand on, and this
    returns once they are all decoded. The first part to fail fails the file with its reason.
    Without ``audio``, a sound-only file, and with ``sound_waits`` (the catalog holds sound tracks)
    a video with sound, raise SoundWaits before any frame is decoded."""
    from mmsearch.media.audio import AudioDecodeError, iter_windows
    from mmsearch.media.decode import DecodeError, SoundWaits, Unit
    from mmsearch.media.video_parts import VideoParts, own_frames

    parts = None
    try:
        info.__dict__.update(probe(path).__dict__)
        if not info.has_video and not info.has_audio:
            raise DecodeError("no video or sound stream in the file")
        if audio is None and (not info.has_video or (sound_waits and info.has_audio)):
            raise SoundWaits("it holds sound, and audio indexing is off" if info.has_video else
                             "a sound (no video stream), and audio indexing is off")
        if info.has_video:
            parts = VideoParts(path, interval, side, info)
            first = parts.take()  # this thread's, before any other can take a part
            if share is not None and parts.splittable:
                share(parts)
            for f in own_frames(parts, first):
                yield frame_unit(f, info)
            parts.check()  # another thread's part failed: the file has, and its sound need not be read
        if info.has_audio and audio is not None:
            rate, window = audio
            item = "video" if info.has_video else None  # a video file with sound only is a sound
            delay = info.audio_delay if item else 0.0  # windows are timed on the file's clock (clock_start)
            for w in iter_windows(Path(path), rate, window):
                yield Unit("audio", w.samples, start=round(w.start + delay, 3), end=round(w.end + delay, 3),
                           duration=info.duration if item else None, item=item)
        if parts is not None:
            parts.wait()  # the parts other threads took: the file is done when they are
    except BaseException as e:
        first_failure = None
        if parts is not None:  # this thread failed or was stopped: the others stop too
            parts.stop()
            first_failure = parts.settle()
        if not isinstance(e, Exception):  # the caller stopped reading
            raise
        cause = first_failure or e  # the first part to fail says why, not one stopped after it
        if isinstance(cause, (VideoDecodeError, AudioDecodeError)):
            raise DecodeError(str(cause)) from cause
        if cause is not e:
            raise cause from None
        raise


def frame_at(source: str | os.PathLike[str], t: float, side: int) -> Image.Image:
    """The frame shown at ``t`` seconds (clamped to the video), upright, short side at most
    ``side``: a thumbnail of the moment a result points at. Seeks to the key frame before ``t``
    and decodes from there, so it costs one group of pictures, not the video up to ``t``."""
    with open_media(source) as c:
        vs = video_stream(c)
        if vs is None:
            raise VideoDecodeError("no video stream in the file")
        vs.thread_type = "AUTO"
        base = clock_start(c, vs)
        duration = _info(c, vs).duration
        t = max(0.0, min(t, duration - 1e-3 if duration else t))
        chosen = None
        aim = t
        for attempt in range(FRAME_AT_SEEKS):
            chosen, first = _shown_at(c, vs, base, t, aim, rewind=attempt > 0)
            if first is None or first <= t + 1e-3 or aim <= 0:
                break
            # the demuxer sought by decoding time (AVI): the key frame found is shown after ``t``
            aim = max(0.0, aim - max(first - t, 1.0)) if attempt < FRAME_AT_SEEKS - 2 else 0.0
        if chosen is None:
            raise VideoDecodeError(f"no frame at {t:.2f} s")
        return _Sampler(1.0, side, VideoInfo())._picture(chosen)


def _shown_at(c: Any, vs: Any, base: float, t: float, aim: float, rewind: bool) -> tuple[Any, float | None]:
    """The last frame shown at or before ``t`` when decoding from the key frame found by seeking
    to ``aim`` (at 0, from the start: no seek unless ``rewind``), and the time of the first frame
    decoded (after ``t``: the seek went too far)."""
    import av

    chosen, first = None, None
    try:
        if (aim > 0 or rewind) and vs.time_base:
            c.seek(round((aim + base) / vs.time_base) if aim > 0 else 0, stream=vs, backward=True, any_frame=False)
        for frame in c.decode(vs):
            shown = frame.time - base if frame.time is not None else None
            first = shown if first is None else first
            if chosen is not None and shown is not None and shown > t + 1e-3:
                break
            chosen = frame
    except av.error.FFmpegError as e:
        if chosen is None:
            raise VideoDecodeError(f"cannot decode the frame at {t:.2f} s ({libav_reason(e)})") from None
    return chosen, first
