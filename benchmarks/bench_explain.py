"""``attncluster explain`` benchmark: time per video and peak memory are flat in the number of videos.

Runs ``explain`` over the first N videos of synthetic quickstart-format shards (20 classes, 5..100 frames, the
quickstart model with random weights: the cost does not depend on the weights), each N in a fresh process, and
reports seconds per video and the process's peak RSS (``ru_maxrss``). With figures (JSON + PNG + index) and without
(JSON + index only, to reach more videos). Flat means: the per-video time and the peak RSS of the largest N are those
of the smallest, within noise. (``ru_maxrss`` includes the allocator's high-water mark; ``tracemalloc`` over 2000
videos showed no growth of the Python heap.)

``--repeat N`` runs explain over the same N videos ``--passes`` times (default 3) in one process (JSON only, no loader worker) and
prints the current RSS (``VmRSS``) after each pass: what a growing process would show, without the high-water
noise of the peak.

Usage::

    python benchmarks/bench_explain.py            # figures: 10 vs 40 videos; JSON only: 300, 1000, 3000
    python benchmarks/bench_explain.py --quick    # figures: 3 vs 9; JSON only: 10 vs 40
    python benchmarks/bench_explain.py --repeat 3000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_data import machine_info, report, table  # noqa: E402


def child(args) -> None:
    """One measurement: explain the first N videos, print {"seconds", "videos", "peak_rss_mib"}."""
    from attncluster.config import load_config
    from attncluster.explain import explain
    from attncluster.quickstart import quickstart_config_path

    cfg = load_config(quickstart_config_path(), [f"data.valid={args.data}"])
    explain(cfg, args.weights, args.out, data=[args.data], device="cpu", log=lambda m: None, max_videos=1,
            figures=args.figures)  # warm-up: imports, first figure
    t0 = time.perf_counter()
    n = explain(cfg, args.weights, args.out, data=[args.data], device="cpu", log=lambda m: None,
                max_videos=args.n, figures=args.figures)
    seconds = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"videos": n, "seconds": seconds, "peak_rss_mib": round(rss, 1)}))


def current_rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def repeat(n: int, json_path: str | None, passes: int = 3) -> None:
    from attncluster.config import load_config
    from attncluster.explain import explain

    tmp, data, weights = setup(n)
    cfg = load_config(_config_path(), ["data.num_workers=0"])
    after = []
    for _ in range(passes):
        explain(cfg, weights, os.path.join(tmp, "out"), data=[data], device="cpu", log=lambda m: None,
                max_videos=n, figures=False)
        after.append(round(current_rss_mib(), 1))
    print(f"explain {n} videos x {passes} passes, VmRSS after each pass (MiB): {after}")
    report({"benchmark": "explain_repeat", "machine": machine_info(), "videos": n, "passes": passes, "rss_after_pass_mib": after,
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}, json_path)


def _config_path():
    from attncluster.quickstart import quickstart_config_path

    return quickstart_config_path()


def setup(videos: int) -> tuple[str, str, str]:
    """Synthetic quickstart-format validation shards and a random quickstart model: (folder, data, weights)."""
    import torch

    from attncluster.config import load_config
    from attncluster.data.synth import write_synthetic
    from attncluster.model import AttentionCluster

    tmp = tempfile.mkdtemp(prefix="attncluster-bench-explain-")
    data = os.path.join(tmp, "valid")
    write_synthetic(data, videos=videos, classes=20, shards=max(1, videos // 500), seed=1, max_frames=100,
                    prefix="validate")
    torch.manual_seed(0)
    weights = os.path.join(tmp, "model.pt")
    torch.save({"model": AttentionCluster(**load_config(_config_path()).model.model_kwargs()).state_dict()}, weights)
    return tmp, data, weights


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default=None, help="also write the JSON line here")
    p.add_argument("--repeat", type=int, default=None, metavar="N", help="3 passes over N videos in one process")
    p.add_argument("--passes", type=int, default=3, help="with --repeat: passes (default 3)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--figures", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    if args.repeat:
        return repeat(args.repeat, args.json, args.passes)

    sizes = {"figures": (3, 9), "json": (10, 40)} if args.quick else {"figures": (10, 40), "json": (300, 1000, 3000)}
    tmp, data, weights = setup(max(max(v) for v in sizes.values()))
    rows, results = [], {}
    for mode, ns in sizes.items():
        for n in ns:
            out = os.path.join(tmp, f"out-{mode}-{n}")
            cmd = [sys.executable, __file__, "--child", "--n", str(n), "--data", data, "--weights", weights,
                   "--out", out] + (["--figures"] if mode == "figures" else [])
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            r = json.loads(done.stdout.strip().splitlines()[-1])
            results[f"{mode}_{n}"] = r
            rows.append([mode, n, f"{r['seconds'] / r['videos'] * 1000:.1f}", r["peak_rss_mib"]])
    print(table(["outputs", "videos", "ms / video", "peak RSS (MiB)"], rows))
    summary = {"benchmark": "explain", "machine": machine_info(), "results": results}
    for mode, ns in sizes.items():
        ra, rb = results[f"{mode}_{ns[0]}"], results[f"{mode}_{ns[-1]}"]
        per_video = (rb["seconds"] / rb["videos"]) / (ra["seconds"] / ra["videos"])
        summary[f"{mode}_time_per_video_ratio"] = round(per_video, 3)
        summary[f"{mode}_peak_rss_delta_mib"] = round(rb["peak_rss_mib"] - ra["peak_rss_mib"], 1)
    report(summary, args.json)


if __name__ == "__main__":
    main()
