"""Synthetic YouTube-8M frame-level shards with structure that attention pooling can learn and mean pooling cannot.

The files use the exact YouTube-8M schema (``tf.train.SequenceExample``: context ``id`` and ``labels``, feature lists
``rgb`` and ``audio`` of uint8 frames), so every reader path runs on them.

The structure. Frames are background noise. Each class k has two sparse prototype vectors p_k and q_k per modality.

* For each of a video's labels k, a run of consecutive frames (10-20 % of the video, an "event") carries
  ``p_k + q_k``: the *conjunction* frames.
* For each of 1-3 *decoy* classes j (not labels of the video), a run as long carries ``p_j`` alone and another,
  disjoint run carries ``q_j`` alone.

Averaged over frames, a label and a decoy contribute the same ``(m / T) * (p + q)``, so no classifier on mean-pooled
features can tell which of the classes present are labels. A per-frame linear score along ``p_k + q_k`` is twice as
high on a conjunction frame as on a decoy frame, so attention pooling finds the labels. Runs rather than scattered
frames: stratified sampling of ``seg_num`` frames (one per stratum) then rarely misses an event, as in real videos.

Prototypes depend only on ``prototype_seed`` and the class (not on ``seed`` or the number of videos), so a train and a
validation split written with different seeds describe the same classes.
"""

from __future__ import annotations

import csv
import os
import sys
import zlib
from collections.abc import Mapping
from typing import TextIO

import numpy as np

from attncluster.data.tfrecord import TFRecordWriter
from attncluster.data.yt8m import encode_sequence_example, quantize
from attncluster.errors import ConfigError, writing
from attncluster.outputs import atomic_output, remove_stale, target_of_temporary

# Tunable signal: amplitude ~1 on a few dims against small noise, in dequantized units (the range is [-2, 2]).
NOISE_STD = 0.5  # background: N(0, NOISE_STD) on every dim of every frame
PROTOTYPE_AMPLITUDE = 1.0  # each prototype is +-PROTOTYPE_AMPLITUDE on its support, 0 elsewhere
PROTOTYPE_DIM_FRACTION = 1 / 8  # support size as a fraction of the modality's dims ...
MIN_PROTOTYPE_DIMS = 4  # ... but at least this many dims
SIGNAL_FRAME_FRACTION = (0.10, 0.20)  # per label / decoy, this fraction of frames (at least 1) carries the signal
LABELS_PER_VIDEO = (1, 4)  # inclusive range
DECOYS_PER_VIDEO = (1, 3)  # inclusive range (fewer when there are not enough classes)
CONTIGUOUS_SIGNAL = True  # signal frames form one run (an "event") per label / decoy prototype, see _video

ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
ID_LENGTH = 4  # as the anonymised ids of the 2018 release
VOCABULARY_FILE = "vocabulary.csv"
VOCABULARY_COLUMNS = ("Index", "TrainVideoCount", "KnowledgeGraphId", "Name", "WikiUrl", "Vertical1", "Vertical2",
                      "Vertical3", "WikiDescription")


