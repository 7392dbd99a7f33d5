"""YouTube-8M 2019 segments: the ratings as read, the metric, the per-class heaps, scoring, predict/eval --segments."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from attncluster.config import load_config
from attncluster.data.records import ReadStats
from attncluster.data.tfrecord import TFRecordWriter
from attncluster.data.yt8m import YT8MShard, encode_sequence_example
from attncluster.errors import DataError
from attncluster.inference import compute_loss
from attncluster.model import AttentionCluster
from attncluster.segments import (ClassHeaps, load_segment_classes, read_submission, segment_indices, segment_map,
                                  segment_starts, write_submission)

DIMS = {"rgb": 6, "audio": 3}


def _frames(t: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {m: rng.integers(0, 256, (t, d), dtype=np.uint8) for m, d in DIMS.items()}


def _shard(tmp_path, records, name="s.tfrecord"):
    path = tmp_path / name
    with TFRecordWriter(str(path)) as w:
        for r in records:
            w.write(r)
    return str(path)


# --------------------------------------------------------------------------------------------------------------------
# Reading


def test_ratings_read_back_as_written(tmp_path):
    seg = ([3, 3, 7], [0, 10, 5], [1.0, 0.0, 1.0])
    path = _shard(tmp_path, [encode_sequence_example("ab", [3, 7], _frames(20), segments=seg),
                             encode_sequence_example("cd", None, _frames(12))])  # a test-partition record
    a, b = list(YT8MShard(path, modalities=DIMS, num_classes=10))
    assert a.segments.classes.tolist() == [3, 3, 7] and a.segments.starts.tolist() == [0, 10, 5]
    assert a.segments.scores.tolist() == [1.0, 0.0, 1.0] and a.labels.tolist() == [3, 7]
    assert b.segments is None and b.labels.size == 0


@pytest.mark.parametrize("seg, why", [
    (([1, 2], [0], [1.0]), "different lengths"),
    (([1], [20], [1.0]), "outside the video"),
    (([1], [-5], [1.0]), "negative"),
    (([1], [0], [0.5]), "expected 0 or 1"),
    (([10], [0], [1.0]), "out of range"),
])
def test_malformed_ratings_are_an_error_naming_file_and_record_or_counted(tmp_path, seg, why):
    good = encode_sequence_example("ok", [1], _frames(20), segments=([1], [0], [1.0]))
    path = _shard(tmp_path, [good, encode_sequence_example("bad", [1], _frames(20), segments=seg)])
    with pytest.raises(DataError, match=why) as e:
        list(YT8MShard(path, modalities=DIMS, num_classes=10))
    assert path in str(e.value) and "record 1" in str(e.value)
    stats = ReadStats()
    videos = list(YT8MShard(path, modalities=DIMS, num_classes=10, skip_corrupt=True, stats=stats))
    assert [v.id for v in videos] == ["ok"] and stats.corrupt == 1


def test_start_is_checked_against_the_stored_frames_not_the_max_frames_cap(tmp_path):
    path = _shard(tmp_path, [encode_sequence_example("ab", [1], _frames(20), segments=([1], [15], [1.0]))])
    (v,) = YT8MShard(path, modalities=DIMS, max_frames=10)
    assert v.num_frames == 10 and v.segments.starts.tolist() == [15]


def test_shipped_whitelist_is_the_1000_classes_of_2019():
    classes = load_segment_classes()
    assert classes.size == 1000 and classes.min() >= 0 and classes.max() < 3862
    assert classes[:3].tolist() == [3, 7, 8]  # the file's first ids (header Index)


def test_segment_classes_file_errors(tmp_path):
    bad = tmp_path / "c.csv"
    bad.write_text("Index\n3\nx\n")
    with pytest.raises(DataError, match="line 3"):
        load_segment_classes(bad)
    bad.write_text("3\n4\n")
    with pytest.raises(DataError, match="Index"):
        load_segment_classes(bad)


# --------------------------------------------------------------------------------------------------------------------
# Segments of a video


def test_segments_cover_the_video_and_a_short_last_one_repeats_its_frames():
    assert segment_starts(12).tolist() == [0, 5, 10]
    idx = segment_indices(12, segment_starts(12))
    assert idx[0].tolist() == [0, 1, 2, 3, 4] and idx[1].tolist() == [5, 6, 7, 8, 9]
    assert idx[2].tolist() == [10, 10, 10, 11, 11]  # frames 10, 11 only


# --------------------------------------------------------------------------------------------------------------------
# The metric


def test_segment_map_small_case_by_hand():
    ratings = {("a:0", 1): 1.0, ("a:5", 1): 0.0, ("b:0", 1): 1.0, ("c:0", 1): 1.0,  # class 1: 3 positives
               ("a:0", 2): 0.0,  # class 2: no positive, left out of the mean
               ("b:5", 3): 1.0}  # class 3: 1 positive
    ranked = {1: ["a:5", "x:0", "a:0", "b:0"],  # rated: a:5 (0), a:0 (1), b:0 (1); x:0 unrated, dropped
              2: ["a:0"], 3: ["b:0", "b:5"]}
    value, aps = segment_map(ranked, ratings)
    # class 1: ranks among rated 1:neg 2:pos 3:pos -> (1/2 + 2/3) / 3 positives; class 3: b:0 unrated -> 1/1.
    assert aps == pytest.approx({1: (1 / 2 + 2 / 3) / 3, 3: 1.0})
    assert value == pytest.approx(((1 / 2 + 2 / 3) / 3 + 1.0) / 2)
    # top_n caps before unrated pairs are dropped: the first 2 of class 1 are a:5 (neg) and x:0 (unrated).
    value2, aps2 = segment_map(ranked, ratings, top_n=2)
    assert aps2[1] == 0.0 and aps2[3] == 1.0
    assert segment_map({2: ["a:0"]}, ratings) == (None, {})


def _official_ap_at_n(predictions, actuals, total_num_positives):
    """average_precision_calculator.ap_at_n with n=None, written plainly: sort by score, precision at each hit."""
    order = sorted(range(len(predictions)), key=lambda k: predictions[k], reverse=True)
    if total_num_positives == 0:
        return 0.0
    hits, ap = 0, 0.0
    for i, k in enumerate(order):
        if actuals[k] > 0:
            hits += 1
            ap += hits / (i + 1) / total_num_positives
    return ap


def test_segment_map_equals_a_plain_computation_of_the_official_steps():
    rng = np.random.default_rng(0)
    segs = [f"v{v}:{s}" for v in range(30) for s in range(0, 50, 5)]
    ratings = {}
    for _ in range(400):
        ratings[(segs[rng.integers(len(segs))], int(rng.integers(6)))] = float(rng.integers(2))
    ranked = {c: [segs[i] for i in rng.permutation(len(segs))[:120]] for c in range(6)}
    for top_n in (None, 40):
        positive_counter = {}
        for (_, c), v in ratings.items():
            if v > 0:
                positive_counter[c] = positive_counter.get(c, 0) + 1
        aps = []
        for c in sorted(ranked):
            preds = ranked[c][:top_n] if top_n else ranked[c]
            preds = [p for p in preds if (p, c) in ratings]
            labels = [ratings[(p, c)] for p in preds]
            scores = [x / len(preds) for x in range(len(preds), 0, -1)]
            if positive_counter.get(c, 0) > 0:
                aps.append(_official_ap_at_n(scores, labels, positive_counter[c]))
        value, _ = segment_map(ranked, ratings, top_n)
        assert value == pytest.approx(float(np.mean(aps)), abs=1e-12)


# --------------------------------------------------------------------------------------------------------------------
# Heaps and the submission file


def test_class_heaps_keep_the_best_n_in_order_whatever_the_pushes():
    rng = np.random.default_rng(1)
    m, k, n = 500, 4, 37
    scores = rng.integers(0, 20, (m, k)).astype(np.float64)  # many ties: broken by the lower key
    keys = rng.permutation(m).astype(np.int64)
    ids = [f"id{x}" for x in keys]
    one = ClassHeaps([10, 11, 12, 13], n)
    for lo in range(0, m, 23):
        one.push(scores[lo:lo + 23], keys[lo:lo + 23], ids[lo:lo + 23])
    halves = [ClassHeaps([10, 11, 12, 13], n) for _ in range(2)]
    halves[0].push(scores[: m // 2], keys[: m // 2], ids[: m // 2])
    halves[1].push(scores[m // 2:], keys[m // 2:], ids[m // 2:])
    merged = ClassHeaps([10, 11, 12, 13], n)
    for h in halves:
        merged.merge(h.state())
    for j, c in enumerate([10, 11, 12, 13]):
        expect = [ids[i] for i in np.lexsort((keys, -scores[:, j]))[:n]]
        assert one.lists()[c] == expect and merged.lists()[c] == expect


def test_submission_roundtrip_and_the_official_scripts_pitfalls(tmp_path):
    path = tmp_path / "sub.csv"
    write_submission(str(path), {7: ["Xk3_:5", "ab:0"], 3: ["ab:10"]})
    raw = path.read_bytes()
    assert raw == b"Class,Segments\r\n3,ab:10\r\n7,Xk3_:5 ab:0\r\n"
    # header skipped, the line end not glued to the last id, str ids (not b'...') matched against the ratings
    assert read_submission(str(path)) == {3: ["ab:10"], 7: ["Xk3_:5", "ab:0"]}
    value, _ = segment_map(read_submission(str(path)), {("ab:0", 7): 1.0, ("Xk3_:5", 7): 0.0})
    assert value == pytest.approx(0.5)


# --------------------------------------------------------------------------------------------------------------------
# Scoring and the loss


class _Model:
    """An inference.Predictor over a real AttentionCluster."""

    def __init__(self, seed=0):
        torch.manual_seed(seed)
        self.model = AttentionCluster(DIMS, cluster_nums=2, num_classes=4, drop_rate=0.0, hidden_sizes=(8,)).eval()

    def tensors(self, features):
        from attncluster.data.records import dequantize

        return {m: dequantize(torch.as_tensor(x)) for m, x in features.items()}

    def scores(self, features):
        with torch.no_grad():
            return torch.sigmoid(self.model(self.tensors(features))).numpy()


def test_scorings_against_the_model_run_by_hand():
    from attncluster.segments import score_segments

    p = _Model()
    frames = _frames(12, seed=3)
    starts, s = score_segments(p, frames, "frames")
    assert starts.tolist() == [0, 5, 10] and s.shape == (3, 4)
    last = p.scores({m: x[[10, 10, 10, 11, 11]][None] for m, x in frames.items()})[0]
    np.testing.assert_allclose(s[2], last, rtol=1e-5, atol=1e-6)
    _, v = score_segments(p, frames, "video")
    video = p.scores({m: x[None] for m, x in frames.items()})[0]
    np.testing.assert_allclose(v, np.repeat(video[None], 3, axis=0), rtol=1e-5, atol=1e-6)
    _, b = score_segments(p, frames, "blend")
    np.testing.assert_allclose(b, np.sqrt(s * video[None]), rtol=1e-5, atol=1e-6)
    _, a = score_segments(p, frames, "attention")
    w = p.model.attention_weights(p.tensors({m: x[None] for m, x in frames.items()}))
    mass = sum(x[0].mean(dim=1) for x in w.values()).detach().numpy()
    per = np.array([mass[0:5].sum(), mass[5:10].sum(), mass[10:].sum()])
    np.testing.assert_allclose(a, (per / per.max())[:, None] * video[None], rtol=1e-5, atol=1e-6)


def test_segment_bce_counts_only_rated_pairs():
    logits = torch.tensor([[0.3, -1.0, 2.0], [0.0, 0.5, -0.2]])
    labels = torch.tensor([[1.0, -1.0, 0.0], [-1.0, -1.0, 1.0]])
    bce = lambda x, y: -(y * np.log(1 / (1 + np.exp(-x))) + (1 - y) * np.log(1 - 1 / (1 + np.exp(-x))))  # noqa
    expect = (bce(0.3, 1) + bce(2.0, 0) + bce(-0.2, 1)) / 2
    assert float(compute_loss(logits, labels, "segment_bce")) == pytest.approx(expect, rel=1e-6)


# --------------------------------------------------------------------------------------------------------------------
# End to end: synth --segments, a model, predict / eval --segments, a training sample


@pytest.fixture(scope="module")
def seg_setup(tmp_path_factory):
    from attncluster.data.synth import write_synthetic

    root = tmp_path_factory.mktemp("seg")
    write_synthetic(root / "data", videos=12, classes=4, shards=2, seed=0, rgb_dim=6, audio_dim=3, min_frames=5,
                    max_frames=24, segments=True)
    over = [f"data.train={root / 'data'}", "data.num_workers=0", "model.num_classes=4", "model.seg_num=4",
            "model.cluster_nums=2", "model.hidden_sizes=[8]", "model.feature_dims={rgb: 6, audio: 3}",
            "train.batch_size=4", "eval.batch_size=4"]
    cfg = load_config(None, over)
    (root / "config.yaml").write_text(cfg.to_yaml())
    torch.manual_seed(0)
    torch.save({"model": AttentionCluster(**cfg.model.model_kwargs()).state_dict()}, root / "w.pt")
    return root, cfg


def test_synth_truth_matches_the_ratings(seg_setup):
    root, _ = seg_setup
    truth = {j["id"]: j for j in map(json.loads, (root / "data" / "segments_truth.jsonl").read_text().splitlines())}
    videos = [v for p in sorted((root / "data").glob("*.tfrecord")) for v in YT8MShard(p, modalities=DIMS)]
    assert len(videos) == len(truth) == 12
    for v in videos:
        events = truth[v.id]["events"]
        assert truth[v.id]["frames"] == v.num_frames and sorted({e["class"] for e in events}) == v.labels.tolist()
        assert len(v.segments) > 0
        for c, s, r in zip(v.segments.classes, v.segments.starts, v.segments.scores):
            (e,) = [e for e in events if e["class"] == c] or [None]
            if e is None:  # a decoy class: a hard negative
                assert r == 0.0 and c not in v.labels
                continue
            inside = max(0, min(s + 5, e["end"]) - max(s, e["start"]))
            if r == 0.0:
                assert inside == 0
            else:  # covers 3 frames of the run (all of a shorter run), else the best-covered segment
                best = max(max(0, min(x + 5, e["end"]) - max(x, e["start"])) for x in range(0, truth[v.id]["frames"], 5))
                assert inside >= min(3, e["end"] - e["start"]) or inside == best > 0


def test_predict_segments_writes_the_kaggle_2019_file_and_eval_reports_segment_map(seg_setup, tmp_path):
    from attncluster.evaluate import evaluate
    from attncluster.segments import predict_segments

    root, cfg = seg_setup
    out = tmp_path / "sub.csv"
    n = predict_segments(cfg, str(root / "w.pt"), [str(root / "data")], str(out), top_n=7, scoring="frames",
                         device="cpu", log=lambda m: None)
    assert n == 12
    rows = list(csv.reader(out.open(newline="")))
    assert rows[0] == ["Class", "Segments"] and [r[0] for r in rows[1:]] == ["0", "1", "2", "3"]
    assert all(0 < len(r[1].split()) <= 7 for r in rows[1:])
    metrics = evaluate(cfg, str(root / "w.pt"), data=[str(root / "data")], device="cpu", log=lambda m: None,
                       segments={"top_n": 7, "classes_csv": None, "scoring": "frames"})
    # The same number from the file predict wrote and the ratings in the data.
    from attncluster.segments import rated_pairs

    videos = [v for p in sorted((root / "data").glob("*.tfrecord")) for v in YT8MShard(p, modalities=DIMS)]
    expect, _ = segment_map(read_submission(str(out)), rated_pairs(videos), 7)
    assert metrics["segment_map"] == pytest.approx(expect)
    jl = tmp_path / "seg.jsonl"
    predict_segments(cfg, str(root / "w.pt"), [str(root / "data")], str(jl), scoring="frames", device="cpu",
                     top_k=2, log=lambda m: None)
    first = json.loads(jl.read_text().splitlines()[0])
    assert first["segments"][0]["start"] == 0 and first["segments"][0]["end"] == 5
    assert len(first["segments"][0]["classes"]) == 2


def test_segment_training_sample_is_one_rated_segment_with_masked_targets(seg_setup):
    from attncluster.segments import SegmentDataset

    root, cfg = seg_setup
    ds = SegmentDataset(str(root / "data"), modalities=DIMS, num_classes=4, seg_num=4, train=False,
                        dequantize=False)
    samples = list(ds)
    videos = [v for p in sorted((root / "data").glob("*.tfrecord")) for v in YT8MShard(p, modalities=DIMS)]
    assert len(samples) == 12
    for s, v in zip(samples, videos):
        start = int(np.unique(v.segments.starts)[0])
        idx = segment_indices(v.num_frames, np.array([start]))[0]
        assert np.array_equal(s["rgb"].numpy(), v.features["rgb"][idx])
        expect = np.full(4, -1.0)
        here = v.segments.starts == start
        expect[v.segments.classes[here]] = v.segments.scores[here]
        assert s["labels"].tolist() == expect.tolist()


@pytest.mark.slow
def test_two_ranks_write_the_submission_of_one_process(seg_setup, tmp_path):
    """torchrun: each rank keeps its own heaps, rank 0 merges them (the fast heaps-merge test covers the logic)."""
    from attncluster.segments import predict_segments
    from test_distributed import torchrun

    root, cfg = seg_setup
    one = tmp_path / "one.csv"
    predict_segments(cfg, str(root / "w.pt"), [str(root / "data")], str(one), top_n=9, scoring="blend",
                     device="cpu", log=lambda m: None)
    for name in ("two.csv", "two.jsonl"):
        p = torchrun("predict", "--config", root / "config.yaml", "--weights", root / "w.pt", "--data",
                     root / "data", "--segments", "--top-n", 9, "--segment-scoring", "blend", "--output",
                     tmp_path / name, "--device", "cpu")
        assert p.returncode == 0, p.stderr[-3000:]
    assert (tmp_path / "two.csv").read_bytes() == one.read_bytes()
    rows = [json.loads(line) for line in (tmp_path / "two.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and len({r["id"] for r in rows}) == 12
    assert sorted(x.name for x in tmp_path.iterdir()) == ["one.csv", "two.csv", "two.jsonl"]  # no parts left


def test_fine_tuning_on_ratings_runs_through_the_training_loop_and_lowers_the_rated_loss(seg_setup, tmp_path):
    import dataclasses

    from attncluster.data.dataset import make_loader
    from attncluster.segments import SegmentDataset
    from attncluster.train import fit

    root, cfg = seg_setup
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, loss="segment_bce", epochs=6,
                                                             learning_rate=0.01, valid_interval=0, log_interval=1000))
    ds = SegmentDataset(str(root / "data"), modalities=DIMS, num_classes=4, seg_num=4, train=False, dequantize=True)

    def rated_loss(model):
        model.eval()
        with torch.no_grad():
            batches = list(make_loader(ds, 64))
            return sum(float(compute_loss(model({m: b[m] for m in DIMS}), b["labels"], "segment_bce")) for b in batches)

    model = AttentionCluster(**cfg.model.model_kwargs())
    model.load_state_dict(torch.load(root / "w.pt", weights_only=True)["model"])
    before = rated_loss(model)
    fit(cfg, tmp_path / "run", weights=str(root / "w.pt"), device="cpu", log=lambda m: None)
    from attncluster.inference import load_model

    assert rated_loss(load_model(cfg, str(tmp_path / "run" / "checkpoints" / "last.pt"))) < before


def test_segment_options_and_data_without_ratings_are_clean_errors(seg_setup, tmp_path, capsys):
    from attncluster.cli import main
    from attncluster.data.synth import write_synthetic

    root, _ = seg_setup
    base = ["predict", "--config", str(root / "config.yaml"), "--weights", str(root / "w.pt"), "--data",
            str(root / "data"), "--output", str(tmp_path / "x.csv")]
    assert main(base + ["--top-n", "5"]) == 2
    assert capsys.readouterr().err.strip() == "error: --top-n needs --segments"
    assert main(["predict", "--config", str(root / "config.yaml"), "--weights", str(root / "w.pt"), "--videos",
                 str(tmp_path / "a.mp4"), "--segments"]) == 2
    assert "--segments takes feature shards" in capsys.readouterr().err
    write_synthetic(tmp_path / "plain", videos=3, classes=4, shards=1, seed=0, rgb_dim=6, audio_dim=3, max_frames=8)
    assert main(["eval", "--config", str(root / "config.yaml"), "--weights", str(root / "w.pt"), "--data",
                 str(tmp_path / "plain"), "--segments"]) == 2
    err = capsys.readouterr().err
    assert "carries segment ratings" in err and "Traceback" not in err


def test_class_heaps_memory_is_bounded_by_n_per_class_not_by_the_pushes():
    rng = np.random.default_rng(2)
    heaps = ClassHeaps(list(range(5)), n=10)
    for b in range(200):  # 20,000 segments
        heaps.push(rng.random((100, 5)), np.arange(b * 100, (b + 1) * 100), [f"v{b}:{i}" for i in range(100)])
        held = [sum(a.size for a in heaps._scores[j]) for j in range(5)]
        assert max(held) < 2 * 10 + 100  # at most 2n kept between pushes, plus one push's candidates


def test_the_clis_scoring_choices_are_the_modules():
    from attncluster.cli.common import SEGMENT_SCORINGS
    from attncluster.segments import SCORINGS

    assert SEGMENT_SCORINGS == SCORINGS  # cli/common.py keeps a copy: --help must not import torch


@pytest.mark.parametrize("bad_id", ["a b", "a\tb", "a\nb", ""])
def test_an_id_a_kaggle_2019_row_cannot_hold_is_an_error_naming_file_and_record(seg_setup, tmp_path, bad_id):
    """`<videoId>:<startTime>` entries are separated by spaces: an id with whitespace (or none) would be read back
    as other segments (old code: exit 0, "a b:10" written, read back as "a" and "b:10"). .jsonl keeps any id."""
    from attncluster.segments import predict_segments

    root, cfg = seg_setup
    shard = _shard(tmp_path, [encode_sequence_example("ok01", [1], _frames(12)),
                              encode_sequence_example(bad_id, [1], _frames(12, 1))])
    out = tmp_path / "sub.csv"
    with pytest.raises(DataError) as e:
        predict_segments(cfg, str(root / "w.pt"), [shard], str(out), top_n=3, device="cpu", log=lambda m: None)
    assert f"{shard}: record 1:" in str(e.value) and ".jsonl" in str(e.value)
    assert not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "s.tfrecord"]
    jl = tmp_path / "seg.jsonl"
    assert predict_segments(cfg, str(root / "w.pt"), [shard], str(jl), device="cpu", log=lambda m: None) == 2
    assert json.loads(jl.read_text().splitlines()[1])["id"] == bad_id


def test_a_video_id_twice_in_the_data_is_an_error_not_a_segment_map_above_one(seg_setup, tmp_path):
    """The same shard given twice (old code: eval --segments reported segment MAP 1.33 on data where it reports
    0.69 once; predict wrote each of its segments twice per class)."""
    from attncluster.evaluate import evaluate
    from attncluster.segments import predict_segments

    root, cfg = seg_setup
    data = [str(root / "data" / "train0000.tfrecord")] * 2
    with pytest.raises(DataError, match="ranked twice for class .* occurs more than once in the data"):
        predict_segments(cfg, str(root / "w.pt"), data, str(tmp_path / "sub.csv"), top_n=7, device="cpu",
                         log=lambda m: None)
    assert not (tmp_path / "sub.csv").exists()
    with pytest.raises(DataError, match="occurs more than once in the data"):
        evaluate(cfg, str(root / "w.pt"), data=data, device="cpu", log=lambda m: None,
                 segments={"top_n": 7, "classes_csv": None, "scoring": "frames"})
    # by hand: one positive rating, its segment listed twice, would be AP 2
    with pytest.raises(DataError, match="'a' occurs more than once"):
        segment_map({1: ["a:0", "a:0"]}, {("a:0", 1): 1.0})


def test_a_class_listed_twice_and_top_k_with_the_kaggle_csv_are_errors(tmp_path):
    from attncluster.config import load_config
    from attncluster.errors import ConfigError, DataError
    from attncluster.segments import load_segment_classes, predict_segments

    f = tmp_path / "classes.csv"
    f.write_text("Index\n3\n5\n3\n")
    with pytest.raises(DataError, match=r"line 4: class 3 is listed twice \(first on line 2\)"):
        load_segment_classes(f, 10)
    # --top-k counts classes per segment (.jsonl); the Kaggle 2019 file ranks segments per class (--top-n)
    with pytest.raises(ConfigError, match="--top-k 3: .*applies to .jsonl output"):
        predict_segments(load_config(None), None, [str(tmp_path)], str(tmp_path / "sub.csv"), top_k=3)
    assert not (tmp_path / "sub.csv").exists()


def test_segments_of_one_frame_videos_warn_that_they_need_frame_level_data(tmp_path, capsys):
    from attncluster.cli import main
    from attncluster.data.tfrecord import TFRecordWriter
    from attncluster.data.yt8m import encode_example

    shard = tmp_path / "v.tfrecord"
    with TFRecordWriter(str(shard)) as w:  # video-level records: one mean feature vector per video
        for k in range(3):
            w.write(encode_example(f"v{k}", [k], {"rgb": np.full(1024, 0.1, np.float32),
                                                  "audio": np.zeros(128, np.float32)}))
    cfg = load_config("youtube8m_video_level", ["model.num_classes=5"])
    torch.save({"model": AttentionCluster(**cfg.model.model_kwargs()).state_dict()}, tmp_path / "w.pt")
    assert main(["predict", "--config", "youtube8m_video_level", "-o", "model.num_classes=5", "--weights",
                 str(tmp_path / "w.pt"), "--data", str(shard), "--segments", "--output", str(tmp_path / "s.jsonl"),
                 "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert err.count("holds 1 frame (video-level data?)") == 1, err
