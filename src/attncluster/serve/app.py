"""The HTTP surface: FastAPI routes at module level, each reading the service from ``request.app.state.serve``.

A route only strings the steps together: decode (:mod:`attncluster.serve.request`), predict (the batcher over
:class:`~attncluster.serve.service.ModelService`), encode (``predict``'s records). :func:`create_app` builds the app
and its state and wraps it in the :class:`~attncluster.serve.guard.Guard`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Optional

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from attncluster.errors import ConfigError
from attncluster.serve.batching import BatcherClosed, DynamicBatcher
from attncluster.serve.guard import LOGGED, PREDICT, PREDICT_VIDEO, Guard
from attncluster.serve.limits import RequestError, ServeLimits
from attncluster.serve.metrics import ServeMetrics
from attncluster.serve.request import (VideoDecoder, decode_file, decode_json, one_flag, one_top_k, parse_flag,
                                       parse_top_k, read_body, read_upload, schema)
from attncluster.serve.service import ModelService, SegmentJob

log = logging.getLogger("attncluster.serve")

DOCS_STATIC = "/docs/static"


@dataclass
class ServeState:
    """Everything the routes share: ``app.state.serve``."""

    service: ModelService
    limits: ServeLimits
    metrics: ServeMetrics
    token: str | None = None
    video: VideoDecoder | None = None  # None: /v1/predict/video answers 503
    max_batch: int = 64
    max_wait_ms: float = 5.0
    batcher: DynamicBatcher | None = None
    ready: bool = False
    warmup_error: str | None = None


def _state(request: Request) -> ServeState:
    return request.app.state.serve


# -- errors: every answer that is not a prediction is {"error": "one line"} ------------------------------------------


def error_response(status: int, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


async def _request_error(request, e: RequestError):
    return error_response(e.status, e.message)


async def _http_error(request, e):
    return error_response(e.status_code, e.detail if isinstance(e.detail, str) else json.dumps(e.detail))


async def _validation_error(request, e):
    first = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request"}
    return error_response(422, f"{'.'.join(str(p) for p in first.get('loc', ()))}: {first.get('msg')}")


async def _client_disconnect(request, e):
    # No one is there to read an answer; the guard logs the disconnect in one line and counts it.
    return Response(status_code=400)


async def _internal_error(request, e):
    log.exception("internal error on %s", request.url.path)
    request.scope[LOGGED] = True
    return error_response(500, f"internal error ({type(e).__name__}); the server log has the details")


# -- the steps a route strings together -------------------------------------------------------------------------------


bearer = HTTPBearer(auto_error=False, description="the token of --token-file")


def authorize(request: Request, cred: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> None:
    token = _state(request).token
    if token is None:
        return
    given = cred.credentials if cred is not None and cred.scheme.lower() == "bearer" else ""
    if not hmac.compare_digest(given.encode("utf-8", "replace"), token.encode()):  # constant time
        raise RequestError(401, "missing or wrong bearer token (Authorization: Bearer <token>)")


async def within_time(coro, seconds: float, flag: str, cancel: threading.Event):
    """``coro``, or 504 after ``seconds``. At the deadline ``cancel`` is set, from the event loop, so work running
    in a thread for this request (an extraction) sees it and stops; it is set on every other way out too."""
    timer = asyncio.get_running_loop().call_later(seconds, cancel.set)
    try:
        return await asyncio.wait_for(coro, timeout=seconds)
    except asyncio.TimeoutError:
        raise RequestError(504, f"the request took longer than {seconds:g} s ({flag})") from None
    finally:
        timer.cancel()
        cancel.set()


async def score(state: ServeState, videos: list[tuple[str, dict]], top_k: int | None, fmt: str | None,
                segments: list[dict] | None = None, fps: float = 1.0):
    """Sampled videos -> the batcher -> records. ``videos`` are (id, {modality: (seg_num, F)}) pairs.

    ``segments``: per video, its whole (T, F) frames, queued as a :class:`SegmentJob` (the video's segments, one
    model call) next to the video; each record then gets ``segments`` (start and end in seconds at ``fps``)."""
    k = state.service.check_top_k(top_k)
    items = [f for _, f in videos] + [SegmentJob(f) for f in segments or ()]
    try:
        futures = state.batcher.submit_many(items)
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
    records = state.service.records([vid for vid, _ in videos], list(rows[:len(videos)]), k)
    for rec, frames, (starts, seg_scores) in zip(records, segments or (), rows[len(videos):]):
        length = min(int(a.shape[0]) for a in frames.values())
        rec["segments"] = state.service.segment_records(starts, seg_scores, length, k, fps)
    if fmt == "jsonl":  # byte for byte the lines predict writes
        return Response("".join(json.dumps(r) + "\n" for r in records), media_type="application/x-ndjson")
    return JSONResponse({"predictions": records})


def _sampled(service: ModelService, videos):
    return [(vid, service.sample(f)) for vid, f in videos]


# -- routes -----------------------------------------------------------------------------------------------------------


def _upload_body(file_doc: str, id_doc: str, features_json: bool, segments: bool = False) -> dict:
    """The OpenAPI request body of an upload route (FastAPI cannot infer it: the body is read by hand)."""
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}} if features_json \
        else {}
    fields = {"file": {"type": "string", "format": "binary", "description": file_doc},
              "top_k": {"type": "integer"}, "id": {"type": "string", "description": id_doc}}
    if segments:
        fields["segments"] = {"type": "boolean", "description": SEGMENTS_DOC}
    content["multipart/form-data"] = {"schema": {"type": "object", "required": ["file"], "properties": fields}}
    content["application/octet-stream"] = {"schema": {"type": "string", "format": "binary"}}
    return {"requestBody": {"required": True, "content": content}}


_, _, _, PredictResponse, ErrorResponse = schema()
ERRORS = {s: {"model": ErrorResponse} for s in (400, 401, 413, 415, 422, 500, 503, 504)}
SEGMENTS_DOC = ("`true`: also answer every 5-second segment of the video (5 frames at --fps 1; the last may be "
                "shorter) with its top_k classes and its start and end in seconds, scored as `attncluster predict "
                "--segments`; at most --max-frames frames")
FORMAT_DOC = "`jsonl`: answer with predict's JSONL lines (application/x-ndjson) instead of a JSON object"
router = APIRouter()


@router.post(PREDICT, dependencies=[Depends(authorize)], response_model=PredictResponse, responses=ERRORS,
             summary="Classify videos given as features",
             openapi_extra=_upload_body("a YouTube-8M TFRecord (frame- or video-level) or an .npz of one video",
                                        "the .npz video's id", features_json=True))
async def predict_features(request: Request, top_k: Optional[int] = Query(None, description="classes per video"),
                           format: Optional[str] = Query(None, pattern="^(json|jsonl)$", description=FORMAT_DOC),
                           id: Optional[str] = Query(None, description="the id of an uploaded .npz video")):
    """Top-k classes per video, as `attncluster predict`'s JSONL records. The body is JSON (`PredictRequest`),
    or a TFRecord / .npz file (multipart field `file`, or the raw body as application/octet-stream; `top_k`
    and `id` then as form fields or query parameters). Frames are sampled to the model's seg_num as in eval.
    """
    state = _state(request)
    service, limits = state.service, state.limits

    async def handle():
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "application/json":
            body = await read_body(request)
            videos, k_body = await run_in_threadpool(decode_json, body, service, limits)
            k = one_top_k(top_k, k_body, "body")
        else:
            data, name, fields = await read_upload(request, "TFRecord or .npz")
            k = one_top_k(top_k, parse_top_k(fields.get("top_k")), "form")
            videos = await run_in_threadpool(decode_file, data, service, limits, name, fields.get("id") or id)
        videos = await run_in_threadpool(_sampled, service, videos)
        return await score(state, videos, k, format)

    return await within_time(handle(), limits.request_timeout_s, "--request-timeout", threading.Event())


@router.post(PREDICT_VIDEO, dependencies=[Depends(authorize)], response_model=PredictResponse, responses=ERRORS,
             summary="Classify an uploaded video file (features extracted on the server)",
             openapi_extra=_upload_body("a video file", "the video's id (default: the file name)",
                                        features_json=False, segments=True))
async def predict_video(request: Request, top_k: Optional[int] = Query(None, description="classes per video"),
                        format: Optional[str] = Query(None, pattern="^(json|jsonl)$", description=FORMAT_DOC),
                        id: Optional[str] = Query(None, description="the video's id (default: the file name)"),
                        segments: Optional[bool] = Query(None, description=SEGMENTS_DOC)):
    """Decode the video, extract YouTube-8M features (attncluster.extract), then classify as /v1/predict.
    Needs extract weights at start-up (--random-weights SEED, or --inception/--pca/--vggish). With
    `segments=true` (query or form field) the answer also has `segments`: per 5-second segment its start and end
    in seconds and its top_k classes."""
    state = _state(request)
    if state.video is None:
        raise RequestError(503, "video extraction is not configured: start serve with --random-weights SEED or "
                                "--inception/--pca/--vggish weights")
    cancel = threading.Event()

    async def handle():
        data, name, fields = await read_upload(request, "video file")
        k = one_top_k(top_k, parse_top_k(fields.get("top_k")), "form")
        with_segments = one_flag("segments", segments, parse_flag("segments", fields.get("segments")), "form")
        vid = fields.get("id") or id or os.path.splitext(os.path.basename(name))[0] or "video"
        feats = await run_in_threadpool(state.video, data, name, cancel)
        if not with_segments:
            return await score(state, [(vid, state.service.sample(feats))], k, format)
        length, most = min(int(a.shape[0]) for a in feats.values()), state.limits.max_frames
        if length > most:  # the segments' bound: ceil(--max-frames / 5) per request
            raise RequestError(413, f"{name}: {length} frames, segments=true scores at most {most} (--max-frames)")
        return await score(state, [(vid, state.service.sample(feats))], k, format, segments=[feats],
                           fps=state.video.fps)

    return await within_time(handle(), state.limits.video_timeout_s, "--video-timeout", cancel)


@router.get("/healthz", summary="The process is up")
async def healthz():
    return {"status": "ok"}


@router.get("/readyz", summary="The model is loaded and warmed up", responses={503: ERRORS[503]})
async def readyz(request: Request):
    state = _state(request)
    if state.ready:
        return {"status": "ready"}
    return error_response(503, f"warm-up failed: {state.warmup_error}" if state.warmup_error else "warming up")


@router.get("/metrics", dependencies=[Depends(authorize)], response_class=PlainTextResponse,
            summary="Prometheus metrics (text format 0.0.4)")
async def prometheus(request: Request):
    state = _state(request)
    text = state.metrics.render(state.batcher.queue_depth if state.batcher else 0, state.ready)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/docs", include_in_schema=False)
async def docs(request: Request) -> HTMLResponse:
    """Swagger UI from files served here (the fastapi-offline package's copy), so /docs works without internet."""
    from fastapi.openapi.docs import get_swagger_ui_html

    root = request.scope.get("root_path", "")
    return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title="attncluster serve - Swagger UI",
                               swagger_js_url=f"{root}{DOCS_STATIC}/swagger-ui-bundle.js",
                               swagger_css_url=f"{root}{DOCS_STATIC}/swagger-ui.css",
                               swagger_favicon_url=f"{root}{DOCS_STATIC}/favicon.png",
                               swagger_ui_parameters={"validatorUrl": None})  # no badge fetched from swagger.io


