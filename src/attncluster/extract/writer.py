"""Writing extracted videos: dataset-format shards, written atomically, and a manifest for resume.

Two formats:

* ``yt8m`` (default): frame-level ``tf.train.SequenceExample`` TFRecords in the YouTube-8M schema, as the dataset
  and the official extractor: context ``id`` (bytes) and, when a labels CSV gives them, ``labels`` (int64 list);
  feature lists ``rgb`` and ``audio`` with one bytes feature (one quantized uint8 frame) per sampled frame. Records
  are framed with masked CRC32C (``data/tfrecord.py``), so TensorFlow's ``TFRecordDataset`` and our reader both read
  them. Shards are ``OUT/extract-RRR-NNNNN.tfrecord`` (RRR: the torchrun rank).
* ``features``: the project's per-video layout (``data/features.py``): ``OUT/<id>.npz`` with one (T, F) array per
  modality and ``OUT/labels.csv`` (``labels.rankR.csv`` per rank under torchrun).

Atomic. Every file goes through the one writer (:func:`attncluster.outputs.atomic_output`: a hidden temporary
``.<name>.XXXXXXXX.tmp``, fsync, rename, a failure is one error naming the file); a shard's videos are then appended
to the manifest ``OUT/manifest.rankR.jsonl`` (one JSON object per video: id, source, shard, frames, audio, ...). A
video is done only once it is in a manifest, so after a crash a re-run skips exactly the done videos, deletes shards
that no manifest names (written but not recorded) and the temporary files a killed run left (those another live
rank is writing are locked and kept), and redoes the rest.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Mapping, Sequence

import numpy as np

from attncluster.data.tfrecord import encode_record
from attncluster.data.yt8m import encode_sequence_example
from attncluster.errors import ConfigError, DataError, writing
from attncluster.outputs import TMP_SUFFIX, atomic_write_bytes, remove_stale, target_of_temporary

FORMATS = ("yt8m", "features")
MANIFEST_GLOB = re.compile(r"^manifest\.rank(\d+)\.jsonl$")
SHARD_RE = re.compile(r"^extract-(\d{3})-(\d{5})\.tfrecord$")


def encode_frame_level(video_id: str, labels: Sequence[int] | None, frames: Mapping[str, np.ndarray]) -> bytes:
    """A frame-level SequenceExample in the YouTube-8M schema (:func:`attncluster.data.yt8m.encode_sequence_example`
    with the labels sorted).

    Args:
        video_id: context ``id`` (bytes feature).
        labels: class ids (sorted int64 list, as the official extractor writes) or None: no ``labels`` feature,
            as the dataset's test partition.
        frames: modality -> uint8 (T, F), one bytes feature per frame in feature list ``modality``.
    """
    return encode_sequence_example(video_id, None if labels is None else sorted(int(x) for x in labels),
                                   {name: np.ascontiguousarray(x) for name, x in frames.items()})


def _fsync_write(path: str, data: bytes) -> None:
    atomic_write_bytes(path, data)


def _temporary_of(name: str) -> str | None:
    """The file a temporary file ``name`` was written for: ``.X.<random>.tmp`` (the one writer) or ``X.tmp`` (older
    versions); None for any other name."""
    target = target_of_temporary(name)
    if target is None and name.endswith(TMP_SUFFIX) and not name.startswith("."):
        target = name[:-len(TMP_SUFFIX)]
    return target


def read_manifests(out_dir: str) -> list[dict]:
    """Every manifest entry in ``out_dir`` (all ranks). A torn last line (a crash while appending) is ignored."""
    entries = []
    if not os.path.isdir(out_dir):
        return entries
    for name in sorted(os.listdir(out_dir)):
        if not MANIFEST_GLOB.match(name):
            continue
        with open(os.path.join(out_dir, name), encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # only the last line can be torn; its shard is then unrecorded and redone
    return entries


class ShardWriter:
    """Collects extracted videos and writes them as shards of ``shard_size`` videos, recording each in a manifest.

    Args:
        out_dir: local output folder (created).
        fmt: ``"yt8m"`` or ``"features"``.
        shard_size: videos per shard (``features``: videos per manifest / labels.csv update).
        rank, world_size: this process's place under torchrun; each rank writes its own shards and manifest.

    Attributes:
        done: ids already in a manifest of ``out_dir`` (any rank): skip them.
    """

    def __init__(self, out_dir: str, fmt: str = "yt8m", shard_size: int = 100, rank: int = 0, world_size: int = 1):
        if fmt not in FORMATS:
            raise ConfigError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
        if shard_size < 1:
            raise ConfigError(f"--shard-size {shard_size}: must be >= 1")
        if "://" in out_dir and not out_dir.startswith("file://"):
            raise ConfigError(f"--output {out_dir}: must be a local folder (copy the shards to remote storage after)")
        out_dir = out_dir[len("file://"):] if out_dir.startswith("file://") else out_dir
        if os.path.exists(out_dir) and not os.path.isdir(out_dir):
            raise ConfigError(f"--output {out_dir}: exists and is not a folder")
        os.makedirs(out_dir, exist_ok=True)
        self.out_dir, self.fmt, self.shard_size = out_dir, fmt, shard_size
        self.rank, self.world_size = rank, world_size
        self.manifest_path = os.path.join(out_dir, f"manifest.rank{rank}.jsonl")
        entries = read_manifests(out_dir)
        self.done: set[str] = {e["id"] for e in entries}
        self._mine = [e for e in entries if e.get("rank", 0) == rank]  # this rank's entries, for labels.csv
        self._pending: list[tuple[dict, dict[str, np.ndarray], list[int] | None]] = []
        self.written = 0
        self.removed = self._clean(entries)
        self._seq = 1 + max([int(m.group(2)) for n in os.listdir(out_dir) if (m := SHARD_RE.match(n))
                             and int(m.group(1)) == rank] + [-1])

    @property
    def labels_csv(self) -> str:
        name = "labels.csv" if self.world_size == 1 else f"labels.rank{self.rank}.csv"
        return os.path.join(self.out_dir, name)

    def _clean(self, entries: list[dict]) -> list[str]:
        """Delete this rank's leftovers of an interrupted run: shards no manifest records, and the temporary files
        of a killed run (its shards', npz files', labels CSV's and manifest's; any rank's, unless a live one holds
        them)."""
        recorded = {e.get("shard") for e in entries}
        removed = []
        for name in os.listdir(self.out_dir):
            m = SHARD_RE.match(name)
            if m is not None and int(m.group(1)) == self.rank and name not in recorded:
                os.remove(os.path.join(self.out_dir, name))
                removed.append(name)

        def ours(name: str) -> bool:
            of = _temporary_of(name)
            return of is not None and (SHARD_RE.match(of) is not None or of.endswith(".npz")
                                       or of.startswith(("labels", "manifest.rank")))

        removed += [p.name for p in remove_stale(os.path.join(self.out_dir, "_"), matches=ours)]
        return removed

    def add(self, entry: dict, arrays: dict[str, np.ndarray], labels: list[int] | None) -> None:
        """Queue one video; writes a shard when ``shard_size`` are queued.

        Args:
            entry: its manifest fields (``id`` and ``source`` at least).
            arrays: modality -> (T, F) features (uint8 for ``yt8m``).
            labels: class ids, or None when no labels CSV lists the video.
        """
        if entry["id"] in self.done:
            raise DataError(f"{entry.get('source', entry['id'])}: video id {entry['id']!r} is already extracted "
                            f"in {self.out_dir}")
        if self.fmt == "yt8m":
            for m, a in arrays.items():
                if a.dtype != np.uint8:
                    raise ConfigError(f"--format yt8m stores quantized uint8 features; the {m!r} features are "
                                      f"{a.dtype} (use --format features for this backbone)")
        else:  # features: the npz now (atomic), so memory stays one video; done once the manifest says so
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            _fsync_write(os.path.join(self.out_dir, f"{entry['id']}.npz"), buf.getvalue())
            arrays = {}
        self._pending.append((dict(entry, rank=self.rank), arrays, labels))
        self.done.add(entry["id"])
        if len(self._pending) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the queued videos: one shard (yt8m) or their labels.csv rows (features), then the manifest."""
        if not self._pending:
            return
        if self.fmt == "yt8m":
            name = f"extract-{self.rank:03d}-{self._seq:05d}.tfrecord"
            self._seq += 1
            payload = b"".join(encode_record(encode_frame_level(e["id"], labels, arrays))
                               for e, arrays, labels in self._pending)
            _fsync_write(os.path.join(self.out_dir, name), payload)
        else:
            name = os.path.basename(self.labels_csv)
        entries = []
        for e, _, labels in self._pending:
            entries.append(dict(e, shard=name, labels=labels))
        if self.fmt == "features":
            rows = self._mine + entries
            text = "video_id,labels\n" + "".join(f"{r['id']},{' '.join(str(x) for x in (r.get('labels') or []))}\n"
                                                 for r in rows)
            _fsync_write(self.labels_csv, text.encode("utf-8"))
        with writing(self.manifest_path), open(self.manifest_path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
            f.flush()
            os.fsync(f.fileno())
        self._mine.extend(entries)
        self.written += len(entries)
        self._pending = []

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        # The queued videos are complete: write them on success, on a bad input file (DataError: the run stops
        # there, a re-run starts after them) and on Ctrl-C. Any other error (a full disk, a bug) may come from
        # writing itself: drop them; not in the manifest, a re-run redoes them.
        if exc_type is None or issubclass(exc_type, (DataError, KeyboardInterrupt)):
            self.flush()


__all__ = ["ShardWriter", "encode_frame_level", "read_manifests", "FORMATS"]
