"""weights.py: --weights accepting every supported weights file, the safe unpickler, the legacy upgrade."""

import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from attncluster.checkpoint import atomic_save
from attncluster.weights import load_checkpoint, load_weights
from attncluster.errors import ConfigError, DataError
from attncluster.model import AttentionCluster
from attncluster.paddle import convert_paddle
from test_paddle import CLASSES, CLUSTERS, DIMS, HIDDEN, inputs, paddle_infer, paddle_params, run_torch



def test_unreadable_checkpoint_is_a_data_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="bad.pt: not a readable checkpoint"):
        load_checkpoint(bad)
    other = tmp_path / "other.pt"
    torch.save([1, 2, 3], other)
    with pytest.raises(DataError, match="other.pt: not an attncluster checkpoint"):
        load_checkpoint(other)
    with pytest.raises(ConfigError, match="nope.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")


def _model():
    return AttentionCluster(feature_dims=DIMS, cluster_nums=CLUSTERS, num_classes=CLASSES, hidden_sizes=HIDDEN)


def test_weights_from_every_supported_file_give_the_reference_outputs(tmp_path):
    params = paddle_params()
    src = tmp_path / "AttentionCluster.pdparams"
    with open(src, "wb") as f:
        pickle.dump(params, f, protocol=2)
    feats = inputs()
    expected = paddle_infer(params, feats)

    convert_paddle(str(src), str(tmp_path / "conv.pt"), feature_dims=DIMS)
    convert_paddle(str(src), str(tmp_path / "conv.safetensors"), feature_dims=DIMS)
    reference = _model()
    load_weights(reference, tmp_path / "conv.pt")
    atomic_save({"model": reference.state_dict(), "epoch": 1}, tmp_path / "ours.pt")
    save_file(reference.state_dict(), str(tmp_path / "plain.safetensors"))

    for name in ["AttentionCluster.pdparams", "conv.pt", "conv.safetensors", "ours.pt", "plain.safetensors"]:
        model = _model()
        load_weights(model, tmp_path / name)
        np.testing.assert_allclose(run_torch(model, feats), expected, atol=1e-5, err_msg=name)


def test_strict_weights_name_the_mismatch(tmp_path):
    model = _model()
    atomic_save({"model": model.state_dict()}, tmp_path / "m.pt")
    other = AttentionCluster(feature_dims=DIMS, cluster_nums=CLUSTERS, num_classes=CLASSES + 2, hidden_sizes=HIDDEN)
    with pytest.raises(ConfigError, match=r"m.pt: checkpoint does not match the config's model: shapes differ.*logits.weight") as e:
        load_weights(other, tmp_path / "m.pt")
    assert "\n" not in str(e.value)


def test_corrupt_safetensors_is_a_data_error(tmp_path):
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(DataError, match="w.safetensors: not a readable safetensors file"):
        load_weights(_model(), bad)


class _Planted:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):  # unpickling calls exec: what a malicious checkpoint does
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_a_crafted_checkpoint_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "side-effect"
    zipped = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.ones(1)}, "x": _Planted(marker)}, zipped)
    legacy = tmp_path / "legacy.pt"  # a bare pickle (torch's legacy format) with the same payload
    legacy.write_bytes(pickle.dumps({"model": {}, "x": _Planted(marker)}, protocol=2))
    for path in (zipped, legacy):
        with pytest.raises(DataError, match=rf"{path.name}: (refusing to load: it needs \S*exec|not a readable)") as e:
            load_checkpoint(path)
        assert "\n" not in str(e.value) and "\x1b" not in str(e.value)
        with pytest.raises(DataError):
            load_weights(_model(), path)
    assert not marker.exists()
    pd = tmp_path / "evil.pdparams"
    pd.write_bytes(pickle.dumps({"fc1.weights": _Planted(marker)}))
    with pytest.raises(ConfigError, match="evil.pdparams: is a Paddle weights file, not a training checkpoint"):
        load_checkpoint(pd)  # what --resume calls
    with pytest.raises(DataError, match="refusing to unpickle"):
        load_weights(_model(), pd)
    assert not marker.exists()


def test_a_training_checkpoint_with_rng_states_loads_weights_only(tmp_path):
    """What train.py saves (numpy's RNG tuple, config dict, numpy scalars in metrics) loads, and restores the RNGs."""
    from attncluster.checkpoint import atomic_save, rng_state, set_rng_state
    from attncluster.config import Config

    np.random.seed(123)
    np.random.rand(3)
    state = rng_state()
    expected = (np.random.rand(4), torch.rand(2))
    atomic_save({"model": _model().state_dict(), "rng": [state], "config": Config().to_dict(), "epoch": 2,
                 "metrics": {"gap": np.float64(0.25), "n": np.int64(7), "ok": np.bool_(True)},
                 "best_metric": np.float32(0.5)}, tmp_path / "c.pt")
    ckpt = load_checkpoint(tmp_path / "c.pt")
    assert ckpt["metrics"] == {"gap": 0.25, "n": 7, "ok": True} and ckpt["epoch"] == 2
    np.random.seed(0)
    torch.manual_seed(0)
    set_rng_state(ckpt["rng"][0])
    got = (np.random.rand(4), torch.rand(2))
    np.testing.assert_array_equal(got[0], expected[0])
    assert torch.equal(got[1], expected[1])


