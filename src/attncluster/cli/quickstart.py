"""``attncluster quickstart``."""

from __future__ import annotations

from attncluster.cli.common import add_device

HELP = "synthesise data, train, evaluate and predict in one go"
DESCRIPTION = ("Generate a small synthetic YouTube-8M-format dataset, train on it, evaluate, predict a few videos, "
               "and compare with mean pooling. No download; 19 s on an idle 2-core CPU, minutes on a busy one (README: "
               "Quickstart).")


def add_args(p) -> None:
    p.add_argument("--run-dir", default="runs/quickstart", metavar="DIR", help="output folder (default runs/quickstart)")
    add_device(p)


def run(args) -> int:
    from attncluster.quickstart import quickstart

    quickstart(args.run_dir, device=args.device)
    return 0


def interrupted(args) -> str:
    return f"quickstart stopped; {args.run_dir} is incomplete"
