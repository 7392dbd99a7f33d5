"""``attncluster serve``: an HTTP service over a trained model, with dynamic batching.

A thin shell, in three layers:

- decode: a request (JSON features, an uploaded TFRecord or ``.npz``, or a video file) becomes validated
  ``(id, {modality: (T, F) array})`` videos, each sampled to the model's ``seg_num`` frames exactly as ``eval`` and
  ``predict`` do (:func:`attncluster.data.sampling.sample_indices`, the centre of each stratum), so videos of any
  length stack into one batch. Every check happens here, before a video is queued, so a bad request never reaches
  a batch shared with others.
- predict: :class:`attncluster.serve_batching.DynamicBatcher` collects the queued videos of concurrent requests and
  runs them through :class:`attncluster.inference.Predictor` (``TorchPredictor``, or export's ``OnnxPredictor``
  for ``--onnx``) in its worker thread; the event loop only awaits futures.
- encode: per-class scores become the top-k records of ``predict``'s JSONL (``id``, ``classes``, ``scores``
  rounded to 6 decimals, ``names``).

FastAPI + uvicorn: the request schema is pydantic (so ``/docs`` documents it), and the batching a serving framework
would give is one small class of our own (Ray Serve, BentoML and Triton would each add a large dependency, or
leave the model outside Python). Prometheus text for ``/metrics`` is written here (no ``prometheus_client``).
"""

import asyncio
import base64
import binascii
import hmac
import io
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np

from attncluster.data.records import MAX_FRAMES, dequantize
from attncluster.data.sampling import sample_indices
from attncluster.errors import AttnClusterError, ConfigError
from attncluster.serve_batching import BatcherClosed, DynamicBatcher

log = logging.getLogger("attncluster.serve")

MiB = 1 << 20
PREDICT = "/v1/predict"
PREDICT_VIDEO = "/v1/predict/video"
ENDPOINTS = (PREDICT, PREDICT_VIDEO, "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json")
FILE_TYPES = ("application/octet-stream", "application/x-tfrecord", "application/x-npz", "application/zip")


@dataclass
class ServeLimits:
    """What one request may cost. Size limits answer 413, the time limit 504."""

    max_body_bytes: int = 32 * MiB        # features requests (JSON or an uploaded TFRecord / npz)
    max_video_bytes: int = 256 * MiB      # /v1/predict/video uploads
    max_videos: int = 1024                # videos (records) per request: a video-level shard holds ~300
    max_frames: int = MAX_FRAMES          # frames per video; the dataset reader keeps 300, so predict sees as many
    request_timeout_s: float = 30.0       # from the first byte of the body to the answer
    video_timeout_s: float = 300.0        # the same for /v1/predict/video (decoding and backbones take longer)

    def check(self) -> None:
        for name in ("max_body_bytes", "max_video_bytes", "max_videos", "max_frames"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(self, name)}")
        for name in ("request_timeout_s", "video_timeout_s"):
            if not getattr(self, name) > 0:
                flag = "--" + name[:-2].replace("_", "-")
                raise ConfigError(f"{flag}: must be > 0 seconds, got {getattr(self, name)}")


class RequestError(Exception):
    """A request the service refuses: answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = " ".join(str(message).split())  # one line, whatever the cause's text


# --------------------------------------------------------------------------------------------------------------------
# The model side: sampling, batches, records (no HTTP here)


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
        self.default_top_k = min(20, self.num_classes)  # as predict
        # An ONNX graph exported with uint8 inputs takes quantized frames only: float requests are refused up front.
        self.accepts_float = getattr(predictor, "input_dtype", "float32") != "uint8"

    def sample(self, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """(T, F) per modality -> (seg_num, F): the stratum centres of the common length, as eval and predict."""
        n = min(int(a.shape[0]) for a in features.values())
        idx = sample_indices(n, self.seg_num)
        return {m: np.ascontiguousarray(features[m][idx]) for m in self.modalities}

    def run_batch(self, items: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
        """Sampled videos -> one (C,) float32 score row each. Runs in the batcher's worker thread."""
        batch = {}
        for m in self.modalities:
            arrays = [it[m] for it in items]
            if any(a.dtype != np.uint8 for a in arrays):  # a mixed batch: dequantize the quantized ones here
                arrays = [dequantize(a) if a.dtype == np.uint8 else a.astype(np.float32, copy=False) for a in arrays]
            batch[m] = np.stack(arrays)  # (N, seg_num, F)
        scores = np.asarray(self.predictor.scores(batch), dtype=np.float32)
        return list(scores)

    def check_top_k(self, top_k: int | None) -> int:
        k = self.default_top_k if top_k is None else int(top_k)
        if not 0 < k <= self.num_classes:
            raise RequestError(422, f"top_k {k}: must be in 1..{self.num_classes} (the model's classes)")
        return k

    def records(self, ids: list[str], scores: list[np.ndarray], top_k: int) -> list[dict[str, Any]]:
        """``predict``'s JSONL records: classes by descending score, scores rounded to 6 decimals, names."""
        import torch

        top, classes = torch.from_numpy(np.stack(scores)).topk(top_k, dim=1)  # as predict: torch's topk order
        from attncluster.inference import prediction_record

        return [prediction_record(vid, c, s, self.class_names) for vid, s, c in zip(ids, top.numpy(), classes.numpy())]


