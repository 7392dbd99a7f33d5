"""Request decoding (the "decode" step): request bytes -> validated ``(id, {modality: (T, F) array})`` videos.

Every way a video arrives goes through here and through the same checks (:func:`check_modalities`,
:func:`check_frames`: sizes, frame limits, finite values), before a video is queued, so a bad request never reaches
a batch shared with others:

- a JSON features request (:func:`decode_json`, schema in :func:`schema`: pydantic, so ``/docs`` documents it);
- an uploaded TFRecord, frame- or video-level, read by the project's reader with both CRCs checked, or an ``.npz``
  of one video (:func:`decode_file`);
- a video file, decoded and featurised by the :class:`~attncluster.extract.pipeline.Extractor`
  (:class:`VideoDecoder`: one extraction at a time, stopped when its request times out);
- the multipart / raw-body upload around a file (:func:`read_upload`) and the ``top_k`` parameter.

The body-size limit is enforced one layer out, in :mod:`attncluster.serve.guard`.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import tempfile
import threading
from typing import Optional, Union

import numpy as np

from attncluster.data.records import MAX_FRAMES, non_finite  # MAX_FRAMES: what the dataset reader keeps per video
from attncluster.errors import AttnClusterError, printable
from attncluster.serve.limits import RequestError, ServeLimits

FILE_TYPES = ("application/octet-stream", "application/x-tfrecord", "application/x-npz", "application/zip")


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

    class Segment(BaseModel):
        """One 5-second segment of an uploaded video (``/v1/predict/video?segments=true``): its top-k classes, as
        ``attncluster predict --segments``' .jsonl."""

        start: float = Field(description="seconds from the video's start (a multiple of 5 at 1 fps)")
        end: float = Field(description="seconds; start + 5, or the video's end for the last segment")
        classes: list[int] = Field(description="class indices, highest score first")
        scores: list[float] = Field(description="the segment's per-class scores, rounded to 6 decimals")
        names: Optional[list[str]] = Field(None, description="class names, as the video's")

    class Prediction(BaseModel):
        """One line of ``attncluster predict``'s JSONL."""

        id: str
        classes: list[int] = Field(description="class indices, highest score first")
        scores: list[float] = Field(description="per-class probabilities, rounded to 6 decimals")
        names: Optional[list[str]] = Field(None, description="class names (--vocab, data.class_names, the graph's, or the shipped YouTube-8M names for 3,862 "
                                            "classes; none with --no-vocab)")
        segments: Optional[list[Segment]] = Field(None, description="with segments=true (/v1/predict/video only): "
                                                                    "every 5-second segment, in order")

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


def check_frames(a: np.ndarray, where: str, dim: int, max_frames: int) -> np.ndarray:
    """The one check of a video's (T, F) frames, for every way a video arrives (JSON, npz, TFRecord, video file):
    shape, at least one frame, at most ``max_frames`` (413), and finite values (NaN or inf: 422 naming the frame)."""
    if a.ndim != 2 or a.shape[1] != dim:
        raise RequestError(422, f"{where}: shape {list(a.shape)}, expected [T, {dim}] (T frames of {dim} features)")
    if a.shape[0] < 1:
        raise RequestError(422, f"{where}: has no frames")
    if a.shape[0] > max_frames:
        raise RequestError(413, f"{where}: {a.shape[0]} frames, the limit is {max_frames} per video")
    found = non_finite(a)  # the readers' description of the fault (data.records), so every path says the same
    if found:
        raise RequestError(422, f"{where}: features {found}; feature values must be finite numbers")
    return a


def check_modalities(names, where: str, modalities: dict[str, int]) -> None:
    takes = ", ".join(f"{m} (T, {d})" for m, d in modalities.items())
    unknown = [k for k in names if k not in modalities]
    if unknown:
        raise RequestError(422, f"{where}: unknown modality {unknown[0]!r}; this model takes {takes}")
    missing = [m for m in modalities if m not in names]
    if missing:
        raise RequestError(422, f"{where}: no {missing[0]!r} features; this model takes {takes}")


def decode_json(body: bytes, service, limits: ServeLimits) -> tuple[list[tuple[str, dict]], int | None]:
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
        check_modalities(extra, where, service.modalities)
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
                with np.errstate(over="ignore"):  # a float32 overflow becomes inf, refused by check_frames
                    a = np.asarray(value, dtype=np.float64).astype(np.float32).reshape(len(value), dim)
                feats[m] = check_frames(a, at, dim, limits.max_frames)
        videos.append((vid, feats))
    return videos, req.top_k


def _upload_error(e: AttnClusterError, tmp: str, name: str) -> RequestError:
    return RequestError(422, str(e).replace(tmp, name))


def decode_file(data: bytes, service, limits: ServeLimits, name: str = "upload",
                video_id: str | None = None) -> list[tuple[str, dict]]:
    """An uploaded TFRecord (frame- or video-level, read by the project's reader, both CRCs checked) or an
    ``.npz`` of one video (one array per modality) -> [(id, {modality: (T, F) array})]."""
    if not data:
        raise RequestError(422, f"{name}: the upload is empty")
    if data[:4] == b"PK\x03\x04":  # a zip archive: .npz
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                check_modalities(z.files, name, service.modalities)
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
            feats[m] = check_frames(a, f"{name}: array {m!r}", dim, limits.max_frames)
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
                    check_modalities(video.features, where, service.modalities)
                    feats = {m: check_frames(np.asarray(video.features[m]), f"{where}.{m}", dim, MAX_FRAMES)
                             for m, dim in service.modalities.items()}
                    videos.append((video.id, feats))
        except AttnClusterError as e:
            raise _upload_error(e, f.name, name) from None
    if not videos:
        raise RequestError(422, f"{name}: holds no records")
    return videos




