import json
import math
import os
import warnings

import numpy as np
import pytest
import torch
import yaml

from attncluster.weights import load_checkpoint, load_for_finetune
from attncluster.config import load_config
from attncluster.data.transfer import batch_to_device
from attncluster.errors import ConfigError
from attncluster.inference import compute_loss
from attncluster.model import AttentionCluster
from attncluster.train import build_scheduler, fit
from conftest import tiny_overrides

quiet = lambda msg: None  # noqa: E731


def test_bce_loss_sums_classes_and_averages_videos():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731  softplus
    # BCE with logits per element: softplus(-z) for a positive, softplus(z) for a negative
    v0 = sp(-2.0) + sp(-1.0) + sp(0.5)
    v1 = sp(0.0) + sp(-3.0) + sp(2.0)
    assert compute_loss(logits, labels, "bce").item() == pytest.approx((v0 + v1) / 2, rel=1e-6)


def test_ce_loss_is_softmax_cross_entropy():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    labels = torch.tensor([[0.0, 0.0, 1.0]])
    expected = -(0.5 - math.log(math.exp(2.0) + math.exp(-1.0) + math.exp(0.5)))
    assert compute_loss(logits, labels, "ce").item() == pytest.approx(expected, rel=1e-6)


def test_cosine_schedule_with_warmup():
    cfg = load_config(None, ["train.schedule=cosine", "train.warmup_steps=4", "train.learning_rate=1.0"])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, cfg, total_steps=14)
    lrs = []
    for _ in range(14):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[9] == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 10)))
    assert lrs[4] == pytest.approx(1.0)


def test_exact_resume_gives_identical_weights(tiny_data, tmp_path):
    full = load_config(None, tiny_overrides(tiny_data))
    fit(full, run_dir=tmp_path / "a", device="cpu", log=quiet)
    one = load_config(None, tiny_overrides(tiny_data, **{"train.epochs": 1}))
    fit(one, run_dir=tmp_path / "b", device="cpu", log=quiet)
    fit(full, run_dir=tmp_path / "b", resume=str(tmp_path / "b" / "checkpoints" / "last.pt"), device="cpu", log=quiet)
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    # ... and the optimizer moments too
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    for i in sa:
        assert torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"])


def test_run_directory_checkpoints_and_metrics(tiny_cfg, tmp_path):
    result = fit(tiny_cfg, run_dir=tmp_path, device="cpu", log=quiet)
    ck = tmp_path / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["best.pt", "epoch_001.pt", "epoch_002.pt", "last.pt"]
    last, e2, best = (load_checkpoint(ck / n) for n in ("last.pt", "epoch_002.pt", "best.pt"))
    assert torch.equal(last["model"]["logits.weight"], e2["model"]["logits.weight"])
    for key in ("model", "optimizer", "scheduler", "epoch", "step", "rng", "config", "metrics"):
        assert key in last
    gaps = {e: load_checkpoint(ck / f"epoch_00{e}.pt")["metrics"]["gap"] for e in (1, 2)}
    assert best["metrics"]["gap"] == max(gaps.values())
    assert best["best_metric"] == max(gaps.values())
    assert result["gap"] == gaps[2]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    kinds = [r["type"] for r in records]
    assert kinds.count("valid") == 2 and kinds.count("train") >= 2
    train_rec = next(r for r in records if r["type"] == "train")
    for key in ("epoch", "step", "loss", "hit_at_1", "perr", "gap", "videos_per_s", "lr", "data_wait"):
        assert key in train_rec
    assert load_config(tmp_path / "config.yaml") == tiny_cfg
    assert not list(ck.glob("*.tmp")) and not list(ck.glob(".*"))


def test_training_learns_the_synthetic_task(tmp_path):
    from attncluster.data.synth import write_synthetic

    write_synthetic(tmp_path / "train", videos=200, classes=5, shards=2, seed=0, max_frames=24)
    write_synthetic(tmp_path / "valid", videos=40, classes=5, shards=1, seed=1, max_frames=24, prefix="validate")
    cfg = load_config(None, tiny_overrides(tmp_path, **{"train.epochs": 4, "model.cluster_nums": 8, "model.seg_num": 16,
                                                        "model.hidden_sizes": "[64]", "train.valid_interval": 4,
                                                        "train.learning_rate": 3e-3}))
    metrics = fit(cfg, run_dir=tmp_path / "run", device="cpu", log=quiet)
    # chance GAP with 5 classes and 1-4 labels per video is about 0.5; learning must clearly beat it
    assert metrics["gap"] > 0.8


