"""The command line, end to end, through real subprocesses."""

import csv
import json
import os
import subprocess
import sys

import pytest

from conftest import TINY_CLASSES, tiny_overrides

COMMANDS = ["train", "eval", "predict", "quickstart", "inspect", "synth", "convert-paddle"]


def run(*args, cwd=None, check=True):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("WORLD_SIZE", None)
    p = subprocess.run([sys.executable, "-m", "attncluster", *map(str, args)], capture_output=True, text=True,
                       cwd=cwd, env=env, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


def overrides(data, **extra):
    out = []
    for o in tiny_overrides(data, **extra):
        out += ["-o", o]
    return out


def assert_one_line_error(p, *needles):
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_documents_every_option(cmd):
    from attncluster.cli import build_parser

    p = run(cmd, "--help")
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[cmd]
    for action in sub._actions:
        for opt in action.option_strings:
            assert opt in p.stdout, f"{cmd} --help does not show {opt}"
        if action.option_strings and action.dest != "help":
            assert action.help, f"{cmd} {action.option_strings} has no help text"


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cli_run")
    p = run("train", "--config", "configs/quickstart.yaml", *overrides(tiny_data), "--run-dir", run_dir,
            "--device", "cpu", cwd=os.path.dirname(os.path.dirname(__file__)))
    assert "epoch 1/2 done" in p.stdout and "valid epoch 1" in p.stdout
    return run_dir


def test_train_eval_predict_end_to_end(trained, tiny_data, tmp_path):
    cfg = trained / "config.yaml"
    best = trained / "checkpoints" / "best.pt"
    p = run("eval", "--config", cfg, "--weights", best, "--output", tmp_path / "m.json")
    metrics = json.loads((tmp_path / "m.json").read_text())
    for key in ("gap", "hit_at_1", "perr", "map", "loss"):
        assert 0 <= metrics[key] or key == "loss"
        assert key in metrics
    assert metrics["num_videos"] == 40
    assert f"GAP {metrics['gap']:.4f}" in p.stdout
    # eval on explicit --data equals eval on data.valid
    run("eval", "--config", cfg, "--weights", best, "--data", tiny_data / "valid", "--output", tmp_path / "m2.json")
    assert json.loads((tmp_path / "m2.json").read_text()) == metrics


def test_predict_csv_is_kaggle_format(trained, tiny_data, tmp_path):
    out = tmp_path / "sub.csv"
    run("predict", "--config", trained / "config.yaml", "--weights", trained / "checkpoints" / "last.pt",
        "--data", tiny_data / "valid", "--output", out, "--top-k", 3)
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["VideoId", "LabelConfidencePairs"]
    assert len(rows) == 41
    for vid, pairs in rows[1:]:
        tokens = pairs.split(" ")
        assert len(tokens) == 6
        classes, scores = [int(t) for t in tokens[0::2]], [float(t) for t in tokens[1::2]]
        assert all(0 <= c < TINY_CLASSES for c in classes) and len(set(classes)) == 3
        assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)


def test_predict_jsonl_with_vocabulary_names(trained, tiny_data, tmp_path):
    out = tmp_path / "pred.jsonl"
    vocab = tiny_data / "valid" / "vocabulary.csv"
    names = {int(r["Index"]): r["Name"] for r in csv.DictReader(vocab.open())}
    run("predict", "--config", trained / "config.yaml", "--weights", trained / "checkpoints" / "last.pt",
        "--data", tiny_data / "valid", "--output", out, "--top-k", 2, "--vocab", vocab)
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == 40 and len({r["id"] for r in recs}) == 40
    for r in recs:
        assert r["names"] == [names[c] for c in r["classes"]]
        assert r["scores"] == sorted(r["scores"], reverse=True)


def test_csv_and_jsonl_agree(trained, tiny_data, tmp_path):
    args = ["--config", trained / "config.yaml", "--weights", trained / "checkpoints" / "last.pt",
            "--data", tiny_data / "valid", "--top-k", 3]
    run("predict", *args, "--output", tmp_path / "a.csv")
    run("predict", *args, "--output", tmp_path / "a.jsonl")
    rows = list(csv.reader((tmp_path / "a.csv").open()))[1:]
    recs = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    for (vid, pairs), r in zip(rows, recs):
        assert vid == r["id"]
        assert [int(t) for t in pairs.split(" ")[0::2]] == r["classes"]


