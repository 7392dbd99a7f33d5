"""YouTube-8M payloads: parsing frame- and video-level records by hand, encoding, YT8MShard, bad data."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from attncluster.data.records import ReadStats, dequantize
from attncluster.data.tfrecord import write_records
from attncluster.data.yt8m import (ID_KEY_2017, YT8MShard, encode_example, encode_sequence_example, parse_yt8m,
                                   quantize)
from attncluster.errors import DataError

REAL_DIR = Path(__file__).parents[2] / "shared" / "data" / "yt8m-2018-video-level"
needs_real = pytest.mark.skipif(not REAL_DIR.is_dir(), reason=f"real YouTube-8M shards not found at {REAL_DIR}")
VIDEO_LEVEL = {"rgb": 1024, "audio": 128}


# --- an independent, minimal protobuf decoder and encoder (plain and slow, written for the tests) ---------------------


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, pos


def pb_fields(buf: bytes) -> list[tuple[int, int, object]]:
    """(field number, wire type, value): an int for varints, the bytes otherwise."""
    out, pos = [], 0
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(buf, pos)
        elif wire == 2:
            n, pos = read_varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise AssertionError(f"wire type {wire}")
        out.append((field, wire, value))
    return out


def example_features(payload: bytes) -> dict[str, bytes]:
    """Example.features (field 1) as name -> serialized Feature."""
    out = {}
    for field, _, features in pb_fields(payload):
        if field == 1:
            for _, _, entry in pb_fields(features):
                kv = {f: v for f, _, v in pb_fields(entry)}
                out[kv[1].decode()] = kv.get(2, b"")
    return out


def feature_values(feature: bytes):
    ((kind, _, lst),) = pb_fields(feature)
    values = pb_fields(lst)
    if kind == 1:
        return [v for _, _, v in values]
    if kind == 2:
        return np.concatenate([np.frombuffer(v, "<f4") for _, _, v in values])
    packed = b"".join(v for _, _, v in values)
    out, pos = [], 0
    while pos < len(packed):
        v, pos = read_varint(packed, pos)
        out.append(v)
    return out


def record_payloads(data: bytes) -> list[tuple[int, bytes]]:
    """(offset, payload) of each TFRecord record, by a struct walk."""
    out, pos = [], 0
    while pos < len(data):
        (n,) = struct.unpack_from("<Q", data, pos)
        out.append((pos, data[pos + 12:pos + 12 + n]))
        pos += 16 + n
    return out


def varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def ld(field: int, body: bytes) -> bytes:
    return varint(field << 3 | 2) + varint(len(body)) + body


def entry(key: str, value: bytes) -> bytes:
    return ld(1, ld(1, key.encode()) + ld(2, value))


def frames_of(rng, t: int, dims=(1024, 128)) -> dict[str, np.ndarray]:
    return {"rgb": rng.integers(0, 256, (t, dims[0]), dtype=np.uint8),
            "audio": rng.integers(0, 256, (t, dims[1]), dtype=np.uint8)}


# --- real video-level shards ------------------------------------------------------------------------------------------


@needs_real
def test_real_shard_matches_an_independent_decode():
    path = REAL_DIR / "validate0003.tfrecord"
    records = record_payloads(path.read_bytes())
    shard = YT8MShard(path, modalities=VIDEO_LEVEL, num_classes=3862)
    assert len(shard) == len(records)
    streamed = list(shard)
    total_labels = 0
    for i, (offset, payload) in enumerate(records):
        feats = example_features(payload)
        video = streamed[i]
        assert video.id == feature_values(feats["id"])[0].decode()
        labels = feature_values(feats["labels"])
        assert video.labels.tolist() == labels
        total_labels += len(labels)
        np.testing.assert_array_equal(video.features["rgb"][0], feature_values(feats["mean_rgb"]))
        np.testing.assert_array_equal(video.features["audio"][0], feature_values(feats["mean_audio"]))
    assert total_labels == sum(len(v.labels) for v in streamed)
    assert 2 * len(records) < total_labels < 5 * len(records)  # about 3 labels per video
    for i in (0, len(records) // 2, -1):  # random access agrees with the stream
        a, b = shard.read(i), streamed[i]
        assert a.id == b.id and a.labels.tolist() == b.labels.tolist()
        np.testing.assert_array_equal(a.features["rgb"], b.features["rgb"])


@needs_real
def test_real_shard_has_the_empty_top_level_field_we_skip():
    _, payload = record_payloads((REAL_DIR / "validate0000.tfrecord").read_bytes())[0]
    assert (2, 2, b"") in pb_fields(payload)  # an empty feature_lists
    video = parse_yt8m(payload)
    assert set(video.features) == {"rgb", "audio"}


@needs_real
def test_all_real_shards_ids_shapes_labels_and_value_range():
    stats = ReadStats()
    lo, hi, videos = np.inf, -np.inf, 0
    for path in sorted(REAL_DIR.glob("validate00[01][0-9].tfrecord")):  # the 20 shards tests may use
        for video in YT8MShard(path, num_classes=3862, stats=stats):
            assert len(video.id) == 4
            assert video.features["rgb"].shape == (1, 1024) and video.features["rgb"].dtype == np.float32
            assert video.features["audio"].shape == (1, 128) and video.features["audio"].dtype == np.float32
            assert video.num_frames == 1
            assert len(video.labels) >= 1
            for x in video.features.values():
                lo, hi = min(lo, x.min()), max(hi, x.max())
            videos += 1
    # The means of dequantized values span exactly q = 0 -> -2 + 4/512 and q = 255 -> 2 + 4/512.
    assert lo == np.float32(-1.9921875) and hi == np.float32(2.0078125)
    assert stats.files == 20 and stats.videos == videos and stats.frames == videos and stats.corrupt == 0
    assert 5500 < videos < 6500


# --- encoding and parsing ---------------------------------------------------------------------------------------------


def test_frame_level_round_trip_is_zero_copy():
    frames = frames_of(np.random.default_rng(0), 37)
    payload = bytearray(encode_sequence_example("ab1Z", [3, 1000, 3861], frames))
    video = parse_yt8m(payload, num_classes=3862)
    assert video.id == "ab1Z" and video.labels.tolist() == [3, 1000, 3861] and video.labels.dtype == np.int64
    assert video.num_frames == 37
    for name, x in frames.items():
        got = video.features[name]
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, x)
        assert np.shares_memory(got, np.frombuffer(payload, np.uint8))  # a view into the record, no copy


def test_frame_level_layout_is_the_tensorflow_one():
    # Feature{bytes_list{value: 1024 bytes}} inside FeatureList.feature: tag 0x0a and a 2-byte varint, three times.
    frame = bytes(range(256)) * 4
    payload = encode_sequence_example("abcd", [], {"rgb": np.frombuffer(frame, np.uint8)[None]})
    assert bytes.fromhex("0a8608" "0a8308" "0a8008") + frame in payload
    lists = [v for f, _, v in pb_fields(payload) if f == 2][0]
    entry_fields = dict((f, v) for f, _, v in pb_fields(pb_fields(lists)[0][2]))
    assert entry_fields[1] == b"rgb"
    ((_, _, feature),) = pb_fields(entry_fields[2])
    assert feature_values(feature) == [frame]


def test_video_level_round_trip():
    rgb = np.linspace(-2, 2, 1024, dtype=np.float32)
    audio = np.arange(128, dtype=np.float32) / 128
    payload = encode_example("zz99", [7], {"rgb": rgb, "audio": audio})
    assert set(example_features(payload)) == {"id", "labels", "mean_rgb", "mean_audio"}
    video = parse_yt8m(payload)
    assert video.id == "zz99" and video.labels.tolist() == [7]
    np.testing.assert_array_equal(video.features["rgb"], rgb[None])
    np.testing.assert_array_equal(video.features["audio"], audio[None])
    assert video.features["rgb"].dtype == np.float32 and video.features["rgb"].flags.c_contiguous


def test_2017_video_id_key():
    frames = frames_of(np.random.default_rng(1), 3)
    assert parse_yt8m(encode_sequence_example("-09cBh2gLzM", [1], frames, id_key=ID_KEY_2017)).id == "-09cBh2gLzM"
    assert ID_KEY_2017 == "video_id"
    level = encode_example("vid2017", [2], {"rgb": np.zeros(1024, np.float32), "audio": np.zeros(128, np.float32)},
                           id_key="video_id")
    assert parse_yt8m(level).id == "vid2017"


def test_frames_beyond_300_are_dropped():
    frames = frames_of(np.random.default_rng(2), 305, dims=(16, 8))
    payload = encode_sequence_example("long", [0], frames)
    video = parse_yt8m(payload, modalities={"rgb": 16, "audio": 8})
    assert video.num_frames == 300
    np.testing.assert_array_equal(video.features["rgb"], frames["rgb"][:300])
    assert parse_yt8m(payload, modalities={"rgb": 16, "audio": 8}, max_frames=None).num_frames == 305
    assert parse_yt8m(payload, modalities={"rgb": 16, "audio": 8}, max_frames=10).num_frames == 10


def test_modalities_of_different_lengths_are_cut_to_the_shortest():
    rng = np.random.default_rng(3)
    frames = {"rgb": rng.integers(0, 256, (10, 1024), dtype=np.uint8),
              "audio": rng.integers(0, 256, (8, 128), dtype=np.uint8)}
    video = parse_yt8m(encode_sequence_example("diff", [1], frames))
    assert video.features["rgb"].shape == (8, 1024) and video.features["audio"].shape == (8, 128)
    np.testing.assert_array_equal(video.features["rgb"], frames["rgb"][:8])


def test_unpacked_labels_and_floats_and_field_order():
    # Int64List with one varint field per value (wire type 0), FloatList with one fixed32 per value (wire type 5),
    # unknown fields in between, features before id: all valid protobuf.
    labels = ld(3, b"".join(varint(1 << 3 | 0) + varint(v) for v in (5, 300, 3000)))
    rgb = np.array([0.5, -1.25, 2.0], dtype=np.float32)
    floats = ld(2, b"".join(varint(1 << 3 | 5) + struct.pack("<f", v) for v in rgb))
    audio = np.array([1.5], dtype=np.float32)
    packed = ld(2, ld(1, audio.tobytes()))
    features = (entry("mean_rgb", floats) + entry("labels", labels) + varint(9 << 3 | 0) + varint(77)
                + entry("mean_audio", packed) + entry("id", ld(1, ld(1, b"unpk"))))
    payload = ld(1, features) + ld(2, b"") + varint(15 << 3 | 5) + b"\0\0\0\0"
    video = parse_yt8m(payload, modalities={"rgb": 3, "audio": 1})
    assert video.id == "unpk" and video.labels.tolist() == [5, 300, 3000]
    np.testing.assert_array_equal(video.features["rgb"], rgb[None])
    np.testing.assert_array_equal(video.features["audio"], audio[None])


def test_non_canonical_frame_encoding_takes_the_slow_path_and_parses():
    # Over-long (but valid) length varints break the fixed stride; the per-frame walk still reads the frames.
    rng = np.random.default_rng(4)
    frames = rng.integers(0, 256, (4, 1024), dtype=np.uint8)
    value_len = b"\x80\x88\x00"  # 1024 as a 3-byte varint
    feature_list = b""
    for i, row in enumerate(frames):
        value = b"\x0a" + (value_len if i == 2 else varint(1024)) + row.tobytes()
        feature_list += ld(1, ld(1, value))
    audio = rng.integers(0, 256, (4, 128), dtype=np.uint8)
    audio_list = b"".join(ld(1, ld(1, ld(1, row.tobytes()))) for row in audio)
    context = entry("id", ld(1, ld(1, b"slow"))) + entry("labels", ld(3, ld(1, varint(2))))
    payload = ld(1, context) + ld(2, entry("audio", audio_list) + entry("rgb", feature_list))
    video = parse_yt8m(payload)
    np.testing.assert_array_equal(video.features["rgb"], frames)
    np.testing.assert_array_equal(video.features["audio"], audio)


def test_quantize_by_hand():
    x = np.array([-5.0, -2.0, 0.0, 1.0, 2.0, 9.0], dtype=np.float32)
    # (x + 2) * 63.75 -> 0, 0, 127.5 (rounds to even: 128), 191.25, 255, 255 (clipped)
    np.testing.assert_array_equal(quantize(x), np.array([0, 0, 128, 191, 255, 255], dtype=np.uint8))
    y = np.linspace(-2, 2, 1001, dtype=np.float32)
    # dequantize(quantize(y)) is within half a bin, plus the half-bin offset of YouTube-8M's dequantization.
    assert np.abs(dequantize(quantize(y)) - y).max() <= 2 / 255 + 4 / 512 + 1e-6


# --- YT8MShard ----------------------------------------------------------------------------------------------------


def write_frame_level(path: Path, n: int = 5, seed: int = 0, dims=(1024, 128)) -> list[dict]:
    rng = np.random.default_rng(seed)
    videos = []
    for i in range(n):
        frames = frames_of(rng, int(rng.integers(1, 40)), dims)
        videos.append({"id": f"v{i:03d}", "labels": sorted(rng.choice(50, 3, replace=False).tolist()),
                       "frames": frames})
    write_records(path, [encode_sequence_example(v["id"], v["labels"], v["frames"]) for v in videos])
    return videos


def record_offsets(path: Path) -> list[int]:
    return [off for off, _ in record_payloads(path.read_bytes())]


def test_shard_random_access_iteration_and_stats(tmp_path):
    path = tmp_path / "train0000.tfrecord"
    videos = write_frame_level(path)
    stats = ReadStats()
    shard = YT8MShard(str(path), stats=stats)
    assert len(shard) == 5
    for i in (4, 0, 2, -1):
        got, want = shard.read(i), videos[i]
        assert got.id == want["id"] and got.labels.tolist() == want["labels"]
        np.testing.assert_array_equal(got.features["rgb"], want["frames"]["rgb"])
    assert [v.id for v in shard] == [v["id"] for v in videos]
    frames = sum(len(v["frames"]["rgb"]) for v in videos)
    assert stats.files == 1 and stats.videos == 4 + 5 and stats.corrupt == 0
    assert stats.frames == frames + sum(len(videos[i]["frames"]["rgb"]) for i in (4, 0, 2, -1))
    with pytest.raises(IndexError):
        shard.read(5)
    clone = pickle.loads(pickle.dumps(shard))  # what a spawned DataLoader worker gets
    assert clone.read(1).id == "v001"
    shard.close()


def test_iteration_does_not_need_the_index(tmp_path):
    path = tmp_path / "s.tfrecord"
    write_frame_level(path, n=3)
    shard = YT8MShard(path)
    assert [v.id for v in shard] == ["v000", "v001", "v002"]
    assert shard._index is None  # streamed: a remote file is read once


def bad_payload_file(tmp_path: Path, payload: bytes, name: str = "bad.tfrecord") -> tuple[Path, int]:
    """Three records, the middle one ``payload``; returns the file and the middle record's byte offset."""
    rng = np.random.default_rng(9)
    good = [encode_sequence_example(f"ok{i}", [1], frames_of(rng, 3)) for i in range(2)]
    path = tmp_path / name
    write_records(path, [good[0], payload, good[1]])
    return path, record_offsets(path)[1]


