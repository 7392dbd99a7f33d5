"""``attncluster convert-paddle``."""

from __future__ import annotations

from attncluster.errors import AttnClusterError

HELP = "convert the reference's released Paddle weights"
DESCRIPTION = ("Convert a PaddlePaddle AttentionCluster .pdparams (no Paddle needed) to PyTorch. The reference's "
               "downgrade-in-infer dropout is folded into fc1.")


def add_args(p) -> None:
    p.add_argument("file", metavar="FILE.pdparams")
    p.add_argument("--output", required=True, metavar="OUT", help="model.pt (torch) or model.safetensors")
    p.add_argument("--feature-dims", default=None, metavar="SPEC",
                   help="modality names and dims in reference order (default rgb:1024,audio:128)")
    p.add_argument("--drop-rate", type=float, default=0.5, metavar="P", help="the reference's dropout (default 0.5)")


def run(args) -> int:
    feature_dims = None
    if args.feature_dims:
        feature_dims = {}
        for item in args.feature_dims.split(","):
            name, _, dim = item.partition(":")
            if not dim.isdigit():
                raise AttnClusterError(f"--feature-dims {args.feature_dims!r}: expected name:dim pairs like "
                                       "rgb:1024,audio:128")
            feature_dims[name] = int(dim)
    from attncluster.paddle import convert_paddle

    kwargs = convert_paddle(args.file, args.output, feature_dims=feature_dims, drop_rate=args.drop_rate)
    print(f"convert-paddle: {args.file} -> {args.output} ({kwargs})")
    return 0


def interrupted(args) -> str:
    return f"convert-paddle stopped; {args.output} was not written (a previous file there is unchanged)"
