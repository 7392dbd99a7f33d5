"""TFRecord container: CRCs, framing, index, verified reads, and every kind of damage."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import crc32c
import numpy as np
import pytest

from attncluster.data.records import ReadStats
from attncluster.data.tfrecord import (TFRecordWriter, index_records, iter_records, masked_crc32c, open_records,
                                       read_payload, write_records)
from attncluster.errors import DataError

REAL_DIR = Path(__file__).parents[2] / "shared" / "data" / "yt8m-2018-video-level"
needs_real = pytest.mark.skipif(not REAL_DIR.is_dir(), reason=f"real YouTube-8M shards not found at {REAL_DIR}")

PAYLOADS = [b"first payload", b"", b"x" * 300, bytes(range(256)) * 5]


def reference_masked(data: bytes) -> int:
    """The TFRecord mask written out plainly: rotate right by 15 bits, add 0xa282ead8, keep 32 bits."""
    crc = crc32c.crc32c(data)
    rotated = ((crc >> 15) | (crc << 17)) % 2**32
    return (rotated + 0xA282EAD8) % 2**32


def walk(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of each record by a plain struct walk of the bytes."""
    out, pos = [], 0
    while pos < len(data):
        (n,) = struct.unpack_from("<Q", data, pos)
        out.append((pos, n))
        pos += 12 + n + 4
    assert pos == len(data)
    return out


@pytest.fixture
def shard(tmp_path) -> Path:
    path = tmp_path / "data.tfrecord"
    write_records(path, PAYLOADS)
    return path


def record_offsets() -> list[int]:
    offsets, pos = [], 0
    for p in PAYLOADS:
        offsets.append(pos)
        pos += 16 + len(p)
    return offsets


# --- CRC ------------------------------------------------------------------------------------------------------------


def test_crc32c_known_vector_and_mask_by_hand():
    assert crc32c.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    # By hand: 0xE3069283 >> 15 = 0x0001C60D; (0xE3069283 << 17) mod 2^32 = 0x25060000; OR = 0x2507C60D;
    # + 0xA282EAD8 = 0xC78AB0E5 (no carry out of 32 bits).
    assert masked_crc32c(b"123456789") == 0xC78AB0E5
    assert masked_crc32c(memoryview(bytearray(b"123456789"))) == 0xC78AB0E5


def test_mask_matches_plain_formula_on_many_inputs():
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 8, 100, 4096):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert masked_crc32c(data) == reference_masked(data)


@needs_real
def test_real_record_crcs_written_by_tensorflow_verify():
    data = (REAL_DIR / "validate0000.tfrecord").read_bytes()
    (n,) = struct.unpack_from("<Q", data, 0)
    assert struct.unpack_from("<I", data, 8)[0] == masked_crc32c(data[:8])
    assert struct.unpack_from("<I", data, 12 + n)[0] == masked_crc32c(data[12:12 + n])


# --- writing and reading ----------------------------------------------------------------------------------------------


def test_written_layout_is_length_crc_payload_crc(shard):
    data = shard.read_bytes()
    assert [n for _, n in walk(data)] == [len(p) for p in PAYLOADS]
    for (pos, n), payload in zip(walk(data), PAYLOADS):
        assert data[pos:pos + 8] == struct.pack("<Q", n)
        assert struct.unpack_from("<I", data, pos + 8)[0] == reference_masked(data[pos:pos + 8])
        assert data[pos + 12:pos + 12 + n] == payload
        assert struct.unpack_from("<I", data, pos + 12 + n)[0] == reference_masked(payload)


def test_writer_to_file_object_and_count():
    buf = io.BytesIO()
    with TFRecordWriter(buf) as w:
        for p in PAYLOADS:
            w.write(p)
    assert w.count == len(PAYLOADS)
    assert len(walk(buf.getvalue())) == len(PAYLOADS)


def test_index_and_random_reads_round_trip(shard):
    with open_records(str(shard)) as f:
        index = index_records(f, str(shard))
        assert index.dtype == np.int64 and index.shape == (len(PAYLOADS), 2)
        assert index[:, 0].tolist() == record_offsets()
        assert index[:, 1].tolist() == [len(p) for p in PAYLOADS]
        for i in (3, 0, 2, 1):  # out of order: every read seeks
            assert bytes(read_payload(f, str(shard), i, *index[i])) == PAYLOADS[i]


def test_index_from_in_memory_file_without_fileno(shard):
    f = io.BytesIO(shard.read_bytes())
    index = index_records(f, "mem")
    assert index[:, 0].tolist() == record_offsets()
    assert bytes(read_payload(f, "mem", 3, *index[3])) == PAYLOADS[3]


