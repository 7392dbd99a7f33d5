import os

import numpy as np
import pytest

from attncluster.data.features import FeatureShard, write_feature_dataset
from attncluster.data.records import ReadStats
from attncluster.errors import ConfigError, DataError

MODS = {"rgb": 6, "audio": 3}


def videos(n=3, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        t = 4 + i
        out.append((f"vid{i}", [i, (i + 2) % 5], {
            "rgb": rng.integers(0, 256, (t, 6), dtype=np.uint8),
            "audio": rng.standard_normal((t, 3)),  # float64 -> used as float32
        }))
    return out


@pytest.mark.parametrize("layout", ["npz", "npy"])
def test_roundtrip_layouts(tmp_path, layout):
    vids = videos()
    csv = write_feature_dataset(str(tmp_path), vids, layout=layout)
    assert csv == os.path.join(str(tmp_path), "labels.csv")
    stats = ReadStats()
    shard = FeatureShard(csv, modalities=MODS, num_classes=5, stats=stats)
    assert len(shard) == 3
    for i, (vid, labels, arrays) in enumerate(vids):
        v = shard.read(i)
        assert v.id == vid and v.labels.tolist() == labels and v.labels.dtype == np.int64
        assert v.features["rgb"].dtype == np.uint8
        np.testing.assert_array_equal(v.features["rgb"], arrays["rgb"])
        assert v.features["audio"].dtype == np.float32
        np.testing.assert_array_equal(v.features["audio"], arrays["audio"].astype(np.float32))
    assert (stats.files, stats.videos, stats.frames) == (1, 3, 4 + 5 + 6)
    # A directory holding labels.csv stands for the CSV.
    assert [v.id for v in FeatureShard(str(tmp_path), modalities=MODS, num_classes=5)] == ["vid0", "vid1", "vid2"]


def test_labels_csv_format(tmp_path):
    write_feature_dataset(str(tmp_path), videos(2))
    (tmp_path / "labels.csv").write_text("video_id,labels\nvid0,4 1  0\n\nvid1,\n")
    shard = FeatureShard(str(tmp_path / "labels.csv"), modalities=MODS, num_classes=5)
    assert len(shard) == 2  # the blank line is not a record
    assert shard.read(0).labels.tolist() == [4, 1, 0]
    assert shard.read(1).labels.tolist() == []  # unlabeled


def test_class_names(tmp_path):
    names = ["cat", "dog", "bird"]
    vids = [("a", ["dog", "bird"], {"rgb": np.zeros((2, 6), np.uint8), "audio": np.zeros((2, 3), np.float32)}),
            ("b", ["cat"], {"rgb": np.zeros((2, 6), np.uint8), "audio": np.zeros((2, 3), np.float32)})]
    csv = write_feature_dataset(str(tmp_path), vids)
    shard = FeatureShard(csv, modalities=MODS, num_classes=None, class_names=names)
    assert shard.num_classes == 3
    assert shard.read(0).labels.tolist() == [1, 2] and shard.read(1).labels.tolist() == [0]
    with pytest.raises(DataError, match=r"labels\.csv: line 3: unknown label 'cat'"):
        FeatureShard(csv, modalities=MODS, num_classes=2, class_names=["dog", "bird"])
    with pytest.raises(DataError, match=r"line 2: label 'dog' is not an integer class id"):
        FeatureShard(csv, modalities=MODS, num_classes=3)
    with pytest.raises(ConfigError, match="3 names but num_classes is 4"):
        FeatureShard(csv, modalities=MODS, num_classes=4, class_names=names)


def test_max_frames_and_shortest_modality(tmp_path):
    vids = [("a", [0], {"rgb": np.arange(60, dtype=np.uint8).reshape(10, 6), "audio": np.zeros((8, 3), np.float32)})]
    csv = write_feature_dataset(str(tmp_path), vids)
    v = FeatureShard(csv, modalities=MODS, num_classes=1).read(0)
    assert v.features["rgb"].shape == (8, 6) and v.features["audio"].shape == (8, 3)
    np.testing.assert_array_equal(v.features["rgb"], np.arange(48).reshape(8, 6))
    v = FeatureShard(csv, modalities=MODS, num_classes=1, max_frames=3).read(0)
    assert v.num_frames == 3 and v.features["audio"].shape == (3, 3)


@pytest.mark.parametrize("csv_text,needle", [
    ("vid0,1\n", r"line 1: expected the header 'video_id,labels', got 'vid0,1'"),
    ("video_id,labels\nvid0,1\nvid1,9\n", r"line 3: label 9 out of range, expected \[0, 5\)"),
    ("video_id,labels\nvid0,1\nvid1,-1\n", r"line 3: label -1 out of range"),
    ("video_id,labels\nvid0,1\nvid1\n", r"line 3: expected 2 columns \(video_id,labels\), got 1"),
    ("video_id,labels\nvid0,1\nvid0,2\n", r"line 3: video_id 'vid0' already listed on line 2"),
    ("video_id,labels\nvid0,1\n,2\n", r"line 3: empty video_id"),
    ("video_id,labels\nvid0,1\n../etc,2\n", r"line 3: video_id '../etc' must be a name relative"),
])
def test_csv_errors(tmp_path, csv_text, needle):
    write_feature_dataset(str(tmp_path), videos(2))
    csv = tmp_path / "labels.csv"
    csv.write_text(csv_text)
    with pytest.raises(DataError, match=needle) as e:
        FeatureShard(str(csv), modalities=MODS, num_classes=5)
    assert str(e.value).startswith(str(csv)) and "\n" not in str(e.value)


def test_csv_row_error_with_skip_corrupt(tmp_path):
    write_feature_dataset(str(tmp_path), videos(2))
    (tmp_path / "labels.csv").write_text("video_id,labels\nvid0,1\nvid1,9\n")
    stats = ReadStats()
    shard = FeatureShard(str(tmp_path), modalities=MODS, num_classes=5, skip_corrupt=True, stats=stats)
    assert len(shard) == 2
    assert [v.id for v in shard] == ["vid0"] and stats.corrupt == 1 and "label 9" in shard.last_error


def _save(tmp_path, name, array):
    np.save(tmp_path / name, array)


@pytest.mark.parametrize("layout,breakage,needle", [
    ("npz", lambda d: os.remove(d / "vid1.npz"), r"vid1\.npz: file not found, nor .*vid1\.rgb\.npy"),
    ("npy", lambda d: os.remove(d / "vid1.audio.npy"), r"vid1\.audio\.npy: file not found \(modality 'audio'\)"),
    ("npz", lambda d: np.savez(d / "vid1.npz", rgb=np.zeros((3, 6), np.uint8)),
     r"vid1\.npz: no array for modality 'audio' \(has: rgb\)"),
    ("npz", lambda d: np.savez(d / "vid1.npz", rgb=np.zeros((3, 5), np.uint8), audio=np.zeros((3, 3))),
     r"vid1\.npz: modality 'rgb' has 5 features per frame, expected 6"),
    ("npy", lambda d: _save(d, "vid1.rgb.npy", np.zeros((3, 6, 1), np.uint8)),
     r"vid1\.rgb\.npy: modality 'rgb' has shape \(3, 6, 1\), expected a 2-D \(T, 6\) array"),
    ("npy", lambda d: _save(d, "vid1.rgb.npy", np.zeros((3, 6), np.int64)),
     r"vid1\.rgb\.npy: modality 'rgb' has dtype int64, expected uint8"),
    ("npy", lambda d: (d / "vid1.rgb.npy").write_bytes(b"garbage"), r"vid1\.rgb\.npy: not a readable \.npy file"),
    ("npz", lambda d: (d / "vid1.npz").write_bytes(b"garbage"), r"vid1\.npz: not a readable \.npz file"),
])
def test_feature_file_errors(tmp_path, layout, breakage, needle):
    write_feature_dataset(str(tmp_path), videos(3), layout=layout)
    breakage(tmp_path)
    shard = FeatureShard(str(tmp_path / "labels.csv"), modalities=MODS, num_classes=5)
    assert shard.read(0).id == "vid0"
    with pytest.raises(DataError, match=needle) as e:
        shard.read(1)
    message = str(e.value)
    assert "video 'vid1'" in message and "labels.csv line 3" in message and "\n" not in message

    stats = ReadStats()
    shard = FeatureShard(str(tmp_path / "labels.csv"), modalities=MODS, num_classes=5, skip_corrupt=True, stats=stats)
    assert [v.id for v in shard] == ["vid0", "vid2"] and stats.corrupt == 1


def test_memory_filesystem():
    vids = videos(2, seed=3)
    csv = write_feature_dataset("memory://feat_test/ds", vids, layout="npy")
    assert csv == "memory://feat_test/ds/labels.csv"
    shard = FeatureShard("memory://feat_test/ds", modalities=MODS, num_classes=5)
    assert shard.path == csv
    np.testing.assert_array_equal(shard.read(1).features["rgb"], vids[1][2]["rgb"])
