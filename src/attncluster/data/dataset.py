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

Every video is yielded exactly once per epoch across the whole job (``world_size`` ranks x DataLoader workers).
An epoch's order is the shards in a seeded order (``(seed, epoch)``) with each shard's records in a seeded order
(``(seed, epoch, shard)``); without ``shuffle``, file order. Rank r takes one contiguous part of that order (ranks
differ by at most one video; in training every rank gets ``N // world_size``), so a rank reads whole shards
front to back in permuted record order, with at most two shards shared with a neighbour. :func:`make_loader` cuts
the rank's part into batches by position, so batches depend on the seed, epoch, ranks and batch size, never on
the number of DataLoader workers, and a batch index is an exact place to resume.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from attncluster.data.features import LABELS_CSV, FeatureShard, resolve_csv
from attncluster.data.paths import expand_paths, is_url
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
# Largest (records x seg_num) jitter block drawn at once for a shard (32 MB of float64); larger shards draw per record.
_JITTER_BLOCK = 1 << 22


FEATURE_SUFFIXES = (".csv", ".npz", ".npy")


def _format_of(path: str, fmt: str) -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown data format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt == "yt8m" and path.lower().rstrip("/").endswith(FEATURE_SUFFIXES + (".pkl", ".pickle")):
        # Reading it as TFRecord would only report a "bad length CRC": say what the file is instead.
        raise DataError(f"{path}: a {_format_of(path, 'auto')}-format file, but data.format is yt8m (TFRecords); set "
                        f"-o data.format=auto (or {_format_of(path, 'auto')})")
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
    from attncluster.errors import printable

    print(printable(f"warning: {message}"), file=sys.stderr, flush=True)


class VideoDataset(IterableDataset):
    """Videos from shards as samples (see the module docstring for the sample contract and the epoch order).

    Iterating the dataset yields this rank's samples one by one; :func:`make_loader` yields them as batches that
    do not depend on the number of DataLoader workers.

    Args:
        specs: shard specs (see :func:`resolve_shards`).
        modalities: modality name -> feature width F, e.g. ``{"rgb": 1024, "audio": 128}``; output order.
        num_classes: length of the multi-hot label vector.
        seg_num: frames sampled per video (the model's L).
        train: jitter the sampled frames (stratified random sampling); otherwise stratum centres.
        shuffle: permute shard order and record order every epoch (defaults to ``train``).
        seed: base of every RNG stream: shard order (seed, epoch); record order (seed, epoch, shard index);
            jitter (seed, epoch, shard index): a (records, seg_num) block of uniforms, row i for record i, or
            (seed, epoch, shard index, record index) for shards too large for one block; so a video's frames in an
            epoch do not depend on ranks, workers or batch size.
        skip_corrupt: skip damaged records (warned on stderr, counted in :attr:`stats`) instead of raising.
        dequantize: dequantize uint8 sources to float32 here; False keeps the sampled frames uint8 so they can be
            dequantized on the accelerator (4x less host-to-device traffic).
        fmt: shard format, see :func:`open_shard`.
        class_names: for the features format with class names in the CSV.
        rank, world_size: this process's place in the job; default from the ``RANK`` / ``WORLD_SIZE``
            environment variables (torchrun), else 0 / 1.
        max_frames: frames kept per video before sampling.
        equal_ranks: give every rank the same number of videos by leaving out the last ``N mod world_size``
            of the epoch order (defaults to ``train``: DDP ranks then run the same number of steps). Otherwise
            ranks differ by at most one video and every video is read (evaluation).
        warn_one_frame: warn (once, rank 0, when the records are first counted) if the first record holds one
            frame while ``seg_num`` > 1: video-level data under a frame-level config. False for a second dataset
            of the same run (train's validation set), so a run says it once.
    """

    def __init__(self, specs: str | Iterable[str], *, modalities: dict[str, int], num_classes: int,
                 seg_num: int = 100, train: bool = False, shuffle: bool | None = None, seed: int = 0,
                 skip_corrupt: bool = False, dequantize: bool = True, fmt: str = "auto",
                 class_names: list[str] | None = None, rank: int | None = None, world_size: int | None = None,
                 max_frames: int = MAX_FRAMES, equal_ranks: bool | None = None, warn_one_frame: bool = True):
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
        self.equal_ranks = self.train if equal_ranks is None else bool(equal_ranks)
        self.seed = int(seed)
        self.skip_corrupt = bool(skip_corrupt)
        self.dequantize = bool(dequantize)
        self.fmt = fmt
        self.class_names = list(class_names) if class_names is not None else None
        self.max_frames = int(max_frames)
        self.warn_one_frame = bool(warn_one_frame)
        self.shards = resolve_shards(specs, fmt)
        self._counts: list[int] | None = None
        self._index_damage = 0  # damaged stretches and empty files skipped while counting records (skip_corrupt)
        self._indices: dict[str, tuple[np.ndarray, int]] = {}  # remote shard -> (record index, corrupt tail count)
        # Moved to shared memory (share_memory()) before DataLoader workers start, so workers (also persistent ones,
        # also under spawn) see set_epoch and the main process sees the workers' counters. Each process writes only
        # its own row: no locks needed. Plain memory until then: a single-process run needs no /dev/shm.
        # _epoch holds (epoch, first batch): the batch to start the epoch at when resuming mid-epoch.
        self._epoch = torch.zeros(2, dtype=torch.int64)
        self._counters = torch.zeros((_STAT_ROWS, 4), dtype=torch.int64)

    @classmethod
    def from_config(cls, cfg, paths: str | Iterable[str], *, train: bool, dist=None, dequantize: bool = False,
                    class_names: list[str] | None | object = ..., **overrides) -> VideoDataset:
        """The dataset a verb reads, built from its config: the one place the config's model and data sections
        become :class:`VideoDataset` arguments (train, validation, eval, predict, explain and quickstart use it).

        Args:
            cfg: a :class:`attncluster.config.Config`: model.feature_dims / num_classes / seg_num, data.format /
                skip_corrupt / class_names, train.seed.
            paths: shard specs (``cfg.data.train``, ``cfg.data.valid`` or ``--data``).
            train: training sampling (jittered frames, shuffled, equal ranks) or evaluation (stratum centres,
                file order, every video read).
            dist: this process's :class:`attncluster.distributed.DistInfo` (rank, world_size); default
                :func:`attncluster.distributed.env_info`. Pass ``DistInfo()`` for a single process.
            dequantize: dequantize uint8 frames in the reader (False: the caller dequantizes on its device).
            class_names: the names of a features-format CSV's labels; default ``cfg.data.class_names`` read
                (:func:`attncluster.inference.load_class_names`). Pass it when already loaded.
            overrides: any other :class:`VideoDataset` keyword (e.g. ``shuffle``).
        """
        from attncluster import distributed

        if dist is None:
            dist = distributed.env_info()
        if class_names is ...:
            from attncluster.inference import load_class_names  # it reads the names; the dataset only uses them

            class_names = load_class_names(cfg)
        kwargs = dict(modalities=cfg.model.feature_dims, num_classes=cfg.model.num_classes, seg_num=cfg.model.seg_num,
                      train=train, seed=cfg.train.seed, skip_corrupt=cfg.data.skip_corrupt, dequantize=dequantize,
                      fmt=cfg.data.format, class_names=class_names, rank=dist.rank, world_size=dist.world_size)
        kwargs.update(overrides)
        return cls(paths, **kwargs)

    def share_memory(self) -> None:
        """Put the epoch and counters in shared memory (in place). :func:`make_loader` calls it; a DataLoader with
        workers built by hand must call it before its workers start, or the main process sees no worker counts."""
        try:
            self._epoch.share_memory_()
            self._counters.share_memory_()
        except RuntimeError as e:  # /dev/shm full or limited (e.g. a container's 64 MB default)
            raise DataError(f"shared memory (/dev/shm) for DataLoader workers: {' '.join(str(e).split())[:200]}; "
                            "give it more room (docker --shm-size) or set data.num_workers=0") from None

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's shard order, record order and jitter. Call before iterating each epoch.

        ``start_batch`` > 0 makes the next :func:`make_loader` iteration begin at that batch of the epoch (exact
        mid-epoch resume); direct iteration over samples ignores it.
        """
        if start_batch < 0:
            raise ValueError(f"start_batch must be >= 0, got {start_batch}")
        self._epoch[0] = int(epoch)
        self._epoch[1] = int(start_batch)

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    @property
    def start_batch(self) -> int:
        return int(self._epoch[1])

    @property
    def stats(self) -> ReadStats:
        """Counts over all iterations so far (files, videos, frames, corrupt), summed over this process and its
        DataLoader workers. Other ranks keep their own."""
        files, videos, frames, corrupt = (int(x) for x in self._counters.sum(0))
        return ReadStats(files=files, videos=videos, frames=frames, corrupt=corrupt)

    # -- the epoch's order ------------------------------------------------------------------------------------------

    def record_counts(self) -> list[int]:
        """Records per shard (intact ones, up to a damaged tail with skip_corrupt), in shard order. Read once, from
        the record headers only, and cached; :func:`make_loader` calls it before workers start, so they inherit it.

        For remote shards the record index itself is kept too (16 bytes per record), so readers do not fetch the
        headers again."""
        if self._counts is None:
            counts = []
            damage = 0
            checked = False
            for path in self.shards:
                shard = self._open(path, None)
                try:
                    counts.append(len(shard))
                    found = getattr(shard, "stats", None)
                    if found is not None:
                        damage += found.corrupt + found.empty_files
                    if self.rank == 0 and found is not None and (found.corrupt or found.empty_files):
                        # Damage the record index met (skip_corrupt): said once here, not silently absorbed.
                        lost = f"; {found.bytes_lost} bytes unreadable" if found.bytes_lost else ""
                        what = "skipped (empty file)" if found.empty_files else (
                            f"{found.corrupt} damaged stretch(es) skipped, the intact records around them kept")
                        _warn(f"{path}: {what}{lost} ({getattr(shard, 'last_error', None) or 'damaged'})")
                    index = getattr(shard, "_index", None)
                    if is_url(path) and isinstance(index, np.ndarray):
                        self._indices[path] = (index, int(getattr(shard, "stats", ReadStats()).corrupt))
                    if not checked and counts[-1]:
                        checked = True
                        self._check_frames(shard, path)  # last: it reads a record, after the index's damage is counted
                finally:
                    _close(shard)
            self._counts = counts
            self._index_damage = damage
        return self._counts

    def _check_frames(self, shard: Shard, path: str) -> None:
        """Warn once (rank 0) when the data's first record holds one frame but seg_num asks for more: video-level
        features under a frame-level config, where every sampled frame is a copy of the one and the attention
        (and explain's figures) mean nothing."""
        if self.seg_num <= 1 or self.rank != 0 or not self.warn_one_frame:
            return
        try:
            video = shard.read(0)
        except DataError:  # reported where the epoch reads it, as any damaged record
            return
        if video is None or video.num_frames != 1:
            return
        video_level = all(a.dtype != np.uint8 for a in video.features.values())
        hint = ("for video-level YouTube-8M data use --config youtube8m_video_level (model.seg_num 1)" if video_level
                else "use a config with model.seg_num 1 (e.g. --config youtube8m_video_level) for one-frame data")
        _warn(f"{path}: record 0 (id {video.id!r}) holds 1 frame, but model.seg_num is {self.seg_num}: each video "
              f"would be {self.seg_num} copies of one frame, and the attention over them means nothing; {hint}")

    @property
    def num_videos(self) -> int:
        """Videos in the whole job's epoch (all ranks), before damaged records are skipped."""
        return sum(self.record_counts())

    def rank_range(self) -> tuple[int, int]:
        """This rank's positions ``[lo, hi)`` in the epoch order (see the module docstring)."""
        total, world = self.num_videos, self.world_size
        if self.equal_ranks:
            per = total // world
            return self.rank * per, (self.rank + 1) * per
        return self.rank * total // world, (self.rank + 1) * total // world

    def num_batches(self, batch_size: int) -> int:
        """Batches of ``batch_size`` this rank yields per epoch (the last one may be partial)."""
        lo, hi = self.rank_range()
        return -(-(hi - lo) // batch_size)

    def _plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(shard order, end position of each shard in that order) for ``epoch``."""
        order = np.arange(len(self.shards))
        if self.shuffle:
            # Seeded by (seed, epoch) only, so every rank and worker computes the same order without talking.
            order = np.random.default_rng((self.seed, epoch)).permutation(len(self.shards))
        counts = np.asarray(self.record_counts(), dtype=np.int64)
        return order, np.cumsum(counts[order]) if len(order) else np.zeros(0, dtype=np.int64)

    def _record_order(self, shard_index: int, n: int, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng((self.seed, epoch, shard_index, _RECORD_ORDER)).permutation(n)

    def _open(self, path: str, stats: ReadStats | None) -> Shard:
        return open_shard(path, fmt=self.fmt, modalities=self.modalities, num_classes=self.num_classes,
                          class_names=self.class_names, skip_corrupt=self.skip_corrupt, stats=stats,
                          max_frames=self.max_frames)

    # -- reading ------------------------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        if self._counts is None and self.world_size == 1 and info is None:
            yield from self._stream()  # the whole epoch in one process: no need to count records first
            return
        lo, hi = self.rank_range()
        if info is not None:  # a DataLoader of the caller's own over samples: each worker a contiguous part
            n = hi - lo
            lo, hi = lo + info.id * n // info.num_workers, lo + (info.id + 1) * n // info.num_workers
        reader = _Reader(self, self.epoch, info)
        try:
            yield from reader.samples(lo, hi)
        finally:
            reader.close()

    def _stream(self) -> Iterator[dict]:
        """The epoch's order (as :class:`_Reader` reads it), shard by shard, each opened and indexed once."""
        reader = _Reader(self, self.epoch, None, counted=False)
        try:
            for shard_index in reader.order:
                shard_index = int(shard_index)
                path = self.shards[shard_index]
                shard = self._open(path, reader.stats)
                try:
                    order = self._record_order(shard_index, len(shard), reader.epoch)
                    reader.start_shard(shard_index, len(order))
                    reader.publish()
                    for i in order:
                        sample = reader.read(shard, shard_index, int(i))
                        if sample is not None:
                            yield sample
                finally:
                    _close(shard)
        finally:
            reader.close()

    def _sample(self, video: RawVideo, path: str, i: int, rng: _Uniforms | None) -> dict | None:
        """Sample seg_num frames and build the sample dict; None for a skipped (empty) record.

        ``rng`` holds this record's jitter (training); None samples stratum centres."""
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


def _close(shard) -> None:
    close = getattr(shard, "close", None)
    if close is not None:
        close()


class _Uniforms:
    """Hands :func:`sample_indices` a record's precomputed uniforms where it expects a generator."""

    def __init__(self, row: np.ndarray) -> None:
        self.row = row

    def random(self, size: int) -> np.ndarray:
        return self.row[:size]


class _Reader:
    """Reads positions of one epoch's order in one process, keeping the current shard open between calls.

    Each position belongs to exactly one reader in the job, so each video is read once. A file (and a damaged tail
    found while indexing it) is counted by the reader that reads the shard's first position, so the job-wide stats
    count each file once per epoch however many workers open it.
    """

    def __init__(self, ds: VideoDataset, epoch: int, info, counted: bool = True) -> None:
        self.ds, self.epoch = ds, epoch
        if counted:
            self.order, self.ends = ds._plan(epoch)
        else:  # streaming (VideoDataset._stream): the shard order only
            self.order = np.arange(len(ds.shards))
            if ds.shuffle:
                self.order = np.random.default_rng((ds.seed, epoch)).permutation(len(ds.shards))
        self.counters = ds._counters.numpy()[0 if info is None else 1 + info.id % (_STAT_ROWS - 1)]
        self.base = self.counters.copy()
        self.stats = ReadStats()
        self.k = -1  # position of the open shard in the epoch's shard order
        self.shard: Shard | None = None
        self.records: np.ndarray | None = None
        self.jitter: np.ndarray | None = None  # (records, seg_num) uniforms of the open shard (training)

    def publish(self) -> None:
        s = self.stats
        self.counters[:] = self.base + (s.files, s.videos, s.frames, s.corrupt)

    def close(self) -> None:
        if self.shard is not None:
            _close(self.shard)
        self.shard, self.k = None, -1

    def _select(self, k: int, first: int) -> None:
        """Open the k-th shard of the order; ``first`` is the first position this call reads from it."""
        if k == self.k:
            return
        self.close()
        shard_index = int(self.order[k])
        start = int(self.ends[k - 1]) if k else 0
        files, corrupt = self.stats.files, self.stats.corrupt
        path = self.ds.shards[shard_index]
        self.shard = self.ds._open(path, self.stats)
        self.k = k
        known = self.ds._indices.get(path)
        if known is not None:  # a remote shard indexed by record_counts: no second fetch of its headers
            self.shard._index = known[0]
            self.stats.corrupt += known[1]  # a damaged tail found then, counted (below) by one reader
        n = len(self.shard)
        if n != int(self.ends[k]) - start:
            raise DataError(f"{self.ds.shards[shard_index]}: holds {n} records now, {int(self.ends[k]) - start} when "
                            "the epoch started; was it changed during training?")
        if first != start:  # another reader counts this file
            self.stats.files, self.stats.corrupt = files, corrupt
        self.records = self.ds._record_order(shard_index, n, self.epoch)
        self.start_shard(shard_index, n)
        self.publish()

    def start_shard(self, shard_index: int, n: int) -> None:
        """Draw the jitter of every record of a shard being opened: one (n, seg_num) block of U[0, 1) from
        (seed, epoch, shard index), row i for record i, so a record's frames do not depend on who reads it."""
        ds = self.ds
        self.jitter = None
        if ds.train and n * ds.seg_num <= _JITTER_BLOCK:
            self.jitter = np.random.default_rng((ds.seed, self.epoch, shard_index, _JITTER)).random((n, ds.seg_num))

    def read(self, shard: Shard, shard_index: int, i: int) -> dict | None:
        """Record ``i`` of a shard as a sample; None (warned, counted) when skipped as damaged or empty."""
        ds, path = self.ds, self.ds.shards[shard_index]
        video = shard.read(i)
        if video is None:
            self.publish()
            reason = getattr(shard, "last_error", None)
            _warn(reason if reason else f"{path}: record {i}: skipped a corrupt record")
            return None
        rng = None
        if self.jitter is not None:
            rng = _Uniforms(self.jitter[i])
        elif ds.train:  # a shard too large for one block (e.g. a whole features CSV): a generator per record
            rng = _Uniforms(np.random.default_rng((ds.seed, self.epoch, shard_index, i, _JITTER)).random(ds.seg_num))
        sample = ds._sample(video, path, i, rng)
        if sample is None:
            self.stats.corrupt += 1
        self.publish()
        return sample

    def samples(self, lo: int, hi: int) -> Iterator[dict]:
        """The samples at positions ``[lo, hi)``; damaged records skipped with skip_corrupt (warned, counted)."""
        p = lo
        while p < hi:
            k = int(np.searchsorted(self.ends, p, side="right"))
            self._select(k, p)
            start = int(self.ends[k - 1]) if k else 0
            stop = min(hi, int(self.ends[k]))
            shard_index = int(self.order[k])
            for i in self.records[p - start:stop - start]:
                sample = self.read(self.shard, shard_index, int(i))
                if sample is not None:
                    yield sample
            p = stop


class _Batches(IterableDataset):
    """This rank's epoch as ``(batch index, batch)`` pairs; worker w of W builds batches w, w + W, ... .

    Batch j holds the rank's positions ``[j * B, (j + 1) * B)``, so what a batch holds depends on the epoch order
    and the batch size only, never on the number of workers. ``batch`` is None when every record in it was skipped.
    """

    def __init__(self, ds: VideoDataset, batch_size: int) -> None:
        super().__init__()
        self.ds, self.batch_size = ds, int(batch_size)

    def __iter__(self) -> Iterator[tuple[int, dict | None]]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        ds, b = self.ds, self.batch_size
        lo, hi = ds.rank_range()
        reader = _Reader(ds, ds.epoch, info)
        try:
            for j in range(ds.start_batch + worker, ds.num_batches(b), workers):
                samples = list(reader.samples(lo + j * b, min(hi, lo + (j + 1) * b)))
                yield j, default_collate(samples) if samples else None
        finally:
            reader.close()


class BatchLoader:
    """Batches of one rank's epoch, in order, from a DataLoader over :class:`_Batches` (see :func:`make_loader`).

    Attributes:
        position: index of the next batch of the epoch, i.e. batches yielded so far plus the start batch. A
            checkpoint taken after training on a batch stores it to resume exactly there.
    """

    def __init__(self, dataset: VideoDataset, batch_size: int, num_workers: int, pin_memory: bool, drop_last: bool,
                 persistent_workers: bool) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        dataset.record_counts()  # once, here, so the workers inherit the counts
        self.dataset, self.batch_size, self.drop_last = dataset, int(batch_size), drop_last
        kwargs = {}
        if num_workers > 0:
            dataset.share_memory()
            kwargs.update(prefetch_factor=4, persistent_workers=persistent_workers)
        # A generator of its own: creating an iterator draws the workers' base seed from it, not from the global
        # RNG, so a mid-epoch resume (which creates one more iterator) leaves dropout's RNG stream unchanged.
        self.loader = DataLoader(_Batches(dataset, batch_size), batch_size=None, num_workers=num_workers,
                                 pin_memory=pin_memory, generator=torch.Generator().manual_seed(0), **kwargs)
        self.num_workers = num_workers
        self.position = dataset.start_batch

    def __len__(self) -> int:
        n = self.dataset.num_batches(self.batch_size) - self.dataset.start_batch
        if self.drop_last and self._partial():
            n -= 1
        return max(0, n)

    def _partial(self) -> bool:
        lo, hi = self.dataset.rank_range()
        return (hi - lo) % self.batch_size != 0

    def __iter__(self) -> Iterator[dict]:
        total = self.dataset.num_batches(self.batch_size)
        skip_last = self.drop_last and self._partial()
        self.position = expected = self.dataset.start_batch
        skipped_before = self.dataset.stats.corrupt
        read = 0
        pending: dict[int, dict | None] = {}  # out-of-order arrivals (none with in-order DataLoaders)
        for j, batch in self.loader:
            pending[j] = batch
            while expected in pending:
                batch = pending.pop(expected)
                expected += 1
                self.position = expected
                if batch is None:
                    continue
                read += len(batch["id"])
                if skip_last and expected == total:
                    continue
                yield batch
        # A whole epoch (not the tail of a resumed one) in which every record was skipped:
        if not read and self.dataset.skip_corrupt and self.dataset.start_batch == 0:
            self._check_not_all_skipped(self.dataset.stats.corrupt - skipped_before)

    def _check_not_all_skipped(self, skipped: int) -> None:
        """With skip_corrupt, an epoch in which every record was skipped is an error, not an empty result (an
        evaluation of nothing, a model trained on nothing)."""
        ds = self.dataset
        skipped += ds._index_damage
        if skipped:
            where = ds.shards[0] if len(ds.shards) == 1 else f"{len(ds.shards)} files ({ds.shards[0]}, ...)"
            rank = f" (rank {ds.rank} of {ds.world_size})" if ds.world_size > 1 else ""
            raise DataError(f"{where}: every record{rank} was skipped as damaged ({skipped} skipped with "
                            "skip_corrupt, none left to read); see the warnings above for why")


def make_loader(dataset: VideoDataset, batch_size: int, num_workers: int | str = 0, pin_memory: bool = False,
                drop_last: bool = False, persistent_workers: bool = False) -> BatchLoader:
    """This rank's epoch in batches of ``batch_size``, independent of ``num_workers``.

    Batch j is positions ``[j * batch_size, (j + 1) * batch_size)`` of the rank's part of the epoch order; only the
    rank's last batch can be partial (``drop_last`` drops it), and a batch shrinks only by records skipped as
    corrupt. Workers build whole batches (worker w of W builds w, w + W, ...) and the loader hands them out in batch
    order, so memory stays at ``prefetch_factor`` (4) batches per worker and each video is read once.
    ``num_workers`` may be ``"auto"`` (see :func:`attncluster.config.resolve_num_workers`). Iteration starts at the
    ``start_batch`` given to :meth:`VideoDataset.set_epoch`.
    """
    from attncluster.config import resolve_num_workers

    workers = resolve_num_workers(num_workers, dataset.world_size)
    return BatchLoader(dataset, batch_size, workers, pin_memory, drop_last, persistent_workers)


__all__ = ["VideoDataset", "BatchLoader", "make_loader", "open_shard", "resolve_shards", "FORMATS"]
