"""YouTube-8M records: protobuf payloads parsed and written by hand (no TensorFlow, no protobuf package).

Two record types share one parser, :func:`parse_yt8m`:

* frame-level ``tf.train.SequenceExample``: context ``id`` (``video_id`` in the 2017 release) and ``labels``;
  feature_lists ``rgb`` (1024 bytes per frame) and ``audio`` (128 bytes per frame), returned as uint8 (T, F)
  arrays, at most ``max_frames`` rows;
* video-level ``tf.train.Example``: ``id``, ``labels``, ``mean_rgb`` (1024 floats), ``mean_audio`` (128 floats),
  returned as float32 (1, F) arrays under the modality names ``rgb`` / ``audio``.

The schema, as protobuf field numbers::

    Example         { Features features = 1; }
    SequenceExample { Features context = 1; FeatureLists feature_lists = 2; }
    Features        { map<string, Feature> feature = 1; }          map entry: { key = 1; value = 2; }
    FeatureLists    { map<string, FeatureList> feature_list = 1; }
    FeatureList     { repeated Feature feature = 1; }
    Feature         { oneof { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }   FloatList { repeated float value = 1; }
    Int64List { repeated int64 value = 1; }

Merging: the wire format is :mod:`attncluster.data.protowire`. A field that protobuf lets occur several times is read
as protobuf merges it (TensorFlow's own parser refuses some of these records; reading them differently would be a
silent misread): a message given twice (a map entry's ``value``, ``features``, ``context``, ``feature_lists``) is the
merge of its occurrences, so repeated lists inside concatenate (labels split over two ``value`` fields are all read,
a FeatureList split in two holds all its frames); a map entry's last ``key`` wins; of two map entries with one key the
later replaces the earlier; and of a Feature's oneof the last member given wins. A result that breaks the schema (two
ids, a frame of two byte strings, the wrong number of floats) is refused.

Speed: a frame-level video is ~300 identical nested messages per modality. Every frame of a modality is encoded with
the same 9-byte header (``Feature{bytes_list{value: <F bytes>}}`` tags and lengths), so the frames sit at a fixed
stride: the parser views the FeatureList as a (T, stride) array, checks every header at once, and slices the payload
columns, with no Python work per frame. Only when that check fails does a per-frame walk find the bad frame.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Mapping
from functools import lru_cache

import numpy as np

from attncluster.data.protowire import (FIXED32, FIXED64, LEN, VARINT, Buffer, WireError, fields, fields_of, len_field,
                                        only_field, packed_varint_field, packed_varints, read_varint, signed64, tag,
                                        varint_bytes)
from attncluster.data.records import MAX_FRAMES, RawVideo, ReadStats, check_finite
from attncluster.data.tfrecord import (EmptyFileError, RecordFramingError, index_records, open_records, read_payload,
                                       record_error, scan_records)
from attncluster.errors import DataError

ID_KEY = "id"  # 2018 (v3) release and later
ID_KEY_2017 = "video_id"  # 2017 (v2) release
LABELS_KEY = "labels"
MEAN_PREFIX = "mean_"  # video-level feature names: mean_rgb, mean_audio
DEFAULT_MODALITIES: dict[str, int] = {"rgb": 1024, "audio": 128}

# Feature oneof field numbers.
_BYTES_LIST, _FLOAT_LIST, _INT64_LIST = 1, 2, 3
_KIND_NAMES = {_BYTES_LIST: "bytes_list", _FLOAT_LIST: "float_list", _INT64_LIST: "int64_list"}
_F32 = np.dtype("<f4")
_FLOAT = struct.Struct("<f")

Span = tuple[int, int]
# A message field that occurs several times is the merge of its occurrences (protobuf): the spans of all of them,
# walked in order (see protowire). Map values, Features and FeatureLists are handled this way.
Spans = list[Span]

# --------------------------------------------------------------------------------------------------------------------
# Reading the tf.train messages (merged exactly as protobuf merges them)


def _map_entries(buf: Buffer, spans: Spans) -> dict[bytes, Spans]:
    """Features / FeatureLists (``map<string, message> = 1``): key -> the spans of its value message.

    As protobuf parses a map: within one entry the last ``key`` wins and repeated ``value`` fields merge (their
    spans are all kept, in order); of two entries with the same key, the later one replaces the earlier.
    """
    out: dict[bytes, Spans] = {}
    for field, wire, a, b in fields_of(buf, spans):
        if field != 1:
            continue
        if wire != LEN:
            raise WireError(f"map at payload byte {a}: entry has wire type {wire}, expected length-delimited")
        # Fast path: key (tag 0x0A, short length) then one value (tag 0x12) running to the end of the entry.
        if b - a >= 2 and buf[a] == 0x0A and buf[a + 1] < 0x80:
            key_end = a + 2 + buf[a + 1]
            if key_end == b:
                out[bytes(buf[a + 2:key_end])] = []  # no value: the empty (default) message
                continue
            value = only_field(buf, key_end, b, 0x12)
            if value >= 0:
                out[bytes(buf[a + 2:key_end])] = [(value, b)]
                continue
        key = None
        values: Spans = []
        for f2, w2, c, d in fields(buf, a, b):
            if f2 in (1, 2) and w2 != LEN:
                # TensorFlow's parser rejects this; skipping it would drop the entry (e.g. the labels) silently.
                raise WireError(f"map entry at payload byte {a}: field {f2} ({'key' if f2 == 1 else 'value'}) "
                                f"has wire type {w2}, expected length-delimited")
            if f2 == 1:
                key = bytes(buf[c:d])  # a string: the last one wins
            elif f2 == 2:
                values.append((c, d))  # a message: occurrences merge
        if key is None:
            raise WireError(f"map entry at payload byte {a} has no key")
        out[key] = values  # the last entry with a key wins, as in protobuf map parsing
    return out


def _feature(buf: Buffer, spans: Spans) -> tuple[int, Spans]:
    """A Feature's kind (1 bytes, 2 float, 3 int64; 0 if unset) and the spans of its (merged) list message."""
    if len(spans) == 1:
        start, end = spans[0]
        if start < end:
            t = buf[start]
            if t == 0x0A or t == 0x12 or t == 0x1A:
                value = only_field(buf, start, end, t)
                if value >= 0:
                    return t >> 3, [(value, end)]
    kind = 0
    lists: Spans = []
    for field, wire, a, b in fields_of(buf, spans):
        if field not in _KIND_NAMES:
            continue
        if wire != LEN:
            raise WireError(f"Feature at payload byte {a}: {_KIND_NAMES[field]} has wire type {wire}, "
                            f"expected length-delimited")
        if field != kind:  # a oneof: a different member replaces the earlier one; the same member merges
            kind, lists = field, []
        lists.append((a, b))
    return kind, lists


