"""Typed configuration: nested dataclasses loaded from YAML, with dotted overrides.

A config has four sections, ``model``, ``data``, ``train`` and ``eval``. Unknown keys are rejected with the
closest valid key suggested, values are type-checked on load and range-checked in ``__post_init__``, and
``-o train.batch_size=256`` style overrides go through the same checks.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from attncluster.errors import ConfigError

LOSSES = ("bce", "ce")
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine")
PRECISIONS = ("fp32", "bf16", "fp16")
FORMATS = ("auto", "yt8m", "pickle", "features")


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


@dataclass
class ModelConfig:
    """The Attention Cluster model (reference defaults: YouTube-8M rgb + audio)."""

    feature_dims: dict[str, int] = field(default_factory=lambda: {"rgb": 1024, "audio": 128})
    cluster_nums: Union[int, dict[str, int]] = 32
    num_classes: int = 3862
    seg_num: int = 100
    drop_rate: float = 0.5
    hidden_sizes: list[int] = field(default_factory=lambda: [1024, 4096])

    def __post_init__(self) -> None:
        _check(len(self.feature_dims) > 0, "model.feature_dims", "needs at least one modality")
        for m, d in self.feature_dims.items():
            _check(d > 0, f"model.feature_dims.{m}", f"must be > 0, got {d}")
        if isinstance(self.cluster_nums, dict):
            missing = [m for m in self.feature_dims if m not in self.cluster_nums]
            _check(not missing, "model.cluster_nums", f"has no entry for modalities {missing}")
            extra = [m for m in self.cluster_nums if m not in self.feature_dims]
            _check(not extra, "model.cluster_nums", f"names modalities not in model.feature_dims: {extra}")
            for m, c in self.cluster_nums.items():
                _check(c > 0, f"model.cluster_nums.{m}", f"must be > 0, got {c}")
        else:
            _check(self.cluster_nums > 0, "model.cluster_nums", f"must be > 0, got {self.cluster_nums}")
        _check(self.num_classes > 0, "model.num_classes", f"must be > 0, got {self.num_classes}")
        _check(self.seg_num > 0, "model.seg_num", f"must be > 0, got {self.seg_num}")
        _check(0.0 <= self.drop_rate < 1.0, "model.drop_rate", f"must be in [0, 1), got {self.drop_rate}")
        for h in self.hidden_sizes:
            _check(h > 0, "model.hidden_sizes", f"sizes must be > 0, got {self.hidden_sizes}")

    def model_kwargs(self) -> dict[str, Any]:
        return {
            "feature_dims": dict(self.feature_dims),
            "cluster_nums": dict(self.cluster_nums) if isinstance(self.cluster_nums, dict) else self.cluster_nums,
            "num_classes": self.num_classes,
            "drop_rate": self.drop_rate,
            "hidden_sizes": tuple(self.hidden_sizes),
        }


@dataclass
class DataConfig:
    """Where the data is and how it is read. Paths may be files, globs, directories, .list files or URLs."""

    train: list[str] = field(default_factory=list)
    valid: list[str] = field(default_factory=list)
    format: str = "auto"
    num_workers: int = 2
    skip_corrupt: bool = False
    class_names: Union[str, None] = None
    pin_memory: Union[bool, None] = None

    def __post_init__(self) -> None:
        _check(self.format in FORMATS, "data.format", f"must be one of {FORMATS}, got {self.format!r}")
        _check(self.num_workers >= 0, "data.num_workers", f"must be >= 0, got {self.num_workers}")


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


    def __post_init__(self) -> None:
        _check(self.epochs > 0, "train.epochs", f"must be > 0, got {self.epochs}")
        _check(self.batch_size > 0, "train.batch_size", f"must be > 0, got {self.batch_size}")
        _check(self.learning_rate > 0, "train.learning_rate", f"must be > 0, got {self.learning_rate}")
        _check(self.optimizer in OPTIMIZERS, "train.optimizer", f"must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        _check(self.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(self.schedule in SCHEDULES, "train.schedule", f"must be one of {SCHEDULES}, got {self.schedule!r}")
        _check(self.warmup_steps >= 0, "train.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        _check(self.loss in LOSSES, "train.loss", f"must be one of {LOSSES}, got {self.loss!r}")
        _check(self.log_interval > 0, "train.log_interval", f"must be > 0, got {self.log_interval}")
        _check(self.valid_interval >= 0, "train.valid_interval", f"must be >= 0 (0 = never), got {self.valid_interval}")
        _check(self.precision in PRECISIONS, "train.precision", f"must be one of {PRECISIONS}, got {self.precision!r}")
        _check(self.grad_clip >= 0, "train.grad_clip", f"must be >= 0, got {self.grad_clip}")
        _check(self.num_threads >= 0, "train.num_threads", f"must be >= 0 (0 = auto), got {self.num_threads}")


@dataclass
class EvalConfig:
    """Evaluation and prediction."""

    batch_size: int = 256
    top_k: int = 20

    def __post_init__(self) -> None:
        _check(self.batch_size > 0, "eval.batch_size", f"must be > 0, got {self.batch_size}")
        _check(self.top_k > 0, "eval.top_k", f"must be > 0, got {self.top_k}")


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
        _check(self.preset in EXTRACT_PRESETS, "extract.preset", f"must be one of {EXTRACT_PRESETS}, got {self.preset!r}")
        _check(self.fps > 0, "extract.fps", f"must be > 0, got {self.fps}")
        _check(self.max_frames > 0, "extract.max_frames", f"must be > 0, got {self.max_frames}")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)

    @property
    def multi_label(self) -> bool:
        return self.train.loss == "bce"

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
        raise ConfigError(f"{key}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is list:
        if isinstance(value, (str, int, float)) and args and args[0] is str:
            value = [str(value)]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(valid)}"


def _all_keys() -> list[str]:
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def _build_section(name: str, cls: type, values: Any, source: str) -> Any:
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: section {name!r} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in values.items():
        if k not in names:
            full = [f"{name}.{n}" for n in names]
            raise ConfigError(f"{source}: unknown key '{name}.{k}'" + _suggest(f"{name}.{k}", full))
        kwargs[k] = _coerce(v, hints[k], f"{name}.{k}")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def from_dict(raw: Any, source: str = "config") -> Config:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with sections {list(SECTIONS)}, got {type(raw).__name__}")
    for k in raw:
        if k not in SECTIONS:
            raise ConfigError(f"{source}: unknown section '{k}'" + _suggest(str(k), list(SECTIONS)))
    return Config(**{name: _build_section(name, cls, raw.get(name), source) for name, cls in SECTIONS.items()})


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. train.batch_size=256")
    key, value = text.split("=", 1)
    key = key.strip()
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key.split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` (or ``section.key.sub=value`` inside a mapping) to a raw config dict."""
    valid = _all_keys()
    for text in overrides:
        parts, value = parse_override(text)
        key = ".".join(parts)
        if len(parts) < 2 or ".".join(parts[:2]) not in valid:
            raise ConfigError(f"override: unknown key '{key}'" + _suggest(key, valid))
        section = raw.setdefault(parts[0], {}) or {}
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
            for p in parts[2:-1]:
                target = target.setdefault(p, {})
            target[parts[-1]] = value
            section[parts[1]] = cur
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply dotted overrides."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}: not valid YAML{where}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping with sections {list(SECTIONS)}")
    raw = apply_overrides(raw, overrides or [])
    return from_dict(raw, source)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(cfg.to_yaml())
