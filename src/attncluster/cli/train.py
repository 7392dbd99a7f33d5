"""``attncluster train``."""

from __future__ import annotations

from attncluster.cli.common import add_config, add_device, config

HELP = "train a model"
DESCRIPTION = ("Train an Attention Cluster model. Under torchrun it runs distributed data parallel (train.batch_size "
               "is the global batch).")


def add_args(p) -> None:
    add_config(p)
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
    add_device(p)


def run(args) -> int:
    from attncluster.train import fit

    fit(config(args), run_dir=args.run_dir, resume=args.resume, weights=args.weights, device=args.device,
        allow_reinit=args.allow_reinit, overwrite=args.overwrite)
    return 0


def interrupted(args) -> str:
    from pathlib import Path

    last = Path(args.run_dir) / "checkpoints" / "last.pt"
    if last.is_file():
        return (f"training stopped; the checkpoints in {last.parent} are complete (written atomically); continue with "
                f"the same command and --resume {last} --run-dir {args.run_dir}")
    return f"training stopped before its first checkpoint; nothing in {args.run_dir} can be resumed"
