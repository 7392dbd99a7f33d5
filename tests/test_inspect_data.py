"""The inspect verb: one JSON line per video, a summary on stderr, damaged data raises unless skipped."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from attncluster.cli import main
from attncluster.data.tfrecord import write_records
from attncluster.data.yt8m import encode_example, encode_sequence_example
from attncluster.errors import DataError
from attncluster.inspect_data import inspect

REAL_DIR = Path(__file__).parents[2] / "shared" / "data" / "yt8m-2018-video-level"
needs_real = pytest.mark.skipif(not REAL_DIR.is_dir(), reason=f"real YouTube-8M shards not found at {REAL_DIR}")


def run(paths, **kwargs) -> tuple[int, list[dict], str]:
    out, err = io.StringIO(), io.StringIO()
    code = inspect([str(p) for p in paths], out=out, err=err, **kwargs)
    return code, [json.loads(line) for line in out.getvalue().splitlines()], err.getvalue()


@pytest.fixture
def frame_shard(tmp_path) -> tuple[Path, list[dict]]:
    rng = np.random.default_rng(0)
    videos = []
    for i, t in enumerate((3, 7, 12)):
        rgb = rng.integers(0, 256, (t, 1024), dtype=np.uint8)
        audio = rng.integers(0, 256, (t, 128), dtype=np.uint8)
        videos.append({"id": f"vd{i:02d}", "labels": [i, 10 + i], "rgb": rgb, "audio": audio})
    path = tmp_path / "train0000.tfrecord"
    write_records(path, [encode_sequence_example(v["id"], v["labels"], {"rgb": v["rgb"], "audio": v["audio"]})
                         for v in videos])
    return path, videos


def test_one_json_line_per_video_with_dequantized_means(frame_shard):
    path, videos = frame_shard
    code, lines, err = run([path])
    assert code == 0
    assert [line["id"] for line in lines] == ["vd00", "vd01", "vd02"]
    for line, v in zip(lines, videos):
        assert set(line) == {"id", "labels", "num_frames", "mean"}
        assert line["labels"] == v["labels"]
        assert line["num_frames"] == len(v["rgb"])
        for name in ("rgb", "audio"):
            # YouTube-8M dequantization, written out: q * 4/255 + 4/512 - 2, then the mean of all values.
            want = np.mean(v[name].astype(np.float64) * 4 / 255 + 4 / 512 - 2)
            assert line["mean"][name] == pytest.approx(want, abs=1e-9)
    assert err.strip() == "inspect: 1 file, 3 videos, 22 frames, 0 corrupt records skipped"


def test_float_features_are_averaged_as_they_are(tmp_path):
    rgb = np.full(1024, 0.25, np.float32)
    rgb[:512] = -0.75
    audio = np.arange(128, dtype=np.float32)
    path = tmp_path / "video_level.tfrecord"
    write_records(path, [encode_example("flt0", [4], {"rgb": rgb, "audio": audio})])
    code, lines, err = run([path])
    assert lines == [{"id": "flt0", "labels": [4], "num_frames": 1, "mean": {"rgb": -0.25, "audio": 63.5}}]
    assert "1 video, 1 frame," in err


def test_directories_and_globs(tmp_path, frame_shard):
    path, _ = frame_shard
    (tmp_path / "vocabulary.csv").write_text("Index,Name\n")  # ignored by directory expansion
    assert len(run([tmp_path])[1]) == 3
    assert len(run([tmp_path / "*.tfrecord"])[1]) == 3
    with pytest.raises(DataError, match="given twice"):  # the glob and the path name one shard: read once, not twice
        run([tmp_path / "*.tfrecord", path])
    with pytest.raises(DataError, match="matches no files"):
        run([tmp_path / "nothing*.tfrecord"])


def test_damaged_record_raises_or_is_skipped_and_counted(frame_shard):
    path, _ = frame_shard
    data = bytearray(path.read_bytes())
    (first,) = struct.unpack_from("<Q", data, 0)
    second = 16 + first
    data[second + 12 + 30] ^= 0xFF  # inside record 1's payload
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"record 1 at byte offset {second}: bad payload CRC"):
        run([path])
    code, lines, err = run([path], skip_corrupt=True)
    assert code == 0
    assert [line["id"] for line in lines] == ["vd00", "vd02"]
    assert err.strip() == "inspect: 1 file, 2 videos, 15 frames, 1 corrupt record skipped"


def test_label_check(frame_shard):
    path, _ = frame_shard
    with pytest.raises(DataError, match="label 11 is out of range, expected < num_classes = 11"):
        run([path], num_classes=11)
    code, lines, err = run([path], num_classes=11, skip_corrupt=True)
    assert [line["id"] for line in lines] == ["vd00"] and "2 corrupt records skipped" in err


def test_cli_exit_status(frame_shard, capsys):
    path, _ = frame_shard
    assert main(["inspect", str(path)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    path.write_bytes(path.read_bytes()[:-3])  # truncated tail
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "record 2 at byte offset" in err and "truncated record" in err
    assert main(["inspect", "--skip-corrupt", str(path)]) == 0
    assert "2 videos" in capsys.readouterr().err


@needs_real
def test_real_shard(tmp_path):
    path = REAL_DIR / "validate0007.tfrecord"
    data = path.read_bytes()
    records, pos = 0, 0
    while pos < len(data):  # count records by a struct walk
        pos += 16 + struct.unpack_from("<Q", data, pos)[0]
        records += 1
    code, lines, err = run([path], num_classes=3862)
    assert code == 0 and len(lines) == records
    assert all(len(line["id"]) == 4 and line["num_frames"] == 1 and line["labels"] for line in lines)
    assert all(-2 < line["mean"]["rgb"] < 2 and -2 < line["mean"]["audio"] < 2 for line in lines)
    assert err.strip() == f"inspect: 1 file, {records} videos, {records} frames, 0 corrupt records skipped"


def test_compressed_shards_are_inspected(tmp_path, frame_shard):
    import gzip
    import zlib

    path, videos = frame_shard
    gz, zl = tmp_path / "train0000.tfrecord.gz", tmp_path / "train0000.tfrecord.zz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    zl.write_bytes(zlib.compress(path.read_bytes()))
    code, lines, err = run([gz, zl])
    assert code == 0 and [line["id"] for line in lines] == ["vd00", "vd01", "vd02"] * 2
    assert err.strip() == "inspect: 2 files, 6 videos, 44 frames, 0 corrupt records skipped"


def test_non_finite_means_are_an_error_or_skipped_never_printed(tmp_path, capsys):
    good = {"rgb": np.zeros(1024, np.float32), "audio": np.zeros(128, np.float32)}
    bad = {"rgb": np.zeros(1024, np.float32), "audio": np.full(128, np.inf, np.float32)}
    path = tmp_path / "v.tfrecord"
    write_records(path, [encode_example("ok00", [1], good), encode_example("inf1", [2], bad)])
    code = main(["inspect", str(path)])
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ")
    assert "v.tfrecord: record 1 at byte offset" in lines[0] and "(id 'inf1')" in lines[0]
    assert "NaN" not in out and "Infinity" not in out
    code, lines, err = run([path], skip_corrupt=True)
    assert [line["id"] for line in lines] == ["ok00"] and "1 corrupt record skipped" in err
