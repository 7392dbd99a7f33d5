"""Paddle .pdparams -> AttentionCluster, checked against a numpy forward with Paddle's own semantics."""

from __future__ import annotations

import json
import pickle
import struct
from collections import OrderedDict

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from attncluster.errors import ConfigError, DataError
from attncluster.model import STATE_FORMAT, AttentionCluster, count_parameters
from attncluster.paddle import (
    build_model_from_paddle,
    convert_paddle,
    convert_paddle_state,
    load_paddle_state,
)

DIMS = {"rgb": 16, "audio": 8}
CLUSTERS = {"rgb": 4, "audio": 3}
HIDDEN = (12, 10)
CLASSES = 7


def paddle_params(dims=DIMS, clusters=CLUSTERS, hidden=HIDDEN, classes=CLASSES, seed=0) -> dict[str, np.ndarray]:
    """Arrays with the reference's names, shapes and layouts (conv [C, F, 1, 1], fc [in, out])."""
    rng = np.random.default_rng(seed)
    p: dict[str, np.ndarray] = {}
    width = 0
    for i, m in enumerate(dims):
        c, f = clusters[m], dims[m]
        p[f"satt{i}.conv.weight"] = rng.normal(0, 0.5, (c, f, 1, 1)).astype(np.float32)
        p[f"satt{i}.conv.bias"] = rng.normal(0, 0.5, c).astype(np.float32)
        p[f"satt{i}.shift_w"] = rng.normal(0, 1, c).astype(np.float32)
        p[f"satt{i}.shift_b"] = rng.normal(0, 1, c).astype(np.float32)
        width += c * f
    sizes = [width, *hidden, classes]
    for name, i, o in zip(["fc1", "fc2", "logistic"], sizes[:-1], sizes[1:]):
        p[f"{name}.weights"] = rng.normal(0, 1 / np.sqrt(i), (i, o)).astype(np.float32)
        p[f"{name}.bias"] = rng.normal(0, 0.3, o).astype(np.float32)
    return p


def paddle_infer(p: dict[str, np.ndarray], feats: list[np.ndarray], drop_rate: float = 0.5,
                 mask: np.ndarray | None = None) -> np.ndarray:
    """The reference's inference forward, written from its spec in float64 numpy on the Paddle arrays.

    With a keep ``mask`` (N, D), its training forward instead: downgrade_in_infer multiplies by the mask, unscaled.
    """
    outs = []
    for i, x in enumerate(feats):
        x = x.astype(np.float64)  # (N, L, F)
        w = p[f"satt{i}.conv.weight"].astype(np.float64)[:, :, 0, 0]  # 1x1 conv: (C, F)
        c = w.shape[0]
        score = np.einsum("cf,nlf->ncl", w, x) + p[f"satt{i}.conv.bias"][None, :, None]
        a = np.exp(score - score.max(axis=2, keepdims=True))
        a = a / a.sum(axis=2, keepdims=True)  # softmax over L
        v = np.einsum("ncl,nlf->ncf", a, x)
        v = v * p[f"satt{i}.shift_w"][None, :, None] + p[f"satt{i}.shift_b"][None, :, None]
        v = v / np.sqrt((v**2).sum(axis=2, keepdims=True) + 1e-12)  # l2_normalize, eps inside the sqrt
        outs.append((v / np.sqrt(c)).reshape(len(x), -1))  # concat over c: index c * F + f
    h = np.concatenate(outs, axis=1)
    h = h * mask if mask is not None else h * (1 - drop_rate)  # dropout, downgrade_in_infer
    h = np.tanh(h @ p["fc1.weights"] + p["fc1.bias"])
    h = np.tanh(h @ p["fc2.weights"] + p["fc2.bias"])
    return h @ p["logistic.weights"] + p["logistic.bias"]


def inputs(dims=DIMS, n=3, length=6, seed=1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 2, (n, length, f)).astype(np.float32) for f in dims.values()]


