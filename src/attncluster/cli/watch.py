"""``attncluster watch``."""

from __future__ import annotations

from attncluster.cli.common import (add_config, add_device, add_extract_args, add_vocab, add_weights_or_onnx,
                                    extract_options, model_config, vocab)

HELP = "timed events from a video file or a live stream"
DESCRIPTION = ("Extract features from SOURCE as its frames arrive (one per second, as extract), score a sliding "
               "window of --window seconds every --stride seconds with the model, and print one JSON line per event "
               "{source, start, end, class, name, score} (seconds) when it ends: a class opens at --threshold and "
               "closes below --off-threshold. Files run as fast as they decode, live sources in real time; a status "
               "line on stderr gives frames/s and the lag. A dropped network stream is reopened with backoff and the "
               "gap printed as {source, gap: true, start, end, reason}.")


def add_args(p) -> None:
    p.add_argument("source", metavar="SOURCE", help="a video file, an http(s):// or rtsp:// URL, - (a stream on stdin: "
                   "a streamable container such as mkv or mpegts), or a V4L2 device such as /dev/video0")
    add_config(p, required=False, from_weights=True)
    add_weights_or_onnx(p)
    p.add_argument("--window", type=float, default=10.0, metavar="S", help="seconds the model sees per score "
                   "(default 10)")
    p.add_argument("--stride", type=float, default=1.0, metavar="S", help="seconds between scores, and the "
                   "precision of event times (default 1)")
    p.add_argument("--threshold", type=float, default=0.5, metavar="P", help="score at which an event starts "
                   "(default 0.5)")
    p.add_argument("--off-threshold", type=float, default=None, metavar="P",
                   help="score below which it ends (default: --threshold - 0.1)")
    p.add_argument("--min-gap", type=float, default=0.0, metavar="S", help="an event ends only after this many "
                   "seconds below --off-threshold (default 0)")
    add_vocab(p, "YouTube-8M vocabulary.csv for class names (default: the shipped YouTube-8M 2018 names for a "
              "3,862-class model, else data.class_names of the config)")
    p.add_argument("--status-every", type=float, default=10.0, metavar="S", help="seconds between status lines "
                   "(default 10)")
    p.add_argument("--max-retries", type=int, default=5, metavar="N", help="reopen a failed network stream at "
                   "most N times in a row (backoff 1, 2, 4 ... 30 s; default 5); an HTTP 4xx answer is an error "
                   "at once")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="a network read blocked this long "
                   "counts as a drop (default 10)")
    p.add_argument("--max-lag", type=float, default=None, metavar="S", help="live sources: skip sampled frames "
                   "that arrive more than S seconds behind real time, so a backbone slower than real time keeps up "
                   "by scoring fewer frames (default: never skip; the lag then grows)")
    p.add_argument("--reconnect-at-eof", action="store_true", help="an http(s) stream that ends is reopened too "
                   "(a live stream served over HTTP; FFmpeg cannot tell a cut one from its end); rtsp always is")
    add_device(p)
    add_extract_args(p, only=("preset", "inception", "pca", "vggish", "vggish_pca", "backbone", "backbone_weights",
                              "random_weights", "fps", "precision"))


def run(args) -> int:
    from attncluster.watch import run_watch

    cfg = model_config(args, required=False)
    opts = extract_options(args, cfg)
    fps = opts.pop("fps")
    opts.pop("max_frames")
    run_watch(args.source, cfg, weights=args.weights, onnx=args.onnx, vocab=vocab(args), device=args.device,
              extractor_options=opts, fps=fps, window=args.window, stride=args.stride, threshold=args.threshold,
              off_threshold=args.off_threshold, min_gap=args.min_gap, status_every=args.status_every,
              max_retries=args.max_retries, timeout=args.timeout, reconnect_at_eof=args.reconnect_at_eof,
              max_lag=args.max_lag)
    return 0


def interrupted(args) -> str:
    return "watch stopped; the events printed so far are complete"
