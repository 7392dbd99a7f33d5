"""Does the model learn on REAL YouTube-8M video-level data? GAP per epoch against two baselines, same split, same run.

Features are read through the project's reader (``open_shard``, the real TFRecord shards in
``../shared/data/yt8m-2018-video-level``) and held in memory; every model sees the same shuffled batches of the same
training videos and is scored with :func:`attncluster.metrics.gap` (top 20) on the same held-out videos:

* ``logreg``: logistic regression on the concatenated [mean_rgb, mean_audio] (1152 -> 3862);
* ``mlp``: one hidden layer, 1152 -> H (ReLU, inverted dropout) -> 3862;
* ``ac``: :class:`attncluster.model.AttentionCluster` built, optimised and scheduled from a config file (``--config``
  plus ``-o`` overrides, exactly as ``attncluster train`` reads them), each video one frame (seg_num 1).

All use train.py's loss (:func:`compute_loss`, BCE summed over classes, mean over videos) and optimiser
(:func:`build_optimizer`, Adam); the AttentionCluster also uses :func:`build_scheduler` (warm-up, cosine).

``diagnose`` measures why a fresh AttentionCluster starts slowly: the scale and the video-dependent share of the
L2-normalised cluster features, each layer's pre-activation std, tanh saturation, and per-layer gradient norms at
initialisation; with ``--steps N`` it then trains N steps and follows tanh saturation and the spread of the hidden
layers and logits between videos.

Usage (from the repository root; ``nice`` because the CPU is shared)::

    PYTHONPATH=src nice -n 10 python benchmarks/bench_learning.py curve --threads 2 \\
        --config src/attncluster/configs/youtube8m_video_level.yaml
    PYTHONPATH=src python benchmarks/bench_learning.py diagnose --threads 2 --steps 60 -o train.batch_size=256
    # tuning without touching the held-out shards: train 0000-0013, score 0014-0015
    PYTHONPATH=src python benchmarks/bench_learning.py curve --train 0-13 --eval 14-15 -o train.learning_rate=3e-3
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_data import machine_info, report, table  # noqa: E402

from attncluster.config import load_config  # noqa: E402
from attncluster.data.dataset import open_shard  # noqa: E402
from attncluster.inference import compute_loss  # noqa: E402
from attncluster.metrics import gap, hit_at_one  # noqa: E402
from attncluster.model import AttentionCluster  # noqa: E402
from attncluster.train import build_optimizer, build_scheduler  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "yt8m-2018-video-level"))
DEFAULT_CONFIG = os.path.join(ROOT, "src", "attncluster", "configs", "youtube8m_video_level.yaml")
MODALITIES = {"rgb": 1024, "audio": 128}
NUM_CLASSES = 3862


def shard_range(text: str) -> list[int]:
    """``"0-15"`` -> [0, ..., 15]; ``"14,15"`` -> [14, 15]."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def load_split(data: str, shards: list[int]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Read ``validate%04d.tfrecord`` shards with the project's reader: ({m: (N, F) float32}, (N, K) multi-hot)."""
    feats: dict[str, list[np.ndarray]] = {m: [] for m in MODALITIES}
    labels: list[np.ndarray] = []
    for i in shards:
        shard = open_shard(os.path.join(data, f"validate{i:04d}.tfrecord"), fmt="yt8m", modalities=MODALITIES,
                           num_classes=NUM_CLASSES)
        for video in shard:
            for m in MODALITIES:
                feats[m].append(video.features[m][0])  # video level: one (1, F) "frame"
            y = np.zeros(NUM_CLASSES, np.float32)
            y[video.labels] = 1.0
            labels.append(y)
    return {m: torch.from_numpy(np.stack(v)) for m, v in feats.items()}, torch.from_numpy(np.stack(labels))


class MLP(nn.Module):
    """Baselines on the concatenated video-level features: no hidden layer = logistic regression."""

    def __init__(self, hidden: int, drop_rate: float) -> None:
        super().__init__()
        width = sum(MODALITIES.values())
        self.net = (nn.Linear(width, NUM_CLASSES) if hidden == 0 else
                    nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(drop_rate),
                                  nn.Linear(hidden, NUM_CLASSES)))

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net(torch.cat([features[m][:, 0] for m in MODALITIES], dim=1))


