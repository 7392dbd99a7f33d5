import math
import pickle
from collections import Counter

import numpy as np
import pytest
import torch

from attncluster.data import RawVideo, VideoDataset, dequantize, make_loader, open_shard, resolve_shards, sample_indices
from attncluster.data.features import FeatureShard, write_feature_dataset
from attncluster.data.pickles import PickleShard
from attncluster.data.records import ReadStats
from attncluster.errors import ConfigError, DataError

MODS = {"rgb": 8, "audio": 4}
C = 6
SEG = 5


def make_pickles(root, shards, per_shard, seed=0, prefix="s"):
    """Pickle shards of small random videos (3..19 frames, 0..2 labels); returns paths and id -> record."""
    rng = np.random.default_rng(seed)
    paths, truth = [], {}
    for s in range(shards):
        records = []
        for j in range(per_shard):
            t = int(rng.integers(3, 20))
            rec = {"video": f"{prefix}{s}_{j}", "feature": rng.integers(0, 256, (t, 8), dtype=np.uint8),
                   "audio": rng.integers(0, 256, (t, 4), dtype=np.uint8),
                   "label": sorted(rng.choice(C, size=int(rng.integers(0, 3)), replace=False).tolist()),
                   "nframes": t}
            records.append(rec)
            truth[rec["video"]] = rec
        path = root / f"{prefix}{s:02d}.pkl"
        path.write_bytes(pickle.dumps(records))
        paths.append(str(path))
    return paths, truth


def ref_dequantize(q):
    return q.astype(np.float64) * (4.0 / 255.0) + (4.0 / 512.0 - 2.0)


def centre_indices(n, seg):
    return [min(n - 1, math.floor((i + 0.5) * n / seg)) for i in range(seg)]


def ids_of(dataset):
    return [s["id"] for s in dataset]


def test_sample_contract(tmp_path):
    paths, truth = make_pickles(tmp_path, shards=2, per_shard=4)
    ds = VideoDataset(str(tmp_path), modalities=MODS, num_classes=C, seg_num=SEG)
    samples = list(ds)
    assert [s["id"] for s in samples] == list(truth)  # eval keeps file order
    for s in samples:
        rec = truth[s["id"]]
        assert set(s) == {"id", "rgb", "audio", "labels", "num_frames"}
        assert isinstance(s["id"], str) and isinstance(s["num_frames"], int) and s["num_frames"] == rec["nframes"]
        idx = centre_indices(rec["nframes"], SEG)
        for name, key in (("rgb", "feature"), ("audio", "audio")):
            assert s[name].dtype == torch.float32 and s[name].shape == (SEG, MODS[name])
            np.testing.assert_allclose(s[name].numpy(), ref_dequantize(rec[key][idx]), rtol=0, atol=1e-6)
        expected = np.zeros(C, dtype=np.float32)
        for label in rec["label"]:
            expected[label] = 1.0
        assert s["labels"].dtype == torch.float32 and s["labels"].shape == (C,)
        assert s["labels"].tolist() == expected.tolist()

    batch = next(iter(make_loader(ds, batch_size=3)))
    assert batch["id"] == list(truth)[:3]
    assert batch["rgb"].shape == (3, SEG, 8) and batch["audio"].shape == (3, SEG, 4)
    assert batch["labels"].shape == (3, C) and batch["num_frames"].dtype == torch.int64


def test_max_frames_cap(tmp_path):
    paths, truth = make_pickles(tmp_path, shards=1, per_shard=6)
    ds = VideoDataset(paths, modalities=MODS, num_classes=C, seg_num=SEG, max_frames=4)
    for s in ds:
        n = min(4, truth[s["id"]]["nframes"])
        assert s["num_frames"] == n
        np.testing.assert_allclose(s["rgb"].numpy(), ref_dequantize(truth[s["id"]]["feature"][centre_indices(n, SEG)]),
                                   atol=1e-6)


def test_eval_is_deterministic(tmp_path):
    make_pickles(tmp_path, shards=3, per_shard=4)
    ds = VideoDataset(str(tmp_path), modalities=MODS, num_classes=C, seg_num=SEG)
    first, second = list(ds), list(ds)
    ds.set_epoch(5)
    third = list(ds)
    for a, b, c in zip(first, second, third, strict=True):
        assert a["id"] == b["id"] == c["id"]
        assert torch.equal(a["rgb"], b["rgb"]) and torch.equal(a["rgb"], c["rgb"])


def stack(samples, key="rgb"):
    return torch.stack([s[key] for s in samples])


def test_train_jitter_per_epoch_and_reproducible(tmp_path):
    paths, truth = make_pickles(tmp_path, shards=2, per_shard=5)
    kwargs = dict(modalities=MODS, num_classes=C, seg_num=SEG, train=True, shuffle=False, seed=3)
    ds = VideoDataset(paths, **kwargs)
    e0 = list(ds)
    ds.set_epoch(1)
    e1 = list(ds)
    assert ids_of(e0) == ids_of(e1) == list(truth)  # shuffle=False: only the frames change
    assert not torch.equal(stack(e0), stack(e1))

    again = VideoDataset(paths, **kwargs)
    again.set_epoch(1)
    assert torch.equal(stack(list(again)), stack(e1)) and torch.equal(stack(list(again), "audio"), stack(e1, "audio"))
    other_seed = VideoDataset(paths, **{**kwargs, "seed": 4})
    other_seed.set_epoch(1)
    assert not torch.equal(stack(list(other_seed)), stack(e1))

    # Jittered frames are real frames, each from its own stratum, with the same index for rgb and audio.
    for s in e0 + e1:
        rec = truth[s["id"]]
        n = rec["nframes"]
        for i in range(SEG):
            lo, hi = math.floor(i * n / SEG), min(n - 1, math.floor((i + 1) * n / SEG))
            hits = [j for j in range(lo, hi + 1)
                    if np.allclose(s["rgb"][i].numpy(), ref_dequantize(rec["feature"][j]), atol=1e-6)
                    and np.allclose(s["audio"][i].numpy(), ref_dequantize(rec["audio"][j]), atol=1e-6)]
            assert hits, (s["id"], i)


