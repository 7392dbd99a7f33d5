"""AttentionCluster against a plain per-unit reference loop, its gradients, training step, parameter count and
initialisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attncluster.model import AttentionCluster, ShiftingAttention, count_parameters


def reference_forward(model: AttentionCluster, features: dict[str, torch.Tensor],
                      params: dict[str, torch.Tensor] | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The spec's math one sample, one modality and one attention unit at a time, in float64.

    Dropout is Paddle's downgrade_in_infer: ``h * mask`` (no rescale) when a training ``mask`` (N, D) is given, else
    ``h * (1 - p)`` (inference). ``params`` (default: the model's, detached) may require grad.
    """
    p = params if params is not None else {k: v.detach().double() for k, v in model.state_dict().items()}
    n = next(iter(features.values())).shape[0]
    rows = []
    for i in range(n):
        parts = []
        for m in model.feature_dims:  # the model's modality order, not the input dict's
            x = features[m][i].double()  # (L, F)
            w, b = p[f"attention.{m}.score.weight"], p[f"attention.{m}.score.bias"]
            sw, sb = p[f"attention.{m}.shift_w"], p[f"attention.{m}.shift_b"]
            num_c = w.shape[0]
            for c in range(num_c):
                score = x @ w[c] + b[c]  # (L,)
                e = torch.exp(score - score.max())
                a = e / e.sum()
                v = (a[:, None] * x).sum(0)  # (F,)
                v = v * sw[c] + sb[c]
                v = v / torch.sqrt((v * v).sum() + 1e-12)
                parts.append(v / math.sqrt(num_c))
        h = torch.cat(parts)
        h = h * mask[i] if mask is not None else h * (1.0 - model.drop_rate)
        for j in range(len(model.hidden_sizes)):
            h = torch.tanh(p[f"hidden.{j}.weight"] @ h + p[f"hidden.{j}.bias"])
        rows.append(p["logits.weight"] @ h + p["logits.bias"])
    return torch.stack(rows)


def make_inputs(dims: dict[str, int], n: int = 3, length: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(n, length, f, generator=g) * 2 for m, f in dims.items()}


@pytest.mark.parametrize(
    "dims, clusters",
    [
        ({"rgb": 12, "audio": 5}, 4),
        ({"rgb": 12, "flow": 9, "audio": 5}, {"audio": 2, "rgb": 3, "flow": 5}),
    ],
)
def test_forward_matches_per_unit_loop(dims, clusters):
    torch.manual_seed(0)
    model = AttentionCluster(dims, clusters, num_classes=6, hidden_sizes=(11, 8)).eval()
    feats = make_inputs(dims)
    feats = dict(reversed(list(feats.items())))  # input order must not matter
    with torch.no_grad():
        out = model(feats)
    ref = reference_forward(model, feats)
    assert out.shape == (3, 6)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=0)


def test_forward_matches_loop_with_large_shift_and_no_hidden_layers():
    torch.manual_seed(1)
    model = AttentionCluster({"audio": 6}, 3, num_classes=4, hidden_sizes=()).eval()
    with torch.no_grad():
        for unit in model.attention.values():
            unit.shift_b.mul_(10.0)  # the shifting bias dominates: tests it is added to every feature
    feats = make_inputs({"audio": 6}, n=2, length=5, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(model(feats).double(), reference_forward(model, feats), atol=1e-5, rtol=0)


def test_attention_weights_are_softmax_over_time():
    torch.manual_seed(2)
    unit = ShiftingAttention(feature_dim=5, num_clusters=3)
    x = torch.randn(2, 9, 5)
    a = unit.attention(x)
    assert a.shape == (2, 9, 3)
    torch.testing.assert_close(a.sum(dim=1), torch.ones(2, 3))
    with torch.no_grad():
        expected = torch.softmax(torch.einsum("nlf,cf->ncl", x, unit.score.weight) + unit.score.bias[:, None], -1)
    torch.testing.assert_close(a, expected.transpose(1, 2))


def test_cluster_outputs_are_unit_norm_over_sqrt_c():
    torch.manual_seed(3)
    unit = ShiftingAttention(feature_dim=8, num_clusters=4)
    with torch.no_grad():
        v = unit(torch.randn(5, 6, 8)).view(5, 4, 8)
    torch.testing.assert_close(v.norm(dim=-1), torch.full((5, 4), 0.5))  # 1 / sqrt(4)


def test_score_bias_does_not_change_outputs():
    # A per-unit constant added to all L scores cancels in the softmax: the reference's conv bias is inert.
    torch.manual_seed(4)
    model = AttentionCluster({"rgb": 6, "audio": 4}, 3, num_classes=5, hidden_sizes=(7,)).eval()
    feats = make_inputs({"rgb": 6, "audio": 4})
    with torch.no_grad():
        before = model(feats)
        for unit in model.attention.values():
            unit.score.bias.add_(torch.randn(3) * 5)
        after = model(feats)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)


