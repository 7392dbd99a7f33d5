"""Random backbone weights (``--random-weights SEED``) drawn on every core, the same for any thread count.

Drawing the 94 M numbers of Inception-v3 + VGGish is the largest fixed cost of a random-weight pipeline, and torch
draws from one generator on one core. Here each tensor is cut into blocks, each block has its own generator seeded
from (the caller's generator, tensor, block), and a thread pool fills the blocks (torch releases the GIL while it
draws). The numbers depend on the seed alone, never on how many threads filled them. They are uniform with the
variance asked for (He initialisation needs only the variance), which torch draws about twice as fast as normal
numbers on a CPU.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

BLOCK = 1 << 21  # numbers per block (2 M: 8 MB of float32)


def random_fill(tensors: list[tuple[Tensor, float]], generator: torch.Generator | None = None) -> None:
    """Fill each ``(tensor, std)`` in place with zero-mean numbers of standard deviation ``std`` (uniform on
    [-sqrt(3) std, sqrt(3) std]), in parallel blocks.

    ``generator`` gives one base seed (one draw from it), so the same generator state gives the same weights.
    Tensors must be contiguous (blocks are runs of the flattened tensor).
    """
    base = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
    jobs = []
    for t_index, (tensor, std) in enumerate(tensors):
        flat = tensor.detach().view(-1)  # contiguous: a view that writes through
        for b_index, start in enumerate(range(0, flat.numel(), BLOCK)):
            seed = (base + 1_000_003 * t_index + b_index) % (2 ** 63)
            jobs.append((flat[start:start + BLOCK], float(std), seed))

    def fill(job) -> None:
        block, std, seed = job
        half_width = std * 3.0 ** 0.5  # U(-a, a) has variance a^2 / 3
        block.uniform_(-half_width, half_width, generator=torch.Generator().manual_seed(seed))

    workers = max(1, min(torch.get_num_threads(), len(jobs)))
    with torch.no_grad():
        if workers == 1:
            for job in jobs:
                fill(job)
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(fill, jobs))
