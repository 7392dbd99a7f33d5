"""The run directory: one training's folder, its lock, its files, and what a restart does to them.

Layout::

    RUN_DIR/config.yaml          the resolved config
    RUN_DIR/metrics.jsonl        one JSON record per log line and per validation
    RUN_DIR/tensorboard/         TensorBoard events (when tensorboard is installed)
    RUN_DIR/checkpoints/epoch_001.pt ...    a checkpoint at the end of each epoch
    RUN_DIR/checkpoints/epoch_002_step_00000150.pt ...   mid-epoch checkpoints (train.checkpoint_interval)
    RUN_DIR/checkpoints/last.pt best.pt   the latest and the best (by validation) of those, always kept
    RUN_DIR/.lock                 held (flock) by the one training that owns the directory

Only the newest ``train.keep_checkpoints`` epoch / mid-epoch files are kept. What a checkpoint holds is
:class:`attncluster.checkpoint.TrainState`'s business; this module only names, writes, links and prunes the files.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable

from attncluster.checkpoint import atomic_link, atomic_save, atomic_write_bytes
from attncluster.errors import ConfigError, DataError


class RunDirectory:
    """A run directory owned by one training: locked, checked against silent mixing, cleaned of debris.

    ``open`` takes an exclusive ``flock`` on ``RUN_DIR/.lock`` (released by the kernel when the process exits or
    crashes), so a second training into the same directory fails at once. A directory already holding a run is
    refused unless the training resumes (``resume``) or replaces it (``overwrite``: the previous run's config,
    metrics, TensorBoard events and checkpoints are removed first). Temporary files an interrupted atomic write
    left behind are deleted. If this call created the directory, :meth:`discard` removes it again (a failed start
    leaves nothing behind).
    """

    LOCK = ".lock"
    OWNED = ("config.yaml", "metrics.jsonl", "tensorboard", "checkpoints")  # what a run writes; --overwrite removes

    def __init__(self, path: Path, fd: int, created: bool) -> None:
        self.path, self._fd, self.created = path, fd, created

    @classmethod
    def open(cls, path: str | Path, *, resume: bool = False, overwrite: bool = False,
             owned: tuple[str, ...] = OWNED) -> RunDirectory:
        """Create (if needed) and lock ``path``; ``owned`` names what a previous run left (removed by overwrite)."""
        import fcntl

        path = Path(path)
        if path.exists() and not path.is_dir():
            raise ConfigError(f"--run-dir {path}: exists and is not a directory")
        created = not path.exists()
        try:
            path.mkdir(parents=True, exist_ok=True)
            fd = os.open(path / cls.LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError(f"--run-dir {path}: cannot create the run directory ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            os.close(fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise ConfigError(f"--run-dir {path}: another training{who} is using this run directory; wait for it "
                              "to finish or choose another --run-dir") from None
        _LOCK_FDS.add(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        run = cls(path, fd, created)
        try:
            used = [name for name in owned if _holds_data(path / name)]
            if used and overwrite:
                import shutil

                for name in used:
                    target = path / name
                    shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
            elif used and not resume:
                last = path / "checkpoints" / "last.pt"
                hint = f"continue it with --resume {last}, " if last.exists() else ""
                raise ConfigError(f"--run-dir {path}: already holds a run ({', '.join(used)}); {hint}replace it "
                                  "with --overwrite, or choose another --run-dir")
            remove_temporaries(path)
            remove_temporaries(path / "checkpoints")
        except BaseException:
            run.close()
            raise
        return run

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def start(self, cfg, resume_step: int | None = None) -> int:
        """Write ``config.yaml`` and make ``checkpoints/``; resuming from ``resume_step``, drop the metrics.jsonl
        records logged after it (see :func:`truncate_metrics`). Returns how many were dropped."""
        from attncluster.config import save_config

        config = self.path / "config.yaml"
        write_or_fail(lambda: save_config(cfg, config), config)
        dropped = truncate_metrics(self.path / "metrics.jsonl", resume_step) if resume_step is not None else 0
        self.checkpoints.mkdir(exist_ok=True)
        return dropped

    def save(self, ckpt: dict[str, Any], epochs_done: int, step: int, mid_epoch: bool, is_best: bool,
             keep: int) -> Path:
        """Write ``ckpt`` as the checkpoint after ``epochs_done`` epochs and ``step`` steps, point ``last.pt``
        (and ``best.pt`` when ``is_best``) at it, and keep only the newest ``keep`` (see :func:`prune_checkpoints`)."""
        path = self.checkpoints / checkpoint_name(epochs_done, step, mid_epoch)
        write_or_fail(lambda: atomic_save(ckpt, path), path)
        for name in ("last.pt", "best.pt") if is_best else ("last.pt",):
            write_or_fail(lambda: atomic_link(path, self.checkpoints / name), self.checkpoints / name)
        prune_checkpoints(self.checkpoints, keep)
        return path

    def close(self) -> None:
        if self._fd is not None:
            _LOCK_FDS.discard(self._fd)
            os.close(self._fd)  # releases the lock
            self._fd = None

    def discard(self) -> None:
        """Release the lock and, if ``open`` created the directory, remove it."""
        self.close()
        if self.created:
            import shutil

            shutil.rmtree(self.path, ignore_errors=True)


def _holds_data(path: Path) -> bool:
    """A file, or a folder with something in it besides debris of interrupted atomic writes (``.*.tmp``)."""
    if path.is_dir() and not path.is_symlink():
        return any(not (p.name.startswith(".") and p.name.endswith(".tmp")) for p in path.iterdir())
    return path.exists() or path.is_symlink()


_LOCK_FDS: set[int] = set()


def _close_inherited_locks() -> None:
    # A forked child (a DataLoader worker) shares the lock's open file description; an flock stays held until
    # every process holding it closes it. Closing the child's copy lets the lock die with the training process.
    for fd in list(_LOCK_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _LOCK_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


def truncate_metrics(path: Path, step: int) -> int:
    """Drop the records of ``metrics.jsonl`` logged after ``step`` (and a torn last line); returns how many.

    Resuming from a checkpoint at ``step`` replays the steps after it, whose records the interrupted run already
    wrote; without this they would appear twice."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
            keep = isinstance(rec, dict) and int(rec.get("step", 0)) <= step
        except (ValueError, TypeError):
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        atomic_write_bytes("".join(f"{line}\n" for line in kept).encode(), path)
    return dropped