def test_gradients_reach_every_parameter():
    torch.manual_seed(5)
    dims = {"rgb": 10, "flow": 7, "audio": 4}
    model = AttentionCluster(dims, {"rgb": 3, "flow": 2, "audio": 4}, num_classes=6, hidden_sizes=(9, 8)).train()
    feats = make_inputs(dims, n=4)
    labels = (torch.rand(4, 6) > 0.5).float()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(feats), labels, reduction="sum")
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        if name.endswith("score.bias"):
            # softmax over time is shift-invariant, so this gradient is zero up to rounding
            assert param.grad.abs().max() < 1e-5, name
        elif name.endswith(("shift_w", "shift_b")):
            assert (param.grad != 0).all(), name  # every unit's scalar gets its own gradient
        else:
            assert param.grad.abs().sum() > 0, name
    # and every unit's score row gets gradient
    for m, unit in model.attention.items():
        assert (unit.score.weight.grad.abs().sum(dim=1) > 0).all(), m


def test_youtube8m_parameter_count():
    model = AttentionCluster()  # rgb 1024 + audio 128, C = 32, hidden (1024, 4096), 3862 classes
    assert count_parameters(model) == 57_807_830
    assert model.num_features == 32 * 1024 + 32 * 128 == 36864
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["attention.rgb.score.weight"] == (32, 1024)
    assert shapes["hidden.0.weight"] == (1024, 36864)
    assert shapes["hidden.1.weight"] == (4096, 1024)
    assert shapes["logits.weight"] == (3862, 4096)
    assert len(shapes) == 14


def _assert_normal(t: torch.Tensor, std: float, rel: float = 0.03) -> None:
    t = t.detach().double().flatten()
    assert abs(t.mean().item()) < 4 * std / math.sqrt(t.numel())
    assert t.std().item() == pytest.approx(std, rel=rel)
    # a normal, not a uniform of the same std (whose max is sqrt(3) std): a visible tail past 2 std
    assert ((t.abs() > 2 * std).double().mean().item()) == pytest.approx(0.0455, abs=0.02)


def _assert_uniform(t: torch.Tensor, bound: float) -> None:
    t = t.detach().double().flatten()
    assert t.abs().max().item() <= bound
    assert t.abs().max().item() > 0.97 * bound  # fills the range, not something narrower
    assert t.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.08)


def test_attention_init_statistics():
    torch.manual_seed(6)
    f, c = 96, 2048
    unit = ShiftingAttention(feature_dim=f, num_clusters=c)
    _assert_normal(unit.score.weight, math.sqrt(2 / f))  # 196k samples
    _assert_uniform(unit.score.bias, math.sqrt(6 / c))
    _assert_normal(unit.shift_w, c**-0.25, rel=0.08)
    _assert_normal(unit.shift_b, c**-0.25, rel=0.08)
    assert not torch.equal(unit.shift_w, unit.shift_b)


def test_head_init_statistics():
    torch.manual_seed(7)
    model = AttentionCluster({"rgb": 64}, 16, num_classes=3000, hidden_sizes=(512, 1024))
    fc1, fc2, logits = model.hidden[0], model.hidden[1], model.logits
    assert fc1.in_features == 1024
    for fc in (fc1, fc2, logits):
        _assert_normal(fc.weight, math.sqrt(2 / fc.in_features))
    for fc in (fc1, fc2):
        _assert_uniform(fc.bias, math.sqrt(6 / fc.out_features))
    _assert_normal(logits.bias, math.sqrt(2 / 3000), rel=0.08)  # normal, unlike the hidden biases