def shard_of(video_id):
    return int(video_id[1:].split("_")[0])


def test_shuffle_permutes_shards_and_records(tmp_path):
    shards, per = 6, 5
    paths, truth = make_pickles(tmp_path, shards=shards, per_shard=per)
    ds = VideoDataset(paths, modalities=MODS, num_classes=C, seg_num=SEG, train=True, seed=0)
    orders = {}
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        ids = ids_of(ds)
        assert sorted(ids) == sorted(truth)
        blocks = [ids[k:k + per] for k in range(0, len(ids), per)]
        assert all(len({shard_of(v) for v in b}) == 1 for b in blocks)  # a shard at a time: no buffering across
        shard_order = [shard_of(b[0]) for b in blocks]
        assert shard_order == np.random.default_rng((0, epoch)).permutation(shards).tolist()
        orders[epoch] = {shard_of(b[0]): b for b in blocks}
    assert [orders[0][s] for s in range(shards)] != [orders[1][s] for s in range(shards)]
    file_order = {s: [f"s{s}_{j}" for j in range(per)] for s in range(shards)}
    assert sum(orders[0][s] != file_order[s] for s in range(shards)) >= shards - 1
    assert sum(orders[0][s] != orders[1][s] for s in range(shards)) >= shards - 1

    again = VideoDataset(paths, modalities=MODS, num_classes=C, seg_num=SEG, train=True, seed=0)
    again.set_epoch(1)
    assert ids_of(again) == [v for s in np.random.default_rng((0, 1)).permutation(shards) for v in orders[1][s]]
    # Eval keeps file order even when asked to shuffle nothing.
    assert ids_of(VideoDataset(paths, modalities=MODS, num_classes=C, seg_num=SEG)) == list(truth)


def test_dequantize_false_keeps_uint8_and_matches_float_path(tmp_path):
    paths, truth = make_pickles(tmp_path, shards=2, per_shard=4)
    for train in (False, True):
        kwargs = dict(modalities=MODS, num_classes=C, seg_num=SEG, train=train, seed=1)
        q, f = VideoDataset(paths, dequantize=False, **kwargs), VideoDataset(paths, **kwargs)
        bq, bf = next(iter(make_loader(q, 8))), next(iter(make_loader(f, 8)))
        assert bq["id"] == bf["id"]
        for name in MODS:
            assert bq[name].dtype == torch.uint8 and bf[name].dtype == torch.float32
            assert torch.equal(dequantize(bq[name]), bf[name])  # exactly, on the torch path
            assert np.array_equal(dequantize(bq[name].numpy()), bf[name].numpy())


def test_float_sources_stay_float(tmp_path):
    rng = np.random.default_rng(0)
    vids = [(f"v{i}", [i], {"rgb": rng.integers(0, 256, (7, 8), dtype=np.uint8),
                            "audio": rng.standard_normal((7, 4)).astype(np.float32)}) for i in range(3)]
    write_feature_dataset(str(tmp_path), vids)
    ds = VideoDataset(str(tmp_path), modalities=MODS, num_classes=C, seg_num=SEG, dequantize=False)
    for s, (vid, labels, arrays) in zip(ds, vids, strict=True):
        assert s["id"] == vid and s["rgb"].dtype == torch.uint8 and s["audio"].dtype == torch.float32
        assert np.array_equal(s["audio"].numpy(), arrays["audio"][centre_indices(7, SEG)])
        assert np.array_equal(s["rgb"].numpy(), arrays["rgb"][centre_indices(7, SEG)])


def collect_job(paths, world_size, num_workers, **kwargs):
    """Every id each rank yields, running each rank's real multiprocess DataLoader in turn."""
    per_rank = []
    for rank in range(world_size):
        ds = VideoDataset(paths, modalities=kwargs.pop("modalities", MODS), num_classes=C, seg_num=SEG, rank=rank,
                          world_size=world_size, **kwargs)
        ds.set_epoch(3)
        per_rank.append([v for batch in make_loader(ds, batch_size=2, num_workers=num_workers) for v in batch["id"]])
    return per_rank


def assert_split(per_rank, truth, train):
    """Each video at most once in the job; all of them in evaluation; in training every rank gets N // ranks."""
    counts = Counter(v for ids in per_rank for v in ids)
    assert set(counts.values()) == {1} and set(counts) <= set(truth)
    world = len(per_rank)
    if train:
        assert [len(ids) for ids in per_rank] == [len(truth) // world] * world
    else:
        assert set(counts) == set(truth) and max(map(len, per_rank)) - min(map(len, per_rank)) <= 1


@pytest.mark.parametrize("shards,per_shard,train", [
    (7, 3, False),
    (9, 2, True),
    (3, 5, True),  # 15 videos over 2 ranks: one left out in training, so both ranks run 7
    (1, 9, False),
])
def test_every_video_exactly_once_across_ranks_and_workers(tmp_path, shards, per_shard, train):
    paths, truth = make_pickles(tmp_path, shards=shards, per_shard=per_shard)
    assert_split(collect_job(paths, world_size=2, num_workers=2, train=train), truth, train)


def test_persistent_workers_follow_set_epoch(tmp_path):
    paths, truth = make_pickles(tmp_path, shards=4, per_shard=3)
    kwargs = dict(modalities=MODS, num_classes=C, seg_num=SEG, train=True)
    ds = VideoDataset(paths, **kwargs)
    loader = make_loader(ds, batch_size=2, num_workers=2, persistent_workers=True)
    epochs = []
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        epochs.append([(v, b["rgb"][k]) for b in loader for k, v in enumerate(b["id"])])
    fresh = VideoDataset(paths, **kwargs)
    fresh.set_epoch(1)
    expected = [(v, b["rgb"][k])
                for b in make_loader(fresh, batch_size=2, num_workers=2) for k, v in enumerate(b["id"])]
    assert [v for v, _ in epochs[1]] == [v for v, _ in expected] != [v for v, _ in epochs[0]]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(epochs[1], expected))
    assert ds.stats.videos == 2 * len(truth) and ds.stats.files == 2 * 4


