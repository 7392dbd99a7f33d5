"""Synthetic YouTube-8M shards: determinism, schema round trip, and the decoy structure."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest

from attncluster.data.records import dequantize
from attncluster.data.synth import class_prototypes, synth, write_synthetic
from attncluster.data.yt8m import YT8MShard
from attncluster.errors import ConfigError

SMALL = dict(rgb_dim=16, audio_dim=8)


def read_all(paths, dims) -> list:
    return [v for p in paths for v in YT8MShard(p, modalities=dims, max_frames=None)]


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = write_synthetic(tmp_path / "a", videos=30, classes=6, shards=3, seed=7, **SMALL)
    b = write_synthetic(tmp_path / "b", videos=30, classes=6, shards=3, seed=7, **SMALL)
    c = write_synthetic(tmp_path / "c", videos=30, classes=6, shards=3, seed=8, **SMALL)
    assert [Path(p).name for p in a] == ["train0000.tfrecord", "train0001.tfrecord", "train0002.tfrecord"]
    for x, y, z in zip(a, b, c):
        assert Path(x).read_bytes() == Path(y).read_bytes()
        assert Path(x).read_bytes() != Path(z).read_bytes()
    assert (tmp_path / "a" / "vocabulary.csv").read_bytes() == (tmp_path / "b" / "vocabulary.csv").read_bytes()


def test_round_trip_through_the_reader(tmp_path):
    paths = write_synthetic(tmp_path, videos=200, classes=12, shards=4, seed=1, min_frames=5, max_frames=300,
                            prefix="validate", **SMALL)
    assert [Path(p).name for p in paths] == [f"validate000{i}.tfrecord" for i in range(4)]
    videos = read_all(paths, {"rgb": 16, "audio": 8})
    assert len(videos) == 200
    assert [len(YT8MShard(p, modalities={"rgb": 16, "audio": 8})) for p in paths] == [50, 50, 50, 50]
    ids = [v.id for v in videos]
    assert len(set(ids)) == 200 and all(len(i) == 4 and i.isalnum() for i in ids)
    lengths = np.array([v.num_frames for v in videos])
    assert lengths.min() >= 5 and lengths.max() <= 300
    assert lengths.min() < 30 and lengths.max() > 275  # spread over the whole range
    assert len(np.unique(lengths)) > 100
    n_labels = np.array([len(v.labels) for v in videos])
    assert n_labels.min() == 1 and n_labels.max() == 4
    for v in videos:
        assert v.labels.tolist() == sorted(set(v.labels.tolist())) and v.labels.max() < 12
        assert v.features["rgb"].dtype == np.uint8 and v.features["rgb"].shape == (v.num_frames, 16)
        assert v.features["audio"].shape == (v.num_frames, 8)

    with open(tmp_path / "vocabulary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["Index", "TrainVideoCount", "KnowledgeGraphId", "Name", "WikiUrl", "Vertical1",
                             "Vertical2", "Vertical3", "WikiDescription"]
    assert [int(r["Index"]) for r in rows] == list(range(12))
    assert rows[7]["Name"] == "Synthetic class 7"
    counts = np.bincount(np.concatenate([v.labels for v in videos]), minlength=12)
    assert [int(r["TrainVideoCount"]) for r in rows] == counts.tolist()


def test_frames_longer_than_the_reader_cap(tmp_path):
    paths = write_synthetic(tmp_path, videos=3, classes=3, shards=1, seed=0, min_frames=320, max_frames=330, **SMALL)
    for v in YT8MShard(paths[0], modalities={"rgb": 16, "audio": 8}):
        assert v.num_frames == 300


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counting half."""
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def test_mean_pooling_cannot_tell_labels_from_decoys_but_conjunction_frames_can(tmp_path):
    classes, dim = 8, 512
    paths = write_synthetic(tmp_path, videos=150, classes=classes, shards=1, seed=3, rgb_dim=dim, audio_dim=32,
                            min_frames=20, max_frames=120)
    p, q = class_prototypes(classes, {"rgb": dim, "audio": 32})["rgb"]
    up = p / np.linalg.norm(p, axis=1, keepdims=True)
    uq = q / np.linalg.norm(q, axis=1, keepdims=True)
    upq = (p + q) / np.linalg.norm(p + q, axis=1, keepdims=True)
    threshold = np.linalg.norm(p, axis=1) / 2  # a frame carrying p_c projects |p_c| on p_c's direction

    mean_true, mean_decoy, max_true, max_decoy = [], [], [], []
    for video in read_all(paths, {"rgb": dim, "audio": 32}):
        x = dequantize(video.features["rgb"])  # (T, F)
        present = ((x @ up.T).max(0) > threshold) & ((x @ uq.T).max(0) > threshold)  # frames with p_c and with q_c
        labels = np.zeros(classes, bool)
        labels[video.labels] = True
        decoys = present & ~labels
        assert present[labels].all()  # every label's prototypes show up in some frames
        assert 1 <= decoys.sum() <= 3  # and 1-3 other classes' prototypes do too
        t = len(x)
        for k in video.labels:  # a label's conjunction frames: one run of 10-20 % of the video
            (conj,) = np.nonzero((x @ up[k] > threshold[k]) & (x @ uq[k] > threshold[k]))
            assert conj.max() - conj.min() + 1 == len(conj)
            assert max(1, round(0.1 * t)) <= len(conj) <= round(0.2 * t)
        mean_score = (x @ upq.T).mean(0)  # mean pooling, then the best linear read-out for class c
        max_score = (x @ upq.T).max(0)  # the best single frame for class c
        mean_true += mean_score[labels].tolist()
        mean_decoy += mean_score[decoys].tolist()
        max_true += max_score[labels].tolist()
        max_decoy += max_score[decoys].tolist()
    mean_true, mean_decoy = np.array(mean_true), np.array(mean_decoy)
    max_true, max_decoy = np.array(max_true), np.array(max_decoy)
    assert len(mean_true) > 200 and len(mean_decoy) > 200
    # Averaged over frames, labels and decoys look alike: a coin flip ...
    assert 0.4 < auc(mean_true, mean_decoy) < 0.6
    assert abs(mean_true.mean() / mean_decoy.mean() - 1) < 0.1
    # ... while one frame scored along p + q separates them perfectly.
    assert max_true.min() > max_decoy.max()