def frames(features: dict[str, torch.Tensor], idx: torch.Tensor | slice) -> dict[str, torch.Tensor]:
    return {m: x[idx][:, None, :] for m, x in features.items()}  # (N, F) -> (N, L=1, F), as the reader gives


@torch.no_grad()
def score(model: nn.Module, features: dict[str, torch.Tensor], labels: torch.Tensor, batch: int = 512) -> dict:
    model.eval()
    out = [torch.sigmoid(model(frames(features, slice(i, i + batch)))) for i in range(0, len(labels), batch)]
    s, y = torch.cat(out).numpy(), labels.numpy()
    return {"gap": round(gap(s, y, 20), 4), "hit_at_1": round(hit_at_one(s, y), 4)}


def train_curve(name: str, model: nn.Module, cfg, train: tuple, held: tuple, log=print) -> dict:
    """Train ``model`` with ``cfg.train``'s epochs / batch / optimiser / schedule, scoring ``held`` after each epoch."""
    (xf, xy), (hf, hy) = train, held
    n, batch = len(xy), cfg.train.batch_size
    steps_per_epoch = n // batch  # drop_last, as the training loader
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, cfg.train.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    curve, t0 = [], time.perf_counter()
    for epoch in range(cfg.train.epochs):
        model.train()
        order = torch.randperm(n, generator=gen)
        losses = []
        for s in range(steps_per_epoch):
            idx = order[s * batch:(s + 1) * batch]
            loss = compute_loss(model(frames(xf, idx)), xy[idx], "bce")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.train.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            opt.step()
            sched.step()
            losses.append(loss.item())
        row = {"epoch": epoch + 1, "step": (epoch + 1) * steps_per_epoch, "loss": round(float(np.mean(losses)), 3),
               **score(model, hf, hy), "wall_s": round(time.perf_counter() - t0, 1)}
        curve.append(row)
        log(f"{name}: " + " ".join(f"{k} {v}" for k, v in row.items()))
    best = max(curve, key=lambda r: r["gap"])
    return {"model": name, "final_gap": curve[-1]["gap"], "best_gap": best["gap"], "best_epoch": best["epoch"],
            "wall_s": curve[-1]["wall_s"], "curve": curve}


def cmd_curve(args) -> None:
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    train, held = load_split(args.data, shard_range(args.train)), load_split(args.data, shard_range(args.eval))
    print(f"data: train shards {args.train} ({len(train[1])} videos), held-out shards {args.eval} "
          f"({len(held[1])} videos), read in {time.perf_counter() - t0:.1f}s", flush=True)
    cfg = load_config(args.config, args.override)
    results = []
    for name in args.models.split(","):
        if name == "ac":
            torch.manual_seed(cfg.train.seed)
            model = AttentionCluster(**cfg.model.model_kwargs())
            bcfg = cfg
        else:
            torch.manual_seed(cfg.train.seed)
            model = MLP(0 if name == "logreg" else args.mlp_hidden, args.mlp_drop)
            over = [f"train.learning_rate={args.baseline_lr}", f"train.batch_size={args.baseline_batch or cfg.train.batch_size}",
                    f"train.epochs={args.baseline_epochs or cfg.train.epochs}", "train.schedule=constant",
                    "train.warmup_steps=0"]
            bcfg = load_config(args.config, [*args.override, *over])
        results.append(train_curve(name, model, bcfg, train, held))
    print(table(["model", "epochs", "batch", "lr", "final GAP", "best GAP (epoch)", "wall s"],
                [[r["model"], len(r["curve"]), cfg.train.batch_size if r["model"] == "ac" else
                  (args.baseline_batch or cfg.train.batch_size), cfg.train.learning_rate if r["model"] == "ac" else
                  args.baseline_lr, r["final_gap"], f"{r['best_gap']} ({r['best_epoch']})", r["wall_s"]]
                 for r in results]))
    report({"benchmark": "learning", "machine": machine_info(), "threads": args.threads, "config": args.config,
            "overrides": args.override, "train_shards": args.train, "eval_shards": args.eval,
            "train_videos": len(train[1]), "eval_videos": len(held[1]), "model": cfg.model.model_kwargs(),
            "train": vars(cfg.train), "results": results}, args.json)