def check_bad_record(path: Path, offset: int, match: str, **kwargs) -> str:
    """Record 1 is bad: raised with file, index and offset; skipped and counted with skip_corrupt."""
    shard = YT8MShard(path, **kwargs)
    with pytest.raises(DataError, match=match) as e:
        shard.read(1)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and f"record 1 at byte offset {offset}" in msg
    with pytest.raises(DataError, match=match):
        list(YT8MShard(path, **kwargs))
    stats = ReadStats()
    shard = YT8MShard(path, skip_corrupt=True, stats=stats, **kwargs)
    assert shard.read(1) is None and stats.corrupt == 1
    assert shard.last_error == msg  # why, for the caller's warning
    assert [v.id for v in shard] == ["ok0", "ok1"] and stats.corrupt == 2
    return msg


def test_unparsable_payload(tmp_path):
    path, off = bad_payload_file(tmp_path, b"\x0a\xff\xff\xff")  # a length varint that runs off the end
    check_bad_record(path, off, "truncated varint")
    path, off = bad_payload_file(tmp_path, b"\x0a\x50abc", "b2.tfrecord")  # a field longer than the payload
    check_bad_record(path, off, "says 80 bytes, only 3 left")


def test_payload_without_id(tmp_path):
    frames = frames_of(np.random.default_rng(5), 2)
    payload = encode_sequence_example("x", [1], frames, id_key="name")
    path, off = bad_payload_file(tmp_path, payload)
    check_bad_record(path, off, "no video id")


