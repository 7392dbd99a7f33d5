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
