"""Tests for attncluster.metrics against hand-computed values and plain reference implementations.

The references below are written for clarity, not speed: Python loops, one video or one class at a time, as in
Google's youtube-8m starter code (eval_util.py / average_precision_calculator.py).
"""

from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction
from math import comb

import numpy as np
import pytest
import torch

from attncluster import metrics
from attncluster.metrics import MetricAccumulator, gap, hit_at_one, mean_ap, perr, top_k_accuracy


# ----------------------------------------------------------------------------------------------- references
def ref_rank(row):
    """Classes of one video in rank order: score descending, ties by class index ascending."""
    return sorted(range(len(row)), key=lambda j: (-row[j], j))


def ref_hit_at_one(pred, labels):
    return sum(labels[v][ref_rank(pred[v])[0]] > 0 for v in range(len(pred))) / len(pred)


def ref_perr(pred, labels):
    total = 0.0
    for v in range(len(pred)):
        k = int(sum(labels[v]))
        if k == 0:
            continue  # contributes 0 but still counts in the average
        top = ref_rank(pred[v])[:k]
        total += sum(1 for j in top if labels[v][j] > 0 and pred[v][j] > 0) / k
    return total / len(pred)


def ref_ap_starter(pairs, num_positives):
    """Transcription of AveragePrecisionCalculator.ap_at_n with n=None: shuffle (seed 0), stable sort, sum P@hit."""
    if num_positives == 0 or not pairs:
        return 0.0
    shuffle = random.Random(0).sample(range(len(pairs)), len(pairs))  # own RNG: leaves the global one alone
    pairs = [pairs[i] for i in shuffle]
    ranked = sorted(pairs, key=lambda p: p[0], reverse=True)
    ap, hits = 0.0, 0
    for i, (_, is_label) in enumerate(ranked):
        if is_label:
            hits += 1
            ap += hits / (i + 1) / num_positives
    return ap


def ap_of_order(ranked, num_positives):
    hits, total = 0, 0.0
    for i, (_, is_label) in enumerate(ranked):
        if is_label:
            hits += 1
            total += hits / (i + 1)
    return total / num_positives


def ref_ap_expected(pairs, num_positives):
    """Average AP over every ordering of each block of equal scores (brute force; small inputs only)."""
    if num_positives == 0 or not pairs:
        return 0.0
    blocks = [list(g) for _, g in itertools.groupby(sorted(pairs, key=lambda p: -p[0]), key=lambda p: p[0])]
    values = [
        ap_of_order([p for block in choice for p in block], num_positives)
        for choice in itertools.product(*[list(itertools.permutations(b)) for b in blocks])
    ]
    return sum(values) / len(values)


def ref_ap_expected_large(pairs, num_positives):
    """Expected AP with ties by averaging over orderings, for blocks too big to enumerate: exact per-position
    probabilities computed by direct summation over the block (a different route from the closed form)."""
    if num_positives == 0 or not pairs:
        return 0.0
    total = Fraction(0)
    rank = 0
    positives_before = 0
    for _, group in itertools.groupby(sorted(pairs, key=lambda p: -p[0]), key=lambda p: p[0]):
        block = list(group)
        m, p = len(block), sum(1 for _, y in block if y)
        for i in range(1, m + 1 if p else 1):
            # P(position i positive and j positives among the i-1 before it) summed with weight (c + j + 1)/(s + i)
            for j in range(0, min(i - 1, p - 1) + 1):
                ways = comb(i - 1, j) * comb(m - i, p - 1 - j)
                prob = Fraction(ways, comb(m, p))
                total += prob * Fraction(positives_before + j + 1, rank + i)
        rank += m
        positives_before += p
    return float(total / num_positives)


def ref_top_k_pairs(pred, labels, top_k):
    """(class, score, is_label) triples of each video's top_k, by the documented rank rule."""
    triples = []
    for v in range(len(pred)):
        for j in ref_rank(pred[v])[:top_k]:
            triples.append((j, float(pred[v][j]), bool(labels[v][j])))
    return triples