def test_frame_of_the_wrong_length(tmp_path):
    rng = np.random.default_rng(6)
    rows = [rng.integers(0, 256, 1024, dtype=np.uint8).tobytes() for _ in range(6)]
    rows[3] = rows[3][:1023]
    rgb = b"".join(ld(1, ld(1, ld(1, r))) for r in rows)
    audio = b"".join(ld(1, ld(1, ld(1, bytes(128)))) for _ in range(6))
    context = entry("id", ld(1, ld(1, b"shrt"))) + entry("labels", ld(3, ld(1, varint(1))))
    payload = ld(1, context) + ld(2, entry("rgb", rgb) + entry("audio", audio))
    path, off = bad_payload_file(tmp_path, payload)
    check_bad_record(path, off, "rgb frame 3: got 1023 bytes, expected 1024")


def test_frame_of_the_right_size_but_wrong_kind(tmp_path):
    # Frame 2 is a float_list (tag 0x12) of 1024 bytes: the same stride as the others, so only the header check
    # of the fast path can tell.
    rng = np.random.default_rng(11)
    rows = [ld(1, ld(1, ld(1, rng.integers(0, 256, 1024, dtype=np.uint8).tobytes()))) for _ in range(5)]
    rows[2] = ld(1, ld(2, ld(1, bytes(1024))))
    assert len({len(r) for r in rows}) == 1
    audio = b"".join(ld(1, ld(1, ld(1, bytes(128)))) for _ in range(5))
    context = entry("id", ld(1, ld(1, b"kind"))) + entry("labels", ld(3, ld(1, varint(1))))
    payload = ld(1, context) + ld(2, entry("rgb", b"".join(rows)) + entry("audio", audio))
    path, off = bad_payload_file(tmp_path, payload)
    check_bad_record(path, off, "rgb frame 2: float_list, expected a bytes_list of 1024 bytes")


