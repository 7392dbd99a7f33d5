"""Generic per-video features: a labels CSV plus one ``.npz`` (or one ``.npy`` per modality) per video.

This is the format for Kinetics-style features and for your own data::

    my_data/
      labels.csv           video_id,labels        (header required)
                           vid001,3 17            (space-separated class ids, or names with class_names)
                           vid002,                (empty: unlabeled, e.g. data to predict)
      vid001.npz           one (T, F) array per modality name, e.g. rgb (T, 1024) and audio (T, 128)
      vid002.rgb.npy       ... or one file per modality: <video_id>.<modality>.npy
      vid002.audio.npy

Arrays of dtype uint8 are YouTube-8M-quantized (dequantized later, after sampling); float arrays are used as
they are (cast to float32). A directory that holds ``labels.csv`` stands for that CSV.
"""

from __future__ import annotations

import csv
import io
import os
from typing import Sequence

import numpy as np

from attncluster.data.paths import is_url, read_text
from attncluster.data.records import MAX_FRAMES, IndexedShard, RawVideo, ReadStats
from attncluster.errors import ConfigError, DataError

LABELS_CSV = "labels.csv"
HEADER = ("video_id", "labels")


def _join(base: str, name: str) -> str:
    if not base:
        return name
    return f"{base.rstrip('/')}/{name}" if is_url(base) else os.path.join(base, name)


def _dirname(path: str) -> str:
    return path.rsplit("/", 1)[0] if is_url(path) else os.path.dirname(path)