def test_finetune_reinitialises_layers_of_another_shape(tiny_cfg, tmp_path):
    fit(tiny_cfg, run_dir=tmp_path / "src", device="cpu", log=quiet)
    src = load_checkpoint(tmp_path / "src" / "checkpoints" / "last.pt")["model"]
    kwargs = {**tiny_cfg.model.model_kwargs(), "num_classes": 7}
    torch.manual_seed(123)
    model = AttentionCluster(**kwargs)
    fresh = model.logits.weight.detach().clone()
    messages = []
    reinit = load_for_finetune(model, tmp_path / "src" / "checkpoints" / "last.pt", log=messages.append)
    assert sorted(reinit) == ["logits.bias", "logits.weight"]
    assert any("logits.weight" in m and "re-initialised" in m for m in messages)
    assert torch.equal(model.logits.weight, fresh)
    assert torch.equal(model.hidden[0].weight, src["hidden.0.weight"])
    assert torch.equal(model.attention["rgb"].score.weight, src["attention.rgb.score.weight"])


def test_bf16_autocast_on_cpu_trains(tiny_data, tmp_path):
    cfg = load_config(None, tiny_overrides(tiny_data, **{"train.epochs": 1, "train.precision": "bf16"}))
    metrics = fit(cfg, run_dir=tmp_path, device="cpu", log=quiet)
    assert np.isfinite(metrics["loss"])


def test_uint8_batches_are_dequantized_on_the_device(tiny_cfg):
    from attncluster.data.dataset import VideoDataset, make_loader

    kw = dict(modalities=tiny_cfg.model.feature_dims, num_classes=tiny_cfg.model.num_classes, seg_num=8, train=False)
    q = next(iter(make_loader(VideoDataset(tiny_cfg.data.valid, dequantize=False, **kw), 4)))
    f = next(iter(make_loader(VideoDataset(tiny_cfg.data.valid, dequantize=True, **kw), 4)))
    assert q["rgb"].dtype == torch.uint8  # what crosses to the device is 1 byte per value
    feats, labels = batch_to_device(q, ["rgb", "audio"], torch.device("cpu"))
    assert feats["rgb"].dtype == torch.float32
    assert torch.equal(feats["rgb"], f["rgb"]) and torch.equal(feats["audio"], f["audio"])
    assert torch.equal(labels, f["labels"])


