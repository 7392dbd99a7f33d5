"""Evaluation: GAP, Hit@1, PERR, mAP and loss (top-1 / top-5 for single-label data) over a whole data set.

Under torchrun every rank evaluates its share of the shards and the per-rank accumulators (each video's top-k
predictions and counts) are gathered and merged, so the numbers equal a single-process run on the same data.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from attncluster import distributed
from attncluster.config import Config
from attncluster.errors import plural
from attncluster.inference import Predictor, TorchPredictor, compute_loss, load_class_names, score_batches
from attncluster.metrics import MetricAccumulator
from attncluster.outputs import atomic_output, check_output


def run_evaluation(predictor: Predictor, loader, cfg: Config) -> dict[str, Any]:
    """Metrics of ``predictor`` (a ``TorchPredictor``, ``export.OnnxPredictor`` or any
    :class:`~attncluster.inference.Predictor`) over ``loader``, merged over all ranks: eval's and training's
    validation loop."""
    acc = MetricAccumulator(cfg.model.num_classes, top_k=cfg.eval.top_k, multi_label=cfg.multi_label)
    for batch, scores, logits in score_batches(predictor, loader):
        loss = compute_loss(torch.from_numpy(logits), batch["labels"], cfg.train.loss)
        acc.update(scores, batch["labels"].numpy(), loss=float(loss))
    return _merged(acc)


def _merged(acc: MetricAccumulator) -> dict[str, Any]:
    """Every rank's accumulator merged: the metrics of a single-process run over all the data."""
    states = distributed.gather_objects(acc.state_dict())
    merged = MetricAccumulator.from_state_dict(states[0])
    for s in states[1:]:
        merged.merge(MetricAccumulator.from_state_dict(s))
    return merged.result()


def format_metrics(m: dict[str, Any]) -> str:
    order = ["gap", "hit_at_1", "perr", "map", "top_1", "top_5", "loss", "segment_map"]
    names = {"gap": "GAP", "hit_at_1": "Hit@1", "perr": "PERR", "map": "mAP", "top_1": "top-1", "top_5": "top-5", "loss": "loss",
             "segment_map": "segment MAP"}
    parts = [f"{names[k]} {m[k]:.4f}" for k in order if k in m and m[k] is not None]
    return ", ".join(parts) + f" ({plural(m.get('num_videos', 0), 'video')})"


def evaluate(
    cfg: Config | None,
    weights: str | None,
    data: list[str] | None = None,
    device: str | None = None,
    output: str | None = None,
    log=print,
    onnx: str | None = None,
    segments: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``eval`` verb: load ``weights`` into the config's model and evaluate on ``data`` (default data.valid).

    With ``onnx`` (a graph from ``attncluster export``) onnxruntime runs it instead: the model settings come from
    the graph's metadata, ``cfg`` (optional) gives the data and eval settings. ``segments`` (``top_n``,
    ``classes_csv``, ``scoring``): also the YouTube-8M 2019 ``segment_map`` (:mod:`attncluster.segments`).
    """
    from attncluster.data.dataset import VideoDataset, make_loader
    from attncluster.errors import ConfigError

    predictor = None
    if onnx is not None:
        from attncluster.export import OnnxPredictor, model_config

        predictor = OnnxPredictor(onnx)
        cfg = model_config(predictor, cfg)
    specs = data or cfg.data.valid
    if not specs:
        raise ConfigError("eval: no data; pass --data PATHS or set data.valid in the config")
    info = distributed.env_info()
    if output and info.rank == 0:
        check_output(output)  # before evaluating: a directory or an unwritable folder fails now, not at the end
    dev = distributed.device_for(device if predictor is None else "cpu", info)
    distributed.setup(dev.type)
    try:
        if predictor is None:
            predictor = TorchPredictor(cfg, weights, dev)
        ds = VideoDataset.from_config(cfg, specs, train=False, dist=info)
        loader = make_loader(ds, cfg.eval.batch_size, num_workers=cfg.data.num_workers,
                             pin_memory=dev.type == "cuda")
        metrics = run_evaluation(predictor, loader, cfg)
        if metrics.get("num_labels") == 0:
            from attncluster.errors import DataError

            raise DataError(f"eval: none of the {plural(metrics['num_videos'], 'video')} in {' '.join(map(str, specs))} "
                            "has labels (a test partition, or extract without --labels), so GAP, Hit@1 and PERR "
                            "would mean nothing; use predict for unlabelled videos")
        if segments is not None:
            from attncluster.segments import ModelPredictor, evaluate_segments

            scorer = predictor if predictor is not None else ModelPredictor(model, cfg, dev)  # the model loaded above
            metrics.update(evaluate_segments(scorer, cfg, specs, **segments))
        if distributed.is_main_process():
            log(f"eval: {format_metrics(metrics)}")
            if output:
                with atomic_output(output) as f:
                    f.write(json.dumps(metrics, indent=2) + "\n")
                log(f"eval: metrics written to {output}")
        return metrics
    finally:
        distributed.cleanup()