def ref_gap(pred, labels, top_k, ap=ref_ap_starter):
    triples = ref_top_k_pairs(pred, labels, top_k)
    return ap([(s, y) for _, s, y in triples], int(np.sum(labels)))


def ref_map(pred, labels, top_k, ap=ref_ap_starter):
    triples = ref_top_k_pairs(pred, labels, top_k)
    aps = []
    for c in range(len(pred[0])):
        positives = int(np.sum(labels[:, c]))
        if positives == 0:
            continue  # filter_empty_classes=True
        aps.append(ap([(s, y) for j, s, y in triples if j == c], positives))
    return float(np.mean(aps)) if aps else math.nan


def ref_gap_starter_argpartition(pred, labels, top_k):
    """The starter's calculate_gap as written: argpartition top-k, pooled, shuffled, sorted."""
    pairs = []
    k = min(top_k, pred.shape[1])
    for v in range(pred.shape[0]):
        for j in np.argpartition(pred[v], -k)[-k:]:
            pairs.append((pred[v][j], labels[v][j]))
    return ref_ap_starter(pairs, int(np.sum(labels)))


def random_data(rng, n, c, density=0.08, levels=None):
    pred = rng.random((n, c))
    if levels is not None:  # coarse scores: many exact ties
        pred = np.round(pred * (levels - 1)) / (levels - 1)
    labels = rng.random((n, c)) < density
    return pred, labels


# ----------------------------------------------------------------------------------------------- hand cases
# Case A, top_k = 2, no ties.
#   video 0: scores [0.9, 0.2, 0.5], labels {0, 1};  video 1: scores [0.1, 0.8, 0.3], labels {2}.
#   kept pairs: v0 (0.9, T) (0.5, F); v1 (0.8, F) (0.3, T).  Pooled: 0.9T 0.8F 0.5F 0.3T; 3 labels in all
#   (v0's class 1 is never retrieved).  GAP = (1/1 + 2/4) / 3 = 0.5.
#   Hit@1: v0 top = 0 (label), v1 top = 1 (not) -> 0.5.
#   PERR: v0 k=2, top-2 = {0, 2} -> 1/2; v1 k=1, top-1 = {1} -> 0; mean 0.25.
#   mAP: class 0: [0.9T], 1 positive -> 1;  class 1: [0.8F], 1 positive (v0) -> 0;
#        class 2: [0.5F, 0.3T], 1 positive -> 1/2;  mean (1 + 0 + 0.5) / 3 = 0.5.
CASE_A_PRED = np.array([[0.9, 0.2, 0.5], [0.1, 0.8, 0.3]])
CASE_A_LABELS = np.array([[1, 1, 0], [0, 0, 1]])


def test_hand_case_a():
    assert gap(CASE_A_PRED, CASE_A_LABELS, top_k=2) == pytest.approx(0.5, abs=1e-15)
    assert hit_at_one(CASE_A_PRED, CASE_A_LABELS) == 0.5
    assert perr(CASE_A_PRED, CASE_A_LABELS) == pytest.approx(0.25, abs=1e-15)
    assert mean_ap(CASE_A_PRED, CASE_A_LABELS, top_k=2) == pytest.approx(0.5, abs=1e-15)
    # top_k = 3 keeps everything: pooled 0.9T 0.8F 0.5F 0.3T 0.2T 0.1F -> (1 + 2/4 + 3/5) / 3 = 0.7
    assert gap(CASE_A_PRED, CASE_A_LABELS, top_k=3) == pytest.approx(2.1 / 3, abs=1e-15)
    assert gap(CASE_A_PRED, CASE_A_LABELS, top_k=50) == gap(CASE_A_PRED, CASE_A_LABELS, top_k=3)