def write_or_fail(fn: Callable[[], None], path: Path) -> None:
    """Run a file write; an OSError (full disk, read-only folder) becomes one error line naming the file."""
    try:
        fn()
    except OSError as e:
        raise DataError(f"{path}: cannot write ({e.strerror or e})") from None


# epoch_003.pt: the end of epoch 3; epoch_004_step_00001234.pt: inside epoch 4, after global step 1234.
CHECKPOINT_NAME = re.compile(r"^epoch_(\d+)(?:_step_(\d+))?\.pt$")


def checkpoint_name(epochs_done: int, step: int, mid_epoch: bool) -> str:
    """File name of a checkpoint taken after ``epochs_done`` whole epochs and ``step`` steps."""
    return f"epoch_{epochs_done + 1:03d}_step_{step:08d}.pt" if mid_epoch else f"epoch_{epochs_done:03d}.pt"


def _order_key(match: re.Match) -> tuple[int, int, int]:
    epoch, step = int(match.group(1)), match.group(2)
    return (epoch, 0, 0) if step is None else (epoch - 1, 1, int(step))


def remove_temporaries(folder: str | Path) -> list[Path]:
    """Delete the ``.NAME.*.tmp`` files an interrupted atomic write left in ``folder``; returns them.

    Only call this while holding the run directory's lock: a live writer's temporary file looks the same."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in sorted(folder.glob(".*.tmp")):
        if p.is_file() or p.is_symlink():
            p.unlink()
            removed.append(p)
    return removed


def prune_checkpoints(folder: str | Path, keep: int) -> list[Path]:
    """Keep the newest ``keep`` epoch and mid-epoch checkpoints (in training order, read from their names) and
    delete the older ones; ``keep`` 0 keeps all. ``best.pt`` and ``last.pt`` are names of their own (hard links or
    copies), so they always survive. Returns the deleted paths."""
    folder = Path(folder)
    if keep <= 0 or not folder.is_dir():
        return []
    found = sorted((_order_key(m), p) for p in folder.iterdir() if (m := CHECKPOINT_NAME.match(p.name)))
    removed = [p for _, p in found[:-keep]] if len(found) > keep else []
    for p in removed:
        p.unlink()
    return removed


class RunLogger:
    """Writes metrics.jsonl and TensorBoard events on the main process; prints log lines."""

    def __init__(self, run_dir: Path | None, enabled: bool, echo: Callable[[str], None] = print) -> None:
        self.enabled = enabled and run_dir is not None
        self.echo = echo if enabled else (lambda msg: None)
        self.file = None
        self.tb = None
        if self.enabled:
            self.file = open(run_dir / "metrics.jsonl", "a")
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                self.tb = None

    def record(self, kind: str, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"type": kind, "step": step, **values}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb is not None:
            self.tb.close()