class VideoDecoder:
    """A video file -> its extracted (T, F) features per modality, through the ``Extractor``.

    One extraction runs at a time (each uses every core). ``cancel`` is the request's event, set at its deadline:
    the extraction checks it per demuxed packet and per backbone call (``Extractor.extract(should_stop=...)``), and
    inside a backbone call too, before each module of the pipeline's torch networks (``rgb_net``, ``audio_net``; a
    forward pre-hook), since one CPU Inception-v3 call on a busy machine can take seconds. So a request that timed
    out stops and releases the lock within about one layer, and one still waiting for the lock gives up.
    ``running`` says whether an extraction holds the lock (also the ``video_extractions_running`` metric).
    """

    def __init__(self, extractor, service, limits: ServeLimits, metrics=None) -> None:
        self.extractor, self.service, self.limits, self.metrics = extractor, service, limits, metrics
        self.lock = threading.Lock()
        self._cancel: threading.Event | None = None  # the running extraction's request (one at a time)
        pipeline = getattr(extractor, "pipeline", None)
        for net in (getattr(pipeline, "rgb_net", None), getattr(pipeline, "audio_net", None)):
            for module in net.modules() if hasattr(net, "modules") else ():
                module.register_forward_pre_hook(self._stop_if_cancelled)

    def _stop_if_cancelled(self, module, args) -> None:
        from attncluster.extract.decode import Cancelled

        if self._cancel is not None and self._cancel.is_set():
            raise Cancelled(type(module).__name__)

    @property
    def running(self) -> bool:
        return self.lock.locked()

    @property
    def fps(self) -> float:
        """Frames per second of the extracted features (1: YouTube-8M): frame i starts at i / fps seconds."""
        return float(getattr(self.extractor, "fps", 1.0))

    def __call__(self, data: bytes, name: str, cancel: threading.Event) -> dict[str, np.ndarray]:
        from attncluster.extract.decode import Cancelled

        if not data:
            raise RequestError(422, f"{name}: the upload is empty")
        while not self.lock.acquire(timeout=0.05):
            if cancel.is_set():
                raise RequestError(504, f"{name}: timed out waiting for the extraction before it")
        self._cancel = cancel
        if self.metrics is not None:
            self.metrics.extracting += 1
        try:
            suffix = os.path.splitext(name)[1][:16] if name else ""
            with tempfile.NamedTemporaryFile(suffix=suffix) as f:
                f.write(data)
                f.flush()
                try:
                    out = self.extractor.extract(f.name, should_stop=cancel.is_set)
                except AttnClusterError as e:
                    raise _upload_error(e, f.name, name) from None
                except Cancelled:
                    raise RequestError(504, f"{name}: the extraction was stopped (the request timed out)") from None
        finally:
            self._cancel = None
            if self.metrics is not None:
                self.metrics.extracting -= 1
            self.lock.release()
        modalities = self.service.modalities
        feats = {m: np.asarray(out[m]) for m in modalities if m in out and out[m] is not None}
        check_modalities(feats, name, modalities)
        return {m: check_frames(feats[m], f"{name}: extracted {m}", dim, max(self.limits.max_frames, MAX_FRAMES))
                for m, dim in modalities.items()}


# -- the HTTP body around a file, and top_k ----------------------------------------------------------------------------


async def read_body(request) -> bytes:
    """The whole body, read through the guard's counting ``receive`` (so the size limit holds)."""
    return b"".join([chunk async for chunk in request.stream()])


async def read_upload(request, kind: str) -> tuple[bytes, str, dict[str, str]]:
    """The file of a multipart form (field ``file``) or a raw body, its name, and the form's other fields."""
    from starlette.requests import ClientDisconnect

    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=8)
        except (RequestError, ClientDisconnect):
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


TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def parse_flag(name: str, value) -> bool | None:
    """A boolean form field (``segments``): true/false, 1/0, yes/no, on/off, as FastAPI reads the query's."""
    if value is None or value == "":
        return None
    text = str(value).strip().lower()
    if text in TRUE or text in FALSE:
        return text in TRUE
    raise RequestError(422, f"{name} {printable(str(value))!r}: expected true or false")


def one_flag(name: str, query: bool | None, given: bool | None, where: str) -> bool:
    """A boolean from the query string or the form: either, or both when they agree; absent is false."""
    if query is not None and given is not None and query != given:
        raise RequestError(422, f"{name} {str(given).lower()} in the {where} and {name}={str(query).lower()} in the "
                                f"query disagree; give one")
    return bool(given if given is not None else query)


def parse_top_k(value) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise RequestError(422, f"top_k {value!r}: not an integer") from None


__all__ = ["FILE_TYPES", "VideoDecoder", "check_frames", "check_modalities", "decode_file", "decode_json",
           "one_flag", "one_top_k", "parse_flag", "parse_top_k", "read_body", "read_upload", "schema"]
