"""The ``inspect`` verb: what is in some shards, one JSON line per video.

Each line is ``{"id": ..., "labels": [...], "num_frames": n, "mean": {"rgb": x, "audio": y}}``, where a mean is over
the dequantized values of uint8 (quantized) features and over the raw values of float features. A summary line goes
to stderr. Damaged data raises :class:`~attncluster.errors.DataError` (the CLI exits with status 2) unless
``skip_corrupt``, which skips and counts damaged records.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TextIO

import numpy as np

from attncluster.data.paths import expand_paths
from attncluster.data.records import DEQUANT_BIAS, DEQUANT_SCALE, RawVideo, ReadStats, Shard
from attncluster.errors import DataError

PICKLE_SUFFIXES = (".pkl", ".pickle")


def open_shard(path: str, *, skip_corrupt: bool, num_classes: int | None, stats: ReadStats) -> Shard:
    """The reader for one file, by its suffix: pickles -> PickleShard; ``.tfrecord`` and anything else -> YT8MShard."""
    if path.lower().endswith((".npz", ".npy", ".csv")):
        raise DataError(f"{path}: a per-video features file (the .npz + labels.csv layout); inspect reads TFRecord "
                        "shards and pickles; train, eval and predict read this layout (data.format: features)")
    if path.lower().endswith(PICKLE_SUFFIXES):
        from attncluster.data.pickles import PickleShard

        return PickleShard(path, num_classes=num_classes, skip_corrupt=skip_corrupt, stats=stats)
    from attncluster.data.yt8m import YT8MShard

    return YT8MShard(path, num_classes=num_classes, skip_corrupt=skip_corrupt, stats=stats)


def _mean(x: np.ndarray) -> float | None:
    if x.size == 0:
        return None  # JSON has no NaN
    if x.dtype == np.uint8:
        # Dequantization is affine, so the mean of the dequantized values is the dequantized mean.
        return float(x.mean(dtype=np.float64) * DEQUANT_SCALE + DEQUANT_BIAS)
    return float(x.mean(dtype=np.float64))


def video_summary(video: RawVideo) -> dict:
    """The JSON object printed for one video."""
    return {
        "id": video.id,
        "labels": [int(k) for k in video.labels],
        "num_frames": video.num_frames,
        "mean": {name: _mean(x) for name, x in video.features.items()},
    }


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def inspect(paths: list[str], *, skip_corrupt: bool = False, num_classes: int | None = None,
            out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Print one JSON line per video of ``paths`` to ``out`` and a summary line to ``err``.

    Args:
        paths: files, globs, directories or ``.list`` files (see :func:`attncluster.data.paths.expand_paths`).
        skip_corrupt: skip and count damaged records instead of raising.
        num_classes: when given, labels must be below it.
        out, err: where the lines go; default: ``sys.stdout`` / ``sys.stderr`` as they are at call time.

    Returns:
        0 (damaged data without ``skip_corrupt`` raises instead).

    Raises:
        DataError: no files match, or a record is damaged and ``skip_corrupt`` is off.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    files = expand_paths(paths, what="inspect")
    stats = ReadStats()
    videos = frames = 0
    try:
        for path in files:
            for video in open_shard(path, skip_corrupt=skip_corrupt, num_classes=num_classes, stats=stats):
                out.write(json.dumps(video_summary(video)) + "\n")
                videos += 1
                frames += video.num_frames
    except BrokenPipeError:
        # The reader went away (``inspect ... | head``): stop quietly, as cat does, and keep Python's exit-time
        # flush of stdout from raising again.
        if out is sys.stdout:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    # Counted here, not from stats: every reader reports corrupt records, not all count videos and frames.
    lost = f", {stats.bytes_lost} bytes unreadable" if stats.bytes_lost else ""
    if stats.empty_files:
        lost += f", {plural(stats.empty_files, 'empty file')} skipped"
    print(f"inspect: {plural(len(files), 'file')}, {plural(videos, 'video')}, {plural(frames, 'frame')}, "
          f"{plural(stats.corrupt, 'corrupt record')} skipped{lost}", file=err)
    return 0


__all__ = ["inspect", "open_shard", "video_summary"]