# Case B, top_k = 1: a class without positives, a class whose positives are never retrieved.
#   v0 [0.9, 0.1, 0.0] labels {0};  v1 [0.2, 0.1, 0.8] labels {1};  v2 [0.7, 0.3, 0.1] labels {0, 1}.
#   kept: v0 class 0 (0.9, T); v1 class 2 (0.8, F); v2 class 0 (0.7, T).  Positives: class 0: 2, 1: 2, 2: 0.
#   mAP: class 0 [0.9T, 0.7T] -> (1 + 1) / 2 = 1;  class 1 no pairs, 2 positives -> 0;
#        class 2 has pairs but no positives -> left out.   mAP = (1 + 0) / 2 = 0.5
#        (the unfiltered 2017 calculator would give (1 + 0 + 0) / 3).
#   GAP: pooled 0.9T 0.8F 0.7T, 4 labels -> (1/1 + 2/3) / 4 = 5/12.
#   Hit@1: 2/3.  PERR: v0 1, v1 0, v2 top-2 = {0, 1} -> 1; mean 2/3.
CASE_B_PRED = np.array([[0.9, 0.1, 0.0], [0.2, 0.1, 0.8], [0.7, 0.3, 0.1]])
CASE_B_LABELS = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]])


def test_hand_case_b_classes_without_positives():
    assert mean_ap(CASE_B_PRED, CASE_B_LABELS, top_k=1) == pytest.approx(0.5, abs=1e-15)
    assert gap(CASE_B_PRED, CASE_B_LABELS, top_k=1) == pytest.approx(5 / 12, abs=1e-15)
    assert hit_at_one(CASE_B_PRED, CASE_B_LABELS) == pytest.approx(2 / 3, abs=1e-15)
    assert perr(CASE_B_PRED, CASE_B_LABELS) == pytest.approx(2 / 3, abs=1e-15)


def test_videos_without_labels():
    # v0 [0.2, 0.9] labels {1}; v1 [0.95, 0.1] no labels.  top_k = 1: pooled 0.95F 0.9T, 1 label.
    # GAP = (1/2) / 1 = 0.5.  PERR: v0 1, v1 0 (k = 0) -> 0.5.  Hit@1: 0.5.  mAP: class 1 [0.9T] -> 1;
    # class 0 has a pair (0.95F) but no positives -> left out -> mAP 1.
    pred = np.array([[0.2, 0.9], [0.95, 0.1]])
    labels = np.array([[0, 1], [0, 0]])
    assert gap(pred, labels, top_k=1) == 0.5
    assert perr(pred, labels) == 0.5
    assert hit_at_one(pred, labels) == 0.5
    assert mean_ap(pred, labels, top_k=1) == 1.0


def test_no_labels_at_all():
    pred = np.array([[0.2, 0.9], [0.95, 0.1]])
    labels = np.zeros((2, 2))
    assert gap(pred, labels) == 0.0  # the starter returns 0 without positives
    assert perr(pred, labels) == 0.0
    assert hit_at_one(pred, labels) == 0.0
    assert math.isnan(mean_ap(pred, labels))  # numpy.mean of an empty list


def test_perr_needs_positive_scores():
    # v0 [0.0, -1.0] labels {0}: the top-1 class is a label but its score is not > 0 -> PERR 0; Hit@1 still 1.
    # v1 [0.3, 0.0, ...]: labels {0, 1}: top-2 = {0 (0.3), 1 (0.0)} -> only class 0 counts -> 1/2.
    pred = np.array([[0.0, -1.0, -2.0], [0.3, 0.0, -0.5]])
    labels = np.array([[1, 0, 0], [1, 1, 0]])
    assert perr(pred, labels) == pytest.approx((0 + 0.5) / 2, abs=1e-15)
    assert hit_at_one(pred, labels) == 1.0


