"""The training loop: forward, loss, backward, step, log, validate, checkpoint. One function, :func:`fit`.

The run's state is one :class:`~attncluster.checkpoint.TrainState` (model, optimizer, scheduler, scaler, epoch,
step, position in the epoch, RNG, best metric, early-stopping counter): its ``state_dict()`` is what a checkpoint
holds and its ``load_state_dict()`` is ``--resume``. A checkpoint records where in the epoch it was taken (each
rank's next batch), so ``--resume`` continues with exactly the batches that would have followed. The run directory
(lock, config.yaml, metrics.jsonl, checkpoint files) is :mod:`attncluster.rundir`.
"""

from __future__ import annotations

import math
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from attncluster import distributed
from attncluster.checkpoint import TrainState
from attncluster.config import Config, cores_per_rank
from attncluster.data.transfer import batch_to_device
from attncluster.errors import ConfigError, plural
from attncluster.evaluate import format_metrics, run_evaluation
from attncluster.inference import TorchPredictor, autocast_for, compute_loss, load_class_names, predict_scores
from attncluster.metrics import gap, hit_at_one, perr, top_k_accuracy
from attncluster.model import AttentionCluster
from attncluster.rundir import RunDirectory, RunLogger
from attncluster.weights import load_checkpoint, load_for_finetune


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