def test_global_batch_must_divide_over_ranks(tiny_data, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    cfg = load_config(None, tiny_overrides(tiny_data, **{"train.batch_size": 16}))
    with pytest.raises(ConfigError, match=r"train.batch_size=16 is the global batch and must divide evenly over WORLD_SIZE=3"):
        fit(cfg, device="cpu", log=quiet)


def test_resume_from_incompatible_checkpoint_is_an_error(tiny_cfg, tmp_path):
    fit(load_config(None, tiny_overrides(_data(tiny_cfg), **{"train.epochs": 1})),
        run_dir=tmp_path / "a", device="cpu", log=quiet)
    other = load_config(None, tiny_overrides(_data(tiny_cfg), **{"model.num_classes": 6}))
    with pytest.raises(ConfigError, match="does not match the config's model"):
        fit(other, run_dir=tmp_path / "b", resume=str(tmp_path / "a" / "checkpoints" / "last.pt"), device="cpu", log=quiet)


def _data(cfg):
    from pathlib import Path

    return Path(cfg.data.train[0]).parent


def test_resolved_config_is_plain_yaml(tiny_cfg, tmp_path):
    fit(load_config(None, tiny_overrides(_data(tiny_cfg), **{"train.epochs": 1})), run_dir=tmp_path, device="cpu", log=quiet)
    raw = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert set(raw) == {"model", "data", "train", "eval", "extract"}


def _kinetics_style(root, n, seed, classes=4):
    """rgb / flow / audio float features; class k shows up as a bump on feature k in a few frames of each modality."""
    from attncluster.data.features import write_feature_dataset

    rng = np.random.default_rng(seed)
    videos = []
    for i in range(n):
        k = int(rng.integers(classes))
        t = int(rng.integers(6, 20))
        feats = {m: rng.normal(0, 0.3, (t, d)).astype(np.float32) for m, d in (("rgb", 12), ("flow", 10), ("audio", 6))}
        for arr in feats.values():
            arr[rng.choice(t, 2, replace=False), k] += 3.0
        videos.append((f"v{seed}_{i:03d}", [f"class_{k}"], feats))
    return write_feature_dataset(str(root), videos)


def test_kinetics_style_single_label_features_end_to_end(tmp_path):
    """The kinetics config's path: three modalities from the generic feature format, class names, softmax CE,
    top-1 / top-5 reported, best checkpoint by top-1."""
    from pathlib import Path

    from attncluster.evaluate import evaluate

    train_csv = _kinetics_style(tmp_path / "train", 64, seed=0)
    _kinetics_style(tmp_path / "val", 24, seed=1)
    (tmp_path / "classes.txt").write_text("".join(f"class_{k}\n" for k in range(4)))
    cfg_path = Path(__file__).parents[1] / "configs" / "kinetics.yaml"
    cfg = load_config(cfg_path, [f"data.train={train_csv}", f"data.valid={tmp_path / 'val'}", "data.num_workers=0",
                                 f"data.class_names={tmp_path / 'classes.txt'}", "model.num_classes=4",
                                 "model.feature_dims={rgb: 12, flow: 10, audio: 6}",
                                 "model.cluster_nums={rgb: 3, flow: 2, audio: 2}", "model.seg_num=8",
                                 "model.hidden_sizes=[16]", "train.epochs=5", "train.batch_size=16",
                                 "train.warmup_steps=2", "train.learning_rate=0.01", "eval.batch_size=8",
                                 "eval.top_k=4", "model.drop_rate=0",  # 20 steps on 64 videos: no dropout
                                 "train.keep_checkpoints=0"])  # every epoch's checkpoint stays, for the checks below
    assert cfg.train.loss == "ce" and list(cfg.model.feature_dims) == ["rgb", "flow", "audio"]
    fit(cfg, run_dir=tmp_path / "run", device="cpu", log=quiet)
    ck = tmp_path / "run" / "checkpoints"
    top1 = [load_checkpoint(ck / f"epoch_00{e}.pt")["metrics"]["top_1"] for e in range(1, 6)]
    assert load_checkpoint(ck / "best.pt")["best_metric"] == max(top1)
    metrics = evaluate(cfg, str(ck / "best.pt"), device="cpu", log=quiet)
    assert metrics["num_videos"] == 24 and metrics["top_1"] == max(top1)
    assert metrics["top_5"] == 1.0  # 4 classes: the true class is always within the top 5
    assert metrics["top_1"] > 0.5  # chance is 0.25


# ---- batching, workers, run directories, mid-epoch checkpoints -------------------------------------------------------

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def _checkpoints(run):
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def _train_records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("config", ["youtube8m.yaml", "youtube8m_video_level.yaml"])
def test_500_videos_train_with_the_shipped_config_and_its_workers(tmp_path, config):
    """The issue's case: 500 videos in 2 shards, 4 DataLoader workers, a shipped config (youtube8m.yaml's batch of
    2048 is larger than the data). Each worker used to keep its own partial batch and drop it: "no full batch". Now
    only the last batch is partial and it trains: all 500 videos, ceil(500 / batch) steps."""
    from attncluster.data.synth import write_synthetic

    write_synthetic(tmp_path / "train", videos=500, classes=5, shards=2, seed=0, min_frames=2, max_frames=4)
    cfg = load_config(REPO / "configs" / config, [
        f"data.train={tmp_path / 'train'}", "data.valid=[]", "data.num_workers=4", "model.num_classes=5",
        "model.cluster_nums=1", "model.hidden_sizes=[4]", "train.epochs=1", "train.num_threads=1"])
    steps, logs = [], []
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fit(cfg, run_dir=tmp_path / "run", device="cpu", log=logs.append, on_step=lambda s, m, loss: steps.append(s))
    # 4 workers on fewer cores is what this test asks for: torch's DataLoader says so, and nothing else warns
    expected = [w for w in seen if "worker processes in total" in str(w.message)]
    assert bool(expected) == ((os.cpu_count() or 1) < 4), [str(w.message) for w in seen]
    assert len(seen) == len(expected), [str(w.message) for w in seen]
    assert steps == list(range(1, math.ceil(500 / cfg.train.batch_size) + 1))
    assert config != "youtube8m.yaml" or steps == [1]  # batch 2048: the one partial batch
    assert any(m.startswith("epoch 1/1 done: 500 videos") for m in logs), logs


def test_too_few_videos_for_the_ranks_names_the_cause(tmp_path, monkeypatch):
    from attncluster.data.synth import write_synthetic

    write_synthetic(tmp_path / "train", videos=2, classes=5, shards=1, seed=0, min_frames=2, max_frames=4)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "0")
    cfg = load_config(None, tiny_overrides(tmp_path, **{"train.batch_size": 4, "data.valid": "[]"}))
    with pytest.raises(ConfigError, match="data.train: 2 videos in 1 shard cannot be shared by 4 ranks"):
        fit(cfg, run_dir=tmp_path / "run", device="cpu", log=quiet)
    assert not (tmp_path / "run").exists()  # a failed start leaves no run directory


