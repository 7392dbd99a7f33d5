"""``attncluster quickstart``: synthesise data, train, evaluate, predict, and compare with mean pooling.

Everything happens on the local machine with no download, in a few minutes on a 2-core CPU.
"""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path

import torch

from attncluster.config import Config, load_config
from attncluster.errors import plural

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
        ds = VideoDataset(specs, modalities=cfg.model.feature_dims, num_classes=cfg.model.num_classes,
                          seg_num=cfg.model.seg_num, train=False, fmt=cfg.data.format)
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
        (root / MARKER).write_text("written by attncluster quickstart; a re-run replaces this folder's outputs\n")
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
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

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
    log(f"  attncluster eval --config {train_dir / 'config.yaml'} --weights {best}")
    log(f"  attncluster predict --config {train_dir / 'config.yaml'} --weights {best} --data {data / 'valid'} "
        f"--output {run_dir / 'submission.csv'}")
    log(f"  attncluster inspect {data / 'valid'} | head")
    log("  attncluster train --config configs/youtube8m.yaml   # the reference setup on real YouTube-8M shards")

    # Where the attention looks (attncluster explain): mass on the frames that carry the labels vs their share.
    from attncluster.explain import quickstart_explain

    summary.update(quickstart_explain(cfg, str(best), data / "valid", run_dir / "explain", device=device, log=log))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
