"""Prediction: stream any number of videos to a Kaggle CSV or a JSON-lines file, with label names.

Memory is flat in the number of videos: each batch's top-k is written as soon as it is computed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from attncluster import distributed
from attncluster.config import Config
from attncluster.data.transfer import batch_to_device
from attncluster.errors import ConfigError
from attncluster.inference import autocast_for, load_class_names, load_model, load_vocabulary, predict_scores

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
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(output).with_name(Path(output).name + ".tmp")
    count = 0
    with open(tmp, "w", newline="") as f, torch.no_grad():
        if suffix == ".csv":
            f.write("VideoId,LabelConfidencePairs\n")
        for batch in loader:
            features, _ = batch_to_device(batch, modalities, dev)
            with autocast_for(dev, cfg.train.precision):
                logits = model(features)
            scores, classes = predict_scores(logits, cfg.train.loss).topk(top_k, dim=1)  # (N, k), highest first
            scores, classes = scores.cpu().numpy(), classes.cpu().numpy()
            for vid, s, c in zip(batch["id"], scores, classes):
                if suffix == ".csv":
                    f.write(f"{vid}," + " ".join(f"{int(k)} {float(p):.6f}" for k, p in zip(c, s)) + "\n")
                else:
                    rec: dict[str, Any] = {"id": vid, "classes": [int(k) for k in c],
                                           "scores": [round(float(p), 6) for p in s]}
                    if names is not None:
                        rec["names"] = [names[int(k)] for k in c]
                    f.write(json.dumps(rec) + "\n")
            count += len(batch["id"])
    tmp.replace(output)
    log(f"predict: {count} videos -> {output}")
    return count



def predict_videos(cfg: Config, weights: str, videos: list[str], output: str | None = None, top_k: int | None = None,
                   vocab: str | None = None, skip_bad: bool = False, **extract_options) -> list[dict]:
    """``predict --videos``: classify video files, their features extracted in memory (``extract/pipeline.py``).

    Records are predict's JSONL records (id, classes, scores[, names]): printed one JSON line each to stdout, or
    written to ``output`` (.jsonl, or .csv in the Kaggle format). ``extract_options``: fps, max_frames,
    num_workers and the FeaturePipeline options (preset, inception, pca, vggish, vggish_pca, random_weights, ...).
    """
    import sys

    from attncluster.extract.pipeline import classify_videos

    suffix = Path(output).suffix.lower() if output is not None else ".jsonl"
    if suffix not in FORMATS:
        raise ConfigError(f"--output {output}: unknown format {suffix!r}; use .csv (Kaggle submission) or .jsonl")
    records = classify_videos(videos, cfg, weights, vocab=vocab, top_k=top_k, skip_bad=skip_bad,
                              on_bad=lambda path, message: print(f"skipped: {message}", file=sys.stderr),
                              **extract_options)
    if suffix == ".csv":
        text = "VideoId,LabelConfidencePairs\n" + "".join(
            f"{r['id']}," + " ".join(f"{c} {p:.6f}" for c, p in zip(r["classes"], r["scores"])) + "\n" for r in records)
    else:
        text = "".join(json.dumps(r) + "\n" for r in records)
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(output).with_name(Path(output).name + ".tmp")
        tmp.write_text(text)
        tmp.replace(output)
        print(f"predict: {len(records)} videos -> {output}", file=sys.stderr)
    return records
