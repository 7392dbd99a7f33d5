"""``python -m attncluster``: the command line (:func:`attncluster.cli.main`)."""

import sys

try:
    from attncluster.cli import main
except KeyboardInterrupt:  # Ctrl-C while the (small) command-line module is being imported
    print("interrupted: attncluster stopped while starting", file=sys.stderr)
    raise SystemExit(130) from None

if __name__ == "__main__":
    raise SystemExit(main())
