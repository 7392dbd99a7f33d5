"""The record-level contract shared by every on-disk format.

Each format module (``tfrecord``/``yt8m``, ``pickles``, ``features``) exposes its files as :class:`Shard` objects:
random access by record index (so training can shuffle records inside a shard without holding the shard in
memory) and sequential iteration. :mod:`attncluster.data.dataset` turns shards into samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol

import numpy as np

# YouTube-8M quantization: value = q * 4/255 + 4/512 - 2  (q = 0 -> -1.9921875, q = 255 -> 2.0078125).
DEQUANT_SCALE = 4.0 / 255.0
DEQUANT_BIAS = 4.0 / 512.0 - 2.0
MAX_FRAMES = 300


def dequantize(q):
    """Dequantize YouTube-8M uint8 features (numpy array or torch tensor) to float32."""
    try:
        import torch

        if isinstance(q, torch.Tensor):
            return q.to(torch.float32).mul_(DEQUANT_SCALE).add_(DEQUANT_BIAS)
    except ImportError:  # pragma: no cover
        pass
    # In place on one fresh float32 copy: no temporaries on the reader's hot path (bit-identical to x * a + b).
    out = np.asarray(q).astype(np.float32)
    out *= np.float32(DEQUANT_SCALE)
    out += np.float32(DEQUANT_BIAS)
    return out


@dataclass
class SegmentRatings:
    """YouTube-8M 2019 segment ratings of one video: parallel arrays, one entry per rated (segment, class).

    A segment is the 5 frames ``[start, start + 5)`` (1 frame per second, so ``start`` is also in seconds).
    """

    classes: np.ndarray  # int64 class ids
    starts: np.ndarray  # int64 first frame of the segment
    scores: np.ndarray  # float32, 1.0 positive rating, 0.0 negative

    def __len__(self) -> int:
        return int(self.classes.size)


@dataclass
class RawVideo:
    """One video as stored, before sampling.

    Attributes:
        id: the video id (``id`` or ``video_id`` in YouTube-8M).
        features: modality name -> (T, F) array. ``uint8`` means YouTube-8M-quantized values (dequantize with
            :func:`dequantize`); ``float32`` means values used as they are. All modalities share T frames
            (video-level records are 1-frame videos).
        labels: int64 class ids, possibly empty (test data).
    """

    id: str
    features: dict[str, np.ndarray]
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    segments: SegmentRatings | None = None  # YouTube-8M 2019 segment ratings, when the record carries them

    @property
    def num_frames(self) -> int:
        return min(int(a.shape[0]) for a in self.features.values())


def check_finite(video: RawVideo, where: str) -> RawVideo:
    """Refuse a video whose float features hold NaN or +-inf: the one check every reader applies to what it yields.

    A non-finite input would turn every score of the video into NaN (predict would write invalid JSON, eval and
    train would stop on a NaN metric or loss), so it is a data error, which ``skip_corrupt`` skips and counts as
    any other damaged record. uint8 (quantized) features cannot hold such values and are not scanned.

    Args:
        video: the video as read (float features already in the dtype they are used in, e.g. cast to float32,
            so a float64 value too large for float32 is caught as the inf it becomes).
        where: the file and record, e.g. ``"shard.tfrecord: record 3 at byte offset 1234"``.

    Returns:
        ``video``, unchanged.

    Raises:
        DataError: naming ``where``, the video id, the modality and the first bad value's frame and feature.
    """
    for name, a in video.features.items():
        found = non_finite(a)
        if found:
            from attncluster.errors import DataError

            raise DataError(f"{where} (id {video.id!r}): '{name}' features {found}; features must be finite numbers")
    return video


def non_finite(a: np.ndarray) -> str | None:
    """None when every value of float features ``a`` ((T, F), or any shape) is finite; else what is wrong, e.g.
    ``"hold 2 non-finite values (NaN or inf; the first, nan, at frame 1, feature 7)"``. The one description of the
    fault, for the readers (:func:`check_finite`) and the service's uploads alike. Integer arrays are never scanned."""
    if a.dtype.kind not in "fc":
        return None
    finite = np.isfinite(a)
    if finite.all():
        return None
    bad = np.argwhere(~finite)
    first = tuple(int(x) for x in bad[0])
    at = f"frame {first[0]}, feature {first[1]}" if len(first) == 2 else f"index {first}"
    return (f"hold {len(bad)} non-finite value{'s' if len(bad) != 1 else ''} (NaN or inf; the first, "
            f"{a[tuple(bad[0])]}, at {at})")


@dataclass
class ReadStats:
    """Counts kept by a reader.

    ``corrupt`` counts damaged records skipped with ``skip_corrupt`` (a damaged stretch of a TFRecord file between a
    bad header and the next intact record is one); ``bytes_lost`` the bytes of such stretches that could not be
    read as records, so a summary says how much data was lost, not only how many places were damaged;
    ``empty_files`` the 0-byte files skipped with ``skip_corrupt`` (without it an empty file is an error: it is
    almost always a failed download, and training on the rest would silently use less data than the user has).
    """

    files: int = 0
    videos: int = 0
    frames: int = 0
    corrupt: int = 0
    bytes_lost: int = 0
    empty_files: int = 0


class IndexedShard:
    """Shared ``read`` / ``__iter__`` for shards whose records are known up front (pickles, feature CSVs).

    Subclasses set ``path``, ``skip_corrupt``, ``stats`` and ``last_error``, and implement ``__len__`` and
    ``_video(i)``, which raises DataError for a damaged record.
    """

    path: str
    skip_corrupt: bool
    stats: ReadStats | None
    last_error: str | None

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _video(self, i: int) -> RawVideo:  # pragma: no cover - abstract
        raise NotImplementedError

    def _where(self, i: int) -> str:
        """Record ``i``'s place, for errors."""
        return f"{self.path}: record {i}"

    def read(self, i: int) -> RawVideo | None:
        """Record ``i``; None only when it is damaged and ``skip_corrupt`` is set (counted in ``stats.corrupt``)."""
        if not 0 <= i < len(self):
            raise IndexError(f"{self.path}: record {i} out of range (shard has {len(self)})")
        from attncluster.errors import DataError

        try:
            video = check_finite(self._video(i), self._where(i))
        except DataError as e:
            if not self.skip_corrupt:
                raise
            self.last_error = str(e)
            if self.stats is not None:
                self.stats.corrupt += 1
            return None
        if self.stats is not None:
            self.stats.videos += 1
            self.stats.frames += video.num_frames
        return video

    def __iter__(self) -> Iterator[RawVideo]:
        for i in range(len(self)):
            video = self.read(i)
            if video is not None:
                yield video


class Shard(Protocol):
    """One file of records. ``read(i)`` returns None only for a damaged record skipped with skip_corrupt."""

    path: str

    def __len__(self) -> int: ...

    def read(self, i: int) -> RawVideo | None: ...

    def __iter__(self) -> Iterator[RawVideo]: ...
