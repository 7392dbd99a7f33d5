"""Batching benchmark: one training epoch of ``make_loader`` batches, this tree against a baseline commit.

The baseline (default: the commit before batching by position) has every DataLoader worker build its own batches
from whole shards; this tree counts the records once (headers only), then cuts each rank's part of the epoch
order into batches by position and has worker w build batches w, w + W, ... . Same data, same work per video
(read, CRCs, parse, sample 100 frames with jitter, multi-hot), uint8 frames as training reads them.

Each measurement runs in a fresh process, the two trees alternate within every round, and the median of the
per-round ratios (this tree / baseline, videos/s) is reported: the machine is shared and noisy. The time includes
building the loader (the record count of this tree), so it is what a training epoch costs.

Usage::

    python benchmarks/bench_batching.py                  # 800 videos in 4 shards, workers 0 and 1, 3 rounds
    python benchmarks/bench_batching.py --quick          # smoke run, ~10 s
    python benchmarks/bench_batching.py --baseline f0b9e62 --workers 0 1 2 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

EPOCH = r"""
import json, sys, time
from attncluster.data.dataset import VideoDataset, make_loader
spec = json.loads(sys.argv[1])
t0 = time.perf_counter()
ds = VideoDataset(spec["data"], modalities={"rgb": 1024, "audio": 128}, num_classes=3862, seg_num=100, train=True,
                  dequantize=False, seed=0)
ds.set_epoch(1)
n = sum(len(b["id"]) for b in make_loader(ds, 64, num_workers=spec["workers"]))
print(json.dumps({"videos": n, "seconds": time.perf_counter() - t0}))
"""


def epoch(src: Path, data: Path, workers: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", EPOCH, json.dumps({"data": str(data), "workers": workers})],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", default="f0b9e62", help="git commit of the per-worker batching (default f0b9e62)")
    ap.add_argument("--videos", type=int, default=800)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--max-frames", type=int, default=120)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smoke run: 200 videos, 1 round, 0 workers")
    ap.add_argument("--json", metavar="PATH", help="also write the result lines (a JSON list) to PATH")
    args = ap.parse_args()
    if args.quick:
        args.videos, args.rounds, args.workers = 200, 1, [0]
    lines = []

    sys.path.insert(0, str(REPO / "src"))
    from attncluster.data.synth import write_synthetic

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = tmp / "baseline"
        base.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.baseline, "src"], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
        data = tmp / "data"
        write_synthetic(data, videos=args.videos, classes=20, shards=args.shards, seed=0, max_frames=args.max_frames)
        trees = {"baseline": base / "src", "this tree": REPO / "src"}
        for workers in args.workers:
            ratios, rates = [], {name: [] for name in trees}
            for _ in range(args.rounds):
                r = {}
                for name, src in trees.items():
                    m = epoch(src, data, workers)
                    r[name] = m["videos"] / m["seconds"]
                    rates[name].append(r[name])
                ratios.append(r["this tree"] / r["baseline"])
            line = {"workers": workers, "videos": args.videos, "shards": args.shards,
                    "baseline_videos_per_s": round(statistics.median(rates["baseline"]), 1),
                    "this_tree_videos_per_s": round(statistics.median(rates["this tree"]), 1),
                    "ratio_median": round(statistics.median(ratios), 3),
                    "ratios": [round(x, 3) for x in ratios]}
            print(json.dumps(line), flush=True)
            lines.append(line)
    if args.json:
        Path(args.json).write_text(json.dumps(lines) + "\n")


if __name__ == "__main__":
    main()