def run_torch(model: AttentionCluster, feats: list[np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return model.eval()({m: torch.from_numpy(x) for m, x in zip(model.feature_dims, feats)}).double().numpy()


def _py2_str(b: bytes) -> bytes:  # a Python 2 str: SHORT_BINSTRING / BINSTRING, decoded with encoding=...
    return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<I", len(b)) + b)


def py2_pickle(params: dict[str, np.ndarray]) -> bytes:
    """The protocol-2 pickle Python 2 + numpy 1 writes (Paddle 1.x fluid.save): str keys and raw array data."""
    out = [b"\x80\x02}"]
    for name, a in params.items():
        out.append(_py2_str(name.encode()))
        out.append(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + _py2_str(b"b") + b"\x87R(")
        out.append(b"K\x01(" + b"".join(b"J" + struct.pack("<i", d) for d in a.shape) + b"t")
        out.append(b"cnumpy\ndtype\n" + _py2_str(b"f4") + b"K\x00K\x01\x87R(K\x03" + _py2_str(b"<"))
        out.append(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89")
        out.append(_py2_str(np.ascontiguousarray(a, "<f4").tobytes()) + b"tbs")
    return b"".join(out) + b"."


def write(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_python2_pickle_needs_latin1():
    data = py2_pickle(paddle_params())
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(data)  # default ASCII decoding fails on the raw float bytes


class _PaddleTensor:
    """Pickles the way paddle.save's reduce_varbase does: as (tensor name, array) via builtins.tuple."""

    def __init__(self, name: str, data: np.ndarray) -> None:
        self.name, self.data = name, data

    def __reduce__(self):
        return (tuple, ((self.name, self.data),))


@pytest.mark.parametrize("variant", ["py2", "py3-protocol2", "bytes-keys", "paddle2", "paddle2-tensors"])
def test_converted_model_matches_paddle_inference(tmp_path, variant):
    p = paddle_params()
    if variant == "py2":
        data = py2_pickle(p)
    elif variant == "py3-protocol2":
        data = pickle.dumps(p, protocol=2)
    elif variant == "bytes-keys":
        data = pickle.dumps({k.encode(): v for k, v in p.items()}, protocol=2)
    elif variant == "paddle2":  # paddle.save of a state dict: an extra structured-name table, protocol 4
        table = {f"layer.{k}": k for k in p}
        data = pickle.dumps(OrderedDict([*p.items(), ("StructuredToParameterName@@", table)]), protocol=4)
    else:
        data = pickle.dumps({k: _PaddleTensor(f"generated_tensor_{i}", v) for i, (k, v) in enumerate(p.items())})
    path = write(tmp_path, "AttentionCluster.pdparams", data)

    loaded = load_paddle_state(path)
    assert list(loaded) == list(p)
    for k in p:
        assert loaded[k].dtype == np.float32 and np.array_equal(loaded[k], p[k]), k

    model = build_model_from_paddle(path, feature_dims=DIMS)
    assert not model.training
    assert model.cluster_nums == CLUSTERS and model.hidden_sizes == HIDDEN and model.num_classes == CLASSES
    feats = inputs()
    np.testing.assert_allclose(run_torch(model, feats), paddle_infer(p, feats), atol=1e-5, rtol=0)


def test_converted_weights_are_the_reference_own_in_inference_and_training(tmp_path):
    p = paddle_params(seed=2)
    feats = inputs(seed=3)
    state, kwargs = convert_paddle_state(p, DIMS, drop_rate=0.2)
    assert kwargs == {
        "feature_dims": DIMS,
        "cluster_nums": CLUSTERS,
        "num_classes": CLASSES,
        "hidden_sizes": list(HIDDEN),
        "drop_rate": 0.2,
    }
    # every tensor is the raw reference value, only re-laid out: no dropout factor folded into fc1
    np.testing.assert_array_equal(state["hidden.0.weight"].numpy(), p["fc1.weights"].T)
    np.testing.assert_array_equal(state["hidden.1.weight"].numpy(), p["fc2.weights"].T)
    np.testing.assert_array_equal(state["logits.weight"].numpy(), p["logistic.weights"].T)
    np.testing.assert_array_equal(state["attention.rgb.score.weight"].numpy(), p["satt0.conv.weight"][:, :, 0, 0])
    for k in ("fc1.bias", "fc2.bias", "logistic.bias"):
        np.testing.assert_array_equal(state[{"fc1": "hidden.0", "fc2": "hidden.1"}.get(k[:3], "logits") + ".bias"],
                                      p[k])
    model = AttentionCluster(**kwargs)
    model.load_state_dict(state)
    np.testing.assert_allclose(run_torch(model, feats), paddle_infer(p, feats, drop_rate=0.2), atol=1e-5, rtol=0)
    # training forward, with one fixed dropout mask: the reference's x * mask, unscaled
    mask = (np.random.default_rng(4).random((3, model.num_features)) > 0.2).astype(np.float32)
    model.dropout.sample_mask = lambda x: torch.from_numpy(mask)
    with torch.no_grad():
        train_out = model.train()({m: torch.from_numpy(x) for m, x in zip(DIMS, feats)}).double().numpy()
    np.testing.assert_allclose(train_out, paddle_infer(p, feats, mask=mask), atol=1e-5, rtol=0)
    # the dropout factor matters: inference at 0.2 is far from inference without it
    assert np.abs(paddle_infer(p, feats, drop_rate=0.0) - paddle_infer(p, feats, drop_rate=0.2)).max() > 1e-2


def test_conversion_leaves_the_input_arrays_alone():
    p = paddle_params(hidden=(1, 5))  # fc1 [D, 1]: its transpose is already contiguous, so no copy is forced
    before = {k: v.copy() for k, v in p.items()}
    state, _ = convert_paddle_state(p, DIMS)
    for k in p:
        np.testing.assert_array_equal(p[k], before[k], err_msg=k)
    np.testing.assert_array_equal(state["hidden.0.weight"].numpy(), before["fc1.weights"].T)


def test_three_modalities_in_feature_dims_order():
    dims = {"audio": 8, "flow": 10, "rgb": 16}
    clusters = {"audio": 2, "flow": 3, "rgb": 4}
    p = paddle_params(dims, clusters, hidden=(9, 5), classes=4, seed=4)
    state, kwargs = convert_paddle_state(p, dims)
    assert kwargs["cluster_nums"] == clusters and list(kwargs["feature_dims"]) == ["audio", "flow", "rgb"]
    np.testing.assert_array_equal(state["attention.flow.score.weight"].numpy(), p["satt1.conv.weight"][:, :, 0, 0])
    model = AttentionCluster(**kwargs)
    model.load_state_dict(state)
    feats = inputs(dims, seed=5)
    np.testing.assert_allclose(run_torch(model, feats), paddle_infer(p, feats), atol=1e-5, rtol=0)


def test_name_problems_are_one_error_listing_all():
    p = paddle_params()
    del p["satt1.shift_b"]
    p["fc2.bias"] = p["fc2.bias"][:-1]
    p["satt0.conv.weight"] = p["satt0.conv.weight"][:, :15]
    p["global_step"] = np.zeros(1, np.float32)
    with pytest.raises(ConfigError) as err:
        convert_paddle_state(p, DIMS)
    msg = str(err.value)
    assert "\n" not in msg
    assert "missing satt1.shift_b [3]" in msg
    assert "unexpected global_step [1]" in msg
    assert "fc2.bias expected [10] got [9]" in msg
    assert "satt0.conv.weight expected [4, 16, 1, 1] got [4, 15, 1, 1]" in msg


def test_wrong_feature_dims_or_order_is_reported():
    p = paddle_params()
    with pytest.raises(ConfigError, match=r"satt0\.conv\.weight expected \[4, 8, 1, 1\] got \[4, 16, 1, 1\]"):
        convert_paddle_state(p, {"audio": 8, "rgb": 16})
    with pytest.raises(ConfigError, match=r"missing satt2\.conv\.weight \[C2, 4, 1, 1\]"):
        convert_paddle_state(p, {"rgb": 16, "audio": 8, "flow": 4})


def test_bad_drop_rate_and_empty_dims():
    with pytest.raises(ConfigError, match="drop_rate"):
        convert_paddle_state(paddle_params(), DIMS, drop_rate=1.0)
    with pytest.raises(ConfigError, match="feature_dims"):
        convert_paddle_state(paddle_params(), {})


def test_bad_files_are_data_errors_naming_the_file(tmp_path):
    path = write(tmp_path, "combined_params.bin", b"\x00\x01\x02garbage that is not a pickle")
    with pytest.raises(DataError, match="combined_params.bin"):
        load_paddle_state(path)
    with pytest.raises(DataError, match="nowhere.pdparams"):
        load_paddle_state(tmp_path / "nowhere.pdparams")
    with pytest.raises(DataError, match="list.pdparams"):
        load_paddle_state(write(tmp_path, "list.pdparams", pickle.dumps([1, 2], protocol=2)))
    with pytest.raises(DataError, match="truncated.pdparams"):
        load_paddle_state(write(tmp_path, "truncated.pdparams", pickle.dumps(paddle_params(), protocol=2)[:500]))
    with pytest.raises(DataError, match="strings.pdparams"):
        load_paddle_state(write(tmp_path, "strings.pdparams", pickle.dumps({"fc1.bias": "x"}, protocol=2)))


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        import os

        return (os.mkdir, (str(self.target),))


def test_malicious_pickle_runs_no_code(tmp_path):
    target = tmp_path / "pwned"
    data = pickle.dumps({"fc1.bias": _Payload(target)}, protocol=2)
    pickle.loads(data)  # an unrestricted unpickler would run it
    assert target.exists()
    target.rmdir()
    with pytest.raises(DataError, match="evil.pdparams.*mkdir"):
        load_paddle_state(write(tmp_path, "evil.pdparams", data))
    assert not target.exists()


def test_prefix_without_suffix_is_accepted(tmp_path):
    p = paddle_params()
    write(tmp_path, "AttentionCluster.pdparams", pickle.dumps(p, protocol=2))
    assert list(load_paddle_state(tmp_path / "AttentionCluster")) == list(p)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_written_files_load_back(tmp_path, suffix):
    p = paddle_params(seed=6)
    src = write(tmp_path, "w.pdparams", pickle.dumps(p, protocol=2))
    out = tmp_path / "out" / f"converted{suffix}"
    kwargs = convert_paddle(src, out, feature_dims=DIMS)
    assert kwargs["cluster_nums"] == CLUSTERS
    assert sorted(x.name for x in out.parent.iterdir()) == [out.name]  # no temporary left behind
    if suffix == ".safetensors":
        state = load_file(out)
        with safe_open(out, "pt") as f:
            config = json.loads(f.metadata()["attncluster_model"])
            assert f.metadata()["weights_format"] == str(STATE_FORMAT)
    else:
        ckpt = torch.load(out, weights_only=True)
        assert ckpt["source"] == "paddle" and ckpt["source_file"] == str(src)
        assert ckpt["weights_format"] == STATE_FORMAT
        state, config = ckpt["model"], ckpt["model_config"]
    assert config == kwargs
    model = AttentionCluster(**config)
    model.load_state_dict(state, strict=True)
    feats = inputs(seed=7)
    expected = run_torch(build_model_from_paddle(src, DIMS), feats)
    np.testing.assert_array_equal(run_torch(model, feats), expected)
    np.testing.assert_allclose(expected, paddle_infer(p, feats), atol=1e-5, rtol=0)


def test_youtube8m_shapes_convert_to_full_model(tmp_path):
    rng = np.random.default_rng(8)
    shapes = {
        "satt0.conv.weight": (32, 1024, 1, 1), "satt0.conv.bias": (32,),
        "satt0.shift_w": (32,), "satt0.shift_b": (32,),
        "satt1.conv.weight": (32, 128, 1, 1), "satt1.conv.bias": (32,),
        "satt1.shift_w": (32,), "satt1.shift_b": (32,),
        "fc1.weights": (36864, 1024), "fc1.bias": (1024,),
        "fc2.weights": (1024, 4096), "fc2.bias": (4096,),
        "logistic.weights": (4096, 3862), "logistic.bias": (3862,),
    }  # fmt: skip
    p = {k: rng.standard_normal(s, dtype=np.float32) for k, s in shapes.items()}
    assert sum(a.size for a in p.values()) == 57_807_830
    path = tmp_path / "AttentionCluster.pdparams"
    with open(path, "wb") as f:
        pickle.dump(p, f, protocol=4)  # protocol 2 is covered above at small size; 4 is fast for 220 MiB
    del p
    model = build_model_from_paddle(path)  # default feature_dims: rgb 1024, audio 128
    assert count_parameters(model) == 57_807_830
    assert model.cluster_nums == {"rgb": 32, "audio": 32}
    assert model.hidden_sizes == (1024, 4096) and model.num_classes == 3862
    src = load_paddle_state(path)
    assert model.hidden[0].weight[5, 36000].item() == src["fc1.weights"][36000, 5]
    assert model.logits.weight[3861, 7].item() == src["logistic.weights"][7, 3861]
    assert torch.equal(model.attention["audio"].score.weight, torch.from_numpy(src["satt1.conv.weight"][:, :, 0, 0]))
