"""``attncluster serve``."""

from __future__ import annotations

from attncluster.cli.common import add_config, add_device, add_extract_args, add_vocab, add_weights_or_onnx, model_config, vocab

HELP = "serve a model over HTTP with dynamic batching"
DESCRIPTION = ("An HTTP service (FastAPI + uvicorn): POST /v1/predict (features as JSON, or an uploaded TFRecord / "
               ".npz), POST /v1/predict/video (a video file, with extract weights; ?segments=true adds classes per "
               "5-second segment), GET /healthz, /readyz, /metrics "
               "(Prometheus), OpenAPI docs at /docs. Concurrent requests are batched. Needs the serve extra. "
               "SIGTERM / SIGINT stop it after in-flight requests are answered.")

# the extract options /v1/predict/video takes (declared once, in common.EXTRACT_OPTIONS)
VIDEO_OPTIONS = ("random_weights", "inception", "pca", "vggish", "vggish_pca", "fps")


def add_args(p) -> None:
    add_config(p, required=False, from_weights=True)
    add_weights_or_onnx(p, onnx_help="a model written by attncluster export (onnxruntime)")
    add_vocab(p, "YouTube-8M vocabulary.csv for label names (default: the shipped YouTube-8M 2018 names for a "
              "3,862-class model, else data.class_names of the config, if set)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one, printed)")
    p.add_argument("--max-batch", type=int, default=64, metavar="N", help="videos per model call (default 64)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, metavar="MS",
                   help="how long a batch waits for more videos after its first (default 5)")
    p.add_argument("--token-file", metavar="F", help="require 'Authorization: Bearer <token>' with the token in F")
    from attncluster.serve.limits import MiB, ServeLimits  # the defaults' one home (standard library only)

    lim = ServeLimits()
    p.add_argument("--max-body-mb", type=float, default=lim.max_body_bytes / MiB, metavar="MB",
                   help="largest /v1/predict body (default %(default)g)")
    p.add_argument("--max-video-mb", type=float, default=lim.max_video_bytes / MiB, metavar="MB",
                   help="largest /v1/predict/video upload (default %(default)g)")
    p.add_argument("--max-videos", type=int, default=lim.max_videos, metavar="N",
                   help="videos per request (default %(default)s)")
    p.add_argument("--max-frames", type=int, default=lim.max_frames, metavar="T",
                   help="frames per video in JSON / npz requests and of a video with segments=true (default "
                        "%(default)s, as the dataset reader keeps)")
    p.add_argument("--request-timeout", type=float, default=lim.request_timeout_s, metavar="S",
                   help="seconds a request may take before it is answered 504 (default %(default)g)")
    p.add_argument("--video-timeout", type=float, default=lim.video_timeout_s, metavar="S",
                   help="the same for /v1/predict/video (default %(default)g)")
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="the model's intra-op threads (default 0: PyTorch's / onnxruntime's default, one per core; "
                   "1 is far faster on a machine whose cores are busy with other work)")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                   help="uvicorn log level (default warning)")
    add_device(p)
    add_extract_args(p, only=VIDEO_OPTIONS, title="POST /v1/predict/video: feature extraction, as extract does it")


def run(args) -> int:
    from attncluster.serve import serve
    from attncluster.serve.limits import MiB as mib, ServeLimits

    limits = ServeLimits(max_body_bytes=int(args.max_body_mb * mib), max_video_bytes=int(args.max_video_mb * mib),
                         max_videos=args.max_videos, max_frames=args.max_frames, request_timeout_s=args.request_timeout,
                         video_timeout_s=args.video_timeout)
    extract = {name: getattr(args, name) for name in VIDEO_OPTIONS}
    return serve(model_config(args, required=False), weights=args.weights, onnx=args.onnx, vocab=vocab(args),
                 device=args.device, host=args.host, port=args.port, max_batch=args.max_batch,
                 max_wait_ms=args.max_wait_ms, token_file=args.token_file, limits=limits, extract=extract,
                 threads=args.threads, log_level=args.log_level)


def interrupted(args) -> str:
    return "serve stopped"
