"""``attncluster`` command line: a thin table from verb to function.

Every user error (bad config, bad data, missing file) is printed as one ``error: ...`` line with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from attncluster.errors import AttnClusterError

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


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, metavar="DEV",
                   help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")


def cmd_train(args) -> int:
    from attncluster.train import fit

    fit(_config(args), run_dir=args.run_dir, resume=args.resume, weights=args.weights, device=args.device)
    return 0


def cmd_eval(args) -> int:
    from attncluster.evaluate import evaluate

    evaluate(_config(args), args.weights, data=args.data, device=args.device, output=args.output)
    return 0


def cmd_predict(args) -> int:
    if args.videos:
        if args.data:
            raise AttnClusterError("predict takes --data (feature shards) or --videos (video files), not both")
        return cmd_predict_videos(args)
    if not args.data or not args.output:
        raise AttnClusterError("predict needs --data PATH... and --output FILE (or --videos FILE... for video files)")
    from attncluster.predict import predict

    predict(_config(args), args.weights, args.data, args.output, top_k=args.top_k, vocab=args.vocab,
            device=args.device)
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
    print(f"synth: wrote {args.videos} videos in {len(files)} shards to {args.out}")
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


def _add_extract_weights(p: argparse.ArgumentParser, weights_flags: tuple[str, ...]) -> None:
    """Backbone options shared by ``extract`` and ``predict --videos`` (defaults from the config's extract section)."""
    g = p.add_argument_group("feature extraction (YouTube-8M preset: Inception-v3 + PCA, VGGish + PCA)")
    g.add_argument("--preset", choices=("yt8m", "image"), default=None,
                   help="yt8m (default): the dataset's rgb 1024 + audio 128 uint8 features; image: a torchvision "
                   "classifier's pooled features (--backbone)")
    g.add_argument("--inception", metavar="FILE", help="classify_image_graph_def.pb (2015-12-05 graph, faithful) "
                   "or a torchvision Inception-v3 state dict (approximate)")
    g.add_argument("--pca", metavar="FILE", help="yt8m_pca.tgz or its folder (mean.npy, eigenvals.npy, eigenvecs.npy)")
    g.add_argument("--vggish", metavar="FILE", help="AudioSet VGGish weights (or the PyTorch port's state dict)")
    g.add_argument("--vggish-pca", metavar="FILE", help="AudioSet vggish_pca_params.npz")
    g.add_argument("--backbone", metavar="torchvision:NAME", help="image preset: a torchvision classifier")
    g.add_argument(*weights_flags, dest="backbone_weights", metavar="FILE", help="image preset: its weights")
    g.add_argument("--random-weights", type=int, default=None, metavar="SEED",
                   help="random backbones and PCA (the features mean nothing): check decoding and outputs without "
                   "the weight files")
    g.add_argument("--fps", type=float, default=None, metavar="F", help="sampled frames per second (default 1)")
    g.add_argument("--max-frames", type=int, default=None, metavar="T", help="frames per video at most (default 300)")
    g.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="backbone precision on the device (default fp32)")
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

    return {"preset": pick("preset") or "yt8m", "inception": pick("inception"), "pca": pick("pca"),
            "vggish": pick("vggish"), "vggish_pca": pick("vggish_pca"), "backbone": pick("backbone"),
            "backbone_weights": pick("backbone_weights"), "random_weights": args.random_weights,
            "precision": args.precision, "device": args.device,
            "fps": pick("fps") or 1.0, "max_frames": pick("max_frames") or 300}


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


