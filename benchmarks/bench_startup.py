"""The video path's fixed cost: ``attncluster extract`` of a 2 s clip against ``python -c "import torch, av"``.

Issue 14's goal: extracting a 2 s clip takes at most 1.8x the bare ``import torch, av``, measured in the same run.
Both are fresh processes (what a user pays), timed in interleaved rounds; the median of each is kept, and the
ratio is of medians. Wall time is what the goal is about; CPU time (user + sys of the child) is printed beside it
because it is far less sensitive to other jobs on a shared machine.

``--baseline SRC`` times the same extract with another source tree first on ``PYTHONPATH`` (for example a
``git worktree`` of an older commit), in the same rounds, so before/after come from one run.

    python benchmarks/bench_startup.py [--rounds 5] [--baseline /tmp/base/src]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


def make_clip(path: str, seconds: float = 2.0, size: tuple[int, int] = (320, 240)) -> None:
    """A 2 s h264 (or mpeg4) + aac clip with moving content, as bench_extract.py makes."""
    sys.path.insert(0, str(HERE))
    from bench_extract import make_clip as make

    make(path, seconds, size, 0)


def timed(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall, cpu) seconds of one child process; raises if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--baseline", metavar="SRC", help="another src/ tree to time the same extract with")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench_startup_"))
    try:
        clip = str(work / "clip.mp4")
        make_clip(clip)
        trees = {"extract": str(SRC)}
        if args.baseline:
            trees["extract (baseline)"] = args.baseline
        runs: dict[str, list[tuple[float, float]]] = {"import torch, av": [], **{k: [] for k in trees}}
        base_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        for r in range(args.rounds):
            runs["import torch, av"].append(timed([sys.executable, "-c", "import torch, av"], base_env))
            for name, src in trees.items():
                out = work / f"out{r}_{len(runs[name])}"
                env = {**base_env, "PYTHONPATH": src}
                runs[name].append(timed([sys.executable, "-m", "attncluster", "extract", clip, "--random-weights", "0",
                                         "--output", str(out)], env))
                shutil.rmtree(out, ignore_errors=True)
        ref_wall = statistics.median(w for w, _ in runs["import torch, av"])
        ref_cpu = statistics.median(c for _, c in runs["import torch, av"])
        print(f"{'':22s} {'wall s':>8s} {'x import':>9s} {'cpu s':>8s} {'x import':>9s}   (median of {args.rounds})")
        for name, rows in runs.items():
            wall = statistics.median(w for w, _ in rows)
            cpu = statistics.median(c for _, c in rows)
            print(f"{name:22s} {wall:8.2f} {wall / ref_wall:9.2f} {cpu:8.2f} {cpu / ref_cpu:9.2f}")
        print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; cores: {os.cpu_count()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
