"""Shards -> samples: :class:`VideoDataset`, split across ranks and DataLoader workers, shuffled per epoch.

Sample contract (what one iteration step yields; the default collate stacks a batch along a new first axis):

| key | type | meaning |
| --- | --- | --- |
| ``id`` | str | video id |
| ``<modality>`` | (seg_num, F) float32 tensor; uint8 with ``dequantize=False`` if the source is quantized | frames |
| ``labels`` | (num_classes,) float32 tensor | multi-hot |
| ``num_frames`` | int | frames stored (after the ``max_frames`` cap), before sampling |

Formats (``fmt``): ``"yt8m"`` (YouTube-8M TFRecords, :mod:`attncluster.data.yt8m`), ``"pickle"`` (reference /
PaddleVideo pickles, :mod:`attncluster.data.pickles`), ``"features"`` (labels CSV + per-video ``.npz`` / ``.npy``,
:mod:`attncluster.data.features`), or ``"auto"``: ``.pkl`` / ``.pickle`` -> pickle, ``.csv`` (or a directory
holding ``labels.csv``) -> features, anything else -> yt8m.

Every video is yielded exactly once per epoch across the whole job (``world_size`` ranks x ``num_workers``
DataLoader workers = "consumers"). With at least as many shards as consumers, shards are dealt round-robin; with
fewer, every consumer walks every shard and keeps every ``consumers``-th record, so small datasets still split
exactly. Ranks therefore may get a few videos more or fewer than each other.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from attncluster.data.features import LABELS_CSV, FeatureShard, resolve_csv
from attncluster.data.paths import expand_paths
from attncluster.data.pickles import PickleShard
from attncluster.data.records import MAX_FRAMES, RawVideo, ReadStats, Shard, dequantize
from attncluster.data.sampling import sample_indices
from attncluster.errors import ConfigError, DataError

FORMATS = ("auto", "yt8m", "pickle", "features")  # as config.DataConfig.format
# Stream tags for the seeded RNGs. numpy pads seed sequences with zeros, so (seed, epoch) and (seed, epoch, 0)
# would be the same stream; the trailing tags keep the record-order and jitter streams apart from each other and
# from the shard-order stream (seed, epoch).
_RECORD_ORDER, _JITTER = 1, 2
# Rows of the shared stats counters: row 0 is the main process, row 1 + w is DataLoader worker w.
_STAT_ROWS = 257


def _format_of(path: str, fmt: str) -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown data format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt != "auto":
        return fmt
    lower = path.lower().rstrip("/")
    if lower.endswith((".pkl", ".pickle")):
        return "pickle"
    if lower.endswith(".csv"):
        return "features"
    return "yt8m"


def open_shard(path: str, *, fmt: str = "auto", modalities: dict[str, int] | None, num_classes: int | None,
               class_names: list[str] | None = None, skip_corrupt: bool = False, stats: ReadStats | None = None,
               max_frames: int = MAX_FRAMES) -> Shard:
    """Open one shard file in the given (or detected) format.

    Args:
        path: shard file (local or fsspec URL); for ``features``, the labels CSV or its directory.
        fmt: ``"auto"``, ``"yt8m"`` (TFRecords), ``"pickle"`` or ``"features"``.
        modalities: modality name -> feature width (required for ``features``; None = the format's default).
        num_classes: labels must lie in ``[0, num_classes)``.
        class_names: for ``features`` only: labels in the CSV are these names.
        skip_corrupt: skip damaged records (``read`` returns None, counted in ``stats.corrupt``).
        stats: counters the shard updates.
        max_frames: frames kept per video.
    """
    kind = _format_of(path, fmt)
    if kind == "pickle":
        return PickleShard(path, modalities=modalities, num_classes=num_classes, skip_corrupt=skip_corrupt,
                           stats=stats, max_frames=max_frames)
    if kind == "features":
        return FeatureShard(path, modalities=modalities, num_classes=num_classes, class_names=class_names,
                            skip_corrupt=skip_corrupt, stats=stats, max_frames=max_frames)
    from attncluster.data.yt8m import YT8MShard  # imported late: the protobuf reader is only needed for TFRecords

    return YT8MShard(path, modalities=modalities, num_classes=num_classes, skip_corrupt=skip_corrupt, stats=stats,
                     max_frames=max_frames)


def resolve_shards(specs: str | Iterable[str], fmt: str = "auto") -> list[str]:
    """Expand shard specs (paths, globs, directories, ``.list`` files, fsspec URLs) to shard files, in order.

    A directory holding ``labels.csv`` is one feature dataset and resolves to that CSV (a plain directory listing
    would skip CSVs and return the per-video feature files).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown data format {fmt!r}; expected one of {', '.join(FORMATS)}")
    specs = [specs] if isinstance(specs, str) else [str(s) for s in specs]
    if not specs:
        return expand_paths(specs)  # raises the "no data paths given" error
    out: list[str] = []
    for spec in specs:
        csv = resolve_csv(spec)
        if csv != spec:
            out.append(csv)
        else:
            out.extend(expand_paths([spec]))
    if fmt == "features":
        not_csv = [p for p in out if not p.lower().endswith(".csv")]
        if not_csv:
            raise DataError(f"{not_csv[0]}: not a labels CSV; the features format expects a .csv file or a "
                            f"directory holding {LABELS_CSV}")
    return out


def _warn(message: str) -> None:
    # Workers cannot hand their counters' reasons to the main process, so each skip is reported where it happens.
    print(f"warning: {message}", file=sys.stderr, flush=True)


class VideoDataset(IterableDataset):
    """Videos from shards as samples (see the module docstring for the sample contract).

    Args:
        specs: shard specs (see :func:`resolve_shards`).
        modalities: modality name -> feature width F, e.g. ``{"rgb": 1024, "audio": 128}``; output order.
        num_classes: length of the multi-hot label vector.
        seg_num: frames sampled per video (the model's L).
        train: jitter the sampled frames (stratified random sampling); otherwise stratum centres.
        shuffle: permute shard order and record order every epoch (defaults to ``train``).
        seed: base of every RNG stream: shard order (seed, epoch); record order (seed, epoch, shard index);
            jitter (seed, epoch, rank, worker).
        skip_corrupt: skip damaged records (warned on stderr, counted in :attr:`stats`) instead of raising.
        dequantize: dequantize uint8 sources to float32 here; False keeps the sampled frames uint8 so they can be
            dequantized on the accelerator (4x less host-to-device traffic).
        fmt: shard format, see :func:`open_shard`.
        class_names: for the features format with class names in the CSV.
        rank, world_size: this process's place in the job; default from the ``RANK`` / ``WORLD_SIZE``
            environment variables (torchrun), else 0 / 1.
        max_frames: frames kept per video before sampling.
    """

    def __init__(self, specs: str | Iterable[str], *, modalities: dict[str, int], num_classes: int,
                 seg_num: int = 100, train: bool = False, shuffle: bool | None = None, seed: int = 0,
                 skip_corrupt: bool = False, dequantize: bool = True, fmt: str = "auto",
                 class_names: list[str] | None = None, rank: int | None = None, world_size: int | None = None,
                 max_frames: int = MAX_FRAMES):
        super().__init__()
        if not modalities or any(int(w) < 1 for w in modalities.values()):
            raise ConfigError(f"modalities must map names to positive feature widths, got {modalities!r}")
        if num_classes < 1 or seg_num < 1 or max_frames < 1:
            raise ConfigError(f"num_classes, seg_num and max_frames must be >= 1, got {num_classes}, {seg_num}, "
                              f"{max_frames}")
        if seed < 0:
            raise ConfigError(f"seed must be >= 0, got {seed}")
        if class_names is not None and len(class_names) != num_classes:
            raise ConfigError(f"class_names has {len(class_names)} names but num_classes is {num_classes}")
        self.rank = int(os.environ.get("RANK", 0)) if rank is None else int(rank)
        self.world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(f"rank {self.rank} is not in [0, world_size={self.world_size})")
        self.modalities = {k: int(v) for k, v in modalities.items()}
        self.num_classes = int(num_classes)
        self.seg_num = int(seg_num)
        self.train = bool(train)
        self.shuffle = self.train if shuffle is None else bool(shuffle)
        self.seed = int(seed)
        self.skip_corrupt = bool(skip_corrupt)
        self.dequantize = bool(dequantize)
        self.fmt = fmt
        self.class_names = list(class_names) if class_names is not None else None
        self.max_frames = int(max_frames)
        self.shards = resolve_shards(specs, fmt)
        # Shared memory, so DataLoader workers (also persistent ones, also under spawn) see set_epoch and the main
        # process sees the workers' counters. Each process writes only its own row: no locks needed.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._counters = torch.zeros((_STAT_ROWS, 4), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's shard order, record order and jitter. Call before iterating each epoch."""
        self._epoch[0] = int(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    @property
    def stats(self) -> ReadStats:
        """Counts over all iterations so far (files, videos, frames, corrupt), summed over this process and its
        DataLoader workers. Other ranks keep their own."""
        files, videos, frames, corrupt = (int(x) for x in self._counters.sum(0))
        return ReadStats(files=files, videos=videos, frames=frames, corrupt=corrupt)

    def _record_order(self, shard_index: int, n: int, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng((self.seed, epoch, shard_index, _RECORD_ORDER)).permutation(n)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        num_workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        consumers = self.world_size * num_workers
        consumer = self.rank * num_workers + worker
        epoch = self.epoch
        shard_order = np.arange(len(self.shards))
        if self.shuffle:
            # Seeded by (seed, epoch) only, so every rank and worker computes the same order without talking.
            shard_order = np.random.default_rng((self.seed, epoch)).permutation(len(self.shards))
        rng = np.random.default_rng((self.seed, epoch, self.rank, worker, _JITTER)) if self.train else None

        counters = self._counters.numpy()[0 if info is None else 1 + worker % (_STAT_ROWS - 1)]
        base = counters.copy()
        stats = ReadStats()

        def publish() -> None:
            counters[:] = base + (stats.files, stats.videos, stats.frames, stats.corrupt)

        whole_shards = len(self.shards) >= consumers
        offset = 0  # records in the shards walked so far (few-shards mode)
        for k, shard_index in enumerate(shard_order):
            if whole_shards and k % consumers != consumer:
                continue
            path = self.shards[shard_index]
            files, corrupt = stats.files, stats.corrupt
            shard = open_shard(path, fmt=self.fmt, modalities=self.modalities, num_classes=self.num_classes,
                               class_names=self.class_names, skip_corrupt=self.skip_corrupt, stats=stats,
                               max_frames=self.max_frames)
            try:
                n = len(shard)
                if not whole_shards and k % consumers != consumer:
                    # Every consumer opens this shard; let one of them count the open (and a damaged tail found
                    # while indexing) so the job-wide stats count each file once.
                    stats.files, stats.corrupt = files, corrupt
                order = self._record_order(int(shard_index), n, epoch)
                if not whole_shards:
                    # Global record number offset + j; this consumer keeps those congruent to its id.
                    order = order[(consumer - offset) % consumers::consumers]
                    offset += n
                publish()
                for i in order:
                    i = int(i)
                    video = shard.read(i)
                    if video is None:
                        publish()
                        reason = getattr(shard, "last_error", None)
                        _warn(reason if reason else f"{path}: record {i}: skipped a corrupt record")
                        continue
                    sample = self._sample(video, path, i, rng)
                    if sample is None:
                        stats.corrupt += 1
                        publish()
                        continue
                    publish()
                    yield sample
            finally:
                close = getattr(shard, "close", None)
                if close is not None:
                    close()

    def _sample(self, video: RawVideo, path: str, i: int, rng: np.random.Generator | None) -> dict | None:
        """Sample seg_num frames and build the sample dict; None for a skipped (empty) record."""
        where = f"{path}: record {i} (id {video.id!r})"
        missing = [m for m in self.modalities if m not in video.features]
        if missing:
            raise DataError(f"{where}: no '{missing[0]}' features (has: {', '.join(video.features)})")
        n = min(int(video.features[m].shape[0]) for m in self.modalities)
        if n < 1:
            message = f"{where}: has no frames"
            if not self.skip_corrupt:
                raise DataError(message)
            _warn(message)
            return None
        labels = np.asarray(video.labels, dtype=np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            bad = labels[(labels < 0) | (labels >= self.num_classes)][0]
            raise DataError(f"{where}: label {int(bad)} out of range, expected [0, {self.num_classes})")
        # The same indices for every modality, from their common length; sampled before dequantizing so only
        # seg_num frames (not up to 300) are converted.
        idx = sample_indices(n, self.seg_num, rng)
        sample: dict = {"id": video.id}
        for m in self.modalities:
            frames = video.features[m][idx]  # (T, F) -> (seg_num, F), a copy
            if frames.dtype == np.uint8:
                if self.dequantize:
                    frames = dequantize(frames)
            elif frames.dtype != np.float32:
                frames = frames.astype(np.float32)
            sample[m] = torch.from_numpy(frames)
        multi_hot = np.zeros(self.num_classes, dtype=np.float32)
        multi_hot[labels] = 1.0
        sample["labels"] = torch.from_numpy(multi_hot)
        sample["num_frames"] = n
        return sample


def make_loader(dataset: VideoDataset, batch_size: int, num_workers: int = 0, pin_memory: bool = False,
                drop_last: bool = False, persistent_workers: bool = False) -> DataLoader:
    """A DataLoader with the default collate (uint8 frames stay uint8).

    Each worker keeps ``prefetch_factor`` = 4 batches in flight: enough to hide a shard switch (opening a file,
    possibly remote) behind the training step without holding much memory.
    """
    kwargs = {}
    if num_workers > 0:
        kwargs.update(prefetch_factor=4, persistent_workers=persistent_workers)
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                      drop_last=drop_last, **kwargs)


__all__ = ["VideoDataset", "make_loader", "open_shard", "resolve_shards", "FORMATS"]