def test_modality_of_the_wrong_width(tmp_path):
    frames = frames_of(np.random.default_rng(7), 4, dims=(1024, 64))
    path, off = bad_payload_file(tmp_path, encode_sequence_example("wide", [1], frames))
    check_bad_record(path, off, "audio frame 0: got 64 bytes, expected 128")


def test_label_out_of_range(tmp_path):
    frames = frames_of(np.random.default_rng(8), 2)
    path, off = bad_payload_file(tmp_path, encode_sequence_example("lbl", [3, 3862], frames))
    check_bad_record(path, off, "label 3862 is out of range, expected < num_classes = 3862", num_classes=3862)
    assert YT8MShard(path).read(1).labels.tolist() == [3, 3862]  # no num_classes, no range check


def test_negative_label(tmp_path):
    frames = frames_of(np.random.default_rng(8), 2)
    path, off = bad_payload_file(tmp_path, encode_sequence_example("neg", [-1], frames))
    check_bad_record(path, off, "label -1 is negative")


def test_missing_modality(tmp_path):
    frames = frames_of(np.random.default_rng(10), 2)
    del frames["audio"]
    path, off = bad_payload_file(tmp_path, encode_sequence_example("mute", [1], frames))
    check_bad_record(path, off, "missing modality 'audio' in feature_lists")
    level = encode_example("lvl", [1], {"rgb": np.zeros(1024, np.float32)})
    path, off = bad_payload_file(tmp_path, level, "lvl.tfrecord")
    check_bad_record(path, off, "missing modality 'audio': no feature_lists entry and no 'mean_audio'")