def class_prototypes(classes: int, dims: Mapping[str, int], *,
                     prototype_seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The prototypes p and q of every class.

    Args:
        classes: number of classes.
        dims: modality name -> feature size.
        prototype_seed: the seed of the "world"; class k's prototypes depend only on it, k, the modality and its size.

    Returns:
        modality -> (P, Q), each float32 (classes, dim): sparse rows with ``PROTOTYPE_AMPLITUDE`` entries of random
        sign on a random support.
    """
    out = {}
    for name, dim in dims.items():
        support = min(dim, max(MIN_PROTOTYPE_DIMS, round(dim * PROTOTYPE_DIM_FRACTION)))
        pq = np.zeros((2, classes, dim), dtype=np.float32)
        for k in range(classes):
            rng = np.random.default_rng([prototype_seed, zlib.crc32(name.encode()), dim, k])
            for row in pq[:, k]:
                idx = rng.choice(dim, support, replace=False)
                row[idx] = PROTOTYPE_AMPLITUDE * rng.choice(np.array([-1.0, 1.0], dtype=np.float32), support)
        out[name] = (pq[0], pq[1])
    return out


def _video_ids(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` distinct 4-character ids."""
    space = len(ID_ALPHABET) ** ID_LENGTH
    if n > space:
        raise ConfigError(f"synth: videos = {n} is more than the {space} distinct {ID_LENGTH}-character ids")
    out = []
    for code in rng.choice(space, n, replace=False).tolist():
        chars = []
        for _ in range(ID_LENGTH):
            code, digit = divmod(code, len(ID_ALPHABET))
            chars.append(ID_ALPHABET[digit])
        out.append("".join(chars))
    return out


def _signal_frames(rng: np.random.Generator, t: int) -> int:
    lo, hi = SIGNAL_FRAME_FRACTION
    return max(1, round(rng.uniform(lo, hi) * t))


def _video(rng: np.random.Generator, protos: Mapping[str, tuple[np.ndarray, np.ndarray]], dims: Mapping[str, int],
           classes: int, min_frames: int, max_frames: int) -> tuple[list[int], dict[str, np.ndarray]]:
    """One video: its labels and uint8 (T, F) frames per modality."""
    t = int(rng.integers(min_frames, max_frames + 1))
    n_labels = int(rng.integers(LABELS_PER_VIDEO[0], min(LABELS_PER_VIDEO[1], classes - 1) + 1))
    n_decoys = int(rng.integers(DECOYS_PER_VIDEO[0], min(DECOYS_PER_VIDEO[1], classes - n_labels) + 1))
    chosen = rng.choice(classes, n_labels + n_decoys, replace=False)
    labels = sorted(int(k) for k in chosen[:n_labels])
    decoys = [int(j) for j in chosen[n_labels:]]

    # Which frames carry which prototype; the same moments in every modality.
    placements: list[tuple[np.ndarray, int, str]] = []  # (frames, class, "pq" | "p" | "q")
    for k in labels:
        m = _signal_frames(rng, t)
        if CONTIGUOUS_SIGNAL:
            start = int(rng.integers(0, t - m + 1))
            frames = np.arange(start, start + m)
        else:
            frames = rng.choice(t, m, replace=False)
        placements.append((frames, k, "pq"))
    for j in decoys:
        m = min(_signal_frames(rng, t), t // 2)  # p-frames and q-frames must be different frames
        if m == 0:
            continue  # a 1-frame video has no room for a decoy
        if CONTIGUOUS_SIGNAL:
            # Two disjoint runs: gaps before, between and after them add up to the slack t - 2m.
            c0, c1 = np.sort(rng.integers(0, t - 2 * m + 1, 2)).tolist()
            first, second = np.arange(c0, c0 + m), np.arange(c1 + m, c1 + 2 * m)
            if rng.random() < 0.5:
                first, second = second, first
        else:
            frames = rng.choice(t, 2 * m, replace=False)
            first, second = frames[:m], frames[m:]
        placements.append((first, j, "p"))
        placements.append((second, j, "q"))

    out = {}
    for name, dim in dims.items():
        p, q = protos[name]
        x = rng.standard_normal((t, dim), dtype=np.float32) * np.float32(NOISE_STD)
        for frames, k, kind in placements:
            if "p" in kind:
                x[frames] += p[k]
            if "q" in kind:
                x[frames] += q[k]
        out[name] = quantize(x)
    return labels, out


def write_synthetic(out_dir: str | os.PathLike, *, videos: int, classes: int, shards: int, seed: int,
                    rgb_dim: int = 1024, audio_dim: int = 128, min_frames: int = 5, max_frames: int = 300,
                    prefix: str = "train", prototype_seed: int = 0) -> list[str]:
    """Write synthetic frame-level shards ``<prefix>NNNN.tfrecord`` and a ``vocabulary.csv`` to ``out_dir``.

    The output is byte-identical for the same arguments.

    Args:
        out_dir: output folder: new or empty (created if needed).
        videos: number of videos, spread over the shards in order.
        classes: number of classes (at least 2: every video needs a label and a decoy).
        shards: number of shard files (at most ``videos``; a shard file is never empty).
        seed: seed of the videos (lengths, labels, noise, which frames carry signal).
        rgb_dim, audio_dim: bytes per frame of ``rgb`` and ``audio``.
        min_frames, max_frames: video lengths are uniform in this inclusive range.
        prefix: shard file name prefix, e.g. ``train`` or ``validate``.
        prototype_seed: seed of the class prototypes; keep it equal across the splits of one dataset.

    Returns:
        The shard paths, in order.

    Raises:
        ConfigError: an invalid argument, or ``out_dir`` is not empty.
    """
    checks = [
        (videos >= 1, f"videos must be >= 1, got {videos}"),
        (classes >= 2, f"classes must be >= 2 (a label and a decoy per video), got {classes}"),
        (1 <= shards <= max(videos, 1), f"shards must be in [1, videos = {videos}], got {shards}"),
        (1 <= min_frames <= max_frames, f"need 1 <= min_frames <= max_frames, got {min_frames} and {max_frames}"),
        (rgb_dim >= 1 and audio_dim >= 1, f"rgb_dim and audio_dim must be >= 1, got {rgb_dim} and {audio_dim}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"synth: {message}")
    dims = {"rgb": rgb_dim, "audio": audio_dim}
    protos = class_prototypes(classes, dims, prototype_seed=prototype_seed)
    rng = np.random.default_rng(seed)
    ids = _video_ids(rng, videos)

    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"synth: {out_dir} exists and is not a folder")
    if os.path.isdir(out_dir):  # a killed synth's temporary files (not a user's, nor a live writer's) go first
        remove_stale(os.path.join(out_dir, VOCABULARY_FILE), matches=lambda n: (target_of_temporary(n) or "").endswith(
            (".tfrecord", VOCABULARY_FILE)))
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        # Old shards beside new ones would silently become one larger, mixed dataset.
        raise ConfigError(f"synth: {out_dir} is not empty ({len(os.listdir(out_dir))} entries); choose a new or "
                          "empty folder")
    with writing(out_dir, "create the folder"):
        os.makedirs(out_dir, exist_ok=True)
    counts = np.zeros(classes, dtype=np.int64)
    paths = []
    for s in range(shards):
        path = os.path.join(out_dir, f"{prefix}{s:04d}.tfrecord")
        # The one writer (outputs.atomic_output): a hidden temporary file renamed when complete, so an interrupted
        # run never leaves a short shard that reads as valid, and a full disk is one error naming the shard.
        with atomic_output(path, "wb") as f, TFRecordWriter(f) as writer:
            for i in range(s * videos // shards, (s + 1) * videos // shards):
                labels, frames = _video(rng, protos, dims, classes, min_frames, max_frames)
                counts[labels] += 1
                writer.write(encode_sequence_example(ids[i], labels, frames))
        paths.append(path)
    write_vocabulary(os.path.join(out_dir, VOCABULARY_FILE), counts)
    return paths


def write_vocabulary(path: str, counts: np.ndarray) -> None:
    """A ``vocabulary.csv`` in the official column layout, with made-up names ``Synthetic class <k>``."""
    with atomic_output(path) as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(VOCABULARY_COLUMNS)
        for k, count in enumerate(counts.tolist()):
            w.writerow([k, count, f"/m/synthetic{k}", f"Synthetic class {k}", "", "Synthetic", "", "",
                        "A made-up class of the synthetic dataset, recognised by frames with both of its prototypes."])


def synth(out: str | os.PathLike, videos: int, classes: int, shards: int, seed: int, *, max_frames: int = 300,
          min_frames: int = 5, rgb_dim: int = 1024, audio_dim: int = 128, prefix: str = "train",
          prototype_seed: int = 0, stream: TextIO | None = None) -> int:
    """The ``synth`` verb: write a synthetic dataset and print one summary line. Returns the exit status (0)."""
    paths = write_synthetic(out, videos=videos, classes=classes, shards=shards, seed=seed, rgb_dim=rgb_dim,
                            audio_dim=audio_dim, min_frames=min_frames, max_frames=max_frames, prefix=prefix,
                            prototype_seed=prototype_seed)
    print(f"synth: wrote {videos} videos ({classes} classes) in {len(paths)} shards to {out}, "
          f"vocabulary in {os.path.join(os.fspath(out), VOCABULARY_FILE)}", file=stream or sys.stdout)
    return 0


__all__ = [
    "DECOYS_PER_VIDEO",
    "LABELS_PER_VIDEO",
    "NOISE_STD",
    "PROTOTYPE_AMPLITUDE",
    "PROTOTYPE_DIM_FRACTION",
    "SIGNAL_FRAME_FRACTION",
    "class_prototypes",
    "synth",
    "write_synthetic",
    "write_vocabulary",
]