def test_error_missing_data_glob(tmp_path):
    p = run("train", "--config", "configs/quickstart.yaml", "-o", f"data.train={tmp_path}/nothing/*.tfrecord",
            "--run-dir", tmp_path / "r", "--device", "cpu", check=False,
            cwd=os.path.dirname(os.path.dirname(__file__)))
    assert_one_line_error(p, "nothing/*.tfrecord", "matches no files")


def test_error_bad_override_key(tmp_path):
    p = run("train", "--config", "configs/quickstart.yaml", "-o", "train.learning_rat=0.1", check=False,
            cwd=os.path.dirname(os.path.dirname(__file__)))
    assert_one_line_error(p, "train.learning_rat", "did you mean 'train.learning_rate'")


def test_error_checkpoint_from_incompatible_config(trained, tiny_data):
    p = run("eval", "--config", trained / "config.yaml", "-o", "model.num_classes=9",
            "--weights", trained / "checkpoints" / "last.pt", check=False)
    assert_one_line_error(p, "last.pt", "does not match the config's model", "logits.weight")


def test_error_vocabulary_does_not_cover_classes(trained, tiny_data, tmp_path):
    vocab = tmp_path / "vocab.csv"
    vocab.write_text("Index,TrainVideoCount,KnowledgeGraphId,Name\n0,1,/m/0,a\n1,1,/m/1,b\n")
    p = run("predict", "--config", trained / "config.yaml", "--weights", trained / "checkpoints" / "last.pt",
            "--data", tiny_data / "valid", "--output", tmp_path / "p.jsonl", "--vocab", vocab, check=False)
    assert_one_line_error(p, "vocab.csv", f"covers 2 of {TINY_CLASSES} classes")
    assert not (tmp_path / "p.jsonl").exists()


def test_error_missing_weights_and_config(tmp_path):
    assert_one_line_error(run("eval", "--config", tmp_path / "none.yaml", "--weights", "x.pt", check=False),
                          "none.yaml", "not found")


def test_finetune_through_cli_names_reinitialised_layers(trained, tiny_data, tmp_path):
    p = run("train", "--config", trained / "config.yaml", "-o", "model.num_classes=7", "-o", "train.epochs=1",
            "-o", "train.valid_interval=0", "--weights", trained / "checkpoints" / "last.pt",
            "--run-dir", tmp_path / "ft", "--device", "cpu", check=False)
    # synthetic labels are < 5, so they fit 7 classes
    assert p.returncode == 0, p.stderr
    assert "re-initialised logits.weight" in p.stdout and "re-initialised logits.bias" in p.stdout


def test_convert_paddle_command(tmp_path):
    import pickle

    import numpy as np
    import torch

    from attncluster.checkpoint import load_weights
    from attncluster.model import AttentionCluster
    from test_paddle import CLASSES, CLUSTERS, DIMS, HIDDEN, inputs, paddle_infer, paddle_params, run_torch

    params = paddle_params()
    src = tmp_path / "AttentionCluster.pdparams"
    src.write_bytes(pickle.dumps(params, protocol=2))
    run("convert-paddle", src, "--output", tmp_path / "m.pt", "--feature-dims", "rgb:16,audio:8")
    model = AttentionCluster(feature_dims=DIMS, cluster_nums=CLUSTERS, num_classes=CLASSES, hidden_sizes=HIDDEN)
    load_weights(model, tmp_path / "m.pt")
    np.testing.assert_allclose(run_torch(model, inputs()), paddle_infer(params, inputs()), atol=1e-5)
    assert torch.load(tmp_path / "m.pt", weights_only=False)["source"] == "paddle"
    # the default reference dims do not fit these small weights: one line naming the mis-shaped tensors
    assert_one_line_error(run("convert-paddle", src, "--output", tmp_path / "x.pt", check=False),
                          "mis-shaped", "satt0.conv.weight")
