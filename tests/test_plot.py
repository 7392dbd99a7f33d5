"""plot: curves from a real training run's metrics.jsonl, a run still being written, resumed runs, bad input."""

import json

import numpy as np
import pytest

from attncluster.cli import main
from attncluster.config import load_config
from attncluster.errors import DataError
from attncluster.plot import plot_runs, read_metrics, runs_figure
from attncluster.train import fit
from conftest import tiny_overrides

quiet = lambda msg: None  # noqa: E731


@pytest.fixture(scope="module")
def run_dir(tiny_data, tmp_path_factory):
    """A real 2-epoch training run: train records every 2 steps, validation every epoch."""
    run = tmp_path_factory.mktemp("plot_run")
    fit(load_config(None, tiny_overrides(tiny_data)), run_dir=run, device="cpu", log=quiet)
    return run


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _lines(fig, ylabel_start):
    ax = next(a for a in fig.axes if a.get_ylabel().startswith(ylabel_start))
    return {line.get_label(): (line.get_xdata(), line.get_ydata()) for line in ax.get_lines()}


def test_curves_hold_the_runs_train_and_validation_records(run_dir):
    recs = _records(run_dir / "metrics.jsonl")
    train = [r for r in recs if r["type"] == "train"]
    valid = [r for r in recs if r["type"] == "valid"]
    assert len(train) >= 4 and len(valid) == 2
    fig = runs_figure([read_metrics(run_dir, "tiny")])
    loss = _lines(fig, "loss")
    assert np.array_equal(loss["tiny (train batches)"][0], [r["step"] for r in train])
    assert np.allclose(loss["tiny (train batches)"][1], [r["loss"] for r in train])
    assert np.allclose(loss["tiny (validation)"][1], [r["loss"] for r in valid])
    gap = _lines(fig, "GAP")
    assert np.array_equal(gap["tiny (validation)"][0], [r["step"] for r in valid])
    assert np.allclose(gap["tiny (validation)"][1], [r["gap"] for r in valid])
    assert np.allclose(_lines(fig, "Hit@1")["tiny (train batches)"][1], [r["hit_at_1"] for r in train])
    assert np.allclose(_lines(fig, "learning rate")["tiny (train batches)"][1], [r["lr"] for r in train])
    assert {ax.get_xlabel() for ax in fig.axes if ax.get_xlabel()} == {"step (optimizer updates)"}


def test_run_in_progress_and_two_runs_overlaid_from_the_cli(run_dir, tmp_path, capsys):
    text = (run_dir / "metrics.jsonl").read_text()
    cut = text.rindex("\n", 0, len(text) - 1) + 25  # halfway into the last record: still being written
    live = tmp_path / "live"
    live.mkdir()
    (live / "metrics.jsonl").write_text(text[:cut])
    run = read_metrics(live)
    complete = _records(run_dir / "metrics.jsonl")[:-1]
    assert run.partial_tail and len(run.train) + len(run.valid) == len(complete)
    out = tmp_path / "runs.png"
    assert main(["plot", str(run_dir), str(live), "--output", str(out), "--label", "done", "--label", "live"]) == 0
    assert out.stat().st_size > 20_000
    assert "plot: 2 runs" in capsys.readouterr().out


def test_resumed_run_replaces_relogged_steps_and_single_label_uses_top1(tmp_path, capsys):
    rows = [{"type": "train", "step": s, "loss": l, "top_1": a, "top_5": b, "lr": 0.1}
            for s, l, a, b in [(2, 3.0, 0.1, 0.5), (4, 2.0, 0.2, 0.6), (6, 1.5, 0.3, 0.7)]]
    rows += [{"type": "valid", "step": 4, "loss": 2.2, "top_1": 0.25, "top_5": 0.65}]
    rows += [{"type": "train", "step": 4, "loss": 1.9, "top_1": 0.22, "top_5": 0.61, "lr": 0.1}]  # resumed at 2
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:4]) + "\nnot json\n"
                                            + json.dumps(rows[4]) + "\n")
    run = read_metrics(tmp_path)
    assert "line 5: skipped a damaged record" in capsys.readouterr().err and run.skipped == 1
    assert [(r["step"], r["loss"]) for r in run.train] == [(2, 3.0), (4, 1.9)]
    assert not run.multi_label
    top1 = _lines(runs_figure([run]), "GAP")
    label = f"{run.label} (train batches)"
    assert np.allclose(top1[label][1], [0.1, 0.22])


def test_bad_runs_are_one_error_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    (tmp_path / "nometrics").mkdir()
    for bad, expect in [("nometrics", "no metrics.jsonl"), ("absent", "no such folder"), ("empty", "no training")]:
        assert main(["plot", str(tmp_path / bad), "--output", str(tmp_path / "x.png")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and bad in err and expect in err, err
    with pytest.raises(DataError):
        plot_runs([tmp_path / "nometrics"], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