def _std(t: torch.Tensor) -> float:
    return float(t.float().std())


def cmd_diagnose(args) -> None:
    """Statistics of a freshly initialised AttentionCluster on real videos (one batch, train mode for gradients)."""
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.override)
    feats, labels = load_split(args.data, shard_range(args.train))
    torch.manual_seed(cfg.train.seed)
    idx = torch.randperm(len(labels))[:args.batch]
    x, y = frames(feats, idx), labels[idx]
    model = AttentionCluster(**cfg.model.model_kwargs())
    rows = []
    with torch.no_grad():
        for m, unit in model.attention.items():
            raw = x[m][:, 0]  # (N, F)
            v = raw[:, None, :] * unit.shift_w[:, None] + unit.shift_b[:, None]  # (N, C, F), seg_num 1: a = 1
            signal = (raw[:, None, :] * unit.shift_w[:, None]).norm(dim=2)  # ||w_c x||
            bias = unit.shift_b.abs() * math.sqrt(unit.feature_dim)  # ||b_c 1||
            z = unit(x[m]).view(len(idx), unit.num_clusters, unit.feature_dim)  # (N, C, F)
            # share of each unit's output that varies between videos: 1 - ||E_n z||^2 / E_n ||z||^2
            varying = 1 - float((z.mean(0).pow(2).sum(1) / z.pow(2).sum(2).mean(0)).mean())
            # cosine between two different videos' outputs of the same unit
            zn = z / z.norm(dim=2, keepdim=True)
            cos = float((zn[: len(idx) // 2] * zn[len(idx) // 2: 2 * (len(idx) // 2)]).sum(2).mean())
            rows.append({"modality": m, "raw_norm": round(float(raw.norm(dim=1).mean()), 2),
                         "raw_entry_std": round(_std(raw), 3), "shift_signal_norm": round(float(signal.mean()), 2),
                         "shift_bias_norm": round(float(bias.mean()), 2),
                         "unit_output_norm": round(float(z.norm(dim=2).mean()), 4),
                         "feature_entry_std": round(_std(z), 5), "1/sqrt(C*F)": round(1 / math.sqrt(unit.out_dim), 5),
                         "video_varying_share": round(varying, 3), "cos_between_videos": round(cos, 3),
                         "units_identical_input": bool(x[m].shape[1] == 1)})
        del v
    print(table(list(rows[0]), [list(r.values()) for r in rows]))

    layers = []
    for mode in ("eval", "train"):
        model.train(mode == "train")
        torch.manual_seed(1)
        acts: dict[str, torch.Tensor] = {}
        hooks = [fc.register_forward_hook(lambda mod, inp, out, k=k: acts.__setitem__(k, (inp[0], out)))
                 for k, fc in [*((f"hidden.{i}", fc) for i, fc in enumerate(model.hidden)), ("logits", model.logits)]]
        model.zero_grad()
        loss = compute_loss(model(x), y, "bce")
        loss.backward()
        loss = loss.detach()
        for h in hooks:
            h.remove()
        for k, (inp, pre) in acts.items():
            fc = model.get_submodule(k)
            inp, pre = inp.detach(), pre.detach()
            signal = inp @ fc.weight.detach().T  # the pre-activation without the bias
            row = {"mode": mode, "layer": k, "input_norm": round(float(inp.norm(dim=1).mean()), 3),
                   "preact_std": round(_std(pre), 4), "Wx_std": round(_std(signal), 4),
                   "Wx_std_across_videos": round(float(signal.std(0).mean()), 5),
                   "bias_std": round(_std(fc.bias), 4), "W_std": round(_std(fc.weight), 5),
                   "grad_W_norm": f"{float(fc.weight.grad.norm()):.3g}",
                   "grad_W_rms/W_rms": f"{float(fc.weight.grad.pow(2).mean().sqrt() / fc.weight.pow(2).mean().sqrt()):.3g}"}
            if k != "logits":
                row["tanh_sat>0.9"] = round(float((pre.tanh().abs() > 0.9).float().mean()), 4)
            layers.append(row)
        if mode == "train":
            attn = {f"attention.{m}.{n}": p.grad.norm().item() for m, u in model.attention.items()
                    for n, p in u.named_parameters()}
        layers_loss = float(loss)
    keys = sorted({k for r in layers for k in r}, key=lambda k: list(layers[0]).index(k) if k in layers[0] else 99)
    print(table(keys, [[r.get(k, "") for k in keys] for r in layers]))
    print("train-mode gradient norms of the attention parameters:",
          ", ".join(f"{k} {v:.3g}" for k, v in attn.items()))
    if args.steps:
        after_training(model, cfg, feats, labels, x, args.steps)
    prior = y.mean(0).clamp(1e-6, 1 - 1e-6)
    prior_loss = float(-(y * prior.log() + (1 - y) * (1 - prior).log()).sum(1).mean())
    print(f"loss at init {layers_loss:.1f} (a constant 0.5 would give {NUM_CLASSES * math.log(2):.1f}; the batch's "
          f"class prior gives {prior_loss:.1f})")
    report({"benchmark": "learning-diagnose", "machine": machine_info(), "config": args.config,
            "overrides": args.override, "batch": args.batch, "clusters": rows, "layers": layers,
            "attention_grad_norms": attn, "loss_at_init": layers_loss}, args.json)


def after_training(model: AttentionCluster, cfg, feats, labels, probe: dict, steps: int) -> None:
    """Train ``steps`` steps (the config's batch, optimiser and schedule), printing every ``steps // 5``: tanh
    saturation and the across-video spread of each hidden layer and of the logits, on the fixed ``probe`` batch."""
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, steps)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    n, batch = len(labels), cfg.train.batch_size
    outs: dict[int, torch.Tensor] = {}
    for i, fc in enumerate(model.hidden):
        fc.register_forward_hook(lambda mod, inp, out, k=i: outs.__setitem__(k, out.detach()))
    rows, order, pos = [], torch.randperm(n, generator=gen), 0
    for step in range(1, steps + 1):
        if pos + batch > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx, pos = order[pos:pos + batch], pos + batch
        model.train()
        loss = compute_loss(model(frames(feats, idx)), labels[idx], "bce")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % max(1, steps // 5) == 0:
            model.eval()
            with torch.no_grad():
                logits = model(probe)
            row = {"step": step, "loss": round(loss.item(), 2)}
            for k, pre in outs.items():
                h = pre.tanh()
                row[f"h{k + 1}_sat>0.99"] = round(float((h.abs() > 0.99).float().mean()), 3)
                row[f"h{k + 1}_std_across_videos"] = round(float(h.std(0).mean()), 4)
            row["logit_std_across_videos"] = round(float(logits.std(0).mean()), 3)
            row["logit_mean"] = round(float(logits.mean()), 2)
            rows.append(row)
            print(" ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    print(table(list(rows[0]), [list(r.values()) for r in rows]))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("curve", "diagnose"):
        s = sub.add_parser(name)
        s.add_argument("--config", default=DEFAULT_CONFIG)
        s.add_argument("-o", dest="override", action="append", default=[], metavar="KEY=VALUE")
        s.add_argument("--data", default=DATA)
        s.add_argument("--train", default="0-15", help="training shard numbers (default 0-15)")
        s.add_argument("--threads", type=int, default=2)
        s.add_argument("--json", default=None, help="also write the result line here")
    c = sub.choices["curve"]
    c.add_argument("--eval", default="16-19", help="held-out shard numbers (default 16-19)")
    c.add_argument("--models", default="logreg,mlp,ac", help="comma list of logreg, mlp, ac")
    c.add_argument("--baseline-lr", type=float, default=1e-3)
    c.add_argument("--baseline-batch", type=int, default=None, help="default: the config's batch")
    c.add_argument("--baseline-epochs", type=int, default=None, help="default: the config's epochs")
    c.add_argument("--mlp-hidden", type=int, default=2048)
    c.add_argument("--mlp-drop", type=float, default=0.5)
    sub.choices["diagnose"].add_argument("--batch", type=int, default=256, help="videos in the probe batch")
    sub.choices["diagnose"].add_argument("--steps", type=int, default=0,
                                         help="then train this many steps and follow saturation and spread")
    return p.parse_args(argv)


if __name__ == "__main__":
    a = parse_args()
    (cmd_curve if a.cmd == "curve" else cmd_diagnose)(a)
