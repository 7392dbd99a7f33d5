"""YouTube-8M evaluation metrics: Hit@1, PERR, GAP, mAP, top-k accuracy, and a mergeable accumulator.

The definitions follow Google's youtube-8m starter code (``eval_util.py``, ``average_precision_calculator.py``,
``mean_average_precision_calculator.py``), which the PaddlePaddle reference ports; see
``docs/youtube8m.md`` and section 5 of ``docs/reference-spec.md``.

Inputs are ``predictions`` of shape (N, C) (probabilities or any real scores; numpy arrays or torch tensors on any
device) and ``labels`` either multi-hot of shape (N, C) (bool, or numbers that are all 0 or 1) or integer class ids
of shape (N,) (one label per video). Everything is vectorised and works on row chunks, so N = 10^6 videos by
C = 3862 classes is fine; :class:`MetricAccumulator` keeps O(N * top_k) memory, not the prediction matrix.

Ranking and ties
----------------
*Inside a video* classes are ranked by descending score, ties by ascending class index (what ``numpy.argmax``
does, and what a stable sort of the negated scores does). This order is used for Hit@1 (the first-ranked class),
PERR (the first k), the top_k pairs that GAP and mAP keep, and top-k accuracy. The starter code takes
``numpy.argmax`` for Hit@1 (the same rule) but ``numpy.argpartition`` for PERR and the top_k pairs, which picks an
unspecified member of a group of equal scores straddling the cut; results can then differ, only when the k-th and
(k+1)-th highest scores of a video are exactly equal. (``torch.topk`` finds the candidates because it is several
times faster than ``numpy.partition``; rows whose cut falls inside a tie are redone in numpy, so the choice never
depends on torch's unspecified order among equal values.)

*In a pooled ranked list* (GAP, and each class's list for mAP) the starter shuffles the pairs with
``random.seed(0)`` and then sorts them stably by score, so the relative order of equal scores is an arbitrary
(seeded) permutation. Here a block of equal scores instead contributes the exact *expected* value of its
average-precision terms over all orderings of the block, i.e. the mean of the starter's result over every
possible shuffle. For a block that starts after ``s`` pairs, of which ``c`` are positives, with ``m`` pairs of
which ``p`` are positives, the pair at position i = 1..m of the block contributes on average
``(p/m) * (c + 1 + (i-1)(p-1)/(m-1)) / (s + i)`` (hypergeometric: given a positive at position i, the other
i-1 positions hold (i-1)(p-1)/(m-1) positives on average). So the result does not depend on the order of
the input, never touches Python's global RNG, lies between the pessimistic value (negatives first) and the
optimistic one (positives first), and equals the starter's value whenever no two pooled scores are exactly equal.

Mean average precision (what the starter's ``MeanAveragePrecisionCalculator`` does)
------------------------------------------------------------------------------------
``EvaluationMetrics`` gives calculator ``i`` the (score, is-label) pairs of class i from every video whose top_k
contains class i, together with ``num_positives[i]`` = the number of videos labelled i (retrieved or not). Its
``AveragePrecisionCalculator`` has no cut-off (``top_n=None``), so a class's AP is the sum of precision-at-hit
over its sorted pairs divided by all its positives; a class with positives that never made any video's top_k has
AP 0 (empty heap). ``peek_map_at_n`` in the current starter code (and the TF Model Garden port) is built with
``filter_empty_classes=True``: classes with no positive label at all are left out of the returned list, and
``eval.py`` reports ``numpy.mean`` of that list (``nan`` if it is empty). :func:`mean_ap` matches this. The 2017
calculator, which the PaddlePaddle port copies (and never logs), had no filter and returned AP 0 for each class
without positives, i.e. its mean is ours times (classes with positives) / C.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

# Rows per chunk are chosen so that a chunk holds about this many scores (64 MiB of float32).
_CHUNK_ELEMENTS = 1 << 24

__all__ = ["MetricAccumulator", "gap", "hit_at_one", "mean_ap", "perr", "top_k_accuracy"]


# --------------------------------------------------------------------------------------------------- conversions
def _to_numpy(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach()
        if a.dtype in (torch.float16, torch.bfloat16):
            a = a.float()  # exact; numpy has no bfloat16
        return a.cpu().numpy()
    return np.asarray(a)


def _as_scores(predictions: Any, num_classes: int | None = None) -> np.ndarray:
    """Predictions as a 2-D float32/float64 array (float16 and integers are widened exactly)."""
    x = _to_numpy(predictions)
    if x.ndim != 2:
        raise ValueError(f"predictions must have shape (videos, classes), got shape {x.shape}")
    if num_classes is not None and x.shape[1] != num_classes:
        raise ValueError(f"predictions have {x.shape[1]} classes, expected {num_classes}")
    if x.shape[1] == 0:
        raise ValueError("predictions have 0 classes")
    if not x.dtype.isnative:
        x = x.astype(x.dtype.newbyteorder("="))
    if x.dtype == np.float16:
        x = x.astype(np.float32)
    elif x.dtype not in (np.float32, np.float64):
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_) or np.iscomplexobj(x):
            raise ValueError(f"predictions must be real numbers, got dtype {x.dtype}")
        x = x.astype(np.float64)
    return x


def _as_label_source(labels: Any, num_videos: int, num_classes: int) -> np.ndarray:
    """Labels as given (1-D class ids or 2-D multi-hot), shape-checked; converted chunk by chunk later."""
    y = _to_numpy(labels)
    if y.ndim == 1:
        if y.shape[0] != num_videos:
            raise ValueError(f"labels have {y.shape[0]} videos, predictions {num_videos}")
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"1-D labels must be integer class ids, got dtype {y.dtype}")
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"class ids must lie in [0, {num_classes}), got {y.min()}..{y.max()}")
        return y
    if y.ndim == 2:
        if y.shape != (num_videos, num_classes):
            raise ValueError(f"labels have shape {y.shape}, expected {(num_videos, num_classes)}")
        return y
    raise ValueError(f"labels must be class ids (N,) or multi-hot (N, C), got shape {y.shape}")


def _multi_hot(y: np.ndarray, num_classes: int) -> np.ndarray:
    """A chunk of labels (class ids or 0/1 multi-hot) as a bool (n, C) matrix."""
    if y.ndim == 1:
        out = np.zeros((y.shape[0], num_classes), dtype=bool)
        out[np.arange(y.shape[0]), y] = True
        return out
    if y.dtype == np.bool_:
        return y
    positive = y != 0
    if not np.all(y[positive] == 1):  # NaN counts as nonzero and fails too
        raise ValueError("multi-hot labels must be 0 or 1 (soft or smoothed labels are not ground truth)")
    return positive


def _count_true(y: np.ndarray, axis: int) -> np.ndarray:
    """np.count_nonzero(y, axis) for a bool matrix as int64, two to three times faster."""
    narrow = np.uint16 if y.shape[axis] < 1 << 16 else np.int64  # narrow sums cannot overflow, and are faster
    return np.add.reduce(y.view(np.uint8), axis=axis, dtype=narrow).astype(np.int64)


def _check_top_k(top_k: int, name: str = "top_k") -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k <= 0:
        raise ValueError(f"{name} must be a positive integer, got {top_k!r}")
    return int(top_k)


# --------------------------------------------------------------------------------------------------- ranking
def _top_k_sorted(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k first-ranked classes of each row (score descending, ties by class index ascending).

    Args:
        x: (n, C) scores, C >= k.

    Returns:
        (indices, values), each (n, k), in rank order.
    """
    n, c = x.shape
    if k >= c:
        if np.isnan(x).any():
            raise ValueError("predictions contain NaN")
        idx = np.argsort(-x, axis=1, kind="stable")  # (n, C); stable -> ties keep class order
        return idx, np.take_along_axis(x, idx, axis=1)
    # torch.topk is several times faster than numpy.partition; its values are exact, only the choice among equal
    # scores is unspecified, so ask for one more and redo the rows whose k-th and (k+1)-th scores are equal.
    xc = np.ascontiguousarray(x)
    if not xc.flags.writeable:  # torch.from_numpy warns on read-only memory
        xc = xc.copy()
    v, i = torch.topk(torch.from_numpy(xc), k + 1, dim=1, largest=True, sorted=True)
    v, i = v.numpy(), i.numpy()
    if np.isnan(v[:, 0]).any():  # topk ranks NaN above everything
        raise ValueError("predictions contain NaN")
    vals, idx = v[:, :k], i[:, :k]
    tied = np.flatnonzero(v[:, k - 1] == v[:, k])
    if tied.size:
        sub = x[tied]  # (t, C)
        cut = v[tied, k - 1][:, None]
        above = sub > cut
        at = sub == cut
        room = k - np.count_nonzero(above, axis=1)
        keep = above | (at & (np.cumsum(at, axis=1) <= room[:, None]))  # lowest class ids among the tie
        idx = idx.copy()
        idx[tied] = np.nonzero(keep)[1].reshape(tied.size, k)
        vals = vals.copy()
        vals[tied] = np.take_along_axis(sub, idx[tied], axis=1)
    order = np.lexsort((idx, -vals), axis=1)  # score descending, then class ascending
    return np.take_along_axis(idx, order, axis=1), np.take_along_axis(vals, order, axis=1)


