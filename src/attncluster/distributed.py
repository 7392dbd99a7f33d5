"""All distributed set-up in one place: torchrun's environment, the process group, and small collectives.

Single-process runs need no torchrun: with WORLD_SIZE unset (or 1) nothing here starts a process group.
Under ``torchrun --nproc_per_node=N -m attncluster train ...`` every rank reads RANK, LOCAL_RANK and WORLD_SIZE,
joins a NCCL (GPU) or gloo (CPU) group, and only rank 0 writes logs and checkpoints.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def autocast_for(device: torch.device, precision: str):
    """The autocast context of ``precision`` (``fp32``: none) on ``device``: the model's and the backbones'."""
    from contextlib import nullcontext

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def env_info() -> DistInfo:
    """Rank, local rank and world size from torchrun's environment (0, 0, 1 when not under torchrun)."""
    return DistInfo(_env_int("RANK", 0), _env_int("LOCAL_RANK", 0), _env_int("WORLD_SIZE", 1))


def is_main_process() -> bool:
    """True on rank 0 (and in single-process runs): the one process that logs and writes files."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return env_info().rank == 0


def setup(device: str) -> DistInfo:
    """Join the process group when launched by torchrun. Returns this process's DistInfo.

    NCCL is used for CUDA devices and gloo for CPU. A generous timeout lets slow data start-up pass, while a
    rank that dies still takes the job down (torchrun's elastic agent stops the others).
    """
    info = env_info()
    if info.is_distributed:
        end_with_parent(os.getppid())
    if info.is_distributed and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return info


_parent_watched: int | None = None


def end_with_parent(parent: int, interval: float = 0.5) -> None:
    """End this process within ``interval`` seconds of its launcher's death (``kill -9`` of torchrun).

    torchrun starts each worker in a session of its own, so a killed torchrun left its ranks running: they finished
    the job, rank 0 then wrote (or replaced) the output the user had given up on, racing a rerun. A daemon thread
    checks that the parent is still ``parent``; a rank whose launcher is gone exits with status 1 (what it leaves, a
    ``predict`` part file or a checkpoint's temporary file, the next run removes, as after any kill). Once per
    process.
    """
    global _parent_watched
    if _parent_watched is not None:
        return
    _parent_watched = parent
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        try:
            sys.stderr.write(f"attncluster: the launcher (pid {parent}) is gone; this rank ends\n")
            sys.stderr.flush()
        finally:
            os._exit(1)

    threading.Thread(target=watch, name="attncluster-launcher-watch", daemon=True).start()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device_for(device: str | None, info: DistInfo) -> torch.device:
    """The device this rank uses: ``cuda`` means this rank's local GPU; default cuda when available.

    Raises:
        ConfigError: ``device`` is not ``cpu``, ``cuda`` or ``cuda:N``; names a GPU this machine does not have (or
            any GPU on a CPU-only PyTorch build); or names one GPU under torchrun.
    """
    from attncluster.errors import ConfigError

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"--device {device}: not a device; use cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device}: {dev.type} is not supported; use cpu, cuda or cuda:N")
    if dev.type == "cpu":
        if dev.index not in (None, 0):
            raise ConfigError(f"--device {device}: there is one CPU device; use cpu")
        return torch.device("cpu")
    if info.is_distributed and dev.index is not None:
        raise ConfigError(f"--device {device}: under torchrun each rank uses the GPU of its LOCAL_RANK; "
                          "pass --device cuda (or nothing)")
    if not torch.cuda.is_available():
        why = "this PyTorch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ConfigError(f"--device {device}: {why}; use --device cpu")
    count = torch.cuda.device_count()
    if info.is_distributed:
        if info.local_rank >= count:
            raise ConfigError(f"LOCAL_RANK={info.local_rank}: this node has {count} visible GPU(s); start at most "
                              f"{count} processes per node")
        return torch.device("cuda", info.local_rank)
    if dev.index is not None and dev.index >= count:
        raise ConfigError(f"--device {device}: this machine has {count} visible GPU(s) (cuda:0 .. cuda:{count - 1})")
    return dev


def all_agree(flag: bool, device: torch.device) -> bool:
    """True only if ``flag`` is true on every rank (used to stop all ranks at the same step)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1 if flag else 0], device=device, dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (a list of length world_size); ``[obj]`` when not distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