def test_iter_records_sequential(shard):
    got = list(iter_records(str(shard)))
    assert [i for i, _, _ in got] == [0, 1, 2, 3]
    assert [off for _, off, _ in got] == record_offsets()
    assert [bytes(p) for _, _, p in got] == PAYLOADS


def test_payload_buffer_is_writable_and_independent(shard):
    with open_records(str(shard)) as f:
        index = index_records(f, str(shard))
        a = read_payload(f, str(shard), 0, *index[0])
        b = read_payload(f, str(shard), 0, *index[0])
    assert not a.readonly
    a[0] = ord("F")
    assert bytes(b) == PAYLOADS[0]


# --- damage -----------------------------------------------------------------------------------------------------------


def damage(path: Path, pos: int) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= 0xFF
    path.write_bytes(bytes(data))


def assert_names_record(err: DataError, path: Path, index: int, offset: int) -> None:
    msg = str(err)
    assert "\n" not in msg
    assert str(path) in msg
    assert f"record {index} at byte offset {offset}" in msg


def test_empty_file(tmp_path):
    path = tmp_path / "empty.tfrecord"
    path.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty file \(0 bytes\), expected TFRecord records") as e:
        list(iter_records(str(path)))
    assert str(path) in str(e.value)
    with open_records(str(path)) as f, pytest.raises(DataError, match="empty file"):
        index_records(f, str(path), skip_corrupt=True)


def test_bad_payload_crc(shard):
    off = record_offsets()[2]
    damage(shard, off + 12 + 5)
    with open_records(str(shard)) as f:
        index = index_records(f, str(shard))  # headers are intact
        assert len(index) == 4
        with pytest.raises(DataError, match="bad payload CRC") as e:
            read_payload(f, str(shard), 2, *index[2])
        assert_names_record(e.value, shard, 2, off)
        assert bytes(read_payload(f, str(shard), 3, *index[3])) == PAYLOADS[3]
    with pytest.raises(DataError, match="bad payload CRC") as e:
        list(iter_records(str(shard)))
    assert_names_record(e.value, shard, 2, off)
    stats = ReadStats()
    got = [(i, bytes(p)) for i, _, p in iter_records(str(shard), skip_corrupt=True, stats=stats)]
    assert got == [(0, PAYLOADS[0]), (1, PAYLOADS[1]), (3, PAYLOADS[3])]  # the scan goes on after it
    assert stats.corrupt == 1


def test_bad_payload_crc_in_the_crc_itself(shard):
    off = record_offsets()[0]
    damage(shard, off + 12 + len(PAYLOADS[0]))  # the stored payload CRC
    with pytest.raises(DataError, match="bad payload CRC") as e:
        list(iter_records(str(shard)))
    assert_names_record(e.value, shard, 0, off)


def test_bad_length_crc_resynchronises_and_counts_the_bytes_lost(shard):
    offs = record_offsets()
    off = offs[2]
    damage(shard, off + 1)  # a length byte: the length is no longer trustworthy
    lost = offs[3] - offs[2]  # the whole damaged record, header to the next intact header
    with open_records(str(shard)) as f:
        with pytest.raises(DataError, match="bad length CRC") as e:
            index_records(f, str(shard))
        assert_names_record(e.value, shard, 2, off)
        stats = ReadStats()
        index = index_records(f, str(shard), skip_corrupt=True, stats=stats)
    # The record after the damage is found again, at its true offset.
    assert index[:, 0].tolist() == [offs[0], offs[1], offs[3]]
    assert (stats.corrupt, stats.bytes_lost) == (1, lost)
    with pytest.raises(DataError, match="bad length CRC"):
        list(iter_records(str(shard)))
    stats = ReadStats()
    got = [bytes(p) for _, _, p in iter_records(str(shard), skip_corrupt=True, stats=stats)]
    assert got == [PAYLOADS[0], PAYLOADS[1], PAYLOADS[3]]
    assert (stats.corrupt, stats.bytes_lost) == (1, lost)


