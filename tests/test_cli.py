"""The command line, end to end: in-process through ``cli.main`` (the code the console script runs), and a real
subprocess where the process itself is under test (a file-size limit: exit status 2 and one line). Signals and
start-up are tested in test_cli_start.py, ranks in test_distributed.py."""

import contextlib
import csv
import io
import json
import os
import subprocess
import sys

import pytest
from pathlib import Path

from conftest import TINY_CLASSES, tiny_overrides

EXPECTED_COMMANDS = {"train", "eval", "predict", "quickstart", "inspect", "synth", "convert-paddle", "extract", "export",
                     "serve", "explain", "plot", "watch"}


def _commands() -> list[str]:
    from attncluster.cli import build_parser

    return sorted(next(a for a in build_parser()._actions if a.dest == "command").choices)


COMMANDS = _commands()  # every verb the parser has: a new one is covered by the --help test without a list edit


def test_the_verbs_are_the_documented_ones():
    assert set(COMMANDS) == EXPECTED_COMMANDS
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for cmd in COMMANDS:  # the README's command table names each one
        assert f"| `attncluster {cmd}" in readme, cmd


def run(*args, cwd=None, check=True):
    """``attncluster ARGS`` in this process, as ``python -m attncluster`` runs it (``cli.main``), with its exit status
    and its stdout/stderr text; a second or more faster per call than a subprocess, which pays the torch import."""
    from attncluster.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd or os.getcwd()), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # --help, and argparse's own usage errors
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    p = subprocess.CompletedProcess(["attncluster", *map(str, args)], code, out.getvalue(), err.getvalue())
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
    lines = [line for line in p.stdout.splitlines() if line.startswith("fine-tune:")]
    # 2 modalities x (score.weight, score.bias, shift_w, shift_b) + hidden.0 (weight, bias) + logits (weight, bias)
    assert len(lines) == 1 and "loaded 10 of 12 tensors" in lines[0], p.stdout
    assert "re-initialised 2: logits.weight (checkpoint (5, 16) vs (7, 16)), logits.bias (checkpoint (5,) vs (7,))" in lines[0]


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


# --------------------------------------------------------------------------------------------------------------
# In-process runs of cli.main: the same code path as the console script, a second faster per case.

def main_lines(capsys, *argv):
    """(exit status, stderr lines) of one in-process ``attncluster`` run."""
    from attncluster.cli import main

    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip()]


def assert_main_error(code, lines, *needles):
    assert code == 2, (code, lines)
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert all(ch.isprintable() for ch in lines[0]), repr(lines[0])
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_data, tmp_path_factory):
    """A config matching tiny_overrides and a freshly initialised checkpoint of its model (no training needed)."""
    import torch

    from attncluster.checkpoint import atomic_save
    from attncluster.config import load_config
    from attncluster.model import AttentionCluster

    root = tmp_path_factory.mktemp("tiny_ckpt")
    cfg = load_config(None, tiny_overrides(tiny_data))
    (root / "config.yaml").write_text(cfg.to_yaml())
    torch.manual_seed(0)
    atomic_save({"model": AttentionCluster(**cfg.model.model_kwargs()).state_dict()}, root / "model.pt")
    return root