# ----------------------------------------------------------------------------------------------- ties
def test_pooled_tie_one_positive_one_negative():
    # top_k = 1: v0 [0.5, 0.1] labels {0} keeps (0.5, T); v1 [0.5, 0.2] no labels keeps (0.5, F);
    # v2 [0.1, 0.9] labels {1} keeps (0.9, T).  Pooled: 0.9T, then the tie {0.5T, 0.5F}; 2 labels.
    #   order T,F: (1/1 + 2/2) / 2 = 1;  order F,T: (1/1 + 2/3) / 2 = 5/6;  mean 11/12.
    # (pessimistic negatives-first would give 5/6, optimistic 1; the starter's shuffle picks one of the two)
    pred = np.array([[0.5, 0.1], [0.5, 0.2], [0.1, 0.9]])
    labels = np.array([[1, 0], [0, 0], [0, 1]])
    assert gap(pred, labels, top_k=1) == pytest.approx(11 / 12, abs=1e-15)
    # Without v2: the tie alone, 1 label: (1 + 1/2) / 2 = 0.75.
    assert gap(pred[:2], labels[:2], top_k=1) == pytest.approx(0.75, abs=1e-15)
    # Per class: class 0 holds the same tie [0.5T, 0.5F] with 1 positive -> 0.75; class 1 [0.9T] -> 1.
    assert mean_ap(pred, labels, top_k=1) == pytest.approx((0.75 + 1) / 2, abs=1e-15)


def test_pooled_tie_block_two_of_three_positive():
    # Three videos, one class kept each (top_k = 1), all scored 0.5; two are labelled. Distinct orders:
    #   T T F: (1 + 1) / 2 = 1;   T F T: (1 + 2/3) / 2 = 5/6;   F T T: (1/2 + 2/3) / 2 = 7/12.
    # Each order is equally likely -> (12 + 10 + 7) / 36 = 29/36.
    pred = np.array([[0.5, 0.0], [0.5, 0.0], [0.5, 0.0]])
    labels = np.array([[1, 0], [1, 0], [0, 0]])
    assert gap(pred, labels, top_k=1) == pytest.approx(29 / 36, abs=1e-15)
    assert mean_ap(pred, labels, top_k=1) == pytest.approx(29 / 36, abs=1e-15)


def test_tie_at_top_k_cut_keeps_lowest_class_ids():
    # All three scores equal: rank order is class 0, 1, 2.
    pred = np.array([[0.5, 0.5, 0.5]])
    last = np.array([[0, 0, 1]])
    first = np.array([[1, 0, 0]])
    assert hit_at_one(pred, last) == 0.0 and hit_at_one(pred, first) == 1.0
    assert perr(pred, last) == 0.0 and perr(pred, first) == 1.0
    assert gap(pred, last, top_k=1) == 0.0  # kept pair is class 0 (0.5, F)
    assert gap(pred, last, top_k=2) == 0.0  # classes 0 and 1
    assert gap(pred, first, top_k=1) == 1.0
    # top_k = 3 keeps all three: tie block of 3 with 1 positive -> (1 + 1/2 + 1/3) / 3 = 11/18.
    assert gap(pred, last, top_k=3) == pytest.approx(11 / 18, abs=1e-15)
    # Partial tie across the cut: scores [0.9, 0.4, 0.4, 0.4], top_k = 2 keeps classes 0 and 1.
    pred = np.array([[0.9, 0.4, 0.4, 0.4]])
    assert gap(pred, np.array([[0, 1, 0, 0]]), top_k=2) == 0.5  # 0.9F, 0.4T -> (1/2) / 1
    assert gap(pred, np.array([[0, 0, 1, 0]]), top_k=2) == 0.0  # class 2 not kept


def test_ties_match_brute_force_expectation_on_random_coarse_data():
    rng = np.random.default_rng(7)
    for trial in range(12):
        # at most 4 * 2 = 8 pooled pairs: at most 8! orderings to enumerate
        pred, labels = random_data(rng, 4, 4, density=0.3, levels=4)
        top_k = 1 + trial % 2
        assert gap(pred, labels, top_k) == pytest.approx(ref_gap(pred, labels, top_k, ref_ap_expected), abs=1e-12)
        expected_map = ref_map(pred, labels, top_k, ref_ap_expected)
        if math.isnan(expected_map):
            assert math.isnan(mean_ap(pred, labels, top_k))
        else:
            assert mean_ap(pred, labels, top_k) == pytest.approx(expected_map, abs=1e-12)
        assert hit_at_one(pred, labels) == pytest.approx(ref_hit_at_one(pred, labels), abs=1e-15)
        assert perr(pred, labels) == pytest.approx(ref_perr(pred, labels), abs=1e-12)


