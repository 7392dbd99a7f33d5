"""predict.py: the output file (Kaggle CSV and JSONL through the one writer), predict --videos, a full disk, and
the leftovers of a killed run."""

from __future__ import annotations

import csv
import json
from fractions import Fraction

import numpy as np
import pytest
import torch

from attncluster.cli import main
from attncluster.config import load_config
from attncluster.model import AttentionCluster
from attncluster.outputs import atomic_output
from conftest import tiny_overrides
from test_outputs import HOSTILE_IDS, file_size_limit

quiet = lambda msg: None  # noqa: E731


@pytest.fixture(scope="module")
def model(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    cfg = load_config(None, tiny_overrides(tiny_data))
    (root / "config.yaml").write_text(cfg.to_yaml())
    torch.manual_seed(3)
    torch.save({"model": AttentionCluster(**cfg.model.model_kwargs()).state_dict()}, root / "w.pt")
    return root, cfg


def args(model, tiny_data, output) -> list[str]:
    root, _ = model
    return ["predict", "--config", str(root / "config.yaml"), "--weights", str(root / "w.pt"), "--data",
            str(tiny_data / "valid"), "--output", str(output), "--top-k", "3", "--device", "cpu"]


# --- a full disk names the output, and leaves nothing behind ----------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_full_disk_is_one_error_line_naming_the_output(model, tiny_data, tmp_path, capsys, suffix):
    out = tmp_path / f"p{suffix}"
    with file_size_limit(300):  # 40 videos of about 60 bytes each: the part file passes 300 bytes
        assert main(args(model, tiny_data, out)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out}: cannot write: ") and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []  # no part, no temporary file, no output


def test_stale_parts_and_temporaries_of_a_killed_run_are_removed_at_the_next_start(model, tiny_data, tmp_path,
                                                                                   capsys):
    out = tmp_path / "p.csv"
    stale = [tmp_path / ".p.csv.0123456789ab.part0of1", tmp_path / ".p.csv.0123456789ab.part1of2",
             tmp_path / ".p.csv.x8y7z6.tmp"]
    kept = [tmp_path / ".p.csv.mine", tmp_path / "p.csv.bak"]
    for p in stale + kept:
        p.write_text("debris")
    assert main(args(model, tiny_data, out)) == 0
    assert sorted(tmp_path.iterdir()) == sorted([out, *kept])
    rows = list(csv.reader(open(out, newline="")))
    assert rows[0] == ["VideoId", "LabelConfidencePairs"] and len(rows) == 41


def test_a_live_writers_part_is_not_removed(model, tiny_data, tmp_path, capsys):
    """Two runs to one output at once: the second start must not delete the first one's file in progress."""
    out = tmp_path / "p.jsonl"
    with atomic_output(out) as first:
        assert main(args(model, tiny_data, out)) == 0
        first.write("the first run's rows\n")
    assert out.read_text() == "the first run's rows\n"  # the first run's temporary file was kept and renamed


# --- predict --videos -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def video_model(tmp_path_factory):
    pytest.importorskip("av")
    from safetensors.torch import save_file

    from extract_videos import make_video

    root = tmp_path_factory.mktemp("predict_videos")
    clips = root / "clips"
    clips.mkdir()
    hostile = 'a,b "quoted"\rcr'
    make_video(clips / f"{hostile}.mp4", 30, Fraction(10))
    make_video(clips / "plain.mp4", 20, Fraction(10))
    cfg = load_config(None, ["model.feature_dims={rgb: 1024, audio: 128}", "model.num_classes=5", "model.seg_num=3",
                             "model.cluster_nums=2", "model.hidden_sizes=[8]", "data.num_workers=0"])
    torch.manual_seed(0)
    save_file(AttentionCluster(**cfg.model.model_kwargs()).state_dict(), str(root / "m.safetensors"))
    return root, cfg, [str(clips / f"{hostile}.mp4"), str(clips / "plain.mp4")], hostile


def predict_videos(video_model, output):
    from extract_videos import TinyPipeline

    from attncluster.extract.pipeline import Extractor
    from attncluster.predict import predict_videos as run

    root, cfg, clips, _ = video_model
    return run(cfg, str(root / "m.safetensors"), clips, output=None if output is None else str(output), top_k=3,
               extractor=Extractor(TinyPipeline(), num_workers=0))


def test_predict_videos_csv_quotes_hostile_ids_and_round_trips(video_model, tmp_path, capsys):
    """A file name holding a comma, quotes and a CR is the video id: the CSV must give it back exactly."""
    _, _, _, hostile = video_model
    out = tmp_path / "v.csv"
    records = predict_videos(video_model, out)
    data = out.read_bytes()
    assert data.startswith(b"VideoId,LabelConfidencePairs\r\n")
    rows = list(csv.reader(open(out, newline="", encoding="utf-8")))
    assert [r[0] for r in rows[1:]] == [hostile, "plain"] and all(len(r) == 2 for r in rows)
    for row, rec in zip(rows[1:], records):
        pairs = row[1].split()
        assert [int(c) for c in pairs[::2]] == rec["classes"]
        np.testing.assert_allclose([float(p) for p in pairs[1::2]], rec["scores"], atol=5e-7)
    assert [p.name for p in tmp_path.iterdir()] == ["v.csv"]


def test_predict_videos_jsonl_and_stdout_agree(video_model, tmp_path, capsys):
    _, _, _, hostile = video_model
    out = tmp_path / "v.jsonl"
    predict_videos(video_model, out)
    written = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    capsys.readouterr()
    predict_videos(video_model, None)
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert written == printed and [r["id"] for r in written] == [hostile, "plain"]


def test_predict_videos_never_follows_a_symlink_planted_at_the_old_temporary_name(video_model, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "v.csv"
    (tmp_path / "v.csv.tmp").symlink_to(victim)  # the fixed name predict --videos wrote through before
    predict_videos(video_model, out)
    assert victim.read_text() == "precious"
    assert (tmp_path / "v.csv.tmp").is_symlink()  # not ours: left alone
    assert list(csv.reader(open(out, newline="")))[0] == ["VideoId", "LabelConfidencePairs"]


def test_classify_videos_is_in_predict_and_exported_at_the_top():
    import attncluster
    from attncluster.predict import classify_videos

    assert attncluster.classify_videos is classify_videos
