import json
import math

import numpy as np
import pytest
import torch
import yaml

from attncluster.checkpoint import load_checkpoint, load_for_finetune
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
    assert set(raw) == {"model", "data", "train", "eval"}


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
                                 "eval.top_k=4", "model.drop_rate=0"])  # 20 steps on 64 videos: no dropout
    assert cfg.train.loss == "ce" and list(cfg.model.feature_dims) == ["rgb", "flow", "audio"]
    fit(cfg, run_dir=tmp_path / "run", device="cpu", log=quiet)
    ck = tmp_path / "run" / "checkpoints"
    top1 = [load_checkpoint(ck / f"epoch_00{e}.pt")["metrics"]["top_1"] for e in range(1, 6)]
    assert load_checkpoint(ck / "best.pt")["best_metric"] == max(top1)
    metrics = evaluate(cfg, str(ck / "best.pt"), device="cpu", log=quiet)
    assert metrics["num_videos"] == 24 and metrics["top_1"] == max(top1)
    assert metrics["top_5"] == 1.0  # 4 classes: the true class is always within the top 5
    assert metrics["top_1"] > 0.5  # chance is 0.25
