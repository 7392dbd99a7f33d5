import math

import numpy as np
import pytest

from attncluster.data.sampling import sample_indices


def loop_reference(n, seg_num, u):
    # The reference reader's generate_random_idx, written as a plain loop.
    return [min(n - 1, math.floor((i + u[i]) * n / seg_num)) for i in range(seg_num)]


def test_centre_indices_hand_computed():
    # n=10, seg=4: stride 2.5, centres at 1.25, 3.75, 6.25, 8.75.
    assert sample_indices(10, 4, None).tolist() == [1, 3, 6, 8]
    # n=300, seg=100: centres at 1.5 + 3i -> 1, 4, 7, ...
    assert sample_indices(300, 100, None).tolist() == list(range(1, 300, 3))
    # n=200, seg=100: (i + 0.5) * 2 = 2i + 1 exactly; the floor must not fall to 2i.
    assert sample_indices(200, 100, None).tolist() == list(range(1, 200, 2))
    # Fewer frames than segments: frames repeat. n=3, seg=7: (i + .5) * 3/7 -> .21 .64 1.07 1.5 1.93 2.36 2.79
    assert sample_indices(3, 7, None).tolist() == [0, 0, 1, 1, 1, 2, 2]
    assert sample_indices(1, 5, None).tolist() == [0] * 5


def test_dtype_shape():
    idx = sample_indices(150, 100, np.random.default_rng(0))
    assert idx.dtype == np.int64 and idx.shape == (100,)


@pytest.mark.parametrize("n,seg", [(1, 1), (1, 100), (7, 100), (99, 100), (100, 100), (101, 100), (150, 100),
                                   (300, 100), (300, 7), (13, 13)])
def test_matches_loop_reference(n, seg):
    u = np.random.default_rng(n * 1000 + seg).random(seg)
    got = sample_indices(n, seg, np.random.default_rng(n * 1000 + seg))
    assert got.tolist() == loop_reference(n, seg, u)
    assert sample_indices(n, seg, None).tolist() == loop_reference(n, seg, [0.5] * seg)


def test_jitter_stays_in_its_stratum():
    n, seg = 150, 100
    rng = np.random.default_rng(1)
    draws = np.stack([sample_indices(n, seg, rng) for _ in range(200)])
    lo = np.floor(np.arange(seg) * n / seg)
    hi = np.minimum(n - 1, np.floor((np.arange(seg) + 1) * n / seg))
    assert (draws >= lo).all() and (draws <= hi).all()
    assert (np.diff(draws, axis=1) >= 0).all()
    # Jitter actually varies: each of stride-1.5 strata's two candidate frames shows up.
    assert len(np.unique(draws[:, 0])) == 2


def test_u_upper_bound_clamps_to_last_frame():
    class AlmostOne:  # a generator whose draws sit just below 1
        def random(self, size):
            return np.full(size, np.nextafter(1.0, 0.0))

    # In float64 i + u rounds up to i + 1 for i >= 1, so the last stratum would reach frame n = 10: clamped to 9.
    got = sample_indices(10, 4, AlmostOne()).tolist()
    assert got == loop_reference(10, 4, [np.nextafter(1.0, 0.0)] * 4) == [2, 5, 7, 9]


def test_bad_arguments():
    with pytest.raises(ValueError):
        sample_indices(0, 10, None)
    with pytest.raises(ValueError):
        sample_indices(10, 0, None)