# --------------------------------------------------------------------------------------------------------------------
# The request schema (pydantic: validated here, documented at /docs)


def _schema_models():
    from pydantic import BaseModel, ConfigDict, Field

    class QuantizedFrames(BaseModel):
        """Frames as YouTube-8M-quantized bytes (value = q * 4/255 + 4/512 - 2), 4x smaller than floats."""

        model_config = ConfigDict(extra="forbid")
        uint8_b64: str = Field(description="base64 of the T*F uint8 values, row-major (frame after frame)")
        shape: tuple[int, int] = Field(description="[T, F]: frames, features per frame")

    Frames = Union[QuantizedFrames, list[list[float]]]

    class VideoFeatures(BaseModel):
        """One video. Besides ``id``, one key per model modality (e.g. ``rgb``, ``audio``), each either quantized
        frames or a list of T frames of F floats. Modalities may differ in T; the shortest sets the video's length,
        as in the dataset reader."""

        model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [
            {"id": "v1", "rgb": {"uint8_b64": "<base64 of T*1024 bytes>", "shape": [120, 1024]},
             "audio": [[0.1, -0.3, "... 128 floats"], "... T frames"]}]})
        __pydantic_extra__: dict[str, Frames] = Field(init=False)
        id: Optional[str] = Field(None, max_length=512, description="echoed in the answer (default: the index)")

    class PredictRequest(BaseModel):
        """Videos to classify, and how many classes to return per video."""

        model_config = ConfigDict(extra="forbid")
        videos: list[VideoFeatures] = Field(min_length=1)
        top_k: Optional[int] = Field(None, ge=1, description="classes per video (default 20, or all when fewer)")

    class Prediction(BaseModel):
        """One line of ``attncluster predict``'s JSONL."""

        id: str
        classes: list[int] = Field(description="class indices, highest score first")
        scores: list[float] = Field(description="per-class probabilities, rounded to 6 decimals")
        names: Optional[list[str]] = Field(None, description="class names (--vocab, data.class_names, the graph's, or the shipped YouTube-8M names for 3,862 classes; none with --no-vocab)")

    class PredictResponse(BaseModel):
        predictions: list[Prediction]

    class ErrorResponse(BaseModel):
        error: str = Field(description="one line saying what was wrong")

    return QuantizedFrames, VideoFeatures, PredictRequest, PredictResponse, ErrorResponse


_MODELS = None


def schema():
    global _MODELS
    if _MODELS is None:
        _MODELS = _schema_models()
    return _MODELS


def _validation_message(error) -> str:
    """The first pydantic error as one line naming the field, e.g. ``videos[0].rgb: expected ...``."""
    first = error.errors()[0]
    loc = list(first.get("loc", ()))
    where = ""
    for part in loc:
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
    if len(loc) >= 3 and loc[0] == "videos" and loc[2] != "id":
        field = f"videos[{loc[1]}].{loc[2]}"
        if len(loc) >= 4 and loc[3] == "QuantizedFrames" and len(loc) >= 5:
            return f"{field}.{loc[4]}: {first['msg']}"
        return (f"{field}: expected {{\"uint8_b64\": ..., \"shape\": [T, F]}} or a list of frames (lists of "
                f"numbers); got {type(first.get('input')).__name__ if 'input' in first else 'something else'}")
    return f"{where or 'body'}: {first['msg']}"


# --------------------------------------------------------------------------------------------------------------------
# Decoding: request bytes -> validated, sampled videos


def _check_frames(a: np.ndarray, where: str, dim: int, max_frames: int) -> np.ndarray:
    if a.ndim != 2 or a.shape[1] != dim:
        raise RequestError(422, f"{where}: shape {list(a.shape)}, expected [T, {dim}] (T frames of {dim} features)")
    if a.shape[0] < 1:
        raise RequestError(422, f"{where}: has no frames")
    if a.shape[0] > max_frames:
        raise RequestError(413, f"{where}: {a.shape[0]} frames, the limit is {max_frames} per video")
    if a.dtype != np.uint8 and not np.isfinite(a).all():
        raise RequestError(422, f"{where}: values must be finite numbers")
    return a


def _check_modalities(names, where: str, modalities: dict[str, int]) -> None:
    takes = ", ".join(f"{m} (T, {d})" for m, d in modalities.items())
    unknown = [k for k in names if k not in modalities]
    if unknown:
        raise RequestError(422, f"{where}: unknown modality {unknown[0]!r}; this model takes {takes}")
    missing = [m for m in modalities if m not in names]
    if missing:
        raise RequestError(422, f"{where}: no {missing[0]!r} features; this model takes {takes}")


