"""The quickstart, as a new user runs it: one command, no download, real learning."""

import json
import os
import subprocess
import sys


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
    assert "attncluster eval --config" in out and "attncluster predict --config" in out


def test_a_quickstart_rerun_replaces_the_previous_run(tmp_path):
    """A second quickstart in the same folder starts clean: no stale shard is trained on, no old checkpoint or
    metrics record survives; a folder holding someone else's data is refused, not emptied."""
    import pytest

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
