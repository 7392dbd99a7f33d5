"""Prediction: stream any number of videos to a Kaggle CSV or a JSON-lines file, with label names.

Memory is flat in the number of videos: each batch's top-k is written as soon as it is computed. The output file is
written through a unique temporary file next to it that replaces it only when complete, so an interrupted run leaves
the old file or none, never a partial one; Kaggle CSV rows go through the csv module (ids with commas, quotes or line
breaks are quoted, never forged into rows).

Under ``torchrun`` every rank predicts its share of the videos (the dataset splits shards, or records of few shards,
over ranks: each video exactly once) and streams its rows to a part file next to the output; rank 0 then merges
the parts into the one output file. Rows are always written in ``--data`` order, shard by shard and record by
record within a shard, whatever the number of ranks and DataLoader workers, so 1 and N processes write the same
file. The merge holds 40 bytes per video in memory on rank 0 (its sort keys and file offsets), not the rows.
"""

from __future__ import annotations

import csv
import io
import json
import os
import uuid
from array import array
from pathlib import Path

import numpy as np
import torch

from attncluster import distributed
from attncluster.config import Config
from attncluster.data.dataset import VideoDataset
from attncluster.errors import ConfigError, plural
from attncluster.inference import default_top_k, load_class_names, load_vocabulary, prediction_record
from attncluster.outputs import atomic_output, check_output

FORMATS = (".csv", ".jsonl")
# RFC 4180 CSV: CRLF line ends, so that the csv module quotes an id holding a lone CR as well as one with a comma, a
# quote or a LF (it quotes a field that holds any character of the line terminator).
CSV_HEADER = "VideoId,LabelConfidencePairs\r\n"