def _expect_kind(kind: int, want: int, name: str) -> None:
    if kind != want and kind != 0:
        raise WireError(f"feature {name!r} is a {_KIND_NAMES[kind]}, expected a {_KIND_NAMES[want]}")


def _bytes_values(buf: Buffer, spans: Spans) -> Spans:
    if len(spans) == 1:
        s, e = spans[0]
        value = only_field(buf, s, e, 0x0A)
        if value >= 0:
            return [(value, e)]
    return [(a, b) for field, wire, a, b in fields_of(buf, spans) if field == 1 and wire == LEN]


def _int64_values(buf: Buffer, spans: Spans) -> list[int]:
    """Int64List values, packed (wire type 2) and unpacked (wire type 0) alike, as signed Python ints."""
    values: list[int] = []
    for s, e in spans:
        value = only_field(buf, s, e, 0x0A)
        if value >= 0:
            packed_varints(buf, value, e, values)
            continue
        for field, wire, a, b in fields(buf, s, e):
            if field != 1:
                continue
            if wire == LEN:
                packed_varints(buf, a, b, values)
            elif wire == VARINT:
                values.append(a)
            else:
                raise WireError(f"Int64List at payload byte {s}: value has wire type {wire}, expected varint")
    return signed64(values)


def _float_values(buf: Buffer, spans: Spans) -> np.ndarray:
    """FloatList values, packed (wire type 2) and unpacked (wire type 5) alike, as a new float32 array."""
    if len(spans) == 1:
        s, e = spans[0]
        value = only_field(buf, s, e, 0x0A)
        if value >= 0 and (e - value) % 4 == 0:
            return np.frombuffer(buf, _F32, count=(e - value) // 4, offset=value).astype(np.float32)
    chunks: list[np.ndarray] = []
    for field, wire, a, b in fields_of(buf, spans):
        if field != 1:
            continue
        if wire == LEN:
            if (b - a) % 4:
                raise WireError(f"packed float list of {b - a} bytes, not a multiple of 4")
            chunks.append(np.frombuffer(buf, _F32, count=(b - a) // 4, offset=a))
        elif wire == FIXED32:
            chunks.append(np.array(_FLOAT.unpack_from(buf, a), dtype=np.float32))
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    # A copy: aligned, native float32, independent of the record buffer (a float vector is only a few KiB).
    return np.concatenate(chunks).astype(np.float32)


# --------------------------------------------------------------------------------------------------------------------
# Frames


@lru_cache(maxsize=64)
def _frame_layout(dim: int) -> tuple[bytes, np.dtype]:
    """The canonical header of one frame of ``dim`` bytes inside a FeatureList, and a dtype for one whole frame.

    ``FeatureList.feature`` (tag 0x0A, length) -> ``Feature.bytes_list`` (tag 0x0A, length) -> ``BytesList.value``
    (tag 0x0A, length = dim). For dim = 1024 that is ``0a 86 08 0a 83 08 0a 80 08``: 9 bytes, stride 1033.
    """
    value = b"\x0a" + varint_bytes(dim)
    bytes_list = b"\x0a" + varint_bytes(len(value) + dim)
    feature = b"\x0a" + varint_bytes(len(bytes_list) + len(value) + dim)
    header = feature + bytes_list + value
    stride = len(header) + dim
    # One frame as a record: "h" the header bytes, "x" the frame's dim uint8 values.
    header_dtype = np.dtype({"names": ["h", "x"], "formats": [f"V{len(header)}", ("u1", (dim,))],
                             "offsets": [0, len(header)], "itemsize": stride})
    return header, header_dtype


def _frames(buf: Buffer, start: int, end: int, name: str, dim: int, max_frames: int | None) -> np.ndarray:
    """The frames of one FeatureList as a uint8 (T, dim) array, T capped at ``max_frames``."""
    header, header_dtype = _frame_layout(dim)
    h = len(header)
    stride = h + dim
    n = end - start
    if n % stride == 0 and n:
        t = n // stride
        # Every frame's header at once: the T headers gathered by a strided dtype into one contiguous byte string,
        # compared with T copies of the expected header (a memcmp; faster than an elementwise (T, h) comparison).
        table = np.frombuffer(buf, dtype=header_dtype, count=t, offset=start)
        if table["h"].tobytes() == header * t:
            return table[:max_frames]["x"]  # (T, dim) uint8: a zero-copy strided view of the payload
    return _frames_slow(buf, start, end, name, dim, max_frames)


def _frames_slow(buf: Buffer, start: int, end: int, name: str, dim: int, max_frames: int | None) -> np.ndarray:
    """Per-frame walk: accepts any valid encoding and names the first bad frame precisely."""
    rows: list[int] = []
    for i, (field, wire, a, b) in enumerate((x for x in fields(buf, start, end) if x[0] == 1)):
        if wire != LEN:
            raise WireError(f"{name} frame {i}: wire type {wire}, expected a Feature message")
        kind, spans = _feature(buf, [(a, b)])
        if kind != _BYTES_LIST:
            got = _KIND_NAMES.get(kind, "empty feature")
            raise WireError(f"{name} frame {i}: {got}, expected a bytes_list of {dim} bytes")
        values = _bytes_values(buf, spans)
        if len(values) != 1:
            raise WireError(f"{name} frame {i}: {len(values)} byte strings, expected 1 of {dim} bytes")
        c, d = values[0]
        if d - c != dim:
            raise WireError(f"{name} frame {i}: got {d - c} bytes, expected {dim}")
        rows.append(c)
    if not rows:
        raise WireError(f"{name} has no frames")
    kept = rows[:max_frames]
    out = np.empty((len(kept), dim), dtype=np.uint8)
    whole = np.frombuffer(buf, dtype=np.uint8)
    for i, c in enumerate(kept):
        out[i] = whole[c:c + dim]
    return out


def _frames_of(buf: Buffer, spans: Spans, name: str, dim: int, max_frames: int | None) -> np.ndarray:
    """The frames of a FeatureList given as the spans of its (merged) occurrences: their frames in order."""
    if len(spans) == 1:
        return _frames(buf, spans[0][0], spans[0][1], name, dim, max_frames)
    for s, e in spans:
        fields(buf, s, e)  # each occurrence must be a whole message on its own, as protobuf parses it
    joined = b"".join(bytes(buf[s:e]) for s, e in spans)  # rare (a split value): the merged message, one copy
    return _frames(joined, 0, len(joined), name, dim, max_frames)


# --------------------------------------------------------------------------------------------------------------------
# Parsing


def parse_yt8m(payload: Buffer, *, modalities: Mapping[str, int] | None = None, num_classes: int | None = None,
               max_frames: int | None = MAX_FRAMES, path: str = "<payload>", index: int = 0,
               offset: int = 0) -> RawVideo:
    """Parse one YouTube-8M record: a frame-level SequenceExample or a video-level Example.

    A record with a non-empty ``feature_lists`` is frame-level; otherwise the modalities are read from the
    ``mean_<name>`` float features (the real 2018 video-level files carry an empty ``feature_lists``).
    Unknown and empty fields are skipped.

    Args:
        payload: the record payload.
        modalities: modality name -> feature size (bytes per frame, or floats of a video-level mean). Default
            ``{"rgb": 1024, "audio": 128}``.
        num_classes: when given, labels must be in ``[0, num_classes)``.
        max_frames: keep at most this many frames (``None``: all). Modalities of different lengths are cut to the
            shortest, as the reference does.
        path, index, offset: the record's file, index and byte offset, for error messages.

    Returns:
        A :class:`RawVideo`: uint8 (T, F) frames (zero-copy views into ``payload``) or float32 (1, F) means.

    Raises:
        DataError: the payload does not parse, the id is missing, a modality is missing, has no frames or frames
            of the wrong size, a label is negative or not below ``num_classes``, or a float feature is NaN or
            infinite (:func:`~attncluster.data.records.check_finite`).
    """
    modalities = DEFAULT_MODALITIES if modalities is None else modalities
    if not modalities:
        raise ValueError("parse_yt8m: modalities must name at least one modality")
    try:
        video = _parse(payload, modalities, num_classes, max_frames)
    except WireError as e:
        raise record_error(path, index, offset, str(e)) from None
    except (ValueError, IndexError, struct.error) as e:  # defensive: any other decode failure is damaged data
        raise record_error(path, index, offset, f"payload does not parse as a YouTube-8M record ({e})") from None
    return check_finite(video, f"{path}: record {index} at byte offset {offset}")


def _parse(buf: Buffer, modalities: Mapping[str, int], num_classes: int | None,
           max_frames: int | None) -> RawVideo:
    context: Spans = []  # a top-level message field given more than once merges: every occurrence, in order
    lists: Spans = []
    for field, wire, a, b in fields(buf, 0, len(buf)):
        if wire != LEN:
            if field in (1, 2):
                name = "context/features" if field == 1 else "feature_lists"
                raise WireError(f"top-level field {field} ({name}) has wire type {wire}, expected length-delimited")
            continue
        if field == 1:
            context.append((a, b))
        elif field == 2 and b > a:
            lists.append((a, b))
    features = _map_entries(buf, context)

    video_id = _video_id(buf, features)
    labels = _labels(buf, features, num_classes)

    feature_lists = _map_entries(buf, lists) if lists else {}
    out: dict[str, np.ndarray] = {}
    if feature_lists:
        for name, dim in modalities.items():
            spans = feature_lists.get(name.encode())
            if spans is None:
                have = ", ".join(sorted(k.decode(errors="replace") for k in feature_lists)) or "none"
                raise WireError(f"missing modality {name!r} in feature_lists (has: {have})")
            out[name] = _frames_of(buf, spans, name, dim, max_frames)
        t = min(a.shape[0] for a in out.values())
        if any(a.shape[0] != t for a in out.values()):
            out = {k: a[:t] for k, a in out.items()}
    else:
        for name, dim in modalities.items():
            key = MEAN_PREFIX + name
            entry = features.get(key.encode())
            if entry is None:
                have = ", ".join(sorted(k.decode(errors="replace") for k in features)) or "none"
                raise WireError(f"missing modality {name!r}: no feature_lists entry and no {key!r} feature "
                                f"(features: {have})")
            kind, spans = _feature(buf, entry)
            _expect_kind(kind, _FLOAT_LIST, key)
            values = _float_values(buf, spans)
            if values.size != dim:
                raise WireError(f"{key}: got {values.size} floats, expected {dim}")
            out[name] = values.reshape(1, dim)
    return RawVideo(id=video_id, features=out, labels=labels)


def _video_id(buf: Buffer, features: dict[bytes, Spans]) -> str:
    for key in (ID_KEY, ID_KEY_2017):
        entry = features.get(key.encode())
        if entry is not None:
            kind, spans = _feature(buf, entry)
            _expect_kind(kind, _BYTES_LIST, key)
            values = _bytes_values(buf, spans)
            if len(values) != 1:
                raise WireError(f"{key!r} holds {len(values)} byte strings, expected 1")
            a, b = values[0]
            try:
                return bytes(buf[a:b]).decode("utf-8")
            except UnicodeDecodeError:
                raise WireError(f"{key!r} is not UTF-8: {bytes(buf[a:b])!r}") from None
    raise WireError(f"no video id (neither {ID_KEY!r} nor {ID_KEY_2017!r} in the context features)")


def _labels(buf: Buffer, features: dict[bytes, Spans], num_classes: int | None) -> np.ndarray:
    entry = features.get(LABELS_KEY.encode())
    if entry is None:  # test-partition records may carry no labels
        return np.zeros(0, dtype=np.int64)
    kind, spans = _feature(buf, entry)
    if kind == 0:
        # A labels entry with no value list is damage, not "no labels": training on it would teach an all-zero
        # target. (A record without a labels entry at all is a test-partition video.)
        raise WireError(f"feature {LABELS_KEY!r} holds no value list, expected an int64_list")
    _expect_kind(kind, _INT64_LIST, LABELS_KEY)
    labels = _int64_values(buf, spans)
    if labels:
        low = min(labels)
        if low < 0:
            raise WireError(f"label {low} is negative")
        high = max(labels)
        if num_classes is not None and high >= num_classes:
            raise WireError(f"label {high} is out of range, expected < num_classes = {num_classes}")
    return np.array(labels, dtype=np.int64)


# --------------------------------------------------------------------------------------------------------------------
# Encoding (synthetic data, tests)


def _map_entry(key: str, value: bytes) -> bytes:
    """One ``map<string, message>`` entry inside Features / FeatureLists (field 1)."""
    return len_field(1, len_field(1, key.encode()) + len_field(2, value))


def _bytes_feature(value: bytes) -> bytes:
    return len_field(_BYTES_LIST, len_field(1, value))


def _int64_feature(values) -> bytes:
    return len_field(_INT64_LIST, packed_varint_field(1, values))


def _float_feature(values: np.ndarray) -> bytes:
    packed = np.ascontiguousarray(values, dtype=_F32).tobytes()
    return len_field(_FLOAT_LIST, len_field(1, packed) if packed else b"")


def _context(video_id: str | bytes, labels, id_key: str) -> bytes:
    """The id and (unless ``labels`` is None) the labels, as Features map entries."""
    vid = video_id.encode() if isinstance(video_id, str) else bytes(video_id)
    context = _map_entry(id_key, _bytes_feature(vid))
    if labels is not None:
        context += _map_entry(LABELS_KEY, _int64_feature(labels))
    return context


def _feature_list(frames: np.ndarray) -> bytes:
    """A FeatureList of one bytes feature per frame, built as one (T, stride) array (no per-frame Python)."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 2:
        raise ValueError(f"frames must be a uint8 (T, F) array, got {frames.dtype} {frames.shape}")
    t, dim = frames.shape
    header, _ = _frame_layout(dim)
    table = np.empty((t, len(header) + dim), dtype=np.uint8)
    table[:, :len(header)] = np.frombuffer(header, dtype=np.uint8)
    table[:, len(header):] = frames
    return table.tobytes()


def encode_sequence_example(video_id: str | bytes, labels, frames: Mapping[str, np.ndarray], *,
                            id_key: str = ID_KEY) -> bytes:
    """Serialise a frame-level ``tf.train.SequenceExample`` in the YouTube-8M schema (the one encoder: synth, tests
    and extract's shard writer all use it).

    Args:
        video_id: the context ``id``.
        labels: class ids (int64 list, written in the order given), or None: no ``labels`` feature, as in the
            dataset's test partition.
        frames: modality name -> uint8 (T, F) frames, one bytes feature per frame.
        id_key: ``"id"`` (2018) or :data:`ID_KEY_2017` (``"video_id"``).
    """
    context = _context(video_id, labels, id_key)
    lists = b"".join(_map_entry(name, _feature_list(x)) for name, x in frames.items())
    return len_field(1, context) + len_field(2, lists)


def encode_example(video_id: str | bytes, labels, features: Mapping[str, np.ndarray], *,
                   id_key: str = ID_KEY) -> bytes:
    """Serialise a video-level ``tf.train.Example``: ``id``, ``labels`` and ``mean_<name>`` float lists.

    Args:
        video_id: the ``id`` feature.
        labels: class ids (int64 list).
        features: modality name -> float32 (F,) vector, written as ``mean_<name>``.
        id_key: ``"id"`` (2018) or :data:`ID_KEY_2017` (``"video_id"``).
    """
    body = _context(video_id, labels, id_key)
    body += b"".join(_map_entry(MEAN_PREFIX + name, _float_feature(np.ravel(x))) for name, x in features.items())
    return len_field(1, body)


def quantize(x) -> np.ndarray:
    """YouTube-8M quantization of float features: ``round((clip(x, -2, 2) + 2) * 255 / 4)`` as uint8."""
    x = np.asarray(x, dtype=np.float32)
    return np.rint((np.clip(x, -2.0, 2.0) + 2.0) * np.float32(255.0 / 4.0)).astype(np.uint8)


# --------------------------------------------------------------------------------------------------------------------
# Shard


class YT8MShard:
    """One YouTube-8M TFRecord file (frame- or video-level) as a :class:`~attncluster.data.records.Shard`.

    ``read(i)`` seeks to record ``i`` through an index of record offsets, built on first use from the 12-byte record
    headers; iteration streams the file front to back (no index pass, so one read of a remote file).

    Args:
        path: local path or fsspec URL.
        modalities: modality name -> feature size; default ``{"rgb": 1024, "audio": 128}``.
        num_classes: when given, labels must be below it.
        skip_corrupt: skip damaged records (counted in ``stats.corrupt``) instead of raising :class:`DataError`.
        stats: counts files opened, videos and frames read, and corrupt records skipped (a damaged tail once).
        max_frames: keep at most this many frames per video (``None``: all).

    Attributes:
        last_error: with ``skip_corrupt``, the message of the last damaged record skipped (for warnings).
    """

    def __init__(self, path: str | os.PathLike, *, modalities: Mapping[str, int] | None = None,
                 num_classes: int | None = None, skip_corrupt: bool = False, stats: ReadStats | None = None,
                 max_frames: int | None = MAX_FRAMES) -> None:
        self.path = os.fspath(path)
        self.modalities = dict(DEFAULT_MODALITIES if modalities is None else modalities)
        if not self.modalities:
            raise ValueError("YT8MShard: modalities must name at least one modality")
        self.num_classes = num_classes
        self.skip_corrupt = skip_corrupt
        self.stats = stats if stats is not None else ReadStats()
        self.max_frames = max_frames
        self._index: np.ndarray | None = None
        self._f = None
        self._pid: int | None = None
        self._file_counted = False
        self._damage_counted: set[int] = set()  # offsets of damaged framing already counted, however many passes
        self.last_error: str | None = None  # why the last record skipped with skip_corrupt was skipped

    # -- file handling ------------------------------------------------------------------------------------------

    def _open(self, sequential: bool = False):
        f = open_records(self.path, sequential=sequential)
        if not self._file_counted:
            self._file_counted = True
            self.stats.files += 1
        return f

    def _file(self):
        # After a fork (DataLoader workers) the inherited descriptor shares its offset with the parent: reopen.
        if self._f is None or self._pid != os.getpid():
            self._f = self._open()
            self._pid = os.getpid()
        return self._f

    def close(self) -> None:
        if self._f is not None and self._pid == os.getpid():
            self._f.close()
        self._f = None

    def __enter__(self) -> YT8MShard:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_f"] = None  # open files do not pickle (spawned workers reopen)
        state["_pid"] = None
        return state

    def __repr__(self) -> str:
        return f"YT8MShard({self.path!r})"

    def _skipped(self, error: DataError) -> None:
        self.last_error = str(error)
        self.stats.corrupt += 1

    def _count_empty(self, error: DataError) -> None:
        if -3 not in self._damage_counted:
            self._damage_counted.add(-3)
            self.last_error = str(error)
            self.stats.empty_files += 1

    def _count_framing(self, error: RecordFramingError, offset: int) -> None:
        """Count a damaged stretch once per file, however many passes (epochs, index + iteration) meet it."""
        if offset not in self._damage_counted:
            self._damage_counted.add(offset)
            self._skipped(error)
            self.stats.bytes_lost += error.bytes_lost

    # -- Shard protocol -------------------------------------------------------------------------------------------

    @property
    def index(self) -> np.ndarray:
        """(n, 2) int64: byte offset and payload length of every (intact) record."""
        if self._index is None:
            try:
                self._index = index_records(self._file(), self.path)
            except EmptyFileError as e:
                if not self.skip_corrupt:
                    raise
                self._index = np.zeros((0, 2), dtype=np.int64)
                self._count_empty(e)
            except RecordFramingError as e:
                if not self.skip_corrupt:
                    raise
                # Resynchronise past each damaged stretch: the records around it are intact and still readable.
                local = ReadStats()
                self._index = index_records(self._file(), self.path, skip_corrupt=True, stats=local)
                self.last_error = str(e)
                if e.offset not in self._damage_counted:
                    self._damage_counted.add(e.offset)
                    self.stats.corrupt += local.corrupt
                    self.stats.bytes_lost += local.bytes_lost
        return self._index

    def __len__(self) -> int:
        return len(self.index)

    def _parse(self, payload: Buffer, i: int, offset: int) -> RawVideo:
        video = parse_yt8m(payload, modalities=self.modalities, num_classes=self.num_classes,
                           max_frames=self.max_frames, path=self.path, index=i, offset=offset)
        self.stats.videos += 1
        self.stats.frames += video.num_frames
        return video

    def read(self, i: int) -> RawVideo | None:
        """Record ``i`` (negative counts from the end); ``None`` only for a damaged record with ``skip_corrupt``."""
        index = self.index
        n = len(index)
        if not -n <= i < n:
            raise IndexError(f"{self.path}: record {i} out of range, the file has {n} records")
        i %= n
        offset, length = int(index[i, 0]), int(index[i, 1])
        try:
            return self._parse(read_payload(self._file(), self.path, i, offset, length), i, offset)
        except DataError as e:
            if not self.skip_corrupt:
                raise
            self._skipped(e)
            return None

    def __iter__(self) -> Iterator[RawVideo]:
        """Every intact video, front to back; damaged records are skipped with ``skip_corrupt``, else raise."""
        f = self._open(sequential=True)  # a handle of its own, so that read() calls meanwhile do not move this one
        try:
            for i, offset, payload in scan_records(f, self.path, resync=self.skip_corrupt):
                try:
                    if isinstance(payload, DataError):
                        raise payload
                    video = self._parse(payload, i, offset)
                except RecordFramingError as e:
                    if not self.skip_corrupt:
                        raise
                    self._count_framing(e, offset)
                    continue
                except DataError as e:
                    if not self.skip_corrupt:
                        raise
                    self._skipped(e)
                    continue
                yield video
        except EmptyFileError as e:
            if not self.skip_corrupt:
                raise
            self._count_empty(e)
        except RecordFramingError as e:  # a stream that cannot seek ends at the damage
            if not self.skip_corrupt:
                raise
            self._count_framing(e, -2)
        finally:
            f.close()


__all__ = [
    "DEFAULT_MODALITIES",
    "ID_KEY",
    "ID_KEY_2017",
    "LABELS_KEY",
    "MEAN_PREFIX",
    "YT8MShard",
    "encode_example",
    "encode_sequence_example",
    "parse_yt8m",
    "quantize",
]