class _Planted:
    """Unpickling this runs ``open(marker, 'w')``: what a malicious checkpoint does with weights_only=False."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("verb", ["train --resume", "train --weights", "eval", "predict", "train --resume pdparams"])
def test_a_crafted_checkpoint_never_runs_code(verb, tiny_ckpt, tiny_data, tmp_path, capsys):
    import pickle

    import torch

    marker = tmp_path / "side-effect"
    if verb.endswith("pdparams"):
        evil = tmp_path / "evil.pdparams"
        evil.write_bytes(pickle.dumps({"fc1.weights": _Planted(marker)}))
    else:
        evil = tmp_path / "evil.pt"
        torch.save({"model": {}, "epoch": 1, "payload": _Planted(marker)}, evil)
    cfg = tiny_ckpt / "config.yaml"
    if verb.startswith("train"):
        flag = verb.split()[1]
        argv = ["train", "--config", cfg, flag, evil, "--run-dir", tmp_path / "run", "--device", "cpu"]
    elif verb == "eval":
        argv = ["eval", "--config", cfg, "--weights", evil, "--device", "cpu"]
    else:
        argv = ["predict", "--config", cfg, "--weights", evil, "--data", tiny_data / "valid", "--output",
                tmp_path / "p.csv", "--device", "cpu"]
    code, lines = main_lines(capsys, *argv)
    assert not marker.exists(), "unpickling the file ran its code"
    assert_main_error(code, lines, str(evil))
    if verb.endswith("pdparams"):
        assert "not a training checkpoint" in lines[0]
    else:
        assert "refusing to load" in lines[0] and "exec" in lines[0]


def test_hostile_bytes_from_a_file_are_escaped_and_capped(tmp_path, capsys):
    """A .list file's line is quoted in the error: its control characters come out escaped, 3 KB come out capped."""
    from attncluster.errors import MAX_MESSAGE

    hostile = "\x1b[2J\x1b[31mfake\x07\x7f\x9b\u202eerror: forged" + "A" * 3000  # clear screen, colour, bell, DEL, CSI, RLO
    lst = tmp_path / "shards.list"
    lst.write_text(hostile + "\n")
    code, lines = main_lines(capsys, "inspect", lst)
    assert_main_error(code, lines, "\\x1b[2J\\x1b[31mfake\\x07\\x7f\\x9b\\u202eerror: forged")
    assert not any(c in lines[0] for c in "\x1b\x07\x7f\x9b\u202e")
    assert len(lines[0]) <= len("error: ") + MAX_MESSAGE + len("... (9999 more characters)")
    assert lines[0].endswith("more characters)")


def test_every_error_line_escapes_nul_and_cr(capsys):
    """The one mechanism: whatever an error holds, cli.main prints it escaped on one line."""
    from attncluster.cli import user_message
    from attncluster.errors import DataError

    assert user_message(DataError("f.tfrecord: id 'a\x00b\rc\nd\x1b[0m'")) == "f.tfrecord: id 'a\\x00b\\rc d\\x1b[0m'"
    wrapped = DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                        "  File x\nattncluster.errors.DataError: bad \x1b[31m")
    assert user_message(wrapped) == "bad \\x1b[31m"
    assert user_message(OSError(28, "No space left on device", "/data/out.csv")) == "/data/out.csv: No space left on device"


def test_worker_errors_print_plain_error_lines(tiny_data, tmp_path, capsys):
    """A framing error raised in a DataLoader worker prints as ``error: path: ...``, not with a class name."""
    import shutil

    from attncluster.data.tfrecord import RecordFramingError  # noqa: F401  (the class that used to leak)

    bad = tmp_path / "bad"
    bad.mkdir()
    shard = bad / "train0000.tfrecord"
    shutil.copy(sorted((tiny_data / "train").glob("*.tfrecord"))[0], shard)
    data = bytearray(shard.read_bytes())
    data[8] ^= 0xFF  # the first record's length CRC
    shard.write_bytes(bytes(data))
    code, lines = main_lines(capsys, "train", "--config", "configs/quickstart.yaml",
                             *overrides(tiny_data, **{"data.train": bad, "data.num_workers": 1, "train.epochs": 1,
                                                      "train.valid_interval": 0}),
                             "--run-dir", tmp_path / "run", "--device", "cpu")
    assert_main_error(code, lines, str(shard))
    assert "Error:" not in lines[0] and "attncluster." not in lines[0] and "Traceback" not in lines[0]


@pytest.mark.parametrize("device", ["gpu", "cuda", "cuda:7", "mps", "cpu:3"])
def test_bad_devices_are_one_line_errors(device, tiny_ckpt, capsys):
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("cuda is a valid device here")
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    code, lines = main_lines(capsys, "eval", "--config", tiny_ckpt / "config.yaml", "--weights",
                             tiny_ckpt / "model.pt", "--device", device)
    assert_main_error(code, lines, f"--device {device}")