def test_negative_scores_and_signed_zero_hand_case():
    # Class 0 is every video's top-1 (class 1 scores -3); top_k = 1.  Class 0 scores and labels:
    #   -1.5 T, -0.5 F, -0.0 T, 0.0 F, 0.25 F   (2 positives; -0.0 and 0.0 are equal scores)
    # Ranked: 0.25F | tie {-0.0T, 0.0F} | -0.5F | -1.5T
    #   tie (s=1, c=0, m=2, p=1): orders T,F -> 1/2, F,T -> 1/3: mean 5/12.   -1.5T at rank 5, 2nd hit: 2/5.
    # AP = (5/12 + 2/5) / 2 = 49/120 = GAP (only class 0 pairs) = mAP (class 1 has no positives).
    scores = np.array([-1.5, -0.5, -0.0, 0.0, 0.25], dtype=np.float32)
    pred = np.stack([scores, np.full(5, -3.0, dtype=np.float32)], axis=1)
    labels = np.array([[1, 0], [0, 0], [1, 0], [0, 0], [0, 0]])
    for p in (pred, pred.astype(np.float64) * (1 + 1e-12)):  # float32 values, and values float32 cannot hold
        assert gap(p, labels, top_k=1) == pytest.approx(49 / 120, abs=1e-15)
        assert mean_ap(p, labels, top_k=1) == pytest.approx(49 / 120, abs=1e-15)


def test_float32_scores_negative_values_and_signed_zero():
    # float32 scores take a packed-integer sort key, other float64 scores a complex one; both must rank alike,
    # with -0.0 == 0.0 tied and negative scores below them.
    rng = np.random.default_rng(12)
    values = np.array([-1.5, -0.5, -0.0, 0.0, 0.25, 0.75], dtype=np.float32)
    pred32 = rng.choice(values, size=(8, 5))
    labels = rng.random((8, 5)) < 0.4
    for top_k in (1, 2, 4):
        exact_gap = ref_gap(pred32, labels, top_k, ref_ap_expected_large)
        exact_map = ref_map(pred32, labels, top_k, ref_ap_expected_large)
        assert gap(pred32, labels, top_k) == pytest.approx(exact_gap, abs=1e-12)
        assert mean_ap(pred32, labels, top_k) == pytest.approx(exact_map, abs=1e-12)
        stretched = pred32.astype(np.float64) * (1 + 1e-12)  # same order and ties, not float32 values
        assert mean_ap(stretched, labels, top_k) == mean_ap(pred32, labels, top_k)
        assert gap(stretched, labels, top_k) == gap(pred32, labels, top_k)
    assert perr(pred32, labels) == pytest.approx(ref_perr(pred32, labels), abs=1e-12)
    assert hit_at_one(pred32, labels) == pytest.approx(ref_hit_at_one(pred32, labels), abs=1e-15)


def test_gap_does_not_touch_global_rng():
    random.seed(123)
    state = random.getstate()
    gap(*random_data(np.random.default_rng(0), 20, 6, levels=3))
    assert random.getstate() == state


def test_result_does_not_depend_on_video_order():
    rng = np.random.default_rng(3)
    pred, labels = random_data(rng, 300, 12, levels=5)
    perm = rng.permutation(300)
    assert gap(pred, labels, 4) == gap(pred[perm], labels[perm], 4)
    assert mean_ap(pred, labels, 4) == mean_ap(pred[perm], labels[perm], 4)
    assert perr(pred, labels) == perr(pred[perm], labels[perm])


