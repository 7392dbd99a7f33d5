"""Checkpoints: atomic writes, and --weights accepting every supported weights file."""

import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from attncluster.checkpoint import atomic_save, load_checkpoint, load_weights
from attncluster.errors import ConfigError, DataError
from attncluster.model import AttentionCluster
from attncluster.paddle import convert_paddle
from test_paddle import CLASSES, CLUSTERS, DIMS, HIDDEN, inputs, paddle_infer, paddle_params, run_torch


class Explodes:
    def __reduce__(self):
        raise RuntimeError("disk full")


def test_atomic_save_never_leaves_a_partial_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_save({"model": {"w": torch.ones(3)}}, path)
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save({"model": {"w": torch.zeros(3)}, "bad": Explodes()}, path)
    assert path.read_bytes() == before  # the old complete checkpoint is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left behind
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))


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
