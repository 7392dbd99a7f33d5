"""What more than one verb shares: the parser class, the option groups, and reading the config.

Nothing here imports torch or numpy at import time: building the parser (``--help``, argument errors) must stay
instant. A verb's ``run`` imports its heavy module itself.
"""

from __future__ import annotations

import argparse
import sys

from attncluster.errors import AttnClusterError, ConfigError, os_error_message, printable

EPILOG = "Docs: README.md. Every command takes --help."


class Parser(argparse.ArgumentParser):
    """argparse with usage mistakes as one ``error:`` line (exit 2) like every other user error."""

    def error(self, message: str):  # type: ignore[override]
        print(printable(f"error: {self.prog}: {message} (see {self.prog} --help)"), file=sys.stderr)
        raise SystemExit(2)


def deprecated(old: str, new: str) -> type[argparse.Action]:
    """An option spelling kept for old command lines: it stores as ``new`` does and prints one deprecation line."""

    class _Deprecated(argparse._StoreAction):
        def __call__(self, parser, namespace, values, option_string=None):
            print(f"warning: {old} is deprecated, use {new}", file=sys.stderr)
            super().__call__(parser, namespace, values, option_string)

    return _Deprecated


# ---- option groups --------------------------------------------------------------------------------------------

def add_config(p: argparse.ArgumentParser, required: bool = True, from_weights: bool = False) -> None:
    """``--config`` and ``-o``. ``from_weights``: optional, a training checkpoint given as --weights carries one."""
    help_ = "YAML config (see configs/)"
    if from_weights:
        help_ += ("; optional with --weights of a training checkpoint, which stores its resolved config (an "
                  "explicit --config wins)")
    p.add_argument("--config", required=required, metavar="CFG", help=help_)
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted config override, repeatable, e.g. -o train.batch_size=256 -o model.drop_rate=0.3")


def add_weights(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", required=True, metavar="CKPT",
                   help="checkpoint, safetensors, converted Paddle .pt or .pdparams")


def add_weights_or_onnx(p: argparse.ArgumentParser, onnx_help: str | None = None) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--weights", metavar="CKPT", help="checkpoint, safetensors, converted Paddle .pt or .pdparams "
                   "(--config optional for a training checkpoint)")
    g.add_argument("--onnx", metavar="FILE", help=onnx_help or "a graph from 'attncluster export', run by onnxruntime "
                   "(no PyTorch model); the model settings come from the graph, --config (optional) gives data "
                   "settings")


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, metavar="DEV",
                   help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")


def add_vocab(p: argparse.ArgumentParser, help_: str) -> None:
    """``--vocab CSV`` and ``--no-vocab``: the shipped YouTube-8M names are the default for a 3,862-class model."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--vocab", metavar="CSV", help=help_)
    g.add_argument("--no-vocab", action="store_true",
                   help="no class names (not even the shipped YouTube-8M 2018 names a 3,862-class model gets)")


def vocab(args) -> str | bool | None:
    """What the verb's ``vocab=`` argument takes: a CSV path, False (--no-vocab) or None (the default names)."""
    return False if getattr(args, "no_vocab", False) else getattr(args, "vocab", None)


# Every extract option, in the order extract --help shows them: (flags, argparse keywords). A verb that takes only
# some of them (serve) names those; the declaration is this one.
EXTRACT_OPTIONS: dict[str, tuple[tuple[str, ...], dict]] = {
    "preset": (("--preset",), dict(choices=("yt8m", "image"), default=None,
                                   help="yt8m (default): the dataset's rgb 1024 + audio 128 uint8 features; image: a "
                                   "torchvision classifier's pooled features (--backbone)")),
    "inception": (("--inception",), dict(metavar="FILE", help="classify_image_graph_def.pb (2015-12-05 graph, "
                                         "faithful) or a torchvision Inception-v3 state dict (approximate)")),
    "pca": (("--pca",), dict(metavar="FILE", help="yt8m_pca.tgz or its folder (mean.npy, eigenvals.npy, "
                             "eigenvecs.npy)")),
    "vggish": (("--vggish",), dict(metavar="FILE", help="torchvggish's vggish-10086976.pth (AudioSet's VGGish, "
                                   "converted)")),
    "vggish_pca": (("--vggish-pca",), dict(metavar="FILE", help="AudioSet vggish_pca_params.npz (or torchvggish's "
                                           "vggish_pca_params-970ea276.pth)")),
    "backbone": (("--backbone",), dict(metavar="torchvision:NAME", help="image preset: a torchvision classifier")),
    "backbone_weights": (("--backbone-weights",), dict(dest="backbone_weights", metavar="FILE",
                                                       help="image preset: its weights")),
    "random_weights": (("--random-weights",), dict(type=int, default=None, metavar="SEED",
                                                   help="random backbones and PCA (the features mean nothing): check "
                                                   "decoding and outputs without the weight files")),
    "fps": (("--fps",), dict(type=float, default=None, metavar="F", help="sampled frames per second (default 1)")),
    "max_frames": (("--max-frames",), dict(type=int, default=None, metavar="T",
                                           help="frames per video at most (default 300)")),
    "precision": (("--precision",), dict(choices=("fp32", "bf16", "fp16"), default="fp32",
                                         help="backbone precision on the device (default fp32)")),
    "num_workers": (("--num-workers",), dict(default="auto", metavar="N",
                                             help="decode processes (default auto: CPU cores - 1; 0: in the main "
                                             "process)")),
    "skip_bad": (("--skip-bad",), dict(action="store_true", help="skip and count unreadable / too short / "
                                       "video-less files instead of stopping")),
}

EXTRACT_TITLE = "feature extraction (YouTube-8M preset: Inception-v3 + PCA, VGGish + PCA)"


