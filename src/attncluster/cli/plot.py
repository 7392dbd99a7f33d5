"""``attncluster plot``."""

from __future__ import annotations

HELP = "training curves of one or more runs as a PNG"
DESCRIPTION = ("Plot loss, GAP (top-1 for single-label runs), Hit@1 (top-5) and learning rate against step from each "
               "RUN_DIR/metrics.jsonl, training as lines and validation as points, runs overlaid. A run still in "
               "progress is fine.")


def add_args(p) -> None:
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="train run folders (or their metrics.jsonl)")
    p.add_argument("--output", default="runs.png", metavar="PNG", help="image to write (default runs.png)")
    p.add_argument("--label", action="append", default=None, metavar="NAME",
                   help="legend name of each run, in order, repeatable (default: the folder names)")


def run(args) -> int:
    from attncluster.plot import plot_runs

    plot_runs(args.run_dirs, args.output, labels=args.label)
    return 0


def interrupted(args) -> str:
    return f"plot stopped; {args.output} was not written"