def test_video_level_vector_of_the_wrong_size(tmp_path):
    level = encode_example("lvl", [1], {"rgb": np.zeros(1000, np.float32), "audio": np.zeros(128, np.float32)})
    path, off = bad_payload_file(tmp_path, level)
    check_bad_record(path, off, "mean_rgb: got 1000 floats, expected 1024")


def test_video_without_frames(tmp_path):
    frames = {"rgb": np.zeros((0, 1024), np.uint8), "audio": np.zeros((0, 128), np.uint8)}
    path, off = bad_payload_file(tmp_path, encode_sequence_example("void", [1], frames))
    check_bad_record(path, off, "rgb has no frames")


def test_bad_payload_crc_through_the_shard(tmp_path):
    path = tmp_path / "crc.tfrecord"
    write_frame_level(path, n=3)
    off = record_offsets(path)[1]
    data = bytearray(path.read_bytes())
    data[off + 40] ^= 1
    path.write_bytes(bytes(data))
    shard = YT8MShard(path)
    with pytest.raises(DataError, match=f"record 1 at byte offset {off}: bad payload CRC"):
        shard.read(1)
    stats = ReadStats()
    assert [v.id for v in YT8MShard(path, skip_corrupt=True, stats=stats)] == ["v000", "v002"]
    assert stats.corrupt == 1