def test_damaged_headers_in_many_records_lose_only_those_records(tmp_path):
    payloads = [bytes([i]) * (50 + 7 * i) for i in range(40)]
    path = tmp_path / "many.tfrecord"
    write_records(path, payloads)
    data = bytearray(path.read_bytes())
    offsets = [o for o, _ in walk(bytes(data))]
    hit = [3, 4, 17, 39]  # two neighbours, one in the middle, the last one
    for i in hit:
        data[offsets[i] + 9] ^= 0xFF  # the stored length CRC
    path.write_bytes(bytes(data))
    stats = ReadStats()
    got = [bytes(p) for _, _, p in iter_records(str(path), skip_corrupt=True, stats=stats)]
    assert got == [p for i, p in enumerate(payloads) if i not in hit]
    # Records 3 and 4 are one damaged stretch: the next intact header is record 5's.
    assert stats.corrupt == 3
    assert stats.bytes_lost == sum(16 + len(payloads[i]) for i in hit)
    with open_records(str(path)) as f:
        stats2 = ReadStats()
        index = index_records(f, str(path), skip_corrupt=True, stats=stats2)
    assert index[:, 0].tolist() == [o for i, o in enumerate(offsets) if i not in hit]
    assert (stats2.corrupt, stats2.bytes_lost) == (stats.corrupt, stats.bytes_lost)


def test_a_forged_huge_length_allocates_nothing(tmp_path):
    """A length of 2**60 with a valid length CRC: checked against the file size before any buffer is made."""
    path = tmp_path / "huge.tfrecord"
    length = struct.pack("<Q", 1 << 60)
    path.write_bytes(length + struct.pack("<I", masked_crc32c(length)) + b"tiny")
    with pytest.raises(DataError, match=r"truncated record: header says 1152921504606846976 payload bytes"):
        list(iter_records(str(path)))
    stats = ReadStats()
    assert list(iter_records(str(path), skip_corrupt=True, stats=stats)) == []
    assert (stats.corrupt, stats.bytes_lost) == (1, path.stat().st_size)


def test_a_forged_huge_length_on_a_stream_reads_in_bounded_pieces(tmp_path):
    """A pure stream (no seek, no size): the claimed length is read piece by piece and ends at the stream's end."""
    from attncluster.data.tfrecord import scan_records

    class Stream(io.RawIOBase):
        def __init__(self, data):
            self._b = io.BytesIO(data)
            self.reads = []

        def readable(self):
            return True

        def readinto(self, buf):
            chunk = self._b.read(len(buf))
            self.reads.append(len(buf))
            buf[:len(chunk)] = chunk
            return len(chunk)

    length = struct.pack("<Q", 1 << 60)
    stream = Stream(length + struct.pack("<I", masked_crc32c(length)) + b"x" * 1000)
    with pytest.raises(DataError, match="truncated record: header says 1152921504606846976 payload bytes"):
        list(scan_records(stream, "stream"))
    assert max(stream.reads) <= 64 << 20


def test_truncated_record(shard):
    data = shard.read_bytes()
    off = record_offsets()[3]
    shard.write_bytes(data[:off + 12 + 100])  # header intact, payload cut short
    with open_records(str(shard)) as f:
        with pytest.raises(DataError, match="truncated record") as e:
            index_records(f, str(shard))
        assert_names_record(e.value, shard, 3, off)
        stats = ReadStats()
        assert len(index_records(f, str(shard), skip_corrupt=True, stats=stats)) == 3
        assert stats.corrupt == 1
    with pytest.raises(DataError, match="truncated record") as e:
        list(iter_records(str(shard)))
    assert_names_record(e.value, shard, 3, off)
    stats = ReadStats()
    assert len(list(iter_records(str(shard), skip_corrupt=True, stats=stats))) == 3
    assert stats.corrupt == 1


def test_truncated_header(shard):
    size = shard.stat().st_size
    with open(shard, "ab") as f:
        f.write(b"\x05\x00\x00")  # 3 bytes of a next header
    with open_records(str(shard)) as f:
        with pytest.raises(DataError, match="truncated record header: 3 bytes left, expected 12") as e:
            index_records(f, str(shard))
    assert_names_record(e.value, shard, 4, size)
    with pytest.raises(DataError, match="truncated record header") as e:
        list(iter_records(str(shard)))
    assert_names_record(e.value, shard, 4, size)


def test_read_payload_detects_a_wrong_index_entry(shard):
    with open_records(str(shard)) as f:
        with pytest.raises(DataError, match="the index says") as e:
            read_payload(f, str(shard), 0, 0, len(PAYLOADS[0]) - 1)
    assert_names_record(e.value, shard, 0, 0)


def test_not_a_tfrecord_file(tmp_path):
    path = tmp_path / "notes.tfrecord"
    path.write_bytes(b"this is a text file, not records\n")
    with pytest.raises(DataError, match="bad length CRC") as e:
        list(iter_records(str(path)))
    assert_names_record(e.value, path, 0, 0)


# --- real files -------------------------------------------------------------------------------------------------------


