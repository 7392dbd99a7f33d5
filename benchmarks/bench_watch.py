"""``watch`` speed: the real-time factor (seconds of video per second of wall time) with the YouTube-8M backbones.

The workload: a clip made here with PyAV (``--size``, 25 fps, h264/mpeg4 + aac, ``--seconds`` long, a bright block
in its middle third), watched with the YouTube-8M preset and random weights (``FeaturePipeline.create(
random_weights=0)``: the same Inception-v3 (2015 layout, TF1 resize to 299), PCA, VGGish and quantization as the
real weights, so the same cost) and a randomly initialised model of ``configs/youtube8m_video_level.yaml``'s size.

Variants (interleaved round by round, the best round kept; the machine is shared):

* ``file``: ``watch`` on the file: frames go through the backbone in batches (as fast as the machine allows).
* ``live``: ``watch`` on the same bytes written into a pipe at once (a live source that is ahead of the model: read
  by a thread, the frames that queued up while the model ran go through the backbone together).

Real-time factor = seconds of video / wall seconds; >= 1 keeps up with a live source at 1 sampled frame per second.
CPU seconds (all threads of the process) per second of video are reported beside it: on a shared machine the wall
figures move with the load, the CPU cost much less.
It also reports the stages alone (Inception + PCA per frame at batch 1 and 8, VGGish per second of audio, decoding,
the model per window) and checks that random-weight Inception features separate frames with the bright block from
frames without (nearest-mean accuracy over the sampled frames), the property the watch tests rely on.

    PYTHONPATH=src python benchmarks/bench_watch.py [--seconds 30] [--rounds 2] [--device cpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time

import numpy as np


def make_clip(path: str, seconds: int, size: tuple[int, int], block: tuple[float, float]) -> None:
    import av

    w, h = size
    rng = np.random.default_rng(0)
    base = rng.integers(0, 120, (h, w, 3), dtype=np.uint8)
    with av.open(path, "w", format="matroska") as c:
        s = c.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        a = c.add_stream("aac", rate=16000, layout="mono")
        per = 16000 // 25
        for i in range(seconds * 25):
            img = np.roll(base, 3 * i, axis=1).copy()
            if block[0] <= i / 25 < block[1]:
                img[h // 4:3 * h // 4, w // 4:3 * w // 4] = 250
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
            t = np.arange(i * per, (i + 1) * per) / 16000
            f = av.AudioFrame.from_ndarray((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None],
                                           format="fltp", layout="mono")
            f.sample_rate, f.pts = 16000, i * per
            for p in a.encode(f):
                c.mux(p)
        for st in (s, a):
            for p in st.encode():
                c.mux(p)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--window", type=float, default=10.0)
    ap.add_argument("--stride", type=float, default=1.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch

    from attncluster.config import load_config
    from attncluster.extract.decode import decode_video
    from attncluster.extract.pipeline import make_pipeline
    from attncluster.inference import TorchPredictor
    from attncluster.model import AttentionCluster
    from attncluster.watch import watch

    w, h = (int(x) for x in args.size.split("x"))
    tmp = tempfile.mkdtemp(prefix="bench-watch-")
    clip = os.path.join(tmp, "clip.mkv")
    block = (args.seconds / 3, 2 * args.seconds / 3)
    make_clip(clip, args.seconds, (w, h), block)
    pipe = make_pipeline(random_weights=0, device=args.device, precision=args.precision)
    cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "src", "attncluster", "configs",
                                   "youtube8m_video_level.yaml"), [])
    torch.manual_seed(0)
    ckpt = os.path.join(tmp, "model.pt")
    torch.save({"model": AttentionCluster(**cfg.model.model_kwargs()).state_dict()}, ckpt)
    predictor = TorchPredictor(cfg, ckpt, args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    # Stages alone.
    d = decode_video(clip)
    stages = {}

    def timed(key, fn, n):  # wall and CPU (all threads) seconds per unit
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync()
        stages[key] = (time.perf_counter() - t0) / n
        stages[key.replace("_s_", "_cpu_s_")] = (time.process_time() - c0) / n

    timed("decode_s_per_video_second", lambda: decode_video(clip), args.seconds)
    pipe.frame_features(d.frames[:2])  # warm-up
    frames = d.frames[:8]
    for b in (1, 8):
        timed(f"inception_pca_s_per_frame_batch{b}",
              lambda: [pipe.frame_features(frames[i:i + b]) for i in range(0, len(frames), b)], len(frames))
    timed("vggish_s_per_second", lambda: pipe.audio_features(d.audio[:16000 * 8]), 8)
    x = {m: np.zeros((1, cfg.model.seg_num, dim), np.uint8) for m, dim in cfg.model.feature_dims.items()}
    predictor.scores(x)
    timed("model_s_per_window", lambda: [predictor.scores(x) for _ in range(5)], 5)

    # Random-weight Inception separates the block: nearest class mean over the sampled frames.
    rgb = pipe.frame_features(d.frames).astype(np.float32)
    on = (d.timestamps >= block[0]) & (d.timestamps < block[1])
    mu_on, mu_off = rgb[on].mean(0), rgb[~on].mean(0)
    pred = np.linalg.norm(rgb - mu_on, axis=1) < np.linalg.norm(rgb - mu_off, axis=1)
    separation = float((pred == on).mean())

    def run_file():
        return watch(clip, predictor, pipe, window=args.window, stride=args.stride, seg_num=cfg.model.seg_num,
                     emit=lambda r: None, status=lambda s: None, threshold=0.99)

    def run_live():
        r, wfd = os.pipe()

        def feed():
            with open(clip, "rb") as f, os.fdopen(wfd, "wb") as out:
                out.write(f.read())

        threading.Thread(target=feed, daemon=True).start()
        with os.fdopen(r, "rb") as f:
            return watch(f, predictor, pipe, window=args.window, stride=args.stride, seg_num=cfg.model.seg_num,
                         emit=lambda r: None, status=lambda s: None, threshold=0.99)

    best: dict[str, dict] = {}
    for rnd in range(args.rounds):
        for name, fn in (("file", run_file), ("live", run_live)):
            t0, c0 = time.perf_counter(), time.process_time()
            st = fn()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            res = {"frames": st.frames, "video_s": st.media_seconds, "wall_s": round(wall, 2),
                   "frames_per_s": round(st.frames / wall, 3), "realtime_factor": round(st.media_seconds / wall, 3),
                   "cpu_s_per_video_s": round(cpu / st.media_seconds, 3),
                   "load_average": round(os.getloadavg()[0], 1)}
            print(f"round {rnd} {name}: {res}", file=sys.stderr, flush=True)
            if name not in best or res["realtime_factor"] > best[name]["realtime_factor"]:
                best[name] = res
    load = os.getloadavg()[0]
    out = {"size": args.size, "seconds": args.seconds, "device": args.device, "precision": args.precision,
           "torch_threads": torch.get_num_threads(), "load_average_1min": round(load, 2),
           "stages": {k: round(v, 4) for k, v in stages.items()}, "separation_nearest_mean": separation,
           "variants": best}
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
