"""YouTube-8M 2019 segments: when a class happens, in 5-second segments.

* Scoring: every segment ``[start, start + 5)`` (starts 0, 5, 10, ..., the last one possibly shorter, as the official
  ``inference.py``) of every video gets a score per chosen class. :data:`SCORINGS`:

  - ``frames``: the classifier on the segment's own frames (attention pools over any number of frames);
  - ``video``: the video-level score (the model on all frames) for every segment of the video (a baseline);
  - ``attention``: the video-level score times the units' attention mass inside the segment, relative to the
    segment with the most mass;
  - ``blend``: the geometric mean of ``frames`` and ``video``.

  docs/benchmarks.md compares them; :data:`DEFAULT_SCORING` is the best measured.
* :class:`ClassHeaps`: the best N segments per class, streamed: memory is bounded by N x classes whatever the corpus.
* :func:`segment_map`: the official 2019 metric, as ``segment_eval_inference.py`` intends it (see its docstring).
* The Kaggle 2019 submission: header ``Class,Segments``, one row per class, ``<videoId>:<startTime>`` entries
  separated by spaces, best first.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from attncluster.errors import ConfigError, DataError, printable

SEGMENT_SIZE = 5  # frames (= seconds at 1 fps) per segment
DEFAULT_TOP_N = 100_000  # per class, as the 2019 Kaggle challenge (MAP@100,000)
SCORINGS = ("frames", "video", "attention", "blend")
DEFAULT_SCORING = "frames"  # the best measured (docs/benchmarks.md, "YouTube-8M 2019 segments")
SUBMISSION_HEADER = ("Class", "Segments")
CLASS_FILE = "segment_label_ids.csv"  # the 1,000 rated classes of the 2019 challenge (google/youtube-8m, Apache-2.0)


# --------------------------------------------------------------------------------------------------------------------
# Classes


def load_segment_classes(path: str | os.PathLike | None = None, num_classes: int | None = None) -> np.ndarray:
    """The class ids to score: a CSV with header ``Index`` and one class id per line (default: the shipped 2019
    whitelist, 1,000 classes of the 3,862-class vocabulary). Returned sorted, unique, as int64."""
    if path is None:
        text = resources.files("attncluster").joinpath("configs", CLASS_FILE).read_text(encoding="utf-8")
        where = f"the shipped {CLASS_FILE}"
    else:
        where = os.fspath(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"--segment-classes {printable(where)}: no such file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--segment-classes {printable(where)}: cannot read it ({printable(str(e))})") from None
    rows = [(n, r) for n, r in enumerate(csv.reader(io.StringIO(text.lstrip("\ufeff"))), start=1)
            if r and any(c.strip() for c in r)]
    if not rows or rows[0][1][0].strip() != "Index":
        raise DataError(f"{printable(where)}: expected a CSV whose first line is the header 'Index'")
    ids = []
    first_line: dict[int, int] = {}
    for line, row in rows[1:]:
        try:
            k = int(row[0])
        except ValueError:
            raise DataError(f"{printable(where)}: line {line}: {printable(row[0])!r} is not a class id") from None
        if k < 0 or (num_classes is not None and k >= num_classes):
            bound = f"[0, {num_classes}) (model.num_classes)" if num_classes is not None else ">= 0"
            raise DataError(f"{printable(where)}: line {line}: class {k} is out of range, expected {bound}")
        if k in first_line:  # a list with a repeat is usually a list built wrongly: say so, do not merge it
            raise DataError(f"{printable(where)}: line {line}: class {k} is listed twice (first on line "
                            f"{first_line[k]}); each class once")
        first_line[k] = line
        ids.append(k)
    if not ids:
        raise DataError(f"{printable(where)}: no class ids after the header")
    return np.unique(np.array(ids, dtype=np.int64))


def default_classes(num_classes: int, path: str | None = None) -> np.ndarray:
    """``--segment-classes`` or, for a 3,862-class model, the shipped whitelist; any other model: all its classes."""
    if path is not None:
        return load_segment_classes(path, num_classes)
    if num_classes == 3862:
        return load_segment_classes(None, num_classes)
    return np.arange(num_classes, dtype=np.int64)


# --------------------------------------------------------------------------------------------------------------------
# Segments of a video


def segment_starts(num_frames: int) -> np.ndarray:
    """Start frames of every segment of a ``num_frames`` video: 0, 5, 10, ... (the last may be shorter)."""
    return np.arange(0, max(int(num_frames), 0), SEGMENT_SIZE, dtype=np.int64)


def segment_indices(num_frames: int, starts: np.ndarray) -> np.ndarray:
    """(S, 5) frame indices of each segment; a segment cut short by the video's end repeats its frames evenly."""
    starts = np.asarray(starts, dtype=np.int64)
    length = np.minimum(SEGMENT_SIZE, num_frames - starts)  # (S,) frames the segment really has
    return starts[:, None] + (np.arange(SEGMENT_SIZE)[None, :] * length[:, None]) // SEGMENT_SIZE


