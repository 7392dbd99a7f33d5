"""Writing result files safely: checked before the work starts, written whole or not at all. The one writer.

Every file attncluster writes (predictions, metrics, checkpoints, configs, ONNX graphs, Triton configs, explain
pages, synthetic shards, extracted shards, converted weights) goes through :func:`atomic_output` (a file object) or
:func:`atomic_path` (a file name, for writers that only take one: safetensors, onnxruntime's quantizer):

* a fresh temporary file in the target folder (``tempfile.mkstemp``: a unique name ``.NAME.XXXXXXXX.tmp`` opened
  with ``O_EXCL``, so a planted symlink is never followed and two writers never share one);
* the file is flushed and fsynced, renamed over the target only when complete, and the folder is fsynced after the
  rename (the rename itself is durable only then);
* on any exception, KeyboardInterrupt included, the temporary file is removed and an existing target is left as it
  was;
* any failure to write (disk full, file too large, permission, read-only folder) is one
  :class:`~attncluster.errors.FileError` naming the target path.

While it is written, the temporary file carries an exclusive ``flock``. :func:`remove_stale` uses it to tell the
debris of a killed run (deleted at the next start) from a file another live process is still writing (kept).

:func:`check_output` runs before any model or data is loaded, so a path that is a directory, or a folder that cannot
be created or written, fails in a second with one line instead of after a long prediction.

:func:`write_kaggle_csv` is the one Kaggle submission formatter (``predict --data`` and ``predict --videos``).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

from attncluster.errors import ConfigError, FileError, writing

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locks, so remove_stale keeps every file
    fcntl = None

TMP_SUFFIX = ".tmp"
# RFC 4180 CSV: CRLF line ends, so that the csv module quotes an id holding a lone CR as well as one with a comma, a
# quote or a LF (it quotes a field that holds any character of the line terminator).
KAGGLE_HEADER = ("VideoId", "LabelConfidencePairs")
CSV_LINE_END = "\r\n"


def check_output(path: str | os.PathLike, flag: str = "--output") -> Path:
    """Check that ``path`` can be written as a file. Returns it as a Path.

    A missing folder is fine when it can be created (:func:`atomic_output` creates it): the nearest existing
    ancestor must be a writable folder. Temporary files that a killed earlier run left for this same output are
    deleted (:func:`remove_stale`).

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
    remove_stale(p)
    return p


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(folder: str | os.PathLike) -> None:
    """fsync a folder, so that a rename in it is durable (POSIX; silently not possible on every system)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def lock_fd(fd: int) -> None:
    """Take an exclusive flock on a file being written: it tells :func:`remove_stale` the file is in use."""
    if fcntl is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def temporary_name(path: Path, tag: str = "") -> tuple[int, str]:
    """A new, exclusively created and locked file next to ``path``: ``(fd, name)``, named ``.NAME.<tag>XXXX.tmp``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{tag}", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        lock_fd(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # the permissions a plain open() would give, not mkstemp's 0600
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return fd, tmp


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, what: str = "write") -> Iterator[Path]:
    """A temporary file name next to ``path`` for a writer that takes a name; on success it replaces ``path``.

    The file exists (empty, created exclusively) when the name is yielded; the writer overwrites it. Guarantees
    and errors as :func:`atomic_output`.
    """
    path = Path(path)
    with writing(path, what):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temporary_name(path)
        try:
            yield Path(tmp)
            with open(tmp, "rb") as f:  # the writer may have closed (or replaced) the file: sync what is named
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        finally:
            os.close(fd)  # held to the end: its lock says "being written" to remove_stale
        fsync_dir(path.parent)


@contextlib.contextmanager
def scratch_file(path: str | os.PathLike, tag: str = "part.") -> Iterator[Path]:
    """A temporary file next to ``path`` for an intermediate result (e.g. the fp32 graph before int8), locked while
    it exists and always deleted at the end; named ``.NAME.<tag>XXXX.tmp``, so :func:`remove_stale` finds it after a
    ``kill -9``."""
    path = Path(path)
    with writing(path, "write"):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temporary_name(path, tag)
    try:
        yield Path(tmp)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "w", newline: str | None = "",
                  what: str = "write") -> Iterator[IO]:
    """Open a temporary file next to ``path`` for writing; on success it replaces ``path`` atomically.

    Args:
        path: the file to write.
        mode: ``"w"`` (text, UTF-8) or ``"wb"``.
        newline: for text mode, as :func:`open` (default ``""``: no translation).
        what: the verb of the error message, ``<path>: cannot <what>: <reason>``.

    Any failure to write (disk full, permission) becomes one FileError naming ``path``; on any exception,
    KeyboardInterrupt included, the temporary file is deleted and ``path`` is untouched. The file is fsynced before
    the rename and the folder after it.
    """
    kwargs = {} if "b" in mode else {"newline": newline, "encoding": "utf-8"}
    with atomic_path(path, what) as tmp:  # the one replace-or-remove mechanism; this only opens the file
        with open(tmp, mode, **kwargs) as f:
            yield f


