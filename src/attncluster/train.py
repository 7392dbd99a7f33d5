"""The training loop: forward, loss, backward, step, log, validate, checkpoint. One function, :func:`fit`.

Run directory layout::

    RUN_DIR/config.yaml          the resolved config
    RUN_DIR/metrics.jsonl        one JSON record per log line and per validation
    RUN_DIR/tensorboard/         TensorBoard events (when tensorboard is installed)
    RUN_DIR/checkpoints/epoch_001.pt ...    a checkpoint at the end of each epoch
    RUN_DIR/checkpoints/epoch_002_step_00000150.pt ...   mid-epoch checkpoints (train.checkpoint_interval)
    RUN_DIR/checkpoints/last.pt best.pt   the latest and the best (by validation) of those, always kept
    RUN_DIR/.lock                 held (flock) by the one training that owns the directory

Only the newest ``train.keep_checkpoints`` epoch / mid-epoch files are kept. A checkpoint records where in the
epoch it was taken (each rank's next batch), so ``--resume`` continues with exactly the batches that would have
followed.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from attncluster import distributed
from attncluster.checkpoint import atomic_save, load_checkpoint, load_for_finetune, rng_state, set_rng_state
from attncluster.config import Config, cores_per_rank, save_config
from attncluster.data.transfer import batch_to_device
from attncluster.errors import ConfigError, plural
from attncluster.evaluate import format_metrics, run_evaluation
from attncluster.inference import autocast_for, compute_loss, load_class_names, predict_scores
from attncluster.metrics import gap, hit_at_one, perr, top_k_accuracy
from attncluster.model import AttentionCluster


def cpu_threads(cfg: Config, world_size: int) -> int:
    """Intra-op threads for CPU training: ``train.num_threads``, or (0 = auto) this process's share of the cores
    left after its DataLoader workers (``data.num_workers``, resolved as the loader resolves it), at least 1.
    Oversubscribed OpenMP threads spin and can halve the speed."""
    if cfg.train.num_threads:
        return cfg.train.num_threads
    return max(1, cores_per_rank(world_size) - cfg.data.workers(world_size))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """Adam (reference: lr 1e-3, betas 0.9/0.999, eps 1e-8, no weight decay) or AdamW."""
    opt_cls = torch.optim.Adam if cfg.train.optimizer == "adam" else torch.optim.AdamW
    kwargs = dict(lr=cfg.train.learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.train.weight_decay)
    try:  # the fused kernel is ~8x faster than the per-tensor loop on CPU (torch >= 2.4) and on GPU
        return opt_cls(model.parameters(), fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return opt_cls(model.parameters(), **kwargs)


def build_scheduler(opt: torch.optim.Optimizer, cfg: Config, total_steps: int | None) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps``, then constant (reference) or cosine decay to 0 at ``total_steps``."""
    warmup = cfg.train.warmup_steps
    cosine = cfg.train.schedule == "cosine"

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if cosine and total_steps:
            progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


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


def batch_metrics(scores: np.ndarray, labels: np.ndarray, multi_label: bool, top_k: int) -> dict[str, float]:
    if (labels < 0).any():  # segment_bce: -1 marks unrated pairs; the log's metrics count only positive ratings
        labels = (labels > 0).astype(labels.dtype)
    if multi_label:
        return {"hit_at_1": hit_at_one(scores, labels), "perr": perr(scores, labels), "gap": gap(scores, labels, top_k)}
    return {"top_1": top_k_accuracy(scores, labels, 1), "top_5": top_k_accuracy(scores, labels, 5)}


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
            from attncluster.checkpoint import remove_temporaries

            remove_temporaries(path)
            remove_temporaries(path / "checkpoints")
        except BaseException:
            run.close()
            raise
        return run

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

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
        from attncluster.checkpoint import atomic_write_bytes

        atomic_write_bytes("".join(f"{line}\n" for line in kept).encode(), path)
    return dropped


