"""Writing result files safely: checked before the work starts, written whole or not at all.

``predict --output`` and ``eval --output`` (and any verb that writes one result file) use these two pieces:

* :func:`check_output` runs before any model or data is loaded, so a path that is a directory, or a folder that
  cannot be created or written, fails in a second with one line instead of after a long prediction;
* :func:`atomic_output` writes through a fresh temporary file in the target folder (``tempfile.mkstemp``: a unique
  name opened with ``O_EXCL``, so a planted symlink is never followed) and renames it over the target only when
  the whole file is written and flushed. On an error or Ctrl-C the temporary file is removed and an existing
  output is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from attncluster.errors import ConfigError, FileError, writing


def check_output(path: str | os.PathLike, flag: str = "--output") -> Path:
    """Check that ``path`` can be written as a file. Returns it as a Path. Creates nothing.

    A missing folder is fine when it can be created (:func:`atomic_output` creates it): the nearest existing
    ancestor must be a writable folder.

    Raises:
        ConfigError: ``path`` is a directory.
        FileError: its folder is not a folder, or cannot be written in.
    """
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{flag} {p}: is a directory; name a file in it, e.g. {p / ('out' + (p.suffix or '.jsonl'))}")
    folder = p.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise FileError(f"{flag} {p}: {folder} is not a folder")
    try:  # a real probe: permission bits do not tell root, a read-only mount or /proc apart
        fd, probe = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".probe", dir=folder)
    except OSError as e:
        raise FileError(f"{flag} {p}: cannot write in {folder}: {e.strerror or e}") from None
    os.close(fd)
    os.unlink(probe)
    return p


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "w", newline: str | None = "") -> Iterator[IO]:
    """Open a temporary file next to ``path`` for writing; on success it replaces ``path`` atomically.

    Any failure to write (disk full, permission) becomes one FileError naming ``path``; on any exception,
    KeyboardInterrupt included, the temporary file is deleted and ``path`` is untouched.
    """
    path = Path(path)
    with writing(path, "write"):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.chmod(tmp, 0o666 & ~_umask())  # the permissions a plain open() would give, not mkstemp's 0600
            kwargs = {} if "b" in mode else {"newline": newline, "encoding": "utf-8"}
            with os.fdopen(fd, mode, **kwargs) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
