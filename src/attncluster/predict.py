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

Leftovers. A part file is created exclusively and locked while its rank writes it; a run killed with ``kill -9``
can leave its part or temporary file (``.OUTPUT.*.partRofW``, ``.OUTPUT.*.tmp``) next to the output, and the next
``predict`` to the same output deletes those that no live process holds (:func:`attncluster.outputs.remove_stale`).

``predict --videos`` (:func:`predict_videos`, :func:`classify_videos`) classifies video files directly: features
are extracted in memory (``extract/pipeline.py``) and the rows go through the same writer and Kaggle formatter.
"""

from __future__ import annotations

import json
import os
import re
import sys
import uuid
from array import array
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from attncluster import distributed
from attncluster.config import Config
from attncluster.data.dataset import VideoDataset
from attncluster.errors import ConfigError, plural, writing
from attncluster.inference import class_names_for, default_top_k, prediction_record
from attncluster.outputs import (atomic_output, check_output, kaggle_header, kaggle_row, lock_fd, remove_stale,
                                 write_kaggle_csv)

FORMATS = (".csv", ".jsonl")
CSV_HEADER = kaggle_header()  # RFC 4180, CRLF line ends (outputs.kaggle_row)
PART_SUFFIX = r"\.part\d+of\d+"  # a rank's part file: .OUTPUT.TOKEN.partRofW
_PART_NAME = re.compile(r"^\.(?P<output>.+)\.[0-9a-f]{12}" + PART_SUFFIX + "$")


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
        return kaggle_row(vid, classes, scores)
    return json.dumps(prediction_record(vid, classes, scores, names)) + "\n"


# --------------------------------------------------------------------------------------------------------------------
# Part files: what one rank predicted, each row with its (shard, record) key. A row is framed by a header line
# "shard record nbytes", so ids with any characters (commas, quotes, newlines) pass through unchanged.


def part_paths(output: str, token: str, world_size: int) -> list[str]:
    out = Path(output)
    return [str(out.with_name(f".{out.name}.{token}.part{r}of{world_size}")) for r in range(world_size)]


class PartFile:
    """A rank's part file for writing: created exclusively (never through a planted link) and locked while it is
    written (so :func:`~attncluster.outputs.remove_stale` keeps it); a failed write (disk full) is one FileError
    naming the output file the part is for."""

    def __init__(self, part: str) -> None:
        m = _PART_NAME.match(Path(part).name)
        self.output = str(Path(part).with_name(m.group("output"))) if m else part
        with writing(self.output):
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        lock_fd(fd)
        self.f = os.fdopen(fd, "wb", buffering=1 << 20)

    def write(self, data: bytes) -> None:
        with writing(self.output):
            self.f.write(data)

    def close(self) -> None:
        with writing(self.output):
            self.f.close()

    def __enter__(self) -> PartFile:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        else:  # the error being raised is the one to report, not a second one from flushing the rest
            try:
                self.f.close()
            except OSError:
                pass


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
    vocab: str | bool | None = None,
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
        remove_stale(output, extra=PART_SUFFIX)  # parts a killed run left (those of a live run are locked: kept)
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
    names = class_names_for(cfg.model.num_classes, cfg, vocab, getattr(predictor, "vocabulary", None))
    info = distributed.env_info()
    dev = distributed.device_for(device if predictor is None else "cpu", info)
    distributed.setup(dev.type)
    parts: list[str] = []
    try:
        if predictor is None:
            predictor = TorchPredictor(cfg, weights, dev)
        ds = OrderedVideos.from_config(cfg, data, train=False, dist=info)
        loader = make_loader(ds, cfg.eval.batch_size, num_workers=cfg.data.num_workers, pin_memory=dev.type == "cuda")
        with writing(output):
            Path(output).parent.mkdir(parents=True, exist_ok=True)
        token = distributed.gather_objects(uuid.uuid4().hex[:12])[0]  # rank 0's: one name set for the whole job
        parts = part_paths(output, token, info.world_size)
        count = _predict_part(predictor, loader, parts[info.rank], top_k, suffix, names)
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
def _predict_part(predictor, loader, part: str, top_k: int, suffix: str, names: list[str] | None) -> int:
    """Stream this rank's videos through ``predictor`` into its part file; returns the number of videos."""
    from attncluster.inference import score_batches, top_classes

    count = 0
    with PartFile(part) as f:
        for batch, scores, _ in score_batches(predictor, loader):
            classes, top = top_classes(scores, top_k)  # (N, k), highest first; ties by lower class index
            for j, vid in enumerate(batch["id"]):
                row = format_row(vid, classes[j], top[j], suffix, names)
                write_part_row(f, int(batch["shard"][j]), int(batch["record"][j]), row)
            count += len(batch["id"])
    return count


# --------------------------------------------------------------------------------------------------------------------
# predict --videos: video files in, the same records and the same writer out