@torch.no_grad()
def score_segments(predictor, frames: Mapping[str, np.ndarray], scoring: str = DEFAULT_SCORING
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Scores of every segment of one video for every class.

    Args:
        predictor: an ``inference.Predictor`` (``attention`` needs a ``TorchPredictor``: its model's attention).
        frames: modality -> (T, F) frames (uint8 quantized or float), all modalities of one length T.
        scoring: one of :data:`SCORINGS`.

    Returns:
        (starts (S,), scores (S, num_classes) float32).
    """
    if scoring not in SCORINGS:
        raise ConfigError(f"--segment-scoring {scoring!r}: expected one of {', '.join(SCORINGS)}")
    t = min(int(np.asarray(x).shape[0]) for x in frames.values())
    starts = segment_starts(t)
    if scoring in ("frames", "blend"):
        idx = segment_indices(t, starts)
        seg = predictor.scores({m: np.asarray(x)[idx] for m, x in frames.items()})  # (S, 5, F) per modality
        if scoring == "frames":
            return starts, seg.astype(np.float32)
    whole = {m: np.asarray(x)[None, :t] for m, x in frames.items()}
    if scoring == "attention":
        model = getattr(predictor, "model", None)
        if model is None:
            raise ConfigError("--segment-scoring attention needs a PyTorch model (--weights), not an ONNX graph")
        tensors = predictor.tensors(whole)
        video = predictor.scores(whole)[0]
        mass = sum(a[0].float().mean(dim=1) for a in model.attention_weights(tensors).values()).cpu().numpy()  # (T,)
        per_segment = np.add.reduceat(mass, starts)  # (S,) attention mass in each segment
        rel = per_segment / max(float(per_segment.max()), 1e-12)
        return starts, (rel[:, None] * video[None, :]).astype(np.float32)
    video = predictor.scores(whole)[0]  # (K,)
    if scoring == "video":
        return starts, np.repeat(video[None, :], len(starts), axis=0).astype(np.float32)
    return starts, np.sqrt(np.clip(seg, 0, None) * video[None, :]).astype(np.float32)  # blend


def segment_records(starts: np.ndarray, scores: np.ndarray, num_frames: int, classes: np.ndarray, k: int,
                    class_names: Sequence[str] | None = None, fps: float = 1.0) -> list[dict]:
    """One video's segments as ``predict --segments``' .jsonl writes them (and ``serve`` answers them): per segment
    ``{"start", "end", "classes", "scores" (6 decimals)[, "names"]}``, the top ``k`` of ``classes`` by
    :func:`~attncluster.inference.top_classes` (ties: lower class first). ``start``/``end`` are frames divided by
    ``fps``: seconds (whole numbers at YouTube-8M's 1 fps); ``end`` is cut at the video's last frame.

    Args:
        starts, scores: :func:`score_segments`' answer for the video.
        num_frames: the video's length T in frames.
        classes: the class ids to rank (:func:`default_classes`); ``k`` at most ``len(classes)``.
        class_names: names by class id for a ``names`` field (None: no field).
        fps: frames per second of the features.
    """
    from attncluster.inference import top_classes

    classes = np.asarray(classes, dtype=np.int64)
    scores = np.asarray(scores)
    if len(starts) == 0:
        return []
    top, top_scores = top_classes(scores[:, classes], k)  # row by row: each segment its own top k

    def seconds(frame: int):
        return int(frame) if fps == 1 else round(int(frame) / fps, 6)

    out = []
    for s, t, p in zip(np.asarray(starts).tolist(), top, top_scores):
        ids = classes[t].tolist()
        rec: dict = {"start": seconds(s), "end": seconds(min(s + SEGMENT_SIZE, int(num_frames))), "classes": ids,
                     "scores": [round(float(x), 6) for x in p]}
        if class_names is not None:
            rec["names"] = [class_names[c] for c in ids]
        out.append(rec)
    return out


# --------------------------------------------------------------------------------------------------------------------
# The best N segments per class


class ClassHeaps:
    """The top ``n`` segments of every class in ``classes``, fed in any number of pushes.

    Order: score descending, ties by the lower ``key`` (a global position: shard, record, start), so 1 and N
    processes rank alike. Each class buffers at most 2n candidates and keeps its best n when the buffer fills
    (the same result as a heap, with numpy doing the work): memory is bounded by 2n x classes entries of 20 bytes
    (plus the ids, shared per video); at the challenge's n = 100,000 and 1,000 classes that bound is 4 GB, reached
    only when the corpus has more than n segments per class.
    """

    def __init__(self, classes: Sequence[int], n: int = DEFAULT_TOP_N) -> None:
        if n < 1:
            raise ConfigError(f"--top-n {n}: must be >= 1")
        self.classes = np.asarray(classes, dtype=np.int64)
        self.n = int(n)
        k = len(self.classes)
        self._scores: list[list[np.ndarray]] = [[] for _ in range(k)]
        self._keys: list[list[np.ndarray]] = [[] for _ in range(k)]
        self._ids: list[list[np.ndarray]] = [[] for _ in range(k)]
        self._size = np.zeros(k, dtype=np.int64)
        self._floor = np.full(k, -np.inf)  # the n-th best score once n are kept: lower scores cannot enter

    def push(self, scores: np.ndarray, keys: np.ndarray, ids: Sequence[str]) -> None:
        """Offer M segments: ``scores`` (M, len(classes)) for the chosen classes, ``keys`` (M,) int64, ``ids`` (M,)
        segment ids ``"<videoId>:<start>"``."""
        scores = np.asarray(scores, dtype=np.float32)  # 4 + 8 (key) + 8 (id reference) bytes per kept entry
        keys = np.asarray(keys, dtype=np.int64)
        ids = np.asarray(ids, dtype=object)
        enter = scores >= self._floor[None, :]
        for j in np.flatnonzero(enter.any(axis=0)):
            rows = np.flatnonzero(enter[:, j])
            self._scores[j].append(scores[rows, j])
            self._keys[j].append(keys[rows])
            self._ids[j].append(ids[rows])
            self._size[j] += rows.size
            if self._size[j] >= 2 * self.n:
                self._prune(j)

    def _prune(self, j: int) -> None:
        s, k, i = (np.concatenate(x[j]) for x in (self._scores, self._keys, self._ids))
        order = np.lexsort((k, -s))[:self.n]
        self._scores[j], self._keys[j], self._ids[j] = [s[order]], [k[order]], [i[order]]
        self._size[j] = order.size
        if order.size >= self.n:
            self._floor[j] = s[order[-1]]

    def ranked(self, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scores, keys, ids) of class ``self.classes[j]``, best first, at most n."""
        if not self._scores[j]:
            return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=object)
        self._prune(j)
        return self._scores[j][0], self._keys[j][0], self._ids[j][0]

    def state(self) -> list[tuple[list[float], list[int], list[str]]]:
        """Plain lists, to hand to another process (torchrun ranks) and :meth:`merge`."""
        return [tuple(a.tolist() for a in self.ranked(j)) for j in range(len(self.classes))]

    def merge(self, state: list[tuple[list[float], list[int], list[str]]]) -> None:
        for j, (s, k, i) in enumerate(state):
            if s:
                one = np.zeros((len(s), len(self.classes)), dtype=np.float32)
                one[:] = -np.inf
                one[:, j] = s
                self.push(one, np.array(k, dtype=np.int64), i)

    def lists(self) -> dict[int, list[str]]:
        """class id -> segment ids, best first (a segment ranked twice is a DataError: :func:`check_unique`)."""
        out = {int(c): list(self.ranked(j)[2]) for j, c in enumerate(self.classes)}
        check_unique(out)
        return out


def check_unique(ranked: Mapping[int, Sequence[str]]) -> None:
    """Refuse a segment ranked twice for one class: a video id that occurs more than once in the data (a shard given
    twice, or two videos with one id). Its segments would be two entries of one ``<videoId>:<startTime>``, both
    counted as hits of one rating (a segment MAP above 1)."""
    for c, ids in ranked.items():
        seen: set[str] = set()
        for i in ids:
            if i in seen:
                vid = i.rsplit(":", 1)[0]
                raise DataError(f"segment {printable(i)} is ranked twice for class {c}: video id {printable(vid)!r} "
                                "occurs more than once in the data (a shard given twice, or two videos with one id); "
                                "segments are named <videoId>:<startTime>, so every video needs its own id")
            seen.add(i)


class ModelPredictor:
    """An ``inference.TorchPredictor`` over a model already in memory (eval, training)."""

    def __init__(self, model, cfg, device) -> None:
        from attncluster.inference import TorchPredictor

        self.model, self.cfg, self.device = model.eval(), cfg, torch.device(device)
        self.modalities, self.num_classes, self.loss = dict(cfg.model.feature_dims), cfg.model.num_classes, cfg.train.loss
        self._torch = TorchPredictor  # its tensors / logits, bound to this object below

    def tensors(self, features):
        return self._torch.tensors(self, features)

    def logits(self, features):
        return self._torch.logits(self, features)

    def scores(self, features):
        return self._torch.scores(self, features)


def segment_key(shard: int, record: int, start: int) -> int:
    """A global position of a segment, for tie-breaks: shard, then record, then start."""
    return (int(shard) << 40) | (int(record) << 12) | int(start)


# --------------------------------------------------------------------------------------------------------------------
# Kaggle 2019 submission


def format_submission(ranked: Mapping[int, Sequence[str]]) -> Iterable[list[str]]:
    yield list(SUBMISSION_HEADER)
    for c in sorted(ranked):
        yield [str(c), " ".join(ranked[c])]


def write_submission(path: str, ranked: Mapping[int, Sequence[str]]) -> None:
    from attncluster.outputs import atomic_output

    with atomic_output(path) as f:
        writer = csv.writer(f, lineterminator="\r\n")
        for row in format_submission(ranked):
            writer.writerow(row)


def read_submission(path: str) -> dict[int, list[str]]:
    """A Kaggle 2019 submission: class -> segment ids, best first (the header line and line ends are handled)."""
    out: dict[int, list[str]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            if not row:
                continue
            if line == 1 and [c.strip() for c in row] == list(SUBMISSION_HEADER):
                continue
            if len(row) != 2:
                raise DataError(f"{printable(path)}: line {line}: expected 2 fields (Class,Segments), got {len(row)}")
            try:
                c = int(row[0])
            except ValueError:
                raise DataError(f"{printable(path)}: line {line}: class {printable(row[0])!r} is not an integer") from None
            out[c] = row[1].split()
    return out


# --------------------------------------------------------------------------------------------------------------------
# The 2019 metric


def rated_pairs(videos: Iterable) -> dict[tuple[str, int], float]:
    """``(f"{id}:{start}", class) -> rating`` of the videos' segment ratings (a repeated pair: the last one wins, as
    in the official dict)."""
    out: dict[tuple[str, int], float] = {}
    for video in videos:
        seg = getattr(video, "segments", None)
        if seg is None:
            continue
        for c, s, r in zip(seg.classes.tolist(), seg.starts.tolist(), seg.scores.tolist()):
            out[(f"{video.id}:{s}", c)] = float(r)
    return out


def segment_map(ranked: Mapping[int, Sequence[str]], ratings: Mapping[tuple[str, int], float],
                top_n: int | None = None) -> tuple[float | None, dict[int, float]]:
    """The YouTube-8M 2019 metric, as ``segment_eval_inference.py`` computes it (run as its authors intended).

    Per class of ``ranked``: its list cut to ``top_n`` (before unrated pairs are dropped, as the official script
    does), unrated (segment, class) pairs dropped, the rest scored by rank (``(n - i) / n``), and average precision
    as ``average_precision_calculator.ap_at_n`` with ``n=None`` and the class's count of positive ratings over the
    whole data as the number of positives; the mean over the classes that have at least one positive rating
    (``filter_empty_classes``).

    Returns:
        (the mean, or None when no class of ``ranked`` has a positive rating; class -> AP of the classes averaged).
    """
    check_unique(ranked)
    positives: dict[int, int] = {}
    for (_, c), r in ratings.items():
        if r > 0:
            positives[c] = positives.get(c, 0) + 1
    aps: dict[int, float] = {}
    for c in sorted(ranked):
        total = positives.get(c, 0)
        if total == 0:
            continue  # filter_empty_classes (the official script would raise KeyError here instead)
        ids = list(ranked[c])[:top_n] if top_n else list(ranked[c])
        kept = [ratings[(i, c)] for i in ids if (i, c) in ratings]
        hits, ap = 0, 0.0
        for rank, r in enumerate(kept, start=1):
            if r > 0:
                hits += 1
                ap += hits / rank
        aps[c] = ap / total
    if not aps:
        return None, aps
    return float(np.mean(list(aps.values()))), aps


# --------------------------------------------------------------------------------------------------------------------
# Reading and scoring a data set


def _videos_dataset(cfg, data, rank: int, world_size: int):
    """The videos with all their frames (up to 300) and their ratings, in --data order, this rank's share."""
    from attncluster.data.dataset import VideoDataset
    from attncluster.inference import load_class_names

    class WholeVideos(VideoDataset):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self._shard_index = {}
            for i, path in enumerate(self.shards):
                self._shard_index.setdefault(path, i)

        warned = False

        def _sample(self, video, path, i, rng):
            n = video.num_frames
            if n < 1:
                return super()._sample(video, path, i, rng)  # the base class's error (or skip)
            if n == 1 and not self.warned:  # video-level data: there is no "when" to find
                self.warned = True
                import sys

                print(f"warning: {printable(path)}: record {i} holds 1 frame (video-level data?): its only segment is "
                      "the whole video; --segments needs frame-level shards (1 frame per second)", file=sys.stderr,
                      flush=True)
            return {"video": video, "shard": self._shard_index[path], "record": int(i), "path": path}

    return WholeVideos.from_config(cfg, data, train=False, seg_num=1, rank=rank, world_size=world_size,
                                   class_names=load_class_names(cfg))


def _segment_dataset_class():
    from attncluster.data.dataset import VideoDataset, _warn
    from attncluster.data.records import dequantize

    class SegmentDataset(VideoDataset):
        """Training on 2019 ratings (``train.loss: segment_bce``): each video gives one of its rated segments per
        epoch (drawn from the epoch's seeded jitter; the first in evaluation order), its 5 frames as the
        modalities, and ``labels`` the ratings of that segment: 1 or 0 for rated classes, -1 for the others
        (masked out of the loss). A video without ratings is an error (skipped and warned with skip_corrupt)."""

        def _sample(self, video, path, i, rng):
            seg = video.segments
            where = f"{path}: record {i} (id {video.id!r})"
            if seg is None or len(seg) == 0:
                message = (f"{where}: no segment ratings (segment_labels, segment_start_times, segment_scores), "
                           "which train.loss segment_bce needs")
                if not self.skip_corrupt:
                    raise DataError(message)
                _warn(message)
                return None
            if seg.classes.size and seg.classes.max() >= self.num_classes:
                raise DataError(f"{where}: segment class {int(seg.classes.max())} out of range, expected "
                                f"[0, {self.num_classes})")
            starts = np.unique(seg.starts)
            pick = int(rng.random(1)[0] * starts.size) if rng is not None else 0
            start = int(starts[min(pick, starts.size - 1)])
            n = video.num_frames
            idx = segment_indices(n, np.array([start]))[0]
            sample: dict = {"id": video.id}
            for m in self.modalities:
                frames = video.features[m][idx]
                if frames.dtype == np.uint8:
                    if self.dequantize:
                        frames = dequantize(frames)
                elif frames.dtype != np.float32:
                    frames = frames.astype(np.float32)
                sample[m] = torch.from_numpy(np.ascontiguousarray(frames))
            target = np.full(self.num_classes, -1.0, dtype=np.float32)
            here = seg.starts == start
            target[seg.classes[here]] = seg.scores[here]
            sample["labels"] = torch.from_numpy(target)
            sample["num_frames"] = n
            return sample

    return SegmentDataset


def __getattr__(name: str):
    if name == "SegmentDataset":  # built on first use: the data package loads only when training on segments
        return _segment_dataset_class()
    raise AttributeError(name)


def score_dataset(predictor, cfg, data, classes: np.ndarray, *, scoring: str = DEFAULT_SCORING,
                  top_n: int = DEFAULT_TOP_N, rank: int = 0, world_size: int = 1, on_video=None,
                  keep_ratings: bool = False, submission: bool = False
                  ) -> tuple[ClassHeaps, dict[tuple[str, int], float], int]:
    """Score every segment of this rank's videos into per-class heaps.

    ``on_video(video, shard, record, starts, scores)`` is called per video (the .jsonl writer). Returns (heaps, the
    ratings read when ``keep_ratings``, the number of videos). ``submission``: the ids go to a Kaggle 2019 file, so
    an id that its space-separated ``<videoId>:<startTime>`` entries cannot hold (empty, or with whitespace) is a
    DataError naming the file and record.
    """
    ds = _videos_dataset(cfg, data, rank, world_size)
    heaps = ClassHeaps(classes, top_n)
    ratings: dict[tuple[str, int], float] = {}
    count = 0
    pending: list[tuple[np.ndarray, np.ndarray, list[str]]] = []  # pushed a few thousand segments at a time

    def flush() -> None:
        if pending:
            heaps.push(np.concatenate([p[0] for p in pending]), np.concatenate([p[1] for p in pending]),
                       [i for p in pending for i in p[2]])
            pending.clear()

    for sample in ds:
        video = sample["video"]
        if submission and (not video.id or any(ch.isspace() for ch in video.id)):
            raise DataError(f"{printable(sample['path'])}: record {sample['record']}: video id "
                            f"{printable(repr(video.id))} is empty or holds whitespace, which a Kaggle 2019 "
                            "submission (space-separated <videoId>:<startTime>) cannot hold; write .jsonl instead")
        frames = {m: video.features[m] for m in cfg.model.feature_dims}
        starts, scores = score_segments(predictor, frames, scoring)
        if on_video is not None:
            on_video(video, sample["shard"], sample["record"], starts, scores)
        keys = np.array([segment_key(sample["shard"], sample["record"], s) for s in starts], dtype=np.int64)
        pending.append((scores[:, classes], keys, [f"{video.id}:{int(s)}" for s in starts]))
        if sum(len(p[1]) for p in pending) >= 4096:
            flush()
        if keep_ratings:
            ratings.update(rated_pairs([video]))
        count += 1
    flush()
    return heaps, ratings, count


def _merged(heaps: ClassHeaps, ratings: dict, count: int) -> tuple[ClassHeaps, dict, int]:
    from attncluster import distributed

    states = distributed.gather_objects((heaps.state(), ratings, count))
    if len(states) == 1:
        return heaps, ratings, count
    merged = ClassHeaps(heaps.classes, heaps.n)
    all_ratings: dict = {}
    total = 0
    for state, r, c in states:  # rank order = --data order: a repeated rating keeps the last, as one process would
        merged.merge(state)
        all_ratings.update(r)
        total += c
    return merged, all_ratings, total


def predict_segments(cfg, weights: str | None, data: list[str], output: str, *, top_n: int = DEFAULT_TOP_N,
                     classes_csv: str | None = None, scoring: str = DEFAULT_SCORING, device: str | None = None,
                     onnx: str | None = None, top_k: int | None = None, log=print) -> int:
    """``predict --segments``: a Kaggle 2019 submission (.csv) or per-video segment scores (.jsonl)."""
    from attncluster import distributed
    from attncluster.errors import plural
    from attncluster.inference import TorchPredictor, default_top_k
    from attncluster.outputs import check_output, remove_stale

    from attncluster.predict import PART_SUFFIX, PartFile, merge_parts, part_paths, write_part_row

    info = distributed.env_info()
    if info.rank == 0:
        check_output(output)
        remove_stale(output, extra=PART_SUFFIX)  # parts a killed run left (a live run's are locked: kept)
    suffix = Path(output).suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise ConfigError(f"--output {output}: unknown format {suffix!r}; use .csv (Kaggle 2019 submission) or .jsonl")
    if suffix == ".csv" and top_k is not None:
        raise ConfigError(f"--top-k {top_k}: the Kaggle 2019 submission ({output}) ranks segments per class (--top-n); "
                          "--top-k (classes per segment) applies to .jsonl output")
    predictor = None
    if onnx is not None:
        from attncluster.export import OnnxPredictor, model_config

        predictor = OnnxPredictor(onnx)
        cfg = model_config(predictor, cfg)
    classes = default_classes(cfg.model.num_classes, classes_csv)
    if scoring not in SCORINGS:
        raise ConfigError(f"--segment-scoring {scoring!r}: expected one of {', '.join(SCORINGS)}")
    dev = distributed.device_for(device if predictor is None else "cpu", info)
    distributed.setup(dev.type)
    part = None
    try:
        if predictor is None:
            predictor = TorchPredictor(cfg, weights, dev)
        if suffix == ".jsonl":
            k = min(top_k or default_top_k(len(classes)), len(classes))
            import uuid

            token = distributed.gather_objects(uuid.uuid4().hex[:12])[0]
            parts = part_paths(output, token, info.world_size)
            part = parts[info.rank]
            with PartFile(part) as f:
                def on_video(video, shard, record, starts, scores):
                    segs = segment_records(starts, scores, video.num_frames, classes, k)
                    write_part_row(f, shard, record, json.dumps({"id": video.id, "segments": segs}) + "\n")

                _, _, count = score_dataset(predictor, cfg, data, classes, scoring=scoring, top_n=1,
                                            rank=info.rank, world_size=info.world_size, on_video=on_video)
            distributed.barrier()
            if info.rank == 0:
                count = merge_parts(parts, output)
                log(f"predict: segments of {plural(count, 'video')} -> {output}")
            distributed.barrier()
            return count
        heaps, _, count = score_dataset(predictor, cfg, data, classes, scoring=scoring, top_n=top_n,
                                        rank=info.rank, world_size=info.world_size, submission=True)
        heaps, _, count = _merged(heaps, {}, count)
        if info.rank == 0:
            write_submission(output, heaps.lists())
            log(f"predict: segments of {plural(count, 'video')}, top {top_n} per class for "
                f"{plural(len(classes), 'class', 'classes')} -> {output}")
        return count
    finally:
        if part is not None and os.path.exists(part):
            os.unlink(part)
        distributed.cleanup()


def evaluate_segments(predictor, cfg, data, *, top_n: int = DEFAULT_TOP_N, classes_csv: str | None = None,
                      scoring: str = DEFAULT_SCORING) -> dict:
    """``eval --segments``: the 2019 metric over ``data`` (which must carry segment ratings)."""
    from attncluster import distributed

    info = distributed.env_info()
    classes = default_classes(cfg.model.num_classes, classes_csv)
    heaps, ratings, count = score_dataset(predictor, cfg, data, classes, scoring=scoring, top_n=top_n,
                                          rank=info.rank, world_size=info.world_size, keep_ratings=True)
    heaps, ratings, count = _merged(heaps, ratings, count)
    if not ratings:
        raise DataError(f"eval --segments: none of the {count} videos in {' '.join(map(str, data))} carries segment "
                        "ratings (segment_labels, segment_start_times, segment_scores: YouTube-8M 2019 validate data)")
    value, aps = segment_map(heaps.lists(), ratings, top_n)
    return {"segment_map": value, "segment_top_n": top_n, "segment_scoring": scoring,
            "segment_classes": len(aps), "segment_ratings": len(ratings)}


__all__ = [
    "ClassHeaps", "DEFAULT_SCORING", "ModelPredictor", "DEFAULT_TOP_N", "SCORINGS", "SEGMENT_SIZE", "default_classes",
    "evaluate_segments", "load_segment_classes", "predict_segments", "rated_pairs", "read_submission",
    "score_dataset", "score_segments", "segment_indices", "segment_map", "segment_records", "segment_starts",
    "write_submission",
]
