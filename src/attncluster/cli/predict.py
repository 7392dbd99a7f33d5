"""``attncluster predict``: feature shards (--data) or video files (--videos)."""

from __future__ import annotations

from attncluster.cli.common import (add_config, add_device, add_extract_args, add_vocab, add_weights_or_onnx,
                                    extract_options, model_config, vocab)
from attncluster.errors import AttnClusterError

HELP = "predict top-k classes per video"
DESCRIPTION = ("Predict the top-k classes of every video. FILE.csv: Kaggle YouTube-8M submission format "
               "(VideoId,LabelConfidencePairs); FILE.jsonl: one object per video with classes, scores and names "
               "(a 3,862-class model gets the shipped YouTube-8M 2018 names; --vocab replaces them). Under torchrun "
               "every rank predicts its share of the videos and rank 0 merges them; rows are always in --data order "
               "(shard, then record). --videos classifies video files directly (features extracted in memory).")


def add_args(p) -> None:
    add_config(p, required=False, from_weights=True)
    add_weights_or_onnx(p)
    p.add_argument("--data", nargs="+", metavar="PATH", help="shards, globs, directories or .list files")
    p.add_argument("--output", metavar="FILE", help="output file, .csv or .jsonl (with --videos: default stdout)")
    p.add_argument("--top-k", type=int, default=None, metavar="K",
                   help="classes per video (default 20, or every class when the model has fewer)")
    add_vocab(p, "YouTube-8M vocabulary.csv (Index, Name columns) for label names (default: the shipped YouTube-8M "
              "2018 names for a 3,862-class model, else data.class_names of the config)")
    add_device(p)
    p.add_argument("--videos", nargs="+", metavar="FILE", help="video files (mp4, mkv, ...; globs, directories, "
                   ".list files): extract features in memory and classify them, instead of --data")
    add_extract_args(p)


def run(args) -> int:
    if args.videos:
        if args.data:
            raise AttnClusterError("predict takes --data (feature shards) or --videos (video files), not both")
        return run_videos(args)
    if not args.data or not args.output:
        raise AttnClusterError("predict needs --data PATH... and --output FILE (or --videos FILE... for video files)")
    from attncluster.predict import predict

    cfg = model_config(args, required=False)
    predict(cfg, args.weights, args.data, args.output, top_k=args.top_k, vocab=vocab(args),
            device=args.device, onnx=args.onnx)
    return 0


def run_videos(args) -> int:
    """``predict --videos``: extract in memory, classify, print JSON lines (or write --output .jsonl / .csv)."""
    if args.onnx:
        raise AttnClusterError("predict --videos takes --weights CKPT; --onnx is for --data shards")
    from attncluster.predict import predict_videos

    cfg = model_config(args)
    opts = extract_options(args, cfg)
    predict_videos(cfg, args.weights, args.videos, output=args.output, top_k=args.top_k, vocab=vocab(args),
                   skip_bad=args.skip_bad, num_workers=args.num_workers, **opts)
    return 0


def interrupted(args) -> str:
    return "prediction stopped; " + (f"{args.output} was not written (a previous file there is unchanged)"
                                     if args.output else "the lines printed cover only part of the videos")