@needs_real
def test_index_of_every_real_shard_matches_a_struct_walk():
    shards = sorted(REAL_DIR.glob("validate00[01][0-9].tfrecord"))  # the 20 shards tests may use
    assert len(shards) == 20
    for path in shards:
        with open_records(str(path)) as f:
            index = index_records(f, str(path))
        assert [tuple(r) for r in index.tolist()] == walk(path.read_bytes())
        assert 250 < len(index) < 350  # about 290-307 videos per shard


# --- compressed files (TFRecordOptions compression_type GZIP / ZLIB) -------------------------------------------------


def _compressed(kind: str, data: bytes) -> bytes:
    """The whole record stream compressed, as TensorFlow's writer does: GZIP = one gzip stream (zlib with the gzip
    wrapper), ZLIB = one zlib stream (RFC 1950)."""
    import gzip
    import zlib

    return gzip.compress(data) if kind == "GZIP" else zlib.compress(data)


@pytest.mark.parametrize("kind", ["GZIP", "ZLIB"])
def test_gzip_and_zlib_files_read_with_crcs_checked(tmp_path, kind):
    from attncluster.data.tfrecord import compression_of
    from attncluster.data.yt8m import YT8MShard, encode_example

    rng = np.random.default_rng(0)
    videos = [(f"z{i}", [i], {"rgb": rng.normal(size=1024).astype(np.float32),
                              "audio": rng.normal(size=128).astype(np.float32)}) for i in range(5)]
    buf = io.BytesIO()
    write_records(buf, [encode_example(*v) for v in videos])
    path = tmp_path / f"v.tfrecord.{kind.lower()}"
    path.write_bytes(_compressed(kind, buf.getvalue()))
    assert compression_of(path.read_bytes()[:12]) == kind
    assert compression_of(buf.getvalue()[:12]) is None
    read = list(YT8MShard(str(path)))
    assert [v.id for v in read] == [v[0] for v in videos]
    assert all(np.array_equal(r.features["rgb"][0], v[2]["rgb"]) for r, v in zip(read, videos))
    shard = YT8MShard(str(path))
    assert len(shard) == 5 and shard.read(3).id == "z3" and shard.read(0).id == "z0"  # random access
    assert [bytes(p) for _, _, p in iter_records(str(path))] == [encode_example(*v) for v in videos]
    # A damaged payload inside the compressed stream is caught by its CRC, as in a plain file.
    data = bytearray(buf.getvalue())
    data[walk(bytes(data))[2][0] + 12 + 40] ^= 1
    path.write_bytes(_compressed(kind, bytes(data)))
    with pytest.raises(DataError, match=r"record 2 at byte offset \d+: .*CRC"):
        list(YT8MShard(str(path)))
    stats = ReadStats()
    assert [v.id for v in YT8MShard(str(path), skip_corrupt=True, stats=stats)] == ["z0", "z1", "z3", "z4"]
    assert stats.corrupt == 1
    # A truncated compressed stream is named, not read as fewer records.
    whole = _compressed(kind, buf.getvalue())
    path.write_bytes(whole[:-9])
    with pytest.raises(DataError, match=f"{kind}-compressed TFRecord file is truncated|damaged {kind}"):
        list(YT8MShard(str(path)))


def test_a_plain_file_whose_first_bytes_look_like_zlib_is_read_plain(tmp_path):
    # A first record of 0x9c78 = 40056 bytes starts the file with 78 9c, zlib's most common header.
    payload = bytes(40056)
    path = tmp_path / "plain.tfrecord"
    write_records(path, [payload, b"second"])
    assert path.read_bytes()[:2] == b"\x78\x9c"
    assert [bytes(p) for _, _, p in iter_records(str(path))] == [payload, b"second"]


def test_multi_member_gzip_and_a_decompression_bomb(tmp_path, monkeypatch):
    import gzip

    from attncluster.data import tfrecord

    a, b = io.BytesIO(), io.BytesIO()
    write_records(a, [b"one", b"two"])
    write_records(b, [b"three"])
    path = tmp_path / "cat.tfrecord.gz"
    path.write_bytes(gzip.compress(a.getvalue()) + gzip.compress(b.getvalue()))  # cat a.gz b.gz
    assert [bytes(p) for _, _, p in iter_records(str(path))] == [b"one", b"two", b"three"]
    monkeypatch.setattr(tfrecord, "MIN_EXPANSION_BYTES", 1000)
    path.write_bytes(gzip.compress(bytes(1 << 20)))
    with pytest.raises(DataError, match="expands to more than"):
        list(iter_records(str(path)))
