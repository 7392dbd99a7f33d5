"""Extraction speed: decode-only, model-only and end-to-end sampled frames/s, against the naive loop.

The workload: ``--videos`` clips made here with PyAV (h264 + aac, ``--size``, 25 fps, ``--seconds`` long, moving
content so the codec works), extracted with the YouTube-8M preset and random weights (``FeaturePipeline.create(
random_weights=0)``: the same networks and cost as with the real weights).

* decode-only: ``Extractor`` with its worker processes, no model (frames sampled, converted to RGB, shipped back).
* model-only: the backbones on the already decoded frames (batched, as the extractor calls them) + VGGish per video.
* end-to-end: ``Extractor.iter_extract`` (workers decode while the main process runs the model).
* naive: one process, one video after another, one frame per backbone call.

Rounds are interleaved (every variant once per round) and the best round is kept; the machine is shared and noisy.
The target: end-to-end >= 80% of min(decode-only, model-only), i.e. the workers keep the model fed.

    PYTHONPATH=src python benchmarks/bench_extract.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from fractions import Fraction

import numpy as np


def make_clip(path: str, seconds: float, size: tuple[int, int], seed: int) -> None:
    import av

    w, h = size
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    with av.open(path, "w") as c:
        s = c.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        a = c.add_stream("aac", rate=44100, layout="mono")
        n = int(seconds * 25)
        for i in range(n):
            img = np.roll(base, 3 * i, axis=1)  # content moves: real motion for the codec
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
        total = int(seconds * 44100)
        for start in range(0, total, 1024):
            t = np.arange(start, min(total, start + 1024)) / 44100
            f = av.AudioFrame.from_ndarray((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None],
                                           format="fltp", layout="mono")
            f.sample_rate, f.pts = 44100, start
            for p in a.encode(f):
                c.mux(p)
        for p in a.encode():
            c.mux(p)


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = lambda r: "| " + " | ".join(c.ljust(wd) for c, wd in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (wd + 2) for wd in widths) + "|", *map(line, cells)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--videos", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--size", default="320x240", help="WxH of the clips (default 320x240)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--num-workers", default="auto")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--quick", action="store_true", help="2 videos of 4 s, 1 round")
    ap.add_argument("--json", default=None, metavar="PATH")
    args = ap.parse_args()
    if args.quick:
        args.videos, args.seconds, args.rounds = 2, 4.0, 1
    size = tuple(int(x) for x in args.size.split("x"))

    import torch

    from attncluster.extract.decode import decode_video
    from attncluster.extract.features import FeaturePipeline
    from attncluster.extract.pipeline import Extractor

    root = tempfile.mkdtemp(prefix="attncluster-bench-extract-")
    paths = [os.path.join(root, f"clip{i}.mp4") for i in range(args.videos)]
    for i, p in enumerate(paths):
        make_clip(p, args.seconds, size, i)
    pipe = FeaturePipeline.create(preset="yt8m", random_weights=0, device=args.device, precision=args.precision)
    size_hw = getattr(pipe, "frame_size", None)
    decoded = [decode_video(p, size=size_hw) for p in paths]
    frames_total = sum(len(d.frames) for d in decoded)
    workers = Extractor(pipe, num_workers=args.num_workers).num_workers

    def decode_only() -> float:
        ex = Extractor(pipe, num_workers=workers)
        t0 = time.perf_counter()
        n = sum(len(v.frames) for _, status, v in ex._decoded(paths) if status == "ok")
        return n / (time.perf_counter() - t0)

    def model_only() -> float:
        t0 = time.perf_counter()
        frames = np.concatenate([d.frames for d in decoded])
        for i in range(0, len(frames), 32):
            pipe.frame_features(frames[i:i + 32])
        for d in decoded:
            pipe.audio_features(d.audio, 16000)
        return frames_total / (time.perf_counter() - t0)

    def end_to_end() -> float:
        ex = Extractor(pipe, num_workers=workers)
        t0 = time.perf_counter()
        n = sum(len(r["rgb"]) for r in ex.iter_extract(paths))
        return n / (time.perf_counter() - t0)

    def naive() -> float:
        t0 = time.perf_counter()
        n = 0
        for p in paths:
            d = decode_video(p, size=size_hw)
            for f in d.frames:
                pipe.frame_features(f[None])
            pipe.audio_features(d.audio, 16000)
            n += len(d.frames)
        return n / (time.perf_counter() - t0)

    variants = {"decode-only": decode_only, "model-only": model_only, "end-to-end": end_to_end, "naive": naive}
    best: dict[str, float] = {k: 0.0 for k in variants}
    for r in range(args.rounds):
        for name, fn in variants.items():
            fps = fn()
            best[name] = max(best[name], fps)
            print(f"round {r}: {name:12s} {fps:8.2f} frames/s", file=sys.stderr, flush=True)
    slower = min(best["decode-only"], best["model-only"])
    ratio = best["end-to-end"] / slower
    rows = [[k, f"{v:.2f}"] for k, v in best.items()]
    rows.append(["end-to-end / min(decode, model)", f"{ratio:.2f}"])
    rows.append(["end-to-end / naive", f"{best['end-to-end'] / best['naive']:.2f}"])
    print(table(["variant", "sampled frames/s (best round)"], rows))
    result = {"bench": "extract", "videos": args.videos, "seconds": args.seconds, "size": args.size,
              "sampled_frames": frames_total, "decode_workers": workers, "torch_threads": torch.get_num_threads(),
              "device": args.device, "precision": args.precision, "rounds": args.rounds,
              **{k.replace("-", "_") + "_fps": round(v, 3) for k, v in best.items()},
              "e2e_over_slower": round(ratio, 3), "e2e_over_naive": round(best["end-to-end"] / best["naive"], 3)}
    line = json.dumps(result)
    print(line)
    if args.json:
        with open(args.json, "w") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
