"""``attncluster`` command line: a thin table from verb to function.

Every user error (bad config, bad data, missing file) is printed as one ``error: ...`` line with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from attncluster.errors import AttnClusterError, os_error_message, plural, printable

EPILOG = "Docs: README.md. Every command takes --help."


def _config(args):
    from attncluster.config import load_config

    return load_config(args.config, args.override)


def _add_config(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", required=required, metavar="CFG", help="YAML config (see configs/)")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted config override, repeatable, e.g. -o train.batch_size=256 -o model.drop_rate=0.3")


def _add_weights(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", required=True, metavar="CKPT",
                   help="checkpoint, safetensors, converted Paddle .pt or .pdparams")


def _add_weights_or_onnx(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--weights", metavar="CKPT", help="checkpoint, safetensors, converted Paddle .pt or .pdparams "
                   "(with --config)")
    g.add_argument("--onnx", metavar="FILE", help="a graph from 'attncluster export', run by onnxruntime (no "
                   "PyTorch model); the model settings come from the graph, --config (optional) gives data settings")


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, metavar="DEV",
                   help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")


def cmd_train(args) -> int:
    from attncluster.train import fit

    fit(_config(args), run_dir=args.run_dir, resume=args.resume, weights=args.weights, device=args.device,
        allow_reinit=args.allow_reinit, overwrite=args.overwrite)
    return 0


def _model_source(args) -> None:
    """--weights needs --config; --onnx (an exported graph) carries its model settings and may go without one."""
    if getattr(args, "onnx", None) is None and args.config is None:
        raise AttnClusterError("--config is required with --weights (only --onnx runs without a config)")


def cmd_eval(args) -> int:
    from attncluster.evaluate import evaluate

    _model_source(args)
    cfg = _config(args) if args.config or args.override else None
    evaluate(cfg, args.weights, data=args.data, device=args.device, output=args.output, onnx=args.onnx)
    return 0


def cmd_predict(args) -> int:
    if args.videos:
        if args.data:
            raise AttnClusterError("predict takes --data (feature shards) or --videos (video files), not both")
        return cmd_predict_videos(args)
    if not args.data or not args.output:
        raise AttnClusterError("predict needs --data PATH... and --output FILE (or --videos FILE... for video files)")
    from attncluster.predict import predict

    _model_source(args)
    cfg = _config(args) if args.config or args.override else None
    predict(cfg, args.weights, args.data, args.output, top_k=args.top_k, vocab=args.vocab,
            device=args.device, onnx=args.onnx)
    return 0


def cmd_export(args) -> int:
    from attncluster.export import export_onnx

    export_onnx(_config(args), args.weights, args.output, opset=args.opset, int8=args.int8, triton=args.triton,
                triton_name=args.triton_name, max_batch_size=args.max_batch_size, vocab=args.vocab,
                input_dtype=args.input_dtype)
    return 0


def cmd_quickstart(args) -> int:
    from attncluster.quickstart import quickstart

    quickstart(args.run_dir, device=args.device)
    return 0


def cmd_inspect(args) -> int:
    from attncluster.inspect_data import inspect

    return inspect(args.paths, skip_corrupt=args.skip_corrupt, num_classes=args.num_classes)


def cmd_synth(args) -> int:
    from attncluster.data.synth import write_synthetic

    files = write_synthetic(args.out, videos=args.videos, classes=args.classes, shards=args.shards, seed=args.seed,
                            max_frames=args.max_frames, prefix=args.prefix)
    print(f"synth: wrote {plural(args.videos, 'video')} in {plural(len(files), 'shard')} to {args.out}")
    return 0


def cmd_convert_paddle(args) -> int:
    from attncluster.paddle import convert_paddle

    feature_dims = None
    if args.feature_dims:
        feature_dims = {}
        for item in args.feature_dims.split(","):
            name, _, dim = item.partition(":")
            if not dim.isdigit():
                raise AttnClusterError(f"--feature-dims {args.feature_dims!r}: expected name:dim pairs like rgb:1024,audio:128")
            feature_dims[name] = int(dim)
    kwargs = convert_paddle(args.file, args.output, feature_dims=feature_dims, drop_rate=args.drop_rate)
    print(f"convert-paddle: {args.file} -> {args.output} ({kwargs})")
    return 0


def cmd_serve(args) -> int:
    from attncluster.serve import serve
    from attncluster.serve.limits import MiB as mib, ServeLimits

    limits = ServeLimits(max_body_bytes=int(args.max_body_mb * mib), max_video_bytes=int(args.max_video_mb * mib),
                         max_videos=args.max_videos, max_frames=args.max_frames, request_timeout_s=args.request_timeout,
                         video_timeout_s=args.video_timeout)
    extract = {"random_weights": args.random_weights, "inception": args.inception, "pca": args.pca,
               "vggish": args.vggish, "vggish_pca": args.vggish_pca, "fps": args.fps}
    return serve(_config(args) if args.config else None, weights=args.weights, onnx=args.onnx, vocab=args.vocab,
                 device=args.device, host=args.host, port=args.port, max_batch=args.max_batch,
                 max_wait_ms=args.max_wait_ms, token_file=args.token_file, limits=limits, extract=extract,
                 threads=args.threads, log_level=args.log_level)


class _Parser(argparse.ArgumentParser):
    """argparse with usage mistakes as one ``error:`` line (exit 2) like every other user error."""

    def error(self, message: str):  # type: ignore[override]
        print(printable(f"error: {self.prog}: {message} (see {self.prog} --help)"), file=sys.stderr)
        raise SystemExit(2)


def _add_extract_weights(p: argparse.ArgumentParser, weights_flags: tuple[str, ...], stream: bool = False) -> None:
    """Backbone options shared by ``extract`` and ``predict --videos`` (defaults from the config's extract section);
    ``stream`` (``watch``) leaves out the per-file options (--max-frames, --num-workers, --skip-bad)."""
    g = p.add_argument_group("feature extraction (YouTube-8M preset: Inception-v3 + PCA, VGGish + PCA)")
    g.add_argument("--preset", choices=("yt8m", "image"), default=None,
                   help="yt8m (default): the dataset's rgb 1024 + audio 128 uint8 features; image: a torchvision "
                   "classifier's pooled features (--backbone)")
    g.add_argument("--inception", metavar="FILE", help="classify_image_graph_def.pb (2015-12-05 graph, faithful) "
                   "or a torchvision Inception-v3 state dict (approximate)")
    g.add_argument("--pca", metavar="FILE", help="yt8m_pca.tgz or its folder (mean.npy, eigenvals.npy, eigenvecs.npy)")
    g.add_argument("--vggish", metavar="FILE", help="torchvggish's vggish-10086976.pth (AudioSet's VGGish, converted)")
    g.add_argument("--vggish-pca", metavar="FILE", help="AudioSet vggish_pca_params.npz (or torchvggish's "
                   "vggish_pca_params-970ea276.pth)")
    g.add_argument("--backbone", metavar="torchvision:NAME", help="image preset: a torchvision classifier")
    g.add_argument(*weights_flags, dest="backbone_weights", metavar="FILE", help="image preset: its weights")
    g.add_argument("--random-weights", type=int, default=None, metavar="SEED",
                   help="random backbones and PCA (the features mean nothing): check decoding and outputs without "
                   "the weight files")
    g.add_argument("--fps", type=float, default=None, metavar="F", help="sampled frames per second (default 1)")
    g.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="backbone precision on the device (default fp32)")
    if stream:
        return
    g.add_argument("--max-frames", type=int, default=None, metavar="T", help="frames per video at most (default 300)")
    g.add_argument("--num-workers", default="auto", metavar="N",
                   help="decode processes (default auto: CPU cores - 1; 0: in the main process)")
    g.add_argument("--skip-bad", action="store_true",
                   help="skip and count unreadable / too short / video-less files instead of stopping")


def _extract_options(args, cfg) -> dict:
    """Pipeline options from the command line, falling back to the config's ``extract`` section."""
    e = cfg.extract if cfg is not None else None

    def pick(name):
        value = getattr(args, name, None)
        return value if value is not None else (getattr(e, name) if e is not None else None)

    fps, max_frames = _or(pick("fps"), 1.0), _or(pick("max_frames"), 300)
    if not fps > 0:  # before any folder is made or any video decoded
        raise AttnClusterError(f"--fps {fps}: must be > 0 (frames sampled per second)")
    if not 1 <= max_frames <= 100_000:
        raise AttnClusterError(f"--max-frames {max_frames}: must be in [1, 100000]")
    return {"preset": pick("preset") or "yt8m", "inception": pick("inception"), "pca": pick("pca"),
            "vggish": pick("vggish"), "vggish_pca": pick("vggish_pca"), "backbone": pick("backbone"),
            "backbone_weights": pick("backbone_weights"), "random_weights": args.random_weights,
            "precision": args.precision, "device": args.device,
            "fps": fps, "max_frames": max_frames}


def _or(value, default):
    """``value`` unless it is None (0 is a value, and the checks downstream refuse it with one line)."""
    return default if value is None else value


def cmd_extract(args) -> int:
    from attncluster.extract.pipeline import run_extract

    cfg = _config(args) if args.config else None
    opts = _extract_options(args, cfg)
    fps, max_frames = opts.pop("fps"), opts.pop("max_frames")
    summary = run_extract(args.videos, args.output, fps=fps, max_frames=max_frames, fmt=args.format,
                          shard_size=args.shard_size, labels=args.labels, skip_bad=args.skip_bad,
                          num_workers=args.num_workers, **opts)
    return 0 if summary["bad"] == 0 or args.skip_bad else 2


def _add_predict_videos(p: argparse.ArgumentParser) -> None:
    p.add_argument("--videos", nargs="+", metavar="FILE", help="video files (mp4, mkv, ...; globs, directories, "
                   ".list files): extract features in memory and classify them, instead of --data")
    _add_extract_weights(p, ("--backbone-weights",))


def cmd_predict_videos(args) -> int:
    """``predict --videos``: extract in memory, classify, print JSON lines (or write --output .jsonl / .csv)."""
    from attncluster.predict import predict_videos

    if args.onnx:
        raise AttnClusterError("predict --videos takes --weights CKPT (with --config); --onnx is for --data shards")
    if not args.config:
        raise AttnClusterError("predict --videos needs --config CFG (the model's config) with --weights")
    cfg = _config(args)
    opts = _extract_options(args, cfg)
    predict_videos(cfg, args.weights, args.videos, output=args.output, top_k=args.top_k, vocab=args.vocab,
                   skip_bad=args.skip_bad, num_workers=args.num_workers, **opts)
    return 0


def cmd_explain(args) -> int:
    from attncluster.explain import explain

    cfg = _config(args)
    opts = _extract_options(args, cfg) if args.videos else {"fps": args.fps, "device": args.device}
    explain(cfg, args.weights, args.output, data=args.data, ids=args.ids, videos=args.videos, top_k=args.top_k,
            vocab=args.vocab, max_videos=args.max_videos, skip_bad=args.skip_bad, num_workers=args.num_workers,
            figures=not args.no_figures, **opts)
    return 0


def cmd_watch(args) -> int:
    """``watch``: timed events from a video file or a live stream, one JSON line each."""
    from attncluster.watch import run_watch

    _model_source(args)
    cfg = _config(args) if args.config else None
    opts = _extract_options(args, cfg)
    fps = opts.pop("fps")
    opts.pop("max_frames")
    run_watch(args.source, cfg, weights=args.weights, onnx=args.onnx, vocab=args.vocab, device=args.device,
              extractor_options=opts, fps=fps, window=args.window, stride=args.stride, threshold=args.threshold,
              off_threshold=args.off_threshold, min_gap=args.min_gap, status_every=args.status_every,
              max_retries=args.max_retries, timeout=args.timeout, reconnect_at_eof=args.reconnect_at_eof,
              max_lag=args.max_lag)
    return 0


def cmd_plot(args) -> int:
    from attncluster.plot import plot_runs

    plot_runs(args.run_dirs, args.output, labels=args.label)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="attncluster",
        description="Attention Clusters (Long et al., CVPR 2018) video classification on pre-extracted features.",
        epilog=EPILOG)
    from attncluster import __version__

    parser.add_argument("--version", action="version", version=f"attncluster {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("train", help="train a model", description="Train an Attention Cluster model. Under "
                       "torchrun it runs distributed data parallel (train.batch_size is the global batch).")
    _add_config(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", metavar="CKPT", help="continue a run exactly from one of its checkpoints")
    g.add_argument("--weights", metavar="CKPT", help="initialise from weights for fine-tuning (ours, safetensors, "
                   "converted Paddle or .pdparams); layers of another shape are re-initialised")
    p.add_argument("--run-dir", default="runs/train", metavar="DIR",
                   help="where config, metrics.jsonl, TensorBoard events and checkpoints go (default runs/train); "
                   "one training at a time, and a directory holding a run needs --resume or --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --run-dir (its config, metrics, events and checkpoints)")
    p.add_argument("--allow-reinit", action="store_true",
                   help="with --weights: go on even when no tensor of the file fits the model (everything is then "
                   "freshly initialised); without it that is an error")
    _add_device(p)
    p.set_defaults(func=cmd_train, interrupted=_interrupted_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint", description="Evaluate weights: GAP, Hit@1, PERR, mAP "
                       "and loss (top-1/top-5 for single-label configs).")
    _add_config(p, required=False)
    _add_weights_or_onnx(p)
    p.add_argument("--data", nargs="+", metavar="PATH", help="data to evaluate (default: data.valid of the config)")
    p.add_argument("--output", metavar="FILE", help="write the metrics as JSON to FILE")
    _add_device(p)
    p.set_defaults(func=cmd_eval, interrupted=lambda a: "evaluation stopped; no metrics were written"
                   + (f" ({a.output} is unchanged)" if a.output else ""))

    p = sub.add_parser("predict", help="predict top-k classes per video",
                       description="Predict the top-k classes of every video. FILE.csv: Kaggle YouTube-8M "
                       "submission format (VideoId,LabelConfidencePairs); FILE.jsonl: one object per video with "
                       "classes, scores and (with --vocab) names. Under torchrun every rank predicts its share of "
                       "the videos and rank 0 merges them; rows are always in --data order (shard, then record). "
                       "--videos classifies video files directly (features extracted in memory).")
    _add_config(p, required=False)
    _add_weights_or_onnx(p)
    p.add_argument("--data", nargs="+", metavar="PATH", help="shards, globs, directories or .list files")
    p.add_argument("--output", metavar="FILE", help="output file, .csv or .jsonl (with --videos: default stdout)")
    p.add_argument("--top-k", type=int, default=None, metavar="K",
                   help="classes per video (default 20, or every class when the model has fewer)")
    p.add_argument("--vocab", metavar="CSV", help="YouTube-8M vocabulary.csv (Index, Name columns) for label names")
    _add_device(p)
    _add_predict_videos(p)
    p.set_defaults(func=cmd_predict,
                   interrupted=lambda a: "prediction stopped; " + (
                       f"{a.output} was not written (a previous file there is unchanged)" if a.output
                       else "the lines printed cover only part of the videos"))

    from attncluster.export import DEFAULT_OPSET, INPUT_DTYPE_CHOICES, SUPPORTED_OPSETS

    p = sub.add_parser("export", help="export to ONNX (optionally int8) and a Triton model repository",
                       description="Export weights to one ONNX graph: one uint8 input per modality (batch, frames, F), "
                       "dequantized inside the graph; outputs probabilities and logits; metadata for --onnx. A parity "
                       "check against PyTorch (max |dprob| <= 1e-5, identical top-20) runs before anything is written.")
    _add_config(p)
    _add_weights(p)
    p.add_argument("--output", required=True, metavar="FILE.onnx", help="the ONNX file to write")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, metavar="N",
                   help=f"ONNX opset, one of {', '.join(map(str, SUPPORTED_OPSETS))} (default {DEFAULT_OPSET})")
    p.add_argument("--int8", action="store_true", help="dynamic int8 quantization of the MLP head (onnxruntime)")
    p.add_argument("--triton", metavar="DIR",
                   help="also write a Triton model repository DIR/NAME/{config.pbtxt,1/model.onnx}")
    p.add_argument("--triton-name", default="attncluster", metavar="NAME",
                   help="Triton model name (default attncluster)")
    p.add_argument("--max-batch-size", type=int, default=256, metavar="N", help="Triton max_batch_size (default 256)")
    p.add_argument("--vocab", metavar="CSV", help="YouTube-8M vocabulary.csv: class names stored in the graph metadata")
    p.add_argument("--input-dtype", choices=INPUT_DTYPE_CHOICES, default="auto",
                   help="auto (default): the dtype of the config's data (its first record); uint8: dataset-quantized "
                   "features; float32: float features as they are (video-level)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("quickstart", help="synthesise data, train, evaluate and predict in one go",
                       description="Generate a small synthetic YouTube-8M-format dataset, train on it, evaluate, "
                       "predict a few videos, and compare with mean pooling. No download; under a minute on a 2-core CPU.")
    p.add_argument("--run-dir", default="runs/quickstart", metavar="DIR", help="output folder (default runs/quickstart)")
    _add_device(p)
    p.set_defaults(func=cmd_quickstart, interrupted=lambda a: f"quickstart stopped; {a.run_dir} is incomplete")

    p = sub.add_parser("inspect", help="print one JSON line per video of some shards",
                       description="Read shards (TFRecord frame- or video-level, or pickles) and print one JSON line "
                       "per video: id, labels, num_frames and per-modality means of the dequantized values. A summary "
                       "goes to stderr. Damaged data is an error unless --skip-corrupt.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files, globs, directories or .list files")
    p.add_argument("--skip-corrupt", action="store_true", help="skip and count damaged records instead of failing")
    p.add_argument("--num-classes", type=int, default=None, metavar="K", help="also check that labels are < K")
    p.set_defaults(func=cmd_inspect, interrupted=lambda a: "inspect stopped; the lines printed cover only part of the data")

    p = sub.add_parser("synth", help="write synthetic YouTube-8M frame-level shards",
                       description="Write deterministic synthetic frame-level shards in the exact YouTube-8M schema, "
                       "with structure that attention pooling can learn and mean pooling cannot.")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--videos", type=int, default=1000, metavar="N", help="number of videos (default 1000)")
    p.add_argument("--classes", type=int, default=20, metavar="K", help="number of classes (default 20)")
    p.add_argument("--shards", type=int, default=4, metavar="S", help="number of shard files (default 4)")
    p.add_argument("--seed", type=int, default=0, metavar="X", help="random seed; same seed, same bytes (default 0)")
    p.add_argument("--max-frames", type=int, default=300, metavar="T", help="longest video in frames (default 300)")
    p.add_argument("--prefix", default="train", help="shard file name prefix (default train)")
    p.set_defaults(func=cmd_synth, interrupted=lambda a: f"synth stopped; {a.out} holds only the shards completed so "
                   "far (never a partial one); remove it before running synth again")

    p = sub.add_parser("extract", help="video files -> YouTube-8M-format features",
                       description="Decode video files (any container/codec FFmpeg reads), sample one frame per "
                       "second as the official YouTube-8M extractor (at most 300), compute Inception-v3 + PCA rgb and "
                       "VGGish audio features, and write frame-level TFRecord shards (or npz + labels.csv). "
                       "Resumable (a manifest records done videos); under torchrun each rank takes its share.")
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="files, globs, directories, .list files or URLs")
    p.add_argument("--output", required=True, metavar="DIR", help="output folder (shards + manifest)")
    p.add_argument("--format", choices=("yt8m", "features"), default="yt8m",
                   help="yt8m (default): frame-level SequenceExample TFRecords; features: <id>.npz + labels.csv")
    p.add_argument("--shard-size", type=int, default=100, metavar="N", help="videos per shard (default 100)")
    p.add_argument("--labels", metavar="CSV", help="video_id,labels CSV (ids: file names without extension)")
    _add_extract_weights(p, ("--weights", "--backbone-weights"))
    _add_device(p)
    _add_config(p, required=False)
    p.set_defaults(func=cmd_extract, interrupted=lambda a: f"extract stopped; the shards in {a.output} are complete "
                   "(never a partial one) and its manifest lists them: run the same command again to resume")

    p = sub.add_parser("convert-paddle", help="convert the reference's released Paddle weights",
                       description="Convert a PaddlePaddle AttentionCluster .pdparams (no Paddle needed) to PyTorch. "
                       "The reference's downgrade-in-infer dropout is folded into fc1.")
    p.add_argument("file", metavar="FILE.pdparams")
    p.add_argument("--output", required=True, metavar="OUT", help="model.pt (torch) or model.safetensors")
    p.add_argument("--feature-dims", default=None, metavar="SPEC",
                   help="modality names and dims in reference order (default rgb:1024,audio:128)")
    p.add_argument("--drop-rate", type=float, default=0.5, metavar="P", help="the reference's dropout (default 0.5)")
    p.set_defaults(func=cmd_convert_paddle,
                   interrupted=lambda a: f"convert-paddle stopped; {a.output} was not written (a previous file there is unchanged)")

    p = sub.add_parser("serve", help="serve a model over HTTP with dynamic batching",
                       description="An HTTP service (FastAPI + uvicorn): POST /v1/predict (features as JSON, or an "
                       "uploaded TFRecord / .npz), POST /v1/predict/video (a video file, with extract weights), "
                       "GET /healthz, /readyz, /metrics (Prometheus), OpenAPI docs at /docs. Concurrent requests are "
                       "batched. Needs the serve extra. SIGTERM / SIGINT stop it after in-flight requests are "
                       "answered.")
    _add_config(p, required=False)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--weights", metavar="CKPT", help="checkpoint, safetensors, converted Paddle .pt or .pdparams "
                   "(needs --config)")
    g.add_argument("--onnx", metavar="FILE", help="a model written by attncluster export (onnxruntime)")
    p.add_argument("--vocab", metavar="CSV", help="YouTube-8M vocabulary.csv for label names (default: "
                   "data.class_names of the config, if set)")
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
                   help="frames per video in JSON / npz requests (default %(default)s, as the dataset reader keeps)")
    p.add_argument("--request-timeout", type=float, default=lim.request_timeout_s, metavar="S",
                   help="seconds a request may take before it is answered 504 (default %(default)g)")
    p.add_argument("--video-timeout", type=float, default=lim.video_timeout_s, metavar="S",
                   help="the same for /v1/predict/video (default %(default)g)")
    p.add_argument("--random-weights", type=int, default=None, metavar="SEED",
                   help="/v1/predict/video with randomly initialised extract backbones (for trying it out)")
    p.add_argument("--inception", metavar="PATH", help="/v1/predict/video: Inception-v3 weights (extract)")
    p.add_argument("--pca", metavar="PATH", help="/v1/predict/video: the YouTube-8M PCA (extract)")
    p.add_argument("--vggish", metavar="PATH", help="/v1/predict/video: VGGish weights (extract)")
    p.add_argument("--vggish-pca", metavar="PATH", help="/v1/predict/video: AudioSet vggish_pca_params.npz (extract)")
    p.add_argument("--fps", type=float, default=None, metavar="F",
                   help="/v1/predict/video: frames per second (default 1)")
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="the model's intra-op threads (default 0: PyTorch's / onnxruntime's default, one per core; "
                   "1 is far faster on a machine whose cores are busy with other work)")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                   help="uvicorn log level (default warning)")
    _add_device(p)
    p.set_defaults(func=cmd_serve, interrupted=lambda a: "serve stopped")

    p = sub.add_parser("explain", help="show which frames each attention unit looks at, per video",
                       description="For each video write OUTPUT/ID.json (top classes; per modality and unit the "
                       "attention over the sampled frames with their frame indices and timestamps in seconds; the "
                       "attention summed over units; unit overlap and effective number of frames), OUTPUT/ID.png "
                       "(summed attention over time above a unit x time heatmap) and OUTPUT/index.html. Frames are "
                       "sampled as eval samples them.")
    _add_config(p)
    _add_weights(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", nargs="+", metavar="PATH", help="feature shards, globs, directories or .list files")
    src.add_argument("--videos", nargs="+", metavar="FILE", help="video files, decoded and featurised as extract "
                     "does; the figure adds thumbnails of the most-attended frames")
    p.add_argument("--ids", nargs="+", metavar="ID", help="with --data: only these video ids (each must exist)")
    p.add_argument("--output", required=True, metavar="DIR", help="output folder")
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="classes listed per video (default 5)")
    p.add_argument("--vocab", metavar="CSV", help="YouTube-8M vocabulary.csv for class names "
                   "(default: data.class_names of the config)")
    p.add_argument("--max-videos", type=int, default=None, metavar="N", help="stop after N videos")
    p.add_argument("--no-figures", action="store_true",
                   help="write ID.json and index.html only (drawing figures is most of the time)")
    _add_device(p)
    _add_extract_weights(p, ("--backbone-weights",))  # --videos; --fps also sets the timestamps of --data frames
    p.set_defaults(func=cmd_explain, interrupted=lambda a: f"explain stopped; {a.output} holds the videos explained so "
                   "far (index.html lists them)")

    p = sub.add_parser("watch", help="timed events from a video file or a live stream",
                       description="Extract features from SOURCE as its frames arrive (one per second, as extract), "
                       "score a sliding window of --window seconds every --stride seconds with the model, and print "
                       "one JSON line per event {source, start, end, class, name, score} (seconds) when it ends: a "
                       "class opens at --threshold and closes below --off-threshold. Files run as fast as they "
                       "decode, live sources in real time; a status line on stderr gives frames/s and the lag. A "
                       "dropped network stream is reopened with backoff and the gap printed as "
                       "{source, gap: true, start, end, reason}.")
    p.add_argument("source", metavar="SOURCE", help="a video file, an http(s):// or rtsp:// URL, - (a stream on stdin: "
                   "a streamable container such as mkv or mpegts), or a V4L2 device such as /dev/video0")
    _add_config(p, required=False)
    _add_weights_or_onnx(p)
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
    p.add_argument("--vocab", metavar="CSV", help="YouTube-8M vocabulary.csv for class names (default: "
                   "data.class_names of the config)")
    p.add_argument("--status-every", type=float, default=10.0, metavar="S", help="seconds between status lines "
                   "(default 10)")
    p.add_argument("--max-retries", type=int, default=5, metavar="N", help="reopen a failed network stream at "
                   "most N times in a row (backoff 1, 2, 4 ... 30 s; default 5)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="a network read blocked this long "
                   "counts as a drop (default 10)")
    p.add_argument("--max-lag", type=float, default=None, metavar="S", help="live sources: skip sampled frames "
                   "that arrive more than S seconds behind real time, so a backbone slower than real time keeps up "
                   "by scoring fewer frames (default: never skip; the lag then grows)")
    p.add_argument("--reconnect-at-eof", action="store_true", help="an http(s) stream that ends is reopened too "
                   "(a live stream served over HTTP; FFmpeg cannot tell a cut one from its end); rtsp always is")
    _add_device(p)
    _add_extract_weights(p, ("--backbone-weights",), stream=True)
    p.set_defaults(func=cmd_watch, interrupted=lambda a: "watch stopped; the events printed so far are complete")

    p = sub.add_parser("plot", help="training curves of one or more runs as a PNG",
                       description="Plot loss, GAP (top-1 for single-label runs), Hit@1 (top-5) and learning rate "
                       "against step from each RUN_DIR/metrics.jsonl, training as lines and validation as points, "
                       "runs overlaid. A run still in progress is fine.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="train run folders (or their metrics.jsonl)")
    p.add_argument("--output", default="runs.png", metavar="PNG", help="image to write (default runs.png)")
    p.add_argument("--label", action="append", default=None, metavar="NAME",
                   help="legend name of each run, in order, repeatable (default: the folder names)")
    p.set_defaults(func=cmd_plot, interrupted=lambda a: f"plot stopped; {a.output} was not written")
    return parser


def _interrupted_train(args) -> str:
    from pathlib import Path

    last = Path(args.run_dir) / "checkpoints" / "last.pt"
    if last.is_file():
        return (f"training stopped; the checkpoints in {last.parent} are complete (written atomically); continue with "
                f"the same command and --resume {last} --run-dir {args.run_dir}")
    return f"training stopped before its first checkpoint; nothing in {args.run_dir} can be resumed"


def interrupted_message(args: argparse.Namespace) -> str:
    """What Ctrl-C leaves behind, for this verb: its ``interrupted`` default (a function of the arguments)."""
    describe = getattr(args, "interrupted", None)
    if describe is None:
        return f"{args.command} stopped"
    try:
        return describe(args)
    except Exception:  # the message must never hide the interruption
        return f"{args.command} stopped"


def user_message(e: BaseException) -> str:
    """The one-line message of a user error, also when a DataLoader worker re-raised it with its traceback.

    torch re-raises a worker's exception as ``type(e)(text)`` where ``text`` holds the worker's traceback ending in
    ``module.Class: message``; only ``message`` is kept, whatever module the class lives in.
    """
    text = str(e) if not isinstance(e, OSError) or "Original Traceback" in str(e) else os_error_message(e)
    if "Original Traceback" in text:  # torch wraps worker exceptions: "Caught X in DataLoader worker ..."
        last = text.rstrip().splitlines()[-1]
        cls = type(e)
        for prefix in (f"{cls.__module__}.{cls.__qualname__}: ", f"{cls.__qualname__}: "):
            if last.startswith(prefix):
                last = last[len(prefix):]
                break
        else:
            head, sep, rest = last.partition(": ")
            if sep and head.replace(".", "").replace("_", "").isalnum() and head.split(".")[-1][:1].isupper():
                last = rest  # another class name, e.g. a subclass raised in the worker
        text = last
    return printable(text)


def main(argv: list[str] | None = None) -> int:
    """Run one verb. User errors and file-system faults print one ``error:`` line and return 2."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # name the verb's own options, and the closest one (argparse would point at the top-level help)
        import difflib

        sub = next(a for a in parser._actions if a.dest == "command").choices[args.command]
        options = [o for a in sub._actions for o in a.option_strings]
        close = difflib.get_close_matches(extra[0].split("=")[0], options, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close and extra[0].startswith("-") else ""
        print(printable(f"error: attncluster {args.command}: unrecognized arguments: {' '.join(extra)}{hint} "
                        f"(see attncluster {args.command} --help)"), file=sys.stderr)
        return 2
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (AttnClusterError, OSError) as e:  # OSError: disk full, permission, missing folder, ... with its path
        print(f"error: {user_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(printable(f"interrupted: {interrupted_message(args)}"), file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