def test_forward_features_and_head_compose():
    torch.manual_seed(8)
    dims = {"rgb": 12, "flow": 9, "audio": 5}
    model = AttentionCluster(dims, {"rgb": 3, "flow": 2, "audio": 4}, num_classes=6, hidden_sizes=(11,)).eval()
    feats = make_inputs(dims, n=4)
    with torch.no_grad():
        z = model.forward_features(feats)
        assert z.shape == (4, 3 * 12 + 2 * 9 + 4 * 5) == (4, model.num_features)
        # cluster-major, modalities in order: the rgb block is exactly the rgb unit's output
        torch.testing.assert_close(z[:, :36], model.attention["rgb"](feats["rgb"]))
        torch.testing.assert_close(z[:, 36:54], model.attention["flow"](feats["flow"]))
        torch.testing.assert_close(model.forward_head(z), model(feats))
    model.train()
    torch.manual_seed(9)
    a = model.forward_head(model.forward_features(feats))
    torch.manual_seed(9)
    b = model(feats)
    torch.testing.assert_close(a, b)


def test_training_step_follows_the_reference_dynamics():
    """Train forward with a fixed mask, backward and one Adam step, then eval, against Paddle semantics by hand."""
    from attncluster.config import load_config
    from attncluster.inference import compute_loss
    from attncluster.train import build_optimizer

    torch.manual_seed(11)
    dims, p_drop, lr = {"rgb": 6, "audio": 4}, 0.25, 1e-2
    model = AttentionCluster(dims, 3, num_classes=5, drop_rate=p_drop, hidden_sizes=(7, 6)).train()
    feats = make_inputs(dims, n=4, length=5, seed=12)
    labels = (torch.rand(4, 5, generator=torch.Generator().manual_seed(13)) > 0.5).float()
    mask = (torch.rand(4, model.num_features, generator=torch.Generator().manual_seed(14)) > p_drop).float()
    model.dropout.sample_mask = lambda x: mask.to(x.dtype)  # the one random draw, fixed
    start = {k: v.detach().double().clone().requires_grad_() for k, v in model.state_dict().items()}

    # reference: logits with the mask and NO 1 / (1 - p) rescale, BCE summed over classes and averaged over videos
    ref_logits = reference_forward(model, feats, start, mask.double())
    ref_loss = torch.nn.functional.binary_cross_entropy_with_logits(ref_logits, labels.double(), reduction="sum") / 4
    grads = dict(zip(start, torch.autograd.grad(ref_loss, list(start.values()))))
    # Adam, first step from zero moments (beta1 0.9, beta2 0.999, eps 1e-8), written out
    after = {}
    for k, w in start.items():
        g = grads[k]
        m_hat, v_hat = (0.1 * g) / (1 - 0.9), (0.001 * g * g) / (1 - 0.999)
        after[k] = w.detach() - lr * m_hat / (v_hat.sqrt() + 1e-8)

    cfg = load_config(None, [f"train.learning_rate={lr}"])
    optimizer = build_optimizer(model, cfg)
    loss = compute_loss(model(feats), labels, "bce")
    torch.testing.assert_close(loss.double(), ref_loss.detach(), atol=1e-5, rtol=1e-6)
    optimizer.zero_grad()
    loss.backward()
    fc1 = model.hidden[0].weight.grad.double()
    torch.testing.assert_close(fc1, grads["hidden.0.weight"], atol=1e-6, rtol=1e-4)  # the reference's fc1 gradient
    optimizer.step()
    for k, v in model.state_dict().items():
        if k.endswith("score.bias"):  # its gradient is zero up to rounding, so Adam's step on it is noise
            continue
        torch.testing.assert_close(v.double(), after[k], atol=2e-6, rtol=0, msg=k)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(feats).double(), reference_forward(model, feats), atol=1e-5, rtol=0)


