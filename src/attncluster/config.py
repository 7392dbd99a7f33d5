"""Typed configuration: nested dataclasses loaded from YAML, with dotted overrides.

A config has four sections, ``model``, ``data``, ``train`` and ``eval``. Unknown keys are rejected with the
closest valid key suggested, values are type-checked on load and range-checked in ``__post_init__``, and
``-o train.batch_size=256`` style overrides go through the same checks.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from attncluster.errors import ConfigError

LOSSES = ("bce", "ce", "segment_bce")  # segment_bce: YouTube-8M 2019 ratings (attncluster.segments)
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine")
PRECISIONS = ("fp32", "bf16", "fp16")
FORMATS = ("auto", "yt8m", "pickle", "features")
ATTENTIONS = ("fc1", "fc2")  # model.attention; the same as attncluster.model.ATTENTIONS (not imported: no torch here)
FC2_HIDDEN = 128             # attncluster.model.FC2_HIDDEN, for the parameter count


# Sane bounds, checked on load so that no value can crash, overflow or try to allocate the machine later. The
# reference (YouTube-8M, 57.8M parameters) sits far inside every one of them.
MAX_PARAMETERS = 1_000_000_000   # model weights (4 GB in fp32, 16 GB with Adam's state)
MAX_DIM = 65_536                 # a modality's feature size, a hidden layer's width
MAX_CLUSTERS = 4_096             # attention units per modality
MAX_CLASSES = 1_000_000
MAX_SEG_NUM = 10_000             # frames sampled per video (YouTube-8M keeps at most 300)
MAX_BATCH = 1_048_576            # train.batch_size, eval.batch_size
MAX_BATCH_VALUES = 2**33         # batch_size x seg_num x sum(feature_dims): one batch of features, 32 GiB as fp32
MAX_WORKERS = 256                # data.num_workers
MAX_THREADS = 256                # train.num_threads (OpenMP crashes on absurd counts)
MAX_SEED = 2**63 - 1
MAX_STEPS = 10**9                # epochs, warmup_steps, log_interval, valid_interval


def _error(key: str, msg: str) -> ConfigError:
    e = ConfigError(f"{key}: {msg}")
    e.key = key  # type: ignore[attr-defined]  # which value is wrong: used to blame the file or the -o override
    return e


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise _error(key, msg)


def _show(value: Any, limit: int = 80) -> str:
    """A value for an error message: huge integers by size (printing them is itself an error), long values cut."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value)
    except ValueError:  # a container holding an integer too long to print
        return f"a {type(value).__name__} holding a value too large to print"
    return text if len(text) <= limit else text[:limit] + "..."


