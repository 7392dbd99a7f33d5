"""End-to-end training benchmark: VideoDataset + DataLoader + the model step, videos/s and the share spent waiting.

The loop is train.py's, piece for piece: ``VideoDataset(train=True, dequantize=False)`` (uint8 frames),
``make_loader(..., drop_last=True)``, ``batch_to_device`` (dequantized on the device), ``autocast_for``,
``compute_loss`` (BCE), ``build_optimizer`` (Adam) and, on CPU, ``cpu_threads``, from the default YouTube-8M config;
over synthetic frame-level shards in the real schema (5..300 frames, 3862 classes).

Two figures from the same run:

* end to end: videos/s over the timed steps, and the share of the wall time spent blocked in ``next(loader)``;
* model step alone: the same step on one batch already on the device (the ceiling the data pipeline must feed).

Their ratio, end to end / model step alone, is the pipeline efficiency (1.0 = the data never holds training back).

Usage::

    python benchmarks/bench_train.py                                       # CPU, fp32, 2 workers, batch 64
    python benchmarks/bench_train.py --quick
    python benchmarks/bench_train.py --device cuda --precision bf16 --workers 16 --batch-size 1024 --videos 32768 \\
        --shards 32 --steps 100
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_data import default_cache, ensure_frame_shards, machine_info, report, table  # noqa: E402

from attncluster.config import Config  # noqa: E402
from attncluster.data.dataset import VideoDataset, make_loader  # noqa: E402
from attncluster.data.transfer import batch_to_device  # noqa: E402
from attncluster.inference import autocast_for, compute_loss  # noqa: E402
from attncluster.model import AttentionCluster  # noqa: E402
from attncluster.train import build_optimizer, cpu_threads  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--compile", action="store_true", help="torch.compile the model (as train.compile)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 12 CPU, 100 GPU)")
    p.add_argument("--warmup-steps", type=int, default=None, help="untimed steps first (default: 2 CPU, 10 GPU)")
    p.add_argument("--videos", type=int, default=2048, help="videos in the synthetic shards (cycled over epochs)")
    p.add_argument("--shards", type=int, default=None, help="default: 8, or 2 per worker if that is more")
    p.add_argument("--pin-memory", choices=["auto", "on", "off"], default="auto", help="auto: on for CUDA")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads in the main process (default on CPU: as train.py, the cores left "
                        "after the workers)")
    p.add_argument("--gen-procs", type=int, default=None, help="processes writing the shards (default: cores)")
    p.add_argument("--cache", default=default_cache())
    p.add_argument("--quick", action="store_true", help="smoke run: 256 videos, 3 timed steps, batch 16")
    p.add_argument("--json", default=None, help="also write the JSON result line to this file")
    args = p.parse_args(argv)
    gpu = args.device.startswith("cuda")
    if args.quick:
        args.videos, args.batch_size = 256, min(args.batch_size, 16)
        args.steps = args.steps or 3
        args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else 1
    args.steps = args.steps or (100 if gpu else 12)
    args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else (10 if gpu else 2)
    args.shards = args.shards or max(8, 2 * args.workers)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    cfg = Config()
    cfg.train.precision = args.precision
    cfg.data.num_workers = args.workers
    if args.threads:
        torch.set_num_threads(args.threads)
    elif device.type == "cpu":
        torch.set_num_threads(cpu_threads(cfg, 1))  # as train.py: the cores left after the loader workers
    info = machine_info()
    load_start = os.getloadavg()
    print(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} ({torch.get_num_threads()} threads)"
          + (f", GPU {info['gpu']}" if "gpu" in info else "") + f"; device {device}, {args.precision}, "
          f"batch {args.batch_size}, {args.workers} workers" + (", compiled" if args.compile else ""))

    modalities = list(cfg.model.feature_dims)
    root = os.path.join(args.cache, f"frames-v{args.videos}-s{args.shards}-c{cfg.model.num_classes}")
    paths = ensure_frame_shards(root, videos=args.videos, shards=args.shards, classes=cfg.model.num_classes,
                                procs=args.gen_procs or info["cores_usable"])
    consumers = max(1, args.workers)
    per_consumer = args.videos // consumers
    dropped = per_consumer % args.batch_size
    if dropped:
        print(f"note: each loader worker drops its last {dropped} of ~{per_consumer} videos per epoch (drop_last); "
              "choose --videos as a multiple of workers x batch size to waste none")

    torch.manual_seed(0)
    model = AttentionCluster(**cfg.model.model_kwargs()).to(device)
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    net = torch.compile(model) if args.compile else model
    net.train()

    def step(features, labels) -> None:
        with autocast_for(device, args.precision):
            logits = net(features)
        loss = compute_loss(logits, labels, cfg.train.loss)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    ds = VideoDataset(paths, modalities=cfg.model.feature_dims, num_classes=cfg.model.num_classes,
                      seg_num=cfg.model.seg_num, train=True, seed=0, dequantize=False)
    pin = device.type == "cuda" if args.pin_memory == "auto" else args.pin_memory == "on"
    loader = make_loader(ds, args.batch_size, num_workers=args.workers, pin_memory=pin, drop_last=True,
                         persistent_workers=args.workers > 0)

    def batches():
        epoch = 0
        while True:
            ds.set_epoch(epoch)
            n = 0
            for batch in loader:
                n += 1
                yield batch
            if n == 0:
                raise SystemExit(f"no full batch of {args.batch_size} per worker: raise --videos or lower --batch-size")
            epoch += 1

    it = batches()
    fixed = None
    # End to end.
    waited = 0.0
    videos = 0
    for i in range(args.warmup_steps + args.steps):
        if i == args.warmup_steps:
            sync()
            start = time.perf_counter()
            waited = 0.0
            videos = 0
        t0 = time.perf_counter()
        batch = next(it)
        waited += time.perf_counter() - t0
        features, labels = batch_to_device(batch, modalities, device)
        if fixed is None:
            fixed = (features, labels)
        step(features, labels)
        videos += labels.shape[0]
    sync()
    e2e_s = time.perf_counter() - start
    e2e = videos / e2e_s
    wait_share = waited / e2e_s
    dtype = str(batch[modalities[0]].dtype).replace("torch.", "")
    del it  # stops the workers of this generator's loader iteration

    # The model step alone, on one batch already on the device.
    for _ in range(max(1, args.warmup_steps // 2)):
        step(*fixed)
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step(*fixed)
    sync()
    alone = args.steps * args.batch_size / (time.perf_counter() - t0)

    load = os.getloadavg()
    print()
    print(f"End-to-end training: {args.videos} synthetic videos in {args.shards} shards, batch {args.batch_size}, "
          f"{args.workers} workers, {args.precision}, batches travel as {dtype} (pin_memory {pin}); "
          f"{args.steps} timed steps after {args.warmup_steps}; load average {load_start[0]:.1f} at start, "
          f"{load[0]:.1f} at end")
    print(table(["measurement", "videos/s", "share of time waiting for data"],
                [["end to end (loader + step)", f"{e2e:.1f}", f"{wait_share:.1%}"],
                 ["model step alone (batch on device)", f"{alone:.1f}", "-"],
                 ["pipeline efficiency (end to end / alone)", f"{e2e / alone:.2f}", "-"]]))
    result = {"benchmark": "train", "machine": info, "device": str(device), "precision": args.precision,
              "workers": args.workers, "batch_size": args.batch_size, "compile": args.compile, "videos": args.videos,
              "shards": args.shards, "steps": args.steps, "batch_dtype": dtype, "pin_memory": pin,
              "load_average": [round(load_start[0], 2), round(load[0], 2)],
              "end_to_end_videos_per_s": round(e2e, 2), "data_wait_share": round(wait_share, 4),
              "model_step_videos_per_s": round(alone, 2), "pipeline_efficiency": round(e2e / alone, 3)}
    report(result, args.json)
    return result


if __name__ == "__main__":
    main()