def test_truncated_shard_counts_the_tail_once(tmp_path):
    path = tmp_path / "cut.tfrecord"
    write_frame_level(path, n=4)
    off = record_offsets(path)[3]
    path.write_bytes(path.read_bytes()[:off + 50])
    with pytest.raises(DataError, match=f"record 3 at byte offset {off}: truncated record"):
        len(YT8MShard(path))
    stats = ReadStats()
    shard = YT8MShard(path, skip_corrupt=True, stats=stats)
    assert len(shard) == 3 and stats.corrupt == 1
    assert f"record 3 at byte offset {off}: truncated record" in shard.last_error
    assert [v.id for v in shard] == ["v000", "v001", "v002"] and stats.corrupt == 1


def test_empty_shard_file(tmp_path):
    path = tmp_path / "empty.tfrecord"
    path.write_bytes(b"")
    with pytest.raises(DataError, match=fr"{path}: empty file \(0 bytes\), expected TFRecord records"):
        len(YT8MShard(path))
    with pytest.raises(DataError, match="empty file"):
        list(YT8MShard(path))
    # With skip_corrupt an empty file holds no record: skipped, and counted as an empty file (not as 0 records
    # silently), once however many passes meet it.
    stats = ReadStats()
    shard = YT8MShard(path, skip_corrupt=True, stats=stats)
    assert len(shard) == 0 and list(shard) == [] and list(shard) == []
    assert (stats.empty_files, stats.corrupt, stats.videos) == (1, 0, 0)
    assert "empty file" in shard.last_error


def test_missing_file():
    with pytest.raises(DataError, match="nope.tfrecord: file not found"):
        list(YT8MShard("/nonexistent/nope.tfrecord"))