def decode_json(body: bytes, service: ModelService, limits: ServeLimits) -> tuple[list[tuple[str, dict]], int | None]:
    """A JSON features request -> ([(id, {modality: (T, F) array})], top_k)."""
    from pydantic import ValidationError

    QuantizedFrames, _, PredictRequest, _, _ = schema()
    try:
        raw = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(400, f"malformed JSON: {e}") from None
    except RecursionError:
        raise RequestError(400, "malformed JSON: nested too deeply") from None
    if isinstance(raw, dict) and isinstance(raw.get("videos"), list) and len(raw["videos"]) > limits.max_videos:
        raise RequestError(413, f"{len(raw['videos'])} videos in one request, the limit is {limits.max_videos}")
    try:
        req = PredictRequest.model_validate(raw)
    except ValidationError as e:
        raise RequestError(422, _validation_message(e)) from None
    videos = []
    for i, v in enumerate(req.videos):
        vid = v.id if v.id is not None else str(i)
        where = f"videos[{i}] (id {vid!r})"
        extra = v.model_extra or {}
        _check_modalities(extra, where, service.modalities)
        feats = {}
        for m, dim in service.modalities.items():
            value, at = extra[m], f"{where}.{m}"
            if isinstance(value, QuantizedFrames):
                t, f = value.shape
                if f != dim or t < 1:
                    raise RequestError(422, f"{at}: shape [{t}, {f}], expected [T, {dim}] with T >= 1")
                if t > limits.max_frames:
                    raise RequestError(413, f"{at}: {t} frames, the limit is {limits.max_frames} per video")
                try:
                    data = base64.b64decode(value.uint8_b64, validate=True)
                except (binascii.Error, ValueError):
                    raise RequestError(422, f"{at}.uint8_b64: not valid base64") from None
                if len(data) != t * f:
                    raise RequestError(422, f"{at}.uint8_b64: decodes to {len(data)} bytes, shape [{t}, {f}] needs "
                                            f"{t * f}")
                feats[m] = np.frombuffer(data, dtype=np.uint8).reshape(t, f)
            else:
                if not service.accepts_float:
                    raise RequestError(422, f"{at}: this model (an ONNX graph with uint8 inputs) takes quantized "
                                            f"frames: send {{\"uint8_b64\": ..., \"shape\": [T, {dim}]}}")
                if any(len(row) != dim for row in value):
                    bad = next(j for j, row in enumerate(value) if len(row) != dim)
                    raise RequestError(422, f"{at}: frame {bad} has {len(value[bad])} values, expected {dim}")
                a = np.asarray(value, dtype=np.float32).reshape(len(value), dim)
                feats[m] = _check_frames(a, at, dim, limits.max_frames)
        videos.append((vid, feats))
    return videos, req.top_k


def _upload_error(e: AttnClusterError, tmp: str, name: str) -> RequestError:
    return RequestError(422, str(e).replace(tmp, name))


def decode_file(data: bytes, service: ModelService, limits: ServeLimits, name: str = "upload",
                video_id: str | None = None) -> list[tuple[str, dict]]:
    """An uploaded TFRecord (frame- or video-level, read by the project's reader, both CRCs checked) or an
    ``.npz`` of one video (one array per modality) -> [(id, {modality: (T, F) array})]."""
    if not data:
        raise RequestError(422, f"{name}: the upload is empty")
    if data[:4] == b"PK\x03\x04":  # a zip archive: .npz
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                _check_modalities(z.files, name, service.modalities)
                for m, dim in service.modalities.items():
                    # Checked before inflating: a small compressed member may hold a huge array.
                    size, most = z.zip.getinfo(m + ".npy").file_size, limits.max_frames * dim * 8 + 4096
                    if size > most:
                        raise RequestError(413, f"{name}: array {m!r} is {size} bytes uncompressed, more than "
                                                f"{limits.max_frames} frames of {dim} values can be")
                arrays = {m: z[m] for m in service.modalities}
        except RequestError:
            raise
        except Exception as e:  # noqa: BLE001 - any unreadable archive is the client's error
            raise RequestError(422, f"{name}: not a readable .npz ({type(e).__name__}: {e})") from None
        feats = {}
        for m, dim in service.modalities.items():
            a = arrays[m]
            if a.dtype != np.uint8:
                if not service.accepts_float:
                    raise RequestError(422, f"{name}: array {m!r} is {a.dtype}; this model (an ONNX graph with uint8 "
                                            f"inputs) takes uint8 (quantized) frames")
                if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
                    raise RequestError(422, f"{name}: array {m!r} has dtype {a.dtype}, expected uint8 or float")
                a = a.astype(np.float32)
            feats[m] = _check_frames(a, f"{name}: array {m!r}", dim, limits.max_frames)
        return [(video_id or os.path.splitext(os.path.basename(name))[0] or "0", feats)]

    from attncluster.data.yt8m import YT8MShard

    with tempfile.NamedTemporaryFile(suffix=".tfrecord") as f:
        f.write(data)
        f.flush()
        videos = []
        try:
            # max_frames as the dataset reader: predict on the same file keeps the same frames.
            with YT8MShard(f.name, modalities=service.modalities, max_frames=MAX_FRAMES) as shard:
                for video in shard:
                    if len(videos) >= limits.max_videos:
                        raise RequestError(413, f"{name}: more than {limits.max_videos} records, the limit per "
                                                f"request")
                    where = f"{name}: record {len(videos)} (id {video.id!r})"
                    _check_modalities(video.features, where, service.modalities)
                    if video.num_frames < 1:
                        raise RequestError(422, f"{where}: has no frames")
                    videos.append((video.id, video.features))
        except AttnClusterError as e:
            raise _upload_error(e, f.name, name) from None
    if not videos:
        raise RequestError(422, f"{name}: holds no records")
    return videos


