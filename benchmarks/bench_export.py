"""Export benchmark: PyTorch fp32 vs onnxruntime fp32 vs onnxruntime with the int8 head, videos/s at batch 256.

Model: the full YouTube-8M config (``configs/youtube8m.yaml``: seg_num 100, rgb 1024 + audio 128, 32 clusters,
hidden 1024 / 4096, 3862 classes, 57.8 M parameters), random weights (speed does not depend on their values), or
``--config/--weights`` of a trained model. Inputs are uint8 (dataset-quantized) batches, as the readers produce them:
every column dequantizes (PyTorch in ``TorchPredictor``, onnxruntime inside the graph) and returns probabilities.

The columns are timed side by side: each round runs every column once, in a rotating order, and the ratios are
taken within a round (the machine is shared and noisy; neighbouring samples share its load). Reported: median
videos/s, the median per-round ratio to PyTorch fp32, file sizes, the export time, and the int8 graph's deviation
from PyTorch on the timing batch. ``--valid PATHS`` also evaluates GAP with PyTorch, fp32 and int8 onnxruntime on
those shards (the config's data settings), the int8 column's GAP change being the figure to check.

Usage::

    python benchmarks/bench_export.py                                  # ~3 minutes on 2 cores
    python benchmarks/bench_export.py --quick                          # smoke run, small model
    python benchmarks/bench_export.py --config run/config.yaml --weights run/checkpoints/best.pt \\
        --valid /data/yt8m-video/validate001[6-9].tfrecord --batch-size 256
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_data import machine_info, report, table  # noqa: E402

from attncluster.config import load_config  # noqa: E402
from attncluster.export import OnnxPredictor, export_onnx  # noqa: E402
from attncluster.inference import TorchPredictor  # noqa: E402
from attncluster.model import AttentionCluster, count_parameters  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=os.path.join(REPO, "configs", "youtube8m.yaml"), help="model config")
    ap.add_argument("--weights", default=None, help="trained weights (default: random weights, seed 0)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--frames", type=int, default=None, help="frames per video (default: the config's seg_num)")
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds (each runs every column once)")
    ap.add_argument("--valid", nargs="+", default=None, help="shards to evaluate GAP on with every column")
    ap.add_argument("--input-dtype", default="uint8", choices=["uint8", "float32"],
                    help="graph inputs: uint8 (frame-level shards) or float32 (video-level shards store floats)")
    ap.add_argument("--quick", action="store_true", help="smoke run: small model, 2 rounds")
    ap.add_argument("--json", default=None, help="also write the JSON line here")
    args = ap.parse_args()

    overrides = ["model.hidden_sizes=[64]", "model.cluster_nums=4", "model.num_classes=50"] if args.quick else []
    cfg = load_config(args.config, overrides)
    rounds = 2 if args.quick else args.rounds
    frames = args.frames or cfg.model.seg_num
    tmp = tempfile.mkdtemp(prefix="bench-export-")
    weights = args.weights
    if weights is None:
        torch.manual_seed(0)
        weights = os.path.join(tmp, "random.pt")
        torch.save({"model": AttentionCluster(**cfg.model.model_kwargs()).state_dict()}, weights)

    log = lambda s: print(s, flush=True)  # noqa: E731
    t = time.perf_counter()
    fp32 = export_onnx(cfg, weights, os.path.join(tmp, "model.onnx"), input_dtype=args.input_dtype, log=log)
    export_s = time.perf_counter() - t
    int8 = export_onnx(cfg, weights, os.path.join(tmp, "model.int8.onnx"), int8=True, input_dtype=args.input_dtype,
                       log=log)

    columns = {
        "PyTorch fp32": TorchPredictor(cfg, weights, torch.device("cpu")),
        "onnxruntime fp32": OnnxPredictor(os.path.join(tmp, "model.onnx")),
        "onnxruntime int8 head": OnnxPredictor(os.path.join(tmp, "model.int8.onnx")),
    }
    params = count_parameters(columns["PyTorch fp32"].model)
    rng = np.random.default_rng(0)
    batch = {m: rng.integers(0, 256, (args.batch_size, frames, f), dtype=np.uint8)
             for m, f in cfg.model.feature_dims.items()}
    if args.input_dtype == "float32":
        from attncluster.data.records import dequantize

        batch = {m: dequantize(v) for m, v in batch.items()}
    outputs = {name: p.scores(batch) for name, p in columns.items()}  # warm-up, and the deviation figures
    ref = outputs["PyTorch fp32"]
    k = min(20, cfg.model.num_classes)
    top = lambda s: np.argsort(-s, axis=1)[:, :k]  # noqa: E731
    deviation = {name: {"max_abs_prob": float(np.abs(out - ref).max()),
                        "top20_identical_frac": float(np.mean(np.all(top(out) == top(ref), axis=1)))}
                 for name, out in outputs.items() if name != "PyTorch fp32"}

    names = list(columns)
    rates: dict[str, list[float]] = {n: [] for n in names}
    ratios: dict[str, list[float]] = {n: [] for n in names}
    load = [os.getloadavg()[0]]
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        this: dict[str, float] = {}
        for name in order:
            t = time.perf_counter()
            columns[name].scores(batch)
            this[name] = args.batch_size / (time.perf_counter() - t)
        for name in names:
            rates[name].append(this[name])
            ratios[name].append(this[name] / this["PyTorch fp32"])
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {this[n]:.0f}/s" for n in names), flush=True)
    load.append(os.getloadavg()[0])

    state = os.path.join(tmp, "state_dict.pt")  # the weights alone (a training checkpoint also holds Adam's state)
    torch.save(columns["PyTorch fp32"].model.state_dict(), state)
    sizes = {"PyTorch fp32": os.path.getsize(state), "onnxruntime fp32": fp32["size_bytes"],
             "onnxruntime int8 head": int8["size_bytes"]}
    rows = []
    for name in names:
        rows.append([name, f"{statistics.median(rates[name]):.0f}", f"{min(rates[name]):.0f}-{max(rates[name]):.0f}",
                     f"{statistics.median(ratios[name]):.2f}", f"{sizes[name] / 2**20:.1f}",
                     f"{deviation[name]['max_abs_prob']:.1e}" if name in deviation else "-",
                     f"{deviation[name]['top20_identical_frac']:.3f}" if name in deviation else "-"])
    print()
    print(f"batch {args.batch_size} x {frames} frames, {params / 1e6:.1f} M parameters, {rounds} rounds, "
          f"torch threads {torch.get_num_threads()}, load {load[0]:.1f} -> {load[1]:.1f}")
    print(table(["column", "videos/s (median)", "range", "vs PyTorch fp32 (median of rounds)", "file MiB",
                 "max |dprob| vs PyTorch", "top-20 identical"], rows))

    result = {"bench": "export", "machine": machine_info(), "batch_size": args.batch_size, "frames": frames,
              "input_dtype": args.input_dtype,
              "params": params, "rounds": rounds, "export_seconds": round(export_s, 1), "loadavg": load,
              "videos_per_s": {n: statistics.median(rates[n]) for n in names},
              "ratio_vs_torch": {n: statistics.median(ratios[n]) for n in names},
              "size_bytes": sizes, "deviation": deviation}
    result["int8_op_share"] = op_profile(os.path.join(tmp, "model.int8.onnx"), batch)
    result["fp32_op_share"] = op_profile(os.path.join(tmp, "model.onnx"), batch)
    if args.valid:
        result["gap"] = evaluate_gap(cfg, weights, columns, args.valid)
    report(result, args.json)


def op_profile(path: str, batch: dict, runs: int = 2) -> dict:
    """Where an onnxruntime graph's time goes: share of node time per op type (onnxruntime's own profiler)."""
    import json

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.log_severity_level = 3
    sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
    for _ in range(runs + 1):
        sess.run(None, batch)
    trace = sess.end_profiling()
    with open(trace) as f:
        events = json.load(f)
    os.unlink(trace)
    per_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + float(e["dur"])
    total = sum(per_op.values()) or 1.0
    share = {op: round(t / total, 3) for op, t in sorted(per_op.items(), key=lambda kv: -kv[1])}
    top = ", ".join(f"{k} {v:.1%}" for k, v in list(share.items())[:8])
    print(f"{os.path.basename(path)}: node time by op type: {top}")
    return share


def evaluate_gap(cfg, weights, columns, valid) -> dict:
    """GAP (and Hit@1) of every column on ``valid``, through the same loops ``attncluster eval`` runs."""
    from attncluster.data.dataset import VideoDataset, make_loader
    from attncluster.evaluate import run_evaluation

    def loader():
        ds = VideoDataset(valid, modalities=cfg.model.feature_dims, num_classes=cfg.model.num_classes,
                          seg_num=cfg.model.seg_num, train=False, dequantize=False, fmt=cfg.data.format)
        return make_loader(ds, cfg.eval.batch_size)

    out = {}
    for name, p in columns.items():
        m = run_evaluation(p, loader(), cfg)  # the one evaluation loop, for every Predictor
        out[name] = {"gap": m["gap"], "hit_at_1": m.get("hit_at_1"), "num_videos": m["num_videos"]}
    base = out["PyTorch fp32"]["gap"]
    rows = [[n, f"{v['gap']:.5f}", f"{v['gap'] - base:+.5f}", f"{v['hit_at_1']:.4f}", v["num_videos"]]
            for n, v in out.items()]
    print()
    print(table(["column", "GAP", "dGAP vs PyTorch fp32", "Hit@1", "videos"], rows))
    return out


if __name__ == "__main__":
    main()
