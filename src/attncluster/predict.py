"""Prediction: stream any number of videos to a Kaggle CSV or a JSON-lines file, with label names.

Memory is flat in the number of videos: each batch's top-k is written as soon as it is computed, into a unique
temporary file next to the output that replaces it only when complete (:func:`attncluster.outputs.atomic_output`).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import torch

from attncluster import distributed
from attncluster.config import Config
from attncluster.data.transfer import batch_to_device
from attncluster.errors import ConfigError, plural
from attncluster.inference import autocast_for, load_class_names, load_model, load_vocabulary, predict_scores
from attncluster.outputs import atomic_output, check_output

FORMATS = (".csv", ".jsonl")


def predict(
    cfg: Config,
    weights: str,
    data: list[str],
    output: str,
    top_k: int | None = None,
    vocab: str | None = None,
    device: str | None = None,
    log=print,
) -> int:
    """The ``predict`` verb. Writes ``output`` (.csv Kaggle format or .jsonl); returns the number of videos.

    ``top_k`` defaults to 20 (the Kaggle submission format), or to every class when the model has fewer.
    """
    from attncluster.data.dataset import VideoDataset, make_loader

    if distributed.env_info().is_distributed:
        raise ConfigError("predict runs in one process (it streams to one file); run it without torchrun")
    check_output(output)  # before any model or data is loaded: a directory or an unwritable folder fails now
    suffix = Path(output).suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(f"--output {output}: unknown format {suffix!r}; use .csv (Kaggle submission) or .jsonl")
    if top_k is None:
        top_k = min(20, cfg.model.num_classes)
    if not 0 < top_k <= cfg.model.num_classes:
        raise ConfigError(f"--top-k {top_k}: must be in 1..{cfg.model.num_classes} (model.num_classes)")
    names = load_vocabulary(vocab, cfg.model.num_classes) if vocab else None
    dev = distributed.device_for(device, distributed.DistInfo())
    model = load_model(cfg, weights, dev)
    ds = VideoDataset(data, modalities=cfg.model.feature_dims, num_classes=cfg.model.num_classes,
                      seg_num=cfg.model.seg_num, train=False, skip_corrupt=cfg.data.skip_corrupt, dequantize=False,
                      fmt=cfg.data.format, class_names=load_class_names(cfg), rank=0, world_size=1)
    loader = make_loader(ds, cfg.eval.batch_size, num_workers=cfg.data.num_workers, pin_memory=dev.type == "cuda")
    modalities = list(cfg.model.feature_dims)
    count = 0
    with atomic_output(output) as f, torch.no_grad():
        # RFC 4180 CSV: CRLF line ends, so that the csv module quotes an id holding a lone CR as well as one with
        # a comma, a quote or a LF (it quotes a field that holds any character of the line terminator)
        writer = csv.writer(f, lineterminator="\r\n") if suffix == ".csv" else None
        if writer is not None:
            writer.writerow(["VideoId", "LabelConfidencePairs"])
        for batch in loader:
            features, _ = batch_to_device(batch, modalities, dev)
            with autocast_for(dev, cfg.train.precision):
                logits = model(features)
            scores, classes = predict_scores(logits, cfg.train.loss).topk(top_k, dim=1)  # (N, k), highest first
            scores, classes = scores.cpu().numpy(), classes.cpu().numpy()
            for vid, s, c in zip(batch["id"], scores, classes):
                if writer is not None:  # the csv module quotes ids holding a comma, a quote or a line break
                    writer.writerow([vid, " ".join(f"{int(k)} {float(p):.6f}" for k, p in zip(c, s))])
                else:
                    rec: dict[str, Any] = {"id": vid, "classes": [int(k) for k in c],
                                           "scores": [round(float(p), 6) for p in s]}
                    if names is not None:
                        rec["names"] = [names[int(k)] for k in c]
                    f.write(json.dumps(rec) + "\n")
            count += len(batch["id"])
    log(f"predict: {plural(count, 'video')} -> {output}")
    return count