def test_downgrade_dropout_masks_without_rescale_and_scales_at_inference():
    torch.manual_seed(15)
    model = AttentionCluster({"rgb": 8}, 4, num_classes=3, drop_rate=0.3, hidden_sizes=(6,))
    x = torch.rand(64, 32) + 1.0  # positive: a dropped entry is the only way to get 0
    model.train()
    y = model.dropout(x)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept])  # kept entries are unscaled (nn.Dropout would give x / 0.7)
    assert 0.6 < kept.double().mean().item() < 0.8
    model.eval()
    torch.testing.assert_close(model.dropout(x), x * 0.7)
    model.dropout.p = 0.0
    assert model.dropout(x) is x


def test_dropout_only_in_train_mode():
    torch.manual_seed(10)
    model = AttentionCluster({"rgb": 8}, 4, num_classes=3, drop_rate=0.5, hidden_sizes=(6,))
    feats = make_inputs({"rgb": 8})
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(feats), model(feats))
        model.train()
        assert not torch.equal(model(feats), model(feats))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="audio"):
        AttentionCluster({"rgb": 8, "audio": 4}, {"rgb": 2})
    for p in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="drop_rate"):
            AttentionCluster({"rgb": 8}, 2, drop_rate=p)
    with pytest.raises(ValueError, match="at least one modality"):
        AttentionCluster({}, 2)
    AttentionCluster({"rgb": 8}, 2, num_classes=3, drop_rate=0.0, hidden_sizes=(4,))  # 0 is allowed


def test_missing_input_modality_names_it():
    model = AttentionCluster({"rgb": 8, "audio": 4}, 2, num_classes=3, hidden_sizes=(4,))
    with pytest.raises(KeyError, match="audio"):
        model({"rgb": torch.randn(1, 3, 8)})


# --- the ablation switches: model.attention (fc1 / fc2) and model.shifting ------------------------------------------


def plain_cluster(x: torch.Tensor, p: dict[str, torch.Tensor], prefix: str, attention: str, shifting: bool) -> torch.Tensor:
    """One modality's cluster features by hand, a loop over samples and units in float64: (N, L, F) -> (N, C * F)."""
    w, b = p[f"{prefix}.score.weight"], p[f"{prefix}.score.bias"]
    rows = []
    for xi in x.double():  # (L, F)
        parts = []
        for c in range(w.shape[0]):
            if attention == "fc2":  # two layers: w2 . tanh(W1 x + b1) + b2
                h = torch.tanh(xi @ p[f"{prefix}.score_hidden.weight"].T + p[f"{prefix}.score_hidden.bias"])
                score = h @ w[c] + b[c]
            else:
                score = xi @ w[c] + b[c]
            a = torch.exp(score - score.max())
            a = a / a.sum()  # (L,) softmax over the frames
            v = torch.einsum("l,lf->f", a, xi)
            if shifting:
                v = v * p[f"{prefix}.shift_w"][c] + p[f"{prefix}.shift_b"][c]
                v = v / torch.sqrt((v * v).sum() + 1e-12) / math.sqrt(w.shape[0])
            parts.append(v)
        rows.append(torch.cat(parts))
    return torch.stack(rows)


@pytest.mark.parametrize("attention", ["fc1", "fc2"])
@pytest.mark.parametrize("shifting", [True, False])
def test_switches_match_a_plain_loop(attention, shifting):
    torch.manual_seed(11)
    dims = {"rgb": 12, "audio": 5}
    model = AttentionCluster(dims, {"rgb": 3, "audio": 2}, num_classes=6, hidden_sizes=(7,), shifting=shifting,
                             attention=attention).eval()
    feats = make_inputs(dims, n=3, length=6)
    p = {k: v.detach().double() for k, v in model.state_dict().items()}
    h = torch.cat([plain_cluster(feats[m], p, f"attention.{m}", attention, shifting) for m in dims], dim=1)
    h = torch.tanh((h * 0.5) @ p["hidden.0.weight"].T + p["hidden.0.bias"])  # inference dropout: x (1 - p)
    ref = h @ p["logits.weight"].T + p["logits.bias"]
    with torch.no_grad():
        torch.testing.assert_close(model(feats).double(), ref, atol=1e-5, rtol=0)
        a = model.attention_weights(feats)["rgb"]  # (N, L, C): explain's weights take the same scoring path
    w = p["attention.rgb.score.weight"]
    x = feats["rgb"].double()
    hid = torch.tanh(x @ p["attention.rgb.score_hidden.weight"].T + p["attention.rgb.score_hidden.bias"]) \
        if attention == "fc2" else x
    torch.testing.assert_close(a.double(), (hid @ w.T + p["attention.rgb.score.bias"]).softmax(dim=1), atol=1e-6, rtol=0)