def swagger_ui_files() -> str:
    """The folder of Swagger UI's files (swagger-ui-bundle.js, swagger-ui.css, favicon.png)."""
    try:
        from importlib.resources import files

        folder = files("fastapi_offline") / "static"
    except ImportError:
        raise ConfigError("/docs needs the serve extra's fastapi-offline (Swagger UI's files): pip install "
                          "'attncluster[serve]'") from None
    return str(folder)


# -- the app ----------------------------------------------------------------------------------------------------------


def _warm_up(state: ServeState) -> None:
    try:
        for fut in state.batcher.submit_many(state.service.warmup_items(min(state.max_batch, 8))):
            fut.result()
        state.ready = True
    except Exception as e:  # noqa: BLE001
        state.warmup_error = f"{type(e).__name__}: {e}"
        log.error("warm-up batch failed: %s", state.warmup_error)


def _openapi(app: FastAPI):
    """FastAPI's schema, plus ``PredictRequest`` (the JSON body is read by hand, so FastAPI does not see it)."""
    from fastapi.openapi.utils import get_openapi

    if app.openapi_schema is None:
        spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        defs = schema()[2].model_json_schema(ref_template="#/components/schemas/{model}")
        components = spec.setdefault("components", {}).setdefault("schemas", {})
        components.update(defs.pop("$defs", {}))
        components["PredictRequest"] = defs
        app.openapi_schema = spec
    return app.openapi_schema


