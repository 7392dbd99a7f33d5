"""The ``serve`` verb: load the model (and the extractor), bind a loopback port, run uvicorn until SIGTERM / SIGINT."""

from __future__ import annotations

import ipaddress
import signal
import socket
import sys

from attncluster.errors import ConfigError
from attncluster.serve.limits import ServeLimits
from attncluster.serve.request import MAX_FRAMES

# Frames per backbone call in /v1/predict/video: a request that timed out stops before the next call, so its work
# goes on for at most one call of this many frames (extract's default, 32, would let it run 8x longer).
EXTRACT_BATCH_FRAMES = 4


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
        import fastapi_offline  # noqa: F401 - Swagger UI's files for /docs
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
    return Extractor(pipeline, fps=options.get("fps") or 1.0, max_frames=MAX_FRAMES, num_workers=0,
                     batch_frames=EXTRACT_BATCH_FRAMES)


def serve(cfg, *, weights: str | None = None, onnx: str | None = None, vocab: str | bool | None = None,
          device: str | None = None, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 64,
          max_wait_ms: float = 5.0, token_file: str | None = None, limits: ServeLimits | None = None,
          extract: dict | None = None, threads: int = 0, log_level: str = "warning", stream=None) -> int:
    """The ``serve`` verb: load the model, bind, serve until SIGTERM / SIGINT, then finish in-flight requests."""
    stream = stream or sys.stderr
    _import_serving()
    import uvicorn

    from attncluster.inference import class_names_for
    from attncluster.serve.app import create_app
    from attncluster.serve.guard import json_errors_protocol
    from attncluster.serve.service import ModelService

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
    # http=: uvicorn's h11 parser, answering the requests it refuses with one line of JSON like every other error.
    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on",
                            http=json_errors_protocol(app.metrics),
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


__all__ = ["build_extractor", "build_predictor", "is_loopback", "read_token", "serve"]
