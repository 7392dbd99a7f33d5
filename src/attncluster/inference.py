"""Running a trained model: the one module every verb that uses weights imports.

``train``, ``eval``, ``predict`` and the verbs that follow them (``export``, ``serve``, ``explain``) share these
pieces: build the config's model and load weights into it, autocast for a precision, turn logits into per-class
scores, the loss, and class names (``data.class_names`` or the official ``vocabulary.csv``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from attncluster.config import Config
from attncluster.distributed import autocast_for  # noqa: F401  (inference's name for it, used by the verbs)
from attncluster.errors import ConfigError


def compute_loss(logits: Tensor, labels: Tensor, loss: str) -> Tensor:
    """Reference loss: BCE-with-logits summed over classes, averaged over the batch; or softmax CE.

    For ``ce`` a video with several labels gets a uniform target over them.
    """
    logits = logits.float()
    if loss == "segment_bce":  # labels: 1/0 the rating of a rated (segment, class) pair, -1 unrated (masked out)
        mask = labels >= 0
        if not bool(mask.all()):
            bce = F.binary_cross_entropy_with_logits(logits, labels.clamp(min=0), reduction="none")
            return (bce * mask).sum() / logits.shape[0]
        return F.binary_cross_entropy_with_logits(logits, labels, reduction="sum") / logits.shape[0]
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(logits, labels, reduction="sum") / logits.shape[0]
    target = labels / labels.sum(dim=1, keepdim=True).clamp_min(1.0)  # (N, C) distribution over the labels
    return F.cross_entropy(logits, target)


def predict_scores(logits: Tensor, loss: str) -> Tensor:
    """Per-class scores: sigmoid for multi-label (BCE) models, softmax for single-label (CE) models."""
    return torch.softmax(logits.float(), dim=1) if loss == "ce" else torch.sigmoid(logits.float())


def load_model(cfg: Config, weights: str, device: torch.device | str = "cpu"):
    """The config's ``AttentionCluster`` with ``weights`` loaded strictly, on ``device``, in eval mode."""
    from attncluster.weights import load_weights
    from attncluster.model import AttentionCluster

    model = AttentionCluster(**cfg.model.model_kwargs())
    load_weights(model, weights, drop_rate=cfg.model.drop_rate)
    return model.to(device).eval()


def load_class_names(cfg: Config) -> list[str] | None:
    """Class names from ``data.class_names`` (one per line), checked against model.num_classes; None if unset."""
    if not cfg.data.class_names:
        return None
    from attncluster.data.paths import read_text

    names = [line.strip() for line in read_text(cfg.data.class_names).splitlines() if line.strip()]
    if len(names) != cfg.model.num_classes:
        raise ConfigError(f"{cfg.data.class_names}: lists {len(names)} class names, model.num_classes is {cfg.model.num_classes}")
    return names


