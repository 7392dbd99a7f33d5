"""``attncluster eval``."""

from __future__ import annotations

from attncluster.cli.common import (add_config, add_device, add_weights_or_onnx, check_default_data,
                                    config_source, model_config)

HELP = "evaluate a checkpoint"
DESCRIPTION = "Evaluate weights: GAP, Hit@1, PERR, mAP and loss (top-1/top-5 for single-label configs)."


def add_args(p) -> None:
    add_config(p, required=False, from_weights=True)
    add_weights_or_onnx(p)
    p.add_argument("--data", nargs="+", metavar="PATH", help="data to evaluate (default: data.valid of the config)")
    p.add_argument("--output", metavar="FILE", help="write the metrics as JSON to FILE")
    add_device(p)


def run(args) -> int:
    from attncluster.evaluate import evaluate

    cfg = model_config(args, required=False)
    if cfg is not None and not args.data:
        check_default_data(cfg, "valid", config_source(args), "--data")
    evaluate(cfg, args.weights, data=args.data, device=args.device, output=args.output, onnx=args.onnx)
    return 0


def interrupted(args) -> str:
    return "evaluation stopped; no metrics were written" + (f" ({args.output} is unchanged)" if args.output else "")
