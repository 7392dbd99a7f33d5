"""YouTube-8M 2019 segments on synthetic 2019-format data: which segment scoring, and what fine-tuning gains.

For each seed: ``synth --segments`` writes train (1200 videos), valid (200) and a held-out test split (300), 10
classes, 30..120 frames, small features (rgb 64, audio 16) so that a 2-core CPU runs it in minutes. Each label of a
video sits in known seconds (a run of 10-20 % of the frames, ``segments_truth.jsonl``); the ratings are those
segments (1), two other segments of the video (0) and the segments of the decoy runs, which carry half of another
class's signal (0 for that class: hard negatives).

1. A video-level model (``train.loss: bce`` on the video labels) is trained on train.
2. ``eval --segments`` on the held-out split with every ``--segment-scoring``: ``segment_map`` (the 2019 metric).
3. The model is fine-tuned on train's ratings (``train.loss: segment_bce``, ``--weights`` the video-level model) and
   evaluated again: segment_map before / after.

Usage::

    python benchmarks/bench_segments.py                 # seeds 0 and 1
    python benchmarks/bench_segments.py --seeds 0 --out /tmp/bench_segments
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

SCORINGS = ("frames", "video", "attention", "blend")
CONFIG = """model:
  feature_dims: {{rgb: 64, audio: 16}}
  cluster_nums: 8
  num_classes: 10
  seg_num: 32
  drop_rate: 0.2
  hidden_sizes: [128]
data:
  train: {root}/train
  valid: {root}/valid
  format: yt8m
  num_workers: 0
train:
  epochs: {epochs}
  batch_size: 64
  learning_rate: {lr}
  loss: {loss}
  seed: {seed}
  log_interval: 100
  valid_interval: 3
eval:
  batch_size: 256
"""


def cli(*args) -> None:
    subprocess.run([sys.executable, "-m", "attncluster", *map(str, args)], check=True, stdout=subprocess.DEVNULL)


def seg_map(cfg: str, weights: str, data: str, scoring: str, out: str) -> float:
    cli("eval", "--config", cfg, "--weights", weights, "--data", data, "--segments", "--segment-scoring", scoring,
        "--output", out)
    with open(out) as f:
        return json.load(f)["segment_map"]


def run(seed: int, root: str) -> dict:
    from attncluster.data.synth import write_synthetic

    kw = dict(classes=10, rgb_dim=64, audio_dim=16, min_frames=30, max_frames=120, segments=True,
              prototype_seed=seed)
    write_synthetic(f"{root}/train", videos=1200, shards=2, seed=10 * seed, **kw)
    write_synthetic(f"{root}/valid", videos=200, shards=1, seed=10 * seed + 1, prefix="validate", **kw)
    write_synthetic(f"{root}/test", videos=300, shards=1, seed=10 * seed + 2, prefix="test", **kw)
    video_cfg, tune_cfg = f"{root}/video.yaml", f"{root}/tune.yaml"
    with open(video_cfg, "w") as f:
        f.write(CONFIG.format(root=root, epochs=6, lr=0.002, loss="bce", seed=seed))
    with open(tune_cfg, "w") as f:
        f.write(CONFIG.format(root=root, epochs=8, lr=0.0005, loss="segment_bce", seed=seed))
    t = time.perf_counter()
    cli("train", "--config", video_cfg, "--run-dir", f"{root}/video")
    video_w = f"{root}/video/checkpoints/best.pt"
    result = {"seed": seed, "untuned": {}, "tuned": {}}
    for s in SCORINGS:
        result["untuned"][s] = seg_map(video_cfg, video_w, f"{root}/test", s, f"{root}/u_{s}.json")
    cli("train", "--config", tune_cfg, "--weights", video_w, "--run-dir", f"{root}/tuned")
    for s in SCORINGS:
        result["tuned"][s] = seg_map(tune_cfg, f"{root}/tuned/checkpoints/last.pt", f"{root}/test", s,
                                     f"{root}/t_{s}.json")
    result["seconds"] = round(time.perf_counter() - t, 1)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="bench_segments_")
    rows = []
    for seed in args.seeds:
        r = run(seed, os.path.join(out, f"seed{seed}"))
        rows.append(r)
        print(json.dumps(r), flush=True)
    print("| seed | model | " + " | ".join(SCORINGS) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in SCORINGS) + " |")
    for r in rows:
        for which in ("untuned", "tuned"):
            print(f"| {r['seed']} | {which} | " + " | ".join(f"{r[which][s]:.4f}" for s in SCORINGS) + " |")


if __name__ == "__main__":
    main()