def batch_metrics(scores: np.ndarray, labels: np.ndarray, multi_label: bool, top_k: int) -> dict[str, float]:
    if (labels < 0).any():  # segment_bce: -1 marks unrated pairs; the log's metrics count only positive ratings
        labels = (labels > 0).astype(labels.dtype)
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
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train ``cfg``; returns the last validation metrics (empty without validation data).

    ``run_dir`` must be new or empty unless ``resume`` continues the run in it or ``overwrite`` replaces it (see
    :class:`~attncluster.rundir.RunDirectory`). ``on_step(step, model, loss)``, when given, is called on every rank
    after every optimizer step with the global step number, the unwrapped model and this rank's (detached) batch
    loss: a hook for tests and monitoring. ``allow_reinit`` lets ``weights`` fit no tensor of the model (see
    :func:`~attncluster.weights.load_for_finetune`).
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
    main = info.rank == 0
    say = log if main else (lambda msg: None)
    distributed.setup(dev.type)
    try:
        ckpt = load_checkpoint(resume) if resume else None
        if ckpt is not None and _finished(ckpt, cfg, resume, say):
            return ckpt.get("metrics") or {}
        if dev.type == "cpu":
            torch.set_num_threads(cpu_threads(cfg, info.world_size))
        state = new_state(cfg, dev, train_ds.num_videos, train_ds.num_batches(cfg.train.batch_size // info.world_size),
                          seed=cfg.train.seed + info.rank)  # dropout differs per rank; DDP broadcasts rank 0's weights
        if weights:
            load_for_finetune(state.model, weights, log=say, allow_reinit=allow_reinit)
        if ckpt is not None:
            state.load_state_dict(ckpt, info.rank, info.world_size, source=str(resume))

        run = RunDirectory.open(run_dir, resume=bool(resume), overwrite=overwrite) if run_dir and main else None
        try:
            if run is not None:
                dropped = run.start(cfg, resume_step=state.step if resume else None)
                if dropped:
                    say(f"resume: dropped {dropped} metrics.jsonl records logged after step {state.step}")
            logger = RunLogger(run.path if run else None, main, log)
        except BaseException:
            if run is not None:
                run.discard()  # a failed start leaves nothing behind
            raise
        try:
            if ckpt is not None:
                where = f", batch {state.position} of epoch {state.epoch + 1}" if state.position else ""
                say(f"resumed from {resume}: epoch {state.epoch}, step {state.step}{where}")
            return _loop(state, cfg, train_ds, valid_ds, run=run, logger=logger, dev=dev, info=info, on_step=on_step)
        finally:
            logger.close()
            if run is not None:
                run.close()
    finally:
        distributed.cleanup()


def new_state(cfg: Config, dev: torch.device, num_videos: int, batches_per_epoch: int, seed: int) -> TrainState:
    """A fresh run's state: the config's model (initialised after seeding with ``seed``) on ``dev``, its optimizer,
    LR schedule (cosine over ``train.epochs`` x ``batches_per_epoch`` steps) and gradient scaler."""
    seed_everything(seed)
    model = AttentionCluster(**cfg.model.model_kwargs()).to(dev)
    optimizer = build_optimizer(model, cfg)
    total_steps = cfg.train.epochs * batches_per_epoch if cfg.train.schedule == "cosine" else None
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    scaler = torch.amp.GradScaler(dev.type, enabled=cfg.train.precision == "fp16")
    return TrainState(model, optimizer, scheduler, scaler, config=cfg.to_dict(), num_videos=num_videos)


def _finished(ckpt: dict[str, Any], cfg: Config, resume: str, say: Callable[[str], None]) -> bool:
    """Whether the run ``ckpt`` was taken from has nothing left to do under ``cfg`` (said in one line if so)."""
    if any(ckpt.get("position") or []):
        return False  # taken mid-epoch: that epoch still has batches
    patience, stopping = cfg.train.early_stopping.patience, ckpt.get("early_stopping") or {}
    if patience and int(stopping.get("bad_evals", 0)) >= patience:
        say(f"nothing to do: {resume} stopped early after {ckpt['epoch']} epochs (step {ckpt['step']}): "
            f"{cfg.train.best_metric} did not improve for {patience} validations (best {ckpt.get('best_metric')} "
            f"after epoch {stopping.get('best_epoch')}); raise train.early_stopping.patience to train further")
        return True
    if ckpt["epoch"] >= cfg.train.epochs:
        say(f"nothing to do: {resume} has finished all {ckpt['epoch']} epochs (step {ckpt['step']}); "
            "raise train.epochs to train further")
        return True
    return False


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




def _loop(state: TrainState, cfg: Config, train_ds, valid_ds, *, run: RunDirectory | None, logger: RunLogger,
          dev: torch.device, info: distributed.DistInfo,
          on_step: Callable[[int, nn.Module, torch.Tensor], None] | None) -> dict[str, Any]:
    """Epochs of forward, loss, backward, step, log; validation and a checkpoint at each epoch end, mid-epoch
    checkpoints every ``train.checkpoint_interval``, and an early stop when ``train.early_stopping`` says so."""
    from attncluster.data.dataset import make_loader

    main, say = info.rank == 0, logger.echo
    model, optimizer, scheduler, scaler = state.model, state.optimizer, state.scheduler, state.scaler
    net: nn.Module = model
    if info.is_distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    if cfg.train.compile:
        net = torch.compile(net)
    rank_batch = cfg.train.batch_size // info.world_size
    workers = cfg.data.workers(info.world_size)
    pin = cfg.data.pin_memory if cfg.data.pin_memory is not None else dev.type == "cuda"
    modalities = list(cfg.model.feature_dims)
    best_key, stopping = cfg.train.best_metric, cfg.train.early_stopping
    every_kind, every = cfg.train.checkpoint_every
    saved_step, saved_at = state.step, time.monotonic()

    def save(is_best: bool = False) -> None:
        """A checkpoint of ``state`` as it is (collective: all ranks take part; rank 0 writes)."""
        nonlocal saved_step, saved_at
        ckpt = state.state_dict()
        saved_step, saved_at = state.step, time.monotonic()
        if run is not None:
            path = run.save(ckpt, state.epoch, state.step, mid_epoch=any(ckpt["position"]), is_best=is_best,
                            keep=cfg.train.keep_checkpoints)
            say(f"checkpoint: {path}" + (f" (best {best_key} {state.best_metric:.4f})" if is_best else ""))

    def mid_epoch_due() -> bool:
        if state.step == saved_step or (every_kind == "steps" and not every):  # nothing new since the last one
            return False
        if every_kind == "steps":
            return state.step % int(every) == 0
        want = time.monotonic() - saved_at >= every
        return not distributed.all_agree(not want, dev)  # any rank's clock decides, for all ranks together

    n_params = sum(p.numel() for p in model.parameters())
    lo, hi = train_ds.rank_range()
    say(f"train: {n_params:,} parameters on {dev} x{info.world_size}, {plural(train_ds.num_videos, 'video')} "
        f"({hi - lo} per rank), global batch {cfg.train.batch_size} ({rank_batch} per rank, "
        f"{plural(train_ds.num_batches(rank_batch), 'step')} per epoch), {plural(cfg.train.epochs, 'epoch')}, "
        f"{plural(workers, 'data worker')}, precision {cfg.train.precision}")
    while state.epoch < cfg.train.epochs:
        epoch, resumed_at = state.epoch, state.position
        train_ds.set_epoch(epoch, resumed_at)
        loader = make_loader(train_ds, rank_batch, num_workers=workers, pin_memory=pin)
        net.train()
        t_log, videos, waited, epoch_videos, epoch_start = time.perf_counter(), 0, 0.0, 0, time.perf_counter()
        progress = _progress(main, epoch, cfg.train.epochs)
        it = iter(loader)
        while True:
            t0 = time.perf_counter()
            state.position = loader.position  # batches of this epoch trained on so far
            batch = next(it, None)
            waited += time.perf_counter() - t0
            if not distributed.all_agree(batch is not None, dev):  # every rank stops at the same step
                break
            if mid_epoch_due():  # only now: had the epoch ended, its end-of-epoch checkpoint would cover this
                save()
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
            state.step += 1
            if on_step is not None:
                on_step(state.step, model, loss.detach())
            videos += labels.shape[0] * info.world_size
            epoch_videos += labels.shape[0] * info.world_size
            if progress is not None:
                progress.update(labels.shape[0] * info.world_size)
            if state.step % cfg.train.log_interval == 0:
                elapsed = time.perf_counter() - t_log
                values = {"epoch": epoch + 1, "loss": loss.item(),
                          **batch_metrics(predict_scores(logits, cfg.train.loss).detach().cpu().numpy(),
                                          labels.cpu().numpy(), cfg.multi_label, cfg.eval.top_k),
                          "videos_per_s": videos / elapsed, "data_wait": waited / elapsed,
                          "lr": optimizer.param_groups[0]["lr"]}
                say(f"epoch {epoch + 1} step {state.step} " + " ".join(
                    f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items() if k != "epoch"))
                logger.record("train", state.step, values)
                t_log, videos, waited = time.perf_counter(), 0, 0.0
        if progress is not None:
            progress.close()
        if epoch_videos == 0 and not resumed_at:
            raise ConfigError(f"data.train: epoch {epoch + 1} had no batch: all {hi - lo} videos of rank "
                              f"{info.rank} were skipped as corrupt")
        say(f"epoch {epoch + 1}/{cfg.train.epochs} done: {epoch_videos} videos in {time.perf_counter() - epoch_start:.1f}s")
        state.epoch, state.position = epoch + 1, 0

        is_best = False
        validated = valid_ds is not None and state.epoch % cfg.train.valid_interval == 0
        if validated:
            valid_loader = make_loader(valid_ds, cfg.eval.batch_size, num_workers=workers, pin_memory=pin)
            # the unwrapped model (ranks may hold uneven batches), in eval mode until the next epoch's net.train()
            metrics = run_evaluation(TorchPredictor.from_model(model, cfg, dev), valid_loader, cfg)
            say(f"valid epoch {state.epoch}: {format_metrics(metrics)}")
            logger.record("valid", state.step, {"epoch": state.epoch, **metrics})
            is_best = state.record_validation(metrics, best_key, stopping.min_delta)
        save(is_best)
        distributed.barrier()
        if validated and state.should_stop(stopping.patience):
            say(f"early stopping after epoch {state.epoch}: {best_key} has not improved for {stopping.patience} "
                f"validation{'s' * (stopping.patience != 1)}; best {best_key} {state.best_metric:.4f} after epoch "
                f"{state.best_epoch} ({run.checkpoints / 'best.pt' if run else 'best.pt'})")
            break
    return state.metrics


def _progress(main: bool, epoch: int, epochs: int):
    """A tqdm bar on interactive terminals of the main process; log lines carry the same facts elsewhere."""
    if not main or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(desc=f"epoch {epoch + 1}/{epochs}", unit="video", leave=False, dynamic_ncols=True)