def test_checkpoint_model_must_be_tensors(tmp_path):
    torch.save({"model": {"w": [1, 2]}}, tmp_path / "m.pt")
    with pytest.raises(DataError, match="'model' must map parameter names to tensors"):
        load_checkpoint(tmp_path / "m.pt")


def test_safetensors_with_bad_metadata_is_a_data_error(tmp_path):
    save_file(_model().state_dict(), str(tmp_path / "w.safetensors"), metadata={"attncluster_model": "{not json"})
    with pytest.raises(DataError, match="w.safetensors: not a readable safetensors file"):
        load_weights(_model(), tmp_path / "w.safetensors")
    good = tmp_path / "g.safetensors"
    save_file(_model().state_dict(), str(good))
    data = good.read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(DataError, match="t.safetensors: not a readable safetensors file"):
        load_weights(_model(), tmp_path / "t.safetensors")


def test_finetune_refuses_weights_that_fit_nothing(tmp_path):
    from attncluster.checkpoint import atomic_save, load_for_finetune

    other = AttentionCluster(feature_dims=DIMS, cluster_nums={m: c + 1 for m, c in CLUSTERS.items()}, num_classes=CLASSES + 1,
                             hidden_sizes=tuple(h + 1 for h in HIDDEN))
    atomic_save({"model": other.state_dict()}, tmp_path / "other.pt")
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=r"other.pt: no tensor fits the model.*--allow-reinit"):
        load_for_finetune(model, tmp_path / "other.pt", log=lambda m: None)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    lines = []
    reinit = load_for_finetune(model, tmp_path / "other.pt", log=lines.append, allow_reinit=True)
    assert reinit == list(model.state_dict()) and len(lines) == 1
    assert f"loaded 0 of {len(before)} tensors" in lines[0]
    # a partly fitting file: one summary line with the loaded count and the re-initialised names
    atomic_save({"model": {k: v for k, v in other.state_dict().items()} | {"logits.bias": torch.zeros(CLASSES),
                                                                          "\x1b[2Jevil\rname": torch.zeros(1)}},
                tmp_path / "part.pt")
    lines.clear()
    load_for_finetune(model, tmp_path / "part.pt", log=lines.append)
    assert len(lines) == 1 and f"loaded 1 of {len(before)} tensors" in lines[0]
    assert "\\x1b[2Jevil\\rname" in lines[0] and "\x1b" not in lines[0]  # a name from the file, escaped
    assert torch.equal(model.state_dict()["logits.bias"], torch.zeros(CLASSES))


# Files written before the state format ("weights_format"): the model had inverted dropout (nn.Dropout, the identity
# at inference), and convert-paddle folded (1 - p) into fc1. They must load with the outputs they had.


def _legacy_converted_state(params, p):
    """What convert-paddle wrote before the state format: fc1 scaled by (1 - p), everything else as now."""
    from attncluster.paddle import convert_paddle_state

    state, kwargs = convert_paddle_state(params, DIMS, drop_rate=p)
    return {**state, "hidden.0.weight": state["hidden.0.weight"] * (1 - p)}, kwargs