def _perr_hits(x: np.ndarray, y: np.ndarray, vals: np.ndarray, rel: np.ndarray, kv: np.ndarray) -> np.ndarray:
    """Per video, how many of its kv first-ranked classes are labels with score > 0."""
    k = vals.shape[1]
    within = np.arange(k) < kv[:, None]
    hits = np.count_nonzero(rel & (vals > 0) & within, axis=1)
    long = np.flatnonzero(kv > k)  # more labels than ranked classes: rank those rows deeper
    if long.size:
        deep = int(kv[long].max())
        idx, vals = _top_k_sorted(x[long], deep)
        good = np.take_along_axis(y[long], idx, axis=1) & (vals > 0)
        hits[long] = np.count_nonzero(good & (np.arange(deep) < kv[long][:, None]), axis=1)
    return hits


# --------------------------------------------------------------------------------------------------- pooled AP
def _group_score_key(scores: np.ndarray, group: np.ndarray) -> tuple[np.ndarray, Any]:
    """A 1-D key whose ascending order is (group ascending, score descending), and a key -> group function.

    Equal keys mean equal (group, score). Sorting plain keys is several times faster than an argsort.
    """
    with np.errstate(over="ignore"):  # float64 beyond float32's range: not float32, handled below
        s32 = scores.astype(np.float32)
    if np.array_equal(s32, scores):  # float32 scores (the usual case): pack group and score bits in an int64
        bits = s32.view(np.int32).astype(np.int64)
        ordered = np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)  # monotonic in the value; -0.0 and 0.0 -> 0
        key = (group.astype(np.int64) << 33) + (np.int64(1 << 31) - ordered)
        return key, lambda k: k >> 33
    # complex numbers sort by real part, then imaginary part
    return group.astype(np.float64) - 1j * scores, lambda k: k.real.astype(np.int64)