def test_fast_stride_path_gives_exactly_the_per_frame_walk(tmp_path, monkeypatch):
    """The vectorised fixed-stride frame reader returns the same frames as the plain per-frame protobuf walk."""
    from attncluster.data import yt8m
    from attncluster.data.synth import write_synthetic

    shard = write_synthetic(tmp_path, videos=12, classes=6, shards=1, seed=3, max_frames=40)[0]
    fast_videos = list(YT8MShard(shard))
    slow_calls = []

    def slow_only(*args):
        slow_calls.append(args[3])
        return yt8m._frames_slow(*args)

    monkeypatch.setattr(yt8m, "_frames", slow_only)
    slow_videos = list(YT8MShard(shard))
    assert len(slow_calls) == 2 * len(fast_videos)  # rgb and audio of every video went the slow way
    for a, b in zip(fast_videos, slow_videos, strict=True):
        assert a.id == b.id and np.array_equal(a.labels, b.labels)
        for m in ("rgb", "audio"):
            assert a.features[m].dtype == b.features[m].dtype == np.uint8
            np.testing.assert_array_equal(a.features[m], b.features[m])


# --- Malformed labels: an error (or skipped and counted), never a silent labels=[] --------------------------------


def video_level_payload(labels_entry: bytes) -> bytes:
    """A video-level Example written by hand: id, the given labels map entry, mean_rgb and mean_audio."""
    def floats(n):
        return ld(2, ld(1, struct.pack(f"<{n}f", *([0.5] * n))))  # Feature{float_list{packed value}}

    features = (entry("id", ld(1, ld(1, b"vid"))) + labels_entry + entry("mean_rgb", floats(1024))
                + entry("mean_audio", floats(128)))
    return ld(1, features)


MALFORMED_LABELS = {
    # Feature.int64_list (field 3) written with wire type 0 instead of a length-delimited list.
    "wrong wire type of the list": (entry("labels", varint(3 << 3 | 0) + varint(7)), "wire type 0"),
    # Feature{} with no list at all.
    "missing kind": (entry("labels", b""), "holds no value list"),
    # Int64List.value as fixed32.
    "wrong wire type of a value": (entry("labels", ld(3, varint(1 << 3 | 5) + b"\x07\x00\x00\x00")), "wire type 5"),
    # The map entry's key field (1) as a varint: the entry's key is garbled.
    "garbled key": (ld(1, varint(1 << 3 | 0) + varint(5) + ld(2, ld(3, ld(1, varint(7))))), "field 1 \\(key\\)"),
    # The map entry itself (Features.feature, field 1) as a varint.
    "garbled entry": (varint(1 << 3 | 0) + varint(9), "entry has wire type 0"),
    # Labels given as a bytes_list.
    "wrong kind": (entry("labels", ld(1, ld(1, b"7"))), "is a bytes_list, expected a int64_list"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_LABELS))
def test_malformed_labels_are_damage_not_an_empty_label_set(tmp_path, case):
    labels_entry, match = MALFORMED_LABELS[case]
    payload = video_level_payload(labels_entry)
    rng = np.random.default_rng(9)
    good = [encode_sequence_example(f"ok{i}", [1], frames_of(rng, 3)) for i in range(2)]
    path = tmp_path / "bad.tfrecord"
    write_records(path, [good[0], payload, good[1]])
    check_bad_record(path, record_offsets(path)[1], match)


def test_a_record_without_labels_is_a_test_video_and_the_hand_encoding_is_valid():
    """Control for the cases above: the same hand-written record with a good labels entry, or none, parses."""
    good = video_level_payload(entry("labels", ld(3, ld(1, varint(7) + varint(300)))))
    video = parse_yt8m(good)
    assert video.id == "vid" and video.labels.tolist() == [7, 300] and video.features["rgb"].shape == (1, 1024)
    assert parse_yt8m(video_level_payload(b"")).labels.tolist() == []