def test_auto_workers_fit_the_cores_and_threads_use_the_rest(tiny_data, monkeypatch):
    from attncluster.config import resolve_num_workers
    from attncluster.train import cpu_threads

    cfg = load_config(None, tiny_overrides(tiny_data, **{"data.num_workers": "auto"}))
    assert load_config(None).data.num_workers == "auto"
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    for cores, world, workers, threads in [(2, 1, 1, 1), (1, 1, 0, 1), (16, 1, 8, 8), (64, 1, 8, 56), (16, 2, 4, 4),
                                           (4, 4, 0, 1)]:
        monkeypatch.setattr("os.sched_getaffinity", lambda pid, n=cores: set(range(n)))
        assert resolve_num_workers("auto", world) == workers, (cores, world)
        assert cfg.data.workers(world) == workers and cpu_threads(cfg, world) == threads, (cores, world)
    # 16 ranks over 2 nodes of 16 cores: 8 ranks share each node, 2 cores each
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    assert cfg.data.workers(16) == 1 and cpu_threads(cfg, 16) == 1
    with pytest.raises(ConfigError, match="data.num_workers: must be an integer >= 0 or 'auto', got 'many'"):
        load_config(None, ["data.num_workers=many"])


def test_auto_workers_train_without_torch_warnings(tiny_data, tmp_path, monkeypatch):
    """On a 2-core machine the shipped configs' 'auto' gives one worker: torch has nothing to warn about."""
    import warnings

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    cfg = load_config(REPO / "configs" / "quickstart.yaml", tiny_overrides(tiny_data, **{
        "data.num_workers": "auto", "train.epochs": 1, "train.valid_interval": 0}))
    logs = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(cfg, run_dir=tmp_path, device="cpu", log=logs.append)
    assert not [w for w in caught if "worker" in str(w.message)], [str(w.message) for w in caught]
    assert "1 data worker," in logs[0]


def test_checkpoint_interval_is_typed_and_checked():
    every = lambda v: load_config(None, [f"train.checkpoint_interval={v}"]).train.checkpoint_every  # noqa: E731
    assert every(0) == ("steps", 0) and every(250) == ("steps", 250)
    assert every("30min") == ("seconds", 1800) and every("1.5h") == ("seconds", 5400) and every("90s") == ("seconds", 90)
    for bad in ("30 parsecs", "-5", "0min", "min"):
        with pytest.raises(ConfigError, match="train.checkpoint_interval"):
            every(bad)
    with pytest.raises(ConfigError, match=r"train.keep_checkpoints: must be in \[0, "):
        load_config(None, ["train.keep_checkpoints=-1"])


def test_keep_checkpoints_prunes_old_ones_and_orphans_go(tiny_data, tmp_path):
    ck = tmp_path / "checkpoints"
    ck.mkdir(parents=True)
    orphan = ck / ".epoch_007.pt.abc123.tmp"  # what a kill -9 during atomic_save leaves
    orphan.write_bytes(b"half a checkpoint")
    cfg = load_config(None, tiny_overrides(tiny_data, **{"train.keep_checkpoints": 2, "train.checkpoint_interval": 4}))
    fit(cfg, run_dir=tmp_path, device="cpu", log=quiet)
    # 6 steps per epoch; mid-epoch checkpoints at steps 4 and 8 (6 and 12 are epoch ends)
    names = _checkpoints(tmp_path)
    assert [n for n in names if n not in ("best.pt", "last.pt")] == ["epoch_002.pt", "epoch_002_step_00000008.pt"]
    assert "best.pt" in names and not orphan.exists()
    best, last = load_checkpoint(ck / "best.pt"), load_checkpoint(ck / "last.pt")
    assert last["epoch"] == 2 and last["step"] == 12
    assert best["best_metric"] == max(r["gap"] for r in _train_records(tmp_path) if r["type"] == "valid")


