"""Shard specifications -> concrete file lists, local or remote (fsspec URLs).

A spec is a path, a glob, a directory (every file in it, sorted), or a list file (``*.list`` or ``*.txt``: one path,
glob or directory per line, as the reference's ``train.list``; relative lines resolve against the list file's folder;
a line that matches nothing is an error naming the list file and line).
Any of them may be an fsspec URL (``s3://``, ``gs://``, ``https://``, ``memory://``, ``file://``).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from typing import BinaryIO

from attncluster.errors import DataError, printable

LIST_SUFFIXES = (".list", ".txt")
# Files a directory listing skips: they sit beside shards but are not shards.
IGNORED_SUFFIXES = (".csv", ".md", ".json", ".jsonl", ".yaml", ".yml", ".list", ".txt", ".lock", ".tmp")
READ_BUFFER = 4 << 20  # bytes per read block of a remote file
# Blocks kept per open remote file (LRU), filled only as read: up to 128 x 4 MiB, more than a whole YouTube-8M
# frame-level shard (about 250 MB for train), so the shuffled record reads of training fetch each byte of a shard
# about once, at the cost of holding the shard being read in memory (one per DataLoader worker). fsspec's default
# read-ahead cache keeps about two blocks: every read outside them fetches a record plus a block (9x the bytes of
# a 12 MB shard per epoch).
CACHE_BLOCKS = 128


def is_url(path: str) -> bool:
    return "://" in path


def _fs(path: str):
    import fsspec

    try:
        return fsspec.core.url_to_fs(path)
    except (ImportError, ValueError) as e:  # unknown protocol or its extra not installed
        raise DataError(f"{path}: cannot open this URL ({e}); install the fsspec extra for it, e.g. s3fs or gcsfs") from None


def _protocol_prefix(path: str) -> str:
    return path.split("://", 1)[0] + "://"


def open_binary(path: str) -> BinaryIO:
    """Open a local path or fsspec URL for buffered binary reading."""
    try:
        if is_url(path) and not path.startswith("file://"):
            fs, p = _fs(path)
            return fs.open(p, "rb", block_size=READ_BUFFER, cache_type="blockcache",
                           cache_options={"maxblocks": CACHE_BLOCKS})
        local = path[len("file://"):] if path.startswith("file://") else path
        return open(local, "rb", buffering=1 << 20)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a file") from None
    except PermissionError:
        raise DataError(f"{path}: permission denied") from None
    except (OSError, ValueError, RuntimeError) as e:
        if not is_url(path):
            raise
        raise DataError(f"{path}: cannot open this URL ({_reason(e)})") from None


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:200]}" if str(e) else type(e).__name__


def read_text(path: str) -> str:
    with open_binary(path) as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file") from None


def _read_list_file(path: str, depth: int = 0) -> list[str]:
    """The files a list file names: one path, glob or directory per line (``#`` comments and blank lines are
    skipped); relative lines resolve against the list file's folder. A line that matches nothing is an error naming
    the list file and the line, so a typo in a list is never a silently smaller dataset."""
    if depth > 8:
        raise DataError(f"{path}: list files nest more than 8 deep (does a list name itself?)")
    base = path.rsplit("/", 1)[0] if "/" in path else "."
    out = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not is_url(line) and not os.path.isabs(line):
            line = f"{base}/{line}" if is_url(path) else os.path.join(base, line)
        found = _expand_one(line, depth + 1)
        if not found:
            raise DataError(f"{path}: line {number}: {printable(line, limit=1 << 20)} matches no files")
        out.extend(found)
    if not out:
        raise DataError(f"{path}: list file names no shards")
    return out


def _expand_one(spec: str, depth: int = 0) -> list[str]:
    if is_url(spec) and not spec.startswith("file://"):
        try:
            return _expand_url(spec, depth)
        except DataError:
            raise
        except (OSError, ValueError, RuntimeError) as e:  # unreachable host, refused connection, bad credentials
            raise DataError(f"{spec}: cannot reach this URL ({_reason(e)})") from None
    return _expand_local(spec, depth)


def _expand_url(spec: str, depth: int) -> list[str]:
    fs, p = _fs(spec)
    prefix = _protocol_prefix(spec)
    if glob.has_magic(p):
        found = sorted(fs.glob(p))
    elif fs.isdir(p):
        found = sorted(x["name"] for x in fs.ls(p, detail=True) if x["type"] == "file")
        found = [x for x in found if not x.endswith(IGNORED_SUFFIXES)]
    elif p.endswith(LIST_SUFFIXES) and fs.exists(p):
        return _read_list_file(spec, depth)
    else:
        found = [p] if fs.exists(p) else []
    return [x if is_url(x) else prefix + x for x in found]


def _expand_local(spec: str, depth: int) -> list[str]:
    local = spec[len("file://"):] if spec.startswith("file://") else spec
    if "\x00" in local:  # no file system path holds a NUL byte (os calls would raise ValueError)
        return []
    local = os.path.expanduser(local)
    if glob.has_magic(local):
        return sorted(glob.glob(local))
    if os.path.isdir(local):
        names = sorted(os.listdir(local))
        return [os.path.join(local, n) for n in names
                if os.path.isfile(os.path.join(local, n)) and not n.endswith(IGNORED_SUFFIXES) and not n.startswith(".")]
    if local.endswith(LIST_SUFFIXES) and os.path.isfile(local):
        return _read_list_file(local, depth)
    return [local] if os.path.exists(local) else []


def expand_paths(specs: str | Iterable[str], what: str = "data") -> list[str]:
    """Expand shard specs to a list of files, in order. Raises DataError if a spec matches nothing."""
    if isinstance(specs, str):
        specs = [specs]
    specs = list(specs)
    if not specs:
        raise DataError(f"{what}: no data paths given")
    files: list[str] = []
    seen: dict[str, str] = {}  # the file itself (a local path resolved) -> the spec that gave it first
    for spec in specs:
        found = _expand_one(str(spec))
        if not found:
            raise DataError(f"{spec}: matches no files ({what}); expected a file, glob, directory or .list file")
        for f in found:
            key = f if is_url(f) else os.path.realpath(f)
            if key in seen:  # read twice, its videos would count twice in every metric and output
                first = seen[key]
                by = f"by {first!r} and {str(spec)!r}" if first != str(spec) else f"twice by {first!r}"
                raise DataError(f"{f}: given twice ({what}, {by}); name each shard once")
            seen[key] = str(spec)
        files.extend(found)
    return files


def file_size(path: str) -> int:
    if is_url(path) and not path.startswith("file://"):
        fs, p = _fs(path)
        return int(fs.size(p))
    return os.path.getsize(path[len("file://"):] if path.startswith("file://") else path)


def read_all(path: str) -> bytes:
    with open_binary(path) as f:
        return f.read()


__all__ = ["expand_paths", "open_binary", "read_text", "read_all", "file_size", "is_url"]