def test_pre_format_files_load_with_unchanged_outputs(tmp_path):
    import json

    p = 0.3
    params = paddle_params(seed=21)
    feats = inputs(seed=22)
    expected = paddle_infer(params, feats, drop_rate=p)
    legacy, kwargs = _legacy_converted_state(params, p)
    torch.save({"model": legacy, "model_config": kwargs, "source": "paddle", "source_file": "x.pdparams"},
               tmp_path / "conv.pt")
    save_file(legacy, str(tmp_path / "conv.safetensors"),
              metadata={"attncluster_model": json.dumps(kwargs), "source": "paddle"})
    # a training checkpoint of the old model: its inference output was fc1(x), no dropout factor at all
    torch.manual_seed(23)
    old = AttentionCluster(DIMS, CLUSTERS, CLASSES, drop_rate=0.0, hidden_sizes=HIDDEN)  # p = 0: same function
    old_out = run_torch(old, feats)
    torch.save({"model": old.state_dict(), "epoch": 1, "step": 5, "config": {"model": {"drop_rate": p}},
                "metrics": {}, "best_metric": None}, tmp_path / "epoch_001.pt")

    for name, want in [("conv.pt", expected), ("conv.safetensors", expected), ("epoch_001.pt", old_out)]:
        model = AttentionCluster(DIMS, CLUSTERS, CLASSES, drop_rate=p, hidden_sizes=HIDDEN)
        load_weights(model, tmp_path / name)
        np.testing.assert_allclose(run_torch(model, feats), want, atol=1e-5, rtol=0, err_msg=name)
        # fc1 now holds the reference parameterisation: the raw Paddle weight for converted files
        if name.startswith("conv"):
            np.testing.assert_allclose(model.hidden[0].weight.detach().numpy(), params["fc1.weights"].T, rtol=1e-6)
    # files with the format marker are taken as they are: a re-save of the upgraded weights round-trips
    model = AttentionCluster(DIMS, CLUSTERS, CLASSES, drop_rate=p, hidden_sizes=HIDDEN)
    load_weights(model, tmp_path / "conv.pt")
    atomic_save({"model": model.state_dict(), "config": {"model": {"drop_rate": p}}}, tmp_path / "new.pt")
    assert load_checkpoint(tmp_path / "new.pt")["weights_format"] == 2
    again = AttentionCluster(DIMS, CLUSTERS, CLASSES, drop_rate=p, hidden_sizes=HIDDEN)
    load_weights(again, tmp_path / "new.pt")
    np.testing.assert_array_equal(run_torch(again, feats), run_torch(model, feats))


def test_resuming_a_pre_format_checkpoint_rescales_adams_moments(tmp_path):
    """An old run's Adam state, upgraded, equals the moments of the new model's gradient at the same point."""
    from attncluster.config import load_config
    from attncluster.inference import compute_loss
    from attncluster.train import build_optimizer

    p = 0.5
    cfg = load_config(None, ["train.learning_rate=0.01"])
    feats = {m: torch.from_numpy(x) for m, x in zip(DIMS, inputs(seed=24))}
    labels = (torch.rand(3, CLASSES, generator=torch.Generator().manual_seed(25)) > 0.5).float()
    torch.manual_seed(26)
    old = AttentionCluster(DIMS, CLUSTERS, CLASSES, drop_rate=0.0, hidden_sizes=HIDDEN)
    mask = (torch.rand(3, old.num_features, generator=torch.Generator().manual_seed(27)) > p).float()
    start = {k: v.clone() for k, v in old.state_dict().items()}
    # one step of the old model: inverted dropout, x * mask / (1 - p)
    opt = build_optimizer(old, cfg)
    compute_loss(old.forward_head(old.forward_features(feats) * mask / (1 - p)), labels, "bce").backward()
    opt.step()
    torch.save({"model": old.state_dict(), "optimizer": opt.state_dict(), "epoch": 1, "step": 1,
                "config": {"model": {"drop_rate": p}}}, tmp_path / "last.pt")

    ckpt = load_checkpoint(tmp_path / "last.pt")
    # the new model at the old model's starting point (fc1 / (1 - p)), with the same mask and no rescale
    new = AttentionCluster(DIMS, CLUSTERS, CLASSES, drop_rate=p, hidden_sizes=HIDDEN).train()
    new.load_state_dict({**start, "hidden.0.weight": start["hidden.0.weight"] / (1 - p)})
    new.dropout.sample_mask = lambda x: mask
    compute_loss(new(feats), labels, "bce").backward()
    g = new.hidden[0].weight.grad
    index = list(new.state_dict()).index("hidden.0.weight")
    moments = ckpt["optimizer"]["state"][index]
    torch.testing.assert_close(moments["exp_avg"], 0.1 * g, atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(moments["exp_avg_sq"], 0.001 * g * g, atol=1e-9, rtol=1e-4)
    other = ckpt["optimizer"]["state"][index + 1]  # fc1.bias: its gradient does not depend on the parameterisation
    torch.testing.assert_close(other["exp_avg"], 0.1 * new.hidden[0].bias.grad, atol=1e-7, rtol=1e-5)
    # and the upgraded weights give the old model's outputs, then load into train.py's optimizer
    new.load_state_dict(ckpt["model"])
    old.eval()
    np.testing.assert_allclose(run_torch(new, [x.numpy() for x in feats.values()]),
                               run_torch(old, [x.numpy() for x in feats.values()]), atol=1e-5, rtol=0)
    build_optimizer(new, cfg).load_state_dict(ckpt["optimizer"])


def test_weights_and_paddle_do_not_reach_up_to_the_training_state():
    """The split (the whole package's acyclic import graph is tests/test_imports.py): checkpoint reads through
    weights, and neither weights nor paddle imports checkpoint, rundir or train."""
    from test_imports import import_graph

    graph = import_graph()
    assert "attncluster.weights" in graph["attncluster.checkpoint"]
    up = {"attncluster.checkpoint", "attncluster.rundir", "attncluster.train"}
    assert not graph["attncluster.weights"] & up and not graph["attncluster.paddle"] & up