@pytest.mark.parametrize("verb", ["predict", "eval"])
def test_output_is_checked_before_any_work(verb, tmp_path, tiny_ckpt, capsys):
    """A directory (or a path under a regular file) as --output fails first: weights and data are never opened."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    common = ["--config", tiny_ckpt / "config.yaml", "--weights", tmp_path / "missing.pt", "--device", "cpu"]
    extra = ["--data", tmp_path / "no-data"]
    folder = tmp_path / "out.csv"
    folder.mkdir()
    code, lines = main_lines(capsys, verb, *common, *extra, "--output", folder)
    assert_main_error(code, lines, f"--output {folder}", "is a directory")
    code, lines = main_lines(capsys, verb, *common, *extra, "--output", afile / "out.json")
    assert_main_error(code, lines, str(afile))
    assert "missing.pt" not in lines[0]


def _hostile_shard(path, ids):
    import numpy as np

    from attncluster.data.tfrecord import TFRecordWriter
    from attncluster.data.yt8m import encode_sequence_example

    rng = np.random.default_rng(0)
    with TFRecordWriter(str(path)) as w:
        for i, vid in enumerate(ids):
            frames = {"rgb": rng.integers(0, 256, (3, 1024), dtype=np.uint8),
                      "audio": rng.integers(0, 256, (3, 128), dtype=np.uint8)}
            w.write(encode_sequence_example(vid, [i % TINY_CLASSES], frames))


def test_kaggle_csv_round_trips_hostile_ids(tiny_ckpt, tmp_path, capsys):
    ids = ["plain", "with,comma", 'with"quote', "line\nbreak", "cr\rreturn",
           'forged,"0 0.999"\nfake,1 0.5', " spaces ", "x" * 300]
    (tmp_path / "data").mkdir()
    _hostile_shard(tmp_path / "data" / "test0000.tfrecord", ids)
    out = tmp_path / "sub.csv"
    code, _ = main_lines(capsys, "predict", "--config", tiny_ckpt / "config.yaml", "--weights", tiny_ckpt / "model.pt",
                         "--data", tmp_path / "data", "--output", out, "--top-k", 2, "--device", "cpu")
    assert code == 0
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["VideoId", "LabelConfidencePairs"]
    assert sorted(r[0] for r in rows[1:]) == sorted(ids)  # one row per video, every id intact
    assert all(len(r) == 2 and len(r[1].split(" ")) == 4 for r in rows[1:])


def test_predict_ignores_a_planted_symlink_and_replaces_atomically(tiny_ckpt, tiny_data, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out" / "p.csv"
    out.parent.mkdir()
    (out.parent / "p.csv.tmp").symlink_to(victim)  # the fixed name the old code wrote through
    code, _ = main_lines(capsys, "predict", "--config", tiny_ckpt / "config.yaml", "--weights", tiny_ckpt / "model.pt",
                         "--data", tiny_data / "valid", "--output", out, "--device", "cpu")
    assert code == 0
    assert victim.read_text() == "precious"
    assert len(list(csv.reader(out.open()))) == 41
    assert sorted(p.name for p in out.parent.iterdir()) == ["p.csv", "p.csv.tmp"]  # nothing else left behind
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_weights_of_an_unrelated_model_are_refused_unless_asked(tiny_data, tmp_path, capsys):
    import torch

    from attncluster.checkpoint import atomic_save
    from attncluster.model import AttentionCluster

    other = AttentionCluster(feature_dims={"rgb": 1024, "audio": 128}, cluster_nums=3, num_classes=4, hidden_sizes=(6,))
    atomic_save({"model": other.state_dict()}, tmp_path / "other.pt")
    args = ["train", "--config", "configs/quickstart.yaml",
            *overrides(tiny_data, **{"train.epochs": 1, "train.valid_interval": 0}),
            "--weights", tmp_path / "other.pt", "--device", "cpu"]
    code, lines = main_lines(capsys, *args, "--run-dir", tmp_path / "r1")
    assert_main_error(code, lines, "other.pt", "no tensor fits the model", "--allow-reinit")
    from attncluster.cli import main

    assert main([str(a) for a in args] + ["--run-dir", str(tmp_path / "r2"), "--allow-reinit"]) == 0
    out = capsys.readouterr().out
    summary = [line for line in out.splitlines() if line.startswith("fine-tune:")]
    assert len(summary) == 1 and "loaded 0 of 12 tensors" in summary[0] and "re-initialised 12" in summary[0]
    assert ", 1 epoch, " in out and "1 epochs" not in out
    from attncluster.checkpoint import load_checkpoint

    assert load_checkpoint(tmp_path / "r2" / "checkpoints" / "last.pt")["epoch"] == 1


def _interrupt_on_call(monkeypatch, module, name, n):
    """Make ``module.name`` raise KeyboardInterrupt on its n-th call: Ctrl-C arriving mid-run."""
    real = getattr(module, name)
    calls = {"n": 0}

    def wrapped(*a, **k):
        calls["n"] += 1
        if calls["n"] >= n:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(module, name, wrapped)


def test_ctrl_c_in_predict_leaves_no_partial_output_and_says_so(tiny_ckpt, tiny_data, tmp_path, monkeypatch, capsys):
    import attncluster.predict as predict_mod

    out = tmp_path / "p.jsonl"
    out.write_text("previous\n")
    _interrupt_on_call(monkeypatch, predict_mod, "write_part_row", 12)  # inside the second batch
    code, lines = main_lines(capsys, "predict", "--config", tiny_ckpt / "config.yaml", "--weights",
                             tiny_ckpt / "model.pt", "--data", tiny_data / "train", "--output", out, "--device", "cpu",
                             "-o", "eval.batch_size=8")
    assert code == 130
    assert lines == [f"interrupted: prediction stopped; {out} was not written (a previous file there is unchanged)"]
    assert out.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir()] == ["p.jsonl"]


def test_ctrl_c_message_is_true_for_train_and_eval(tiny_ckpt, tiny_data, tmp_path, monkeypatch, capsys):
    import attncluster.evaluate as evaluate_mod
    import attncluster.train as train_mod

    base = ["--config", "configs/quickstart.yaml", *overrides(tiny_data, **{"train.epochs": 2}), "--device", "cpu"]
    with monkeypatch.context() as m:  # interrupted in the first epoch: no checkpoint exists yet
        _interrupt_on_call(m, train_mod, "compute_loss", 2)
        code, lines = main_lines(capsys, "train", *base, "--run-dir", tmp_path / "a")
    assert code == 130 and lines == [f"interrupted: training stopped before its first checkpoint; nothing in "
                                     f"{tmp_path / 'a'} can be resumed"]
    assert not (tmp_path / "a" / "checkpoints" / "last.pt").exists()
    with monkeypatch.context() as m:  # interrupted in the second epoch: epoch 1's checkpoint is there
        _interrupt_on_call(m, train_mod, "compute_loss", 6 + 1 + 2)  # 6 steps of 16 videos, then valid, then 2
        code, lines = main_lines(capsys, "train", *base, "--run-dir", tmp_path / "b")
    last = tmp_path / "b" / "checkpoints" / "last.pt"
    assert code == 130 and lines and lines[-1].startswith("interrupted: training stopped; the checkpoints in")
    assert f"--resume {last}" in lines[-1] and last.is_file()
    with monkeypatch.context() as m:
        _interrupt_on_call(m, evaluate_mod, "compute_loss", 1)
        code, lines = main_lines(capsys, "eval", "--config", tiny_ckpt / "config.yaml", "--weights",
                                 tiny_ckpt / "model.pt", "--output", tmp_path / "m.json", "--device", "cpu")
    assert code == 130 and lines == [f"interrupted: evaluation stopped; no metrics were written "
                                     f"({tmp_path / 'm.json'} is unchanged)"]
    assert not (tmp_path / "m.json").exists()


def _limit_file_size(nbytes):
    import resource
    import signal

    def preexec():  # a file may not grow past nbytes: writes beyond fail with EFBIG, like a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))

    return preexec


@pytest.mark.parametrize("limit, what", [
    # slow: test_train.py::test_failed_start_leaves_no_run_directory covers a failed start in-process
    pytest.param(200, "config.yaml: cannot write config", marks=pytest.mark.slow),
    (60_000, "epoch_001.pt: cannot write checkpoint")])
def test_a_full_disk_during_training_is_one_line(limit, what, tiny_data, tmp_path):
    # a real process (the file-size limit is the process's): its exit status 2 and one stderr line, as a shell sees
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("WORLD_SIZE", None)
    run_dir = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "attncluster", "train", "--config", "configs/quickstart.yaml",
                        *overrides(tiny_data, **{"train.epochs": 1, "train.valid_interval": 0}),
                        "--run-dir", run_dir, "--device", "cpu"], capture_output=True, text=True, env=env,
                       cwd=os.path.dirname(os.path.dirname(__file__)), timeout=300, preexec_fn=_limit_file_size(limit))
    assert_one_line_error(p, what, str(run_dir))
    if "config.yaml" in what:  # a failed start leaves no run directory behind
        assert not run_dir.exists()
    else:
        ckpts = run_dir / "checkpoints"
        assert not [f for f in ckpts.iterdir() if f.name.endswith(".tmp")], list(ckpts.iterdir())


def test_num_threads_override_is_validated_not_a_crash(tmp_path):
    p = run("train", "--config", "configs/quickstart.yaml", "-o", "data.train=x", "-o", "train.num_threads=100000",
            "--run-dir", tmp_path / "r", check=False, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert_one_line_error(p, "-o train.num_threads=100000: train.num_threads: must be in [0, 256]")
    assert "quickstart.yaml" not in p.stderr  # the value came from -o, not from the config file


def test_plurals_in_summaries(tmp_path, capsys):
    from attncluster.cli import main

    assert main(["synth", "--out", str(tmp_path / "s"), "--videos", "1", "--shards", "1", "--max-frames", "5"]) == 0
    assert "wrote 1 video in 1 shard to" in capsys.readouterr().out
    from attncluster.evaluate import format_metrics

    assert format_metrics({"gap": 0.5, "num_videos": 1}) == "GAP 0.5000 (1 video)"
    assert format_metrics({"gap": 0.5, "num_videos": 2}) == "GAP 0.5000 (2 videos)"


def test_an_unwritable_output_folder_fails_before_predicting(tiny_ckpt, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        folder = ro
        if os.access(ro, os.W_OK):  # root ignores permission bits; /sys refuses new files to everyone
            folder = "/sys"
        code, lines = main_lines(capsys, "predict", "--config", tiny_ckpt / "config.yaml", "--weights",
                                 tmp_path / "missing.pt", "--data", tmp_path / "none", "--output", f"{folder}/p.csv")
    finally:
        ro.chmod(0o700)
    assert_main_error(code, lines, f"--output {folder}/p.csv: cannot write in {folder}")


@pytest.mark.parametrize("argv, needle", [(["train"], "the following arguments are required: --config"),
                                          (["predict", "--top-k", "x"], "argument --top-k: invalid int value: 'x'"),
                                          (["bogus"], "invalid choice: 'bogus'")])
def test_usage_mistakes_are_one_error_line_too(argv, needle, capsys):
    from attncluster.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert e.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: attncluster"), lines
    assert needle in lines[0] and "--help)" in lines[0]


def test_a_missing_output_folder_is_created_only_when_the_output_is_written(tiny_ckpt, tiny_data, tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "m.json"
    code, lines = main_lines(capsys, "eval", "--config", tiny_ckpt / "config.yaml", "--weights", tmp_path / "none.pt",
                             "--output", out, "--device", "cpu")
    assert_main_error(code, lines, "none.pt")
    assert not (tmp_path / "new").exists()  # a failed start leaves no folder behind
    code, _ = main_lines(capsys, "eval", "--config", tiny_ckpt / "config.yaml", "--weights", tiny_ckpt / "model.pt",
                         "--output", out, "--device", "cpu")
    assert code == 0 and json.loads(out.read_text())["num_videos"] == 40


def test_eval_on_unlabelled_videos_is_an_error_not_zero_metrics(tiny_ckpt, tmp_path, capsys):
    """Videos without labels (a test partition, extract without --labels) give no metrics, not GAP 0.0000."""
    import numpy as np

    from attncluster.data.tfrecord import write_records
    from attncluster.data.yt8m import encode_sequence_example

    rng = np.random.default_rng(0)
    frames = {"rgb": rng.integers(0, 256, (4, 1024), dtype=np.uint8),
              "audio": rng.integers(0, 256, (4, 128), dtype=np.uint8)}
    write_records(tmp_path / "test0000.tfrecord", [encode_sequence_example(f"t{i}", [], frames) for i in range(3)])
    code, lines = main_lines(capsys, "eval", "--config", tiny_ckpt / "config.yaml", "--weights", tiny_ckpt / "model.pt",
                             "--data", tmp_path / "test0000.tfrecord", "--device", "cpu")
    assert_main_error(code, lines, "none of the 3 videos", "has labels", "use predict")


def test_an_unknown_option_names_the_verb_and_the_closest_option(capsys):
    code, lines = main_lines(capsys, "predict", "--config", "quickstart", "--weights", "w.pt", "--data", "d",
                             "--output", "p.csv", "--topk", "3")
    assert code == 2 and lines == ["error: attncluster predict: unrecognized arguments: --topk 3; did you mean "
                                   "--top-k? (see attncluster predict --help)"]


def test_an_option_of_another_verb_says_whose_it_is(capsys):
    """(old code: predict --window 5 said "did you mean --videos?", watch --top-n "did you mean --onnx?")"""
    code, lines = main_lines(capsys, "predict", "--weights", "w.pt", "--data", "d", "--output", "p.csv",
                             "--window", "5")
    assert code == 2 and lines == ["error: attncluster predict: unrecognized arguments: --window 5; --window is an "
                                   "option of attncluster watch (see attncluster predict --help)"]
    code, lines = main_lines(capsys, "watch", "v.mp4", "--weights", "w.pt", "--top-n", "5")
    assert code == 2 and lines == ["error: attncluster watch: unrecognized arguments: --top-n 5; --top-n is an "
                                   "option of attncluster eval and attncluster predict (see attncluster watch --help)"]


# --------------------------------------------------------------------------------------------------------------
# A first day's options (#15 §3): the config a checkpoint stores, shipped class names, default paths, one name per
# meaning. In-process (main with capsys).

def _ckpt_with_config(root, tiny_data, **extra):
    """A checkpoint as train writes it (model weights plus the resolved config), of a fresh tiny model."""
    import torch

    from attncluster.checkpoint import atomic_save
    from attncluster.config import load_config
    from attncluster.model import AttentionCluster

    cfg = load_config(None, tiny_overrides(tiny_data, **extra))
    torch.manual_seed(0)
    path = root / "best.pt"
    atomic_save({"model": AttentionCluster(**cfg.model.model_kwargs()).state_dict(), "config": cfg.to_dict()}, path)
    (root / "config.yaml").write_text(cfg.to_yaml())
    return path


@pytest.fixture(scope="module")
def cfg_ckpt(tiny_data, tmp_path_factory):
    return _ckpt_with_config(tmp_path_factory.mktemp("cfg_ckpt"), tiny_data)


@pytest.fixture(scope="module")
def yt8m_ckpt(tiny_data, tmp_path_factory):
    """A 3,862-class model (the YouTube-8M 2018 vocabulary's size) on the tiny data."""
    return _ckpt_with_config(tmp_path_factory.mktemp("yt8m_ckpt"), tiny_data, **{"model.num_classes": 3862})


def test_eval_takes_the_config_stored_in_the_checkpoint(cfg_ckpt, tiny_data, tmp_path, capsys):
    with_cfg, without = tmp_path / "a.json", tmp_path / "b.json"
    assert main_lines(capsys, "eval", "--config", cfg_ckpt.parent / "config.yaml", "--weights", cfg_ckpt,
                      "--output", with_cfg, "--device", "cpu")[0] == 0
    assert main_lines(capsys, "eval", "--weights", cfg_ckpt, "--output", without, "--device", "cpu")[0] == 0
    a, b = json.loads(with_cfg.read_text()), json.loads(without.read_text())
    assert a == b and a["num_videos"] == 40 if "num_videos" in a else a == b


@pytest.mark.parametrize("verb", ["predict", pytest.param("export", marks=pytest.mark.slow), "explain"])
def test_other_verbs_need_no_config_with_a_training_checkpoint(verb, cfg_ckpt, tiny_data, tmp_path, capsys):
    argv = {"predict": ["--data", tiny_data / "valid", "--output", tmp_path / "p.jsonl"],
            "export": ["--output", tmp_path / "m.onnx"],
            "explain": ["--data", tiny_data / "valid", "--output", tmp_path / "x", "--no-figures", "--max-videos", 2]}
    if verb == "export":
        pytest.importorskip("onnxruntime")
    code, lines = main_lines(capsys, verb, "--weights", cfg_ckpt, *argv[verb])
    assert code == 0, lines


def test_an_explicit_config_wins_and_a_disagreeing_one_is_one_line(cfg_ckpt, tiny_data, tmp_path, capsys):
    other = tmp_path / "other.yaml"
    from attncluster.config import load_config

    other.write_text(load_config(None, tiny_overrides(tiny_data, **{"model.hidden_sizes": "[8]"})).to_yaml())
    assert_main_error(*main_lines(capsys, "eval", "--config", other, "--weights", cfg_ckpt), "best.pt",
                      "does not match the config's model", "hidden")


def test_a_weights_file_given_as_config_says_where_it_goes(cfg_ckpt, tmp_path, capsys):
    assert_main_error(*main_lines(capsys, "eval", "--config", cfg_ckpt, "--weights", cfg_ckpt),
                      "is a weights file", f"--weights {cfg_ckpt}")
    renamed = tmp_path / "model.safetensors"
    renamed.write_bytes(b"\x00\xff" * 8)  # unknown bytes, not UTF-8: the name tells what it is
    assert_main_error(*main_lines(capsys, "eval", "--config", renamed, "--weights", cfg_ckpt),
                      "is a weights file (.safetensors)", "--weights")
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"\x08\x08\x12\x07pytorch\xff")
    assert_main_error(*main_lines(capsys, "eval", "--config", onnx, "--weights", cfg_ckpt), "--onnx")