def test_run_directory_is_not_reused_silently(tiny_data, tmp_path):
    cfg = load_config(None, tiny_overrides(tiny_data, **{"train.epochs": 1}))
    fit(cfg, run_dir=tmp_path / "run", device="cpu", log=quiet)
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match=r"already holds a run \(config.yaml, metrics.jsonl, checkpoints\); "
                                          r"continue it with --resume .*last.pt, replace it with --overwrite"):
        fit(load_config(None, tiny_overrides(tiny_data, **{"train.epochs": 2})), run_dir=tmp_path / "run",
            device="cpu", log=quiet)
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before  # untouched
    (tmp_path / "run" / "checkpoints" / "epoch_009.pt").write_bytes(b"stale")
    fit(load_config(None, tiny_overrides(tiny_data, **{"train.epochs": 1, "train.seed": 1})),
        run_dir=tmp_path / "run", device="cpu", log=quiet, overwrite=True)
    assert _checkpoints(tmp_path / "run") == ["best.pt", "epoch_001.pt", "last.pt"]
    assert [r["epoch"] for r in _train_records(tmp_path / "run") if r["type"] == "valid"] == [1]  # no old ones
    assert load_config(tmp_path / "run" / "config.yaml").train.seed == 1


def test_failed_start_leaves_no_run_directory(tiny_data, tmp_path):
    from attncluster.errors import DataError

    with pytest.raises(DataError, match="matches no files"):
        fit(load_config(None, tiny_overrides(tiny_data, **{"data.train": tmp_path / "nothing*.tfrecord"})),
            run_dir=tmp_path / "a", device="cpu", log=quiet)
    assert not (tmp_path / "a").exists()
    with pytest.raises(ConfigError, match="checkpoint not found"):
        fit(load_config(None, tiny_overrides(tiny_data)), run_dir=tmp_path / "b", resume=str(tmp_path / "x.pt"),
            device="cpu", log=quiet)
    assert not (tmp_path / "b").exists()


