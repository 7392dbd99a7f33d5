"""``attncluster inspect``."""

from __future__ import annotations

HELP = "print one JSON line per video of some shards"
DESCRIPTION = ("Read shards (TFRecord frame- or video-level, or pickles) and print one JSON line per video: id, "
               "labels, num_frames and per-modality means of the dequantized values. A summary goes to stderr. "
               "Damaged data is an error unless --skip-corrupt.")


def add_args(p) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH", help="files, globs, directories or .list files")
    p.add_argument("--skip-corrupt", action="store_true", help="skip and count damaged records instead of failing")
    p.add_argument("--num-classes", type=int, default=None, metavar="K", help="also check that labels are < K")


def run(args) -> int:
    from attncluster.inspect_data import inspect

    return inspect(args.paths, skip_corrupt=args.skip_corrupt, num_classes=args.num_classes)


def interrupted(args) -> str:
    return "inspect stopped; the lines printed cover only part of the data"