# ----------------------------------------------------------------------------------------------- references
@pytest.mark.parametrize("top_k", [1, 5, 20, 40])
def test_gap_and_map_equal_starter_transcription_without_ties(top_k):
    rng = np.random.default_rng(top_k)
    pred, labels = random_data(rng, 200, 30, density=0.1)
    assert gap(pred, labels, top_k) == pytest.approx(ref_gap_starter_argpartition(pred, labels, top_k), rel=1e-12)
    assert gap(pred, labels, top_k) == pytest.approx(ref_gap(pred, labels, top_k), rel=1e-12)
    assert mean_ap(pred, labels, top_k) == pytest.approx(ref_map(pred, labels, top_k), rel=1e-12)


def test_hit_and_perr_equal_reference_on_random_data():
    rng = np.random.default_rng(11)
    pred, labels = random_data(rng, 400, 25, density=0.12)
    labels[:5] = False  # a few videos without labels
    labels[5, :] = True  # one video with more labels than 20 kept pairs (PERR ranks it fully)
    assert hit_at_one(pred, labels) == pytest.approx(ref_hit_at_one(pred, labels), abs=1e-15)
    assert perr(pred, labels) == pytest.approx(ref_perr(pred, labels), abs=1e-12)


def test_perfect_predictions_give_one():
    rng = np.random.default_rng(5)
    labels = rng.random((500, 40)) < 0.07
    labels[np.arange(500), rng.integers(0, 40, 500)] = True  # every video has a label
    pred = np.where(labels, 0.6 + 0.4 * rng.random(labels.shape), 0.4 * rng.random(labels.shape))
    assert gap(pred, labels) == 1.0
    assert mean_ap(pred, labels) == 1.0
    assert hit_at_one(pred, labels) == 1.0
    assert perr(pred, labels) == 1.0


# ----------------------------------------------------------------------------------------------- top-k accuracy
def test_top_k_accuracy_hand_case():
    # row 0 [0.1, 0.7, 0.2] label 2: ranks 1, 2, 0 -> label 2nd.
    # row 1 [0.3, 0.3, 0.3] label 1: ties by class id -> ranks 0, 1, 2 -> label 2nd.
    # row 2 [0.9, 0.05, 0.05] label 0: label 1st.
    # top-1 = 1/3, top-2 = 3/3.
    pred = np.array([[0.1, 0.7, 0.2], [0.3, 0.3, 0.3], [0.9, 0.05, 0.05]])
    ids = np.array([2, 1, 0])
    one_hot = np.eye(3, dtype=np.int64)[ids]
    assert top_k_accuracy(pred, ids, 1) == pytest.approx(1 / 3, abs=1e-15)
    assert top_k_accuracy(pred, ids, 2) == 1.0
    assert top_k_accuracy(pred, ids, 10) == 1.0
    assert top_k_accuracy(pred, one_hot, 1) == top_k_accuracy(pred, ids, 1)
    assert top_k_accuracy(torch.tensor(pred), torch.tensor(ids), 1) == top_k_accuracy(pred, ids, 1)
    with pytest.raises(ValueError):
        top_k_accuracy(pred, np.array([[1, 1, 0], [0, 1, 0], [1, 0, 0]]), 1)  # two labels in row 0
    with pytest.raises(ValueError):
        top_k_accuracy(pred, ids, 0)


# ----------------------------------------------------------------------------------------------- accumulator
def split_points(rng, n, pieces):
    return np.sort(rng.choice(np.arange(1, n), pieces - 1, replace=False))


def accumulate(pred, labels, bounds, **kwargs):
    acc = MetricAccumulator(pred.shape[1], **kwargs)
    for p, y in zip(np.split(pred, bounds), np.split(labels, bounds)):
        acc.update(p, y)
    return acc