def test_invalid_arguments(tmp_path):
    with pytest.raises(ConfigError, match="classes must be >= 2"):
        write_synthetic(tmp_path, videos=4, classes=1, shards=1, seed=0)
    with pytest.raises(ConfigError, match=r"shards must be in \[1, videos = 2\], got 3"):
        write_synthetic(tmp_path, videos=2, classes=4, shards=3, seed=0)
    with pytest.raises(ConfigError, match="min_frames <= max_frames"):
        write_synthetic(tmp_path, videos=2, classes=4, shards=1, seed=0, min_frames=10, max_frames=5)
    assert not list(tmp_path.iterdir())


def test_synth_verb_prints_a_summary(tmp_path):
    stream = io.StringIO()
    assert synth(tmp_path / "d", 10, 5, 2, 0, rgb_dim=8, audio_dim=4, stream=stream) == 0
    assert stream.getvalue().startswith(f"synth: wrote 10 videos (5 classes) in 2 shards to {tmp_path / 'd'}")
    assert sorted(x.name for x in (tmp_path / "d").iterdir()) == ["train0000.tfrecord", "train0001.tfrecord",
                                                                    "vocabulary.csv"]


def test_synth_refuses_a_folder_that_is_not_empty(tmp_path):
    write_synthetic(tmp_path / "d", videos=4, classes=3, shards=2, seed=0, **SMALL)
    before = sorted(p.name for p in (tmp_path / "d").iterdir())
    with pytest.raises(ConfigError, match=r"d is not empty \(3 entries\); choose a new or empty folder"):
        write_synthetic(tmp_path / "d", videos=9, classes=3, shards=1, seed=1, **SMALL)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == before


def test_an_interrupted_synth_leaves_no_shard_that_reads_as_valid(tmp_path, monkeypatch):
    """Stopped while writing shard 1 (Ctrl-C inside the writer): shard 0 is complete, nothing else is there."""
    import attncluster.data.synth as synth_mod

    real = synth_mod.encode_sequence_example
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # the second video of the second shard
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synth_mod, "encode_sequence_example", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic(tmp_path / "d", videos=8, classes=3, shards=2, seed=0, **SMALL)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["train0000.tfrecord"]


def test_a_full_disk_is_one_error_naming_the_shard_and_leaves_no_temporary(tmp_path):
    from attncluster.errors import FileError
    from test_outputs import file_size_limit

    out = tmp_path / "d"
    with file_size_limit(2000), pytest.raises(FileError) as e:  # a shard of 8 videos of 1024 + 128 dims is larger
        write_synthetic(out, videos=8, classes=3, shards=1, seed=0, max_frames=10)
    assert str(e.value).startswith(f"{out / 'train0000.tfrecord'}: cannot write: ") and "\n" not in str(e.value)
    assert list(out.iterdir()) == []


def test_a_killed_synths_temporary_file_does_not_block_the_next_run(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / ".train0000.tfrecord.a1b2c3.tmp").write_bytes(b"half a shard")  # what kill -9 leaves
    write_synthetic(out, videos=4, classes=3, shards=1, seed=0, **SMALL)
    assert sorted(p.name for p in out.iterdir()) == ["train0000.tfrecord", "vocabulary.csv"]
    (out / ".mine.tmp").write_bytes(b"a user's file")
    with pytest.raises(ConfigError, match="not empty"):
        write_synthetic(out, videos=4, classes=3, shards=1, seed=0, **SMALL)
