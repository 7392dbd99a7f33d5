"""rundir.py: the run directory's lock, its overwrite / resume rules, metrics.jsonl truncation, checkpoint files."""

import json
import os

import pytest
import torch

from attncluster.config import load_config
from attncluster.errors import ConfigError
from attncluster.rundir import RunDirectory, checkpoint_name, prune_checkpoints, truncate_metrics
from attncluster.weights import load_checkpoint


def test_a_second_owner_is_refused_until_the_first_closes(tmp_path):
    first = RunDirectory.open(tmp_path / "run")
    assert (tmp_path / "run" / ".lock").read_text() == f"{os.getpid()}\n"
    with pytest.raises(ConfigError, match=rf"another training \(pid {os.getpid()}\) is using this run directory"):
        RunDirectory.open(tmp_path / "run")
    first.close()
    RunDirectory.open(tmp_path / "run").close()


def test_a_used_directory_needs_resume_or_overwrite(tmp_path):
    run = RunDirectory.open(tmp_path)
    run.start(load_config(None, []))
    (tmp_path / "metrics.jsonl").write_text('{"type": "train", "step": 1}\n')
    (tmp_path / "checkpoints" / "epoch_001.pt").write_bytes(b"x")
    run.close()
    with pytest.raises(ConfigError, match=r"already holds a run \(config.yaml, metrics.jsonl, checkpoints\); replace "
                                          "it with --overwrite"):
        RunDirectory.open(tmp_path)
    RunDirectory.open(tmp_path, resume=True).close()
    assert (tmp_path / "metrics.jsonl").exists()
    (tmp_path / "notes.txt").write_text("mine")
    RunDirectory.open(tmp_path, overwrite=True).close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "notes.txt"]  # only what a run writes goes


def test_a_failed_start_removes_only_a_directory_it_created(tmp_path):
    RunDirectory.open(tmp_path / "new").discard()
    assert not (tmp_path / "new").exists()
    RunDirectory.open(tmp_path).discard()
    assert tmp_path.is_dir()


def test_truncate_metrics_drops_records_after_the_step_and_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [{"type": "train", "step": s} for s in (2, 4, 6)] + [{"type": "valid", "step": 6}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"type": "tra')
    assert truncate_metrics(path, 4) == 3
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [2, 4]
    assert truncate_metrics(path, 4) == 0 and truncate_metrics(tmp_path / "absent.jsonl", 4) == 0


def test_checkpoints_are_named_in_training_order_and_pruned_oldest_first(tmp_path):
    names = [checkpoint_name(1, 6, False), checkpoint_name(1, 8, True), checkpoint_name(2, 12, False),
             checkpoint_name(2, 16, True)]
    assert names == ["epoch_001.pt", "epoch_002_step_00000008.pt", "epoch_002.pt", "epoch_003_step_00000016.pt"]
    for n in names + ["best.pt", "last.pt"]:
        (tmp_path / n).write_bytes(b"x")
    removed = prune_checkpoints(tmp_path, 2)
    assert sorted(p.name for p in removed) == ["epoch_001.pt", "epoch_002_step_00000008.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "epoch_002.pt", "epoch_003_step_00000016.pt",
                                                          "last.pt"]


def test_save_links_last_and_best_and_cleans_stale_temporaries(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    stale = tmp_path / "checkpoints" / ".epoch_009.pt.x1y2.tmp"  # what a kill -9 during a write leaves
    stale.write_bytes(b"half")
    run = RunDirectory.open(tmp_path, resume=True)
    assert not stale.exists()
    run.start(load_config(None, []))
    for epoch in (1, 2):
        run.save({"model": {"w": torch.full((2,), float(epoch))}, "epoch": epoch}, epoch, epoch * 6, mid_epoch=False,
                 is_best=epoch == 1, keep=1)
    run.close()
    ck = tmp_path / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["best.pt", "epoch_002.pt", "last.pt"]
    assert load_checkpoint(ck / "best.pt")["epoch"] == 1 and load_checkpoint(ck / "last.pt")["epoch"] == 2
    assert load_config(tmp_path / "config.yaml") == load_config(None, [])