@pytest.mark.parametrize("levels", [None, 6])
def test_accumulator_over_batches_equals_one_shot(levels):
    rng = np.random.default_rng(21)
    pred, labels = random_data(rng, 700, 20, density=0.1, levels=levels)
    labels[3] = False
    labels[4] = True  # 20 labels > top_k: PERR falls back to a full ranking for this row
    bounds = split_points(rng, 700, 9)
    result = accumulate(pred, labels, bounds, top_k=5).result()
    assert result["num_videos"] == 700
    assert result["gap"] == gap(pred, labels, top_k=5)
    assert result["map"] == mean_ap(pred, labels, top_k=5)
    assert result["hit_at_1"] == hit_at_one(pred, labels)
    assert result["perr"] == perr(pred, labels)
    assert math.isnan(result["loss"])
    assert "top_1" not in result
    # and the values themselves are right (ties: the exact-rational reference is too slow for blocks this big;
    # test_chunked_processing_with_boundary_ties covers it on smaller data)
    if levels is None:
        assert result["gap"] == pytest.approx(ref_gap(pred, labels, 5), rel=1e-12)
        assert result["map"] == pytest.approx(ref_map(pred, labels, 5), rel=1e-12)
    assert result["perr"] == pytest.approx(ref_perr(pred, labels), abs=1e-12)


def without_loss(result):
    assert math.isnan(result.pop("loss"))  # no loss was given
    return result


def test_accumulator_merge_and_state_dict_equal_single_accumulator():
    rng = np.random.default_rng(8)
    pred, labels = random_data(rng, 600, 15, density=0.15, levels=8)
    whole = accumulate(pred, labels, [100, 250, 400])
    first = accumulate(pred[:333], labels[:333], [50])
    second = accumulate(pred[333:], labels[333:], [100, 101])
    expected = without_loss(whole.result())
    assert without_loss(MetricAccumulator.from_state_dict(first.state_dict()).merge(second).result()) == expected
    # merge order and a round trip through plain arrays (as after a gather across ranks) change nothing
    restored = [MetricAccumulator.from_state_dict(a.state_dict()) for a in (second, first)]
    assert without_loss(restored[0].merge(restored[1]).result()) == expected
    as_tensors = {k: torch.from_numpy(np.asarray(v)) for k, v in first.state_dict().items()}
    assert without_loss(MetricAccumulator.from_state_dict(as_tensors).merge(second).result()) == expected
    # a rank that saw no videos adds nothing
    empty = MetricAccumulator.from_state_dict(MetricAccumulator(15).state_dict())
    assert without_loss(empty.merge(whole).merge(MetricAccumulator(15)).result()) == expected
    assert all(isinstance(v, np.ndarray) for v in whole.state_dict().values())


def test_accumulator_state_is_top_k_pairs_only():
    rng = np.random.default_rng(1)
    pred, labels = random_data(rng, 50, 100)
    state = accumulate(pred, labels, [20], top_k=7).state_dict()
    assert state["scores"].shape == state["is_label"].shape == state["classes"].shape == (50 * 7,)


def test_merge_rejects_different_settings():
    with pytest.raises(ValueError):
        MetricAccumulator(10, top_k=20).merge(MetricAccumulator(10, top_k=5))
    with pytest.raises(ValueError):
        MetricAccumulator(10).merge(MetricAccumulator(11))


def test_accumulator_loss_is_video_weighted():
    # batches of 2 and 3 videos with losses 1.0 and mean(2, 2, 2, 2) = 2.0 -> (2*1 + 3*2) / 5 = 1.6
    rng = np.random.default_rng(2)
    pred, labels = random_data(rng, 5, 4, density=0.5)
    acc = MetricAccumulator(4)
    batch = acc.update(pred[:2], labels[:2], loss=torch.tensor(1.0, requires_grad=True))
    assert batch["loss"] == 1.0
    acc.update(pred[2:], labels[2:], loss=np.full(4, 2.0))
    assert acc.result()["loss"] == pytest.approx(1.6, abs=1e-15)


def test_update_returns_batch_metrics():
    acc = MetricAccumulator(3, top_k=2)
    batch = acc.update(CASE_A_PRED, CASE_A_LABELS)
    assert batch["gap"] == pytest.approx(0.5, abs=1e-15)
    assert batch["hit_at_1"] == 0.5 and batch["perr"] == pytest.approx(0.25, abs=1e-15)


