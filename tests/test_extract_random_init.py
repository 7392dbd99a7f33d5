"""extract/random_init.py: random backbone weights that depend on the seed alone, not on the thread count."""

import torch

from attncluster.extract.random_init import BLOCK, random_fill


def _draw(seed: int) -> list[torch.Tensor]:
    tensors = [torch.empty(3, 5), torch.empty(BLOCK + 7), torch.empty(64, 3, 3, 3)]
    random_fill([(tensors[0], 1.0), (tensors[1], 0.5), (tensors[2], 2.0)], torch.Generator().manual_seed(seed))
    return tensors


def test_same_seed_same_numbers_and_the_stds_asked_for():
    a, b = _draw(7), _draw(7)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(_draw(8)[1], a[1])
    # 2 M + 7 draws with std 0.5: the sample std is within 1% (its standard error is 0.05%), uniform on
    # [-0.5 sqrt(3), 0.5 sqrt(3)]
    assert abs(float(a[1].std()) - 0.5) < 0.005
    assert abs(float(a[1].mean())) < 0.005
    assert float(a[1].abs().max()) <= 0.5 * 3 ** 0.5 and float(a[1].abs().max()) > 0.99 * 0.5 * 3 ** 0.5
    # two blocks of one tensor come from different generators: no repeated run at the block boundary
    assert not torch.equal(a[1][:7], a[1][BLOCK:BLOCK + 7])


def test_numbers_do_not_depend_on_the_thread_count():
    before = torch.get_num_threads()
    try:
        drawn = {}
        for n in (1, 2, 3):  # 1 thread: one block after another; 2 and 3: blocks filled concurrently, in any order
            torch.set_num_threads(n)
            t = torch.empty(3 * BLOCK + 11)
            random_fill([(t, 1.0)], torch.Generator().manual_seed(3))
            drawn[n] = t
    finally:
        torch.set_num_threads(before)
    assert torch.equal(drawn[1], drawn[2]) and torch.equal(drawn[1], drawn[3])
