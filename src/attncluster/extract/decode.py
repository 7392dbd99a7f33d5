"""Decoding a video file: the frames YouTube-8M samples (one per second) and the audio track, with PyAV.

PyAV ships FFmpeg in its wheel, so any container and codec FFmpeg reads works (mp4, mkv, webm, avi, mov, ...).

The frame sampling rule is the official extractor's (google/youtube-8m ``feature_extractor/
extract_tfrecords_main.py``, ``frame_iterator(filename, every_ms=1000, max_num_frames=300)``). That loop keeps
``last_ts``, reads frames while ``CAP_PROP_POS_MSEC < last_ts + every_ms``, then sets ``last_ts`` to the position
and keeps the next frame. With OpenCV's position being the time of the next frame to be read (OpenCV 2.4/3.x:
``frame_number * 1000 / fps``), that is, in timestamps:

    t_i = presentation time of decoded frame i, relative to the first frame (exact, from the stream's pts)
    frame 0 is sampled;
    after sampled frame s, the next sampled frame is the first frame i > s with t_i >= t_s + 1/fps;
    stop after ``max_frames`` frames (300: the first ~5 minutes) or at the end of the stream.

So the threshold is chained from the previously *sampled* frame, not from a fixed 1 s grid: at 29.97 fps every
30th frame is taken (t = 0, 1.001, 2.002, ... s), at 7.3 fps every 8th (t = 0, 1.096, 2.192, ... s), at 25 fps
every 25th (t = 0, 1, 2, ... s). Comparisons use exact rationals (pts x time_base), so a frame at exactly 1 s
counts as "at least 1 s later". Where OpenCV 3 counted frames at the container's average rate, we use the real
timestamps, which is the same for constant frame rate and the intended rule for variable frame rate. (OpenCV >= 4
reports the time of the last frame read instead, which shifts each pick one frame later; MediaPipe's
``PacketResamplerCalculator`` (frame_rate 1, base_timestamp 0) picks the frame nearest each grid time k/fps
instead. Both differ from the rule above by less than one source frame per pick.)

Audio is decoded from the first audio stream, resampled by FFmpeg (``av.AudioResampler``) to 16 kHz float32
and averaged over channels to mono, in [-1, 1]: the input VGGish expects (``vggish_input.waveform_to_examples``
takes the channel mean too; FFmpeg's own mono downmix would weigh stereo by 1/sqrt(2) instead). The track is
aligned to the video: sample 0 of the returned audio is at the first video frame's time (an audio stream that
starts later is preceded by silence, one that starts earlier is cut).

Limits. A clip must last at least :data:`MIN_DURATION` = 0.96 s: one VGGish example (0.96 s of audio) per sampled
second is what the audio features are made of, and a shorter clip has no full example; YouTube-8M's own videos are
120-500 s long. A 1-frame video is valid when it lasts that long (a still image shown for 2 s gives one sampled
frame); a single 25 fps frame lasts 0.04 s and is rejected as too short. Unreadable files, files with no video
stream, zero-length files and truncated files raise :class:`DataError` naming the file. A file cut off after its
header (mkv, faststart mp4) decodes without an FFmpeg error up to the cut; it is reported as truncated when its
frames stop before 90% (less 1 s) of the duration the container declares.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from attncluster.errors import ConfigError, DataError

SAMPLE_RATE = 16000  # VGGish's input rate (vggish_params.SAMPLE_RATE)
MIN_DURATION = 0.96  # seconds: one VGGish example (vggish_params.EXAMPLE_WINDOW_SECONDS)
DEFAULT_FPS = 1.0
DEFAULT_MAX_FRAMES = 300


class Cancelled(BaseException):
    """Raised inside decoding or featurising when the caller's ``should_stop()`` turns true (a request that timed
    out). A BaseException, like KeyboardInterrupt, so no ``except Exception`` on the way reports it as a bad file."""


@dataclass
class DecodedVideo:
    """A decoded video.

    Attributes:
        path: the file.
        frames: uint8 (T, H, W, 3) RGB, the sampled frames.
        timestamps: float64 (T,) seconds from the first frame.
        frame_indices: int64 (T,) index of each sampled frame among all decoded frames of the stream.
        audio: float32 (S,) 16 kHz mono in [-1, 1], or None when the file has no (decodable) audio.
        sample_rate: 16000.
        duration: seconds of video decoded (last decoded frame's end - first frame's start): the whole stream, or
            up to the frame after the last sampled one when ``max_frames`` stopped decoding early.
        has_audio: whether ``audio`` holds a decoded track.
    """

    path: str
    frames: np.ndarray
    timestamps: np.ndarray
    frame_indices: np.ndarray
    audio: np.ndarray | None
    sample_rate: int
    duration: float
    has_audio: bool


def _av():
    try:
        import av
    except ImportError:
        raise ConfigError("decoding videos needs PyAV: pip install 'attncluster[video]'") from None
    return av


def sample_frame_indices(times: list[Fraction] | np.ndarray, fps: float = DEFAULT_FPS,
                         max_frames: int = DEFAULT_MAX_FRAMES) -> list[int]:
    """The official extractor's sampling rule on a list of frame times (seconds, increasing, first = 0).

    Args:
        times: (N,) presentation times of every decoded frame, relative to the first.
        fps: samples per second (``every_ms = 1000 / fps``).
        max_frames: at most this many samples.

    Returns:
        Indices into ``times``: 0, then each first frame at least ``1/fps`` after the previously sampled one.
    """
    sampler = FrameSampler(fps)
    out: list[int] = []
    for i, t in enumerate(times):
        if len(out) >= max_frames:
            break
        if sampler.due(t):
            out.append(i)
    return out


class FrameSampler:
    """The sampling rule one frame at a time, for streams (``watch``): ``due(t)`` is True for the first frame and
    then for each first frame at least ``1/fps`` after the previously sampled one (exact rationals)."""

    def __init__(self, fps: float = DEFAULT_FPS) -> None:
        self.period = Fraction(1) / Fraction(fps).limit_denominator(1_000_000)
        self.last: Fraction | None = None

    def due(self, t) -> bool:
        t = Fraction(t) if not isinstance(t, Fraction) else t
        if self.last is None or t >= self.last + self.period:
            self.last = t
            return True
        return False


def _check_args(fps: float, max_frames: int) -> None:
    if not fps > 0:
        raise ConfigError(f"--fps {fps}: must be > 0")
    if max_frames < 1:
        raise ConfigError(f"--max-frames {max_frames}: must be >= 1")


def _frame_time(frame, stream, index: int) -> Fraction | None:
    """Exact presentation time of a decoded frame (pts x time_base), or None when it carries no timestamp."""
    pts = frame.pts
    if pts is None:
        return None
    tb = frame.time_base or stream.time_base
    return Fraction(int(pts)) * Fraction(tb.numerator, tb.denominator)


def decode_video(path: str, fps: float = DEFAULT_FPS, max_frames: int = DEFAULT_MAX_FRAMES, audio: bool = True,
                 size: tuple[int, int] | None = None, should_stop=None) -> DecodedVideo:
    """Decode ``path``: the frames sampled by the official extractor's rule (see the module doc) and the audio.

    Args:
        path: a local video file (or anything FFmpeg opens; fsspec URLs are fetched by the caller).
        fps: sampled frames per second (1: YouTube-8M).
        max_frames: at most this many frames (300: YouTube-8M).
        audio: decode the first audio stream to 16 kHz mono float32.
        size: (H, W) to scale the sampled frames to (FFmpeg's bilinear scaler), or None for the stream's size.
        should_stop: called before each demuxed packet; when it returns True, decoding ends with :class:`Cancelled`.

    Returns:
        A :class:`DecodedVideo`.

    Raises:
        DataError: naming the file, for a missing, zero-length, unreadable, video-less, undecodable or too short
            (< 0.96 s) file.
    """
    _check_args(fps, max_frames)
    av = _av()
    if not os.path.exists(path):
        raise DataError(f"{path}: no such video file")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: empty file (0 bytes), not a video")
    try:
        container = av.open(path)
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{path}: not a readable video file ({_reason(e)})") from None
    try:
        return _decode(container, path, fps, max_frames, audio, size, av, should_stop)
    except av.error.FFmpegError as e:
        raise DataError(f"{path}: decoding failed ({_reason(e)}); the file is damaged or truncated") from None
    finally:
        container.close()


def _reason(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or " ".join(str(e).split())  # FFmpeg's message, without errno and path
    return text[:200] if text else type(e).__name__


def _decode(container, path: str, fps: float, max_frames: int, want_audio: bool, size, av,
            should_stop=None) -> DecodedVideo:
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        raise DataError(f"{path}: has no video stream (found: {', '.join(kinds)}); expected a video file")
    vstream = container.streams.video[0]
    vstream.thread_type = "AUTO"  # frame-threaded decoding: the same frames, faster
    astream = container.streams.audio[0] if (want_audio and container.streams.audio) else None
    period = Fraction(1) / Fraction(fps).limit_denominator(1_000_000)

    frames: list[np.ndarray] = []
    times: list[Fraction] = []
    indices: list[int] = []
    first: Fraction | None = None
    last_sampled: Fraction | None = None
    prev: Fraction | None = None
    step: Fraction | None = None  # duration of one source frame (for timestamp-less frames and the duration)
    if vstream.average_rate:
        step = 1 / Fraction(vstream.average_rate.numerator, vstream.average_rate.denominator)
    n_decoded = 0
    video_done = False
    end_time: Fraction | None = None

    def sample(frame, rel: Fraction) -> None:
        """The sampling rule: keep frame ``n_decoded`` (at time ``rel``) if it is due (see the module docstring)."""
        nonlocal last_sampled
        if len(frames) < max_frames and (last_sampled is None or rel >= last_sampled + period):
            frames.append(_rgb(frame, size))
            times.append(rel)
            indices.append(n_decoded)
            last_sampled = rel

    resampler = None
    if astream is not None:
        # Resample every channel to 16 kHz and average them here: FFmpeg's own downmix to mono weighs stereo by
        # 1/sqrt(2), where vggish_input (and MediaPipe's AverageTimeSeriesAcrossChannels) take the mean.
        layout = astream.codec_context.layout.name if astream.codec_context.layout else None
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    audio_broken = False
    audio_start: Fraction | None = None  # presentation time of the first decoded audio frame

    streams = [vstream] + ([astream] if astream is not None else [])
    for packet in container.demux(*streams):
        if should_stop is not None and should_stop():
            raise Cancelled(path)
        if packet.stream is vstream:
            if video_done:
                continue
            for frame in packet.decode():
                t = _frame_time(frame, vstream, n_decoded)
                if t is None:  # no pts: continue from the previous frame at the average rate
                    t = (prev + (step or Fraction(1, 25))) if prev is not None else Fraction(0)
                if first is None:
                    first = t
                rel = t - first
                if prev is not None and rel < prev:  # out-of-order timestamp (broken muxing): keep time monotone
                    rel = prev
                if prev is not None and rel > prev and (step is None or rel - prev < step):
                    step = rel - prev
                prev = rel
                sample(frame, rel)
                n_decoded += 1
                dur = frame.duration if getattr(frame, "duration", None) else None
                if dur:
                    tb = frame.time_base or vstream.time_base
                    end_time = rel + Fraction(int(dur)) * Fraction(tb.numerator, tb.denominator)
                else:
                    end_time = rel + (step or 0)
                if len(frames) >= max_frames:
                    video_done = True
                    break
        elif resampler is not None and not audio_broken:
            try:
                for frame in packet.decode():
                    if audio_start is None and frame.pts is not None and frame.time_base is not None:
                        audio_start = Fraction(int(frame.pts)) * Fraction(frame.time_base.numerator,
                                                                          frame.time_base.denominator)
                    for out in resampler.resample(frame):
                        chunks.append(out.to_ndarray().mean(axis=0, dtype=np.float32))
            except av.error.FFmpegError:
                audio_broken = True  # a damaged audio track: keep what decoded, the video still counts
        if video_done and (astream is None or audio_broken or _audio_seconds(chunks) > float(last_sampled) + 1.0):
            break
    if not video_done:
        try:
            for frame in vstream.codec_context.decode(None):  # flush frames held back by the decoder
                t = _frame_time(frame, vstream, n_decoded)
                if t is not None and first is not None:
                    rel = t - first
                else:
                    rel = prev + (step or 0) if prev is not None else Fraction(0)
                if first is None:
                    first = Fraction(0)
                sample(frame, rel)
                n_decoded += 1
                end_time = rel + (step or 0)
        except av.error.FFmpegError:
            pass
    if resampler is not None and not audio_broken:
        try:
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().mean(axis=0, dtype=np.float32))
        except (av.error.FFmpegError, ValueError):
            pass

    if not frames:
        raise DataError(f"{path}: no video frame could be decoded; the file is damaged, truncated or not a video")
    duration = float(end_time if end_time is not None else 0)
    declared = _declared_duration(container, vstream)
    if not video_done and declared is not None and duration < 0.9 * declared - 1.0:
        # FFmpeg decodes a cut-off file (mkv, faststart mp4) up to the cut without an error: never pass off a
        # truncated video as a short one.
        raise DataError(f"{path}: truncated or damaged: the video frames stop at {duration:.2f} s of the "
                        f"{declared:.2f} s the container declares")
    if duration < MIN_DURATION:
        raise DataError(f"{path}: too short ({duration:.2f} s, {n_decoded} frame{'s' if n_decoded != 1 else ''}); "
                        f"a video must last at least {MIN_DURATION} s, one VGGish audio example (0.96 s) per "
                        f"sampled second")
    wav = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else None
    if wav is not None and audio_start is not None and first is not None:
        # Put audio sample 0 at the first video frame's time: a track that starts later is preceded by silence,
        # one that starts earlier loses its head, so audio examples line up with the sampled frames.
        shift = int(round((audio_start - first) * SAMPLE_RATE))
        wav = np.concatenate([np.zeros(shift, np.float32), wav]) if shift > 0 else wav[-shift:]
    has_audio = wav is not None and wav.size > 0
    return DecodedVideo(
        path=path,
        frames=np.stack(frames),
        timestamps=np.array([float(t) for t in times], dtype=np.float64),
        frame_indices=np.array(indices, dtype=np.int64),
        audio=wav if has_audio else None,
        sample_rate=SAMPLE_RATE,
        duration=duration,
        has_audio=has_audio,
    )


def _declared_duration(container, vstream) -> float | None:
    """Seconds the file says it lasts: the video stream's duration, else the container's; None when unknown."""
    if vstream.duration is not None and vstream.time_base is not None and vstream.duration > 0:
        return float(vstream.duration * vstream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


def _audio_seconds(chunks: list[np.ndarray]) -> float:
    return sum(c.size for c in chunks) / SAMPLE_RATE


def _rgb(frame, size: tuple[int, int] | None) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a decoded frame, scaled to ``size`` = (H, W) when given."""
    if size is None:
        return frame.to_ndarray(format="rgb24")
    h, w = size
    return frame.to_ndarray(format="rgb24", width=int(w), height=int(h), interpolation="BILINEAR")


__all__ = ["Cancelled", "DecodedVideo", "FrameSampler", "decode_video", "sample_frame_indices", "MIN_DURATION",
           "SAMPLE_RATE"]