def _clip(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _in_range(value: int, lo: int, hi: int, key: str, note: str = "") -> None:
    _check(lo <= value <= hi, key, f"must be in [{lo:_}, {hi:_}]{note}, got {_show(value)}")


def _finite(value: float, key: str, lo: float, hi: float, lo_open: bool = False) -> None:
    ok = math.isfinite(value) and (lo < value if lo_open else lo <= value) and value <= hi
    _check(ok, key, f"must be a finite number in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {value}")


@dataclass
class ModelConfig:
    """The Attention Cluster model (reference defaults: YouTube-8M rgb + audio)."""

    feature_dims: dict[str, int] = field(default_factory=lambda: {"rgb": 1024, "audio": 128})
    cluster_nums: Union[int, dict[str, int]] = 32
    num_classes: int = 3862
    seg_num: int = 100
    drop_rate: float = 0.5
    hidden_sizes: list[int] = field(default_factory=lambda: [1024, 4096])
    shifting: bool = True    # the paper's shifting operation in every attention unit (off: plain attention pooling)
    attention: str = "fc1"   # the units' scoring: fc1 (one linear layer, the reference) or fc2 (two layers, tanh)

    def __post_init__(self) -> None:
        _check(self.attention in ATTENTIONS, "model.attention",
               f"must be one of {', '.join(ATTENTIONS)}, got {_show(self.attention)}")
        _check(len(self.feature_dims) > 0, "model.feature_dims", "needs at least one modality")
        for m, d in self.feature_dims.items():
            _check(bool(m) and "." not in m and m.isprintable() and len(m) <= 64, f"model.feature_dims.{m}",
                   "a modality name must be 1 to 64 printable characters without '.'")
            _in_range(d, 1, MAX_DIM, f"model.feature_dims.{m}")
        if isinstance(self.cluster_nums, dict):
            missing = [m for m in self.feature_dims if m not in self.cluster_nums]
            _check(not missing, "model.cluster_nums", f"has no entry for modalities {missing}")
            extra = [m for m in self.cluster_nums if m not in self.feature_dims]
            _check(not extra, "model.cluster_nums", f"names modalities not in model.feature_dims: {extra}")
            for m, c in self.cluster_nums.items():
                _in_range(c, 1, MAX_CLUSTERS, f"model.cluster_nums.{m}")
        else:
            _in_range(self.cluster_nums, 1, MAX_CLUSTERS, "model.cluster_nums")
        _in_range(self.num_classes, 1, MAX_CLASSES, "model.num_classes")
        _in_range(self.seg_num, 1, MAX_SEG_NUM, "model.seg_num", " frames per video")
        _check(0.0 <= self.drop_rate < 1.0, "model.drop_rate", f"must be in [0, 1), got {_show(self.drop_rate)}")
        _check(len(self.hidden_sizes) <= 16, "model.hidden_sizes", f"at most 16 layers, got {len(self.hidden_sizes)}")
        for h in self.hidden_sizes:
            _check(1 <= h <= MAX_DIM, "model.hidden_sizes", f"sizes must be in [1, {MAX_DIM:_}], got {_show(self.hidden_sizes)}")
        n = self.num_parameters()
        _check(n <= MAX_PARAMETERS, "model", f"{n:_} parameters is more than the {MAX_PARAMETERS:_} allowed "
               f"(feature_dims x cluster_nums, hidden_sizes {self.hidden_sizes}, num_classes {self.num_classes})")

    def num_parameters(self) -> int:
        """The parameter count of this model, computed from the sizes (nothing is allocated)."""
        clusters = self.cluster_nums if isinstance(self.cluster_nums, dict) else dict.fromkeys(self.feature_dims, self.cluster_nums)
        n, width = 0, 0
        for m, d in self.feature_dims.items():
            c = clusters[m]
            if self.attention == "fc2":
                n += d * FC2_HIDDEN + FC2_HIDDEN + c * FC2_HIDDEN + c  # W1, b1 (F -> H) and w2, b2 (H -> C)
            else:
                n += c * d + c  # attention scores (C x F + C)
            n += 2 * c if self.shifting else 0  # the shift's scale and bias

            width += c * d
        for h in [*self.hidden_sizes, self.num_classes]:
            n += width * h + h
            width = h
        return n

    def model_kwargs(self) -> dict[str, Any]:
        return {
            "feature_dims": dict(self.feature_dims),
            "cluster_nums": dict(self.cluster_nums) if isinstance(self.cluster_nums, dict) else self.cluster_nums,
            "num_classes": self.num_classes,
            "drop_rate": self.drop_rate,
            "hidden_sizes": tuple(self.hidden_sizes),
            "shifting": self.shifting,
            "attention": self.attention,
        }


@dataclass
class DataConfig:
    """Where the data is and how it is read. Paths may be files, globs, directories, .list files or URLs."""

    train: list[str] = field(default_factory=list)
    valid: list[str] = field(default_factory=list)
    format: str = "auto"
    num_workers: Union[int, str] = "auto"
    skip_corrupt: bool = False
    class_names: Union[str, None] = None
    pin_memory: Union[bool, None] = None

    def __post_init__(self) -> None:
        _check(self.format in FORMATS, "data.format", f"must be one of {FORMATS}, got {_show(self.format)}")
        if isinstance(self.num_workers, str):
            _check(self.num_workers == "auto", "data.num_workers", f"must be an integer >= 0 or 'auto', got "
                   f"{_show(self.num_workers)}")
        else:
            _in_range(self.num_workers, 0, MAX_WORKERS, "data.num_workers", " or 'auto'")

    def workers(self, world_size: int = 1) -> int:
        """DataLoader workers per rank: ``num_workers``, or what :func:`resolve_num_workers` picks for 'auto'."""
        return resolve_num_workers(self.num_workers, world_size)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask; the machine's count where there is none)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cores_per_rank(world_size: int = 1) -> int:
    """This process's share of the machine's cores: the cores over the ranks on this node (torchrun's
    ``LOCAL_WORLD_SIZE``; ``world_size`` when it is not set), at least 1."""
    local = os.environ.get("LOCAL_WORLD_SIZE")
    ranks = int(local) if local and local.isdigit() and int(local) > 0 else max(1, world_size)
    return max(1, available_cores() // ranks)


def resolve_num_workers(value: int | str, world_size: int = 1) -> int:
    """``data.num_workers``: an int as given, or ``"auto"``: half of this rank's share of the cores
    (:func:`cores_per_rank`, at most 8 workers), 0 when a rank has a single core. The other half is left to the
    training step's threads, and torch never sees more workers than cores (which it warns about on every run)."""
    if value != "auto":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"data.num_workers: must be an integer >= 0 or 'auto', got {value!r}")
        return value
    return min(8, cores_per_rank(world_size) // 2)


_INTERVAL = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|min|h)\s*$")
_UNIT_SECONDS = {"s": 1.0, "min": 60.0, "h": 3600.0}


def parse_interval(value: int | str, key: str = "train.checkpoint_interval") -> tuple[str, float]:
    """``("steps", n)`` for an integer (0 = never) or ``("seconds", t)`` for a duration like ``"30min"``,
    ``"2h"`` or ``"90s"``."""
    if isinstance(value, int) and not isinstance(value, bool):
        _check(0 <= value <= MAX_STEPS, key, f"must be in [0, {MAX_STEPS:_}] steps (0 = only at epoch ends), got "
               f"{_show(value)}")
        return "steps", float(value)
    m = _INTERVAL.match(str(value))
    if isinstance(value, str) and value.strip().isdigit():
        return "steps", float(int(value))
    _check(m is not None, key, f"expected a number of steps or a duration such as '30min', '2h' or '90s', got "
           f"{value!r}")
    seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    _check(seconds > 0, key, f"a duration must be > 0, got {value!r}")
    return "seconds", seconds


VALID_METRICS = ("gap", "hit_at_1", "perr", "map", "top_1", "top_5", "loss")  # what a validation reports


@dataclass
class EarlyStoppingConfig:
    """``train.early_stopping``: the validation metric that picks ``best.pt``, and when to stop training.

    ``metric``: ``auto`` (GAP for multi-label configs, top-1 for single-label ones) or one of :data:`VALID_METRICS`
    (``loss``: lower is better; the others: higher). A validation improves on the best so far when it is better by
    more than ``min_delta``. ``patience``: stop after this many validations in a row without improvement (0 = never
    stop early, train all ``train.epochs``).
    """

    metric: str = "auto"
    patience: int = 0
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        key = "train.early_stopping"
        _check(self.metric == "auto" or self.metric in VALID_METRICS, f"{key}.metric",
               f"must be 'auto' or one of {VALID_METRICS}, got {_show(self.metric)}")
        _check(self.patience >= 0, f"{key}.patience", f"must be >= 0 (0 = off), got {_show(self.patience)}")
        _in_range(self.patience, 0, MAX_STEPS, f"{key}.patience", " (0 = off)")
        _check(self.min_delta >= 0, f"{key}.min_delta", f"must be >= 0, got {_show(self.min_delta)}")
        _finite(self.min_delta, f"{key}.min_delta", 0.0, 1e9)


@dataclass
class TrainConfig:
    """Optimisation. batch_size is the GLOBAL batch, split evenly over distributed ranks (as the reference)."""

    epochs: int = 5
    batch_size: int = 2048
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_steps: int = 0
    loss: str = "bce"
    seed: int = 0
    log_interval: int = 10
    valid_interval: int = 1
    precision: str = "fp32"
    compile: bool = False
    grad_clip: float = 0.0
    num_threads: int = 0
    checkpoint_interval: Union[int, str] = 0
    keep_checkpoints: int = 3
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)

    def __post_init__(self) -> None:
        _check(self.epochs > 0, "train.epochs", f"must be > 0, got {_show(self.epochs)}")
        _in_range(self.epochs, 1, MAX_STEPS, "train.epochs")
        _check(self.batch_size > 0, "train.batch_size", f"must be > 0, got {_show(self.batch_size)}")
        _in_range(self.batch_size, 1, MAX_BATCH, "train.batch_size")
        _check(self.learning_rate > 0, "train.learning_rate", f"must be > 0, got {_show(self.learning_rate)}")
        _finite(self.learning_rate, "train.learning_rate", 0.0, 10.0, lo_open=True)
        _check(self.optimizer in OPTIMIZERS, "train.optimizer", f"must be one of {OPTIMIZERS}, got {_show(self.optimizer)}")
        _check(self.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {_show(self.weight_decay)}")
        _finite(self.weight_decay, "train.weight_decay", 0.0, 1e3)
        _check(self.schedule in SCHEDULES, "train.schedule", f"must be one of {SCHEDULES}, got {_show(self.schedule)}")
        _check(self.warmup_steps >= 0, "train.warmup_steps", f"must be >= 0, got {_show(self.warmup_steps)}")
        _in_range(self.warmup_steps, 0, MAX_STEPS, "train.warmup_steps")
        _check(self.loss in LOSSES, "train.loss", f"must be one of {LOSSES}, got {_show(self.loss)}")
        _in_range(self.seed, 0, MAX_SEED, "train.seed")
        _check(self.log_interval > 0, "train.log_interval", f"must be > 0, got {_show(self.log_interval)}")
        _in_range(self.log_interval, 1, MAX_STEPS, "train.log_interval")
        _check(self.valid_interval >= 0, "train.valid_interval", f"must be >= 0 (0 = never), got {_show(self.valid_interval)}")
        _in_range(self.valid_interval, 0, MAX_STEPS, "train.valid_interval", " (0 = never)")
        _check(self.precision in PRECISIONS, "train.precision", f"must be one of {PRECISIONS}, got {_show(self.precision)}")
        _check(self.grad_clip >= 0, "train.grad_clip", f"must be >= 0, got {_show(self.grad_clip)}")
        _finite(self.grad_clip, "train.grad_clip", 0.0, 1e9)
        _check(self.num_threads >= 0, "train.num_threads", f"must be >= 0 (0 = auto), got {_show(self.num_threads)}")
        _in_range(self.num_threads, 0, MAX_THREADS, "train.num_threads", " (0 = auto)")
        parse_interval(self.checkpoint_interval)
        _in_range(self.keep_checkpoints, 0, MAX_STEPS, "train.keep_checkpoints", " (0 = keep every checkpoint)")
        _check(self.loss == "ce" or self.early_stopping.metric not in ("top_1", "top_5"), "train.early_stopping.metric",
               f"{self.early_stopping.metric} needs single-label data (train.loss ce); use gap, hit_at_1, perr, map "
               "or loss with train.loss bce")

    @property
    def best_metric(self) -> str:
        """The validation metric that picks best.pt and that early stopping watches (``early_stopping.metric``)."""
        metric = self.early_stopping.metric
        return metric if metric != "auto" else ("gap" if self.loss == "bce" else "top_1")

    @property
    def checkpoint_every(self) -> tuple[str, float]:
        """``checkpoint_interval`` parsed: ``("steps", n)`` (0 = epoch ends only) or ``("seconds", t)``."""
        return parse_interval(self.checkpoint_interval)


@dataclass
class EvalConfig:
    """Evaluation and prediction."""

    batch_size: int = 256
    top_k: int = 20

    def __post_init__(self) -> None:
        _check(self.batch_size > 0, "eval.batch_size", f"must be > 0, got {_show(self.batch_size)}")
        _in_range(self.batch_size, 1, MAX_BATCH, "eval.batch_size")
        _check(self.top_k > 0, "eval.top_k", f"must be > 0, got {_show(self.top_k)}")
        _in_range(self.top_k, 1, MAX_CLASSES, "eval.top_k")


EXTRACT_PRESETS = ("yt8m", "image")


@dataclass
class ExtractConfig:
    """Feature extraction from video files (``extract``, ``predict --videos``): weight files and sampling.

    The command-line options (``--inception`` etc.) override these. Paths are local files; nothing is downloaded.
    """

    preset: str = "yt8m"
    inception: Union[str, None] = None  # classify_image_graph_def.pb (2015-12-05) or a torchvision state dict
    pca: Union[str, None] = None  # yt8m_pca.tgz or its folder (mean.npy, eigenvals.npy, eigenvecs.npy)
    vggish: Union[str, None] = None  # AudioSet VGGish checkpoint or the PyTorch port's state dict
    vggish_pca: Union[str, None] = None  # AudioSet vggish_pca_params.npz
    backbone: Union[str, None] = None  # image preset: torchvision:NAME
    backbone_weights: Union[str, None] = None  # image preset: its state dict
    fps: float = 1.0
    max_frames: int = 300

    def __post_init__(self) -> None:
        _check(self.preset in EXTRACT_PRESETS, "extract.preset",
               f"must be one of {EXTRACT_PRESETS}, got {_show(self.preset)}")
        _check(self.fps > 0, "extract.fps", f"must be > 0, got {self.fps}")
        _check(self.max_frames > 0, "extract.max_frames", f"must be > 0, got {self.max_frames}")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)

    def __post_init__(self) -> None:
        values = self.model.seg_num * sum(self.model.feature_dims.values())  # feature values per video
        for key, batch in (("train.batch_size", self.train.batch_size), ("eval.batch_size", self.eval.batch_size)):
            _check(batch * values <= MAX_BATCH_VALUES, key, f"a batch of {batch} videos x model.seg_num "
                   f"{self.model.seg_num} x {sum(self.model.feature_dims.values())} features is more than the "
                   f"{MAX_BATCH_VALUES:_} values allowed in one batch")

    @property
    def multi_label(self) -> bool:
        return self.train.loss in ("bce", "segment_bce")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "eval": EvalConfig,
                             "extract": ExtractConfig}