# --------------------------------------------------------------------------------------------------------------------
# Metrics (Prometheus text exposition format 0.0.4, written here)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _Histogram:
    def __init__(self, buckets) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, x: float) -> None:
        for i, b in enumerate(self.buckets):
            if x <= b:
                self.counts[i] += 1
        self.sum += x
        self.count += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{b}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        lab = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{lab} {self.sum:.6f}", f"{name}_count{lab} {self.count}"]
        return out


class ServeMetrics:
    """Counters and histograms of the service; thread-safe (the batcher's worker reports batches)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, _Histogram] = {}
        self.batch_size = _Histogram(BATCH_BUCKETS)
        self.batch_seconds = _Histogram(LATENCY_BUCKETS)
        self.batch_failures = 0
        self.videos = 0
        self.in_flight = 0

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(endpoint, status)] = self.requests.get((endpoint, status), 0) + 1
            self.latency.setdefault(endpoint, _Histogram(LATENCY_BUCKETS)).observe(seconds)

    def batch(self, size: int, seconds: float, failed: bool) -> None:
        with self._lock:
            self.batch_size.observe(size)
            self.batch_seconds.observe(seconds)
            self.batch_failures += int(failed)
            self.videos += 0 if failed else size

    def render(self, queue_depth: int, ready: bool) -> str:
        with self._lock:
            lines = ["# HELP attncluster_requests_total HTTP requests by endpoint and status code.",
                     "# TYPE attncluster_requests_total counter"]
            lines += [f'attncluster_requests_total{{endpoint="{e}",status="{s}"}} {n}'
                      for (e, s), n in sorted(self.requests.items())]
            lines += ["# HELP attncluster_request_errors_total HTTP requests answered with status >= 400.",
                      "# TYPE attncluster_request_errors_total counter"]
            errors: dict[str, int] = {}
            for (e, s), n in self.requests.items():
                if s >= 400:
                    errors[e] = errors.get(e, 0) + n
            lines += [f'attncluster_request_errors_total{{endpoint="{e}"}} {n}' for e, n in sorted(errors.items())]
            lines += ["# HELP attncluster_request_duration_seconds Time from request to answer.",
                      "# TYPE attncluster_request_duration_seconds histogram"]
            for e, h in sorted(self.latency.items()):
                lines += h.lines("attncluster_request_duration_seconds", f'endpoint="{e}"')
            lines += ["# HELP attncluster_batch_size Videos per model call.", "# TYPE attncluster_batch_size histogram"]
            lines += self.batch_size.lines("attncluster_batch_size")
            lines += ["# HELP attncluster_batch_duration_seconds Time of one model call.",
                      "# TYPE attncluster_batch_duration_seconds histogram"]
            lines += self.batch_seconds.lines("attncluster_batch_duration_seconds")
            for name, kind, text, value in (
                    ("batch_failures_total", "counter", "Model calls that raised.", self.batch_failures),
                    ("videos_total", "counter", "Videos scored.", self.videos),
                    ("queue_depth", "gauge", "Videos waiting for a batch.", queue_depth),
                    ("in_flight_requests", "gauge", "Requests being answered.", self.in_flight),
                    ("ready", "gauge", "1 once the model is loaded and warmed up.", int(ready))):
                lines += [f"# HELP attncluster_{name} {text}", f"# TYPE attncluster_{name} {kind}",
                          f"attncluster_{name} {value}"]
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------------------------
# HTTP: ASGI guard (sizes, metrics), the app and its endpoints


class _BodyTooLarge(RequestError):
    pass


class _Guard:
    """Outermost ASGI layer: per-request metrics, and the body-size limit.

    The body is never stored past the limit. A declared Content-Length over it is refused before the app sees the
    request; a chunked body is counted as it arrives and refused once it passes the limit. Before answering 413 the
    rest of the body is read and thrown away, up to ``DRAIN_BYTES`` and ``DRAIN_SECONDS`` (as nginx's lingering
    close), so that a client still sending gets the answer rather than a connection reset; a body declared larger
    than the limit plus that is answered at once without reading any of it.
    """

    DRAIN_BYTES = 64 * MiB
    DRAIN_SECONDS = 2.0

    def __init__(self, app, limit_for: Callable[[str], int], metrics: ServeMetrics) -> None:
        self.app, self.limit_for, self.metrics = app, limit_for, metrics

    async def _error(self, send, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def _drain(self, receive, more: bool) -> None:
        """Read and discard the rest of a refused body, within the drain budget."""
        seen, deadline = 0, time.monotonic() + self.DRAIN_SECONDS
        while more and seen < self.DRAIN_BYTES:
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                return
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            more = message.get("more_body", False)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "other"
        start = time.perf_counter()
        status = [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        self.metrics.in_flight += 1
        try:
            limit = self.limit_for(path)
            length = dict(scope.get("headers") or []).get(b"content-length")
            if length is not None and not length.strip().isdigit():
                return await self._error(send_status, 400, "Content-Length is not a number")
            if length is not None and int(length) > limit:
                if int(length) - limit <= self.DRAIN_BYTES:
                    await self._drain(receive, more=True)
                return await self._error(send_status, 413, f"body of {int(length)} bytes, the limit is {limit} "
                                                           f"bytes for {path}")
            seen = 0

            async def limited_receive():
                nonlocal seen
                message = await receive()
                if message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > limit:
                        await self._drain(receive, message.get("more_body", False))
                        raise _BodyTooLarge(413, f"body over {limit} bytes, the limit for {path}")
                return message

            await self.app(scope, limited_receive, send_status)
        finally:
            self.metrics.in_flight -= 1
            self.metrics.request(endpoint, status[0], time.perf_counter() - start)


def create_app(service: ModelService, *, limits: ServeLimits | None = None, max_batch: int = 64,
               max_wait_ms: float = 5.0, token: str | None = None, extractor=None, warmup: bool = True):
    """The ASGI app: FastAPI endpoints inside the size/metrics guard. The batcher starts with the app's lifespan.

    Args:
        service: the model side.
        limits: request limits.
        max_batch, max_wait_ms: the dynamic batcher's batch size and wait.
        token: when set, ``/v1/*`` and ``/metrics`` need ``Authorization: Bearer <token>``.
        extractor: an ``attncluster.extract.Extractor`` for ``/v1/predict/video`` (None: that endpoint answers 503).
        warmup: run one batch before ``/readyz`` turns ready.
    """
    from contextlib import asynccontextmanager

    from fastapi import Depends, FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.openapi.utils import get_openapi
    from fastapi.responses import JSONResponse, PlainTextResponse, Response
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    limits = limits or ServeLimits()
    limits.check()
    _, _, PredictRequest, PredictResponse, ErrorResponse = schema()
    metrics = ServeMetrics()
    state: dict[str, Any] = {"batcher": None, "ready": False, "warmup_error": None}
    extract_lock = threading.Lock()  # one video decode + backbone run at a time: each uses every core

    def warm_up(batcher: DynamicBatcher) -> None:
        n = min(max_batch, 8)
        items = [{m: np.zeros((service.seg_num, d), dtype=np.uint8) for m, d in service.modalities.items()}] * n
        try:
            for fut in batcher.submit_many(items):
                fut.result()
            state["ready"] = True
        except Exception as e:  # noqa: BLE001
            state["warmup_error"] = f"{type(e).__name__}: {e}"
            log.error("warm-up batch failed: %s", state["warmup_error"])

    @asynccontextmanager
    async def lifespan(app):
        batcher = DynamicBatcher(service.run_batch, max_batch=max_batch, max_wait_ms=max_wait_ms,
                                 on_batch=metrics.batch)
        state["batcher"] = batcher
        if warmup:
            threading.Thread(target=warm_up, args=(batcher,), name="attncluster-warmup", daemon=True).start()
        else:
            state["ready"] = True
        yield
        # uvicorn calls this after in-flight requests are answered; drain whatever is still queued.
        await run_in_threadpool(batcher.close, limits.request_timeout_s)

    app = FastAPI(title="attncluster serve", version=_version(), lifespan=lifespan,
                  description="Attention Clusters video classification. Errors are `{\"error\": \"one line\"}`.")
    bearer = HTTPBearer(auto_error=False, description="the token of --token-file")

    def authorize(cred: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> None:
        if token is None:
            return
        given = cred.credentials if cred is not None and cred.scheme.lower() == "bearer" else ""
        if not hmac.compare_digest(given.encode("utf-8", "replace"), token.encode()):  # constant time
            raise RequestError(401, "missing or wrong bearer token (Authorization: Bearer <token>)")

    def error_response(status: int, message: str) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)

    @app.exception_handler(RequestError)
    async def _request_error(request, e: RequestError):
        return error_response(e.status, e.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e):
        return error_response(e.status_code, e.detail if isinstance(e.detail, str) else json.dumps(e.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, e):
        first = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request"}
        return error_response(422, f"{'.'.join(str(p) for p in first.get('loc', ()))}: {first.get('msg')}")

    @app.exception_handler(Exception)
    async def _internal_error(request, e):
        log.exception("internal error on %s", request.url.path)
        return error_response(500, f"internal error ({type(e).__name__}); the server log has the details")

    async def within_time(coro, seconds: float = limits.request_timeout_s, flag: str = "--request-timeout"):
        try:
            return await asyncio.wait_for(coro, timeout=seconds)
        except asyncio.TimeoutError:
            raise RequestError(504, f"the request took longer than {seconds:g} s ({flag})") from None

    async def read_body(request: Request) -> bytes:
        return b"".join([chunk async for chunk in request.stream()])  # through _Guard's counting receive

    async def upload(request: Request, kind: str) -> tuple[bytes, str, dict[str, str]]:
        """The file of a multipart form (field ``file``) or a raw body, its name, and the form's other fields."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            try:
                form = await request.form(max_files=1, max_fields=8)
            except RequestError:
                raise
            except Exception as e:  # noqa: BLE001 - python-multipart's parse errors
                raise RequestError(400, f"malformed multipart body: {e}") from None
            f = form.get("file")
            if f is None or isinstance(f, str):
                raise RequestError(422, f"multipart body without a 'file' field holding the {kind}")
            data = await f.read()
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
            return data, f.filename or "upload", fields
        if ctype in FILE_TYPES or ctype.startswith("video/"):
            return await read_body(request), request.query_params.get("filename", "upload"), {}
        also_json = "" if kind == "video file" else "application/json (features), "
        raise RequestError(415, f"content type {ctype or 'none'!r}: send {also_json}multipart/form-data "
                                f"(field 'file') or application/octet-stream")

    def one_top_k(query: int | None, given: int | None, where: str) -> int | None:
        """``top_k`` from the query string or the body / form: either, or both when they agree."""
        if query is not None and given is not None and int(query) != int(given):
            raise RequestError(422, f"top_k {given} in the {where} and top_k={query} in the query disagree; give one")
        return given if given is not None else query

    def parse_top_k(value) -> int | None:
        if value is None or value == "":
            return None
        try:
            return int(value)
        except (TypeError, ValueError):
            raise RequestError(422, f"top_k {value!r}: not an integer") from None

    def sampled(videos, *rest):
        """Decoded videos, sampled to seg_num (in the same thread-pool call as the decoding)."""
        return ([(vid, service.sample(f)) for vid, f in videos], *rest)

    async def score(videos: list[tuple[str, dict]], top_k: int | None, fmt: str | None):
        """Sampled videos -> the batcher -> records. ``videos`` are (id, {modality: (seg_num, F)}) pairs."""
        k = service.check_top_k(top_k)
        batcher: DynamicBatcher = state["batcher"]
        items = [f for _, f in videos]
        try:
            futures = batcher.submit_many(items)
        except BatcherClosed:
            raise RequestError(503, "the server is shutting down") from None
        try:
            rows = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        except asyncio.CancelledError:
            for f in futures:
                f.cancel()  # queued ones never run
            raise
        except Exception as e:  # noqa: BLE001 - the model failed on one of this request's videos
            log.error("scoring failed: %s: %s", type(e).__name__, e)
            raise RequestError(500, f"internal error while scoring ({type(e).__name__}); the server log has the "
                                    f"details") from None
        records = service.records([vid for vid, _ in videos], list(rows), k)
        if fmt == "jsonl":  # byte for byte the lines predict writes
            return Response("".join(json.dumps(r) + "\n" for r in records), media_type="application/x-ndjson")
        return JSONResponse({"predictions": records})

    errors = {s: {"model": ErrorResponse} for s in (400, 401, 413, 415, 422, 500, 503, 504)}
    bodies = {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}},
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary",
                     "description": "a YouTube-8M TFRecord (frame- or video-level) or an .npz of one video"},
            "top_k": {"type": "integer"}, "id": {"type": "string", "description": "the .npz video's id"}}}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
    fmt_doc = "`jsonl`: answer with predict's JSONL lines (application/x-ndjson) instead of a JSON object"

    @app.post(PREDICT, dependencies=[Depends(authorize)], response_model=PredictResponse, responses=errors,
              openapi_extra=bodies, summary="Classify videos given as features")
    async def predict_features(request: Request, top_k: Optional[int] = Query(None, description="classes per video"),
                               format: Optional[str] = Query(None, pattern="^(json|jsonl)$", description=fmt_doc),
                               id: Optional[str] = Query(None, description="the id of an uploaded .npz video")):
        """Top-k classes per video, as `attncluster predict`'s JSONL records. The body is JSON (`PredictRequest`),
        or a TFRecord / .npz file (multipart field `file`, or the raw body as application/octet-stream; `top_k`
        and `id` then as form fields or query parameters). Frames are sampled to the model's seg_num as in eval.
        """
        async def handle():
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            k = top_k
            if ctype == "application/json":
                body = await read_body(request)
                videos, k_body = await run_in_threadpool(lambda: sampled(*decode_json(body, service, limits)))
                k = one_top_k(top_k, k_body, "body")
            else:
                data, name, fields = await upload(request, "TFRecord or .npz")
                k = one_top_k(top_k, parse_top_k(fields.get("top_k")), "form")
                videos = await run_in_threadpool(
                    lambda: sampled(decode_file(data, service, limits, name, fields.get("id") or id))[0])
            return await score(videos, k, format)

        return await within_time(handle())

    @app.post(PREDICT_VIDEO, dependencies=[Depends(authorize)], response_model=PredictResponse, responses=errors,
              summary="Classify an uploaded video file (features extracted on the server)",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                      "file": {"type": "string", "format": "binary"}, "top_k": {"type": "integer"},
                      "id": {"type": "string"}}}},
                  "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
    async def predict_video(request: Request, top_k: Optional[int] = Query(None, description="classes per video"),
                            format: Optional[str] = Query(None, pattern="^(json|jsonl)$", description=fmt_doc),
                            id: Optional[str] = Query(None, description="the video's id (default: the file name)")):
        """Decode the video, extract YouTube-8M features (attncluster.extract), then classify as /v1/predict.
        Needs extract weights at start-up (--random-weights SEED, or --inception/--pca/--vggish)."""
        if extractor is None:
            raise RequestError(503, "video extraction is not configured: start serve with --random-weights SEED or "
                                    "--inception/--pca/--vggish weights")

        async def handle():
            data, name, fields = await upload(request, "video file")
            if not data:
                raise RequestError(422, f"{name}: the upload is empty")
            k = one_top_k(top_k, parse_top_k(fields.get("top_k")), "form")
            vid = fields.get("id") or id or os.path.splitext(os.path.basename(name))[0] or "video"

            def extract() -> dict:
                suffix = os.path.splitext(name)[1][:16] if name else ""
                with tempfile.NamedTemporaryFile(suffix=suffix) as f, extract_lock:
                    f.write(data)
                    f.flush()
                    try:
                        out = extractor.extract(f.name)
                    except AttnClusterError as e:
                        raise _upload_error(e, f.name, name) from None
                feats = {m: np.asarray(out[m]) for m in service.modalities if m in out and out[m] is not None}
                _check_modalities(feats, name, service.modalities)
                for m, dim in service.modalities.items():
                    feats[m] = _check_frames(feats[m], f"{name}: extracted {m}", dim, max(limits.max_frames,
                                                                                         MAX_FRAMES))
                return feats

            feats = await run_in_threadpool(lambda: service.sample(extract()))
            return await score([(vid, feats)], k, format)

        return await within_time(handle(), limits.video_timeout_s, "--video-timeout")

    @app.get("/healthz", summary="The process is up")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="The model is loaded and warmed up", responses={503: {"model": ErrorResponse}})
    async def readyz():
        if state["ready"]:
            return {"status": "ready"}
        why = f"warm-up failed: {state['warmup_error']}" if state["warmup_error"] else "warming up"
        return error_response(503, why)

    @app.get("/metrics", dependencies=[Depends(authorize)], response_class=PlainTextResponse,
             summary="Prometheus metrics (text format 0.0.4)")
    async def prometheus():
        batcher = state["batcher"]
        text = metrics.render(batcher.queue_depth if batcher else 0, bool(state["ready"]))
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    def openapi():
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            defs = PredictRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components = spec.setdefault("components", {}).setdefault("schemas", {})
            components.update(defs.pop("$defs", {}))
            components["PredictRequest"] = defs
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi
    app.state.metrics = metrics
    app.state.serve = state

    def limit_for(path: str) -> int:
        return limits.max_video_bytes if path == PREDICT_VIDEO else limits.max_body_bytes

    return _Guard(app, limit_for, metrics)


def _version() -> str:
    from attncluster import __version__

    return __version__


# --------------------------------------------------------------------------------------------------------------------
# The verb


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(path: str) -> str:
    """The bearer token: the file's content, stripped. An empty or unreadable file is a ConfigError."""
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--token-file {path}: cannot read it ({e.__class__.__name__})") from None
    if not token or any(c.isspace() for c in token):
        raise ConfigError(f"--token-file {path}: must hold one token without spaces")
    return token


def _import_serving():
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401 - form uploads
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"serve needs the serve extra: pip install 'attncluster[serve]' "
                          f"({e.name} is missing)") from None


def build_predictor(cfg, weights: str | None, onnx: str | None, device: str | None, threads: int = 0):
    """TorchPredictor for --weights, export's OnnxPredictor for --onnx; and the seg_num to sample to.

    ``threads`` > 0 sets the intra-op threads of the model (torch.set_num_threads, or onnxruntime's); 0 keeps the
    library's default (one per core).
    """
    if onnx is not None:
        try:
            from attncluster.export import OnnxPredictor
        except ImportError as e:
            raise ConfigError(f"--onnx needs attncluster.export and onnxruntime "
                              f"(pip install 'attncluster[export]'): {e}") from None
        predictor = OnnxPredictor(onnx, threads=threads or None)
        # The graph's metadata knows its seg_num; a config (optional with --onnx) only supplies data.class_names.
        seg_num = getattr(predictor, "seg_num", None) or (cfg.model.seg_num if cfg is not None else None)
        if seg_num is None:
            raise ConfigError(f"--onnx {onnx}: the file does not record seg_num; pass --config too")
        return predictor, int(seg_num)
    if cfg is None:
        raise ConfigError("--weights needs --config")
    import torch

    from attncluster.inference import TorchPredictor

    if threads:
        torch.set_num_threads(threads)
    return TorchPredictor(cfg, weights, device), cfg.model.seg_num


def build_extractor(options: dict, modalities: dict[str, int], device: str | None):
    """An ``attncluster.extract.Extractor`` when extract weights are given; None when none are."""
    given = {k: v for k, v in options.items() if v is not None and k != "fps"}
    if not given:
        return None
    try:
        from attncluster.extract.features import FeaturePipeline
        from attncluster.extract.pipeline import Extractor
    except ImportError as e:
        raise ConfigError(f"/v1/predict/video needs attncluster.extract and PyAV (pip install 'attncluster[video]'): "
                          f"{e}") from None
    pipeline = FeaturePipeline.create(preset="yt8m", inception=options.get("inception"), pca=options.get("pca"),
                                      vggish=options.get("vggish"), vggish_pca=options.get("vggish_pca"),
                                      random_weights=options.get("random_weights"), device=device or "cpu")
    if dict(pipeline.modalities) != dict(modalities):
        raise ConfigError(f"the extractor gives {dict(pipeline.modalities)}, the model takes {dict(modalities)}")
    return Extractor(pipeline, fps=options.get("fps") or 1.0, max_frames=MAX_FRAMES, num_workers=0)


def serve(cfg, *, weights: str | None = None, onnx: str | None = None, vocab: str | bool | None = None,
          device: str | None = None, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 64,
          max_wait_ms: float = 5.0, token_file: str | None = None, limits: ServeLimits | None = None,
          extract: dict | None = None, threads: int = 0, log_level: str = "warning", stream=None) -> int:
    """The ``serve`` verb: load the model, bind, serve until SIGTERM / SIGINT, then finish in-flight requests."""
    stream = stream or sys.stderr
    _import_serving()
    import uvicorn

    from attncluster.inference import class_names_for

    limits = limits or ServeLimits()
    limits.check()
    if max_batch < 1:
        raise ConfigError(f"--max-batch: must be >= 1, got {max_batch}")
    if max_wait_ms < 0:
        raise ConfigError(f"--max-wait-ms: must be >= 0, got {max_wait_ms}")
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: must be in 0..65535")
    if threads < 0:
        raise ConfigError(f"--threads: must be >= 0 (0 = the library's default), got {threads}")
    token = read_token(token_file) if token_file else None
    predictor, seg_num = build_predictor(cfg, weights, onnx, device, threads)
    # --vocab, data.class_names, an ONNX graph's names, the shipped YouTube-8M names (3,862 classes); --no-vocab: none
    names = class_names_for(predictor.num_classes, cfg, vocab, getattr(predictor, "vocabulary", None))
    service = ModelService(predictor, seg_num, names)
    extractor = build_extractor(extract or {}, service.modalities, device)
    app = create_app(service, limits=limits, max_batch=max_batch, max_wait_ms=max_wait_ms, token=token,
                     extractor=extractor)

    if not is_loopback(host):
        print(f"warning: --host {host} is not a loopback address: anyone who can reach this machine can call the "
              f"service{'' if token else ' (no --token-file set)'}; put it behind TLS", file=stream, flush=True)
    # Bind here, so a busy port is one error line (uvicorn would log and exit) and --port 0 picks a free one.
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.setblocking(False)
    bound = sock.getsockname()[1]
    print(f"serve: http://{host if ':' not in host else f'[{host}]'}:{bound} (docs at /docs); "
          f"{'onnx ' + onnx if onnx else 'weights ' + str(weights)}, {len(service.modalities)} modalities, "
          f"{service.num_classes} classes, seg_num {seg_num}; max batch {max_batch}, max wait {max_wait_ms:g} ms"
          f"{'; bearer token required' if token else ''}", file=stream, flush=True)

    longest = max(limits.request_timeout_s, limits.video_timeout_s if extractor is not None else 0.0)
    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=int(longest) + 5, timeout_keep_alive=5)
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal it stopped on once it has shut down; these handlers take it, so the process
    # ends with status 0 after a graceful stop (and SIGINT does not surface as KeyboardInterrupt).
    stopped: list[int] = []
    previous = {s: signal.signal(s, lambda sig, frame: stopped.append(sig)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        sock.close()
    why = signal.Signals(stopped[0]).name if stopped else "exit"
    print(f"serve: stopped ({why}); in-flight requests were answered", file=stream, flush=True)
    return 0


__all__ = ["ModelService", "RequestError", "ServeLimits", "ServeMetrics", "create_app", "decode_file", "decode_json",
           "serve"]
