"""data/protowire.py, and the YouTube-8M reader's protobuf merge semantics against the protobuf runtime as oracle.

The oracle is the real protobuf runtime (``google.protobuf``, no TensorFlow) with tf.train's Example /
SequenceExample schema built from descriptors. Generated records split and duplicate fields as protobuf allows
(a map entry with several ``value`` fields, split lists, repeated keys and entries, a split top-level message,
oneof switches, packed and unpacked lists, NaN/inf values). Every record must either read exactly as the oracle's
merged message does, or be refused with a DataError: never read differently.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from attncluster.data import protowire as pw
from attncluster.data.yt8m import encode_example, encode_sequence_example, parse_yt8m
from attncluster.errors import DataError

# --- the wire codec itself --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, encoded", [(0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"),
                                            (300, b"\xac\x02"), ((1 << 64) - 1, b"\xff" * 9 + b"\x01")])
def test_varints_match_the_protobuf_encoding_documentation(value, encoded):
    # Values from the protobuf encoding guide (150 -> 96 01 style): 300 = 0b100101100 -> ac 02.
    assert pw.varint_bytes(value) == encoded
    assert pw.read_varint(encoded, 0, len(encoded)) == (value, len(encoded))


def test_fields_spans_and_errors():
    msg = pw.varint_field(1, 150) + pw.len_field(2, b"testing") + pw.tag(3, pw.FIXED32) + b"\x01\x02\x03\x04"
    assert msg[:3] == b"\x08\x96\x01"  # the guide's example: field 1 = 150
    got = pw.fields(msg, 0, len(msg))
    assert got[0] == (1, pw.VARINT, 150, 0)
    f, w, a, b = got[1]
    assert (f, w, msg[a:b]) == (2, pw.LEN, b"testing")
    assert got[2][:2] == (3, pw.FIXED32) and msg[got[2][2]:got[2][3]] == b"\x01\x02\x03\x04"
    with pytest.raises(pw.WireError, match="says 7 bytes"):
        pw.fields(msg[:10], 0, 10)
    with pytest.raises(pw.WireError, match="field number 0"):
        pw.fields(b"\x00\x00", 0, 2)
    with pytest.raises(pw.WireError, match="wire type 3"):
        pw.fields(b"\x0b", 0, 1)
    with pytest.raises(pw.WireError, match="truncated varint"):
        pw.read_varint(b"\x80\x80", 0, 2)
    values: list[int] = []
    pw.packed_varints(pw.varint_bytes(3) + pw.varint_bytes(270) + pw.varint_bytes((1 << 64) - 2), 0, 13, values)
    assert pw.signed64(values) == [3, 270, -2]
    assert pw.packed_varint_field(4, []) == b""
    assert pw.packed_varint_field(4, [3, 270]) == b"\x22\x03\x03\x8e\x02"  # tag 4/LEN, length 3, 03 8e 02


# --- the oracle -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tf_messages():
    """tf.train.Example and SequenceExample classes from example.proto / feature.proto's schema (proto3)."""
    pytest.importorskip("google.protobuf")
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fd = descriptor_pb2.FileDescriptorProto(name="tf_example_oracle.proto", package="tensorflow", syntax="proto3")
    REP, OPT = F.LABEL_REPEATED, F.LABEL_OPTIONAL

    def msg(name, *flds, nested=(), oneof=None):
        m = fd.message_type.add(name=name)
        if oneof:
            m.oneof_decl.add(name=oneof)
        for n, num, typ, label, tname in flds:
            f = m.field.add(name=n, number=num, type=typ, label=label)
            if tname:
                f.type_name = tname
            if oneof:
                f.oneof_index = 0
        m.nested_type.extend(nested)

    def map_entry(name, value_type):
        e = descriptor_pb2.DescriptorProto(name=name)
        e.field.add(name="key", number=1, type=F.TYPE_STRING, label=OPT)
        e.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=OPT, type_name=value_type)
        e.options.map_entry = True
        return e

    msg("BytesList", ("value", 1, F.TYPE_BYTES, REP, None))
    msg("FloatList", ("value", 1, F.TYPE_FLOAT, REP, None))
    msg("Int64List", ("value", 1, F.TYPE_INT64, REP, None))
    msg("Feature", ("bytes_list", 1, F.TYPE_MESSAGE, OPT, ".tensorflow.BytesList"),
        ("float_list", 2, F.TYPE_MESSAGE, OPT, ".tensorflow.FloatList"),
        ("int64_list", 3, F.TYPE_MESSAGE, OPT, ".tensorflow.Int64List"), oneof="kind")
    msg("Features", ("feature", 1, F.TYPE_MESSAGE, REP, ".tensorflow.Features.FeatureEntry"),
        nested=[map_entry("FeatureEntry", ".tensorflow.Feature")])
    msg("FeatureList", ("feature", 1, F.TYPE_MESSAGE, REP, ".tensorflow.Feature"))
    msg("FeatureLists", ("feature_list", 1, F.TYPE_MESSAGE, REP, ".tensorflow.FeatureLists.FeatureListEntry"),
        nested=[map_entry("FeatureListEntry", ".tensorflow.FeatureList")])
    msg("Example", ("features", 1, F.TYPE_MESSAGE, OPT, ".tensorflow.Features"))
    msg("SequenceExample", ("context", 1, F.TYPE_MESSAGE, OPT, ".tensorflow.Features"),
        ("feature_lists", 2, F.TYPE_MESSAGE, OPT, ".tensorflow.FeatureLists"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    get = message_factory.GetMessageClass
    return (get(pool.FindMessageTypeByName("tensorflow.Example")),
            get(pool.FindMessageTypeByName("tensorflow.SequenceExample")))


DIMS = {"rgb": 6, "audio": 3}
NUM_CLASSES = 50


class Invalid(Exception):
    """The oracle's merged message does not hold a valid YouTube-8M video (a reader must refuse it)."""


def oracle_reading(payload: bytes, frame_level: bool, tf_messages) -> tuple[str, list[int], dict[str, np.ndarray]]:
    """What the merged protobuf message says: id, labels, features; Invalid where it breaks the schema."""
    from google.protobuf.message import DecodeError

    Example, SequenceExample = tf_messages
    m = (SequenceExample if frame_level else Example)()
    try:
        m.ParseFromString(payload)
    except DecodeError as e:
        raise Invalid(f"protobuf: {e}") from None
    feats = (m.context if frame_level else m.features).feature
    key = "id" if "id" in feats else "video_id" if "video_id" in feats else None
    if key is None or feats[key].WhichOneof("kind") != "bytes_list" or len(feats[key].bytes_list.value) != 1:
        raise Invalid("not one id")
    video_id = feats[key].bytes_list.value[0].decode("utf-8")
    labels: list[int] = []
    if "labels" in feats:
        if feats["labels"].WhichOneof("kind") != "int64_list":
            raise Invalid("labels not an int64_list")
        labels = list(feats["labels"].int64_list.value)
        if any(not 0 <= x < NUM_CLASSES for x in labels):
            raise Invalid("label out of range")
    out = {}
    if frame_level:
        lists = m.feature_lists.feature_list
        for name, dim in DIMS.items():
            if name not in lists or not len(lists[name].feature):
                raise Invalid(f"no {name} frames")
            rows = []
            for f in lists[name].feature:
                if f.WhichOneof("kind") != "bytes_list" or len(f.bytes_list.value) != 1 \
                        or len(f.bytes_list.value[0]) != dim:
                    raise Invalid("bad frame")
                rows.append(np.frombuffer(f.bytes_list.value[0], np.uint8))
            out[name] = np.stack(rows)
        t = min(a.shape[0] for a in out.values())
        out = {k: a[:t] for k, a in out.items()}
    else:
        for name, dim in DIMS.items():
            f = feats.get("mean_" + name)
            if f is None or f.WhichOneof("kind") not in ("float_list", None):
                raise Invalid(f"no mean_{name}")
            values = np.array(f.float_list.value, dtype=np.float32)
            if values.size != dim or not np.isfinite(values).all():
                raise Invalid(f"mean_{name}: {values.size} values or not finite")
            out[name] = values.reshape(1, dim)
    return video_id, labels, out


# --- generated records ------------------------------------------------------------------------------------------------


def _chunks(rng, items: list, most: int = 3) -> list[list]:
    """``items`` cut into 1..most consecutive (possibly empty) parts."""
    k = int(rng.integers(1, most + 1))
    cuts = sorted(int(c) for c in rng.integers(0, len(items) + 1, size=k - 1))
    return [items[a:b] for a, b in zip([0] + cuts, cuts + [len(items)])]


def _int64_list(rng, values: list[int]) -> bytes:
    if rng.random() < 0.5:
        return pw.packed_varint_field(1, values)
    return b"".join(pw.varint_field(1, v) for v in values)  # unpacked, as protobuf also accepts


def _float_list(rng, values: list[float]) -> bytes:
    if rng.random() < 0.5:
        return pw.len_field(1, np.asarray(values, "<f4").tobytes()) if values else b""
    return b"".join(pw.tag(1, pw.FIXED32) + struct.pack("<f", v) for v in values)


def _feature_values(rng, kind: int, values: list) -> list[bytes]:
    """A Feature holding ``values`` as the serialised ``value`` messages of one map entry: split across several
    value fields, and inside each across several list fields, as protobuf merging allows."""
    out = []
    for part in _chunks(rng, values):
        lists = b""
        for piece in _chunks(rng, part, 2):
            if kind == 1:
                body = b"".join(pw.len_field(1, v) for v in piece)
            elif kind == 2:
                body = _float_list(rng, piece)
            else:
                body = _int64_list(rng, piece)
            lists += pw.len_field(kind, body)
        out.append(lists)
    return out


def _entry(rng, key: str, values: list[bytes]) -> bytes:
    """One map entry: key and value fields in a random order, sometimes a decoy key first (the last key wins)."""
    parts = [pw.len_field(2, v) for v in values]
    at = int(rng.integers(0, len(parts) + 1))
    parts.insert(at, pw.len_field(1, key.encode()))
    if rng.random() < 0.1:
        parts.insert(0, pw.len_field(1, b"decoy"))
    return pw.len_field(1, b"".join(parts))


def _features(rng, entries: list[bytes]) -> list[bytes]:
    """A Features / FeatureLists map, in a random entry order, split into 1-2 top-level occurrences."""
    order = [entries[i] for i in rng.permutation(len(entries))]
    return [b"".join(part) for part in _chunks(rng, order, 2)]


def generate(rng, frame_level: bool) -> bytes:
    entries = []
    ids = [b"v%03d" % rng.integers(1000)]
    if rng.random() < 0.15:
        ids.append(b"w%03d" % rng.integers(1000))  # two ids in one entry: must be refused
    entries.append(_entry(rng, "id", _feature_values(rng, 1, ids)))
    labels = [int(x) for x in rng.integers(0, NUM_CLASSES + (rng.random() < 0.05), size=rng.integers(0, 7))]
    if rng.random() < 0.1:  # an earlier entry with the same key: the later one replaces it
        entries.append(_entry(rng, "labels", _feature_values(rng, 3, [7, 7, 7])))
    if rng.random() < 0.08:  # a oneof switch inside the merged value: the last member wins
        values = _feature_values(rng, 2, [1.5]) + _feature_values(rng, 3, labels)
    else:
        values = _feature_values(rng, 3, labels)
    if rng.random() < 0.9:
        entries.append(_entry(rng, "labels", values))
    if not frame_level:
        for name, dim in DIMS.items():
            x = [float(v) for v in rng.normal(size=dim + (rng.random() < 0.05)).astype(np.float32)]
            if rng.random() < 0.1:
                x[int(rng.integers(len(x)))] = [np.nan, np.inf, -np.inf][int(rng.integers(3))]
            entries.append(_entry(rng, "mean_" + name, _feature_values(rng, 2, x)))
        body = b"".join(pw.len_field(1, f) for f in _features(rng, entries))
        return body + (b"\x12\x00" if rng.random() < 0.3 else b"")  # the real files' empty field 2
    lists = []
    t = int(rng.integers(1, 6))
    for name, dim in DIMS.items():
        frames = []
        for _ in range(t + int(rng.integers(0, 2))):
            frame = [rng.integers(0, 256, size=dim, dtype=np.uint8).tobytes()]
            if rng.random() < 0.03:
                frame.append(frame[0])  # two byte strings in one frame: refused
            frames.append(pw.len_field(1, b"".join(pw.len_field(1, pw.len_field(1, v)) for v in frame)))
        values = [b"".join(part) for part in _chunks(rng, frames)]  # the FeatureList split over value fields
        lists.append(_entry(rng, name, values))
    context = b"".join(pw.len_field(1, f) for f in _features(rng, entries))
    return context + b"".join(pw.len_field(2, f) for f in _features(rng, lists))


def compare(payload: bytes, frame_level: bool, tf_messages) -> str:
    """'same' (read as the oracle reads it), 'refused-invalid', 'refused-valid'; AssertionError on a misread."""
    try:
        video = parse_yt8m(payload, modalities=DIMS, num_classes=NUM_CLASSES, max_frames=None)
    except DataError:
        try:
            oracle_reading(payload, frame_level, tf_messages)
        except Invalid:
            return "refused-invalid"
        return "refused-valid"
    video_id, labels, features = oracle_reading(payload, frame_level, tf_messages)  # Invalid here: a misread
    assert video.id == video_id
    assert video.labels.tolist() == labels
    assert video.features.keys() == features.keys()
    for k, a in features.items():
        assert video.features[k].dtype == a.dtype and np.array_equal(video.features[k], a)
    return "same"


@pytest.mark.parametrize("frame_level", [False, True], ids=["Example", "SequenceExample"])
def test_generated_split_and_duplicated_fields_read_as_protobuf_merges_them(frame_level, tf_messages):
    rng = np.random.default_rng(15 + frame_level)
    counts = {"same": 0, "refused-invalid": 0, "refused-valid": 0}
    for _ in range(300):
        counts[compare(generate(rng, frame_level), frame_level, tf_messages)] += 1
    # Every valid record is read, as merged: nothing protobuf reads as a valid video is refused either.
    assert counts["refused-valid"] == 0, counts
    assert counts["same"] > 150 and counts["refused-invalid"] > 10, counts


def _entry_bytes(key: str, *values: bytes) -> bytes:
    return pw.len_field(1, pw.len_field(1, key.encode()) + b"".join(pw.len_field(2, v) for v in values))


def test_the_issues_three_cases(tf_messages):
    """Labels [1, 3, 7, 9] + [4] in two value fields; 40 + 1 rgb frames; two ids in one entry."""
    mean = {n: np.linspace(-1, 1, d, dtype=np.float32) for n, d in DIMS.items()}
    labels = pw.len_field(3, pw.packed_varint_field(1, [1, 3, 7, 9])), pw.len_field(3, pw.packed_varint_field(1, [4]))
    rest = encode_example("abcd", [], mean)[2:]  # the id, an empty labels and the means, as map entries
    # Our entry after the encoder's: a later entry with the same key replaces its empty labels.
    payload = pw.len_field(1, rest + _entry_bytes("labels", *labels))
    assert compare(payload, False, tf_messages) == "same"
    assert parse_yt8m(payload, modalities=DIMS).labels.tolist() == [1, 3, 7, 9, 4]

    frames = np.arange(41 * 6, dtype=np.uint8).reshape(41, 6)
    record = encode_sequence_example("abcd", [2], {"rgb": frames, "audio": frames[:, :3].copy()})
    whole = parse_yt8m(record, modalities=DIMS)
    split = _entry_bytes("rgb", b"".join(pw.len_field(1, pw.len_field(1, pw.len_field(1, f.tobytes())))
                                         for f in frames[:40]),
                         pw.len_field(1, pw.len_field(1, pw.len_field(1, frames[40].tobytes()))))
    payload = record + pw.tag(2, pw.LEN) + pw.varint_bytes(len(split)) + split  # a later rgb entry, split in two
    video = parse_yt8m(payload, modalities=DIMS)
    assert video.features["rgb"].shape == (41, 6) and np.array_equal(video.features["rgb"], frames)
    assert np.array_equal(video.features["audio"], whole.features["audio"])
    assert compare(payload, True, tf_messages) == "same"

    means = b"".join(_entry_bytes("mean_" + n, pw.len_field(2, pw.len_field(1, x.tobytes()))) for n, x in mean.items())
    two_ids = pw.len_field(1, _entry_bytes("id", pw.len_field(1, pw.len_field(1, b"aaaa")),
                                           pw.len_field(1, pw.len_field(1, b"bbbb"))) + means)
    assert parse_yt8m(pw.len_field(1, _entry_bytes("id", pw.len_field(1, pw.len_field(1, b"aaaa"))) + means),
                      modalities=DIMS).id == "aaaa"  # the same record with one id reads
    with pytest.raises(DataError, match="'id' holds 2 byte strings, expected 1"):
        parse_yt8m(two_ids, modalities=DIMS)
    assert compare(two_ids, False, tf_messages) == "refused-invalid"


def test_non_finite_means_are_refused_naming_the_record(tf_messages):
    mean = {n: np.zeros(d, dtype=np.float32) for n, d in DIMS.items()}
    mean["audio"][1] = np.nan
    payload = encode_example("nanv", [1], mean)
    with pytest.raises(DataError, match=r"x.tfrecord: record 5 at byte offset 99 \(id 'nanv'\): 'audio' features "
                                        r"hold 1 non-finite value .*feature 1"):
        parse_yt8m(payload, modalities=DIMS, path="x.tfrecord", index=5, offset=99)
    assert compare(payload, False, tf_messages) == "refused-invalid"