def test_weights_without_a_config_ask_for_one(tiny_ckpt, capsys):
    assert_main_error(*main_lines(capsys, "eval", "--weights", tiny_ckpt / "model.pt"), "model.pt",
                      "--config CFG")


def test_a_missing_default_data_path_says_it_is_the_default_and_names_data(cfg_ckpt, tmp_path, capsys,
                                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)  # the shipped config's data/yt8m/... does not exist here
    code, lines = main_lines(capsys, "eval", "--config", "youtube8m", "--weights", cfg_ckpt)
    assert_main_error(code, lines, "data/yt8m/", "default data.valid of config youtube8m", "--data")
    code, lines = main_lines(capsys, "eval", "--weights", cfg_ckpt, "-o", "data.valid=[gone/*.tfrecord]")
    assert_main_error(code, lines, "gone/*.tfrecord", f"the config stored in {cfg_ckpt}", "--data")


def test_shipped_class_names_are_mediapipes_file_unchanged():
    import hashlib
    from importlib import resources

    from attncluster.inference import youtube8m_names

    names = youtube8m_names()
    assert len(names) == 3862
    assert names[:5] == ["Game", "Video game", "Vehicle", "Concert", "Musician"]  # the dataset's first indices
    folder = resources.files("attncluster") / "vocab"
    data = (folder / "youtube8m_2018.txt").read_bytes()
    # git's blob id of mediapipe/graphs/youtube8m/label_map.txt, as NOTICE records it
    assert hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == "a3ed470876fb24851ab35978bff3b69250cb86a4"
    notice = (folder / "NOTICE").read_text()
    assert "MediaPipe" in notice and "Apache License, Version 2.0" in notice and "a3ed4708" in notice


