"""PaddleVideo / reference pickles: one pickle per shard holding a list of dicts, one dict per video.

Each dict (written by the reference's ``tf2pkl.py``, protocol 2, often under Python 2) has:

| key | value |
| --- | --- |
| ``video`` | video id, str or bytes |
| ``feature`` | uint8 (T, 1024): quantized rgb, not truncated |
| ``audio`` | uint8 (T, 128): quantized audio |
| ``label`` | list of int class ids |
| ``nframes`` | int, ``min(T, 300)`` |

Keys are str or bytes: Python 2 pickles read with ``encoding='bytes'`` (what the reference does) have bytes keys,
pickles written by Python 3 have str keys; the reference accepted only the former (models#5264). We accept both.

The unpickler (:mod:`attncluster.data.safe_pickle`) is restricted to numpy array reconstruction and builtin
containers, each bounded in what it may allocate, so opening a pickle cannot run code or exhaust memory. Pickles are not seekable record by record: the whole file is loaded into memory when the shard is opened.
"""

from __future__ import annotations

import numpy as np

from attncluster.data.paths import open_binary
from attncluster.data.records import MAX_FRAMES, IndexedShard, RawVideo, ReadStats
from attncluster.data.safe_pickle import safe_load
from attncluster.errors import DataError

DEFAULT_MODALITIES = {"rgb": 1024, "audio": 128}
# Modality name -> dict key in the reference pickles; other modality names are looked up under their own name.
PICKLE_KEYS = {"rgb": "feature"}

# Builtins the reference's tf2pkl.py output (and Python 3 rewrites of it) needs; see data/safe_pickle.py.
_BUILTINS = ("list", "dict", "tuple", "set", "frozenset", "bytes", "bytearray", "int", "float", "complex", "str",
             "bool")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def load_pickle(path: str) -> object:
    """Load a pickle file with the restricted unpickler, streaming from the file (no second copy of its bytes).

    Python 2 pickles store ``str`` as 8-bit strings; ``latin1`` maps them to str losslessly (and is what numpy
    needs for py2 arrays). ``bytes`` is tried when latin1 fails, as the reference does.
    """
    first_error: BaseException | None = None
    with open_binary(path) as f:
        for encoding in ("latin1", "bytes"):
            try:
                f.seek(0)
                return safe_load(f, path=path, encoding=encoding, builtins=_BUILTINS)
            except DataError:
                raise
            except Exception as e:  # pickle raises many types on garbage: UnpicklingError, EOFError, ValueError, ...
                first_error = first_error or e
    raise DataError(f"{path}: not a readable pickle ({_one_line(first_error)})")


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin1")
    if isinstance(value, np.bytes_):
        return _text(bytes(value))
    if isinstance(value, str):
        return value
    return None


def _int(value: object) -> int | None:
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    return None


class PickleShard(IndexedShard):
    """One reference/PaddleVideo pickle as a :class:`~attncluster.data.records.Shard`.

    The whole file is loaded into memory on construction (inherent to pickles); records are checked when read.

    Args:
        path: local path or fsspec URL of the ``.pkl`` file.
        modalities: modality name -> feature width, default ``{"rgb": 1024, "audio": 128}``. ``rgb`` is read from
            the ``feature`` key, any other name from the key of the same name.
        num_classes: labels must lie in ``[0, num_classes)``; None checks only that they are >= 0.
        skip_corrupt: a malformed record makes ``read`` return None (counted in ``stats.corrupt``) instead of
            raising. Problems with the file itself (not a pickle, not a list) always raise.
        stats: counters to update (files, videos, frames, corrupt).
        max_frames: frames kept per video, after truncating to ``nframes``.

    Raises:
        DataError: the file is missing, not a pickle, or not a list of dicts; or, on ``read``, a record is
            malformed (missing key, wrong feature width or dtype, label out of range), naming file and record.
    """

    def __init__(self, path: str, *, modalities: dict[str, int] | None = None, num_classes: int | None = None,
                 skip_corrupt: bool = False, stats: ReadStats | None = None, max_frames: int = MAX_FRAMES):
        self.path = path
        self.modalities = dict(DEFAULT_MODALITIES if modalities is None else modalities)
        self.num_classes = num_classes
        self.skip_corrupt = skip_corrupt
        self.stats = stats
        self.max_frames = max_frames
        self.last_error: str | None = None  # why the last skipped record was skipped
        records = load_pickle(path)
        if not isinstance(records, (list, tuple)):
            raise DataError(f"{path}: expected a pickled list of dicts (one per video), got {type(records).__name__}")
        self._records = records
        if stats is not None:
            stats.files += 1

    def __len__(self) -> int:
        return len(self._records)

    def _video(self, i: int) -> RawVideo:
        """Record ``i`` (features truncated to ``min(nframes, max_frames)``)."""
        rec = self._records[i]
        where = f"{self.path}: record {i}"
        if not isinstance(rec, dict):
            raise DataError(f"{where}: expected a dict, got {type(rec).__name__}")
        rec = {(_text(k) if isinstance(k, (bytes, str)) else k): v for k, v in rec.items()}

        def get(key: str):
            if key not in rec:
                have = ", ".join(sorted(str(k) for k in rec))
                raise DataError(f"{where}: missing key '{key}' (has: {have})")
            return rec[key]

        video_id = _text(get("video"))
        if video_id is None:
            raise DataError(f"{where}: 'video' must be a str or bytes id, got {type(rec['video']).__name__}")
        where = f"{where} (id {video_id!r})"
        nframes = _int(get("nframes"))
        if nframes is None or nframes < 0:
            raise DataError(f"{where}: 'nframes' must be a non-negative int, got {rec['nframes']!r}")

        arrays = {}
        for name, width in self.modalities.items():
            key = PICKLE_KEYS.get(name, name)
            a = get(key)
            if not isinstance(a, np.ndarray) or a.ndim != 2:
                shape = getattr(a, "shape", None)
                raise DataError(f"{where}: '{key}' ({name}) must be a 2-D array (T, {width}), "
                                f"got {type(a).__name__}{'' if shape is None else f' of shape {shape}'}")
            if a.shape[1] != width:
                raise DataError(f"{where}: '{key}' ({name}) has {a.shape[1]} features per frame, expected {width}")
            if a.dtype != np.uint8 and a.dtype.kind != "f":
                raise DataError(f"{where}: '{key}' ({name}) has dtype {a.dtype}, "
                                f"expected uint8 (quantized) or float")
            arrays[name] = a

        labels = get("label")
        try:
            labels = np.asarray(labels)
        except Exception:  # ragged nested lists
            labels = np.asarray([None])
        if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
            raise DataError(f"{where}: 'label' must be a list of int class ids, got {rec['label']!r}"[:300])
        labels = labels.astype(np.int64)
        bad = labels[(labels < 0) | (labels >= (self.num_classes if self.num_classes is not None else np.inf))]
        if bad.size:
            expected = f"[0, {self.num_classes})" if self.num_classes is not None else ">= 0"
            raise DataError(f"{where}: label {int(bad[0])} out of range, expected {expected}")

        # The reference truncates every modality to nframes; modalities of different lengths share the shortest.
        t = min(nframes, self.max_frames, *(a.shape[0] for a in arrays.values()))
        features = {name: a[:t] if a.dtype == np.uint8 else a[:t].astype(np.float32, copy=False)
                    for name, a in arrays.items()}
        return RawVideo(id=video_id, features=features, labels=labels)


__all__ = ["PickleShard", "load_pickle", "DEFAULT_MODALITIES", "PICKLE_KEYS"]