def test_switch_parameters_and_defaults():
    base = AttentionCluster({"rgb": 12}, 4, num_classes=3, hidden_sizes=())
    assert base.shifting is True and base.attention_kind == "fc1"  # the reference by default
    shapes = {k: tuple(v.shape) for k, v in base.state_dict().items()}
    assert shapes == {"attention.rgb.score.weight": (4, 12), "attention.rgb.score.bias": (4,),
                      "attention.rgb.shift_w": (4,), "attention.rgb.shift_b": (4,), "logits.weight": (3, 48),
                      "logits.bias": (3,)}  # unchanged: every existing file still loads strictly
    fc2 = AttentionCluster({"rgb": 12}, 4, num_classes=3, hidden_sizes=(), attention="fc2", shifting=False)
    shapes = {k: tuple(v.shape) for k, v in fc2.state_dict().items()}
    assert shapes == {"attention.rgb.score_hidden.weight": (128, 12), "attention.rgb.score_hidden.bias": (128,),
                      "attention.rgb.score.weight": (4, 128), "attention.rgb.score.bias": (4,),
                      "logits.weight": (3, 48), "logits.bias": (3,)}  # no shift scalars without shifting
    # the default model draws its initial weights in the same order as before: same seed, same numbers
    torch.manual_seed(3)
    a = AttentionCluster({"rgb": 12}, 4, num_classes=3, hidden_sizes=(5,))
    torch.manual_seed(3)
    b = AttentionCluster({"rgb": 12}, 4, num_classes=3, hidden_sizes=(5,), shifting=True, attention="fc1")
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    with pytest.raises(ValueError, match="fc3"):
        AttentionCluster({"rgb": 12}, 4, num_classes=3, attention="fc3")


def test_no_shift_output_is_the_plain_attention_pooled_features():
    torch.manual_seed(12)
    unit = ShiftingAttention(5, 3, shifting=False).eval()
    x = torch.randn(2, 4, 5)
    with torch.no_grad():
        unit.score.weight.zero_()
        unit.score.bias.zero_()
        out = unit(x).view(2, 3, 5)
    for c in range(3):  # zero scores: every unit is the mean over frames, not rescaled or normalised
        torch.testing.assert_close(out[:, c], x.mean(dim=1))


SMALL = ["model.feature_dims={rgb: 16, audio: 4}", "model.cluster_nums=3", "model.num_classes=5",
         "model.hidden_sizes=[8]", "model.seg_num=6"]


@pytest.mark.parametrize("attention", ["fc1", "fc2"])
@pytest.mark.parametrize("shifting", [True, False])
def test_config_switches_count_parameters_and_build_the_model(attention, shifting):
    from attncluster.config import load_config

    cfg = load_config(None, [*SMALL, f"model.attention={attention}", f"model.shifting={str(shifting).lower()}"])
    model = AttentionCluster(**cfg.model.model_kwargs())
    assert (model.attention_kind, model.shifting) == (attention, shifting)
    assert cfg.model.num_parameters() == count_parameters(model)