def test_class_names_preference_order(tmp_path, tiny_data):
    from attncluster.config import load_config
    from attncluster.inference import class_names_for, youtube8m_names

    csv_path = tmp_path / "vocabulary.csv"
    csv_path.write_text("Index,Name\n" + "".join(f"{i},n{i}\n" for i in range(3862)))
    assert class_names_for(3862) == youtube8m_names()
    assert class_names_for(3862, vocab=str(csv_path))[:2] == ["n0", "n1"]
    assert class_names_for(3862, vocab=False) is None
    assert class_names_for(3862, stored=["s"] * 3862)[0] == "s"
    assert class_names_for(5) is None  # other models have no default names
    names = tmp_path / "names.txt"
    names.write_text("".join(f"c{i}\n" for i in range(5)))
    cfg = load_config(None, tiny_overrides(tiny_data, **{"data.class_names": str(names)}))
    assert class_names_for(5, cfg) == [f"c{i}" for i in range(5)]


def test_predict_and_explain_name_a_3862_class_models_classes_by_default(yt8m_ckpt, tiny_data, tmp_path, capsys):
    from attncluster.inference import youtube8m_names

    shipped = youtube8m_names()
    out = tmp_path / "p.jsonl"
    assert main_lines(capsys, "predict", "--weights", yt8m_ckpt, "--data", tiny_data / "valid", "--output", out,
                      "--top-k", 3)[0] == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == 40 and all(r["names"] == [shipped[c] for c in r["classes"]] for r in recs)
    assert main_lines(capsys, "predict", "--weights", yt8m_ckpt, "--data", tiny_data / "valid", "--output", out,
                      "--top-k", 3, "--no-vocab")[0] == 0
    assert all("names" not in json.loads(line) for line in out.read_text().splitlines())
    vocab = tmp_path / "vocabulary.csv"
    vocab.write_text("Index,Name\n" + "".join(f"{i},mine {i}\n" for i in range(3862)))
    assert main_lines(capsys, "predict", "--weights", yt8m_ckpt, "--data", tiny_data / "valid", "--output", out,
                      "--top-k", 3, "--vocab", vocab)[0] == 0
    assert all(r["names"] == [f"mine {c}" for c in r["classes"]]
               for r in map(json.loads, out.read_text().splitlines()))
    code, lines = main_lines(capsys, "explain", "--weights", yt8m_ckpt, "--data", tiny_data / "valid", "--output",
                             tmp_path / "x", "--no-figures", "--max-videos", 1)
    assert code == 0, lines
    top = json.loads(next((tmp_path / "x").glob("*.json")).read_text())["top_classes"]
    assert top and all(t["name"] == shipped[t["class"]] for t in top)


