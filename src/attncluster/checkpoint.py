"""The training state and its files: :class:`TrainState`, whose ``state_dict()`` is the checkpoint.

A training checkpoint is a plain dict ``{model, optimizer, scheduler, scaler, epoch, step, position, num_videos,
rng, config, metrics, best_metric, early_stopping}`` (``epoch``: whole epochs done; ``position``: per rank, the
batches of the next epoch done, all 0 at an epoch end) written atomically (temporary file in the same folder, fsync,
then rename), so a crash never leaves a half-written file under the final name. Reading any weights file, ours
included, and the upgrade of files from before the state format are :mod:`attncluster.weights`.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attncluster.model import FORMAT_KEY, STATE_FORMAT
# Loading lives in weights.py; these names stay importable from here for callers of the old home.
from attncluster.weights import load_checkpoint, load_for_finetune, load_weights, shape_mismatches  # noqa: F401


def _atomic_write(write, path: str | Path, what: str = "write") -> None:
    """Call ``write(f)`` on a temporary file next to ``path`` and rename it over ``path`` (``outputs.atomic_output``:
    fsync of the file and of the folder; one FileError naming ``path`` on failure)."""
    from attncluster.outputs import atomic_output

    with atomic_output(path, "wb", what=what) as f:
        write(f)


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to ``path`` via a temporary file and an atomic rename.

    A checkpoint (a dict with a ``model`` entry) is stamped with the state format it holds, ``weights_format``.
    """
    if isinstance(obj, dict) and "model" in obj and FORMAT_KEY not in obj:
        obj = {**obj, FORMAT_KEY: STATE_FORMAT}
    _atomic_write(lambda f: torch.save(obj, f), path, "write checkpoint")  # one FileError naming the path


def atomic_write_bytes(data: bytes, path: str | Path, what: str = "write") -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename): readers see the old or the new file."""
    _atomic_write(lambda f: f.write(data), path, what)


def atomic_link(src: str | Path, dst: str | Path) -> None:
    """Make ``dst`` name the same file as ``src`` (hard link, or a copy where links fail), atomically."""
    src, dst = Path(src), Path(dst)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    os.unlink(tmp)  # a unique free name for the link
    try:
        try:
            os.link(src, tmp)
        except OSError:
            import shutil

            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class TrainState:
    """Everything a training run is at one moment; its :meth:`state_dict` is the checkpoint, and
    :meth:`load_state_dict` is ``--resume``.

    Held: the model (unwrapped), optimizer, LR scheduler and gradient scaler; ``epoch`` (whole epochs done),
    ``step`` (optimizer steps done), ``position`` (this rank's batches of the current epoch done; 0 at an epoch
    end); the last validation ``metrics``; the best value of the metric that picks ``best.pt`` (``best_metric``) and
    the epoch that reached it; ``bad_evals`` (validations since the best, for early stopping). The run's identity
    travels with it: ``config`` (the resolved config as a dict) and ``num_videos`` (training videos, which a
    mid-epoch position refers to).

    :meth:`state_dict` is collective under torchrun (each rank's RNG state and position are gathered into lists
    indexed by rank); call it on every rank. Checkpoint keys: ``model, optimizer, scheduler, scaler, epoch, step,
    position, num_videos, rng, config, metrics, best_metric, early_stopping`` (``{"bad_evals", "best_epoch"}``), and
    ``weights_format`` (added by :func:`atomic_save`). Files without ``early_stopping`` or ``scaler`` (older
    versions) resume with the counter at 0 and a fresh scaler.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any = None,
                 *, config: dict[str, Any] | None = None, num_videos: int = 0) -> None:
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.config, self.num_videos = config or {}, num_videos
        self.epoch = self.step = self.position = 0
        self.metrics: dict[str, Any] = {}
        self.best_metric: float | None = None
        self.best_epoch = 0
        self.bad_evals = 0

    def state_dict(self) -> dict[str, Any]:
        from attncluster import distributed

        ranks = distributed.gather_objects({"rng": rng_state(), "position": self.position})
        ckpt = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict()}
        if self.scaler is not None:
            ckpt["scaler"] = self.scaler.state_dict()
        return {**ckpt, "epoch": self.epoch, "step": self.step, "position": [r["position"] for r in ranks],
                "num_videos": self.num_videos, "rng": [r["rng"] for r in ranks], "config": self.config,
                "metrics": self.metrics, "best_metric": self.best_metric,
                "early_stopping": {"bad_evals": self.bad_evals, "best_epoch": self.best_epoch}}

    def load_state_dict(self, ckpt: dict[str, Any], rank: int = 0, world_size: int = 1, source: str = "checkpoint",
                        ) -> None:
        """Continue from ``ckpt`` (as :func:`~attncluster.weights.load_checkpoint` returns it) as ``rank`` of
        ``world_size``: every tensor, counter and this rank's position and RNG state.

        Raises:
            ConfigError: the checkpoint was taken mid-epoch by another number of ranks or over other training data
                (its position would point at other videos), or its model is not the config's.
        """
        from attncluster.errors import ConfigError

        positions = ckpt.get("position") or [0] * world_size
        if any(positions) and len(positions) != world_size:
            raise ConfigError(f"{source}: taken mid-epoch by {len(positions)} ranks; resume it with "
                              f"{len(positions)} ranks (WORLD_SIZE={world_size} splits the data differently)")
        if any(positions) and ckpt.get("num_videos", self.num_videos) != self.num_videos:
            raise ConfigError(f"{source}: taken mid-epoch over {ckpt['num_videos']} training videos, but data.train "
                              f"now holds {self.num_videos}; its position would point at other videos (resume "
                              "from an epoch-end checkpoint to train on changed data)")
        missing, unexpected, mis = shape_mismatches(self.model, ckpt["model"])
        if missing or unexpected or mis:
            raise ConfigError(f"{source}: checkpoint does not match the config's model "
                              f"(mis-shaped {mis[:3]}, missing {missing[:3]}, unexpected {unexpected[:3]})")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and "scaler" in ckpt:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.step = int(ckpt["epoch"]), int(ckpt["step"])
        self.position = int(positions[rank]) if any(positions) else 0
        self.metrics = ckpt.get("metrics") or {}
        self.best_metric = ckpt.get("best_metric")
        stopping = ckpt.get("early_stopping") or {}
        self.bad_evals = int(stopping.get("bad_evals", 0))
        self.best_epoch = int(stopping.get("best_epoch", 0))
        rngs = ckpt.get("rng") or []
        if len(rngs) == world_size:
            set_rng_state(rngs[rank])

    def record_validation(self, metrics: dict[str, Any], metric: str, min_delta: float = 0.0) -> bool:
        """Note the validation after ``self.epoch`` epochs: the new best (returns True) when ``metrics[metric]`` is
        better than the best so far by more than ``min_delta`` (lower for ``loss``, higher otherwise); otherwise one
        more validation without improvement (``bad_evals``)."""
        self.metrics = metrics
        value = float(metrics[metric])
        sign = -1.0 if metric == "loss" else 1.0
        if value == value and (self.best_metric is None or sign * (value - self.best_metric) > min_delta):
            self.best_metric, self.best_epoch, self.bad_evals = value, self.epoch, 0
            return True
        self.bad_evals += 1
        return False

    def should_stop(self, patience: int) -> bool:
        """Early stopping: ``patience`` (> 0) validations in a row without improvement."""
        return patience > 0 and self.bad_evals >= patience