def cmd_plot(args) -> int:
    from attncluster.plot import plot_runs

    plot_runs(args.run_dirs, args.output, labels=args.label)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
                   help="where config, metrics.jsonl, TensorBoard events and checkpoints go (default runs/train)")
    _add_device(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint", description="Evaluate weights: GAP, Hit@1, PERR, mAP "
                       "and loss (top-1/top-5 for single-label configs).")
    _add_config(p)
    _add_weights(p)
    p.add_argument("--data", nargs="+", metavar="PATH", help="data to evaluate (default: data.valid of the config)")
    p.add_argument("--output", metavar="FILE", help="write the metrics as JSON to FILE")
    _add_device(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="predict top-k classes per video",
                       description="Predict the top-k classes of every video. FILE.csv: Kaggle YouTube-8M "
                       "submission format (VideoId,LabelConfidencePairs); FILE.jsonl: one object per video with "
                       "classes, scores and (with --vocab) names.")
    _add_config(p)
    _add_weights(p)
    p.add_argument("--data", nargs="+", metavar="PATH", help="shards, globs, directories or .list files")
    p.add_argument("--output", metavar="FILE", help="output file, .csv or .jsonl (with --videos: default stdout)")
    p.add_argument("--top-k", type=int, default=None, metavar="K",
                   help="classes per video (default 20, or every class when the model has fewer)")
    p.add_argument("--vocab", metavar="CSV", help="YouTube-8M vocabulary.csv (Index, Name columns) for label names")
    _add_device(p)
    _add_predict_videos(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("quickstart", help="synthesise data, train, evaluate and predict in one go",
                       description="Generate a small synthetic YouTube-8M-format dataset, train on it, evaluate, "
                       "predict a few videos, and compare with mean pooling. No download; about a minute on a 2-core CPU.")
    p.add_argument("--run-dir", default="runs/quickstart", metavar="DIR", help="output folder (default runs/quickstart)")
    _add_device(p)
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("inspect", help="print one JSON line per video of some shards",
                       description="Read shards (TFRecord frame- or video-level, or pickles) and print one JSON line "
                       "per video: id, labels, num_frames and per-modality means of the dequantized values. A summary "
                       "goes to stderr. Damaged data is an error unless --skip-corrupt.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files, globs, directories or .list files")
    p.add_argument("--skip-corrupt", action="store_true", help="skip and count damaged records instead of failing")
    p.add_argument("--num-classes", type=int, default=None, metavar="K", help="also check that labels are < K")
    p.set_defaults(func=cmd_inspect)

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
    p.set_defaults(func=cmd_synth)

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
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("convert-paddle", help="convert the reference's released Paddle weights",
                       description="Convert a PaddlePaddle AttentionCluster .pdparams (no Paddle needed) to PyTorch. "
                       "The reference's downgrade-in-infer dropout is folded into fc1.")
    p.add_argument("file", metavar="FILE.pdparams")
    p.add_argument("--output", required=True, metavar="OUT", help="model.pt (torch) or model.safetensors")
    p.add_argument("--feature-dims", default=None, metavar="SPEC",
                   help="modality names and dims in reference order (default rgb:1024,audio:128)")
    p.add_argument("--drop-rate", type=float, default=0.5, metavar="P", help="the reference's dropout (default 0.5)")
    p.set_defaults(func=cmd_convert_paddle)

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
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("plot", help="training curves of one or more runs as a PNG",
                       description="Plot loss, GAP (top-1 for single-label runs), Hit@1 (top-5) and learning rate "
                       "against step from each RUN_DIR/metrics.jsonl, training as lines and validation as points, "
                       "runs overlaid. A run still in progress is fine.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="train run folders (or their metrics.jsonl)")
    p.add_argument("--output", default="runs.png", metavar="PNG", help="image to write (default runs.png)")
    p.add_argument("--label", action="append", default=None, metavar="NAME",
                   help="legend name of each run, in order, repeatable (default: the folder names)")
    p.set_defaults(func=cmd_plot)
    return parser


def user_message(e: BaseException) -> str:
    """The one-line message of a user error, also when a DataLoader worker re-raised it with its traceback."""
    text = str(e)
    if "Original Traceback" in text:  # torch wraps worker exceptions: "Caught X in DataLoader worker ..."
        last = text.rstrip().splitlines()[-1]
        text = last.split(": ", 1)[1] if last.startswith(("attncluster.errors.", type(e).__name__)) else last
    return " ".join(text.split("\n"))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except AttnClusterError as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: stopped; checkpoints already written are complete and valid", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