def atomic_write_bytes(path: str | os.PathLike, data: bytes, what: str = "write") -> None:
    """Write ``data`` to ``path`` through :func:`atomic_output`."""
    with atomic_output(path, "wb", what=what) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, what: str = "write") -> None:
    """Write ``text`` (UTF-8, line ends as given) to ``path`` through :func:`atomic_output`."""
    with atomic_output(path, "w", what=what) as f:
        f.write(text)


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike, what: str = "write") -> None:
    """Copy the file ``src`` to ``dst`` through :func:`atomic_output`."""
    import shutil

    with open(src, "rb") as s, atomic_output(dst, "wb", what=what) as d:
        shutil.copyfileobj(s, d, 4 << 20)


def is_stale_name(name: str, target: str, extra: str | None = None) -> bool:
    """Whether the file name ``name`` is one of our temporary files for ``target`` (a file name): ``.TARGET.*.tmp``
    from :func:`atomic_output`, or ``.TARGET.*<extra>`` (a regular expression; e.g. predict's per-rank parts)."""
    prefix = re.escape(f".{target}.")
    pattern = rf"{prefix}[^/]*{re.escape(TMP_SUFFIX)}" + (rf"|{prefix}[^/]*(?:{extra})" if extra else "")
    return re.fullmatch(pattern, name) is not None


def target_of_temporary(name: str) -> str | None:
    """The file name a temporary file ``name`` of :func:`atomic_output` was written for (``.X.<random>.tmp`` -> ``X``),
    or None for any other name."""
    if name.startswith(".") and name.endswith(TMP_SUFFIX):
        stem = name[1:-len(TMP_SUFFIX)]
        if "." in stem:
            return stem.rsplit(".", 1)[0] or None
    return None


def _in_use(path: Path) -> bool:
    """Whether a live process holds the lock of this temporary file (it is being written now)."""
    if fcntl is None:  # pragma: no cover
        return True
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False  # a symlink or unreadable: not a file of ours being written
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def remove_stale(target: str | os.PathLike, extra: str | None = None,
                 matches: Callable[[str], bool] | None = None) -> list[Path]:
    """Delete the temporary files that killed runs left for ``target``; returns them.

    Only files named as ours (:func:`is_stale_name`, or ``matches(name)`` when given, in ``target``'s folder) and not
    locked by a live writer are removed: a user's files, and files another process is writing now, are kept.
    """
    target = Path(target)
    folder = target.parent
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    test = matches or (lambda n: is_stale_name(n, target.name, extra))
    removed = []
    for name in sorted(names):
        p = folder / name
        if not test(name) or not (p.is_file() or p.is_symlink()) or (not p.is_symlink() and _in_use(p)):
            continue
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    return removed


# --------------------------------------------------------------------------------------------------------------------
# The Kaggle submission CSV


def kaggle_row(video_id: str, classes: Iterable[int], scores: Iterable[float]) -> str:
    """One Kaggle CSV row with its CRLF: ``id,"c1 p1 c2 p2 ..."`` (6 decimals), the id quoted as RFC 4180 needs."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator=CSV_LINE_END).writerow(
        [video_id, " ".join(f"{int(k)} {float(p):.6f}" for k, p in zip(classes, scores))])
    return buf.getvalue()


def kaggle_header() -> str:
    return ",".join(KAGGLE_HEADER) + CSV_LINE_END


def write_kaggle_csv(f: IO[str], records: Iterable[dict]) -> int:
    """Write the header and one row per ``{"id", "classes", "scores"}`` record to the text file ``f``; returns
    the row count."""
    f.write(kaggle_header())
    n = 0
    for r in records:
        f.write(kaggle_row(r["id"], r["classes"], r["scores"]))
        n += 1
    return n
