"""extract/writer.py: dataset-format records (checked by two independent decoders), atomic shards, resume."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

from attncluster.data.dataset import VideoDataset
from attncluster.data.yt8m import YT8MShard, parse_yt8m
from attncluster.errors import ConfigError
from attncluster.extract.writer import ShardWriter, encode_frame_level, read_manifests


# ---- an independent protobuf wire-format decoder (the spec: varints, tags, length-delimited fields) ----------------

def varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, pos


def fields(buf: bytes) -> list[tuple[int, int, object]]:
    """(field number, wire type, value) of every field of a message; length-delimited values as bytes."""
    out, pos = [], 0
    while pos < len(buf):
        key, pos = varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = varint(buf, pos)
        elif wire == 2:
            n, pos = varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        else:
            raise AssertionError(f"unexpected wire type {wire}")
        out.append((number, wire, value))
    return out


def decode_features_map(buf: bytes) -> dict[str, bytes]:
    """Features / FeatureLists: repeated map entry (field 1) {1: key string, 2: value message}."""
    out = {}
    for number, wire, entry in fields(buf):
        assert (number, wire) == (1, 2)
        kv = {n: v for n, _, v in fields(entry)}
        out[kv[1].decode()] = kv[2]
    return out


def decode_sequence_example(payload: bytes) -> dict:
    """tf.train.SequenceExample {1: context Features, 2: feature_lists FeatureLists} by hand."""
    top = {n: v for n, _, v in fields(payload)}
    assert set(top) == {1, 2}
    context = {}
    for key, feature in decode_features_map(top[1]).items():
        (kind, _, body), = fields(feature)  # Feature: exactly one of 1 bytes_list, 2 float_list, 3 int64_list
        if kind == 1:
            context[key] = [v for _, _, v in fields(body)]
        elif kind == 3:
            vals = []
            for n, wire, v in fields(body):
                if wire == 2:  # packed
                    p = 0
                    while p < len(v):
                        x, p = varint(v, p)
                        vals.append(x)
                else:
                    vals.append(v)
            context[key] = vals
        else:
            raise AssertionError(kind)
    lists = {}
    for key, feature_list in decode_features_map(top[2]).items():
        frames = []
        for n, _, feature in fields(feature_list):  # FeatureList: repeated Feature (field 1)
            assert n == 1
            (kind, _, body), = fields(feature)
            assert kind == 1
            (vn, _, value), = fields(body)  # BytesList with exactly one value per frame
            frames.append(np.frombuffer(value, dtype=np.uint8))
        lists[key] = np.stack(frames)
    return {"context": context, "lists": lists}


def masked_crc(data: bytes) -> int:
    import crc32c

    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def split_tfrecord(raw: bytes) -> list[bytes]:
    """TFRecord framing by hand: uint64 length, masked crc32c(length), payload, masked crc32c(payload)."""
    out, pos = [], 0
    while pos < len(raw):
        (n,) = struct.unpack_from("<Q", raw, pos)
        (lcrc,) = struct.unpack_from("<I", raw, pos + 8)
        assert lcrc == masked_crc(raw[pos:pos + 8])
        payload = raw[pos + 12:pos + 12 + n]
        (pcrc,) = struct.unpack_from("<I", raw, pos + 12 + n)
        assert pcrc == masked_crc(payload)
        out.append(payload)
        pos += 16 + n
    return out


def video(seed: int, t: int):
    rng = np.random.default_rng(seed)
    return {"rgb": rng.integers(0, 256, (t, 1024), dtype=np.uint8),
            "audio": rng.integers(0, 256, (t, 128), dtype=np.uint8)}


def test_record_decodes_identically_by_hand_by_protobuf_and_by_our_parser():
    arrays = video(0, 7)
    payload = encode_frame_level("clip-01", [17, 3], arrays)
    mine = decode_sequence_example(payload)
    assert mine["context"] == {"id": [b"clip-01"], "labels": [3, 17]}  # sorted, as the official extractor
    for m in arrays:
        np.testing.assert_array_equal(mine["lists"][m], arrays[m])
    raw = parse_yt8m(payload)
    assert raw.id == "clip-01" and raw.labels.tolist() == [3, 17]
    for m in arrays:
        np.testing.assert_array_equal(raw.features[m], arrays[m])
    # No labels CSV: no labels feature (as the dataset's test partition); still readable.
    unlabeled = decode_sequence_example(encode_frame_level("x", None, arrays))
    assert unlabeled["context"] == {"id": [b"x"]}
    assert parse_yt8m(encode_frame_level("x", None, arrays)).labels.tolist() == []


def test_record_parses_with_the_protobuf_library_as_tf_train_sequence_example():
    """The real protobuf runtime with tf.train.SequenceExample's schema (example.proto / feature.proto)."""
    pytest.importorskip("google.protobuf")
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fd = descriptor_pb2.FileDescriptorProto(name="tf_example_test.proto", package="tensorflow", syntax="proto3")

    def msg(name, *flds, nested=()):
        m = fd.message_type.add(name=name)
        for n, num, typ, label, tname in flds:
            f = m.field.add(name=n, number=num, type=typ, label=label)
            if tname:
                f.type_name = tname
        for nm in nested:
            m.nested_type.append(nm)
        return m

    REP, OPT = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    msg("BytesList", ("value", 1, F.TYPE_BYTES, REP, None))
    msg("FloatList", ("value", 1, F.TYPE_FLOAT, REP, None))
    msg("Int64List", ("value", 1, F.TYPE_INT64, REP, None))
    msg("Feature", ("bytes_list", 1, F.TYPE_MESSAGE, OPT, ".tensorflow.BytesList"),
        ("float_list", 2, F.TYPE_MESSAGE, OPT, ".tensorflow.FloatList"),
        ("int64_list", 3, F.TYPE_MESSAGE, OPT, ".tensorflow.Int64List"))

    def map_entry(name, value_type):
        e = descriptor_pb2.DescriptorProto(name=name)
        e.field.add(name="key", number=1, type=F.TYPE_STRING, label=OPT)
        e.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=OPT, type_name=value_type)
        e.options.map_entry = True
        return e

    msg("Features", ("feature", 1, F.TYPE_MESSAGE, REP, ".tensorflow.Features.FeatureEntry"),
        nested=[map_entry("FeatureEntry", ".tensorflow.Feature")])
    msg("FeatureList", ("feature", 1, F.TYPE_MESSAGE, REP, ".tensorflow.Feature"))
    msg("FeatureLists", ("feature_list", 1, F.TYPE_MESSAGE, REP, ".tensorflow.FeatureLists.FeatureListEntry"),
        nested=[map_entry("FeatureListEntry", ".tensorflow.FeatureList")])
    msg("SequenceExample", ("context", 1, F.TYPE_MESSAGE, OPT, ".tensorflow.Features"),
        ("feature_lists", 2, F.TYPE_MESSAGE, OPT, ".tensorflow.FeatureLists"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    SequenceExample = message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.SequenceExample"))

    arrays = video(1, 5)
    ex = SequenceExample.FromString(encode_frame_level("abcd", [5], arrays))
    assert ex.context.feature["id"].bytes_list.value == [b"abcd"]
    assert list(ex.context.feature["labels"].int64_list.value) == [5]
    for m, a in arrays.items():
        frames = ex.feature_lists.feature_list[m].feature
        got = np.stack([np.frombuffer(f.bytes_list.value[0], np.uint8) for f in frames])
        np.testing.assert_array_equal(got, a)
    # Re-serialising with protobuf and parsing that with our parser gives the same video (byte layout agrees).
    raw = parse_yt8m(ex.SerializeToString())
    np.testing.assert_array_equal(raw.features["rgb"], arrays["rgb"])


def test_shards_framing_resume_and_orphans(tmp_path):
    out = str(tmp_path / "out")
    vids = {f"v{i}": video(i, 3 + i) for i in range(5)}
    with ShardWriter(out, shard_size=2) as w:
        for vid, arrays in vids.items():
            w.add({"id": vid, "source": f"/videos/{vid}.mp4"}, arrays, [int(vid[1:])])
    shards = sorted(n for n in os.listdir(out) if n.endswith(".tfrecord"))
    assert shards == ["extract-000-00000.tfrecord", "extract-000-00001.tfrecord", "extract-000-00002.tfrecord"]
    payloads = [p for s in shards for p in split_tfrecord(open(os.path.join(out, s), "rb").read())]
    assert [decode_sequence_example(p)["context"]["id"][0].decode() for p in payloads] == list(vids)
    got = {v.id: v for s in shards for v in YT8MShard(os.path.join(out, s))}
    for vid, arrays in vids.items():
        np.testing.assert_array_equal(got[vid].features["audio"], arrays["audio"])
    entries = read_manifests(out)
    assert [e["id"] for e in entries] == list(vids) and entries[4]["shard"] == shards[2]
    # The folder reads as a dataset (the manifest is not taken for a shard).
    ds = VideoDataset(out, modalities={"rgb": 1024, "audio": 128}, num_classes=5, seg_num=2, train=False)
    assert sorted(s["id"] for s in ds) == sorted(vids)

    # Resume: a new writer knows the done videos and numbers its shards after the existing ones.
    # Simulate a crash: a shard renamed into place whose manifest lines were never written, and a .tmp.
    open(os.path.join(out, "extract-000-00007.tfrecord"), "wb").write(b"orphan")
    open(os.path.join(out, "extract-000-00008.tfrecord.tmp"), "wb").write(b"partial")
    w = ShardWriter(out, shard_size=2)
    assert w.done == set(vids)
    assert sorted(w.removed) == ["extract-000-00007.tfrecord", "extract-000-00008.tfrecord.tmp"]
    w.add({"id": "v9", "source": "v9.mp4"}, video(9, 2), None)
    w.close()
    assert "extract-000-00003.tfrecord" in os.listdir(out)
    assert [e["id"] for e in read_manifests(out)] == [*vids, "v9"]


def test_torn_manifest_line_is_redone(tmp_path):
    out = str(tmp_path / "o")
    with ShardWriter(out, shard_size=1) as w:
        w.add({"id": "a", "source": "a.mp4"}, video(0, 2), None)
        w.add({"id": "b", "source": "b.mp4"}, video(1, 2), None)
    path = os.path.join(out, "manifest.rank0.jsonl")
    text = open(path).read()
    open(path, "w").write(text[:-10])  # the crash hit while appending b's line
    w = ShardWriter(out)
    assert w.done == {"a"} and w.removed == ["extract-000-00001.tfrecord"]


def test_features_format_reads_back(tmp_path):
    out = str(tmp_path / "feat")
    rng = np.random.default_rng(0)
    arrays = {f"v{i}": {"rgb": rng.standard_normal((4 + i, 6)).astype(np.float16)} for i in range(3)}
    with ShardWriter(out, fmt="features", shard_size=2) as w:
        for vid, a in arrays.items():
            w.add({"id": vid, "source": vid}, a, [i for i in range(int(vid[1:]) + 1)])
    assert open(os.path.join(out, "labels.csv")).read() == "video_id,labels\nv0,0\nv1,0 1\nv2,0 1 2\n"
    ds = VideoDataset(out + "/labels.csv", modalities={"rgb": 6}, num_classes=3, seg_num=4, train=False)
    got = {s["id"]: s for s in ds}
    np.testing.assert_allclose(got["v1"]["rgb"].numpy()[0], arrays["v1"]["rgb"][0].astype(np.float32), rtol=1e-3)
    assert got["v2"]["labels"].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ConfigError, match="--format yt8m stores quantized uint8"):
        ShardWriter(str(tmp_path / "y")).add({"id": "a", "source": "a"}, {"rgb": arrays["v0"]["rgb"]}, None)
    assert json.loads(open(os.path.join(out, "manifest.rank0.jsonl")).readline())["labels"] == [0]


def test_a_full_disk_names_the_shard_and_leaves_no_temporary_file(tmp_path):
    """Before, a full disk left extract-000-00000.tfrecord.tmp and said only 'No space left on device'."""
    from attncluster.errors import FileError
    from test_outputs import file_size_limit

    out = str(tmp_path / "out")
    w = ShardWriter(out, shard_size=2)
    frames = {"rgb": np.zeros((50, 1024), np.uint8), "audio": np.zeros((50, 128), np.uint8)}
    w.add({"id": "a", "source": "a.mp4"}, frames, [1])
    with file_size_limit(10_000), pytest.raises(FileError) as e:
        w.add({"id": "b", "source": "b.mp4"}, frames, [2])  # the second video fills the shard: it is written
    assert str(e.value).startswith(f"{os.path.join(out, 'extract-000-00000.tfrecord')}: cannot write: ")
    assert os.listdir(out) == []


def test_a_killed_runs_temporary_files_are_removed_at_the_next_start(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    debris = [".extract-000-00003.tfrecord.ab12cd.tmp", ".extract-001-00000.tfrecord.zz.tmp", ".v1.npz.q1w2.tmp",
              ".labels.csv.xx.tmp", "extract-000-00004.tfrecord.tmp"]
    mine = ["notes.tmp", ".my.config.tmp", "clip.mp4"]
    for name in debris + mine:
        (out / name).write_bytes(b"x")
    w = ShardWriter(str(out))
    assert sorted(w.removed) == sorted(debris)
    assert sorted(os.listdir(out)) == sorted(mine)
