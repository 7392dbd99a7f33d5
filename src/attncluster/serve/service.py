"""The model side of the service (predict and encode): sampling, the batch function, ``predict``'s records.

No HTTP here: :class:`ModelService` is what the dynamic batcher (:mod:`attncluster.serve.batching`) calls in its
worker thread, and what turns score rows into the JSONL records ``predict`` writes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attncluster.data.records import dequantize
from attncluster.data.sampling import sample_indices
from attncluster.inference import default_top_k, prediction_record, top_classes
from attncluster.serve.limits import RequestError


class SegmentJob:
    """A batcher item: one whole video whose 5-second segments are scored (``segments=true``). Its segments are
    one batch of their own, run through :func:`attncluster.segments.score_segments` (``predict --segments``'
    scoring); its result is ``(starts, scores (S, num_classes))``."""

    def __init__(self, frames: dict[str, np.ndarray]) -> None:
        self.frames = frames


class ModelService:
    """Sampling, batching and the ``predict`` record format around a :class:`~attncluster.inference.Predictor`.

    Args:
        predictor: has ``modalities`` ({name: F}), ``num_classes`` and ``scores(features) -> (N, C)``.
        seg_num: frames per video the model sees (``model.seg_num``).
        class_names: names for the ``names`` field, or None.
    """

    def __init__(self, predictor, seg_num: int, class_names: list[str] | None = None) -> None:
        self.predictor = predictor
        self.modalities: dict[str, int] = dict(predictor.modalities)
        self.num_classes = int(predictor.num_classes)
        self.seg_num = int(seg_num)
        self.class_names = class_names
        self.default_top_k = default_top_k(self.num_classes)  # as predict
        # An ONNX graph exported with uint8 inputs takes quantized frames only: float requests are refused up front.
        self.accepts_float = getattr(predictor, "input_dtype", "float32") != "uint8"
        self._segment_classes: np.ndarray | None = None  # predict --segments' classes, on the first segments=true

    def sample(self, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """(T, F) per modality -> (seg_num, F): the stratum centres of the common length, as eval and predict."""
        n = min(int(a.shape[0]) for a in features.values())
        idx = sample_indices(n, self.seg_num)
        return {m: np.ascontiguousarray(features[m][idx]) for m in self.modalities}

    def run_batch(self, items: list) -> list:
        """Sampled videos -> one (C,) float32 score row each; a :class:`SegmentJob` -> (starts, (S, C) scores), its
        segments run as one model call of their own. Runs in the batcher's worker thread."""
        out: list = [None] * len(items)
        videos = [i for i, it in enumerate(items) if not isinstance(it, SegmentJob)]
        if videos:
            for i, row in zip(videos, self._score_videos([items[i] for i in videos])):
                out[i] = row
        for i, it in enumerate(items):
            if isinstance(it, SegmentJob):
                out[i] = self.score_segments(it.frames)
        return out

    def _score_videos(self, items: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
        batch = {}
        for m in self.modalities:
            arrays = [it[m] for it in items]
            if any(a.dtype != np.uint8 for a in arrays):  # a mixed batch: dequantize the quantized ones here
                arrays = [dequantize(a) if a.dtype == np.uint8 else a.astype(np.float32, copy=False) for a in arrays]
            batch[m] = np.stack(arrays)  # (N, seg_num, F)
        scores = np.asarray(self.predictor.scores(batch), dtype=np.float32)
        return list(scores)

    def score_segments(self, frames: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """One video's (T, F) frames -> ``(starts, scores (S, C))``: ``predict --segments``' default scoring."""
        from attncluster.segments import DEFAULT_SCORING, score_segments

        starts, scores = score_segments(self.predictor, {m: frames[m] for m in self.modalities}, DEFAULT_SCORING)
        return starts, np.asarray(scores, dtype=np.float32)

    def warmup_items(self, n: int) -> list[dict[str, np.ndarray]]:
        """``n`` all-zero videos: the batch that turns ``/readyz`` ready."""
        return [{m: np.zeros((self.seg_num, d), dtype=np.uint8) for m, d in self.modalities.items()}] * n

    def check_top_k(self, top_k: int | None) -> int:
        k = self.default_top_k if top_k is None else int(top_k)
        if not 0 < k <= self.num_classes:
            raise RequestError(422, f"top_k {k}: must be in 1..{self.num_classes} (the model's classes)")
        return k

    def segment_records(self, starts: np.ndarray, scores: np.ndarray, num_frames: int, top_k: int,
                        fps: float = 1.0) -> list[dict[str, Any]]:
        """A :class:`SegmentJob`'s result as ``predict --segments``' .jsonl segments, with names: the top ``top_k``
        of the classes ``predict --segments`` ranks (all, or the 2019 whitelist for a 3,862-class model)."""
        from attncluster.segments import default_classes, segment_records

        if self._segment_classes is None:
            self._segment_classes = default_classes(self.num_classes)
        classes = self._segment_classes
        return segment_records(starts, scores, num_frames, classes, min(top_k, len(classes)), self.class_names, fps)

    def records(self, ids: list[str], scores: list[np.ndarray], top_k: int) -> list[dict[str, Any]]:
        """``predict``'s JSONL records: classes by descending score (ties: lower class first), 6 decimals, names."""
        classes, top = top_classes(np.stack(scores), top_k)
        return [prediction_record(vid, c, s, self.class_names) for vid, c, s in zip(ids, classes, top)]


__all__ = ["ModelService", "SegmentJob"]
