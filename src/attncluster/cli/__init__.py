"""``attncluster`` command line: a table of verbs, each a small module with ``add_args(parser)`` and ``run(args)``.

Adding a verb is one line in :data:`VERBS` and one file ``cli/<verb>.py`` holding ``HELP``, ``DESCRIPTION``,
``add_args(p)``, ``run(args) -> int`` and, optionally, ``interrupted(args) -> str`` (what Ctrl-C leaves behind).
Adding a flag is one line in that verb's ``add_args`` (or in :mod:`attncluster.cli.common` for the option groups that
several verbs share). ``run`` imports the verb's heavy module itself, so building the parser (``--help``, argument
errors) never imports torch or numpy.

Every user error (bad config, bad data, missing file) is printed as one ``error: ...`` line with exit status 2, and
Ctrl-C at any moment as one ``interrupted: ...`` line with exit status 130.
"""

from __future__ import annotations

import sys

try:  # Ctrl-C while the console script imports this module: the same one line as later, not a traceback
    import argparse
    import signal

    from attncluster.cli.common import (EPILOG, Parser, extract_options as _extract_options, interrupted_message,
                                        user_message)
    from attncluster.errors import AttnClusterError, printable
except KeyboardInterrupt:
    print("interrupted: attncluster stopped while starting", file=sys.stderr)
    raise SystemExit(130) from None

# verb -> module under attncluster.cli, in the order --help lists them
VERBS: dict[str, str] = {
    "train": "train",
    "eval": "eval",
    "predict": "predict",
    "export": "export",
    "quickstart": "quickstart",
    "inspect": "inspect",
    "synth": "synth",
    "extract": "extract",
    "convert-paddle": "convert_paddle",
    "serve": "serve",
    "explain": "explain",
    "plot": "plot",
    "watch": "watch",
}

__all__ = ["VERBS", "build_parser", "main", "user_message", "interrupted_message"]


def verb_module(verb: str):
    import importlib

    return importlib.import_module(f"attncluster.cli.{VERBS[verb]}")


def build_parser() -> argparse.ArgumentParser:
    """The whole parser; each verb's options come from its module's ``add_args``."""
    from attncluster import __version__

    parser = Parser(prog="attncluster", epilog=EPILOG,
                    description="Attention Clusters (Long et al., CVPR 2018) video classification on pre-extracted "
                    "features.")
    parser.add_argument("--version", action="version", version=f"attncluster {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for verb in VERBS:
        mod = verb_module(verb)
        p = sub.add_parser(verb, help=mod.HELP, description=mod.DESCRIPTION)
        mod.add_args(p)
        p.set_defaults(func=mod.run, interrupted=getattr(mod, "interrupted", None))
    return parser


def _unknown_options(parser: argparse.ArgumentParser, args, extra: list[str]) -> str:
    """The verb's own options, and the closest one (argparse would point at the top-level help)."""
    import difflib

    verbs = next(a for a in parser._actions if a.dest == "command").choices
    sub = verbs[args.command]
    options = [o for a in sub._actions for o in a.option_strings]
    name = extra[0].split("=")[0]
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close and extra[0].startswith("-") else ""
    # An option of another verb (predict --window, watch --top-n): say whose it is, not a look-alike of this verb's.
    owners = [v for v, p in verbs.items() if name.startswith("--") and v != args.command and
              any(name in a.option_strings for a in p._actions)]
    if owners:
        hint = f"; {name} is an option of " + " and ".join(f"attncluster {v}" for v in owners[:3])
    return (f"error: attncluster {args.command}: unrecognized arguments: {' '.join(extra)}{hint} "
            f"(see attncluster {args.command} --help)")


def main(argv: list[str] | None = None) -> int:
    """Run one verb. User errors and file-system faults print one ``error:`` line and return 2; Ctrl-C prints one
    ``interrupted:`` line and returns 130.

    ``argv`` None means the process's own command line (the console script, ``python -m attncluster``): then Ctrl-C
    is ignored from the moment main is done (or reports an interruption), so the report and the interpreter's
    shutdown (atexit handlers, worker joins) are never interrupted into a traceback.
    """
    args = None
    if argv is None:
        _deliver_lost_interrupts()
    try:
        try:
            parser = build_parser()
            args, extra = parser.parse_known_args(argv)
            if extra:
                print(printable(_unknown_options(parser, args, extra)), file=sys.stderr)
                return 2
            try:
                return args.func(args)
            except (AttnClusterError, OSError) as e:  # OSError: disk full, permission, missing folder, ... with its path
                print(f"error: {user_message(e)}", file=sys.stderr)
                return 2
        except KeyboardInterrupt:
            if argv is None:
                _ignore_sigint()
                # objects the interruption left half-built (a DataLoader iterator) complain when collected: quiet
                sys.unraisablehook = lambda unraisable: None
            message = interrupted_message(args) if args is not None else "attncluster stopped while starting"
            print(printable(f"interrupted: {message}"), file=sys.stderr)
            return 130
    finally:
        if argv is None:
            _ignore_sigint()


def _deliver_lost_interrupts() -> None:
    """Ctrl-C that lands where Python cannot raise (an at-fork handler while a DataLoader forks its workers, a
    ``__del__``) is only printed as "Exception ignored ... KeyboardInterrupt" and then lost: send it again a moment
    later (from a timer thread, as raising it here would land in the same place), so it is raised in ordinary code
    and stops the verb as every other Ctrl-C does."""
    import os
    import threading

    default = sys.unraisablehook

    def hook(unraisable) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            timer = threading.Timer(0.01, os.kill, (os.getpid(), signal.SIGINT))
            timer.daemon = True
            timer.start()
            return
        default(unraisable)

    sys.unraisablehook = hook


def _ignore_sigint() -> None:
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":
    raise SystemExit(main())