# ---------------------------------------------------------------------------------------------- type coercion
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert where lossless (int -> float, str -> [str])."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise _error(key, f"expected {' or '.join(_type_name(a) for a in args)}, got {_show(value)}")
    if origin is list:
        if isinstance(value, (str, int, float)) and args and args[0] is str:
            value = [str(value)]
        if not isinstance(value, (list, tuple)):
            raise _error(key, f"expected a list, got {_show(value)}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _error(key, f"expected a mapping, got {_show(value)}")
        return {str(k): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):  # a nested section, e.g. train.early_stopping
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise _error(key, f"expected a mapping, got {_show(value)}")
        hints = typing.get_type_hints(tp)
        names = [f.name for f in dataclasses.fields(tp)]
        for k in value:
            if k not in names:
                raise _error(f"{key}.{k}", "unknown key" + _suggest(f"{key}.{k}", [f"{key}.{n}" for n in names]))
        return tp(**{k: _coerce(v, hints[k], f"{key}.{k}") for k, v in value.items()})
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _error(key, f"expected true or false, got {_show(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _error(key, f"expected an integer, got {_show(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an integer too large for a float
                raise _error(key, f"expected a number, got {_show(value)}") from None
        if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise _error(key, f"expected a number, got {_show(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise _error(key, f"expected a string, got {_show(value)}")
    return value


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(valid)}"


def _all_keys() -> list[str]:
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def _blame(e: ConfigError, source: str, overridden: dict[str, str]) -> ConfigError:
    """Prefix ``e`` with where its value came from: the ``-o`` override that set it, or the config file."""
    key = getattr(e, "key", None)
    if key is not None:
        for o, text in overridden.items():
            if key == o or key.startswith((o + ".", o + "[")) or o.startswith(key + "."):
                out = ConfigError(f"-o {_clip(text)}: {e}")
                out.key = key  # type: ignore[attr-defined]
                return out
    out = ConfigError(f"{source}: {e}")
    out.key = key  # type: ignore[attr-defined]
    return out


def _build_section(name: str, cls: type, values: Any, source: str, overridden: dict[str, str] | None = None) -> Any:
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: section {name!r} must be a mapping, got {_show(values)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    try:
        for k, v in values.items():
            if k not in names:
                full = [f"{name}.{n}" for n in names]
                raise ConfigError(f"{source}: unknown key '{name}.{k}'" + _suggest(f"{name}.{k}", full))
            kwargs[k] = _coerce(v, hints[k], f"{name}.{k}")
        return cls(**kwargs)
    except ConfigError as e:
        if getattr(e, "key", None) is None:
            raise
        raise _blame(e, source, overridden or {}) from None


def from_dict(raw: Any, source: str = "config", overridden: dict[str, str] | None = None) -> Config:
    """A Config from a raw mapping. ``overridden`` maps dotted keys set by ``-o`` to the override's text, so an
    error in such a value names the override rather than ``source``."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with sections {list(SECTIONS)}, got {type(raw).__name__}")
    for k in raw:
        if k not in SECTIONS:
            raise ConfigError(f"{source}: unknown section '{k}'" + _suggest(str(k), list(SECTIONS)))
    sections = {name: _build_section(name, cls, raw.get(name), source, overridden) for name, cls in SECTIONS.items()}
    try:
        return Config(**sections)
    except ConfigError as e:
        raise _blame(e, source, overridden or {}) from None


def _split_flow_list(text: str) -> list[str] | None:
    """``[a*.tfrecord, b[0-5].tfrecord]`` -> its items, for lists YAML cannot parse (glob brackets, ``*``).

    Items are split at top-level commas; brackets inside an item (glob character classes) and quotes are kept
    together. Returns None when ``text`` is not a bracketed list.
    """
    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return None
    items, cur, depth, quote = [], [], 0, ""
    for ch in text[1:-1]:
        if quote:
            if ch == quote:
                quote = ""
            else:
                cur.append(ch)
            continue
        if ch in "'\"":
            quote = ch
        elif ch == "," and depth == 0:
            items.append("".join(cur).strip())
            cur = []
            continue
        else:
            depth += ch == "["
            depth -= ch == "]"
            cur.append(ch)
    if quote or depth:
        return None
    last = "".join(cur).strip()
    if last or items:
        items.append(last)
    return items


def parse_override(text: str) -> tuple[list[str], Any]:
    """``key.sub=value`` -> (key parts, value parsed as YAML).

    A bracketed list YAML cannot read (``[validate00[0-5].tfrecord]``, ``[*.tfrecord]``) is split into its items
    rather than taken as one literal string; any other value YAML cannot read is an error.
    """
    if "=" not in text:
        raise ConfigError(f"override {_show(text)}: expected key=value, e.g. train.batch_size=256")
    key, value = text.split("=", 1)
    key = key.strip()
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except (yaml.YAMLError, ValueError, RecursionError):
        parsed = _split_flow_list(value)
        if parsed is None:
            if value.lstrip()[:1] in ("[", "{", "'", '"'):
                hint = (f"; quote each item, e.g. {key}='[\"a[0-5].tfrecord\", \"b*.tfrecord\"]'"
                        if value.lstrip().startswith("[") else "")
                raise ConfigError(f"-o {_clip(text)}: the value is not valid YAML{hint}") from None
            parsed = value  # a plain string YAML trips over, e.g. one containing ': '
    return key.split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str], overridden: dict[str, str] | None = None) -> dict[str, Any]:
    """Apply ``section.key=value`` (or ``section.key.sub=value`` inside a mapping) to a raw config dict.

    ``overridden``, when given, receives each dotted key set, mapped to its override text.
    """
    valid = _all_keys()
    for text in overrides:
        parts, value = parse_override(text)
        key = ".".join(parts)
        if len(parts) < 2 or ".".join(parts[:2]) not in valid or not all(parts):
            raise ConfigError(f"override: unknown key '{key}'" + _suggest(key, valid))
        section = raw.get(parts[0])
        if section is None:
            section = {}
        if not isinstance(section, dict):
            raise ConfigError(f"override {key}: section {parts[0]!r} of the config is not a mapping")
        raw[parts[0]] = section
        if len(parts) == 2:
            section[parts[1]] = value
        else:  # into a mapping field, e.g. model.feature_dims.rgb=2048
            cur = section.get(parts[1])
            if cur is None:
                cur = dataclasses.asdict(SECTIONS[parts[0]]()).get(parts[1])
            if not isinstance(cur, dict):
                raise ConfigError(f"override: '{'.'.join(parts[:2])}' is not a mapping, cannot set '{key}'")
            cur = dict(cur)
            target = cur
            for i, p in enumerate(parts[2:-1], start=2):
                nxt = target.get(p)
                if not isinstance(nxt, dict):
                    where = ".".join(parts[: i + 1])
                    raise ConfigError(f"override: '{where}' is {'not set' if nxt is None else 'a value, not a mapping'}"
                                      f", cannot set '{key}'")
                target[p] = nxt = dict(nxt)
                target = nxt
            target[parts[-1]] = value
            section[parts[1]] = cur
        if overridden is not None:
            overridden[key] = text
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply dotted overrides.

    Raises:
        ConfigError: the file is missing, unreadable, not UTF-8, not YAML, or a value is of the wrong type or out
            of its documented range. The message names the config file, or the ``-o`` override the value came from.
    """
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            p = shipped_config(path)
            if p is None:
                names = ", ".join(sorted(q.stem for q in _shipped_configs()))
                raise ConfigError(f"{path}: config file not found (the shipped configs, usable by name from any "
                                  f"folder: {names})")
            source = str(p)
        try:
            data = p.read_bytes()
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the config: {e.strerror or e}") from None
        kind, text = weights_file_kind(p, data[:16]), ""
        if not kind:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                kind = weights_file_kind(p, data[:16], by_suffix=True)
                if not kind:
                    raise ConfigError(f"{path}: not UTF-8 text (byte {e.start} is {data[e.start]:#04x}); save the "
                                      "config as UTF-8") from None
        if kind == "an ONNX graph":
            raise ConfigError(f"{path}: is {kind}, not a YAML config; a graph goes to --onnx {path}")
        if kind:
            raise ConfigError(f"{path}: is {kind}, not a YAML config; weights go to --weights {path} (a training "
                              "checkpoint stores its config, so --config can then be left out)")
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}: not valid YAML{where}") from None
        except (ValueError, RecursionError) as e:  # e.g. an integer literal too long to convert
            raise ConfigError(f"{path}: not a usable YAML config ({type(e).__name__})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping with sections {list(SECTIONS)}")
    overridden: dict[str, str] = {}
    raw = apply_overrides(raw, overrides or [], overridden)
    return from_dict(raw, source, overridden)


def weights_file_kind(path: Path, head: bytes, by_suffix: bool = False) -> str | None:
    """What weights file ``path`` is, from its first bytes (and, with ``by_suffix``, its name), or None."""
    if head[:4] == b"PK\x03\x04":
        return "a weights file (a torch.save zip archive, e.g. a checkpoint)"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a weights file (a pickle, e.g. Paddle .pdparams)"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "a weights file (safetensors)"
    suffix = path.suffix.lower() if by_suffix else ""
    if suffix == ".onnx":
        return "an ONNX graph"
    if suffix in (".pt", ".pth", ".ckpt", ".safetensors", ".pdparams"):
        return f"a weights file ({suffix})"
    return None


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config atomically: a crash or a full disk leaves the old file or the new one, whole."""
    from attncluster.checkpoint import atomic_write_bytes

    atomic_write_bytes(cfg.to_yaml().encode(), path, "write config")


def _shipped_configs() -> list[Path]:
    from importlib import resources

    folder = Path(str(resources.files("attncluster") / "configs"))
    return sorted(folder.glob("*.yaml")) if folder.is_dir() else []


def shipped_config(name: str | Path) -> Path | None:
    """The config shipped in the package for ``name``: ``youtube8m``, ``youtube8m.yaml`` or ``configs/youtube8m.yaml``
    (the repository's path), so the README's commands work from any folder after a plain pip install."""
    stem = Path(str(name)).name
    for q in _shipped_configs():
        if stem in (q.name, q.stem) and (Path(str(name)).parent in (Path("."), Path("configs"))):
            return q
    return None