def test_config_yaml_is_written_atomically(tiny_cfg, tmp_path):
    """A file-size limit makes the write fail part-way (as a full disk does): the old config.yaml stays whole."""
    import resource
    import signal

    from attncluster.config import save_config

    path = tmp_path / "config.yaml"
    save_config(tiny_cfg, path)
    before = path.read_text()
    changed = load_config(path, ["train.seed=7"])
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, hard))
        from attncluster.errors import FileError

        with pytest.raises(FileError, match="config.yaml: cannot write config: File too large"):
            save_config(changed, path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert path.read_text() == before and [q.name for q in tmp_path.iterdir()] == ["config.yaml"]
    save_config(changed, path)
    assert load_config(path).train.seed == 7


def test_resuming_a_finished_run_has_nothing_to_do(tiny_data, tmp_path, capsys):
    from attncluster.cli import main

    run = tmp_path / "run"
    fit(load_config(None, tiny_overrides(tiny_data, **{"train.epochs": 1})), run_dir=run, device="cpu", log=quiet)
    before = {p.name: p.stat().st_mtime_ns for p in (run / "checkpoints").iterdir()}
    metrics = (run / "metrics.jsonl").read_text()
    argv = ["train", "--config", str(REPO / "configs" / "quickstart.yaml"), "--resume", str(run / "checkpoints" / "last.pt"),
            "--run-dir", str(run), "--device", "cpu"]
    for o in tiny_overrides(tiny_data, **{"train.epochs": 1}):
        argv += ["-o", o]
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("nothing to do: ") and "finished all 1 epochs (step 6)" in out[0]
    assert {p.name: p.stat().st_mtime_ns for p in (run / "checkpoints").iterdir()} == before
    assert (run / "metrics.jsonl").read_text() == metrics


_KILLABLE = """
import json, sys, time
from attncluster.config import load_config
from attncluster.train import fit

def on_step(step, model, loss):
    print(f"step {step}", flush=True)
    if step >= 11:
        time.sleep(60)  # the test kills us here

fit(load_config(None, json.loads(sys.argv[1])), run_dir=sys.argv[2], device="cpu", log=lambda m: None,
    on_step=on_step)
"""


def test_kill_minus_9_mid_epoch_then_resume_equals_an_uninterrupted_run(tiny_data, tmp_path):
    """A real kill -9 of a training process (2 DataLoader workers) inside epoch 2, then --resume from its last
    checkpoint (taken mid-epoch), gives bit for bit the weights of an uninterrupted run without workers: the same
    batches followed. The lock died with the process; metrics.jsonl holds each step once."""
    import os
    import signal
    import subprocess
    import sys

    from attncluster.cli import main

    common = {"train.log_interval": 1, "train.checkpoint_interval": 3, "train.num_threads": 1,
              "train.keep_checkpoints": 0}
    killed = tmp_path / "killed"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    p = subprocess.Popen([sys.executable, "-c", _KILLABLE,
                          json.dumps(tiny_overrides(tiny_data, **common, **{"data.num_workers": 2})), str(killed)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in p.stdout:
            if line.strip() == "step 11":
                break
        # While it runs, the run directory is locked against a second training.
        with pytest.raises(ConfigError, match="another training .*is using this run directory"):
            fit(load_config(None, tiny_overrides(tiny_data, **common)), run_dir=killed, device="cpu", log=quiet,
                resume=str(killed / "checkpoints" / "last.pt"))
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.kill()
        p.wait(30)
    assert p.returncode == -signal.SIGKILL, p.stderr.read()[-3000:]
    last = load_checkpoint(killed / "checkpoints" / "last.pt")
    assert (last["epoch"], last["step"], last["position"]) == (1, 9, [3])  # inside epoch 2, after its 3rd batch
    assert [r["step"] for r in _train_records(killed) if r["type"] == "train"] == list(range(1, 11))

    argv = ["train", "--config", str(REPO / "configs" / "quickstart.yaml"), "--resume",
            str(killed / "checkpoints" / "last.pt"), "--run-dir", str(killed), "--device", "cpu"]
    for o in tiny_overrides(tiny_data, **common):
        argv += ["-o", o]
    assert main(argv) == 0

    straight = tmp_path / "straight"
    fit(load_config(None, tiny_overrides(tiny_data, **common)), run_dir=straight, device="cpu", log=quiet)
    a, b = (load_checkpoint(r / "checkpoints" / "last.pt") for r in (straight, killed))
    assert a["step"] == b["step"] == 12 and a["epoch"] == b["epoch"] == 2
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for i, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], b["optimizer"]["state"][i]["exp_avg_sq"])
    assert a["metrics"] == b["metrics"]
    records = _train_records(killed)
    assert [r["step"] for r in records if r["type"] == "train"] == list(range(1, 13))  # once each, not twice
    assert [r["epoch"] for r in records if r["type"] == "valid"] == [1, 2]
    assert [r["loss"] for r in records if r["type"] == "train"] == [
        r["loss"] for r in _train_records(straight) if r["type"] == "train"]


def test_checkpoint_interval_in_time(tiny_data, tmp_path):
    """A duration: a mid-epoch checkpoint once that much time has passed since the last one (here after every
    step, since every step takes longer than 1 ms), each resumable at its place."""
    cfg = load_config(None, tiny_overrides(tiny_data, **{"train.epochs": 1, "train.checkpoint_interval": "0.001s",
                                                          "train.keep_checkpoints": 0, "train.valid_interval": 0}))
    fit(cfg, run_dir=tmp_path, device="cpu", log=quiet)
    assert _checkpoints(tmp_path) == ["epoch_001.pt"] + [f"epoch_001_step_{s:08d}.pt" for s in range(1, 6)] + [
        "last.pt"]
    mid = load_checkpoint(tmp_path / "checkpoints" / "epoch_001_step_00000003.pt")
    assert (mid["epoch"], mid["step"], mid["position"]) == (0, 3, [3])


def test_mid_epoch_resume_refuses_changed_data(tiny_data, tmp_path):
    from attncluster.data.synth import write_synthetic

    cfg = load_config(None, tiny_overrides(tiny_data, **{"train.epochs": 1, "train.checkpoint_interval": 2,
                                                          "train.keep_checkpoints": 0, "train.valid_interval": 0}))
    fit(cfg, run_dir=tmp_path / "run", device="cpu", log=quiet)
    mid = tmp_path / "run" / "checkpoints" / "epoch_001_step_00000002.pt"
    assert load_checkpoint(mid)["num_videos"] == 96
    write_synthetic(tmp_path / "other", videos=50, classes=5, shards=1, seed=3, max_frames=8)
    other = load_config(None, tiny_overrides(tiny_data, **{"data.train": tmp_path / "other"}))
    with pytest.raises(ConfigError, match="taken mid-epoch over 96 training videos, but data.train now holds 50"):
        fit(other, run_dir=tmp_path / "run", resume=str(mid), device="cpu", log=quiet)


# ---- early stopping ----------------------------------------------------------------------------------------------


def _stopping(data, **extra):
    # min_delta 1.0: GAP can never improve by that much, so every validation after the first counts against patience
    return load_config(None, tiny_overrides(data, **{"train.early_stopping.patience": 2,
                                                     "train.early_stopping.min_delta": 1.0, **extra}))


@pytest.mark.slow  # the fast twin: test_checkpoint.py::test_train_state_counts_validations_without_improvement
def test_early_stopping_stops_after_patience_validations_and_keeps_the_best(tiny_data, tmp_path):
    logs, steps = [], []
    fit(_stopping(tiny_data, **{"train.epochs": 6}), run_dir=tmp_path, device="cpu", log=logs.append,
        on_step=lambda s, m, loss: steps.append(s))
    ck = tmp_path / "checkpoints"
    last, best = load_checkpoint(ck / "last.pt"), load_checkpoint(ck / "best.pt")
    assert last["epoch"] == 3 and len(steps) == 3 * 6  # best after epoch 1, then 2 validations without improvement
    assert last["early_stopping"] == {"bad_evals": 2, "best_epoch": 1}
    assert best["epoch"] == 1 and best["best_metric"] == best["metrics"]["gap"] == last["best_metric"]
    assert any(m.startswith("early stopping after epoch 3: gap has not improved for 2 validations") for m in logs)
    # resuming the stopped run: nothing to do under the same patience
    logs.clear()
    fit(_stopping(tiny_data, **{"train.epochs": 6}), run_dir=tmp_path, resume=str(ck / "last.pt"), device="cpu",
        log=logs.append)
    assert logs and logs[0].startswith("nothing to do:") and "stopped early after 3 epochs" in logs[0]


@pytest.mark.slow  # the fast twin: test_checkpoint.py::test_train_state_round_trips_and_old_checkpoints_load
def test_resume_keeps_the_early_stopping_counter(tiny_data, tmp_path):
    fit(_stopping(tiny_data, **{"train.epochs": 2}), run_dir=tmp_path, device="cpu", log=quiet)
    ck = tmp_path / "checkpoints"
    assert load_checkpoint(ck / "last.pt")["early_stopping"]["bad_evals"] == 1
    fit(_stopping(tiny_data, **{"train.epochs": 6}), run_dir=tmp_path, resume=str(ck / "last.pt"), device="cpu",
        log=quiet)
    assert load_checkpoint(ck / "last.pt")["epoch"] == 3  # 1 + 1 more: a reset counter would have run to epoch 4


def test_early_stopping_config_is_typed_and_off_by_default():
    cfg = load_config(None, [])
    assert cfg.train.early_stopping.patience == 0 and cfg.train.best_metric == "gap"
    assert load_config(None, ["train.loss=ce"]).train.best_metric == "top_1"
    cfg = load_config(None, ["train.early_stopping={metric: loss, patience: 3}"])
    assert (cfg.train.best_metric, cfg.train.early_stopping.patience) == ("loss", 3)
    for bad, msg in (("train.early_stopping.patiense=3", "did you mean 'train.early_stopping.patience'"),
                     ("train.early_stopping.metric=top_1", "needs single-label data"),
                     ("train.early_stopping.metric=accuracy", "must be 'auto' or one of"),
                     ("train.early_stopping.patience=-1", "must be >= 0"),
                     ("train.early_stopping=5", "expected a mapping")):
        with pytest.raises(ConfigError, match=msg):
            load_config(None, [bad])
    for name in ("youtube8m.yaml", "kinetics.yaml", "quickstart.yaml"):  # the reference's schedules: all epochs
        assert load_config(REPO / "configs" / name).train.early_stopping.patience == 0
    video = load_config(REPO / "configs" / "youtube8m_video_level.yaml").train  # sized to ~5 k videos, stops on more
    assert (video.epochs, video.best_metric, video.early_stopping.patience) == (40, "gap", 5)
