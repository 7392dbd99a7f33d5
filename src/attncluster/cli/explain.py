"""``attncluster explain``."""

from __future__ import annotations

from attncluster.cli.common import add_config, add_device, add_extract_args, add_vocab, add_weights, extract_options, model_config, vocab

HELP = "show which frames each attention unit looks at, per video"
DESCRIPTION = ("For each video write OUTPUT/ID.json (top classes; per modality and unit the attention over the "
               "sampled frames with their frame indices and timestamps in seconds; the attention summed over units; "
               "unit overlap and effective number of frames), OUTPUT/ID.png (summed attention over time above a "
               "unit x time heatmap) and OUTPUT/index.html. Frames are sampled as eval samples them.")


def add_args(p) -> None:
    add_config(p, required=False, from_weights=True)
    add_weights(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", nargs="+", metavar="PATH", help="feature shards, globs, directories or .list files")
    src.add_argument("--videos", nargs="+", metavar="FILE", help="video files, decoded and featurised as extract "
                     "does; the figure adds thumbnails of the most-attended frames")
    p.add_argument("--ids", nargs="+", metavar="ID", help="with --data: only these video ids (each must exist)")
    p.add_argument("--output", required=True, metavar="DIR", help="output folder")
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="classes listed per video (default 5)")
    add_vocab(p, "YouTube-8M vocabulary.csv for class names (default: the shipped YouTube-8M 2018 names for a "
              "3,862-class model, else data.class_names of the config)")
    p.add_argument("--max-videos", type=int, default=None, metavar="N", help="stop after N videos")
    p.add_argument("--no-figures", action="store_true",
                   help="write ID.json and index.html only (drawing figures is most of the time)")
    add_device(p)
    add_extract_args(p)  # --videos; --fps also sets the timestamps of --data frames


def run(args) -> int:
    from attncluster.explain import explain

    cfg = model_config(args)
    opts = extract_options(args, cfg) if args.videos else {"fps": args.fps, "device": args.device}
    explain(cfg, args.weights, args.output, data=args.data, ids=args.ids, videos=args.videos, top_k=args.top_k,
            vocab=vocab(args), max_videos=args.max_videos, skip_bad=args.skip_bad, num_workers=args.num_workers,
            figures=not args.no_figures, **opts)
    return 0


def interrupted(args) -> str:
    return f"explain stopped; {args.output} holds the videos explained so far (index.html lists them)"
