"""``attncluster serve``: an HTTP service over a trained model, with dynamic batching.

A package of thin parts, in the three steps of a request (litgpt's ``deploy/serve.py``: decode, predict, encode):

- ``request.py`` decode: a request (JSON features, an uploaded TFRecord or ``.npz``, or a video file through the
  ``Extractor``) becomes validated ``(id, {modality: (T, F) array})`` videos; every check happens there, before a
  video is queued. ``limits.py``: ``ServeLimits``, what a request may cost (the command line's defaults).
- ``service.py`` predict and encode: ``ModelService`` samples each video to ``seg_num`` frames exactly as ``eval``
  and ``predict`` do, runs batches through the :class:`~attncluster.inference.Predictor`, and writes ``predict``'s
  JSONL records. ``batching.py``: ``DynamicBatcher``, concurrent requests' videos in one model call.
- ``app.py``: the FastAPI routes (module level; the service is ``app.state.serve``) and ``create_app``;
  ``guard.py``: the ASGI layer in front (body limit, metrics, disconnects) and uvicorn's parser with JSON errors;
  ``metrics.py``: Prometheus text; ``server.py``: the verb (load, bind, run uvicorn, stop on SIGTERM).

Names are imported on first use, so ``from attncluster.serve.limits import ServeLimits`` (the command line) loads
neither NumPy nor FastAPI.
"""

from importlib import import_module

_HOMES = {
    "ServeLimits": "limits", "RequestError": "limits",
    "ModelService": "service",
    "DynamicBatcher": "batching", "BatcherClosed": "batching",
    "ServeMetrics": "metrics",
    "decode_json": "request", "decode_file": "request", "VideoDecoder": "request",
    "create_app": "app", "ServeState": "app",
    "serve": "server", "is_loopback": "server", "read_token": "server", "build_predictor": "server",
    "build_extractor": "server",
}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(import_module(f"attncluster.serve.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_HOMES)