def create_app(service: ModelService, *, limits: ServeLimits | None = None, max_batch: int = 64,
               max_wait_ms: float = 5.0, token: str | None = None, extractor=None, warmup: bool = True):
    """The ASGI app: the routes inside the size/metrics guard. The batcher starts with the app's lifespan.

    Args:
        service: the model side.
        limits: request limits.
        max_batch, max_wait_ms: the dynamic batcher's batch size and wait.
        token: when set, ``/v1/*`` and ``/metrics`` need ``Authorization: Bearer <token>``.
        extractor: an ``attncluster.extract.Extractor`` for ``/v1/predict/video`` (None: that endpoint answers 503).
        warmup: run one batch before ``/readyz`` turns ready.
    """
    from fastapi.staticfiles import StaticFiles

    from attncluster import __version__

    limits = limits or ServeLimits()
    limits.check()
    metrics = ServeMetrics()
    state = ServeState(service=service, limits=limits, metrics=metrics, token=token, max_batch=max_batch,
                       max_wait_ms=max_wait_ms,
                       video=VideoDecoder(extractor, service, limits, metrics) if extractor is not None else None)

    @asynccontextmanager
    async def lifespan(app):
        state.batcher = DynamicBatcher(service.run_batch, max_batch=max_batch, max_wait_ms=max_wait_ms,
                                       on_batch=metrics.batch)
        if warmup:
            threading.Thread(target=_warm_up, args=(state,), name="attncluster-warmup", daemon=True).start()
        else:
            state.ready = True
        yield
        # uvicorn calls this after in-flight requests are answered; drain whatever is still queued.
        await run_in_threadpool(state.batcher.close, limits.request_timeout_s)

    app = FastAPI(title="attncluster serve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Attention Clusters video classification. Errors are `{\"error\": \"one line\"}`.")
    app.state.serve = state
    app.state.metrics = metrics
    for exc, handler in ((RequestError, _request_error), (StarletteHTTPException, _http_error),
                         (RequestValidationError, _validation_error), (ClientDisconnect, _client_disconnect),
                         (Exception, _internal_error)):
        app.add_exception_handler(exc, handler)
    app.include_router(router)
    app.mount(DOCS_STATIC, StaticFiles(directory=swagger_ui_files()), name="docs-static")
    app.openapi = lambda: _openapi(app)

    def limit_for(path: str) -> int:
        return limits.max_video_bytes if path == PREDICT_VIDEO else limits.max_body_bytes

    return Guard(app, limit_for, metrics)


__all__ = ["ServeState", "create_app", "router"]
