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


def cmd_explain(args) -> int:
    from attncluster.explain import explain

    explain(_config(args), args.weights, args.output, data=args.data, ids=args.ids, videos=args.videos,
            top_k=args.top_k, vocab=args.vocab, fps=args.fps, device=args.device, max_videos=args.max_videos)
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
    p.add_argument("--data", nargs="+", required=True, metavar="PATH", help="shards, globs, directories or .list files")
    p.add_argument("--output", required=True, metavar="FILE", help="output file, .csv or .jsonl")
    p.add_argument("--top-k", type=int, default=None, metavar="K",
                   help="classes per video (default 20, or every class when the model has fewer)")
    p.add_argument("--vocab", metavar="CSV", help="YouTube-8M vocabulary.csv (Index, Name columns) for label names")
    _add_device(p)
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
    p.add_argument("--fps", type=float, default=1.0, metavar="F", help="with --data: feature frames per second, for "
                   "timestamps (default 1: YouTube-8M frame-level features are 1 frame per second)")
    _add_device(p)
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
