"""The training loop: forward, loss, backward, step, log, validate, checkpoint. One function, :func:`fit`.

Run directory layout::

    RUN_DIR/config.yaml          the resolved config
    RUN_DIR/metrics.jsonl        one JSON record per log line and per validation
    RUN_DIR/tensorboard/         TensorBoard events (when tensorboard is installed)
    RUN_DIR/checkpoints/epoch_001.pt ... last.pt best.pt
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
from attncluster.config import Config, save_config
from attncluster.data.transfer import batch_to_device
from attncluster.errors import ConfigError, plural
from attncluster.evaluate import format_metrics, run_evaluation
from attncluster.inference import autocast_for, compute_loss, load_class_names, predict_scores
from attncluster.metrics import gap, hit_at_one, perr, top_k_accuracy
from attncluster.model import AttentionCluster


def cpu_threads(cfg: Config, world_size: int) -> int:
    """Intra-op threads for CPU training: ``train.num_threads``, or (0 = auto) this process's share of the cores
    left after the DataLoader workers, at least 1. Oversubscribed OpenMP threads spin and can halve the speed."""
    if cfg.train.num_threads:
        return cfg.train.num_threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // world_size - cfg.data.num_workers)


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


def count_videos(specs: list[str], cfg: Config) -> int:
    """Number of videos in the training shards (reads only record headers); used for the cosine schedule."""
    from attncluster.data.dataset import open_shard, resolve_shards

    return sum(len(open_shard(p, fmt=cfg.data.format, modalities=cfg.model.feature_dims,
                              num_classes=cfg.model.num_classes, class_names=load_class_names(cfg)))
               for p in resolve_shards(specs, cfg.data.format))


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
    if multi_label:
        return {"hit_at_1": hit_at_one(scores, labels), "perr": perr(scores, labels), "gap": gap(scores, labels, top_k)}
    return {"top_1": top_k_accuracy(scores, labels, 1), "top_5": top_k_accuracy(scores, labels, 5)}


def fit(
    cfg: Config,
    run_dir: str | Path | None = None,
    resume: str | None = None,
    weights: str | None = None,
    device: str | None = None,
    log: Callable[[str], None] = print,
    on_step: Callable[[int, nn.Module, torch.Tensor], None] | None = None,
    allow_reinit: bool = False,
) -> dict[str, Any]:
    """Train ``cfg``; returns the last validation metrics (empty without validation data).

    ``on_step(step, model, loss)``, when given, is called on every rank after every optimizer step with the global
    step number, the unwrapped model and this rank's (detached) batch loss: a hook for tests and monitoring.
    ``allow_reinit`` lets ``weights`` fit no tensor of the model (see :func:`~attncluster.checkpoint.load_for_finetune`).
    """
    info = distributed.env_info()
    if cfg.train.batch_size % info.world_size:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} is the global batch and must divide evenly over "
                          f"WORLD_SIZE={info.world_size} ranks")
    if not cfg.data.train:
        raise ConfigError("data.train: no training data; set data.train in the config or with -o data.train=PATH")
    dev = distributed.device_for(device, info)
    distributed.setup(dev.type)
    try:
        return _fit(cfg, Path(run_dir) if run_dir else None, resume, weights, dev, info, log, on_step, allow_reinit)
    finally:
        distributed.cleanup()


def _fit(cfg: Config, run_dir: Path | None, resume: str | None, weights: str | None, dev: torch.device,
         info: distributed.DistInfo, log: Callable[[str], None],
         on_step: Callable[[int, nn.Module, torch.Tensor], None] | None = None,
         allow_reinit: bool = False) -> dict[str, Any]:
    from attncluster.data.dataset import VideoDataset, make_loader

    main = info.rank == 0
    rank_batch = cfg.train.batch_size // info.world_size
    if run_dir is not None and main:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    logger = RunLogger(run_dir, main, log)
    say = logger.echo

    if dev.type == "cpu":
        torch.set_num_threads(cpu_threads(cfg, info.world_size))
    seed_everything(cfg.train.seed + info.rank)  # dropout differs per rank; DDP broadcasts rank 0's weights
    model = AttentionCluster(**cfg.model.model_kwargs())
    if weights:
        load_for_finetune(model, weights, log=say, allow_reinit=allow_reinit)
    model.to(dev)
    optimizer = build_optimizer(model, cfg)

    modalities = list(cfg.model.feature_dims)
    class_names = load_class_names(cfg)
    train_ds = VideoDataset(cfg.data.train, modalities=cfg.model.feature_dims, num_classes=cfg.model.num_classes,
                            seg_num=cfg.model.seg_num, train=True, seed=cfg.train.seed,
                            skip_corrupt=cfg.data.skip_corrupt, dequantize=False, fmt=cfg.data.format,
                            class_names=class_names, rank=info.rank, world_size=info.world_size)
    valid_ds = None
    if cfg.data.valid and cfg.train.valid_interval:
        valid_ds = VideoDataset(cfg.data.valid, modalities=cfg.model.feature_dims, num_classes=cfg.model.num_classes,
                                seg_num=cfg.model.seg_num, train=False, skip_corrupt=cfg.data.skip_corrupt,
                                dequantize=False, fmt=cfg.data.format, class_names=class_names,
                                rank=info.rank, world_size=info.world_size)
    pin = cfg.data.pin_memory if cfg.data.pin_memory is not None else dev.type == "cuda"
    total_steps = None
    if cfg.train.schedule == "cosine":
        total_steps = cfg.train.epochs * (count_videos(cfg.data.train, cfg) // cfg.train.batch_size)
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    scaler = torch.amp.GradScaler(dev.type, enabled=cfg.train.precision == "fp16")

    start_epoch, step, best, last_valid = 0, 0, None, {}
    if resume:
        ckpt = load_checkpoint(resume)
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
        rngs = ckpt.get("rng") or []
        if len(rngs) == info.world_size:
            set_rng_state(rngs[info.rank])
        say(f"resumed from {resume}: epoch {start_epoch}, step {step}")

    net: nn.Module = model
    if info.is_distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    if cfg.train.compile:
        net = torch.compile(net)

    best_key = "gap" if cfg.multi_label else "top_1"
    n_params = sum(p.numel() for p in model.parameters())
    say(f"train: {n_params:,} parameters on {dev} x{info.world_size}, global batch {cfg.train.batch_size} "
        f"({rank_batch} per rank), {plural(cfg.train.epochs, 'epoch')}, precision {cfg.train.precision}")
    for epoch in range(start_epoch, cfg.train.epochs):
        train_ds.set_epoch(epoch)
        loader = make_loader(train_ds, rank_batch, num_workers=cfg.data.num_workers, pin_memory=pin, drop_last=True)
        net.train()
        t_log, videos, waited, epoch_videos, epoch_start = time.perf_counter(), 0, 0.0, 0, time.perf_counter()
        progress = _progress(main, epoch, cfg.train.epochs)
        it = iter(loader)
        while True:
            t0 = time.perf_counter()
            batch = next(it, None)
            waited += time.perf_counter() - t0
            if not distributed.all_agree(batch is not None, dev):  # every rank stops at the same step
                break
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
        if epoch_videos == 0:
            raise ConfigError(f"data.train: no full batch of {rank_batch} videos per rank; lower train.batch_size")
        say(f"epoch {epoch + 1}/{cfg.train.epochs} done: {epoch_videos} videos in {time.perf_counter() - epoch_start:.1f}s")

        metrics: dict[str, Any] = {}
        if valid_ds is not None and (epoch + 1) % cfg.train.valid_interval == 0:
            valid_loader = make_loader(valid_ds, cfg.eval.batch_size, num_workers=cfg.data.num_workers, pin_memory=pin)
            metrics = run_evaluation(model, valid_loader, cfg, dev)  # unwrapped: ranks may hold uneven batches
            last_valid = metrics
            say(f"valid epoch {epoch + 1}: {format_metrics(metrics)}")
            logger.record("valid", step, {"epoch": epoch + 1, **metrics})
        is_best = bool(metrics) and (best is None or metrics[best_key] > best)
        if is_best:
            best = metrics[best_key]
        rngs = distributed.gather_objects(rng_state())
        if main and run_dir is not None:
            ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch + 1,
                    "step": step, "rng": rngs, "config": cfg.to_dict(), "metrics": metrics, "best_metric": best}
            path = run_dir / "checkpoints" / f"epoch_{epoch + 1:03d}.pt"
            atomic_save(ckpt, path)
            _atomic_link(path, run_dir / "checkpoints" / "last.pt")
            if is_best:
                _atomic_link(path, run_dir / "checkpoints" / "best.pt")
            say(f"checkpoint: {path}" + (f" (best {best_key} {best:.4f})" if is_best else ""))
        distributed.barrier()
    logger.close()
    return last_valid


def _atomic_link(src: Path, dst: Path) -> None:
    """Make ``dst`` name the same file as ``src`` (hard link, or a copy where links fail), atomically."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        import shutil

        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _progress(main: bool, epoch: int, epochs: int):
    """A tqdm bar on interactive terminals of the main process; log lines carry the same facts elsewhere."""
    if not main or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(desc=f"epoch {epoch + 1}/{epochs}", unit="video", leave=False, dynamic_ncols=True)