def fit(
    cfg: Config,
    run_dir: str | Path | None = None,
    resume: str | None = None,
    weights: str | None = None,
    device: str | None = None,
    log: Callable[[str], None] = print,
    on_step: Callable[[int, nn.Module, torch.Tensor], None] | None = None,
    allow_reinit: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train ``cfg``; returns the last validation metrics (empty without validation data).

    ``run_dir`` must be new or empty unless ``resume`` continues the run in it or ``overwrite`` replaces it (see
    :class:`RunDirectory`). ``on_step(step, model, loss)``, when given, is called on every rank after every
    optimizer step with the global step number, the unwrapped model and this rank's (detached) batch loss: a hook
    for tests and monitoring. ``allow_reinit`` lets ``weights`` fit no tensor of the model (see
    :func:`~attncluster.checkpoint.load_for_finetune`).
    """
    info = distributed.env_info()
    if cfg.train.batch_size % info.world_size:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} is the global batch and must divide evenly over "
                          f"WORLD_SIZE={info.world_size} ranks")
    if not cfg.data.train:
        raise ConfigError("data.train: no training data; set data.train in the config or with -o data.train=PATH")
    if resume and overwrite:
        raise ConfigError("--overwrite replaces a run and --resume continues one; pass only one of them")
    dev = distributed.device_for(device, info)
    train_ds, valid_ds = _datasets(cfg, info)  # bad or too little data fails here, before anything is written
    distributed.setup(dev.type)
    try:
        return _fit(cfg, Path(run_dir) if run_dir else None, resume, weights, dev, info, log, on_step, overwrite,
                    train_ds, valid_ds, allow_reinit)
    finally:
        distributed.cleanup()


def _datasets(cfg: Config, info: distributed.DistInfo):
    """The training and validation datasets, with their shards resolved and counted; errors name the cause."""
    from attncluster.data.dataset import VideoDataset

    class_names = load_class_names(cfg)
    train_class = VideoDataset
    if cfg.train.loss == "segment_bce":  # one rated segment per video, labels -1 where unrated
        from attncluster.segments import SegmentDataset as train_class
    train_ds = train_class.from_config(cfg, cfg.data.train, train=True, dist=info, class_names=class_names)
    total_videos = train_ds.num_videos  # reads every shard's record headers once (each rank)
    lo, hi = train_ds.rank_range()
    if hi <= lo:
        n = len(train_ds.shards)
        raise ConfigError(f"data.train: {total_videos} video{'s' * (total_videos != 1)} in {n} shard{'s' * (n != 1)}"
                          + (f" cannot be shared by {info.world_size} ranks (each needs at least one)"
                             if total_videos else "; nothing to train on"))
    valid_ds = None
    if cfg.data.valid and cfg.train.valid_interval:
        valid_ds = VideoDataset.from_config(cfg, cfg.data.valid, train=False, dist=info, class_names=class_names,
                                            warn_one_frame=False)  # train_ds has said it; video-level, also for segment_bce
        valid_ds.record_counts()
    return train_ds, valid_ds


def _fit(cfg: Config, run_dir: Path | None, resume: str | None, weights: str | None, dev: torch.device,
         info: distributed.DistInfo, log: Callable[[str], None],
         on_step: Callable[[int, nn.Module, torch.Tensor], None] | None = None,
         overwrite: bool = False, train_ds=None, valid_ds=None, allow_reinit: bool = False) -> dict[str, Any]:
    from attncluster.data.dataset import make_loader

    main = info.rank == 0
    say = log if main else (lambda msg: None)
    rank_batch = cfg.train.batch_size // info.world_size
    workers = cfg.data.workers(info.world_size)
    batches_per_epoch = train_ds.num_batches(rank_batch)  # the same on every rank (equal shares)

    ckpt = None
    if resume:
        ckpt = load_checkpoint(resume)
        positions = ckpt.get("position") or [0] * info.world_size
        if any(positions) and len(positions) != info.world_size:
            raise ConfigError(f"{resume}: taken mid-epoch by {len(positions)} ranks; resume it with "
                              f"{len(positions)} ranks (WORLD_SIZE={info.world_size} splits the data differently)")
        if any(positions) and ckpt.get("num_videos", train_ds.num_videos) != train_ds.num_videos:
            raise ConfigError(f"{resume}: taken mid-epoch over {ckpt['num_videos']} training videos, but data.train "
                              f"now holds {train_ds.num_videos}; its position would point at other videos (resume "
                              "from an epoch-end checkpoint to train on changed data)")
        if ckpt["epoch"] >= cfg.train.epochs and not any(positions):
            say(f"nothing to do: {resume} has finished all {ckpt['epoch']} epochs (step {ckpt['step']}); "
                "raise train.epochs to train further")
            return ckpt.get("metrics") or {}

    if dev.type == "cpu":
        torch.set_num_threads(cpu_threads(cfg, info.world_size))
    seed_everything(cfg.train.seed + info.rank)  # dropout differs per rank; DDP broadcasts rank 0's weights
    model = AttentionCluster(**cfg.model.model_kwargs())
    if weights:
        load_for_finetune(model, weights, log=say, allow_reinit=allow_reinit)
    model.to(dev)
    optimizer = build_optimizer(model, cfg)
    pin = cfg.data.pin_memory if cfg.data.pin_memory is not None else dev.type == "cuda"
    total_steps = cfg.train.epochs * batches_per_epoch if cfg.train.schedule == "cosine" else None
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    scaler = torch.amp.GradScaler(dev.type, enabled=cfg.train.precision == "fp16")

    start_epoch, start_batch, step, best, last_valid = 0, 0, 0, None, {}
    if ckpt is not None:
        from attncluster.checkpoint import shape_mismatches

        missing, unexpected, mis = shape_mismatches(model, ckpt["model"])
        if missing or unexpected or mis:
            raise ConfigError(f"{resume}: checkpoint does not match the config's model "
                              f"(mis-shaped {mis[:3]}, missing {missing[:3]}, unexpected {unexpected[:3]})")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if "scaler" in ckpt:
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, step, best = ckpt["epoch"], ckpt["step"], ckpt.get("best_metric")
        last_valid = ckpt.get("metrics") or {}
        start_batch = int((ckpt.get("position") or [0] * info.world_size)[info.rank])
        rngs = ckpt.get("rng") or []
        if len(rngs) == info.world_size:
            set_rng_state(rngs[info.rank])

    run = None
    if run_dir is not None and main:
        run = RunDirectory.open(run_dir, resume=bool(resume), overwrite=overwrite)
    try:
        if run is not None:
            _write(lambda: save_config(cfg, run_dir / "config.yaml"), run_dir / "config.yaml")
            if resume:
                dropped = truncate_metrics(run_dir / "metrics.jsonl", step)
                if dropped:
                    say(f"resume: dropped {dropped} metrics.jsonl records logged after step {step}")
            run.checkpoints.mkdir(exist_ok=True)
        logger = RunLogger(run_dir, main, log)
    except BaseException:
        if run is not None:
            run.discard()
        raise
    try:
        if ckpt is not None:
            where = f", batch {start_batch} of epoch {start_epoch + 1}" if start_batch else ""
            say(f"resumed from {resume}: epoch {start_epoch}, step {step}{where}")
        return _loop(cfg, model, optimizer, scheduler, scaler, train_ds, valid_ds, make_loader, run, logger, dev,
                     info, on_step, pin, workers, rank_batch, start_epoch, start_batch, step, best, last_valid)
    finally:
        logger.close()
        if run is not None:
            run.close()


def _write(fn: Callable[[], None], path: Path) -> None:
    """Run a file write; an OSError (full disk, read-only folder) becomes one error line naming the file."""
    try:
        fn()
    except OSError as e:
        from attncluster.errors import DataError

        raise DataError(f"{path}: cannot write ({e.strerror or e})") from None


def _loop(cfg, model, optimizer, scheduler, scaler, train_ds, valid_ds, make_loader, run, logger, dev, info, on_step,
          pin, workers, rank_batch, start_epoch, start_batch, step, best, last_valid) -> dict[str, Any]:
    """Epochs of forward, loss, backward, step, log; validation and a checkpoint at each epoch end, and mid-epoch
    checkpoints every ``train.checkpoint_interval``."""
    main = info.rank == 0
    say = logger.echo
    net: nn.Module = model
    if info.is_distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    if cfg.train.compile:
        net = torch.compile(net)
    modalities = list(cfg.model.feature_dims)
    best_key = "gap" if cfg.multi_label else "top_1"
    every_kind, every = cfg.train.checkpoint_every
    saved_step, saved_at = step, time.monotonic()

    def save(epochs_done: int, position: int, metrics: dict[str, Any], is_best: bool) -> None:
        """A checkpoint after ``epochs_done`` epochs plus ``position`` batches of the next (collective: all ranks)."""
        nonlocal saved_step, saved_at
        states = distributed.gather_objects({"rng": rng_state(), "position": position})
        saved_step, saved_at = step, time.monotonic()
        if run is None:
            return
        from attncluster.checkpoint import atomic_link, checkpoint_name, prune_checkpoints

        positions = [s["position"] for s in states]
        ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epochs_done,
                "step": step, "position": positions, "num_videos": train_ds.num_videos,
                "rng": [s["rng"] for s in states], "config": cfg.to_dict(),
                "metrics": metrics, "best_metric": best}
        path = run.checkpoints / checkpoint_name(epochs_done, step, mid_epoch=any(positions))
        _write(lambda: atomic_save(ckpt, path), path)
        _write(lambda: atomic_link(path, run.checkpoints / "last.pt"), run.checkpoints / "last.pt")
        if is_best:
            _write(lambda: atomic_link(path, run.checkpoints / "best.pt"), run.checkpoints / "best.pt")
        prune_checkpoints(run.checkpoints, cfg.train.keep_checkpoints)
        say(f"checkpoint: {path}" + (f" (best {best_key} {best:.4f})" if is_best else ""))

    def mid_epoch_due() -> bool:
        if step == saved_step or (every_kind == "steps" and not every):  # nothing new since the last checkpoint
            return False
        if every_kind == "steps":
            return step % int(every) == 0
        want = time.monotonic() - saved_at >= every
        return not distributed.all_agree(not want, dev)  # any rank's clock decides, for all ranks together

    n_params = sum(p.numel() for p in model.parameters())
    lo, hi = train_ds.rank_range()
    say(f"train: {n_params:,} parameters on {dev} x{info.world_size}, {plural(train_ds.num_videos, 'video')} "
        f"({hi - lo} per rank), global batch {cfg.train.batch_size} ({rank_batch} per rank, "
        f"{plural(train_ds.num_batches(rank_batch), 'step')} per epoch), {plural(cfg.train.epochs, 'epoch')}, "
        f"{plural(workers, 'data worker')}, precision {cfg.train.precision}")
    for epoch in range(start_epoch, cfg.train.epochs):
        train_ds.set_epoch(epoch, start_batch if epoch == start_epoch else 0)
        loader = make_loader(train_ds, rank_batch, num_workers=workers, pin_memory=pin)
        net.train()
        t_log, videos, waited, epoch_videos, epoch_start = time.perf_counter(), 0, 0.0, 0, time.perf_counter()
        progress = _progress(main, epoch, cfg.train.epochs)
        it = iter(loader)
        while True:
            t0 = time.perf_counter()
            position = loader.position  # batches of this epoch trained on so far
            batch = next(it, None)
            waited += time.perf_counter() - t0
            if not distributed.all_agree(batch is not None, dev):  # every rank stops at the same step
                break
            if mid_epoch_due():  # only now: had the epoch ended, its end-of-epoch checkpoint would cover this
                save(epoch, position, last_valid, False)
            features, labels = batch_to_device(batch, modalities, dev)
            with autocast_for(dev, cfg.train.precision):
                logits = net(features)
            loss = compute_loss(logits, labels, cfg.train.loss)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.train.grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            if on_step is not None:
                on_step(step, model, loss.detach())
            videos += labels.shape[0] * info.world_size
            epoch_videos += labels.shape[0] * info.world_size
            if progress is not None:
                progress.update(labels.shape[0] * info.world_size)
            if step % cfg.train.log_interval == 0:
                elapsed = time.perf_counter() - t_log
                values = {"epoch": epoch + 1, "loss": loss.item(),
                          **batch_metrics(predict_scores(logits, cfg.train.loss).detach().cpu().numpy(),
                                          labels.cpu().numpy(), cfg.multi_label, cfg.eval.top_k),
                          "videos_per_s": videos / elapsed, "data_wait": waited / elapsed,
                          "lr": optimizer.param_groups[0]["lr"]}
                say(f"epoch {epoch + 1} step {step} " + " ".join(
                    f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items() if k != "epoch"))
                logger.record("train", step, values)
                t_log, videos, waited = time.perf_counter(), 0, 0.0
        if progress is not None:
            progress.close()
        if epoch_videos == 0 and not (epoch == start_epoch and start_batch):
            raise ConfigError(f"data.train: epoch {epoch + 1} had no batch: all {hi - lo} videos of rank "
                              f"{info.rank} were skipped as corrupt")
        say(f"epoch {epoch + 1}/{cfg.train.epochs} done: {epoch_videos} videos in {time.perf_counter() - epoch_start:.1f}s")

        metrics: dict[str, Any] = {}
        if valid_ds is not None and (epoch + 1) % cfg.train.valid_interval == 0:
            valid_loader = make_loader(valid_ds, cfg.eval.batch_size, num_workers=workers, pin_memory=pin)
            metrics = run_evaluation(model, valid_loader, cfg, dev)  # unwrapped: ranks may hold uneven batches
            last_valid = metrics
            say(f"valid epoch {epoch + 1}: {format_metrics(metrics)}")
            logger.record("valid", step, {"epoch": epoch + 1, **metrics})
        is_best = bool(metrics) and (best is None or metrics[best_key] > best)
        if is_best:
            best = metrics[best_key]
        save(epoch + 1, 0, metrics, is_best)
        distributed.barrier()
    return last_valid


def _progress(main: bool, epoch: int, epochs: int):
    """A tqdm bar on interactive terminals of the main process; log lines carry the same facts elsewhere."""
    if not main or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(desc=f"epoch {epoch + 1}/{epochs}", unit="video", leave=False, dynamic_ncols=True)