def test_renamed_options_keep_their_old_spelling_with_one_warning(tmp_path, capsys):
    from attncluster.cli import build_parser, main

    assert main(["synth", "--out", str(tmp_path / "a"), "--num-videos", "3", "--num-classes", "4", "--shards", "1",
                 "--max-frames", "5"]) == 0
    capsys.readouterr()
    assert main(["synth", "--out", str(tmp_path / "b"), "--videos", "3", "--classes", "4", "--shards", "1",
                 "--max-frames", "5"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == ["warning: synth --videos is deprecated, use --num-videos",
                   "warning: synth --classes is deprecated, use --num-classes"]
    assert [f.read_bytes() for f in sorted((tmp_path / "a").iterdir())] == \
        [f.read_bytes() for f in sorted((tmp_path / "b").iterdir())]
    args = build_parser().parse_args(["extract", "v.mp4", "--output", "o", "--weights", "w.pth"])
    assert args.backbone_weights == "w.pth"
    assert "extract --weights is deprecated, use --backbone-weights" in capsys.readouterr().err


def test_no_option_name_means_two_things_across_verbs():
    """An option string is declared alike in every verb that has it: the same destination, type, arity and action
    (old code: synth --videos N was a count where predict --videos FILE... are files; extract --weights was a
    backbone's weights where every other verb's is the classifier's)."""
    from attncluster.cli import build_parser

    verbs = next(a for a in build_parser()._actions if a.dest == "command").choices
    kinds: dict[str, set] = {}
    for verb, sub in verbs.items():
        for action in sub._actions:
            if (action.help or "").startswith("deprecated spelling"):
                continue
            for opt in action.option_strings:
                kinds.setdefault(opt, set()).add((action.dest, action.type, action.nargs, type(action).__name__))
    assert {opt: k for opt, k in kinds.items() if len(k) > 1} == {}
    # --weights is the classifier's checkpoint (or its initialisation in train); extract's backbone weights are
    # --backbone-weights (its old --weights spelling is deprecated)
    assert "--weights" not in {o for a in verbs["extract"]._actions if a.dest != "backbone_weights"
                               for o in a.option_strings}
    # serve's video options are extract's declaration
    serve_help = {o: a.help for a in verbs["serve"]._actions for o in a.option_strings}
    extract_help = {o: a.help for a in verbs["extract"]._actions for o in a.option_strings}
    for opt in ("--inception", "--pca", "--vggish", "--vggish-pca", "--random-weights", "--fps"):
        assert serve_help[opt] == extract_help[opt], opt


def test_the_cli_copies_of_exports_constants_agree():
    pytest.importorskip("onnx")
    from attncluster import export
    from attncluster.cli import export as cli_export

    assert (cli_export.DEFAULT_OPSET, cli_export.SUPPORTED_OPSETS, cli_export.INPUT_DTYPE_CHOICES) == \
        (export.DEFAULT_OPSET, export.SUPPORTED_OPSETS, export.INPUT_DTYPE_CHOICES)