def test_single_label_accumulator():
    rng = np.random.default_rng(4)
    pred = np.round(rng.random((300, 12)) * 5) / 5  # ties
    ids = rng.integers(0, 12, 300)
    acc = MetricAccumulator(12, top_k=3, multi_label=False)
    for p, y in zip(np.split(pred, [77, 200]), np.split(ids, [77, 200])):
        acc.update(torch.from_numpy(p).float(), torch.from_numpy(y))
    result = acc.result()
    pred32 = pred.astype(np.float32)
    assert result["top_1"] == top_k_accuracy(pred32, ids, 1) == result["hit_at_1"]
    assert result["top_5"] == top_k_accuracy(pred32, ids, 5)  # 5 > top_k: ranked deeper than the kept pairs
    one_hot = np.eye(12, dtype=bool)[ids]
    assert result["gap"] == gap(pred32, one_hot, top_k=3)
    # independent check of top-5 with the plain rank rule
    assert result["top_5"] == pytest.approx(np.mean([ids[v] in ref_rank(pred32[v])[:5] for v in range(300)]))
    with pytest.raises(ValueError):
        MetricAccumulator(12, multi_label=False).update(pred[:2], one_hot[:2] | np.eye(12, dtype=bool)[[0, 1]])


def test_accumulator_empty_raises():
    with pytest.raises(ValueError):
        MetricAccumulator(5).result()


def test_chunked_processing_with_boundary_ties(monkeypatch):
    # Chunks of a few rows, and many rows whose top_k cut falls inside a block of equal scores.
    rng = np.random.default_rng(9)
    pred, labels = random_data(rng, 120, 10, density=0.2, levels=3)
    expected = (gap(pred, labels, 3), mean_ap(pred, labels, 3), perr(pred, labels), hit_at_one(pred, labels))
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 25)
    assert (gap(pred, labels, 3), mean_ap(pred, labels, 3), perr(pred, labels), hit_at_one(pred, labels)) == expected
    assert expected[0] == pytest.approx(ref_gap(pred, labels, 3, ref_ap_expected_large), abs=1e-12)
    assert expected[1] == pytest.approx(ref_map(pred, labels, 3, ref_ap_expected_large), abs=1e-12)
    assert expected[2] == pytest.approx(ref_perr(pred, labels), abs=1e-12)
    assert expected[3] == pytest.approx(ref_hit_at_one(pred, labels), abs=1e-15)


def test_input_types_agree():
    rng = np.random.default_rng(6)
    pred, labels = random_data(rng, 64, 9, levels=10)
    pred32 = pred.astype(np.float32)
    expected = gap(pred32, labels, 4)
    assert gap(torch.from_numpy(pred32), torch.from_numpy(labels), 4) == expected
    assert gap(pred32, labels.astype(np.float32), 4) == expected
    assert gap(pred32.astype(np.float16), labels, 4) == gap(pred32.astype(np.float16).astype(np.float32), labels, 4)
    readonly = pred32.copy()
    readonly.setflags(write=False)
    assert gap(readonly, labels, 4) == expected


def test_bad_inputs_raise():
    pred = np.array([[0.1, 0.2], [0.3, 0.4]])
    labels = np.array([[1, 0], [0, 1]])
    with pytest.raises(ValueError, match="NaN"):
        gap(np.array([[0.1, np.nan], [0.3, 0.4]]), labels)
    with pytest.raises(ValueError, match="NaN"):
        gap(np.array([[0.1, np.nan], [0.3, 0.4]]), labels, top_k=1)
    with pytest.raises(ValueError, match="0 or 1"):
        gap(pred, np.array([[0.9, 0.1], [0.0, 1.0]]))
    with pytest.raises(ValueError):
        gap(pred, labels[:1])
    with pytest.raises(ValueError):
        gap(pred, labels, top_k=0)
    with pytest.raises(ValueError):
        hit_at_one(pred, np.array([0, 2]))  # class id out of range
    with pytest.raises(ValueError):
        MetricAccumulator(3).update(pred, labels)  # 2 classes, accumulator expects 3