def _ap_sums(scores: np.ndarray, rel: np.ndarray, group: np.ndarray | None, num_groups: int) -> np.ndarray:
    """Per group, the sum of precision-at-hit over the group's list ranked by score, ties averaged exactly.

    Dividing by the group's number of positives gives its average precision. The result depends only on the
    multiset of (group, score, rel) triples, never on their order.

    Args:
        scores: (M,) float64.
        rel: (M,) bool, whether the pair is a positive.
        group: (M,) int group ids in [0, num_groups), or None for a single list.
        num_groups: number of groups.

    Returns:
        (num_groups,) float64.
    """
    out = np.zeros(num_groups)
    if scores.size == 0:
        return out
    if group is None:
        key, key_group = -scores, None
    else:
        key, key_group = _group_score_key(scores, group)
    keys = np.sort(key)
    positive_keys = np.sort(key[rel])
    new_block = np.empty(keys.size, dtype=bool)
    new_block[0] = True
    np.not_equal(keys[1:], keys[:-1], out=new_block[1:])
    first = np.flatnonzero(new_block)  # rank (0-based) of the first pair of each block of equal keys
    del new_block
    block_key = keys[first]
    size = np.diff(np.append(first, keys.size))
    npos = np.searchsorted(positive_keys, block_key, "right") - np.searchsorted(positive_keys, block_key, "left")
    pos_cum = np.cumsum(npos) - npos  # positives in earlier blocks
    if key_group is None:
        block_group = None
        start, pos_before = first, pos_cum
    else:
        block_group = key_group(block_key)
        new_group = np.empty(first.size, dtype=bool)
        new_group[0] = True
        np.not_equal(block_group[1:], block_group[:-1], out=new_group[1:])
        head = np.maximum.accumulate(np.where(new_group, np.arange(first.size), 0))  # first block of the group
        start = first - first[head]  # pairs ranked above the block within its group
        pos_before = pos_cum - pos_cum[head]  # positives ranked above the block within its group

    def add(blocks: np.ndarray, values: np.ndarray) -> None:
        if block_group is None:
            out[0] += values.sum()
        else:
            out[:] += np.bincount(block_group[blocks], weights=values, minlength=num_groups)

    # A positive alone at its score: precision at its rank.
    single = np.flatnonzero((size == 1) & (npos == 1))
    add(single, (pos_before[single] + 1) / (start[single] + 1))
    # A tied block with positives: expected contribution over all orderings of the block (see module docstring).
    tied = np.flatnonzero((size > 1) & (npos > 0))
    if tied.size:
        m = size[tied]
        rep = np.repeat(np.arange(tied.size), m)
        i = np.arange(rep.size) - np.repeat(np.cumsum(m) - m, m) + 1  # 1..m inside each block
        mm = m[rep].astype(np.float64)
        pp = npos[tied][rep].astype(np.float64)
        terms = pp / mm * (pos_before[tied][rep] + 1 + (i - 1) * (pp - 1) / (mm - 1)) / (start[tied][rep] + i)
        add(tied[rep], terms)
    return out