def corrupt_pickle(tmp_path):
    paths, truth = make_pickles(tmp_path, shards=1, per_shard=6)
    records = [truth[f"s0_{j}"] for j in range(6)]
    del records[1]["audio"]
    records[3]["label"] = [C]
    records[4]["nframes"] = 0  # no frames: nothing to sample
    (tmp_path / "s00.pkl").write_bytes(pickle.dumps(records))
    return paths[0]


def test_skip_corrupt_counts_and_warns(tmp_path, capfd):
    path = corrupt_pickle(tmp_path)
    with pytest.raises(DataError, match="record 1 .*missing key 'audio'"):
        list(VideoDataset(path, modalities=MODS, num_classes=C, seg_num=SEG))

    ds = VideoDataset(path, modalities=MODS, num_classes=C, seg_num=SEG, skip_corrupt=True)
    assert ids_of(ds) == ["s0_0", "s0_2", "s0_5"]
    assert (ds.stats.files, ds.stats.videos, ds.stats.corrupt) == (1, 4, 3)  # record 4 parsed, then had no frames
    warnings = [line for line in capfd.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 3
    assert "record 1" in warnings[0] and "missing key 'audio'" in warnings[0] and path in warnings[0]
    assert "label 6 out of range" in warnings[1] and "record 4" in warnings[2] and "no frames" in warnings[2]

    # With workers the counts arrive in the main process too (one shard, two workers: record-level split).
    ds = VideoDataset(path, modalities=MODS, num_classes=C, seg_num=SEG, skip_corrupt=True)
    ids = [v for b in make_loader(ds, batch_size=2, num_workers=2) for v in b["id"]]
    assert sorted(ids) == ["s0_0", "s0_2", "s0_5"]
    assert (ds.stats.files, ds.stats.corrupt) == (1, 3)


def test_memory_filesystem(tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    _, truth = make_pickles(tmp_path, shards=2, per_shard=3, prefix="m")
    for name in ("m00.pkl", "m01.pkl"):
        fs.pipe(f"/dataset_test/pk/{name}", (tmp_path / name).read_bytes())
    rng = np.random.default_rng(1)
    vids = [(f"f{i}", [1], {"rgb": rng.integers(0, 256, (4, 8), dtype=np.uint8),
                            "audio": rng.integers(0, 256, (4, 4), dtype=np.uint8)}) for i in range(2)]
    write_feature_dataset("memory://dataset_test/feat", vids)
    specs = ["memory://dataset_test/pk", "memory://dataset_test/feat"]
    resolved = resolve_shards(specs)
    assert [p.startswith("memory://") for p in resolved] == [True] * 3
    assert [p.rsplit("/", 2)[-2:] for p in resolved] == [["pk", "m00.pkl"], ["pk", "m01.pkl"], ["feat", "labels.csv"]]
    ds = VideoDataset(specs, modalities=MODS, num_classes=C, seg_num=SEG)
    samples = list(ds)
    assert ids_of(samples) == list(truth) + ["f0", "f1"]
    np.testing.assert_allclose(samples[-1]["rgb"].numpy(), ref_dequantize(vids[1][2]["rgb"][centre_indices(4, SEG)]),
                               atol=1e-6)


def test_open_shard_and_resolve_shards(tmp_path):
    (tmp_path / "pk").mkdir()
    paths, _ = make_pickles(tmp_path / "pk", shards=2, per_shard=2)
    csv = write_feature_dataset(str(tmp_path / "feat"), [("a", [0], {"rgb": np.zeros((2, 8), np.uint8),
                                                                      "audio": np.zeros((2, 4), np.uint8)})])
    assert isinstance(open_shard(paths[0], modalities=MODS, num_classes=C), PickleShard)
    assert isinstance(open_shard(csv, modalities=MODS, num_classes=C), FeatureShard)
    assert resolve_shards(str(tmp_path / "feat")) == [csv]
    assert resolve_shards([str(tmp_path / "pk"), str(tmp_path / "feat")], fmt="auto") == paths + [csv]
    with pytest.raises(DataError, match="not a labels CSV"):
        resolve_shards(paths, fmt="features")
    with pytest.raises(ConfigError, match="unknown data format 'hdf5'"):
        resolve_shards(paths, fmt="hdf5")
    with pytest.raises(DataError, match="matches no files"):
        resolve_shards(str(tmp_path / "nothing*.pkl"))
    with pytest.raises(DataError, match="not a readable pickle"):
        open_shard(csv, fmt="pickle", modalities=MODS, num_classes=C)


def test_rank_from_environment(tmp_path, monkeypatch):
    paths, _ = make_pickles(tmp_path, shards=1, per_shard=2)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    ds = VideoDataset(paths, modalities=MODS, num_classes=C)
    assert (ds.rank, ds.world_size) == (1, 3)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert (VideoDataset(paths, modalities=MODS, num_classes=C).rank,) == (0,)
    with pytest.raises(ConfigError, match="rank 2 is not in"):
        VideoDataset(paths, modalities=MODS, num_classes=C, rank=2, world_size=2)


def test_reexports():
    assert sample_indices(4, 2).tolist() == [1, 3]
    assert RawVideo("x", {"rgb": np.zeros((3, 2), np.uint8)}).num_frames == 3


# ---- YouTube-8M TFRecord shards --------------------------------------------------------------------------------------


def make_tfrecords(root, shards, per_shard, widths=MODS, num_classes=C, seed=0, prefix="t"):
    from attncluster.data.tfrecord import write_records
    from attncluster.data.yt8m import encode_sequence_example

    rng = np.random.default_rng(seed)
    paths, truth = [], {}
    for s in range(shards):
        payloads = []
        for j in range(per_shard):
            t = int(rng.integers(3, 20))
            frames = {m: rng.integers(0, 256, (t, w), dtype=np.uint8) for m, w in widths.items()}
            labels = sorted(rng.choice(num_classes, size=int(rng.integers(1, 4)), replace=False).tolist())
            vid = f"{prefix}{s}_{j}"
            truth[vid] = (labels, frames)
            payloads.append(encode_sequence_example(vid, labels, frames))
        path = f"{root}/{prefix}{s:02d}.tfrecord"
        write_records(path, payloads)
        paths.append(path)
    return paths, truth


def test_tfrecord_frame_level_contract(tmp_path):
    widths = {"rgb": 1024, "audio": 128}
    paths, truth = make_tfrecords(tmp_path, shards=2, per_shard=3, widths=widths, num_classes=3862)
    ds = VideoDataset(str(tmp_path), modalities=widths, num_classes=3862, seg_num=SEG)
    q = VideoDataset(str(tmp_path), modalities=widths, num_classes=3862, seg_num=SEG, dequantize=False)
    samples, quantized = list(ds), list(q)
    assert ids_of(samples) == ids_of(quantized) == list(truth)
    for s, sq in zip(samples, quantized):
        labels, frames = truth[s["id"]]
        n = frames["rgb"].shape[0]
        assert s["num_frames"] == n and s["labels"].nonzero().flatten().tolist() == labels
        for m, w in widths.items():
            expected = frames[m][centre_indices(n, SEG)]
            assert s[m].shape == (SEG, w) and s[m].dtype == torch.float32
            np.testing.assert_allclose(s[m].numpy(), ref_dequantize(expected), atol=1e-6)
            assert sq[m].dtype == torch.uint8 and np.array_equal(sq[m].numpy(), expected)


def test_tfrecord_video_level(tmp_path):
    from attncluster.data.tfrecord import write_records
    from attncluster.data.yt8m import encode_example

    rng = np.random.default_rng(0)
    means = {m: rng.standard_normal(w).astype(np.float32) for m, w in MODS.items()}
    write_records(str(tmp_path / "v.tfrecord"), [encode_example("vid", [2, 5], means)])
    for dq in (True, False):
        (s,) = list(VideoDataset(str(tmp_path), modalities=MODS, num_classes=C, seg_num=SEG, dequantize=dq))
        assert s["num_frames"] == 1 and s["labels"].tolist() == [0, 0, 1, 0, 0, 1]
        for m in MODS:
            assert s[m].dtype == torch.float32 and np.array_equal(s[m].numpy(), np.tile(means[m], (SEG, 1)))


@pytest.mark.parametrize("shards,per_shard", [(5, 3), (2, 7)])
def test_tfrecord_exactly_once(tmp_path, shards, per_shard):
    paths, truth = make_tfrecords(tmp_path, shards=shards, per_shard=per_shard)
    assert_split(collect_job(paths, world_size=2, num_workers=2, train=True), truth, train=True)


def test_tfrecord_corrupt_record_skipped(tmp_path, capfd):
    from attncluster.data.tfrecord import HEADER_BYTES

    paths, truth = make_tfrecords(tmp_path, shards=1, per_shard=4)
    data = bytearray(open(paths[0], "rb").read())
    first_len = int.from_bytes(data[:8], "little")
    second_payload = HEADER_BYTES + first_len + 4 + HEADER_BYTES
    data[second_payload + 20] ^= 0xFF  # damage record 1's payload: its CRC no longer matches
    open(paths[0], "wb").write(bytes(data))
    with pytest.raises(DataError, match="record 1"):
        list(VideoDataset(paths, modalities=MODS, num_classes=C, seg_num=SEG))
    ds = VideoDataset(paths, modalities=MODS, num_classes=C, seg_num=SEG, skip_corrupt=True, train=True)
    assert sorted(ids_of(ds)) == ["t0_0", "t0_2", "t0_3"]
    assert (ds.stats.files, ds.stats.videos, ds.stats.corrupt) == (1, 3, 1)
    assert sum(line.startswith("warning:") and paths[0] in line for line in capfd.readouterr().err.splitlines()) == 1


def test_tfrecord_memory_filesystem():
    paths, truth = make_tfrecords("memory://dataset_test/tf", shards=2, per_shard=2)
    ds = VideoDataset("memory://dataset_test/tf", modalities=MODS, num_classes=C, seg_num=SEG, train=True)
    assert sorted(ids_of(ds)) == sorted(truth)


def test_open_shard_yt8m_format(tmp_path):
    from attncluster.data.yt8m import YT8MShard

    paths, _ = make_tfrecords(tmp_path, shards=1, per_shard=2)
    plain = str(tmp_path / "train0000")  # no suffix: auto means yt8m
    (tmp_path / "t00.tfrecord").rename(plain)
    assert isinstance(open_shard(plain, modalities=MODS, num_classes=C), YT8MShard)
    assert isinstance(open_shard(plain, fmt="yt8m", modalities=MODS, num_classes=C), YT8MShard)
    assert ids_of(VideoDataset(plain, fmt="yt8m", modalities=MODS, num_classes=C, seg_num=SEG)) == ["t0_0", "t0_1"]


# ---- batches: by position in the epoch order, whatever the number of workers -----------------------------------------


def reference_epoch(paths, counts, seed, epoch, rank, world, equal):
    """The documented epoch order, computed here from the seeds: shards by (seed, epoch), records by
    (seed, epoch, shard, 1); rank r takes a contiguous part (N // world each when ``equal``)."""
    order = np.random.default_rng((seed, epoch)).permutation(len(paths))
    seq = [(int(s), int(i)) for s in order for i in np.random.default_rng((seed, epoch, int(s), 1)).permutation(counts[s])]
    n = len(seq)
    lo, hi = (rank * (n // world), (rank + 1) * (n // world)) if equal else (rank * n // world, (rank + 1) * n // world)
    return seq[lo:hi]


def batches_of(ds, batch_size, workers, start=0):
    ds.set_epoch(ds.epoch, start)
    return [(b["id"], b["rgb"], b["audio"]) for b in make_loader(ds, batch_size, num_workers=workers)]


# More workers than this machine's cores is what the test asks for (the batches must not depend on the number of
# workers); torch's DataLoader says so on a small machine, an expected warning, not a fault.
@pytest.mark.filterwarnings("ignore:This DataLoader will create .* worker processes:UserWarning")
def test_batches_do_not_depend_on_the_number_of_workers(tmp_path):
    paths, truth = make_pickles(tmp_path, shards=3, per_shard=7)  # 21 videos
    names = {(s, j): f"s{s}_{j}" for s in range(3) for j in range(7)}
    for rank in (0, 1):
        ds = VideoDataset(paths, modalities=MODS, num_classes=C, seg_num=SEG, train=True, seed=5, rank=rank,
                          world_size=2)
        ds.set_epoch(2)
        runs = {w: batches_of(ds, 4, w) for w in (0, 1, 2, 3)}
        expected = [names[k] for k in reference_epoch(paths, [7, 7, 7], 5, 2, rank, 2, equal=True)]
        assert len(expected) == 10
        ids = [b[0] for b in runs[0]]
        assert ids == [expected[i:i + 4] for i in range(0, 10, 4)]  # batches of 4, 4 and the one partial 2
        for w in (1, 2, 3):
            assert [b[0] for b in runs[w]] == ids
            for (_, r0, a0), (_, r1, a1) in zip(runs[0], runs[w], strict=True):
                assert torch.equal(r0, r1) and torch.equal(a0, a1)  # the same jittered frames too


# More workers than this machine's cores is what the test asks for (the batches must not depend on the number of
# workers); torch's DataLoader says so on a small machine, an expected warning, not a fault.
@pytest.mark.filterwarnings("ignore:This DataLoader will create .* worker processes:UserWarning")
def test_a_small_dataset_is_one_partial_batch_per_rank(tmp_path):
    """Fewer videos than one batch, more workers than batches: one batch with every video (not one per worker)."""
    paths, truth = make_pickles(tmp_path, shards=2, per_shard=5)
    ds = VideoDataset(paths, modalities=MODS, num_classes=C, seg_num=SEG, train=True)
    for workers in (0, 4):
        batches = batches_of(ds, 64, workers)
        assert len(batches) == 1 and sorted(batches[0][0]) == sorted(truth)
    loader = make_loader(ds, 64, num_workers=2, drop_last=True)
    assert list(loader) == [] and len(loader) == 0  # drop_last drops that one partial batch, nothing else
    ds4 = VideoDataset(paths, modalities=MODS, num_classes=C, seg_num=SEG, train=True)
    assert [len(b[0]) for b in batches_of(ds4, 4, 3)] == [4, 4, 2]


def test_start_batch_resumes_with_the_same_batches(tmp_path):
    paths, _ = make_pickles(tmp_path, shards=2, per_shard=6)
    ds = VideoDataset(paths, modalities=MODS, num_classes=C, seg_num=SEG, train=True, seed=1)
    ds.set_epoch(1)
    full = batches_of(ds, 3, 0)
    loader = make_loader(ds, 3, num_workers=2)
    ds.set_epoch(1, start_batch=2)
    rest = [(b["id"], b["rgb"], b["audio"]) for b in loader]
    assert [b[0] for b in rest] == [b[0] for b in full[2:]] and loader.position == len(full) == 4
    assert all(torch.equal(a[1], b[1]) for a, b in zip(rest, full[2:], strict=True))


def test_auto_workers_in_make_loader(tmp_path, monkeypatch):
    paths, truth = make_pickles(tmp_path, shards=1, per_shard=3)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    ds = VideoDataset(paths, modalities=MODS, num_classes=C, seg_num=SEG)
    loader = make_loader(ds, 2, num_workers="auto")
    assert loader.num_workers == 1 and [v for b in loader for v in b["id"]] == list(truth)


def test_jitter_of_a_large_shard_is_drawn_per_record(tmp_path, monkeypatch):
    """Above the block size the jitter comes from a generator per record: still the same frames for any worker
    count, and still real strata."""
    from attncluster.data import dataset

    paths, truth = make_pickles(tmp_path, shards=1, per_shard=9)
    monkeypatch.setattr(dataset, "_JITTER_BLOCK", 4)
    ds = VideoDataset(paths, modalities=MODS, num_classes=C, seg_num=SEG, train=True, seed=2)
    a, b = batches_of(ds, 4, 0), batches_of(ds, 4, 2)
    assert [x[0] for x in a] == [x[0] for x in b] and all(torch.equal(x[1], y[1]) for x, y in zip(a, b))
    for ids, rgb, _ in a:
        for vid, frames in zip(ids, rgb):
            rec = truth[vid]
            n = rec["nframes"]
            u = np.random.default_rng((2, 0, 0, int(vid.split("_")[1]), 2)).random(SEG)
            idx = np.minimum(np.floor((np.arange(SEG) + u) * n / SEG).astype(int), n - 1)
            np.testing.assert_allclose(frames.numpy(), ref_dequantize(rec["feature"][idx]), atol=1e-6)


def test_skip_corrupt_trains_past_an_empty_shard_and_a_damaged_header_and_says_so(tmp_path, capsys):
    """With skip_corrupt an empty shard and a damaged record header are each warned about once, and every intact
    video, including those after the damaged header, is still read."""
    import struct

    from attncluster.data.dataset import VideoDataset, make_loader
    from attncluster.data.synth import write_synthetic

    shards = write_synthetic(tmp_path / "d", videos=30, classes=4, shards=3, seed=0, max_frames=6)
    (tmp_path / "d" / "train0003.tfrecord").write_bytes(b"")  # a failed download
    data = bytearray(open(shards[1], "rb").read())
    (first,) = struct.unpack_from("<Q", data, 0)
    second = 16 + first
    data[second + 1] ^= 0xFF  # record 1's length: damaged framing
    open(shards[1], "wb").write(bytes(data))
    kwargs = dict(modalities={"rgb": 1024, "audio": 128}, num_classes=4, seg_num=3, train=False)
    with pytest.raises(DataError, match=r"train0001.tfrecord: record 1 at byte offset \d+: bad length CRC"):
        make_loader(VideoDataset(str(tmp_path / "d"), **kwargs), 8)
    with pytest.raises(DataError, match=r"train0003.tfrecord: empty file \(0 bytes\)"):
        make_loader(VideoDataset(str(tmp_path / "d" / "train0003.tfrecord"), **kwargs), 8)
    ds = VideoDataset(str(tmp_path / "d"), skip_corrupt=True, **kwargs)
    ids = [i for batch in make_loader(ds, 8) for i in batch["id"]]
    err = capsys.readouterr().err
    assert len(ids) == 29 and len(set(ids)) == 29  # 30 videos, one lost with its damaged header
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert any("train0003.tfrecord: skipped (empty file)" in w for w in warnings)
    assert any("train0001.tfrecord: 1 damaged stretch(es) skipped" in w and "bytes unreadable" in w for w in warnings)


def test_a_features_layout_read_as_tfrecords_says_what_it_is(tmp_path):
    """data.format: yt8m (as the quickstart config sets) on an npz + labels.csv folder: a hint, not a CRC error."""
    write_feature_dataset(str(tmp_path / "f"), [("v0", [1], {"rgb": np.zeros((2, 4), np.float32),
                                                            "audio": np.zeros((2, 3), np.float32)})])
    with pytest.raises(DataError, match=r"labels.csv: a features-format file, but data.format is yt8m .*"
                                        r"-o data.format=auto"):
        make_loader(VideoDataset(str(tmp_path / "f"), modalities={"rgb": 4, "audio": 3}, num_classes=3, seg_num=2,
                                 train=False, fmt="yt8m"), 2)
    ds = VideoDataset(str(tmp_path / "f"), modalities={"rgb": 4, "audio": 3}, num_classes=3, seg_num=2, train=False)
    assert [b["id"] for b in make_loader(ds, 2)] == [["v0"]]


# --- the dataset from a config ----------------------------------------------------------------------------------------


def test_from_config_carries_skip_corrupt_class_names_and_the_rank_of_distributed(tmp_path, monkeypatch):
    from attncluster.config import load_config
    from attncluster.distributed import DistInfo

    names = tmp_path / "names.txt"
    names.write_text("".join(f"class {i}\n" for i in range(C)))
    paths, _ = make_pickles(tmp_path, 2, 3)
    cfg = load_config(None, ["model.feature_dims={rgb: 8, audio: 4}", f"model.num_classes={C}", "model.seg_num=5",
                             "data.skip_corrupt=true", f"data.class_names={names}", "train.seed=7",
                             "data.format=pickle"])
    monkeypatch.setenv("RANK", "1")  # what the dataset read by itself before: not the rank it was given
    monkeypatch.setenv("WORLD_SIZE", "2")
    ds = VideoDataset.from_config(cfg, paths, train=False, dist=DistInfo(rank=0, local_rank=0, world_size=1))
    assert (ds.rank, ds.world_size) == (0, 1)
    assert ds.skip_corrupt is True and ds.class_names == [f"class {i}" for i in range(C)]
    assert (ds.modalities, ds.num_classes, ds.seg_num, ds.fmt, ds.seed) == (MODS, C, 5, "pickle", 7)
    assert (ds.train, ds.shuffle, ds.dequantize) == (False, False, False)
    ds = VideoDataset.from_config(cfg, paths, train=True, dist=DistInfo(rank=1, local_rank=1, world_size=3))
    assert (ds.rank, ds.world_size, ds.train, ds.shuffle, ds.equal_ranks) == (1, 3, True, True, True)
    ds = VideoDataset.from_config(cfg, paths, train=False)  # default: distributed.env_info()
    assert (ds.rank, ds.world_size) == (1, 2)


# --- non-finite features and damaged-only data, through every reader and verb ------------------------------------------


def _video_level_shard(path, bad_index=None, bad_value=np.nan, n=4):
    """Video-level records (1024 rgb + 128 audio means) written with the project's encoder and TFRecord writer."""
    from attncluster.data.tfrecord import write_records
    from attncluster.data.yt8m import encode_example

    rng = np.random.default_rng(3)
    records = []
    for i in range(n):
        mean = {"rgb": rng.uniform(-1, 1, 1024).astype(np.float32), "audio": rng.uniform(-1, 1, 128).astype(np.float32)}
        if i == bad_index:
            mean["rgb"][17] = bad_value
        records.append(encode_example(f"v{i:03d}", [i % 5], mean))
    write_records(path, records)
    return path


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_feature_is_a_data_error_on_every_reader_path(tmp_path, bad):
    from attncluster.data.yt8m import YT8MShard

    path = str(_video_level_shard(tmp_path / "v.tfrecord", bad_index=2, bad_value=bad))
    pattern = r"v.tfrecord: record 2 at byte offset \d+ \(id 'v002'\): 'rgb' features hold 1 non-finite value"
    with pytest.raises(DataError, match=pattern):
        list(YT8MShard(path))  # streaming (eval, predict)
    with pytest.raises(DataError, match=pattern):
        YT8MShard(path).read(2)  # random access (training)
    ds = VideoDataset(path, modalities={"rgb": 1024, "audio": 128}, num_classes=5, seg_num=1, skip_corrupt=True)
    ids = [s["id"] for s in ds]
    assert ids == ["v000", "v001", "v003"] and ds.stats.corrupt == 1
    # npz / npy features and pickles: the same check.
    mean = np.zeros((1, 8), np.float64)
    mean[0, 3] = bad
    write_feature_dataset(str(tmp_path / "f"), [("a", [1], {"rgb": np.zeros((2, 8)), "audio": np.zeros((2, 4))}),
                                           ("b", [2], {"rgb": np.vstack([mean, mean]), "audio": np.zeros((2, 4))})])
    shard = FeatureShard(str(tmp_path / "f" / "labels.csv"), modalities=MODS)
    with pytest.raises(DataError, match=r"labels.csv: line 3 \(id 'b'\): 'rgb' features hold 2 non-finite values"):
        shard.read(1)
    pkl = tmp_path / "p.pkl"
    pkl.write_bytes(pickle.dumps([{"video": "p0", "feature": np.vstack([mean, mean]).astype(np.float32),
                                   "audio": np.zeros((2, 4), np.float32), "label": [1], "nframes": 2}]))
    with pytest.raises(DataError, match=r"p.pkl: record 0 \(id 'p0'\): 'rgb' features hold 2 non-finite"):
        PickleShard(str(pkl), modalities=MODS).read(0)
    shard = PickleShard(str(pkl), modalities=MODS, skip_corrupt=True, stats=(stats := ReadStats()))
    assert list(shard) == [] and stats.corrupt == 1


def test_a_float64_too_large_for_float32_is_refused_as_the_inf_it_becomes(tmp_path):
    big = np.full((2, 8), 1e300)
    write_feature_dataset(str(tmp_path / "f"), [("b", [2], {"rgb": big, "audio": np.zeros((2, 4))})])
    with pytest.raises(DataError, match="non-finite"):
        FeatureShard(str(tmp_path / "f" / "labels.csv"), modalities=MODS).read(0)


@pytest.fixture(scope="module")
def video_level_ckpt(tmp_path_factory):
    import torch

    from attncluster.checkpoint import atomic_save
    from attncluster.config import load_config
    from attncluster.model import AttentionCluster

    root = tmp_path_factory.mktemp("vl_ckpt")
    cfg = load_config(None, ["model.num_classes=5", "model.seg_num=1", "model.cluster_nums=1",
                             "model.hidden_sizes=[16]", "data.num_workers=0", "data.format=yt8m", "train.epochs=1",
                             "train.batch_size=2", "eval.batch_size=2", "eval.top_k=3"])
    (root / "config.yaml").write_text(cfg.to_yaml())
    torch.manual_seed(0)
    atomic_save({"model": AttentionCluster(**cfg.model.model_kwargs()).state_dict()}, root / "model.pt")
    return root


def _main(capsys, *argv):
    from attncluster.cli import main

    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip()]


def _verb_args(verb, ckpt, data, tmp_path, run="run"):
    cfg = ["--config", ckpt / "config.yaml"]
    if verb == "train":
        return ["train", *cfg, "-o", f"data.train={data}", "-o", f"data.valid={data}", "--run-dir", tmp_path / run,
                "--device", "cpu"]
    if verb == "eval":
        return ["eval", *cfg, "--weights", ckpt / "model.pt", "--data", data, "--device", "cpu"]
    return ["predict", *cfg, "--weights", ckpt / "model.pt", "--data", data, "--output", tmp_path / "p.jsonl",
            "--device", "cpu"]


# train: ~7 s (two runs), so slow; the training reader's path (random access read(i), skipped and counted) is
# covered fast by test_a_non_finite_feature_is_a_data_error_on_every_reader_path.
@pytest.mark.parametrize("verb", ["eval", "predict", pytest.param("train", marks=pytest.mark.slow)])
def test_a_nan_record_through_each_verb_is_one_error_line_or_skipped_and_counted(verb, video_level_ckpt, tmp_path,
                                                                                 capsys):
    data = _video_level_shard(tmp_path / "v.tfrecord", bad_index=1)
    code, lines = _main(capsys, *_verb_args(verb, video_level_ckpt, data, tmp_path))
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "v.tfrecord: record 1 at byte offset" in lines[0] and "(id 'v001')" in lines[0] and "non-finite" in lines[0]
    code, lines = _main(capsys, *_verb_args(verb, video_level_ckpt, data, tmp_path, "run2"), "-o",
                        "data.skip_corrupt=true")
    assert code == 0, lines
    warned = [line for line in lines if "non-finite" in line]
    assert warned and all(line.startswith("warning: ") and "(id 'v001')" in line for line in warned), lines
    if verb == "predict":
        import json

        rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
        assert [r["id"] for r in rows] == ["v000", "v002", "v003"]


def test_eval_when_every_record_is_skipped_is_one_error_line(video_level_ckpt, tmp_path, capsys):
    from attncluster.data.tfrecord import write_records
    from attncluster.data.yt8m import encode_example

    nan = {"rgb": np.full(1024, np.nan, np.float32), "audio": np.zeros(128, np.float32)}
    write_records(tmp_path / "bad.tfrecord", [encode_example(f"b{i}", [1], nan) for i in range(3)])
    argv = _verb_args("eval", video_level_ckpt, tmp_path / "bad.tfrecord", tmp_path)
    code, lines = _main(capsys, *argv, "-o", "data.skip_corrupt=true")
    assert code == 2 and lines[-1].startswith("error: "), lines
    assert "every record was skipped as damaged (3 skipped" in lines[-1]
    assert all(line.startswith("warning: ") for line in lines[:-1]) and len(lines) == 4, lines
    # Damage found while counting records (an empty file) counts too: still one error line, not a traceback.
    (tmp_path / "empty.tfrecord").write_bytes(b"")
    code, lines = _main(capsys, *_verb_args("eval", video_level_ckpt, tmp_path / "empty.tfrecord", tmp_path),
                        "-o", "data.skip_corrupt=true")
    assert code == 2 and lines[-1].startswith("error: ") and "every record was skipped" in lines[-1], lines


@pytest.mark.parametrize("kind", ["gzip", "zlib"])
def test_compressed_shards_train_eval_and_predict_as_the_plain_ones(video_level_ckpt, tmp_path, capsys, kind):
    import gzip
    import zlib

    plain = _video_level_shard(tmp_path / "v.tfrecord")
    packed = tmp_path / f"v.tfrecord.{kind}"
    packed.write_bytes((gzip.compress if kind == "gzip" else zlib.compress)(plain.read_bytes()))
    a = VideoDataset(str(plain), modalities={"rgb": 1024, "audio": 128}, num_classes=5, seg_num=1, train=True)
    b = VideoDataset(str(packed), modalities={"rgb": 1024, "audio": 128}, num_classes=5, seg_num=1, train=True)
    for x, y in zip(make_loader(a, 3), make_loader(b, 3)):  # random access (training's shuffled reads)
        assert x["id"] == y["id"] and torch.equal(x["rgb"], y["rgb"]) and torch.equal(x["labels"], y["labels"])
    outs = []
    for data in (plain, packed):
        code, lines = _main(capsys, *_verb_args("predict", video_level_ckpt, data, tmp_path))
        assert code == 0, lines
        outs.append((tmp_path / "p.jsonl").read_text())
        code, lines = _main(capsys, *_verb_args("eval", video_level_ckpt, data, tmp_path))
        assert code == 0, lines
    assert outs[0] == outs[1] and outs[0].count("\n") == 4


def test_one_frame_data_under_a_frame_level_config_warns_once_naming_the_config(tmp_path, capsys):
    data = str(_video_level_shard(tmp_path / "v.tfrecord"))
    mods = {"rgb": 1024, "audio": 128}
    ds = VideoDataset([data, data], modalities=mods, num_classes=5, seg_num=100, train=True)
    batches = list(make_loader(ds, 2))
    assert sum(len(b["id"]) for b in batches) == 8
    err = capsys.readouterr().err
    assert err.count("warning: ") == 1, err
    assert "v.tfrecord: record 0 (id 'v000') holds 1 frame, but model.seg_num is 100" in err
    assert "--config youtube8m_video_level" in err
    ds.set_epoch(1)
    list(make_loader(ds, 2))
    assert capsys.readouterr().err == ""  # once, not per epoch
    # The right config (seg_num 1), or frame-level data, says nothing.
    list(make_loader(VideoDataset(data, modalities=mods, num_classes=5, seg_num=1), 2))
    paths, _ = make_pickles(tmp_path, 1, 3)
    list(make_loader(VideoDataset(paths, modalities=MODS, num_classes=C, seg_num=SEG), 2))
    assert capsys.readouterr().err == ""


@pytest.mark.slow  # ~6 s; the dataset-level test above is the fast one
def test_train_on_video_level_shards_with_the_frame_level_config_warns(video_level_ckpt, tmp_path, capsys):
    data = _video_level_shard(tmp_path / "v.tfrecord")
    code, lines = _main(capsys, *_verb_args("train", video_level_ckpt, data, tmp_path), "-o", "model.seg_num=100")
    assert code == 0, lines
    warned = [line for line in lines if "holds 1 frame" in line]
    assert len(warned) == 1 and "--config youtube8m_video_level" in warned[0], lines


def test_the_one_frame_check_reads_record_0_without_counting_or_raising_its_damage_early(tmp_path, capsys):
    """A damaged first record is reported where the epoch reads it (once), not by the one-frame check."""
    data = _video_level_shard(tmp_path / "v.tfrecord", bad_index=0)
    mods = {"rgb": 1024, "audio": 128}
    ds = VideoDataset(str(data), modalities=mods, num_classes=5, seg_num=4, skip_corrupt=True)
    assert [v for b in make_loader(ds, 2) for v in b["id"]] == ["v001", "v002", "v003"]
    err = capsys.readouterr().err
    assert err.count("non-finite") == 1 and "damaged stretch" not in err and ds.stats.corrupt == 1, err
    ds = VideoDataset(str(data), modalities=mods, num_classes=5, seg_num=4)
    assert ds.num_videos == 4  # counting the records does not raise
    with pytest.raises(DataError, match="record 0 at byte offset 0 .*non-finite"):
        list(make_loader(ds, 2))