def add_extract_args(p: argparse.ArgumentParser, only: tuple[str, ...] | None = None, title: str = EXTRACT_TITLE,
                     old_weights_flag: bool = False) -> argparse._ArgumentGroup:
    """The extract options (defaults from the config's ``extract`` section), for extract, predict --videos,
    explain --videos and serve's /v1/predict/video. ``only`` picks some of them (by dest).

    ``old_weights_flag``: extract's old spelling ``--weights`` of ``--backbone-weights`` (deprecated: ``--weights``
    is the classifier checkpoint in every other verb).
    """
    g = p.add_argument_group(title)
    for name, (flags, kwargs) in EXTRACT_OPTIONS.items():
        if only is not None and name not in only:
            continue
        g.add_argument(*flags, **kwargs)
        if name == "backbone_weights" and old_weights_flag:
            g.add_argument("--weights", dest="backbone_weights", metavar="FILE",
                           action=deprecated("extract --weights", "--backbone-weights"),
                           help="deprecated spelling of --backbone-weights")
    return g


def extract_options(args, cfg) -> dict:
    """Pipeline options from the command line, falling back to the config's ``extract`` section."""
    e = cfg.extract if cfg is not None else None

    def pick(name):
        value = getattr(args, name, None)
        return value if value is not None else (getattr(e, name) if e is not None else None)

    fps, max_frames = _or(pick("fps"), 1.0), _or(pick("max_frames"), 300)
    if not fps > 0:  # before any folder is made or any video decoded
        raise AttnClusterError(f"--fps {fps}: must be > 0 (frames sampled per second)")
    if not 1 <= max_frames <= 100_000:
        raise AttnClusterError(f"--max-frames {max_frames}: must be in [1, 100000]")
    return {"preset": pick("preset") or "yt8m", "inception": pick("inception"), "pca": pick("pca"),
            "vggish": pick("vggish"), "vggish_pca": pick("vggish_pca"), "backbone": pick("backbone"),
            "backbone_weights": pick("backbone_weights"), "random_weights": args.random_weights,
            "precision": args.precision, "device": args.device,
            "fps": fps, "max_frames": max_frames}


def _or(value, default):
    """``value`` unless it is None (0 is a value, and the checks downstream refuse it with one line)."""
    return default if value is None else value


# ---- the config ---------------------------------------------------------------------------------------------------

def config(args):
    """``--config`` with ``-o`` overrides (the defaults when --config is absent)."""
    from attncluster.config import load_config

    return load_config(args.config, args.override)


def model_config(args, required: bool = True):
    """The config of a verb that runs a model: ``--config`` when given, else the one ``--weights`` stores.

    ``--onnx`` carries its own model settings: there the config is optional (None without --config and -o).
    Returns None only when no config is needed.
    """
    if args.config:
        return config(args)
    weights = getattr(args, "weights", None)
    if weights and not getattr(args, "onnx", None):
        from attncluster.inference import config_from_weights

        return config_from_weights(weights, args.override)
    if args.override or required:
        if required:
            raise ConfigError("--config is required (or --weights of a training checkpoint, which stores its config)")
        return config(args)
    return None


def config_source(args) -> str:
    """Where the verb's config came from, for messages."""
    if args.config:
        return f"config {args.config}"
    return f"the config stored in {args.weights}" if getattr(args, "weights", None) else "the default config"


def check_default_data(cfg, key: str, source: str, flag: str) -> None:
    """The config's ``data.<key>`` paths (a verb's default when ``flag`` is absent) exist; else one line saying that
    this default is missing and that ``flag`` is the way (shipped configs point at ``data/yt8m/...``)."""
    from attncluster.data.paths import expand_paths
    from attncluster.errors import DataError

    for spec in getattr(cfg.data, key) or []:
        try:
            expand_paths([spec], what=f"data.{key}")
        except DataError as e:
            if not str(e).startswith(f"{spec}: matches no files"):
                raise
            raise DataError(f"{spec}: no such data; it is the default data.{key} of {source}, used when {flag} is "
                            f"not given: pass {flag} PATH... (shards, globs, directories or .list files)") from None


# ---- errors and Ctrl-C ----------------------------------------------------------------------------------------

def interrupted_message(args: argparse.Namespace) -> str:
    """What Ctrl-C leaves behind, for this verb: its ``interrupted`` default (a function of the arguments)."""
    describe = getattr(args, "interrupted", None)
    if describe is None:
        return f"{getattr(args, 'command', None) or 'attncluster'} stopped"
    try:
        return describe(args)
    except Exception:  # the message must never hide the interruption
        return f"{args.command} stopped"


def user_message(e: BaseException) -> str:
    """The one-line message of a user error, also when a DataLoader worker re-raised it with its traceback.

    torch re-raises a worker's exception as ``type(e)(text)`` where ``text`` holds the worker's traceback ending in
    ``module.Class: message``; only ``message`` is kept, whatever module the class lives in.
    """
    text = str(e) if not isinstance(e, OSError) or "Original Traceback" in str(e) else os_error_message(e)
    if "Original Traceback" in text:  # torch wraps worker exceptions: "Caught X in DataLoader worker ..."
        last = text.rstrip().splitlines()[-1]
        cls = type(e)
        for prefix in (f"{cls.__module__}.{cls.__qualname__}: ", f"{cls.__qualname__}: "):
            if last.startswith(prefix):
                last = last[len(prefix):]
                break
        else:
            head, sep, rest = last.partition(": ")
            if sep and head.replace(".", "").replace("_", "").isalnum() and head.split(".")[-1][:1].isupper():
                last = rest  # another class name, e.g. a subclass raised in the worker
        text = last
    return printable(text)