class OrderedVideos(VideoDataset):
    """VideoDataset whose samples also carry ``shard`` (index in the resolved --data list) and ``record``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._shard_index: dict[str, int] = {}
        for i, path in enumerate(self.shards):
            self._shard_index.setdefault(path, i)

    def _sample(self, video, path, i, rng):
        sample = super()._sample(video, path, i, rng)
        if sample is not None:
            sample["shard"], sample["record"] = self._shard_index[path], int(i)
        return sample


def format_row(vid: str, classes: np.ndarray, scores: np.ndarray, suffix: str, names: list[str] | None) -> str:
    """One output line (with its newline): a Kaggle CSV row or a JSON object."""
    if suffix == ".csv":
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\r\n").writerow(
            [vid, " ".join(f"{int(k)} {float(p):.6f}" for k, p in zip(classes, scores))])
        return buf.getvalue()
    return json.dumps(prediction_record(vid, classes, scores, names)) + "\n"


# --------------------------------------------------------------------------------------------------------------------
# Part files: what one rank predicted, each row with its (shard, record) key. A row is framed by a header line
# "shard record nbytes", so ids with any characters (commas, quotes, newlines) pass through unchanged.


def part_paths(output: str, token: str, world_size: int) -> list[str]:
    out = Path(output)
    return [str(out.with_name(f".{out.name}.{token}.part{r}of{world_size}")) for r in range(world_size)]


def write_part_row(f, shard: int, record: int, row: str) -> None:
    data = row.encode("utf-8")
    f.write(f"{shard} {record} {len(data)}\n".encode("ascii"))
    f.write(data)


def merge_parts(parts: list[str], output: str, header: str = "") -> int:
    """Sort the rows of ``parts`` by (shard, record) into ``output`` (atomically); returns the row count."""
    shard, record, part, offset, size = array("q"), array("q"), array("q"), array("q"), array("q")
    for p, path in enumerate(parts):
        with open(path, "rb") as f:
            while line := f.readline():
                s, r, n = (int(x) for x in line.split())
                shard.append(s), record.append(r), part.append(p), offset.append(f.tell()), size.append(n)
                f.seek(n, os.SEEK_CUR)
    order = np.lexsort((np.frombuffer(record, dtype=np.int64), np.frombuffer(shard, dtype=np.int64)))
    files = [open(path, "rb") for path in parts]
    try:
        with atomic_output(output, "wb", newline=None) as dst:
            dst.write(header.encode("utf-8"))
            for i in order:
                src = files[part[i]]
                src.seek(offset[i])
                dst.write(src.read(size[i]))
    finally:
        for f in files:
            f.close()
    return len(order)


def predict(
    cfg: Config | None,
    weights: str | None,
    data: list[str],
    output: str,
    top_k: int | None = None,
    vocab: str | None = None,
    device: str | None = None,
    log=print,
    onnx: str | None = None,
) -> int:
    """The ``predict`` verb. Writes ``output`` (.csv Kaggle format or .jsonl); returns the number of videos.

    ``top_k`` defaults to 20 (the Kaggle submission format), or to every class when the model has fewer. With
    ``onnx`` (a graph from ``attncluster export``) onnxruntime runs the model; its settings come from the graph, and
    class names from the graph's vocabulary when ``vocab`` is not given. Under torchrun rank 0 returns the total and
    the other ranks their own share.
    """
    from attncluster.data.dataset import make_loader
    from attncluster.inference import TorchPredictor

    if distributed.env_info().rank == 0:
        check_output(output)  # before any model or data is loaded: a directory or an unwritable folder fails now
    predictor = None
    if onnx is not None:
        from attncluster.export import OnnxPredictor, model_config

        predictor = OnnxPredictor(onnx)
        cfg = model_config(predictor, cfg)
    suffix = Path(output).suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(f"--output {output}: unknown format {suffix!r}; use .csv (Kaggle submission) or .jsonl")
    if top_k is None:
        top_k = default_top_k(cfg.model.num_classes)
    if not 0 < top_k <= cfg.model.num_classes:
        raise ConfigError(f"--top-k {top_k}: must be in 1..{cfg.model.num_classes} (model.num_classes)")
    names = load_vocabulary(vocab, cfg.model.num_classes) if vocab else getattr(predictor, "vocabulary", None)
    info = distributed.env_info()
    dev = distributed.device_for(device if predictor is None else "cpu", info)
    distributed.setup(dev.type)
    parts: list[str] = []
    try:
        if predictor is None:
            predictor = TorchPredictor(cfg, weights, dev)
        ds = OrderedVideos(data, modalities=cfg.model.feature_dims, num_classes=cfg.model.num_classes,
                           seg_num=cfg.model.seg_num, train=False, skip_corrupt=cfg.data.skip_corrupt,
                           dequantize=False, fmt=cfg.data.format, class_names=load_class_names(cfg),
                           rank=info.rank, world_size=info.world_size)
        loader = make_loader(ds, cfg.eval.batch_size, num_workers=cfg.data.num_workers, pin_memory=dev.type == "cuda")
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        token = distributed.gather_objects(uuid.uuid4().hex[:12])[0]  # rank 0's: one name set for the whole job
        parts = part_paths(output, token, info.world_size)
        count = _predict_part(predictor, loader, list(cfg.model.feature_dims), parts[info.rank], top_k, suffix, names)
        distributed.barrier()  # every part is complete before rank 0 reads them
        if info.rank == 0:
            count = merge_parts(parts, output, CSV_HEADER if suffix == ".csv" else "")
            log(f"predict: {plural(count, 'video')} -> {output}" + (f" ({info.world_size} ranks)" if info.is_distributed else ""))
        distributed.barrier()  # the parts are read before anyone removes its own
        return count
    finally:
        if parts and os.path.exists(parts[info.rank]):
            os.unlink(parts[info.rank])
        distributed.cleanup()


@torch.no_grad()
def _predict_part(predictor, loader, modalities: list[str], part: str, top_k: int, suffix: str,
                  names: list[str] | None) -> int:
    """Stream this rank's videos through ``predictor`` into its part file; returns the number of videos."""
    from attncluster.inference import score_batches, top_classes

    count = 0
    with open(part, "wb") as f:
        for batch, scores, _ in score_batches(predictor, loader):
            classes, top = top_classes(scores, top_k)  # (N, k), highest first; ties by lower class index
            for j, vid in enumerate(batch["id"]):
                row = format_row(vid, classes[j], top[j], suffix, names)
                write_part_row(f, int(batch["shard"][j]), int(batch["record"][j]), row)
            count += len(batch["id"])
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
