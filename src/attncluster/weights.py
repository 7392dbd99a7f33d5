"""Loading weights: any file ``--weights`` accepts, into a model, without running code from the file.

Accepted: one of our training checkpoints (:mod:`attncluster.checkpoint`; only its ``model`` entry is used here), a
safetensors file of model weights, a converted Paddle ``.pt`` (``attncluster convert-paddle``) or the reference's
``.pdparams`` directly (:mod:`attncluster.paddle`). A ``.pt`` is read by ``torch.load(weights_only=True)`` with only
numpy's array builders allowed besides tensors and plain values.

Every file we write carries the model's state format (``weights_format``, :data:`attncluster.model.STATE_FORMAT`).
Files from before it (our checkpoints and converted weights of the inverted-dropout model) are recognised by its
absence and rescaled on load by :func:`upgrade_legacy_state`, so they keep giving the same outputs.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attncluster.errors import ConfigError, DataError, FileError, printable
from attncluster.model import FORMAT_KEY, STATE_FORMAT

FC1 = "hidden.0.weight"

_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's _reconstruct, wherever this numpy keeps it
_SCALAR = np.float64(0).__reduce__()[0]
# What our checkpoints hold besides tensors and plain Python values: numpy's RNG state (``np.random.get_state()``
# is a tuple with a uint32 array) and possibly numpy scalars in metrics. These build arrays from data and call
# nothing else. Both numpy 1 (numpy.core) and numpy 2 (numpy._core) spellings, so either numpy reads the other's.
_CHECKPOINT_GLOBALS: list[Any] = [
    np.ndarray, np.dtype,
    (_RECONSTRUCT, "numpy.core.multiarray._reconstruct"), (_RECONSTRUCT, "numpy._core.multiarray._reconstruct"),
    (_SCALAR, "numpy.core.multiarray.scalar"), (_SCALAR, "numpy._core.multiarray.scalar"),
    # the dtype classes numpy 2 pickles (numpy.dtypes.UInt32DType for the RNG key, floats and ints in metrics)
    *{type(np.dtype(t)) for t in (np.uint32, np.int64, np.float32, np.float64, np.bool_)},
]
_NOT_CHECKPOINTS = {".pdparams": "a Paddle weights file", ".safetensors": "a safetensors weights file"}


def _allowed(globs: list[Any]):
    """torch's ``safe_globals`` context (torch >= 2.5); on older torch the globals are added process-wide."""
    ctx = getattr(torch.serialization, "safe_globals", None)
    if ctx is not None:
        return ctx(globs)
    import contextlib

    torch.serialization.add_safe_globals([g[0] if isinstance(g, tuple) else g for g in globs])
    return contextlib.nullcontext()


def _safe_torch_load(path: Path) -> Any:
    """``torch.load`` that never runs code: ``weights_only=True`` with only the numpy globals above allowed.

    A file that needs any other global (a class, a function such as ``os.system``) is refused before anything of
    it is built.
    """
    import re
    import warnings

    try:
        with _allowed(_CHECKPOINT_GLOBALS), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": the error below says what matters
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if m:
            raise DataError(f"{path}: refusing to load: it needs {m.group(1)}, and loading that could run code; an "
                            "attncluster checkpoint holds only tensors, numpy arrays and plain values") from None
        raise DataError(f"{path}: not a readable checkpoint (not a torch.save file of tensors and plain values)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, TypeError, KeyError, AttributeError,
            IndexError, UnicodeDecodeError, OverflowError, MemoryError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise DataError(f"{path}: not a readable checkpoint: expected a file written by torch.save (attncluster "
                        f"train, convert-paddle) and the reader failed ({type(e).__name__}: {first})") from None
    except OSError as e:
        raise FileError(f"{path}: cannot read checkpoint: {e.strerror or e}") from None


def load_checkpoint(path: str | Path, drop_rate: float | None = None) -> dict[str, Any]:
    """Load one of our checkpoints (a dict with at least ``model``), without running code from the file.

    ``drop_rate`` is the model's, for :func:`upgrade_legacy_state`; None takes the checkpoint's own config's.

    Raises:
        ConfigError: the file is missing, or is a weights file (``.pdparams``, ``.safetensors``) rather than a
            training checkpoint.
        DataError: the file is damaged, is not ours, or needs more than tensors and plain values to load.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: checkpoint not found")
    kind = _NOT_CHECKPOINTS.get(path.suffix.lower())
    if kind:  # never hand such a file to an unpickler meant for checkpoints
        raise ConfigError(f"{path}: is {kind}, not a training checkpoint; --resume needs a .pt written by "
                          "attncluster train (start from weights with train --weights instead)")
    ckpt = _safe_torch_load(path)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise DataError(f"{path}: not an attncluster checkpoint (expected a dict with a 'model' entry)")
    model = ckpt["model"]
    if not isinstance(model, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()):
        raise DataError(f"{path}: not an attncluster checkpoint ('model' must map parameter names to tensors)")
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
        except OSError as e:
            raise FileError(f"{path}: cannot read weights: {e.strerror or e}") from None
        except (SafetensorError, ValueError, MemoryError) as e:
            raise DataError(f"{path}: not a readable safetensors file ({str(e)[:200]})") from None
        info = {}
        if "attncluster_model" in meta:
            try:
                info["model_config"] = json.loads(meta["attncluster_model"])
            except ValueError:
                info["model_config"] = None
            if not isinstance(info["model_config"], dict):
                raise DataError(f"{path}: not a readable safetensors file (metadata 'attncluster_model' is not a "
                                "JSON object)")
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


def load_for_finetune(model: nn.Module, path: str | Path, log=print, allow_reinit: bool = False) -> list[str]:
    """Initialise from ``path`` for fine-tuning: layers whose shape differs keep their fresh initialisation.

    Prints one summary line through ``log``: how many tensors were loaded, and which were re-initialised (and
    why) or ignored. Returns the names that were re-initialised.

    Raises:
        ConfigError: no tensor of ``path`` fits the model (an unrelated model's weights), unless ``allow_reinit``
            (``train --allow-reinit``) asks to start from a fresh initialisation anyway.
    """
    state, _ = load_state_dict_any(path, getattr(model, "drop_rate", 0.5), getattr(model, "feature_dims", None))
    own = model.state_dict()
    unexpected = [k for k in state if k not in own]
    keep = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    reinit = [k for k in own if k not in keep]

    def why(k: str) -> str:
        return f"{k} (checkpoint {tuple(state[k].shape)} vs {tuple(own[k].shape)})" if k in state else f"{k} (absent)"

    if not keep and not allow_reinit:
        detail = "; ".join(why(k) for k in reinit[:4]) + (" ..." if len(reinit) > 4 else "")
        raise ConfigError(f"{path}: no tensor fits the model, so --weights would load nothing ({len(state)} tensors "
                          f"in the file, {len(unexpected)} with names the model does not have; {detail}); check "
                          "--weights and the config, or pass --allow-reinit to start from a fresh initialisation")
    model.load_state_dict(keep, strict=False)
    line = f"fine-tune: loaded {len(keep)} of {len(own)} tensors from {path}"
    if reinit:
        line += f"; re-initialised {len(reinit)}: " + ", ".join(why(k) for k in reinit[:8]) + (" ..." if len(reinit) > 8 else "")
    if unexpected:
        line += f"; ignored {len(unexpected)} not in the model: " + ", ".join(unexpected[:4]) + (" ..." if len(unexpected) > 4 else "")
    log(printable(line, limit=2000))  # tensor names come from the file: escaped like any error line
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
