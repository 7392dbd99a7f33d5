"""The extraction driver: video files -> features, decoded in parallel worker processes, the model batched.

Decode (``decode.py``: PyAV, CPU-bound) runs in ``num_workers`` processes while the backbone (``features.py``'s
``FeaturePipeline``) runs in this process on ``--device``, on batches of frames gathered across videos, so the
workers keep the model fed. Results come back in input order.

Audio. A pipeline with audio (YouTube-8M: VGGish) turns the 16 kHz track into 0.96 s examples; the dataset stores
one audio frame per rgb frame, so each sampled frame t gets the example whose start is nearest t (within 0.48 s;
MediaPipe's YouTube-8M graph frames audio with a 1.0 s hop, AudioSet's ``vggish_input`` with 0.96 s). A video with
no audio stream gets zero audio, byte 0 in every dimension, exactly what the official extractor writes with
``insert_zero_audio_features``, and its manifest entry says ``"audio": "zeros (no audio stream)"``.

``torchrun``: every rank takes the videos ``i`` with ``i % WORLD_SIZE == RANK`` of the expanded input list (the same
list on every rank), skips those already in any manifest of the output folder, and writes its own shards and
manifest. So each video is extracted exactly once, also when a run is resumed with a different number of ranks.
No process group is needed.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from attncluster.errors import AttnClusterError, ConfigError, DataError
from attncluster.extract.decode import (DEFAULT_FPS, DEFAULT_MAX_FRAMES, SAMPLE_RATE, Cancelled, DecodedVideo,
                                        decode_video)

AUDIO_HOP_SECONDS = 0.96  # vggish_params.EXAMPLE_HOP_SECONDS
AUDIO_MIN_SAMPLES = 15600  # 0.975 s: 96 log-mel frames of 25 ms windows at a 10 ms hop, one VGGish example
BATCH_FRAMES = 32  # frames per backbone call (across videos)
MAX_AUTO_WORKERS = 16
# Decoded frames in flight (decoded by workers, not yet through the model). The YouTube-8M preset takes frames at
# their native size (the 2015 graph resizes them itself), so one 300-frame 1080p video is 1.9 GB: the number of
# videos decoded ahead shrinks to fit this budget (at least one at a time).
MAX_INFLIGHT_BYTES = 2 << 30


def video_id(path: str) -> str:
    """The id a video file is stored under: its file name without the extension (``clips/a.mp4`` -> ``a``)."""
    name = path.rstrip("/").split("?", 1)[0].rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0] if "." in name[1:] else name
    return stem or name


def resolve_workers(num_workers: int | str) -> int:
    """``"auto"``: one decode process per CPU core but one (kept for the model), at least 1, at most 16."""
    if num_workers == "auto":
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            cores = os.cpu_count() or 1
        return max(1, min(MAX_AUTO_WORKERS, cores - 1))
    try:
        n = int(num_workers)
    except (TypeError, ValueError):
        raise ConfigError(f"--num-workers {num_workers!r}: expected a number or 'auto'") from None
    if n < 0:
        raise ConfigError(f"--num-workers {n}: must be >= 0 (0: decode in the main process)")
    return n


def _local_copy(path: str) -> tuple[str, str | None]:
    """A local file for ``path``: itself, or a temporary copy of an fsspec URL (returned second, to delete)."""
    if path.startswith("file://"):
        return path[len("file://"):], None
    if "://" not in path:  # local: no import of attncluster.data (its package imports torch; workers stay light)
        return path, None
    from attncluster.data.paths import open_binary
    suffix = os.path.splitext(path.split("?", 1)[0])[1]
    fd, tmp = tempfile.mkstemp(suffix=suffix, prefix="attncluster-video-")
    try:
        with os.fdopen(fd, "wb") as out, open_binary(path) as src:
            shutil.copyfileobj(src, out, 4 << 20)
    except OSError as e:
        os.remove(tmp)
        raise DataError(f"{path}: cannot read ({e})") from None
    return tmp, tmp


def _decode_job(path: str, fps: float, max_frames: int, audio: bool, size, should_stop=None) -> tuple[str, Any]:
    """Worker entry point: ("ok", DecodedVideo) or ("bad", one-line message). Never raises for a bad file."""
    tmp = None
    try:
        local, tmp = _local_copy(path)
        d = decode_video(local, fps=fps, max_frames=max_frames, audio=audio, size=size, should_stop=should_stop)
        d.path = path
        return "ok", d
    except AttnClusterError as e:
        return "bad", str(e).replace(tmp or "\0", path)
    except Exception as e:  # an unexpected decoder failure is still one bad file, not a dead job
        return "bad", f"{path}: could not be decoded ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def _die_with_parent(parent: int, pdeathsig: bool = True) -> None:
    """Decode worker initializer: end this worker when the process that started it dies, even by ``kill -9``.

    Linux, with ``pdeathsig``: the kernel sends SIGKILL when the parent dies (``prctl(PR_SET_PDEATHSIG)``; it fires
    when the parent *thread* ends, so it is used only for workers started from the main thread). Everywhere, and for
    a parent that died before the prctl took effect: a daemon thread checks every half second that the parent is
    still ours.
    Without this a killed ``extract`` left its workers (and with them multiprocessing's resource tracker) running.
    """
    import signal
    import threading

    if pdeathsig and sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="attncluster-parent-watch", daemon=True).start()


@dataclass
class ExtractStats:
    """Counters of one extraction run."""

    videos: int = 0
    frames: int = 0
    bad: list[str] = field(default_factory=list)
    decode_seconds: float = 0.0
    model_seconds: float = 0.0


class Extractor:
    """Video files -> per-frame features, with parallel decoding and batched backbone calls.

    Args:
        pipeline: a ``FeaturePipeline`` (``attncluster.extract.features``): ``modalities``, ``quantized``,
            ``frame_size``, ``frame_features(frames)``, ``audio_features(wav, sample_rate)``.
        fps: sampled frames per second (1: YouTube-8M).
        max_frames: at most this many frames per video (300: YouTube-8M).
        num_workers: decode processes; ``"auto"`` = CPU cores - 1; 0 decodes in this process.
        batch_frames: frames per backbone call, gathered across videos.

    Example::

        ex = Extractor(FeaturePipeline.create(preset="yt8m", random_weights=0))
        rec = ex.extract("clip.mp4")   # {"id", "rgb": (T, 1024) uint8, "audio": (T, 128) uint8, "timestamps", ...}
    """

    decode_fn = staticmethod(_decode_job)  # what the worker processes run (a module-level function)

    def __init__(self, pipeline, fps: float = DEFAULT_FPS, max_frames: int = DEFAULT_MAX_FRAMES,
                 num_workers: int | str = "auto", batch_frames: int = BATCH_FRAMES) -> None:
        self.pipeline = pipeline
        self.fps, self.max_frames = float(fps), int(max_frames)
        self.num_workers = resolve_workers(num_workers)
        self.batch_frames = int(batch_frames)
        self.modalities: dict[str, int] = dict(pipeline.modalities)
        self.stats = ExtractStats()

    @property
    def _wants_audio(self) -> bool:
        return "audio" in self.modalities

    def _job(self, path: str) -> tuple:
        return (path, self.fps, self.max_frames, self._wants_audio, getattr(self.pipeline, "frame_size", None))

    def extract(self, path: str, should_stop: Callable[[], bool] | None = None) -> dict:
        """Decode and featurise one video in this process. Raises DataError naming a bad file.

        ``should_stop`` is called per demuxed packet and per batch of frames; once it returns True the work ends
        with :class:`~attncluster.extract.decode.Cancelled` (serve: a request that timed out stops within a batch).
        """
        status, value = _decode_job(*self._job(path), should_stop=should_stop)
        if status == "bad":
            raise DataError(value)
        return self._featurise([value], should_stop)[0]

    # -- features -------------------------------------------------------------------------------------------------

    def _audio_rows(self, d: DecodedVideo) -> tuple[np.ndarray, str]:
        """(T, 128) audio features aligned to the sampled frames, and how they were made (for the manifest)."""
        t = len(d.timestamps)
        dim = self.modalities["audio"]
        if d.audio is None:
            dtype = np.uint8 if getattr(self.pipeline, "quantized", True) else np.float32
            return np.zeros((t, dim), dtype=dtype), "zeros (no audio stream)"
        wav = d.audio
        if wav.size < AUDIO_MIN_SAMPLES:  # a clip of 0.96-0.975 s: pad the last few ms to one whole example
            wav = np.pad(wav, (0, AUDIO_MIN_SAMPLES - wav.size))
        examples = np.asarray(self.pipeline.audio_features(wav, SAMPLE_RATE))  # (K, 128)
        if examples.ndim != 2 or examples.shape[1] != dim or len(examples) == 0:
            raise DataError(f"{d.path}: audio features have shape {examples.shape}, expected (K >= 1, {dim})")
        hop = float(getattr(self.pipeline, "audio_hop_seconds", AUDIO_HOP_SECONDS))
        j = np.clip(np.rint(d.timestamps / hop).astype(np.int64), 0, len(examples) - 1)
        return examples[j], "vggish"

    def _featurise(self, videos: list[DecodedVideo], should_stop: Callable[[], bool] | None = None) -> list[dict]:
        """Run the backbone on the frames of several videos in batches of ``batch_frames``; one dict per video."""
        t0 = time.perf_counter()
        # One backbone call per batch of frames of the same size (videos of different sizes do not stack; with
        # frame_size None the frames keep their native size).
        feats_of: dict[int, np.ndarray] = {}
        groups: dict[tuple, list[int]] = {}
        for k, d in enumerate(videos):
            groups.setdefault(d.frames.shape[1:], []).append(k)
        for members in groups.values():
            frames = np.concatenate([videos[k].frames for k in members])
            outs = []
            for i in range(0, len(frames), self.batch_frames):
                if should_stop is not None and should_stop():
                    raise Cancelled(videos[members[0]].path)
                outs.append(np.asarray(self.pipeline.frame_features(frames[i:i + self.batch_frames])))
            feats = np.concatenate(outs) if len(outs) > 1 else outs[0]
            start = 0
            for k in members:
                feats_of[k] = feats[start:start + len(videos[k].frames)]
                start += len(videos[k].frames)
        records = []
        for k, d in enumerate(videos):
            n = len(d.frames)
            rec = {"id": video_id(d.path), "source": d.path, "rgb": feats_of[k],
                   "timestamps": d.timestamps, "frame_indices": d.frame_indices, "has_audio": d.has_audio,
                   "duration": d.duration}
            if self._wants_audio:
                if should_stop is not None and should_stop():
                    raise Cancelled(d.path)
                rec["audio"], rec["audio_source"] = self._audio_rows(d)
            records.append(rec)
            self.stats.videos += 1
            self.stats.frames += n
        self.stats.model_seconds += time.perf_counter() - t0
        return records

    # -- streaming ------------------------------------------------------------------------------------------------

    def _pool(self, ctx) -> cf.ProcessPoolExecutor:
        """The decode workers; each dies with this process (:func:`_die_with_parent`)."""
        import threading

        main = threading.current_thread() is threading.main_thread()
        return cf.ProcessPoolExecutor(max_workers=self.num_workers, mp_context=ctx, initializer=_die_with_parent,
                                      initargs=(os.getpid(), main))

    def _decoded(self, paths: list[str]) -> Iterator[tuple[str, str, Any]]:
        """(path, status, DecodedVideo | message) in input order, decoded by the worker processes.

        ``status`` is "ok", "bad", or "wait" (value None) just before blocking on a video still being decoded.
        """
        if self.num_workers == 0:
            for p in paths:
                t0 = time.perf_counter()
                status, value = _decode_job(*self._job(p))
                self.stats.decode_seconds += time.perf_counter() - t0
                yield p, status, value
            return
        ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads / CUDA
        todo = deque(paths)
        pending: deque = deque()
        pool = self._pool(ctx)
        ahead = 2 * self.num_workers + 1
        video_bytes = 0.0  # running mean of a decoded video's size
        solo = 0  # after a worker crash: the next `solo` files run one at a time, so a crash names its file
        try:
            while todo or pending:
                limit = ahead if video_bytes == 0 else max(1, min(ahead, int(MAX_INFLIGHT_BYTES // video_bytes)))
                while todo and len(pending) < (1 if solo else limit):
                    p = todo.popleft()
                    pending.append((p, pool.submit(self.decode_fn, *self._job(p))))
                p, fut = pending.popleft()
                if not fut.done():
                    yield p, "wait", None  # the next video is not decoded yet: the caller may run the model now
                try:
                    status, value = fut.result()
                except cf.process.BrokenProcessPool:
                    # A decoder crashed its process (FFmpeg on a hostile file). Every file in flight fails with
                    # it; restart the pool and redo them one at a time: the file that crashes alone is bad.
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = self._pool(ctx)
                    retry = [q for q, _ in pending]
                    pending.clear()
                    if not solo:
                        retry.insert(0, p)
                    todo.extendleft(reversed(retry))
                    solo = len(retry)
                    if retry and retry[0] == p:
                        continue
                    status, value = "bad", f"{p}: the decoder crashed on this file (its process died)"
                if solo:
                    solo -= 1
                if status == "ok":
                    size = float(value.frames.nbytes + (value.audio.nbytes if value.audio is not None else 0))
                    video_bytes = size if video_bytes == 0 else 0.8 * video_bytes + 0.2 * size
                yield p, status, value
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def iter_extract(self, paths: Iterable[str], skip_bad: bool = False,
                     on_bad: Callable[[str, str], None] | None = None) -> Iterator[dict]:
        """Extract ``paths`` in order: decode in parallel, run the backbone on batches of frames across videos.

        Args:
            paths: video files (local or fsspec URLs).
            skip_bad: a bad file is reported to ``on_bad(path, message)``, counted in ``stats.bad`` and skipped;
                otherwise it raises DataError (after the videos before it were yielded).

        Yields:
            One dict per good video, as :meth:`extract`.
        """
        batch: list[DecodedVideo] = []
        frames = 0
        for p, status, value in self._decoded(list(paths)):
            if status == "wait":  # rather than idle until the next video is decoded, featurise what is here
                if batch:
                    yield from self._featurise(batch)
                    batch, frames = [], 0
                continue
            if status == "bad":
                if not skip_bad:
                    yield from (self._featurise(batch) if batch else [])
                    raise DataError(value)
                self.stats.bad.append(value)
                if on_bad is not None:
                    on_bad(p, value)
                continue
            batch.append(value)
            frames += len(value.frames)
            if frames >= self.batch_frames:
                yield from self._featurise(batch)
                batch, frames = [], 0
        if batch:
            yield from self._featurise(batch)


# -- the pipeline from options -------------------------------------------------------------------------------------

PIPELINE_OPTIONS = ("preset", "inception", "pca", "vggish", "vggish_pca", "random_weights", "backbone",
                    "backbone_weights", "device", "precision", "dtype")


def make_pipeline(**options):
    """``FeaturePipeline.create(**options)`` (see ``attncluster.extract.features``), None options left out.

    ``backbone_weights`` is passed as ``weights`` (the image preset's state dict; named apart from a model
    checkpoint's ``weights``)."""
    try:
        from attncluster.extract.features import FeaturePipeline
    except ImportError as e:
        raise ConfigError(f"the feature backbones are not available ({e}); install attncluster with its "
                          f"'video' extra") from None
    unknown = [k for k in options if k not in PIPELINE_OPTIONS]
    if unknown:
        raise ConfigError(f"unknown feature pipeline options {unknown}; expected some of {', '.join(PIPELINE_OPTIONS)}")
    kwargs = {("weights" if k == "backbone_weights" else k): v for k, v in options.items() if v is not None}
    return FeaturePipeline.create(**kwargs)


def _labels_by_id(path: str | None) -> dict[str, list[int]]:
    if path is None:
        return {}
    from attncluster.data.features import parse_labels_csv

    return {r.video_id: [int(x) for x in r.labels] for r in parse_labels_csv(path, num_classes=None)}


# What a directory of videos is taken to hold: files with these extensions (FFmpeg reads many more; name such files,
# or list them in a .list file, to use them). Subtitles, thumbnails and notes beside the videos are left out.
VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mkv .webm .avi .mov .qt .flv .wmv .asf .mpg .mpeg .m2v .mts .m2ts .ts .3gp .3g2 .ogv .ogg .vob .mxf "
    ".dv .y4m .gif .rm .rmvb .divx .f4v .hevc .h264 .264".split())


def _is_dir(spec: str) -> bool:
    from attncluster.data.paths import is_url

    if is_url(spec) and not spec.startswith("file://"):
        import fsspec

        fs, p = fsspec.core.url_to_fs(spec)
        return fs.isdir(p)
    return os.path.isdir(spec[len("file://"):] if spec.startswith("file://") else spec)


def expand_videos(videos: Iterable[str], log: Callable[[str], None] = lambda m: None) -> list[str]:
    """Video specs (files, globs, directories, .list files, fsspec URLs) -> files; ids must be distinct.

    A directory contributes its files with a video extension (:data:`VIDEO_EXTENSIONS`); the others are counted and
    named in one ``log`` line, never silently dropped. Files named explicitly (or by a glob or list) are all kept.
    """
    from attncluster.data.paths import expand_paths

    paths: list[str] = []
    for spec in videos:
        found = expand_paths([spec], what="videos")
        if _is_dir(str(spec)):
            other = [p for p in found if os.path.splitext(p)[1].lower() not in VIDEO_EXTENSIONS]
            if other:
                kinds = sorted({os.path.splitext(p)[1].lower() or "(no extension)" for p in other})
                log(f"extract: {spec}: left out {len(other)} file(s) without a video extension ({', '.join(kinds[:6])}); "
                    "name them explicitly to decode them")
                found = [p for p in found if p not in set(other)]
            if not found:
                raise ConfigError(f"{spec}: a folder with no video files (by extension: .mp4, .mkv, .webm, ...)")
        paths.extend(found)
    seen: dict[str, str] = {}
    for p in paths:
        vid = video_id(p)
        if vid in seen:
            raise ConfigError(f"{p}: has the same video id {vid!r} (file name without extension) as {seen[vid]}; "
                              f"rename one of them")
        seen[vid] = p
    return paths


def _warn(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_extract(videos: list[str], output: str, *, pipeline=None, fps: float = DEFAULT_FPS,
                max_frames: int = DEFAULT_MAX_FRAMES, fmt: str = "yt8m", shard_size: int = 100,
                labels: str | None = None, skip_bad: bool = False, num_workers: int | str = "auto",
                progress: bool | None = None, log: Callable[[str], None] = print, **pipeline_options) -> dict:
    """The ``extract`` verb: videos -> shards in ``output``, resumable, split over torchrun ranks.

    Args:
        videos: files, globs, directories, .list files, fsspec URLs.
        output: local output folder.
        pipeline: a ready FeaturePipeline; else one is made from ``pipeline_options`` (preset, inception, pca,
            vggish, vggish_pca, random_weights, backbone, weights, device, precision, dtype).
        fmt: ``yt8m`` (frame-level TFRecords) or ``features`` (npz + labels.csv).
        shard_size: videos per shard.
        labels: a ``video_id,labels`` CSV (ids = file names without extension).
        skip_bad: skip and count bad files instead of failing.
        progress: tqdm bar (default: when stderr is a terminal).

    Returns:
        Summary: written, already_done, bad, frames, seconds, rank, world_size, output.
    """
    from attncluster import distributed
    from attncluster.extract.writer import ShardWriter

    info = distributed.env_info()
    paths = expand_videos(videos, log=_warn)
    mine = [p for i, p in enumerate(paths) if i % info.world_size == info.rank]
    label_map = _labels_by_id(labels)
    writer = ShardWriter(output, fmt=fmt, shard_size=shard_size, rank=info.rank, world_size=info.world_size)
    for name in writer.removed:
        _warn(f"extract: removed {name}, left unrecorded by an interrupted run (its videos are redone)")
    todo = [p for p in mine if video_id(p) not in writer.done]
    already = len(mine) - len(todo)
    if not todo:  # nothing to do: no need to build the backbones (or find their weight files)
        log(f"extract: all {len(mine)} videos{' of this rank' if info.is_distributed else ''} are already in "
            f"{output}")
        return {"written": 0, "already_done": already, "bad": 0, "frames": 0, "seconds": 0.0, "rank": info.rank,
                "world_size": info.world_size, "output": output}
    if pipeline is None:  # (FeaturePipeline.create warns loudly itself about --random-weights)
        # --device: default cuda when available; under torchrun, "cuda" is this rank's LOCAL_RANK GPU
        pipeline_options["device"] = str(distributed.device_for(pipeline_options.get("device"), info))
        pipeline = make_pipeline(**pipeline_options)
    if fmt == "yt8m" and not getattr(pipeline, "quantized", True):
        raise ConfigError("--format yt8m stores the dataset's quantized uint8 features; this backbone gives float "
                          "features: use --format features")
    ex = Extractor(pipeline, fps=fps, max_frames=max_frames, num_workers=num_workers)
    where = f" (rank {info.rank} of {info.world_size})" if info.is_distributed else ""
    log(f"extract: {len(todo)} videos to do{where}, {already} already in {output}; "
        f"{ex.num_workers} decode workers")
    if progress is None:  # one bar per job: rank 0's (the ranks get equal shares)
        progress = sys.stderr.isatty() and info.rank == 0
    from tqdm import tqdm

    bar = tqdm(total=len(todo), unit="video", disable=not progress, dynamic_ncols=True)
    t0 = time.perf_counter()
    unlabeled = 0

    def bad(path: str, message: str) -> None:
        bar.write(f"skipped: {message}", file=sys.stderr)

    try:
        with writer:
            for rec in ex.iter_extract(todo, skip_bad=skip_bad, on_bad=bad):
                arrays = {m: rec[m] for m in ex.modalities}
                vid_labels = label_map.get(rec["id"]) if labels else None
                if labels and vid_labels is None:
                    unlabeled += 1
                entry = {"id": rec["id"], "source": rec["source"], "frames": int(len(rec["rgb"])),
                         "duration": round(float(rec["duration"]), 3), "has_audio": bool(rec["has_audio"]),
                         "fps": fps}
                if "audio_source" in rec:
                    entry["audio"] = rec["audio_source"]
                writer.add(entry, arrays, vid_labels)
                bar.update(1)
                elapsed = time.perf_counter() - t0
                bar.set_postfix_str(f"{ex.stats.frames / max(elapsed, 1e-9):.1f} frames/s")
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    summary = {"written": writer.written, "already_done": already, "bad": len(ex.stats.bad),
               "frames": ex.stats.frames, "seconds": round(seconds, 3), "rank": info.rank,
               "world_size": info.world_size, "output": output}
    extra = f", {unlabeled} not in {labels} (written without labels)" if unlabeled else ""
    log(f"extract: wrote {writer.written} videos ({ex.stats.frames} frames, "
        f"{ex.stats.frames / max(seconds, 1e-9):.1f} frames/s), skipped {len(ex.stats.bad)} bad files, "
        f"{already} already done{extra} -> {output}")
    return summary


# -- the extractor that predict --videos and explain --videos build ---------------------------------------------

def default_extractor(fps: float = DEFAULT_FPS, max_frames: int = DEFAULT_MAX_FRAMES, num_workers: int | str = "auto",
                      device: str | None = None, **pipeline_options) -> Extractor:
    """The Extractor that ``predict --videos`` (``attncluster.predict.classify_videos``) and ``explain --videos``
    build when given none: ``make_pipeline``
    (FeaturePipeline.create, which warns about random weights) on ``device`` as resolved for this process."""
    from attncluster import distributed

    device = str(distributed.device_for(device, distributed.DistInfo()))
    return Extractor(make_pipeline(device=device, **pipeline_options), fps=fps, max_frames=max_frames,
                     num_workers=num_workers)


__all__ = ["Extractor", "ExtractStats", "default_extractor", "run_extract", "make_pipeline", "video_id",
           "expand_videos", "resolve_workers"]