def _gap_value(scores: np.ndarray, rel: np.ndarray, total_positives: int) -> float:
    if total_positives <= 0:
        return 0.0  # the starter's AveragePrecisionCalculator returns 0 without positives
    return float(_ap_sums(scores, rel, None, 1)[0] / total_positives)


def _map_value(scores: np.ndarray, rel: np.ndarray, classes: np.ndarray, positives: np.ndarray) -> float:
    has = positives > 0
    if not has.any():
        return math.nan  # numpy.mean of the starter's empty list
    sums = _ap_sums(scores, rel, classes, positives.size)
    return float(np.mean(sums[has] / positives[has]))


def _perr_value(hits_by_k: np.ndarray, num_videos: int) -> float:
    # sum over videos of hits/k, grouped by k: exact integer sums per k, so the value is the same for any
    # batching, merge order or number of ranks.
    k = np.arange(1, hits_by_k.size)
    return float(np.sum(hits_by_k[1:] / k) / num_videos)


# --------------------------------------------------------------------------------------------------- accumulator
class MetricAccumulator:
    """Accumulates the YouTube-8M metrics over batches, exactly as one call on all videos would compute them.

    Per video it keeps only its top_k (score, class, is-label) triples (O(N * top_k) memory) plus a few counts,
    so ``result()`` over many batches equals the module functions on the concatenated batches; accumulators
    from several ranks combine with :meth:`merge` (or :meth:`state_dict` / :meth:`from_state_dict` to move them
    as plain numpy arrays). The result does not depend on the order of batches or of merges, except ``loss``,
    a floating-point sum.

    Args:
        num_classes: C.
        top_k: pairs kept per video for GAP and mAP (the starter's ``top_k`` = 20).
        multi_label: False for single-label data (each video exactly one label); ``result()`` then also has
            ``top_1`` and ``top_5``.
    """

    def __init__(self, num_classes: int, top_k: int = 20, multi_label: bool = True):
        self.num_classes = _check_top_k(num_classes, "num_classes")
        self.top_k = _check_top_k(top_k)
        self.multi_label = bool(multi_label)
        # The one-shot functions switch off what they do not need:
        self._keep_pairs = True  # keep the top_k pairs (GAP, mAP)
        self._count_perr = True  # rank each video's k labels (PERR)
        self._batch_gap = True  # update() returns the batch's own GAP
        self.reset()

    @property
    def _kept(self) -> int:
        return min(self.top_k, self.num_classes)

    def reset(self) -> None:
        """Forget everything accumulated."""
        c = self.num_classes
        self.num_videos = 0
        self._hit_at_1 = 0
        self._top_1 = 0
        self._top_5 = 0
        self._perr_hits_by_k = np.zeros(c + 1, dtype=np.int64)
        self._positives = np.zeros(c, dtype=np.int64)
        self._loss_sum = 0.0
        self._loss_videos = 0
        self._scores: list[np.ndarray] = []
        self._is_label: list[np.ndarray] = []
        self._classes: list[np.ndarray] = []

    def update(self, predictions: Any, labels: Any, loss: Any = None) -> dict[str, float]:
        """Add one batch.

        Args:
            predictions: (n, C) scores, numpy or torch.
            labels: (n, C) 0/1 multi-hot or (n,) integer class ids, numpy or torch.
            loss: the batch loss, a scalar or an array (its mean is taken, as the starter does); optional.

        Returns:
            This batch's own ``hit_at_1``, ``perr``, ``gap`` (and ``loss``, ``top_1``, ``top_5`` where they
            apply), for per-batch log lines as the reference prints them.
        """
        x = _as_scores(predictions, self.num_classes)
        n, c = x.shape
        y_all = _as_label_source(labels, n, c)
        kept = self._kept
        search = kept if self.multi_label else max(kept, min(5, c))
        rows = max(1, _CHUNK_ELEMENTS // c)
        hit1 = top1 = top5 = 0
        hits_by_k = np.zeros(c + 1, dtype=np.int64)
        scores, is_label, classes = [], [], []
        positives = np.zeros(c, dtype=np.int64)
        for begin in range(0, n, rows):
            xs = x[begin : begin + rows]
            ys = _multi_hot(y_all[begin : begin + rows], c)
            idx, vals = _top_k_sorted(xs, search)
            rel = np.take_along_axis(ys, idx, axis=1)
            kv = _count_true(ys, axis=1)
            if not self.multi_label:
                if np.any(kv != 1):
                    bad = begin + int(np.flatnonzero(kv != 1)[0])
                    raise ValueError(f"single-label data: video {bad} of the batch has {kv[bad - begin]} labels")
                top1 += int(np.count_nonzero(rel[:, 0]))
                top5 += int(np.count_nonzero(rel[:, :5].any(axis=1)))
            hit1 += int(np.count_nonzero(rel[:, 0]))
            if self._count_perr:
                hits = _perr_hits(xs, ys, vals, rel, kv)
                hits_by_k += np.bincount(kv, weights=hits, minlength=c + 1).astype(np.int64)
            positives += _count_true(ys, axis=0)
            if self._keep_pairs:
                scores.append(vals[:, :kept].astype(np.float64).ravel())
                is_label.append(rel[:, :kept].ravel())
                classes.append(idx[:, :kept].astype(np.int32).ravel())
        batch: dict[str, float] = {}
        if n == 0:
            return batch
        self.num_videos += n
        self._hit_at_1 += hit1
        self._top_1 += top1
        self._top_5 += top5
        self._perr_hits_by_k += hits_by_k
        self._positives += positives
        batch["hit_at_1"] = hit1 / n
        if self._count_perr:
            batch["perr"] = _perr_value(hits_by_k, n)
        if self._keep_pairs:
            self._scores.extend(scores)
            self._is_label.extend(is_label)
            self._classes.extend(classes)
            if self._batch_gap:
                batch["gap"] = _gap_value(np.concatenate(scores), np.concatenate(is_label), int(positives.sum()))
        if loss is not None:
            batch_loss = float(np.mean(_to_numpy(loss)))
            self._loss_sum += batch_loss * n
            self._loss_videos += n
            batch["loss"] = batch_loss
        if not self.multi_label:
            batch["top_1"] = top1 / n
            batch["top_5"] = top5 / n
        return batch

    def _pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if len(self._scores) != 1:  # compact once; later calls reuse the arrays
            self._scores = [np.concatenate(self._scores) if self._scores else np.zeros(0)]
            self._is_label = [np.concatenate(self._is_label) if self._is_label else np.zeros(0, dtype=bool)]
            self._classes = [np.concatenate(self._classes) if self._classes else np.zeros(0, dtype=np.int32)]
        return self._scores[0], self._is_label[0], self._classes[0]

    def _require_videos(self) -> None:
        if self.num_videos <= 0:
            raise ValueError("no videos accumulated")

    def _gap(self) -> float:
        self._require_videos()
        scores, rel, _ = self._pairs()
        return _gap_value(scores, rel, int(self._positives.sum()))

    def _map(self) -> float:
        self._require_videos()
        scores, rel, classes = self._pairs()
        return _map_value(scores, rel, classes, self._positives)

    def _perr(self) -> float:
        self._require_videos()
        return _perr_value(self._perr_hits_by_k, self.num_videos)

    def _hit(self) -> float:
        self._require_videos()
        return self._hit_at_1 / self.num_videos

    def result(self) -> dict[str, float]:
        """The metrics over everything accumulated.

        Returns:
            ``gap``, ``hit_at_1``, ``perr``, ``map``, ``loss`` (video-weighted mean of the batch losses over the
            batches that gave one; ``nan`` if none did), ``num_videos``, ``num_labels`` (ground-truth labels seen; 0
            means unlabelled data, on which the metrics say nothing), and for single-label data ``top_1`` and
            ``top_5``.

        Raises:
            ValueError: nothing was accumulated (as the starter's ``EvaluationMetrics.get``).
        """
        self._require_videos()
        out: dict[str, float] = {
            "gap": self._gap(),
            "hit_at_1": self._hit(),
            "perr": self._perr(),
            "map": self._map(),
            "loss": self._loss_sum / self._loss_videos if self._loss_videos else math.nan,
            "num_videos": self.num_videos,
            "num_labels": int(self._positives.sum()),
        }
        if not self.multi_label:
            out["top_1"] = self._top_1 / self.num_videos
            out["top_5"] = self._top_5 / self.num_videos
        return out

    def _check_compatible(self, num_classes: int, top_k: int, multi_label: bool) -> None:
        if (num_classes, top_k, multi_label) != (self.num_classes, self.top_k, self.multi_label):
            raise ValueError(
                "cannot merge accumulators with different settings: "
                f"(num_classes, top_k, multi_label) = {(num_classes, top_k, multi_label)} "
                f"vs {(self.num_classes, self.top_k, self.multi_label)}"
            )

    def merge(self, other: "MetricAccumulator") -> "MetricAccumulator":
        """Add everything ``other`` accumulated (e.g. another rank's) to this one; returns self."""
        other._check_compatible(self.num_classes, self.top_k, self.multi_label)
        if not (self._keep_pairs and other._keep_pairs and self._count_perr and other._count_perr):
            raise ValueError("cannot merge a partial (one-shot) accumulator")
        self.num_videos += other.num_videos
        self._hit_at_1 += other._hit_at_1
        self._top_1 += other._top_1
        self._top_5 += other._top_5
        self._perr_hits_by_k += other._perr_hits_by_k
        self._positives += other._positives
        self._loss_sum += other._loss_sum
        self._loss_videos += other._loss_videos
        self._scores.extend(other._scores)
        self._is_label.extend(other._is_label)
        self._classes.extend(other._classes)
        return self

    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything accumulated, as plain numpy arrays (0-d for scalars), for gathering across ranks."""
        scores, rel, classes = self._pairs()
        return {
            "num_classes": np.array(self.num_classes, dtype=np.int64),
            "top_k": np.array(self.top_k, dtype=np.int64),
            "multi_label": np.array(self.multi_label),
            "num_videos": np.array(self.num_videos, dtype=np.int64),
            "hit_at_1_count": np.array(self._hit_at_1, dtype=np.int64),
            "top_1_count": np.array(self._top_1, dtype=np.int64),
            "top_5_count": np.array(self._top_5, dtype=np.int64),
            "loss_sum": np.array(self._loss_sum, dtype=np.float64),
            "loss_videos": np.array(self._loss_videos, dtype=np.int64),
            "perr_hits_by_k": self._perr_hits_by_k.copy(),
            "positives_per_class": self._positives.copy(),
            "scores": scores.copy(),
            "is_label": rel.copy(),
            "classes": classes.copy(),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "MetricAccumulator":
        """Rebuild an accumulator from :meth:`state_dict` (numpy arrays or torch tensors)."""
        s = {key: _to_numpy(value) for key, value in state.items()}
        missing = {
            "num_classes", "top_k", "multi_label", "num_videos", "hit_at_1_count", "top_1_count", "top_5_count",
            "loss_sum", "loss_videos", "perr_hits_by_k", "positives_per_class", "scores", "is_label", "classes",
        } - set(s)
        if missing:
            raise ValueError(f"metric state lacks {sorted(missing)}")
        acc = cls(int(s["num_classes"]), int(s["top_k"]), bool(s["multi_label"]))
        c = acc.num_classes
        scores = s["scores"].astype(np.float64).ravel()
        rel = s["is_label"].astype(bool).ravel()
        classes = s["classes"].astype(np.int32).ravel()
        if not (scores.size == rel.size == classes.size) or s["perr_hits_by_k"].shape != (c + 1,) or s[
            "positives_per_class"
        ].shape != (c,):
            raise ValueError("metric state has inconsistent array sizes")
        if classes.size and (classes.min() < 0 or classes.max() >= c):
            raise ValueError("metric state has class ids out of range")
        acc.num_videos = int(s["num_videos"])
        acc._hit_at_1 = int(s["hit_at_1_count"])
        acc._top_1 = int(s["top_1_count"])
        acc._top_5 = int(s["top_5_count"])
        acc._loss_sum = float(s["loss_sum"])
        acc._loss_videos = int(s["loss_videos"])
        acc._perr_hits_by_k = s["perr_hits_by_k"].astype(np.int64)
        acc._positives = s["positives_per_class"].astype(np.int64)
        acc._scores, acc._is_label, acc._classes = [scores], [rel], [classes]
        return acc


# --------------------------------------------------------------------------------------------------- functions
def _one_pass(predictions: Any, labels: Any, top_k: int, pairs: bool, count_perr: bool) -> MetricAccumulator:
    x = _as_scores(predictions)
    acc = MetricAccumulator(x.shape[1], top_k)
    acc._keep_pairs, acc._count_perr, acc._batch_gap = pairs, count_perr, False
    acc.update(x, labels)
    return acc


def hit_at_one(predictions: Any, labels: Any) -> float:
    """Fraction of videos whose first-ranked class (highest score, lowest class id on ties) is a label.

    Args:
        predictions: (N, C) scores.
        labels: (N, C) 0/1 multi-hot or (N,) class ids.
    """
    return _one_pass(predictions, labels, 1, pairs=False, count_perr=False)._hit()


def perr(predictions: Any, labels: Any) -> float:
    """Precision at equal recall rate, averaged over all videos.

    For a video with k labels: the fraction of its k first-ranked classes that are labels *and* have score > 0.
    A video without labels counts as 0 (and still counts in the average), as in the starter code.
    """
    return _one_pass(predictions, labels, 20, pairs=False, count_perr=True)._perr()


def gap(predictions: Any, labels: Any, top_k: int = 20) -> float:
    """Global average precision over each video's top_k predictions.

    Each video's top_k (score, is-label) pairs are pooled and ranked by score; GAP is the sum of precision at
    every positive in that list divided by the total number of labels of all videos (including labels that no
    top_k retrieved). Ties are averaged exactly (module docstring). 0.0 when there are no labels at all.
    """
    return _one_pass(predictions, labels, _check_top_k(top_k), pairs=True, count_perr=False)._gap()


def mean_ap(predictions: Any, labels: Any, top_k: int = 20) -> float:
    """Mean over classes with at least one label of the per-class AP over the top_k-per-video predictions.

    Class i's list is the (score, is-label) pairs of the videos whose top_k contains i; its AP divides by all
    videos labelled i. Classes without any label are left out; ``nan`` if no class has a label. See the module
    docstring for how this matches the starter's ``MeanAveragePrecisionCalculator``.
    """
    return _one_pass(predictions, labels, _check_top_k(top_k), pairs=True, count_perr=False)._map()


def top_k_accuracy(predictions: Any, labels: Any, k: int) -> float:
    """Single-label accuracy: fraction of videos whose label is among its k first-ranked classes.

    Args:
        predictions: (N, C) scores.
        labels: (N,) class ids, or (N, C) one-hot with exactly one positive per row.
        k: positive integer; k >= C gives 1.0.
    """
    k = _check_top_k(k, "k")
    x = _as_scores(predictions)
    n, c = x.shape
    if n == 0:
        raise ValueError("no videos")
    y_all = _as_label_source(labels, n, c)
    rows = max(1, _CHUNK_ELEMENTS // c)
    correct = 0
    for begin in range(0, n, rows):
        ys = _multi_hot(y_all[begin : begin + rows], c)
        kv = np.count_nonzero(ys, axis=1)
        if np.any(kv != 1):
            bad = begin + int(np.flatnonzero(kv != 1)[0])
            raise ValueError(f"top_k_accuracy needs single-label data: video {bad} has {kv[bad - begin]} labels")
        idx, _ = _top_k_sorted(x[begin : begin + rows], min(k, c))
        correct += int(np.count_nonzero(np.take_along_axis(ys, idx, axis=1).any(axis=1)))
    return correct / n
