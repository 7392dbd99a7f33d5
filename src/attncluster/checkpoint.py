"""Checkpoints and weights.

A training checkpoint is a plain dict ``{model, optimizer, scheduler, epoch, step, rng, config, metrics,
best_metric}`` written atomically (temporary file in the same folder, fsync, then rename), so a crash never leaves
a half-written file under the final name. ``--weights`` accepts such a checkpoint, a safetensors file of model
weights, a converted Paddle ``.pt`` (``attncluster convert-paddle``) or the reference's ``.pdparams`` directly.

Every file we write carries the model's state format (``weights_format``, :data:`attncluster.model.STATE_FORMAT`).
Files from before it (our checkpoints and converted weights of the inverted-dropout model) are recognised by its
absence and rescaled on load by :func:`upgrade_legacy_state`, so they keep giving the same outputs.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attncluster.errors import ConfigError, DataError
from attncluster.model import STATE_FORMAT

FORMAT_KEY = "weights_format"  # checkpoint dict entry and safetensors metadata key holding STATE_FORMAT
FC1 = "hidden.0.weight"


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to ``path`` via a temporary file and an atomic rename.

    A checkpoint (a dict with a ``model`` entry) is stamped with the state format it holds, ``weights_format``.
    """
    path = Path(path)
    if isinstance(obj, dict) and "model" in obj and FORMAT_KEY not in obj:
        obj = {**obj, FORMAT_KEY: STATE_FORMAT}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | Path, drop_rate: float | None = None) -> dict[str, Any]:
    """Load one of our checkpoints (a dict with at least ``model``), upgraded to this model's state format.

    ``drop_rate`` is the model's, for :func:`upgrade_legacy_state`; None takes the checkpoint's own config's.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as e:
        raise DataError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise DataError(f"{path}: not an attncluster checkpoint (expected a dict with a 'model' entry)")
    return upgrade_legacy_checkpoint(ckpt, drop_rate)


def load_state_dict_any(path: str | Path, drop_rate: float = 0.5,
                        feature_dims: dict[str, int] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Model weights from any supported file. Returns (state_dict, info) where info may carry a model config.

    ``drop_rate`` and ``feature_dims`` (modalities in the reference's order) only matter for ``.pdparams``.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except (SafetensorError, OSError) as e:
            raise DataError(f"{path}: not a readable safetensors file ({e})") from None
        info = {"model_config": json.loads(meta["attncluster_model"])} if "attncluster_model" in meta else {}
        if "attncluster_model" in meta and FORMAT_KEY not in meta:  # convert-paddle output of the old fold
            upgrade_legacy_state(state, drop_rate)
        return state, info
    if path.suffix == ".pdparams":
        from attncluster.paddle import convert_paddle_state, load_paddle_state

        state, kwargs = convert_paddle_state(load_paddle_state(str(path)), feature_dims=feature_dims,
                                             drop_rate=drop_rate)
        return state, {"model_config": kwargs, "source": "paddle"}
    ckpt = load_checkpoint(path, drop_rate)
    return ckpt["model"], {k: v for k, v in ckpt.items() if k != "model"}


def shape_mismatches(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, mis-shaped) parameter names of ``state`` against ``model``."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mis = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    return missing, unexpected, mis


def load_weights(model: nn.Module, path: str | Path, drop_rate: float | None = None) -> dict[str, Any]:
    """Load weights strictly (eval, predict): any difference from the config's model is a one-line error.

    ``drop_rate`` defaults to the model's own.
    """
    if drop_rate is None:
        drop_rate = getattr(model, "drop_rate", 0.5)
    state, info = load_state_dict_any(path, drop_rate, getattr(model, "feature_dims", None))
    missing, unexpected, mis = shape_mismatches(model, state)
    if missing or unexpected or mis:
        parts = []
        if mis:
            parts.append("shapes differ (checkpoint vs config): " + "; ".join(mis[:4]) + (" ..." if len(mis) > 4 else ""))
        if missing:
            parts.append(f"missing {missing[:4]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:4]}")
        raise ConfigError(f"{path}: checkpoint does not match the config's model: {'; '.join(parts)}")
    model.load_state_dict(state)
    return info


def load_for_finetune(model: nn.Module, path: str | Path, log=print) -> list[str]:
    """Initialise from ``path`` for fine-tuning: layers whose shape differs keep their fresh initialisation.

    Returns the names that were re-initialised (each is also reported through ``log``).
    """
    state, _ = load_state_dict_any(path, getattr(model, "drop_rate", 0.5), getattr(model, "feature_dims", None))
    own = model.state_dict()
    unexpected = [k for k in state if k not in own]
    if unexpected and not any(k in own for k in state):
        raise ConfigError(f"{path}: no parameter names match the model (unexpected {unexpected[:4]})")
    keep = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(keep, strict=False)
    reinit = [k for k in own if k not in keep]
    for k in reinit:
        why = f"checkpoint shape {tuple(state[k].shape)} vs {tuple(own[k].shape)}" if k in state else "not in checkpoint"
        log(f"fine-tune: re-initialised {k} ({why})")
    if unexpected:
        log(f"fine-tune: ignored {len(unexpected)} checkpoint entries not in the model: {unexpected[:4]}")
    return reinit


# --------------------------------------------------------------------------------------------------------------------
# Files from before the state format: the model had inverted dropout (nn.Dropout) and convert-paddle folded (1 - p)
# into fc1. That model computed fc1(x) at inference and fc1(x * mask / (1 - p)) in training; this one computes
# fc1'(x * (1 - p)) and fc1'(x * mask), the reference's. Both are the same function when fc1' = fc1 / (1 - p).


def upgrade_legacy_state(state: dict[str, torch.Tensor], drop_rate: float) -> None:
    """Rescale, in place, an inverted-dropout state dict's fc1 weight by 1 / (1 - drop_rate) (same outputs)."""
    if FC1 in state and drop_rate:
        state[FC1] = state[FC1] / (1.0 - drop_rate)


