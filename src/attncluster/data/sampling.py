"""Which ``seg_num`` frames of a video the model sees.

Stratified sampling, as in the reference reader (``generate_random_idx``): the video's ``n`` frames are cut into
``seg_num`` equal strata and one frame is taken from each, at a uniformly random position in training and at the
stratum's centre otherwise. The reference jitters in every mode; we keep evaluation deterministic.
"""

from __future__ import annotations

import numpy as np


def sample_indices(num_frames: int, seg_num: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Frame indices ``index_i = min(n - 1, floor((i + u_i) * n / seg_num))`` for ``i = 0 .. seg_num - 1``.

    Args:
        num_frames: n, the frames stored (at least 1).
        seg_num: how many indices to return. When ``n < seg_num`` frames repeat (no padding, no mask).
        rng: draws ``u_i ~ U[0, 1)`` (training). ``None`` means ``u_i = 0.5``: the centre of each stratum, so
            evaluation and prediction are deterministic.

    Returns:
        (seg_num,) int64, non-decreasing, each in ``[0, n)``.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if seg_num < 1:
        raise ValueError(f"seg_num must be >= 1, got {seg_num}")
    u = np.full(seg_num, 0.5) if rng is None else rng.random(seg_num)
    # Multiply before dividing: with u = 0.5 the product (i + 0.5) * n is exact in float64, so the floor is exact
    # even when the quotient is an integer (no 2.9999999 -> 2 surprises).
    idx = np.floor((np.arange(seg_num) + u) * num_frames / seg_num).astype(np.int64)
    return np.minimum(idx, num_frames - 1)


__all__ = ["sample_indices"]
