"""Released PaddlePaddle Attention Cluster weights -> PyTorch, without Paddle.

A ``.pdparams`` file written by ``fluid.save`` (Paddle 1.x) or ``paddle.save`` (2.x) is a pickle of
``{param_name: numpy array}`` (reference spec §6.7). Paddle 1.x wrote protocol 2, possibly from Python 2, so it is
read with ``encoding="latin1"``; keys may be str or bytes; Paddle 2.x adds a ``StructuredToParameterName@@`` table,
which is ignored. The unpickler only resolves the few globals that numpy arrays need, so a malicious file cannot run
code.

The 14 reference names (spec §1.4) map onto :class:`~attncluster.model.AttentionCluster` as follows, with modality i
being the i-th key of ``feature_dims``:

==========================  =======================  =====================================
Paddle name                 shape                    PyTorch name
==========================  =======================  =====================================
``satt{i}.conv.weight``     [C, F, 1, 1]             ``attention.<m>.score.weight`` [C, F]
``satt{i}.conv.bias``       [C]                      ``attention.<m>.score.bias``
``satt{i}.shift_w``         [C]                      ``attention.<m>.shift_w``
``satt{i}.shift_b``         [C]                      ``attention.<m>.shift_b``
``fc1.weights``             [D, H1] (in, out)        ``hidden.0.weight`` [H1, D] (transposed)
``fc1.bias``                [H1]                     ``hidden.0.bias``
``fc2.weights``/``.bias``   [H1, H2], [H2]           ``hidden.1.weight`` (transposed) / ``.bias``
``logistic.weights``/bias   [H2, K], [K]             ``logits.weight`` (transposed) / ``.bias``
==========================  =======================  =====================================

The reference's dropout is Paddle's ``downgrade_in_infer``: no rescale in training, ``x * (1 - p)`` at inference. So
is :class:`~attncluster.model.DowngradeDropout`, so every converted tensor is the reference's own value (only
transposed or reshaped): inference, training and fine-tuning from converted weights follow the reference exactly, in
its own parameterisation. Files written here carry the state format :data:`~attncluster.model.STATE_FORMAT`; those
written before it (with (1 - p) folded into fc1) are recognised and rescaled by :mod:`attncluster.weights`.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from attncluster.data.safe_pickle import safe_load
from attncluster.errors import ConfigError, DataError
from attncluster.outputs import atomic_output, atomic_write_bytes
from attncluster.model import FORMAT_KEY, STATE_FORMAT, AttentionCluster

DEFAULT_FEATURE_DIMS: dict[str, int] = {"rgb": 1024, "audio": 128}
NAME_TABLE_KEY = "StructuredToParameterName@@"  # Paddle 2.x: structured name -> parameter name, not a weight
SAFETENSORS_METADATA_KEY = "attncluster_model"

def _resolve(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists() and p.suffix != ".pdparams" and p.with_name(p.name + ".pdparams").exists():
        p = p.with_name(p.name + ".pdparams")  # like fluid.load, accept the prefix without the suffix
    return p


def load_paddle_state(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a Paddle ``.pdparams`` pickle into ``{name: array}`` without Paddle and without running code.

    Args:
        path: the ``.pdparams`` file (or its prefix, as ``fluid.load`` accepts).

    Returns:
        Parameter name (str) -> numpy array, in file order, without Paddle 2.x's name table.

    Raises:
        DataError: the file is missing, is not a pickle, needs a global other than numpy's array builders, or does
            not hold a dict of arrays. The message names the file.
    """
    p = _resolve(path)
    if not p.is_file():
        raise DataError(f"{path}: no such Paddle weights file")
    try:
        with open(p, "rb") as f:
            obj = safe_load(f, path=str(p), encoding="latin1", builtins=("tuple",), ordered_dict=True)
    except OSError as e:
        raise DataError(f"{p}: cannot read Paddle weights: {e.strerror or e}") from None
    except DataError:
        raise
    except pickle.UnpicklingError as e:
        raise DataError(
            f"{p}: not a Paddle .pdparams pickle ({e}); the pre-2020 combined-params binary is not supported"
        ) from None
    except Exception as e:  # truncated or corrupt pickles raise EOFError, ValueError, TypeError, ...
        raise DataError(f"{p}: not a Paddle .pdparams pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, Mapping):
        raise DataError(f"{p}: expected a pickled dict of parameter arrays, got {type(obj).__name__}")
    params: dict[str, np.ndarray] = {}
    for key, value in obj.items():
        name = key.decode("latin1") if isinstance(key, bytes) else key
        if not isinstance(name, str):
            raise DataError(f"{p}: parameter name {key!r} is not a string")
        if name == NAME_TABLE_KEY:
            continue
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], np.ndarray):
            value = value[1]
        if not isinstance(value, np.ndarray):
            raise DataError(f"{p}: parameter {name!r} is a {type(value).__name__}, not a numpy array")
        params[name] = value
    return params


