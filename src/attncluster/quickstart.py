"""``attncluster quickstart``: synthesise data, train, evaluate, predict, and compare with mean pooling.

Everything happens on the local machine with no download, in a few minutes on a 2-core CPU. Its last step shows where
the attention looks: on synthetic data the frames that carry a video's labels are known (:func:`signal_attention`,
:func:`synthetic_signal_frames`), and ``attncluster explain`` draws a few videos with those frames shaded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attncluster.config import Config, load_config
from attncluster.errors import DataError, plural
from attncluster.outputs import atomic_write_text

TRAIN_VIDEOS = 2000
VALID_VIDEOS = 500
MAX_FRAMES = 100


def quickstart_config_path() -> Path:
    return Path(str(resources.files("attncluster") / "configs" / "quickstart.yaml"))


def mean_pooling_gap(cfg: Config, epochs: int = 30, seed: int = 0) -> float:
    """Validation GAP of the same MLP head on frames averaged over time (no attention).

    The baseline sees the same sampled frames as the attention model; it just averages them.
    """
    from attncluster.data.dataset import VideoDataset, make_loader
    from attncluster.metrics import gap

    def load(specs):
        ds = VideoDataset.from_config(cfg, specs, train=False, dequantize=True)
        xs, ys = [], []
        for b in make_loader(ds, 256):
            xs.append(torch.cat([b[m].float().mean(dim=1) for m in cfg.model.feature_dims], dim=1))  # (N, sum F)
            ys.append(b["labels"])
        return torch.cat(xs), torch.cat(ys)

    x_train, y_train = load(cfg.data.train)
    x_valid, y_valid = load(cfg.data.valid)
    torch.manual_seed(seed)
    sizes = [x_train.shape[1], *cfg.model.hidden_sizes]
    layers: list[torch.nn.Module] = []
    for i, o in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(i, o), torch.nn.Tanh()]
    head = torch.nn.Sequential(*layers, torch.nn.Linear(sizes[-1], cfg.model.num_classes))
    opt = torch.optim.Adam(head.parameters(), lr=cfg.train.learning_rate)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x_train), generator=g).split(cfg.train.batch_size):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(head(x_train[idx]), y_train[idx],
                                                                        reduction="sum") / len(idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        scores = torch.sigmoid(head(x_valid)).numpy()
    return gap(scores, y_valid.numpy(), cfg.eval.top_k)


# What a quickstart writes into its folder; a re-run replaces exactly these (and nothing else a user put there).
OUTPUTS = ("data", "train", "explain", "metrics.json", "predictions.jsonl", "summary.json", "submission.csv")
MARKER = ".quickstart"


def quickstart(run_dir: str | Path = "runs/quickstart", device: str | None = None, log=print, *,
               train_videos: int = TRAIN_VIDEOS, valid_videos: int = VALID_VIDEOS,
               overrides: list[str] | None = None) -> dict:
    """Run the five steps in ``run_dir``. A previous quickstart there is replaced (its outputs are removed first)
    and the folder is locked while this one runs. ``train_videos``, ``valid_videos`` and ``overrides`` (applied
    to configs/quickstart.yaml) make a smaller run, e.g. for tests."""
    from attncluster.errors import ConfigError
    from attncluster.rundir import RunDirectory

    root = Path(run_dir)
    found = [n for n in OUTPUTS if (root / n).exists()]
    if found and not ((root / MARKER).exists() or (root / "summary.json").exists()):
        raise ConfigError(f"--run-dir {root}: holds {', '.join(found)} not written by a quickstart; a quickstart "
                          "replaces only its own previous run, so choose another --run-dir")
    run = RunDirectory.open(root, overwrite=True, owned=OUTPUTS)
    try:
        atomic_write_text(root / MARKER, "written by attncluster quickstart; a re-run replaces this folder's outputs\n")
        return _quickstart(Path(run_dir), device, log, train_videos, valid_videos, list(overrides or []))
    finally:
        run.close()


def _quickstart(run_dir: Path, device: str | None, log, train_videos: int, valid_videos: int,
                extra: list[str]) -> dict:
    from attncluster.data.synth import write_synthetic
    from attncluster.evaluate import evaluate
    from attncluster.predict import predict
    from attncluster.train import fit

    t_start = time.perf_counter()
    data = run_dir / "data"
    cfg_path = quickstart_config_path()
    base = load_config(cfg_path, extra)
    classes = base.model.num_classes
    log(f"[1/5] synthesising YouTube-8M-format frame-level shards under {data} ...")
    write_synthetic(data / "train", videos=train_videos, classes=classes, shards=4, seed=0, max_frames=MAX_FRAMES)
    write_synthetic(data / "valid", videos=valid_videos, classes=classes, shards=1, seed=1, max_frames=MAX_FRAMES,
                    prefix="validate")
    overrides = [f"data.train={data / 'train'}", f"data.valid={data / 'valid'}", *extra]
    cfg = load_config(cfg_path, overrides)

    log(f"[2/5] training ({plural(cfg.train.epochs, 'epoch')}, {plural(train_videos, 'video')}) ...")
    train_dir = run_dir / "train"
    fit(cfg, run_dir=train_dir, device=device, log=lambda m: log("    " + m), overwrite=True)
    best = train_dir / "checkpoints" / "best.pt"
    if not best.exists():  # no validation ran (fewer epochs than train.valid_interval): the last one is the best
        best = train_dir / "checkpoints" / "last.pt"

    log("[3/5] evaluating the best checkpoint on the validation shards ...")
    metrics_path = run_dir / "metrics.json"
    metrics = evaluate(cfg, str(best), device=device, output=str(metrics_path), log=lambda m: log("    " + m))

    log("[4/5] predicting with label names ...")
    pred_path = run_dir / "predictions.jsonl"
    predict(cfg, str(best), [str(data / "valid")], str(pred_path), top_k=3, vocab=str(data / "valid" / "vocabulary.csv"),
            device=device, log=lambda m: log("    " + m))
    with open(pred_path) as f:
        for _, line in zip(range(3), f):
            rec = json.loads(line)
            pairs = ", ".join(f"{n} ({s:.3f})" for n, s in zip(rec["names"], rec["scores"]))
            log(f"    {rec['id']}: {pairs}")

    log("[5/5] the same MLP on mean-pooled frames (no attention), for comparison ...")
    baseline = mean_pooling_gap(cfg)
    summary = {**metrics, "mean_pooling_gap": baseline, "seconds": time.perf_counter() - t_start}
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")

    log("")
    log(f"Attention Clusters  GAP {metrics['gap']:.4f}  Hit@1 {metrics['hit_at_1']:.4f}  PERR {metrics['perr']:.4f}"
        f"  mAP {metrics['map']:.4f}")
    log(f"Mean pooling        GAP {baseline:.4f}   <- averaging frames cannot tell a class's conjunction frames "
        "from decoy frames; attention can")
    log(f"Done in {summary['seconds']:.0f}s. Outputs:")
    log(f"  data         {data}/train, {data}/valid (with vocabulary.csv)")
    kept = ", ".join(n for n in ("best.pt", "last.pt") if (train_dir / "checkpoints" / n).exists())
    log(f"  run          {train_dir} (config.yaml, metrics.jsonl, checkpoints/ {kept})")
    log(f"  metrics      {metrics_path}")
    log(f"  predictions  {pred_path}")
    log("Next:")
    log(f"  attncluster eval --weights {best}                # the checkpoint stores its config")
    log(f"  attncluster predict --weights {best} --data {data / 'valid'} --output {run_dir / 'submission.csv'}")
    log(f"  attncluster inspect {data / 'valid'} | head")
    log("  attncluster train --config configs/youtube8m.yaml   # the reference setup on real YouTube-8M shards")

    # Where the attention looks (attncluster explain): mass on the frames that carry the labels vs their share.
    summary.update(quickstart_explain(cfg, str(best), data / "valid", run_dir / "explain", device=device, log=log))
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


# ----------------------------------------------------------------------------------------------------------------
# Where the attention looks: evidence on the synthetic data (the planted signal frames)


def synthetic_signal_frames(rgb: np.ndarray, labels: Iterable[int], classes: int,
                            prototype_seed: int = 0) -> np.ndarray:
    """Which frames of a synthetic video (:mod:`attncluster.data.synth`) carry one of its labels' signal.

    A label k's event frames hold both prototypes p_k and q_k; decoy frames hold only one. A frame counts when its
    projection on p_k and on q_k both reach half the prototype's squared norm (the signal gives the full norm, the
    background noise about ±6 % of it on 1024 dims).

    Args:
        rgb: (T, F) dequantized rgb frames.
        labels: the video's labels.
        classes: number of classes of the synthetic dataset.
        prototype_seed: the dataset's prototype seed.

    Returns:
        (T,) bool.
    """
    from attncluster.data.synth import class_prototypes

    p, q = class_prototypes(classes, {"rgb": rgb.shape[1]}, prototype_seed=prototype_seed)["rgb"]
    mask = np.zeros(rgb.shape[0], dtype=bool)
    for k in labels:
        hit_p = rgb @ p[k] >= 0.5 * float(p[k] @ p[k])
        hit_q = rgb @ q[k] >= 0.5 * float(q[k] @ q[k])
        mask |= hit_p & hit_q
    return mask


def signal_attention(cfg: Config, weights: str, data: list[str], device: str | None = None,
                     prototype_seed: int = 0) -> dict[str, float]:
    """On synthetic data: the share of attention mass on the labels' signal frames against their share of frames.

    Over every video of ``data`` (sampled as eval does) and every modality and unit: ``mass`` is the mean over videos
    of the attention mass (summed over units, divided by their number) on sampled frames that carry a label's
    signal; ``share`` is the mean fraction of sampled frames that carry it. Mass well above share means the
    units look at the frames that decide the class.

    Returns:
        ``{"signal_mass": ..., "signal_share": ..., "ratio": mass / share, "videos": n}``.
    """
    from attncluster import distributed
    from attncluster.data.dataset import VideoDataset, make_loader
    from attncluster.data.records import dequantize
    from attncluster.explain import attention_batch
    from attncluster.inference import load_model

    dev = distributed.device_for(device, distributed.DistInfo())
    model = load_model(cfg, weights, dev)
    ds = VideoDataset.from_config(cfg, data, train=False, dist=distributed.DistInfo())  # one process
    mass, share, n = 0.0, 0.0, 0
    for batch in make_loader(ds, 256):
        feats = {m: dequantize(batch[m]).to(dev) for m in cfg.model.feature_dims}
        attention, _ = attention_batch(model, feats, cfg.train.loss, cfg.train.precision)
        rgb = feats["rgb"].cpu().numpy()
        for i in range(len(batch["id"])):
            labels = np.flatnonzero(batch["labels"][i].numpy())
            signal = synthetic_signal_frames(rgb[i], labels, cfg.model.num_classes, prototype_seed)  # (L,)
            per_modality = [a[i][signal].sum() / a[i].shape[1] for a in attention.values()]
            mass += float(np.mean(per_modality))
            share += float(signal.mean())
            n += 1
    if n == 0:
        raise DataError(f"{' '.join(data)}: no videos")
    return {"signal_mass": mass / n, "signal_share": share / n, "ratio": (mass / n) / max(share / n, 1e-12),
            "videos": n}


def quickstart_explain(cfg: Config, weights: str, valid: str | Path, output: str | Path, videos: int = 3,
                       device: str | None = None, log=print) -> dict[str, Any]:
    """The quickstart's explain step: signal-frame attention over the validation set and figures of a few videos
    (the planted signal shaded). Returns the summary entries."""
    from attncluster.explain import explain

    stats = signal_attention(cfg, weights, [str(valid)], device=device)

    def planted(info, frames):
        return "planted signal", synthetic_signal_frames(frames["rgb"], info["labels"], cfg.model.num_classes)

    explain(cfg, weights, output, data=[str(valid)], vocab=str(Path(valid) / "vocabulary.csv"), top_k=5,
            device=device, max_videos=videos, mark=planted, log=lambda m: None)
    log("")
    log(f"Where the attention looks (attncluster explain, {stats['videos']} validation videos):")
    log(f"  the frames that carry a video's labels are {stats['signal_share']:.0%} of the sampled frames and get "
        f"{stats['signal_mass']:.0%} of the attention ({stats['ratio']:.1f}x their share)")
    log(f"  figures      {Path(output) / 'index.html'} ({videos} videos: ID.png, ID.json)")
    return {"signal_attention_mass": stats["signal_mass"], "signal_frame_share": stats["signal_share"],
            "signal_attention_ratio": stats["ratio"], "explain_dir": str(output)}