def _own_drop_rate(ckpt: dict[str, Any]) -> float:
    run_config = ckpt.get("config")
    for config in (run_config.get("model") if isinstance(run_config, dict) else None, ckpt.get("model_config")):
        if isinstance(config, dict) and "drop_rate" in config:
            return float(config["drop_rate"])
    return 0.5  # the model's default, which every pre-format file without a config used


def upgrade_legacy_checkpoint(ckpt: dict[str, Any], drop_rate: float | None = None) -> dict[str, Any]:
    """A checkpoint dict in this model's state format (a pre-format one is converted; others are returned as is).

    Pre-format files are the ones our code wrote without ``weights_format``: training checkpoints (with ``config``)
    and convert-paddle ``.pt`` files (``source: paddle``). fc1 is rescaled (:func:`upgrade_legacy_state`) and so are
    Adam's moments of it (gradients scale by (1 - p), the second moment by its square), so a resumed run continues
    from the same outputs with the reference's parameterisation.
    """
    if FORMAT_KEY in ckpt or not ("config" in ckpt or ckpt.get("source") == "paddle"):
        return ckpt
    p = _own_drop_rate(ckpt) if drop_rate is None else drop_rate
    state = dict(ckpt["model"])
    upgrade_legacy_state(state, p)
    ckpt = {**ckpt, "model": state, FORMAT_KEY: STATE_FORMAT}
    opt = ckpt.get("optimizer")
    if p and isinstance(opt, dict) and FC1 in state and len(opt.get("param_groups", [])) == 1:
        index = opt["param_groups"][0]["params"][list(state).index(FC1)]  # parameters() order = state dict order
        moments = opt.get("state", {}).get(index)
        if moments:
            scale = {"exp_avg": 1.0 - p, "exp_avg_sq": (1.0 - p) ** 2, "max_exp_avg_sq": (1.0 - p) ** 2}
            moments = {k: v * scale[k] if k in scale else v for k, v in moments.items()}
            ckpt["optimizer"] = {**opt, "state": {**opt["state"], index: moments}}
    return ckpt