def _expected_shapes(params: Mapping[str, np.ndarray], feature_dims: Mapping[str, int]) -> dict[str, tuple]:
    """The 14-name layout (more with more modalities) with sizes inferred from whichever tensors are present.

    A size that no tensor determines stays a symbol (``"C0"``, ``"H1"``, ``"K"``) so the error can still show it.
    """

    def dim(options: list[tuple[str, int, int]], symbol: str) -> int | str:
        for name, ndim, axis in options:
            a = params.get(name)
            if a is not None and a.ndim == ndim:
                return int(a.shape[axis])
        return symbol

    shapes: dict[str, tuple] = {}
    widths: list[int | str] = []
    for i, f in enumerate(feature_dims.values()):
        s = f"satt{i}"
        c = dim([(f"{s}.conv.weight", 4, 0), (f"{s}.conv.bias", 1, 0), (f"{s}.shift_w", 1, 0)], f"C{i}")
        shapes |= {f"{s}.conv.weight": (c, f, 1, 1), f"{s}.conv.bias": (c,), f"{s}.shift_w": (c,), f"{s}.shift_b": (c,)}
        widths.append(c * f if isinstance(c, int) else f"{c}*{f}")
    d = sum(widths) if all(isinstance(w, int) for w in widths) else "+".join(map(str, widths))
    h1 = dim([("fc1.weights", 2, 1), ("fc1.bias", 1, 0), ("fc2.weights", 2, 0)], "H1")
    h2 = dim([("fc2.weights", 2, 1), ("fc2.bias", 1, 0), ("logistic.weights", 2, 0)], "H2")
    k = dim([("logistic.weights", 2, 1), ("logistic.bias", 1, 0)], "K")
    shapes |= {
        "fc1.weights": (d, h1), "fc1.bias": (h1,),
        "fc2.weights": (h1, h2), "fc2.bias": (h2,),
        "logistic.weights": (h2, k), "logistic.bias": (k,),
    }  # fmt: skip
    return shapes