def _read_if_exists(path: str) -> bytes | None:
    """The file's bytes, or None when it does not exist (one open attempt, no separate existence check)."""
    try:
        if is_url(path) and not path.startswith("file://"):
            import fsspec

            try:
                fs, p = fsspec.core.url_to_fs(path)
            except (ImportError, ValueError) as e:
                raise DataError(f"{path}: cannot open this URL ({e}); install the fsspec extra for it") from None
            with fs.open(p, "rb") as f:
                return f.read()
        with open(path[len("file://"):] if path.startswith("file://") else path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a feature file") from None
    except PermissionError:
        raise DataError(f"{path}: permission denied") from None


def _check_array(a: np.ndarray, path: str, name: str, width: int, where: str) -> np.ndarray:
    if a.ndim != 2:
        raise DataError(f"{path}: modality '{name}' has shape {a.shape}, expected a 2-D (T, {width}) array {where}")
    if a.shape[1] != width:
        raise DataError(f"{path}: modality '{name}' has {a.shape[1]} features per frame, expected {width} {where}")
    if a.dtype == np.uint8:
        return a
    if a.dtype.kind != "f":
        raise DataError(f"{path}: modality '{name}' has dtype {a.dtype}, expected uint8 (quantized) or float "
                        f"{where}")
    with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, which check_finite then refuses
        return a.astype(np.float32, copy=False)


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _load_npy(data: bytes, path: str, where: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:  # numpy raises ValueError / OSError / EOFError on damaged files
        raise DataError(f"{path}: not a readable .npy file ({_reason(e)}) {where}") from None


class _Row:
    __slots__ = ("video_id", "labels", "line", "error")

    def __init__(self, video_id: str, labels: np.ndarray | None, line: int, error: str | None = None):
        self.video_id, self.labels, self.line, self.error = video_id, labels, line, error


def parse_labels_csv(csv_path: str, *, num_classes: int | None, class_names: Sequence[str] | None = None,
                     skip_corrupt: bool = False) -> list[_Row]:
    """Parse ``video_id,labels`` rows. Row problems raise, or with ``skip_corrupt`` are kept as errored rows."""
    text = read_text(csv_path)
    index = {name: i for i, name in enumerate(class_names)} if class_names is not None else None
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    header = next(reader, None)
    got = [h.strip() for h in header] if header else []
    if header is None or any(h not in got for h in HEADER):
        raise DataError(f"{csv_path}: line 1: expected the header 'video_id,labels', got {','.join(got)!r}")
    col_id, col_labels = got.index("video_id"), got.index("labels")
    rows: list[_Row] = []
    seen: dict[str, int] = {}
    for fields in reader:
        line = reader.line_num
        if not fields or all(not f.strip() for f in fields):
            continue
        video_id = fields[col_id].strip() if col_id < len(fields) else ""
        try:
            if len(fields) < len(got):
                raise DataError(f"{csv_path}: line {line}: expected {len(got)} columns ({','.join(got)}), "
                                f"got {len(fields)}")
            if not video_id:
                raise DataError(f"{csv_path}: line {line}: empty video_id")
            if os.path.isabs(video_id) or ".." in video_id.replace("\\", "/").split("/"):
                raise DataError(f"{csv_path}: line {line}: video_id {video_id!r} must be a name relative to the "
                                f"CSV's folder")
            if video_id in seen:
                raise DataError(f"{csv_path}: line {line}: video_id {video_id!r} already listed on line "
                                f"{seen[video_id]}")
            seen[video_id] = line
            labels = []
            for tok in fields[col_labels].split():
                if index is not None:
                    if tok not in index:
                        raise DataError(f"{csv_path}: line {line}: unknown label {tok!r} (not one of the "
                                        f"{len(index)} class names)")
                    labels.append(index[tok])
                    continue
                try:
                    label = int(tok)
                except ValueError:
                    raise DataError(f"{csv_path}: line {line}: label {tok!r} is not an integer class id "
                                    f"(give class_names to use names)") from None
                if label < 0 or (num_classes is not None and label >= num_classes):
                    expected = f"[0, {num_classes})" if num_classes is not None else ">= 0"
                    raise DataError(f"{csv_path}: line {line}: label {label} out of range, expected {expected}")
                labels.append(label)
            rows.append(_Row(video_id, np.asarray(labels, dtype=np.int64), line))
        except DataError as e:
            if not skip_corrupt:
                raise
            rows.append(_Row(video_id, None, line, str(e)))
    return rows


class FeatureShard(IndexedShard):
    """A labels CSV and its per-video feature files as a :class:`~attncluster.data.records.Shard`.

    Records are the CSV rows, in order. The CSV is parsed on construction; feature files are read lazily, one
    video per ``read``.

    Args:
        csv_path: the labels CSV (local path or fsspec URL), or a directory holding ``labels.csv``.
        modalities: modality name -> feature width F; each video must provide every one.
        num_classes: labels must lie in ``[0, num_classes)`` (None: only >= 0; with ``class_names``, defaults
            to their number).
        class_names: when given, labels in the CSV are class names (index in this list = class id).
        skip_corrupt: a bad row or feature file makes ``read`` return None (counted in ``stats.corrupt``)
            instead of raising. A bad header always raises.
        stats: counters to update (files, videos, frames, corrupt).
        max_frames: frames kept per video.

    Raises:
        DataError: naming the file, the video / CSV line and what was expected: missing header, unknown label
            name, label out of range, missing feature file, missing modality, non-2-D array, wrong width.
    """

    def __init__(self, csv_path: str, *, modalities: dict[str, int], num_classes: int | None = None,
                 class_names: Sequence[str] | None = None, skip_corrupt: bool = False,
                 stats: ReadStats | None = None, max_frames: int = MAX_FRAMES):
        if not modalities:
            raise ConfigError("FeatureShard needs modalities, e.g. {'rgb': 1024, 'audio': 128}")
        if class_names is not None:
            class_names = list(class_names)
            if num_classes is None:
                num_classes = len(class_names)
            elif num_classes != len(class_names):
                raise ConfigError(f"class_names has {len(class_names)} names but num_classes is {num_classes}")
        csv_path = resolve_csv(csv_path)
        self.path = csv_path
        self.modalities = dict(modalities)
        self.num_classes = num_classes
        self.skip_corrupt = skip_corrupt
        self.stats = stats
        self.max_frames = max_frames
        self.last_error: str | None = None  # why the last skipped record was skipped
        self._base = _dirname(csv_path)
        self._rows = parse_labels_csv(csv_path, num_classes=num_classes, class_names=class_names,
                                      skip_corrupt=skip_corrupt)
        if stats is not None:
            stats.files += 1

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def video_ids(self) -> list[str]:
        return [r.video_id for r in self._rows]

    def _video(self, i: int) -> RawVideo:
        """Row ``i``'s video, features truncated to the shortest modality and ``max_frames``."""
        row = self._rows[i]
        if row.error is not None:
            raise DataError(row.error)
        return RawVideo(id=row.video_id, features=self._load(row), labels=row.labels)

    def _where(self, i: int) -> str:
        return f"{self.path}: line {self._rows[i].line}"

    def _load(self, row: _Row) -> dict[str, np.ndarray]:
        where = f"(video {row.video_id!r}, {self.path} line {row.line})"
        npz_path = _join(self._base, f"{row.video_id}.npz")
        data = _read_if_exists(npz_path)
        arrays: dict[str, np.ndarray] = {}
        if data is not None:
            try:
                npz = np.load(io.BytesIO(data), allow_pickle=False)
                names = list(npz.files)
            except Exception as e:
                raise DataError(f"{npz_path}: not a readable .npz file ({_reason(e)}) {where}") from None
            for name, width in self.modalities.items():
                if name not in names:
                    raise DataError(f"{npz_path}: no array for modality '{name}' (has: {', '.join(names)}) {where}")
                try:
                    a = npz[name]
                except Exception as e:
                    raise DataError(f"{npz_path}: array '{name}' unreadable ({_reason(e)}) {where}") from None
                arrays[name] = _check_array(a, npz_path, name, width, where)
        else:
            for name, width in self.modalities.items():
                npy_path = _join(self._base, f"{row.video_id}.{name}.npy")
                data = _read_if_exists(npy_path)
                if data is None:
                    if not arrays:
                        raise DataError(f"{npz_path}: file not found, nor {npy_path} {where}")
                    raise DataError(f"{npy_path}: file not found (modality '{name}') {where}")
                arrays[name] = _check_array(_load_npy(data, npy_path, where), npy_path, name, width, where)
        # Modalities may differ by a frame or two (e.g. audio and video decoded separately): keep the common prefix.
        t = min(self.max_frames, *(a.shape[0] for a in arrays.values()))
        return {name: a[:t] for name, a in arrays.items()}


def resolve_csv(path: str) -> str:
    """A directory holding ``labels.csv`` means that CSV; any other path is returned unchanged."""
    if is_url(path) and not path.startswith("file://"):
        import fsspec

        try:
            fs, p = fsspec.core.url_to_fs(path)
        except (ImportError, ValueError):  # unknown protocol: let path expansion report it
            return path
        if fs.isdir(p) and fs.exists(f"{p.rstrip('/')}/{LABELS_CSV}"):
            return _join(path, LABELS_CSV)
        return path
    local = path[len("file://"):] if path.startswith("file://") else path
    if os.path.isdir(local) and os.path.isfile(os.path.join(local, LABELS_CSV)):
        return os.path.join(local, LABELS_CSV)
    return path


def write_feature_dataset(out_dir: str, videos: Sequence[tuple[str, Sequence[int | str], dict[str, np.ndarray]]],
                          csv_name: str = LABELS_CSV, layout: str = "npz") -> str:
    """Write videos in the per-video feature format (local folder or fsspec URL).

    Args:
        out_dir: folder to write into (created if needed).
        videos: ``(video_id, labels, {modality: (T, F) array})``; labels are class ids or names.
        csv_name: name of the labels CSV.
        layout: ``"npz"`` (one ``<id>.npz`` per video) or ``"npy"`` (``<id>.<modality>.npy`` per modality).

    Returns:
        The path of the CSV.
    """
    if layout not in ("npz", "npy"):
        raise ValueError(f"layout must be 'npz' or 'npy', got {layout!r}")
    remote = is_url(out_dir) and not out_dir.startswith("file://")
    if remote:
        import fsspec

        fs, root = fsspec.core.url_to_fs(out_dir)
        fs.makedirs(root, exist_ok=True)

        def put(name: str, data: bytes) -> None:
            with fs.open(f"{root.rstrip('/')}/{name}", "wb") as f:
                f.write(data)
    else:
        root = out_dir[len("file://"):] if out_dir.startswith("file://") else out_dir
        os.makedirs(root, exist_ok=True)

        def put(name: str, data: bytes) -> None:
            with open(os.path.join(root, name), "wb") as f:
                f.write(data)

    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(HEADER)
    for video_id, labels, arrays in videos:
        w.writerow([video_id, " ".join(str(x) for x in labels)])
        if layout == "npz":
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            put(f"{video_id}.npz", buf.getvalue())
        else:
            for name, a in arrays.items():
                buf = io.BytesIO()
                np.save(buf, a)
                put(f"{video_id}.{name}.npy", buf.getvalue())
    put(csv_name, text.getvalue().encode("utf-8"))
    return _join(out_dir, csv_name)


__all__ = ["FeatureShard", "write_feature_dataset", "parse_labels_csv", "resolve_csv", "LABELS_CSV"]
