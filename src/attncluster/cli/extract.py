"""``attncluster extract``."""

from __future__ import annotations

from attncluster.cli.common import add_config, add_device, add_extract_args, config, extract_options

HELP = "video files -> YouTube-8M-format features"
DESCRIPTION = ("Decode video files (any container/codec FFmpeg reads), sample one frame per second as the official "
               "YouTube-8M extractor (at most 300), compute Inception-v3 + PCA rgb and VGGish audio features, and "
               "write frame-level TFRecord shards (or npz + labels.csv). Resumable (a manifest records done videos); "
               "under torchrun each rank takes its share.")


def add_args(p) -> None:
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="files, globs, directories, .list files or URLs")
    p.add_argument("--output", required=True, metavar="DIR", help="output folder (shards + manifest)")
    p.add_argument("--format", choices=("yt8m", "features"), default="yt8m",
                   help="yt8m (default): frame-level SequenceExample TFRecords; features: <id>.npz + labels.csv")
    p.add_argument("--shard-size", type=int, default=100, metavar="N", help="videos per shard (default 100)")
    p.add_argument("--labels", metavar="CSV", help="video_id,labels CSV (ids: file names without extension)")
    add_extract_args(p, old_weights_flag=True)
    add_device(p)
    add_config(p, required=False)


def run(args) -> int:
    from attncluster.extract.pipeline import run_extract

    cfg = config(args) if args.config else None
    opts = extract_options(args, cfg)
    fps, max_frames = opts.pop("fps"), opts.pop("max_frames")
    summary = run_extract(args.videos, args.output, fps=fps, max_frames=max_frames, fmt=args.format,
                          shard_size=args.shard_size, labels=args.labels, skip_bad=args.skip_bad,
                          num_workers=args.num_workers, **opts)
    return 0 if summary["bad"] == 0 or args.skip_bad else 2


def interrupted(args) -> str:
    return (f"extract stopped; the shards in {args.output} are complete (never a partial one) and its manifest lists "
            "them: run the same command again to resume")