def classify_videos(paths: Iterable[str], config, weights: str, vocab: str | bool | None = None, top_k: int | None = None,
                    extractor=None, device: str | None = None, skip_bad: bool = False,
                    on_bad: Callable[[str, str], None] | None = None, fps: float | None = None,
                    max_frames: int | None = None, num_workers: int | str = "auto",
                    **pipeline_options) -> list[dict]:
    """Classify video files with a trained model: extract in memory, sample ``seg_num`` frames as eval does, score.

    Args:
        paths: video files, globs, directories, .list files or URLs.
        config: a :class:`~attncluster.config.Config` or a config path.
        weights: the model checkpoint.
        vocab: YouTube-8M ``vocabulary.csv`` for names, False for none (default: ``data.class_names`` of the
            config, else the shipped YouTube-8M names for a 3,862-class model; see ``inference.class_names_for``).
        top_k: classes per video (default :func:`~attncluster.inference.default_top_k`: 20, or every class when the
            model has fewer, as ``predict``).
        extractor: an ``attncluster.extract.pipeline.Extractor``; by default one is made from ``fps`` (1),
            ``max_frames`` (300), ``num_workers`` and ``pipeline_options`` (as ``run_extract``).
        skip_bad: skip bad files (reported to ``on_bad``) instead of raising.

    Returns:
        One record per video, as ``predict``'s JSONL: ``{"id", "classes", "scores"[, "names"]}``, highest first
        (:func:`~attncluster.inference.top_classes`: among equal scores the lower class first).
    """
    from attncluster.config import load_config
    from attncluster.data.sampling import sample_indices
    from attncluster.inference import TorchPredictor, default_top_k, top_classes

    try:
        from attncluster.extract.decode import DEFAULT_FPS, DEFAULT_MAX_FRAMES
        from attncluster.extract.pipeline import default_extractor, expand_videos
    except ImportError as e:
        raise ConfigError(f"predict --videos needs attncluster.extract and PyAV ({e}); install the video extra: "
                          "pip install 'attncluster[video]'") from None

    cfg = config if isinstance(config, Config) else load_config(config)
    k = default_top_k(cfg.model.num_classes) if top_k is None else top_k
    if not 0 < k <= cfg.model.num_classes:
        raise ConfigError(f"--top-k {k}: must be in 1..{cfg.model.num_classes} (model.num_classes)")
    names = class_names_for(cfg.model.num_classes, cfg, vocab)
    if extractor is None:
        extractor = default_extractor(DEFAULT_FPS if fps is None else fps,
                                      DEFAULT_MAX_FRAMES if max_frames is None else max_frames, num_workers,
                                      pipeline_options.pop("device", None) or device, **pipeline_options)
    for m, dim in cfg.model.feature_dims.items():
        if extractor.modalities.get(m) != dim:
            raise ConfigError(f"model.feature_dims.{m} = {dim}, but the extractor gives "
                              f"{extractor.modalities}; use the preset the model was trained on")
    predictor = TorchPredictor(cfg, weights, device)
    records: list[dict] = []
    batch: list[dict] = []

    def flush() -> None:
        feats = {m: np.stack([v[m] for v in batch]) for m in cfg.model.feature_dims}  # (N, seg_num, F)
        classes, top = top_classes(predictor.scores(feats), k)  # (N, k) each
        for v, cls, sc in zip(batch, classes, top):
            records.append(prediction_record(v["id"], cls, sc, names))
        batch.clear()

    def warn(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    for rec in extractor.iter_extract(expand_videos(paths, log=warn), skip_bad=skip_bad, on_bad=on_bad):
        n = min(len(rec[m]) for m in cfg.model.feature_dims)
        idx = sample_indices(n, cfg.model.seg_num, None)  # the same frames eval would see in the shards
        batch.append({"id": rec["id"], **{m: rec[m][idx] for m in cfg.model.feature_dims}})
        if len(batch) >= cfg.eval.batch_size:
            flush()
    if batch:
        flush()
    return records


def predict_videos(cfg: Config, weights: str, videos: list[str], output: str | None = None, top_k: int | None = None,
                   vocab: str | bool | None = None, skip_bad: bool = False, **extract_options) -> list[dict]:
    """``predict --videos``: classify video files, their features extracted in memory (:func:`classify_videos`).

    Records are predict's JSONL records (id, classes, scores[, names]): printed one JSON line each to stdout, or
    written to ``output`` (.jsonl, or .csv in the Kaggle format, :func:`attncluster.outputs.write_kaggle_csv`)
    through the one atomic writer. ``extract_options``: fps, max_frames, num_workers, extractor and the
    FeaturePipeline options (preset, inception, pca, vggish, vggish_pca, random_weights, ...).
    """
    suffix = Path(output).suffix.lower() if output is not None else ".jsonl"
    if suffix not in FORMATS:
        raise ConfigError(f"--output {output}: unknown format {suffix!r}; use .csv (Kaggle submission) or .jsonl")
    if output is not None:
        check_output(output)  # before any backbone is built or video decoded
    records = classify_videos(videos, cfg, weights, vocab=vocab, top_k=top_k, skip_bad=skip_bad,
                              on_bad=lambda path, message: print(f"skipped: {message}", file=sys.stderr),
                              **extract_options)
    if output is None:
        sys.stdout.write("".join(json.dumps(r) + "\n" for r in records))
        sys.stdout.flush()
        return records
    with atomic_output(output) as f:
        if suffix == ".csv":
            write_kaggle_csv(f, records)
        else:
            f.writelines(json.dumps(r) + "\n" for r in records)
    print(f"predict: {plural(len(records), 'video')} -> {output}", file=sys.stderr)
    return records
