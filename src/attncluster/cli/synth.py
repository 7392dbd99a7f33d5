"""``attncluster synth``."""

from __future__ import annotations

from attncluster.cli.common import deprecated

HELP = "write synthetic YouTube-8M frame-level shards"
DESCRIPTION = ("Write deterministic synthetic frame-level shards in the exact YouTube-8M schema, with structure that "
               "attention pooling can learn and mean pooling cannot.")


def add_args(p) -> None:
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    # --num-videos / --num-classes: --videos names video files in predict and explain, --num-classes is inspect's
    p.add_argument("--num-videos", type=int, default=1000, metavar="N", help="number of videos (default 1000)")
    p.add_argument("--videos", type=int, dest="num_videos", metavar="N",
                   action=deprecated("synth --videos", "--num-videos"), help="deprecated spelling of --num-videos")
    p.add_argument("--num-classes", type=int, default=20, metavar="K", help="number of classes (default 20)")
    p.add_argument("--classes", type=int, dest="num_classes", metavar="K",
                   action=deprecated("synth --classes", "--num-classes"), help="deprecated spelling of --num-classes")
    p.add_argument("--shards", type=int, default=4, metavar="S", help="number of shard files (default 4)")
    p.add_argument("--seed", type=int, default=0, metavar="X", help="random seed; same seed, same bytes (default 0)")
    p.add_argument("--max-frames", type=int, default=300, metavar="T", help="longest video in frames (default 300)")
    p.add_argument("--prefix", default="train", help="shard file name prefix (default train)")


def run(args) -> int:
    from attncluster.data.synth import write_synthetic
    from attncluster.errors import plural

    files = write_synthetic(args.out, videos=args.num_videos, classes=args.num_classes, shards=args.shards,
                            seed=args.seed, max_frames=args.max_frames, prefix=args.prefix)
    print(f"synth: wrote {plural(args.num_videos, 'video')} in {plural(len(files), 'shard')} to {args.out}")
    return 0


def interrupted(args) -> str:
    return (f"synth stopped; {args.out} holds only the shards completed so far (never a partial one); remove it "
            "before running synth again")