def test_config_defaults_old_configs_and_bad_values():
    from attncluster.config import from_dict, load_config
    from attncluster.errors import ConfigError

    cfg = load_config(None)
    assert (cfg.model.shifting, cfg.model.attention) == (True, "fc1")
    # a checkpoint's resolved config from before the switches existed: the reference model
    old = cfg.to_dict()
    del old["model"]["shifting"], old["model"]["attention"]
    assert (from_dict(old).model.shifting, from_dict(old).model.attention) == (True, "fc1")
    new = load_config(None, ["model.attention=fc2", "model.shifting=false"])
    assert from_dict(new.to_dict()).model.model_kwargs() == new.model.model_kwargs()  # what a checkpoint records
    with pytest.raises(ConfigError, match=r"model\.attention: must be one of fc1, fc2, got 'fc3'"):
        load_config(None, ["model.attention=fc3"])
    with pytest.raises(ConfigError, match=r"model\.shifting: expected true or false"):
        load_config(None, ["model.shifting=maybe"])


def test_weights_load_strictly_by_the_configs_switches(tmp_path):
    from attncluster.checkpoint import atomic_save
    from attncluster.config import load_config
    from attncluster.errors import ConfigError
    from attncluster.inference import load_model

    cfg = load_config(None, [*SMALL, "model.attention=fc2", "model.shifting=false"])
    torch.manual_seed(13)
    model = AttentionCluster(**cfg.model.model_kwargs()).eval()
    atomic_save({"model": model.state_dict(), "config": cfg.to_dict()}, tmp_path / "w.pt")
    loaded = load_model(cfg, str(tmp_path / "w.pt"))
    feats = make_inputs({"rgb": 16, "audio": 4})
    with torch.no_grad():
        assert torch.equal(loaded(feats), model(feats))
    with pytest.raises(ConfigError, match="does not match the config"):  # an fc2 file under the reference config
        load_model(load_config(None, SMALL), str(tmp_path / "w.pt"))


@pytest.mark.parametrize("attention, shifting", [  # fc2 without shift takes both new paths: the fast default
    ("fc2", False), pytest.param("fc2", True, marks=pytest.mark.slow), pytest.param("fc1", False, marks=pytest.mark.slow)])
def test_export_matches_torch_for_every_switch(attention, shifting, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import numpy as np

    from attncluster.checkpoint import atomic_save
    from attncluster.config import load_config
    from attncluster.export import OnnxPredictor, export_onnx

    cfg = load_config(None, [*SMALL, f"model.attention={attention}", f"model.shifting={str(shifting).lower()}"])
    torch.manual_seed(14)
    model = AttentionCluster(**cfg.model.model_kwargs()).eval()
    atomic_save({"model": model.state_dict(), "config": cfg.to_dict()}, tmp_path / "w.pt")
    summary = export_onnx(cfg, str(tmp_path / "w.pt"), str(tmp_path / "m.onnx"), input_dtype="float32",
                          log=lambda msg: None)
    assert summary["parity"].ok
    rng = np.random.default_rng(15)
    x = {"rgb": rng.normal(size=(3, 9, 16)).astype(np.float32), "audio": rng.normal(size=(3, 9, 4)).astype(np.float32)}
    with torch.no_grad():
        ref = torch.sigmoid(model({m: torch.from_numpy(v) for m, v in x.items()})).numpy()
    np.testing.assert_allclose(OnnxPredictor(str(tmp_path / "m.onnx")).scores(x), ref, atol=1e-5, rtol=0)


def test_explain_reports_the_fc2_weights_the_forward_pass_pools_with():
    from attncluster.explain import attention_batch

    torch.manual_seed(16)
    model = AttentionCluster({"rgb": 6}, 3, num_classes=4, hidden_sizes=(), attention="fc2", shifting=False).eval()
    x = {"rgb": torch.randn(2, 5, 6)}
    weights, scores = attention_batch(model, x, "ce", "fp32")
    unit = model.attention["rgb"]
    with torch.no_grad():
        a = torch.softmax(unit.score(torch.tanh(unit.score_hidden(x["rgb"]))), dim=1)  # (N, L, C)
        pooled = torch.einsum("nlc,nlf->ncf", a, x["rgb"]).flatten(1)  # no shift: the plain pooled features
        expect = torch.softmax(model.logits(pooled * 0.5), dim=1)
    np.testing.assert_allclose(weights["rgb"], a.numpy(), atol=1e-7)
    np.testing.assert_allclose(scores, expect.numpy(), atol=1e-6)
