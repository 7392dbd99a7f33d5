"""``attncluster watch``: timed events from a video file or a live stream, with a trained video-level model.

A second reading of the same model, not a second model: ``watch`` is a loop over

- a **source** (:class:`StreamSource`): a video file, an ``http(s)://`` or ``rtsp://`` URL, ``-`` (a stream on
  stdin) or a V4L2 device (``/dev/video0``), decoded by PyAV as the frames arrive and sampled with extract's rule
  (:class:`~attncluster.extract.decode.FrameSampler`: one frame per second, chained from the last sampled frame);
- a **feature stream** (:class:`StreamFeatures`): the extract backbones (``FeaturePipeline``) on each sampled frame,
  and the VGGish example nearest its time, as ``extract`` aligns them;
- a **window buffer** (:class:`WindowBuffer`): the last ``window`` seconds of feature rows (a fixed-size ring, so
  memory stays bounded on an endless stream), handed to the model every ``stride`` seconds;
- a **predictor** (``inference.TorchPredictor`` or ``export.OnnxPredictor``): per-class scores of each window, the
  window's frames sampled to ``model.seg_num`` as eval samples a video;
- an **event detector** (:class:`EventDetector`): per class, a state machine with hysteresis.

Timing. A window's score is credited to the ``stride`` seconds around its centre (the first window also covers its
start and the last window its end, so nothing at the edges of a stream goes unscored). An event opens when a class's
score reaches ``threshold`` and closes when it falls below ``off_threshold`` (default ``threshold - 0.1``); with
``min_gap``, only once it has stayed below for that many seconds (back above sooner, the event goes on). Its
``start`` is the start of the first span above ``threshold``, its ``end`` the end of the last span above
``off_threshold``, and ``score`` the highest window score in it. With a model whose window score crosses the
threshold when the class fills half the window, start and end are then within one stride of the truth.

Speed. A file runs as fast as it decodes, its frames batched through the backbone. A live source is read by a
thread (:func:`read_ahead`), so it keeps being read while the model runs; the frames that queued up meanwhile go
through the backbone in one batch (batch 1 while the model keeps up, larger batches, cheaper per frame, when it
falls behind). ``max_lag`` skips the frames of a live source that arrive too late to score.

One JSON line per event, written when the event closes (or when the stream ends or drops)::

    {"source": "cam.mkv", "start": 12.0, "end": 20.0, "class": 0, "name": "Dog", "score": 0.97}

Status lines go to stderr: frames/s achieved, and for a live source its lag behind real time (for a file, the
speed as a multiple of real time).

A network source that fails (an FFmpeg error, a refused or dropped connection, no data for ``timeout`` seconds) is
reopened after 1, 2, 4, ... s (at most 30 s between tries, ``max_retries`` tries in a row without a frame); the gap
is reported on stderr and on stdout as a line ``{"source", "gap": true, "start", "end", "reason"}``, open events are
closed at the drop, and the window restarts after it (a window never spans a gap). The end of an rtsp, rtmp, udp or
srt stream counts as a drop too, and so does the end of an http(s) stream with ``reconnect_at_eof``
(``--reconnect-at-eof``: FFmpeg cannot tell a cut HTTP stream from its end); otherwise the end of the stream ends
``watch``. An HTTP client error on opening (4xx but 429 Too Many Requests: a wrong URL, no access) is not a drop:
it is raised at once.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from typing import IO, Any, Callable, Iterator

import numpy as np

from attncluster.errors import ConfigError, DataError, printable, writing

AUDIO_HOP = 15360  # samples between VGGish examples (0.96 s at 16 kHz)
AUDIO_EXAMPLE = 15600  # samples one VGGish example reads (0.975 s)
MAX_PENDING = 64  # sampled frames waiting for their audio before they go ahead with the last example there is
LIVE_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "udp://", "srt://")  # streams whose end (EOF) is a drop
FILE_BATCH = 32  # most frames per backbone call on a file (live sources run each frame as it arrives)
NETWORK_SCHEMES = ("http://", "https://", "rtsp://", "rtsps://", "rtmp://", "udp://", "tcp://", "srt://")


# -- the window buffer ---------------------------------------------------------------------------------------------

class WindowBuffer:
    """The last ``size`` feature rows of a stream, with their times; due for scoring every ``stride`` rows.

    ``push`` returns True when a window is due: first when the buffer is full, then after every ``stride`` further
    rows. ``window()`` returns it and restarts the count. ``pending`` says whether rows arrived since the last
    window (the stream's tail, scored once more at the end by :meth:`window`, also when the buffer never filled).
    Memory is ``size`` rows whatever the stream's length.
    """

    def __init__(self, size: int, stride: int) -> None:
        if size < 1 or stride < 1:
            raise ConfigError(f"window of {size} frames every {stride}: both must be >= 1")
        self.size, self.stride = int(size), int(stride)
        self.times: deque[float] = deque(maxlen=self.size)
        self.rows: deque[dict[str, np.ndarray]] = deque(maxlen=self.size)
        self._since = 0  # rows pushed since the last window
        self._scored = False  # a window was taken since the last clear

    def __len__(self) -> int:
        return len(self.rows)

    def push(self, t: float, row: dict[str, np.ndarray]) -> bool:
        self.times.append(float(t))
        self.rows.append(row)
        self._since += 1
        if len(self.rows) < self.size:
            return False
        return not self._scored or self._since >= self.stride

    @property
    def pending(self) -> bool:
        return self._since > 0 and len(self.rows) > 0

    def window(self) -> tuple[list[float], dict[str, np.ndarray]]:
        """(times of the rows, ``{modality: (L, F)}``), oldest first."""
        self._since, self._scored = 0, True
        mods = self.rows[0].keys()
        return list(self.times), {m: np.stack([r[m] for r in self.rows]) for m in mods}

    def clear(self) -> None:
        self.times.clear()
        self.rows.clear()
        self._since, self._scored = 0, False


# -- the event detector --------------------------------------------------------------------------------------------

@dataclass
class Event:
    start: float
    end: float
    cls: int
    score: float

    def record(self, source: str, names: list[str] | None) -> dict:
        return {"source": source, "start": round(self.start, 3), "end": round(self.end, 3), "class": self.cls,
                "name": names[self.cls] if names else None, "score": round(float(self.score), 6)}


class EventDetector:
    """Per-class hysteresis over a sequence of scored time spans; one :class:`Event` per occurrence.

    Args:
        num_classes: C.
        threshold: a closed class opens when its score is >= this.
        off_threshold: an open class stays open while its score is >= this (default ``threshold - 0.1``, at least 0).
        min_gap: an open class closes once it has stayed below ``off_threshold`` for this many seconds; back above
            it sooner, the event goes on (0: it closes at the first span below).

    ``update(start, end, scores)`` takes the span a window's scores are credited to (spans follow each other) and
    returns the events that closed; ``close()`` closes every open event (end of stream, or a gap).
    """

    def __init__(self, num_classes: int, threshold: float, off_threshold: float | None = None,
                 min_gap: float = 0.0) -> None:
        off = max(0.0, threshold - 0.1) if off_threshold is None else off_threshold
        if not 0.0 < threshold <= 1.0:
            raise ConfigError(f"--threshold {threshold}: must be in (0, 1]")
        if not 0.0 <= off <= threshold:
            raise ConfigError(f"--off-threshold {off}: must be in [0, --threshold {threshold}]")
        if min_gap < 0:
            raise ConfigError(f"--min-gap {min_gap}: must be >= 0 seconds")
        self.on, self.off, self.min_gap = float(threshold), float(off), float(min_gap)
        self.open = np.zeros(num_classes, dtype=bool)
        self.start = np.zeros(num_classes)
        self.end = np.zeros(num_classes)  # end of the last span at or above off_threshold
        self.peak = np.zeros(num_classes)

    def update(self, start: float, end: float, scores: np.ndarray) -> list[Event]:
        p = np.asarray(scores, dtype=np.float64).reshape(-1)
        active = self.open & (p >= self.off)
        self.end[active] = end
        self.peak[active] = np.maximum(self.peak[active], p[active])
        # Open events below off_threshold close once they have stayed below for min_gap seconds (0: at once).
        done = self.open & (p < self.off) & (end - self.end >= self.min_gap)
        closed = self._emit(np.flatnonzero(done))
        new = ~self.open & (p >= self.on)
        self.open[new] = True
        self.start[new], self.end[new], self.peak[new] = start, end, p[new]
        return closed

    def close(self) -> list[Event]:
        return self._emit(np.flatnonzero(self.open))

    def _emit(self, classes: np.ndarray) -> list[Event]:
        events = [Event(float(self.start[c]), float(self.end[c]), int(c), float(self.peak[c])) for c in classes]
        self.open[classes] = False
        return sorted(events, key=lambda e: (e.start, e.cls))


def window_span(times: list[float], period: float, stride: float, first: bool, last: bool) -> tuple[float, float]:
    """The seconds a window's score is credited to: ``stride`` seconds around its centre; the first window of a
    stream also covers its start, the last its end. ``times`` are its frames' times (each lasts ``period``)."""
    lo, hi = times[0], times[-1] + period
    centre = (lo + hi) / 2
    return (lo if first else max(lo, centre - stride / 2)), (hi if last else min(hi, centre + stride / 2))


# -- the source ----------------------------------------------------------------------------------------------------

def is_live(source: Any) -> bool:
    """Whether ``source`` runs in real time (a URL, stdin, a device, a pipe) rather than as fast as it decodes."""
    if not isinstance(source, str):
        return True
    if source == "-" or source.startswith("/dev/") or source.startswith(NETWORK_SCHEMES):
        return True
    return False


def _av():
    try:
        import av
    except ImportError:
        raise ConfigError("watch needs PyAV: pip install 'attncluster[video]'") from None
    return av


@dataclass
class Sampled:
    """One sampled frame: ``t`` seconds from the first frame, ``rgb`` (H, W, 3) uint8."""

    t: float
    rgb: np.ndarray


@dataclass
class Audio:
    """Decoded audio: 16 kHz mono float32 ``samples`` whose first sample is at ``t`` seconds (video time)."""

    t: float
    samples: np.ndarray


def _print_event(rec: dict) -> None:
    """One JSON line to stdout; a failed write (stdout on a full disk, a closed pipe's file) is one error naming it."""
    with writing("stdout", "write an event"):
        print(json.dumps(rec), flush=True)


class SourceRefused(DataError):
    """The server answered the opening with a client error (HTTP 4xx but 429): not a drop, so not reopened."""


class StreamSource:
    """Decoded, sampled frames and 16 kHz mono audio of one opening of a source, as they arrive.

    Args:
        source: a path, a URL, ``-`` (stdin) or ``/dev/videoN``; or a readable binary file object.
        fps: sampled frames per second (extract's rule).
        size: (H, W) to scale sampled frames to, or None.
        audio: decode the first audio stream.
        timeout: seconds a network read may block before it counts as a drop.
    """

    def __init__(self, source: str | IO[bytes], fps: float = 1.0, size: tuple[int, int] | None = None,
                 audio: bool = True, timeout: float = 10.0) -> None:
        self.source, self.fps, self.size, self.audio, self.timeout = source, fps, size, audio, timeout

    def name(self) -> str:
        return self.source if isinstance(self.source, str) else getattr(self.source, "name", "<stream>")

    def _open(self):
        av = _av()
        src = self.source
        kwargs: dict[str, Any] = {}
        if isinstance(src, str):
            if src == "-":
                src = sys.stdin.buffer
            elif src.startswith("/dev/video"):
                kwargs["format"] = "v4l2"
            elif src.startswith(NETWORK_SCHEMES):
                us = str(int(self.timeout * 1e6))
                kwargs["options"] = {"rw_timeout": us} if not src.startswith(("rtsp", "rtmp")) else {"timeout": us}
            elif not os.path.exists(src):
                raise DataError(f"{src}: no such video file (expected a file, an http(s):// or rtsp:// URL, - for "
                                f"stdin, or a device such as /dev/video0)")
        try:
            return av.open(src, mode="r", **kwargs)
        except av.error.HTTPClientError as e:
            if not isinstance(e, av.error.HTTPTooManyRequestsError):  # 429 passes with time: a drop
                raise SourceRefused(f"{printable(self.name())}: cannot open ({_reason(e)})") from None
            raise DataError(f"{printable(self.name())}: cannot open ({_reason(e)})") from None
        except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
            raise DataError(f"{printable(self.name())}: cannot open ({_reason(e)}){self._stdin_hint()}") from None

    def _stdin_hint(self) -> str:
        """For ``-``: what a pipe can carry (a plain mp4 keeps its index at the end, which a pipe never reaches)."""
        return ("; stdin needs a streamable container such as mkv or mpegts (a plain mp4 is not: "
                "ffmpeg -i in.mp4 -c copy -f mpegts - | attncluster watch - ...)") if self.source == "-" else ""

    def __iter__(self) -> Iterator[Sampled | Audio]:
        """Sampled frames and audio chunks in arrival order. Raises DataError on a decoding or network failure."""
        from attncluster.extract.decode import SAMPLE_RATE, FrameSampler, _frame_time, _rgb

        av = _av()
        container = self._open()
        try:
            if not container.streams.video:
                raise DataError(f"{printable(self.name())}: has no video stream; expected a video")
            vstream = container.streams.video[0]
            vstream.thread_type = "AUTO"
            astream = container.streams.audio[0] if (self.audio and container.streams.audio) else None
            streams = [vstream] + ([astream] if astream is not None else [])
            resampler = None
            if astream is not None:
                layout = astream.codec_context.layout.name if astream.codec_context.layout else None
                resampler = av.AudioResampler(format="fltp", layout=layout, rate=SAMPLE_RATE)
            sampler = FrameSampler(self.fps)
            first: Fraction | None = None
            prev: Fraction | None = None
            audio_at: float | None = None  # video time of the next resampled audio sample
            held: list = []  # audio frames decoded before the first video frame (their time needs it)
            try:
                for packet in container.demux(*streams):
                    if packet.stream is vstream:
                        for frame in packet.decode():
                            t = _frame_time(frame, vstream, 0)
                            if t is None:  # no timestamp: continue from the previous frame at 25 fps
                                t = first + prev + Fraction(1, 25) if prev is not None else Fraction(0)
                            if first is None:
                                first = t
                            rel = max(t - first, prev) if prev is not None else t - first
                            prev = rel
                            if sampler.due(rel):
                                yield Sampled(float(rel), _rgb(frame, self.size))
                    elif resampler is not None:
                        for frame in packet.decode():
                            held.append(frame)
                    if held and first is not None:
                        for frame in held:
                            if audio_at is None:
                                start = (Fraction(int(frame.pts)) * Fraction(frame.time_base.numerator,
                                                                            frame.time_base.denominator)
                                         if frame.pts is not None and frame.time_base is not None else first)
                                audio_at = float(start - first)
                            for out in resampler.resample(frame):
                                wav = out.to_ndarray().mean(axis=0, dtype=np.float32)
                                yield Audio(audio_at, wav)
                                audio_at += wav.size / SAMPLE_RATE
                        held.clear()
            except (av.error.FFmpegError, OSError) as e:
                raise DataError(f"{printable(self.name())}: stream failed ({_reason(e)}){self._stdin_hint()}") from None
        finally:
            container.close()


def _reason(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or " ".join(str(e).split())
    return printable(text[:200] if text else type(e).__name__)


# -- features as frames arrive -------------------------------------------------------------------------------------

class StreamFeatures:
    """Feature rows of sampled frames as they arrive: the backbone on the frame, and the VGGish example nearest its
    time (example ``j = round(t / 0.96)``, as ``extract`` aligns audio), zeros when the stream has no audio.

    ``add(item)`` takes :class:`Sampled` and :class:`Audio` items; ``rows(final)`` returns the (t, row) pairs whose
    audio has arrived, once there are ``batch`` of them (all of them when ``final``), oldest first. The audio kept is the few seconds still needed.
    """

    def __init__(self, pipeline, batch: int = 1) -> None:
        self.pipeline = pipeline
        self.batch = max(1, int(batch))  # frames per backbone call (a file: several; a live source: 1, no delay)
        self.modalities = dict(pipeline.modalities)
        self.wants_audio = "audio" in self.modalities
        self.frames: list[Sampled] = []
        self.audio = np.zeros(0, np.float32)
        self.audio_base = 0  # video-time sample index of self.audio[0]
        self.audio_end = 0  # sample index one past the last one received
        self.saw_audio = False
        self.zero_audio = np.zeros(self.modalities.get("audio", 0),
                                   dtype=np.uint8 if getattr(pipeline, "quantized", True) else np.float32)

    def add(self, item: Sampled | Audio) -> None:
        if isinstance(item, Sampled):
            self.frames.append(item)
        elif self.wants_audio:
            start = int(round(item.t * 16000))
            if not self.saw_audio:
                self.saw_audio = True
                self.audio_base = self.audio_end = max(0, start)
            wav = item.samples
            if start < 0:  # audio before the first video frame: cut
                wav = wav[-start:] if -start < wav.size else wav[:0]
                start = 0
            if start > self.audio_end:  # a hole in the track: silence
                wav = np.concatenate([np.zeros(start - self.audio_end, np.float32), wav])
            elif start < self.audio_end:  # overlapping timestamps: keep what came first
                wav = wav[self.audio_end - start:]
            self.audio = np.concatenate([self.audio, wav])
            self.audio_end += wav.size

    def _example(self, t: float) -> int:
        return int(round(t / 0.96))

    def rows(self, final: bool = False) -> list[tuple[float, dict[str, np.ndarray]]]:
        if not self.frames:
            return []
        ready = self.frames
        if self.wants_audio and self.saw_audio and not final and len(self.frames) < MAX_PENDING:
            have = self.audio_end
            ready = [f for f in self.frames if self._example(f.t) * AUDIO_HOP + AUDIO_EXAMPLE <= have]
        elif self.wants_audio and not self.saw_audio and not final and len(self.frames) < 4:
            ready = []  # give the audio stream (if any) a few frames' time to start
        if not ready or (len(ready) < self.batch and not final):
            return []
        self.frames = self.frames[len(ready):]
        rgb = np.asarray(self.pipeline.frame_features(np.stack([f.rgb for f in ready])))
        out = [(f.t, {"rgb": rgb[i]}) for i, f in enumerate(ready)]
        if self.wants_audio:
            audio = self._audio_rows([f.t for f in ready])
            for (_, row), a in zip(out, audio):
                row["audio"] = a
        return out

    def _audio_rows(self, times: list[float]) -> list[np.ndarray]:
        if not self.saw_audio or self.audio_end - self.audio_base < 1:
            return [self.zero_audio] * len(times)
        # Examples j0..j1 in video time; clipped to the examples the track holds (as extract clips to the last one).
        last = max(0, (self.audio_end - AUDIO_EXAMPLE) // AUDIO_HOP)
        js = [min(self._example(t), last) for t in times]
        j0, j1 = min(js), max(js)
        lo = j0 * AUDIO_HOP - self.audio_base
        seg = self.audio[max(0, lo):j1 * AUDIO_HOP + AUDIO_EXAMPLE - self.audio_base]
        if lo < 0:  # the track starts after the example's start: silence before it
            seg = np.concatenate([np.zeros(-lo, np.float32), seg])
        if seg.size < AUDIO_EXAMPLE:
            seg = np.pad(seg, (0, AUDIO_EXAMPLE - seg.size))
        ex = np.asarray(self.pipeline.audio_features(seg, 16000))
        rows = [ex[min(j - j0, len(ex) - 1)] for j in js]
        # Keep only the audio later frames can still need (from example j1 - 1 on).
        keep_from = max(self.audio_base, (j1 - 1) * AUDIO_HOP)
        self.audio = self.audio[keep_from - self.audio_base:]
        self.audio_base = keep_from
        return rows


def read_ahead(source, maxsize: int = 512) -> Iterator[list]:
    """Items of ``source`` read by a thread (a live source keeps being read while the model runs), yielded as lists:
    each call returns every item queued since the last one (at least one), so frames that arrived while the model
    was busy go through the backbone in one batch. At most ``maxsize`` items wait (then the reader waits, and the
    stream backs up at its source). An exception of the reader is raised here."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize)
    stop = threading.Event()
    end = object()

    def reader() -> None:
        try:
            for item in source:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(end)
        except BaseException as e:  # handed to the consumer
            q.put(e)

    thread = threading.Thread(target=reader, name="watch-reader", daemon=True)
    thread.start()
    try:
        while True:
            items = [q.get()]
            while True:
                try:
                    items.append(q.get_nowait())
                except queue.Empty:
                    break
            done = next((x for x in items if x is end or isinstance(x, BaseException)), None)
            good = [x for x in items if x is not end and not isinstance(x, BaseException)]
            if good:
                yield good
            if isinstance(done, BaseException):
                raise done
            if done is end:
                return
    finally:
        stop.set()
        thread.join(timeout=1.0)


# -- the loop ------------------------------------------------------------------------------------------------------

@dataclass
class WatchStats:
    frames: int = 0
    windows: int = 0
    events: int = 0
    gaps: int = 0
    media_seconds: float = 0.0
    wall_seconds: float = 0.0
    lag: float = 0.0
    skipped: int = 0  # sampled frames of a live source dropped to keep up (max_lag)


def window_rows(window: dict[str, np.ndarray], seg_num: int | None) -> dict[str, np.ndarray]:
    """A window's rows as one model input ``{m: (1, seg_num, F)}``, sampled to ``seg_num`` as eval samples a video."""
    from attncluster.data.sampling import sample_indices

    n = len(next(iter(window.values())))
    idx = sample_indices(n, seg_num, None) if seg_num else np.arange(n)
    return {m: x[idx][None] for m, x in window.items()}


def watch(source: str | IO[bytes], predictor, pipeline, *, window: float = 10.0, stride: float = 1.0,
          threshold: float = 0.5, off_threshold: float | None = None, min_gap: float = 0.0,
          names: list[str] | None = None, seg_num: int | None = None, fps: float = 1.0,
          emit: Callable[[dict], None] | None = None, status: Callable[[str], None] | None = None,
          status_every: float = 5.0, max_retries: int = 5, timeout: float = 10.0, reconnect_at_eof: bool = False,
          max_lag: float | None = None,
          clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> WatchStats:
    """Run ``predictor`` over sliding windows of ``source`` and emit one record per event (see the module doc).

    Args:
        source: a file, URL, ``-``, ``/dev/videoN`` or a binary file object.
        predictor: an ``inference.Predictor`` (``scores({m: (N, L, F)}) -> (N, C)``).
        pipeline: a ``FeaturePipeline`` (``modalities``, ``frame_size``, ``frame_features``, ``audio_features``).
        window, stride: seconds (at ``fps`` frames per second).
        emit: receives each event record (and gap record); default: print JSON lines to stdout.
        status: receives status lines; default: stderr.
        max_retries: reopen a failed network source at most this many times in a row (backoff 1, 2, 4 ... 30 s).
        timeout: seconds a network read may block before it counts as a drop.
        reconnect_at_eof: an http(s) stream that ends is a drop too (a live stream served over HTTP); rtsp, rtmp,
            udp and srt streams always are. Without it, the end of an http(s) stream (EOF) ends ``watch``.
        max_lag: a live source's sampled frames that arrive more than this many seconds behind real time are
            skipped (counted in ``skipped``), so a backbone slower than real time keeps up by scoring fewer frames
            (the window then spans more seconds); None: never skip (the lag grows).

    Returns:
        Counters: frames, windows, events, gaps, media_seconds, wall_seconds, the last lag, skipped frames.
    """
    check_args(source, window, stride, fps, threshold, off_threshold, min_gap)
    size = max(1, int(round(window * fps)))
    step = max(1, int(round(stride * fps)))
    missing = {m: d for m, d in predictor.modalities.items() if pipeline.modalities.get(m) != d}
    if missing:
        raise ConfigError(f"the model expects features {dict(predictor.modalities)}, the extractor gives "
                          f"{dict(pipeline.modalities)}; use the preset the model was trained on")
    emit = emit or _print_event
    status = status or (lambda line: print(printable(line), file=sys.stderr, flush=True))
    name = source if isinstance(source, str) else getattr(source, "name", "<stream>")
    name = str(name)
    live = is_live(source)
    period = 1.0 / fps
    detector = EventDetector(predictor.num_classes, threshold, off_threshold, min_gap)
    buf = WindowBuffer(size, step)
    stats = WatchStats()
    t_start = clock()
    last_status = t_start
    offset = 0.0  # media time of this opening's t = 0 (after a reconnect, the time since the first opening)
    first_window = True
    retries = 0

    def send(events: list[Event]) -> None:
        for e in events:
            stats.events += 1
            emit(e.record(name, names))

    last: dict[str, Any] = {}  # the last window scored: its scores, the end of its span and of its frames

    def score(final: bool = False) -> None:
        nonlocal first_window
        times, rows = buf.window()
        times = [t + offset for t in times]
        p = predictor.scores(window_rows(rows, seg_num))[0]
        lo, hi = window_span(times, period, stride, first_window, final)
        first_window = False
        stats.windows += 1
        last.update(p=p, hi=hi, end=times[-1] + period)
        send(detector.update(lo, hi, p))

    def finish_segment() -> None:
        """End of an opening (stream end or drop): score the tail, credit the last window with the seconds after its
        span, close every open event."""
        if buf.pending:
            score(final=True)
        elif last and last["end"] > last["hi"]:
            send(detector.update(last["hi"], last["end"], last["p"]))
        last.clear()
        send(detector.close())
        buf.clear()

    network = isinstance(source, str) and source.startswith(NETWORK_SCHEMES)
    eof_is_drop = network and (reconnect_at_eof or source.startswith(LIVE_SCHEMES))
    while True:
        opened_at = clock()
        feats = StreamFeatures(pipeline, batch=1 if live else FILE_BATCH)
        src = StreamSource(source, fps=fps, size=getattr(pipeline, "frame_size", None),
                           audio="audio" in pipeline.modalities, timeout=timeout)
        media_t = None
        failure: DataError | None = None

        def take(rows) -> None:
            nonlocal media_t
            for t, row in rows:
                media_t = t
                stats.frames += 1
                if buf.push(t, row):
                    score()

        try:
            for items in (read_ahead(src) if live else ([item] for item in src)):
                for item in items:
                    if max_lag is not None and live and isinstance(item, Sampled) and \
                            clock() - opened_at - item.t > max_lag:
                        stats.skipped += 1  # too far behind a live source: this second goes unscored
                        continue
                    feats.add(item)
                take(feats.rows())  # the frames that queued up while the model ran go through it in one batch
                now = clock()
                if media_t is not None:
                    retries = 0  # frames arrive again: the backoff starts over at the next drop
                    stats.media_seconds = offset + media_t + period
                    stats.wall_seconds = now - t_start
                    stats.lag = max(0.0, (now - opened_at) - media_t) if live else 0.0
                if now - last_status >= status_every and media_t is not None:
                    last_status = now
                    status(_status_line(name, stats, live))
        except DataError as e:
            failure = e
        take(feats.rows(final=True))
        if media_t is not None:
            stats.media_seconds = offset + media_t + period
        finish_segment()
        if failure is None and not eof_is_drop:
            break  # the end of the stream
        if not network:
            raise failure
        if isinstance(failure, SourceRefused):
            status(f"watch: {failure}; giving up at once: the server refused the request, and reopening cannot "
                   "mend that")
            raise failure
        if retries >= max_retries:
            if failure is None:
                break  # a live stream that ended, and gave no frame in max_retries reopenings
            status(f"watch: {failure}; giving up after {retries} tries to reopen it")
            raise failure
        reason = str(failure) if failure is not None else f"{printable(name)}: the stream ended"
        drop_at = offset + (media_t + period if media_t is not None else 0.0)
        wait = min(30.0, 2.0 ** retries)
        retries += 1
        status(f"watch: {reason}; reopening in {wait:g} s (try {retries} of {max_retries})")
        sleep(wait)
        # A live stream went on while we were away: the next opening's t = 0 is now, in media time.
        offset = max(drop_at, clock() - t_start)
        stats.gaps += 1
        emit({"source": name, "gap": True, "start": round(drop_at, 3), "end": round(offset, 3), "reason": reason})
        first_window = True
    stats.wall_seconds = clock() - t_start
    status(_status_line(name, stats, live, final=True))
    return stats


def check_args(source, window: float, stride: float, fps: float, threshold: float, off_threshold: float | None,
               min_gap: float) -> None:
    """One ``error:`` line for a bad option or a missing local file, before any model or backbone is built."""
    if not window > 0 or not stride > 0:
        raise ConfigError(f"--window {window} and --stride {stride}: must be > 0 seconds")
    if not fps > 0:
        raise ConfigError(f"--fps {fps}: must be > 0")
    if window * fps < 1:
        raise ConfigError(f"--window {window}: holds no frame at --fps {fps:g}; make it at least {1 / fps:g} s")
    EventDetector(1, threshold, off_threshold, min_gap)  # checks the thresholds and the gap
    if isinstance(source, str) and not is_live(source) and not os.path.exists(source):
        raise DataError(f"{printable(source)}: no such video file (expected a file, an http(s):// or rtsp:// URL, "
                        f"- for stdin, or a device such as /dev/video0)")


def _status_line(name: str, s: WatchStats, live: bool, final: bool = False) -> str:
    rate = s.frames / s.wall_seconds if s.wall_seconds > 0 else 0.0
    speed = s.media_seconds / s.wall_seconds if s.wall_seconds > 0 else math.inf
    where = f"lag {s.lag:.1f} s behind real time" if live else f"{speed:.2f}x real time"
    head = "watch: done" if final else "watch:"
    return (f"{head} {name}: {s.media_seconds:.1f} s of video, {s.frames} frames, {rate:.2f} frames/s, {where}, "
            f"{s.windows} windows, {s.events} events" + (f", {s.gaps} gaps" if s.gaps else "")
            + (f", {s.skipped} frames skipped to keep up (--max-lag)" if s.skipped else ""))


def segments(score: Callable[[dict[str, np.ndarray]], np.ndarray], features: dict[str, np.ndarray],
             times, *, window: float = 10.0, stride: float | None = None, period: float | None = None,
             threshold: float = 0.5, off_threshold: float | None = None, min_gap: float = 0.0,
             seg_num: int | None = None, classes=None) -> list[Event]:
    """The events of one whole video's feature rows, offline: ``watch``'s window buffer and event detector over
    rows already extracted (``explain`` marks them on its timeline; a service can answer them per uploaded video).

    Args:
        score: ``{m: (N, L, F)} -> (N, C)`` scores (a ``Predictor.scores``), called once with every window.
        features: ``{m: (T, F)}`` rows in time order.
        times: (T,) seconds of the rows.
        window, stride: seconds; the stride defaults to one row (``period``).
        period: seconds a row lasts (default: the median step between ``times``, else 1).
        classes: only these classes' events (default: all).

    Returns:
        Events in start order (as ``watch`` prints them, without the source).
    """
    times = [float(t) for t in times]
    if not times:
        return []
    if period is None:
        period = float(np.median(np.diff(times))) if len(times) > 1 else 1.0
        period = period if period > 0 else 1.0
    stride = period if stride is None else stride
    buf = WindowBuffer(max(1, int(round(window / period))), max(1, int(round(stride / period))))
    wins = []
    for i, t in enumerate(times):
        if buf.push(t, {m: x[i] for m, x in features.items()}):
            wins.append(buf.window())
    if buf.pending:
        wins.append(buf.window())
    batch = [window_rows(rows, seg_num) for _, rows in wins]
    p = np.asarray(score({m: np.concatenate([b[m] for b in batch]) for m in batch[0]}))
    detector = EventDetector(p.shape[1], threshold, off_threshold, min_gap)
    events: list[Event] = []
    hi = times[0]
    for k, (wt, _) in enumerate(wins):
        lo, hi = window_span(wt, period, stride, k == 0, k == len(wins) - 1)
        events += detector.update(lo, hi, p[k])
    if hi < times[-1] + period:  # the tail after the last window's span
        events += detector.update(hi, times[-1] + period, p[-1])
    events += detector.close()
    if classes is not None:
        keep = {int(c) for c in classes}
        events = [e for e in events if e.cls in keep]
    return sorted(events, key=lambda e: (e.start, e.cls))


def run_watch(source: str, cfg, weights: str | None = None, onnx: str | None = None, *,
              vocab: str | bool | None = None,
              device: str | None = None, extractor_options: dict | None = None, **kwargs) -> WatchStats:
    """The ``watch`` verb: build the predictor (``--weights`` with a config, or ``--onnx``) and the extract
    pipeline (``make_pipeline``, which warns about random weights), then :func:`watch`."""
    from attncluster.extract.pipeline import make_pipeline
    from attncluster.inference import TorchPredictor, class_names_for

    check_args(source, kwargs.get("window", 10.0), kwargs.get("stride", 1.0), kwargs.get("fps", 1.0),
               kwargs.get("threshold", 0.5), kwargs.get("off_threshold"), kwargs.get("min_gap", 0.0))
    if onnx is not None:
        from attncluster.export import OnnxPredictor, model_config

        predictor = OnnxPredictor(onnx)
        cfg = model_config(predictor, cfg)
    else:
        predictor = TorchPredictor(cfg, weights, device)
    names = class_names_for(cfg.model.num_classes, cfg, vocab, stored=getattr(predictor, "vocabulary", None))
    opts = dict(extractor_options or {})
    if opts.get("device") is None:
        from attncluster import distributed

        opts["device"] = str(distributed.device_for(device, distributed.DistInfo()))
    pipeline = make_pipeline(**opts)
    return watch(source, predictor, pipeline, names=names, seg_num=cfg.model.seg_num, **kwargs)


__all__ = ["WindowBuffer", "EventDetector", "Event", "segments", "read_ahead", "StreamSource", "StreamFeatures", "watch", "run_watch",
           "window_span", "window_rows", "is_live"]
