"""Shared fixtures: tiny synthetic YouTube-8M-format data and a tiny config, so end-to-end tests take seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "yt8m-2018-video-level"
TINY_CLASSES = 5


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """In-process training sets torch's intra-op threads (train.num_threads, auto = the cores left): restore them
    after each test, so every test runs at the thread count the run was started with (OMP_NUM_THREADS=1 or 2)."""
    import sys

    torch = sys.modules.get("torch")  # never import torch here: the tests of an instant --help must not see it
    before = torch.get_num_threads() if torch is not None else None
    yield
    torch = sys.modules.get("torch")
    if before is None and torch is not None:
        import os

        before = int(os.environ.get("OMP_NUM_THREADS", "0")) or None
    if torch is not None and before is not None and torch.get_num_threads() != before:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Frame-level synthetic shards: train (96 videos, 3 shards) and valid (40 videos, 1 shard)."""
    from attncluster.data.synth import write_synthetic

    root = tmp_path_factory.mktemp("tiny_data")
    write_synthetic(root / "train", videos=96, classes=TINY_CLASSES, shards=3, seed=0, max_frames=24)
    write_synthetic(root / "valid", videos=40, classes=TINY_CLASSES, shards=1, seed=1, max_frames=24, prefix="validate")
    return root


def tiny_overrides(data: Path, **extra) -> list[str]:
    values = {
        "data.train": str(data / "train"),
        "data.valid": str(data / "valid"),
        "data.num_workers": 0,
        "model.num_classes": TINY_CLASSES,
        "model.seg_num": 8,
        "model.cluster_nums": 2,
        "model.hidden_sizes": "[16]",
        "model.drop_rate": 0.3,
        "train.epochs": 2,
        "train.batch_size": 16,
        "train.log_interval": 2,
        "train.valid_interval": 1,
        "eval.batch_size": 16,
        "eval.top_k": 3,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture
def tiny_cfg(tiny_data):
    from attncluster.config import load_config

    return load_config(None, tiny_overrides(tiny_data))