def load_vocabulary(path: str, num_classes: int) -> list[str]:
    """Class names from the official YouTube-8M ``vocabulary.csv`` (columns Index, ..., Name, ...).

    Every class index 0..num_classes-1 must be present.
    """
    from attncluster.data.paths import read_text

    text = read_text(path)
    rows = csv.DictReader(io.StringIO(text))
    if not rows.fieldnames or "Index" not in rows.fieldnames or "Name" not in rows.fieldnames:
        raise ConfigError(f"{path}: vocabulary must be a CSV with 'Index' and 'Name' columns (the official "
                          f"vocabulary.csv), found columns {rows.fieldnames}")
    names: dict[int, str] = {}
    for line, row in enumerate(rows, start=2):
        try:
            idx = int(row["Index"])
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: line {line}: Index {row['Index']!r} is not an integer") from None
        names[idx] = row["Name"] or ""
    missing = [i for i in range(num_classes) if i not in names]
    if missing:
        raise ConfigError(f"{path}: vocabulary covers {num_classes - len(missing)} of {num_classes} classes; "
                          f"missing indices {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return [names[i] for i in range(num_classes)]


YOUTUBE8M_2018_CLASSES = 3862  # the 2018 vocabulary; a model with this many classes gets its names by default


def youtube8m_names() -> list[str]:
    """The 3,862 YouTube-8M 2018 class names shipped in the package (``attncluster/vocab``; see its NOTICE)."""
    from importlib import resources

    text = (resources.files("attncluster") / "vocab" / "youtube8m_2018.txt").read_text(encoding="utf-8")
    names = text.splitlines()
    if len(names) != YOUTUBE8M_2018_CLASSES:  # a damaged installation, never a user error
        raise RuntimeError(f"attncluster/vocab/youtube8m_2018.txt holds {len(names)} names, expected 3862")
    return names


def class_names_for(num_classes: int, cfg: Config | None = None, vocab: str | bool | None = None,
                    stored: list[str] | None = None) -> list[str] | None:
    """The class names predict, explain and serve print, in this order of preference:

    ``vocab`` False (``--no-vocab``): none; ``vocab`` a path: that ``vocabulary.csv``; the config's
    ``data.class_names``; ``stored`` (the names an ONNX graph was exported with); the shipped YouTube-8M 2018 names
    when the model has 3,862 classes; else none.
    """
    if vocab is False:
        return None
    if vocab:
        return load_vocabulary(str(vocab), num_classes)
    if cfg is not None and cfg.data.class_names:
        return load_class_names(cfg)
    if stored:
        return list(stored)
    return youtube8m_names() if num_classes == YOUTUBE8M_2018_CLASSES else None


def config_from_weights(path: str, overrides: list[str] | None = None) -> Config:
    """The resolved config a training checkpoint stores (``train`` saves it in every checkpoint), with ``-o``
    overrides applied, so eval, predict, explain, export and serve need no ``--config`` for it.

    Loading is safe (``torch.load(weights_only=True)``, through :func:`attncluster.checkpoint.load_state_dict_any`).

    Raises:
        ConfigError: the file carries no config (safetensors, converted Paddle weights, ``.pdparams``).
    """
    from attncluster.weights import load_state_dict_any
    from attncluster.config import apply_overrides, from_dict

    _, info = load_state_dict_any(path)
    raw = info.get("config")
    if not isinstance(raw, dict):
        kind = "converted Paddle weights" if info.get("source") == "paddle" else "a weights file without a config"
        raise ConfigError(f"{path}: is {kind} (it stores the model's shape but not the data settings); pass the "
                          "model's config with --config CFG")
    overridden: dict[str, str] = {}
    raw = apply_overrides(raw, overrides or [], overridden)
    return from_dict(raw, f"{path} (the config stored in the checkpoint)", overridden)


DEFAULT_TOP_K = 20  # the Kaggle 2018 submission's 20 classes per video


def default_top_k(num_classes: int) -> int:
    """predict's and serve's default number of classes per video: 20, or every class when the model has fewer."""
    return min(DEFAULT_TOP_K, num_classes)


def top_classes(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` highest-scoring classes of each video, highest first; among equal scores the lower class index first.

    The one top-k of predict, serve, explain and classify_videos (torch.topk leaves the order among ties
    unspecified, so it is not used). Accepts ``(C,)`` or ``(N, C)`` scores; returns ``(classes, scores)`` of shape
    ``(k,)`` or ``(N, k)``, classes as int64.
    """
    s = np.asarray(scores)
    one = s.ndim == 1
    s = s.reshape(1, -1) if one else s
    if not 0 < k <= s.shape[1]:
        raise ValueError(f"top_classes: k={k} must be in 1..{s.shape[1]}")
    classes = np.argsort(-s, axis=1, kind="stable")[:, :k].astype(np.int64)  # (N, k); stable: ties by index
    top = np.take_along_axis(s, classes, axis=1)
    return (classes[0], top[0]) if one else (classes, top)


def prediction_record(video_id: str, classes, scores, names: list[str] | None = None) -> dict:
    """One video's top-k in ``predict``'s JSONL format (serve and classify_videos answer the same):
    ``{"id", "classes", "scores" (6 decimals), "names" (with class names)}``, classes by descending score."""
    rec: dict = {"id": video_id, "classes": [int(k) for k in classes], "scores": [round(float(p), 6) for p in scores]}
    if names is not None:
        rec["names"] = [names[int(k)] for k in classes]
    return rec


@runtime_checkable
class Predictor(Protocol):
    """Anything that scores batches of videos given as arrays: the one interface that eval, predict, serve, explain
    and export run a model through. ``TorchPredictor`` (here) and ``export.OnnxPredictor`` implement it.

    Input is ``{modality: (N, L, F)}`` per batch (numpy arrays or CPU tensors), uint8 (dataset-quantized,
    dequantized by the predictor) or float; frames are already sampled to the model's length (or any L: attention
    pools over time). ``run`` is the one forward pass; ``scores`` and ``logits`` are its two halves.
    """

    modalities: dict[str, int]
    num_classes: int
    loss: str

    def run(self, features: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """(scores, logits) of one batch, each (N, num_classes) float32; scores are sigmoid for bce models and
        softmax for ce models (:func:`predict_scores`)."""
        ...

    def scores(self, features: Mapping[str, Any]) -> np.ndarray:
        return self.run(features)[0]

    def logits(self, features: Mapping[str, Any]) -> np.ndarray:
        return self.run(features)[1]


def score_batches(predictor: Predictor, loader: Iterable[dict]) -> Iterator[tuple[dict, np.ndarray, np.ndarray]]:
    """The one loop over a data set: each collated batch of ``loader`` (ids, labels, shard and record numbers,
    features) with its ``(scores, logits)`` from ``predictor``. eval, training's validation and predict use it."""
    for batch in loader:
        scores, logits = predictor.run({m: batch[m] for m in predictor.modalities})
        yield batch, scores, logits


class TorchPredictor(Predictor):
    """A PyTorch model from a config and weights, in eval mode on ``device``."""

    def __init__(self, cfg: Config, weights: str | None, device: str | torch.device | None = None,
                 model: torch.nn.Module | None = None) -> None:
        from attncluster import distributed

        self.cfg = cfg
        self.device = distributed.device_for(device, distributed.DistInfo()) if not isinstance(device, torch.device) else device
        self.model = load_model(cfg, weights, self.device) if model is None else model.eval()
        self.modalities = dict(cfg.model.feature_dims)
        self.num_classes = cfg.model.num_classes
        self.loss = cfg.train.loss

    @classmethod
    def from_model(cls, model: torch.nn.Module, cfg: Config, device: torch.device) -> TorchPredictor:
        """A predictor over a model already built and on ``device`` (training's validation); puts it in eval mode."""
        return cls(cfg, None, device, model=model)

    def tensors(self, features: Mapping[str, Any]) -> dict[str, Tensor]:
        from attncluster.data.records import dequantize

        out = {}
        for m in self.modalities:
            x = torch.as_tensor(features[m]).to(self.device)
            out[m] = dequantize(x) if x.dtype == torch.uint8 else x.float()
        return out

    @torch.no_grad()
    def run(self, features: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        with autocast_for(self.device, self.cfg.train.precision):
            logits = self.model(self.tensors(features)).float()
        return predict_scores(logits, self.loss).cpu().numpy(), logits.cpu().numpy()
