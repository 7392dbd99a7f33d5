"""Feature-extraction models alone: Inception-v3 (2015 graph, 299 x 299) frames/s and VGGish examples/s.

Random weights (``--random-weights``-style: speed does not depend on the values), ``inference_mode``, batch sizes 1,
8 and 32. Inception runs the way :class:`~attncluster.extract.features.FeaturePipeline` runs it, with channels-last
activations and weights, next to the default contiguous (NCHW) layout as the baseline, in samples that alternate
between the two; "vs NCHW" is the median ratio of neighbouring samples. Also the whole rgb path of the pipeline
(``frame_features``: uint8 frames -> TF1 resize -> network -> PCA -> quantization) at one batch size, and analytic
GFLOP/s (counted from the modules' conv / linear shapes: Inception-v3 at 299 is 5.71 G multiply-adds = 11.42 GFLOP
per frame; VGGish 0.864 G multiply-adds = 1.73 GFLOP per 0.96 s example).

Usage::

    python benchmarks/bench_extract_models.py                   # CPU, ~4 minutes on 2 idle cores
    python benchmarks/bench_extract_models.py --quick           # smoke run
    python benchmarks/bench_extract_models.py --device cuda --precisions fp32 bf16 --batch-sizes 1 8 32 128
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_data import machine_info, report, table  # noqa: E402

from attncluster.extract.features import FeaturePipeline  # noqa: E402
from attncluster.extract.inception import InceptionV3  # noqa: E402
from attncluster.extract.vggish import VGGish  # noqa: E402
from attncluster.inference import autocast_for  # noqa: E402

INCEPTION_GFLOP = 11.42  # per 299 x 299 frame (2 x 5.711 G multiply-adds)
VGGISH_GFLOP = 1.73  # per 96 x 64 example (2 x 0.864 G multiply-adds: convs 0.796 G + fc 0.067 G)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def sample(fn, min_seconds: float, device: torch.device) -> float:
    """Seconds per call of ``fn``, over as many calls as fit in ``min_seconds`` (at least one)."""
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / n


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--samples", type=int, default=3, help="samples per variant, alternating (default 3)")
    ap.add_argument("--min-seconds", type=float, default=1.0, help="minimum duration of one sample")
    ap.add_argument("--pipeline-batch", type=int, default=8, help="batch size of the frame_features row")
    ap.add_argument("--quick", action="store_true", help="smoke run: batch 1 and 2, one short sample")
    ap.add_argument("--json", help="also write the JSON line here")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.samples, args.min_seconds, args.pipeline_batch = [1, 2], 1, 0.0, 2
    device = torch.device(args.device)
    started = time.time()

    gen = torch.Generator().manual_seed(0)
    nets = {"channels_last": InceptionV3(generator=gen).eval().to(device, memory_format=torch.channels_last)}
    nets["NCHW"] = InceptionV3(generator=torch.Generator().manual_seed(0)).eval().to(device)
    vggish = VGGish(generator=torch.Generator().manual_seed(1)).eval().to(device)
    rows, results = [], []
    with torch.inference_mode():
        for precision in args.precisions:
            for batch in args.batch_sizes:
                x = torch.randn(batch, 3, 299, 299, generator=gen).to(device)
                inputs = {"channels_last": x.contiguous(memory_format=torch.channels_last), "NCHW": x}
                times: dict[str, list[float]] = {k: [] for k in nets}
                for name in nets:  # warm-up (oneDNN / cuDNN picks its kernels on the first call)
                    with autocast_for(device, precision):
                        nets[name](inputs[name])
                for _ in range(args.samples):
                    for name, net in nets.items():
                        def run(net=net, inp=inputs[name]):
                            with autocast_for(device, precision):
                                net(inp)
                        times[name].append(sample(run, args.min_seconds, device))
                ratio = statistics.median(b / a for a, b in zip(times["channels_last"], times["NCHW"]))
                print(f"# inception {precision} batch {batch}: " + ", ".join(
                    f"{n} {batch / statistics.median(t):.2f} frames/s" for n, t in times.items()), file=sys.stderr,
                    flush=True)
                for name in nets:
                    fps = batch / statistics.median(times[name])
                    rows.append(["Inception-v3 299", precision, batch, name, f"{fps:.2f} frames/s",
                                 f"{fps * INCEPTION_GFLOP:.0f}", f"{ratio:.2f}x" if name == "channels_last" else "-"])
                    results.append({"model": "inception", "precision": precision, "batch": batch, "layout": name,
                                    "frames_per_s": round(fps, 3)})
                ex = torch.randn(batch, 1, 96, 64, generator=gen).to(device) - 4
                with autocast_for(device, precision):
                    vggish(ex)
                vt = []
                for _ in range(args.samples):
                    def run_v():
                        with autocast_for(device, precision):
                            vggish(ex)
                    vt.append(sample(run_v, args.min_seconds, device))
                eps = batch / statistics.median(vt)
                rows.append(["VGGish", precision, batch, "NCHW", f"{eps:.1f} examples/s", f"{eps * VGGISH_GFLOP:.0f}",
                             "-"])
                results.append({"model": "vggish", "precision": precision, "batch": batch,
                                "examples_per_s": round(eps, 2)})

        # The pipeline's rgb path: preprocessing (uint8 640 x 360 frames, TF1 resize) + network + PCA + quantization.
        pipe = FeaturePipeline.create(random_weights=0, device=device, precision=args.precisions[0],
                                      batch_size=args.pipeline_batch)
        frames = np.random.default_rng(0).integers(0, 256, (args.pipeline_batch, 360, 640, 3), dtype=np.uint8)
        pipe.frame_features(frames)
        pt = [sample(lambda: pipe.frame_features(frames), args.min_seconds, device) for _ in range(args.samples)]
        pfps = args.pipeline_batch / statistics.median(pt)
        rows.append(["frame_features (640x360 uint8 -> uint8 1024)", args.precisions[0], args.pipeline_batch,
                     "channels_last", f"{pfps:.2f} frames/s", "-", "-"])
        results.append({"model": "pipeline_rgb", "precision": args.precisions[0], "batch": args.pipeline_batch,
                        "frames_per_s": round(pfps, 3)})

    print(table(["model", "precision", "batch", "layout", "throughput (median)", "GFLOP/s", "vs NCHW"], rows))
    result = {"bench": "extract_models", "device": str(device), "results": results, "machine": machine_info(),
              "seconds": round(time.time() - started, 1), "load_avg": os.getloadavg()}
    report(result, args.json)
    return result


if __name__ == "__main__":
    main()
