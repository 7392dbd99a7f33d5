"""The quickstart, as a new user runs it: one command, no download, real learning."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from attncluster.config import load_config
from attncluster.data.records import dequantize
from attncluster.data.synth import class_prototypes, write_synthetic
from attncluster.data.yt8m import quantize
from attncluster.model import AttentionCluster
from attncluster.quickstart import quickstart_config_path, signal_attention, synthetic_signal_frames
from attncluster.train import fit

quiet = lambda msg: None  # noqa: E731


@pytest.mark.slow  # the quickstart as shipped: 19 s idle; the default run learns in test_train.py (GAP > 0.8 in seconds)
def test_quickstart_trains_evaluates_predicts_and_beats_mean_pooling(tmp_path):
    run_dir = tmp_path / "qs"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    p = subprocess.run([sys.executable, "-m", "attncluster", "quickstart", "--run-dir", str(run_dir), "--device", "cpu"],
                       capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["gap"] >= 0.90, summary          # the bar for real learning
    assert summary["mean_pooling_gap"] < 0.70, summary  # averaging frames cannot separate labels from decoys
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["gap"] == summary["gap"] and metrics["num_videos"] == 500
    preds = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 500 and all(len(r["names"]) == 3 for r in preds)
    for path in ["train/checkpoints/best.pt", "train/checkpoints/last.pt", "train/config.yaml", "train/metrics.jsonl",
                 "data/train/vocabulary.csv"]:
        assert (run_dir / path).exists(), path
    out = p.stdout
    assert "Mean pooling" in out and f"GAP {summary['gap']:.4f}" in out
    # the printed next steps run as printed (the checkpoint carries its config: no --config needed)
    import shlex

    from attncluster.cli import main

    hints = [line.split("#")[0].strip() for line in out.splitlines()
             if line.strip().startswith(("attncluster eval --weights", "attncluster predict --weights"))]
    assert len(hints) == 2, out
    for hint in hints:
        assert main(shlex.split(hint)[1:]) == 0, hint
    assert (run_dir / "submission.csv").exists()


def test_a_quickstart_rerun_replaces_the_previous_run(tmp_path):
    """A second quickstart in the same folder starts clean: no stale shard is trained on, no old checkpoint or
    metrics record survives; a folder holding someone else's data is refused, not emptied."""
    from attncluster.errors import ConfigError
    from attncluster.quickstart import quickstart

    small = dict(train_videos=48, valid_videos=16, device="cpu", log=lambda m: None,
                 overrides=["train.epochs=2", "train.batch_size=16", "model.seg_num=4", "model.hidden_sizes=[8]",
                            "model.cluster_nums=1", "data.num_workers=0", "train.valid_interval=1"])
    run = tmp_path / "qs"
    quickstart(run, **small)
    stale_shard = run / "data" / "train" / "train9999.tfrecord"
    stale_shard.write_bytes((run / "data" / "train" / "train0000.tfrecord").read_bytes())
    (run / "train" / "checkpoints" / "epoch_009.pt").write_bytes(b"old")
    quickstart(run, **{**small, "overrides": small["overrides"] + ["train.epochs=1"]})
    assert not stale_shard.exists()
    assert sorted(p.name for p in (run / "train" / "checkpoints").iterdir()) == ["best.pt", "epoch_001.pt", "last.pt"]
    records = [json.loads(line) for line in (run / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["type"] == "valid"] == [1]
    assert json.loads((run / "metrics.json").read_text())["num_videos"] == 16

    other = tmp_path / "mine"
    (other / "data").mkdir(parents=True)
    (other / "data" / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not written by a quickstart"):
        quickstart(other, **small)
    assert (other / "data" / "precious.txt").read_text() == "keep me"


# --- evidence (quickstart.py): the attention goes where the signal is -----------------------------------------------------------


def test_signal_frames_found_from_the_prototypes():
    """A hand-built synthetic video: label 2's conjunction on frames 3-5, class 4's decoy p on 7-8 and q on 0-1."""
    dims = {"rgb": 1024}
    p, q = class_prototypes(6, dims)["rgb"]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((12, 1024)).astype(np.float32) * 0.5
    x[3:6] += p[2] + q[2]
    x[7:9] += p[4]
    x[0:2] += q[4]
    rgb = dequantize(quantize(x))
    assert np.flatnonzero(synthetic_signal_frames(rgb, [2], 6)).tolist() == [3, 4, 5]
    assert not synthetic_signal_frames(rgb, [4], 6).any()  # a decoy's p and q frames are apart: no signal


@pytest.mark.slow  # trains on 1000 videos (over 10 s idle); signal_attention's frames are checked by hand above
def test_trained_quickstart_model_attends_to_the_signal_frames(tmp_path):
    """The quickstart model, trained briefly (1000 videos, 5 epochs, seconds), puts clearly more attention mass on
    the frames that carry its videos' labels than those frames' share; an untrained one does not."""
    write_synthetic(tmp_path / "train", videos=1000, classes=20, shards=2, seed=0, max_frames=60)
    write_synthetic(tmp_path / "valid", videos=100, classes=20, shards=1, seed=1, max_frames=60, prefix="validate")
    cfg = load_config(quickstart_config_path(), [f"data.train={tmp_path / 'train'}", "train.epochs=5",
                                                 "train.valid_interval=0"])
    fit(cfg, run_dir=tmp_path / "run", device="cpu", log=quiet)
    trained = signal_attention(cfg, str(tmp_path / "run" / "checkpoints" / "last.pt"), [str(tmp_path / "valid")],
                               device="cpu")
    torch.manual_seed(0)
    torch.save({"model": AttentionCluster(**cfg.model.model_kwargs()).state_dict()}, tmp_path / "untrained.pt")
    untrained = signal_attention(cfg, str(tmp_path / "untrained.pt"), [str(tmp_path / "valid")], device="cpu")
    assert trained["videos"] == 100 and 0.2 < trained["signal_share"] < 0.5
    assert trained["signal_mass"] > 1.5 * trained["signal_share"], trained
    assert untrained["signal_mass"] < 1.2 * untrained["signal_share"], untrained