def _fmt(shape: tuple) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def convert_paddle_state(
    params: Mapping[str, np.ndarray],
    feature_dims: Mapping[str, int] | None = None,
    drop_rate: float = 0.5,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Map reference parameters onto an :class:`AttentionCluster` state dict.

    Args:
        params: Paddle name -> array, as from :func:`load_paddle_state`.
        feature_dims: modality -> feature size, in the reference's input order (``satt0`` is the first). Defaults to
            the YouTube-8M ``{"rgb": 1024, "audio": 128}``.
        drop_rate: the reference's dropout rate, for the model kwargs (the weights do not depend on it).

    Returns:
        ``(state_dict, model_kwargs)``: float32 tensors for ``AttentionCluster.load_state_dict`` (some may share
        memory with ``params``), and
        ``{"feature_dims", "cluster_nums", "num_classes", "hidden_sizes", "drop_rate"}`` to build the model with
        (cluster counts, hidden sizes and classes are read from the shapes).

    Raises:
        ConfigError: one line listing every missing, unexpected or mis-shaped name (expected vs got), or a bad
            ``feature_dims`` / ``drop_rate``.
    """
    feature_dims = dict(DEFAULT_FEATURE_DIMS if feature_dims is None else feature_dims)
    if not feature_dims or not all(isinstance(f, (int, np.integer)) and f > 0 for f in feature_dims.values()):
        raise ConfigError(f"feature_dims must map modality names to positive sizes, got {feature_dims}")
    feature_dims = {m: int(f) for m, f in feature_dims.items()}
    if not 0.0 <= drop_rate < 1.0:
        raise ConfigError(f"drop_rate must be in [0, 1), got {drop_rate}")
    params = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in params.items()}
    params.pop(NAME_TABLE_KEY, None)
    params = {k: np.asarray(v) for k, v in params.items()}

    expected = _expected_shapes(params, feature_dims)
    missing = [n for n in expected if n not in params]
    unexpected = [n for n in params if n not in expected]
    bad = []
    for name, shape in expected.items():
        if name not in params:
            continue
        a = params[name]
        if tuple(a.shape) != shape:
            bad.append(f"{name} expected {_fmt(shape)} got {_fmt(a.shape)}")
        elif not np.issubdtype(a.dtype, np.floating):
            bad.append(f"{name} expected a float array got dtype {a.dtype}")
    if missing or unexpected or bad:
        problems = []
        if missing:
            problems.append("missing " + ", ".join(f"{n} {_fmt(expected[n])}" for n in missing))
        if unexpected:
            problems.append("unexpected " + ", ".join(f"{n} {_fmt(params[n].shape)}" for n in unexpected))
        if bad:
            problems.append("mis-shaped " + ", ".join(bad))
        dims = ", ".join(f"{m}={f}" for m, f in feature_dims.items())
        raise ConfigError(f"Paddle weights do not fit AttentionCluster({dims}): " + "; ".join(problems))

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    def fc(a: np.ndarray) -> torch.Tensor:
        return t(a).t().contiguous()  # Paddle (in, out) -> torch (out, in); torch's transpose copy is the fast one

    state: dict[str, torch.Tensor] = {}
    cluster_nums: dict[str, int] = {}
    for i, (m, f) in enumerate(feature_dims.items()):
        s, w = f"satt{i}", params[f"satt{i}.conv.weight"]
        cluster_nums[m] = int(w.shape[0])
        state[f"attention.{m}.score.weight"] = t(w.reshape(w.shape[0], f))  # (C, F, 1, 1) -> (C, F)
        state[f"attention.{m}.score.bias"] = t(params[f"{s}.conv.bias"])
        state[f"attention.{m}.shift_w"] = t(params[f"{s}.shift_w"])
        state[f"attention.{m}.shift_b"] = t(params[f"{s}.shift_b"])
    state["hidden.0.weight"] = fc(params["fc1.weights"])  # the model's dropout is the reference's: no rescale
    state["hidden.0.bias"] = t(params["fc1.bias"])
    state["hidden.1.weight"] = fc(params["fc2.weights"])
    state["hidden.1.bias"] = t(params["fc2.bias"])
    state["logits.weight"] = fc(params["logistic.weights"])
    state["logits.bias"] = t(params["logistic.bias"])
    kwargs = {
        "feature_dims": feature_dims,
        "cluster_nums": cluster_nums,
        "num_classes": int(params["logistic.bias"].shape[0]),
        "hidden_sizes": [int(params["fc1.bias"].shape[0]), int(params["fc2.bias"].shape[0])],
        "drop_rate": float(drop_rate),
    }
    return state, kwargs


def convert_paddle(
    path: str | os.PathLike,
    output: str | os.PathLike,
    feature_dims: Mapping[str, int] | None = None,
    drop_rate: float = 0.5,
) -> dict:
    """Convert a ``.pdparams`` file to a PyTorch weights file.

    Args:
        path: the Paddle weights.
        output: ``*.safetensors`` writes the state dict with the model kwargs as JSON in metadata key
            ``attncluster_model`` and the state format in ``weights_format``; any other name writes a
            ``torch.save`` dict ``{"model": state_dict, "model_config": kwargs, "source": "paddle",
            "source_file": str(path), "weights_format": STATE_FORMAT}``.
        feature_dims, drop_rate: as in :func:`convert_paddle_state`.

    Returns:
        The model kwargs (``AttentionCluster(**kwargs)`` loads the written state dict).
    """
    state, kwargs = convert_paddle_state(load_paddle_state(path), feature_dims, drop_rate)
    out = Path(output)
    if out.suffix == ".safetensors":
        from safetensors.torch import save

        data = save(state, metadata={SAFETENSORS_METADATA_KEY: json.dumps(kwargs), "source": "paddle",
                                     FORMAT_KEY: str(STATE_FORMAT)})
        atomic_write_bytes(out, data, "write weights")
    else:
        with atomic_output(out, "wb", what="write weights") as f:  # the one writer: never a half-written file
            torch.save({"model": state, "model_config": kwargs, "source": "paddle", "source_file": str(path),
                        FORMAT_KEY: STATE_FORMAT}, f)
    return kwargs


def build_model_from_paddle(
    path: str | os.PathLike,
    feature_dims: Mapping[str, int] | None = None,
    drop_rate: float = 0.5,
) -> AttentionCluster:
    """An :class:`AttentionCluster` holding the reference weights, in eval mode (call ``.train()`` to fine-tune)."""
    state, kwargs = convert_paddle_state(load_paddle_state(path), feature_dims, drop_rate)
    model = AttentionCluster(**kwargs)
    model.load_state_dict(state, strict=True)
    return model.eval()
