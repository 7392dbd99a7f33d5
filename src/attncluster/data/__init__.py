"""Data: on-disk formats -> :class:`RawVideo` records -> sampled, split, shuffled samples.

``YT8MShard`` (TFRecords) is imported on first use, so this package imports without the protobuf reader.
"""

from attncluster.data.dataset import VideoDataset, make_loader, open_shard, resolve_shards
from attncluster.data.records import RawVideo, ReadStats, check_finite, dequantize
from attncluster.data.sampling import sample_indices


def __getattr__(name: str):
    if name == "YT8MShard":
        from attncluster.data.yt8m import YT8MShard

        return YT8MShard
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["VideoDataset", "make_loader", "open_shard", "resolve_shards", "sample_indices", "dequantize",
           "RawVideo", "ReadStats", "YT8MShard", "check_finite"]
